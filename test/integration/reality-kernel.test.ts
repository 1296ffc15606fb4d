// A real /dev/nbd0: Debian's kernel boots under qemu (this host's kernel has
// no nbd module), nbd-client attaches an export of a 3-node cluster, and the
// guest runs mkfs.ext4, mount, write, reattach, e2fsck and a checksum
// comparison — once undisturbed, once with the Raft leader killed while the
// guest writes.
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { ROOT } from './helpers/tools.ts';

function runVm(port: number, onPhase: (phase: string) => void): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', [join(ROOT, 'scripts/kernel-attach-vm.sh'), String(port), 'default'], {
      env: { ...process.env, XDVM_FILE_MB: '24' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      for (const m of c.toString().matchAll(/XDVM: ([\w-]+)/g)) onPhase(m[1]!);
    });
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('a kernel /dev/nbd0 on a 3-node cluster, with and without a leader kill', { timeout: 900_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:256MiB'] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();
  const follower = (leader + 1) % 3;

  const quiet = await runVm(cluster.slots[follower]!.ports.nbd, () => {});
  if (quiet.code !== 0) t.comment(cluster.logs(6000));
  t.equal(quiet.code, 0, `guest passed:\n${quiet.stdout}\n${quiet.stderr.slice(-3000)}`);
  t.match(quiet.stdout, /^PASS/m);

  let killedDuring = '';
  const faulty = await runVm(cluster.slots[follower]!.ports.nbd, (phase) => {
    if (phase === 'write-start' && !killedDuring) {
      killedDuring = phase;
      void cluster.kill(leader);
    }
  });
  if (faulty.code !== 0) t.comment(cluster.logs(6000));
  t.equal(killedDuring, 'write-start', 'the leader was killed while the guest was writing');
  t.equal(faulty.code, 0, `guest passed with the leader killed:\n${faulty.stdout}\n${faulty.stderr.slice(-3000)}`);
  t.match(faulty.stdout, /^PASS/m);
  const newLeader = await cluster.leaderIndex();
  t.not(newLeader, leader, 'another node leads');
});
