// A real /dev/nbd0: Debian's kernel boots under qemu (this host's kernel has
// no nbd module), nbd-client attaches an export of a 3-node cluster, and the
// guest runs mkfs.ext4, mount, write, reattach, e2fsck and a checksum
// comparison — once undisturbed, once with the Raft leader killed while the
// guest writes. Then with our own attacher (xdevice-nbd-attach, XDVM_ATTACHER=
// xdevice): the node the guest is attached to — the leader — is SIGKILLed and
// restarted while the guest writes with fsync, and the writes must pause, not
// fail: the attacher reconnects to the restarted node, and the file checks out
// after a detach, a reattach and e2fsck. The guest also checks --status, that
// the daemon stays while attached, and that it exits once its device is
// detached without it.
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { ROOT } from './helpers/tools.ts';

function runVm(port: number, onPhase: (phase: string) => void, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', [join(ROOT, 'scripts/kernel-attach-vm.sh'), String(port), 'default'], {
      env: { ...process.env, XDVM_FILE_MB: '24', ...env },
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

t.test('xdevice-nbd-attach: the node the guest uses restarts mid-write, and the writes pause instead of failing', { timeout: 900_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:256MiB'] });
  t.teardown(() => cluster.stop());
  const target = await cluster.leaderIndex();
  const port = cluster.slots[target]!.ports.nbd;

  const phases: string[] = [];
  let restarted: Promise<unknown> | undefined;
  const run = await runVm(
    port,
    (phase) => {
      phases.push(phase);
      if (phase === 'write-start' && !restarted) {
        restarted = (async () => {
          await cluster.kill(target, 'SIGKILL');
          await cluster.startNode(target);
        })();
      }
    },
    // Only the restarted node as endpoint: the attacher must get back to it. Two connections
    // (the export sets CAN_MULTI_CONN), both die with the node.
    { XDVM_ATTACHER: 'xdevice', XDVM_EXPECT_RECONNECT: '1', XDVM_CONNECTIONS: '2', XDVM_NBD_TIMEOUT: '10', XDVM_DEAD_CONN_TIMEOUT: '180', XDVM_FILE_MB: '16' },
  );
  await restarted;
  if (run.code !== 0) t.comment(cluster.logs(6000));
  t.ok(restarted, 'the node was killed when the guest started writing');
  t.equal(run.code, 0, `guest passed across the restart:\n${run.stdout}\n${run.stderr.slice(-4000)}`);
  t.match(run.stdout, /^PASS/m);
  t.match(run.stderr, /connections? dead \(NBD_CMD_LINK_DEAD\): reconnecting/, 'the attacher saw the connections die');
  // Both connections die with the node; each has its own LINK_DEAD, so they may be replaced in one round or two.
  const rounds = [...run.stderr.matchAll(/reconnected (\d+) connections? to (\S+) \(attempt/g)];
  t.ok(rounds.length > 0 && rounds.every((m) => m[2] === `10.0.2.2:${port}`), `every reconnect went to the restarted node: ${rounds.map((m) => m[0]).join('; ')}`);
  t.ok(rounds.reduce((n, m) => n + Number(m[1]), 0) >= 2, 'both connections were replaced');
  t.notMatch(run.stderr, /XDVM-RESULT: FAIL|write of MiB/, 'no write failed');
  t.same(
    phases.filter((p) => ['write-start', 'reconnected', 'write-done', 'reattached', 'daemon-left'].includes(p)),
    ['write-start', 'reconnected', 'write-done', 'reattached', 'daemon-left'],
    'the guest reconnected while still writing; a detach behind the attacher’s back made it exit',
  );
  t.ok(cluster.isUp(target), 'the restarted node is up');
});
