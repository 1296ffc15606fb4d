// A real filesystem on the replicated device, with the Raft leader killed in
// the middle of the work: every file that was fsync'd must survive intact and
// e2fsck must find the filesystem clean.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { attachExport, fsck } from './helpers/blockdev.ts';

function writeDurably(path: string, data: Buffer): void {
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function fsyncDir(path: string): void {
  const fd = openSync(path, 'r');
  fsyncSync(fd);
  closeSync(fd);
}

t.test('ext4 on a 3-node cluster survives kill -9 of the leader mid-write', { timeout: 600_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:256MiB'] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();
  const follower = (leader + 1) % 3;
  // The filesystem talks to a follower: it keeps serving while the leader dies.
  const dev = await attachExport(cluster.slots[follower]!.ports.nbd, 'default', { connections: 2 });
  t.teardown(() => dev.detach());
  dev.mkfsAndMount();

  const files = new Map<string, string>();
  const total = 160;
  let killedAt = -1;
  for (let i = 0; i < total; i++) {
    const dir = join(dev.mountpoint, `d${i % 8}`);
    if (i < 8) {
      mkdirSync(dir);
      fsyncDir(dev.mountpoint);
    }
    const data = randomBytes(4096 + ((i * 7919) % 200_000));
    const path = join(dir, `f${i}`);
    writeDurably(path, data);
    fsyncDir(dir);
    files.set(path, createHash('sha256').update(data).digest('hex'));
    if (i === total / 2) {
      await cluster.kill(leader);
      killedAt = i;
      t.comment(`killed the leader node${leader + 1} after ${i + 1} fsync'd files`);
    }
  }
  t.equal(killedAt, total / 2, 'the leader was killed in the middle');
  const newLeader = await cluster.leaderIndex();
  t.not(newLeader, leader, 'a new leader took over');

  dev.unmount();
  const check = fsck(dev.loop);
  t.ok(check.clean, `e2fsck -fn is clean\n${check.output}`);
  await dev.detach();

  // Bring the old leader back; it must catch up, and then serve the same files.
  await cluster.startNode(leader);
  await cluster.converged();
  const again = await attachExport(cluster.slots[leader]!.ports.nbd, 'default');
  t.teardown(() => again.detach());
  const { spawnSync } = await import('node:child_process');
  const m = spawnSync('mount', ['-t', 'ext4', '-o', 'ro', again.loop, again.mountpoint], { encoding: 'utf8' });
  t.equal(m.status, 0, m.stderr);
  let intact = 0;
  for (const [path, sum] of files) {
    const local = path.replace(dev.mountpoint, again.mountpoint);
    if (createHash('sha256').update(readFileSync(local)).digest('hex') === sum) intact++;
  }
  t.equal(intact, files.size, `every fsync'd file is intact when read through the restarted node (${intact}/${files.size})`);
  spawnSync('umount', [again.mountpoint]);
});
