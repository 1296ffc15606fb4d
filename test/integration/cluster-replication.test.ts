// Three real node processes: what is written through NBD on one node reads
// back byte for byte through every other node, through real NBD clients
// (the TS client and fio's libnbd engine), and survives a restart of the
// whole cluster.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { Cluster } from './helpers/launcher.ts';

const MiB = 1024 * 1024;

t.test('write on the leader, read the same bytes on each follower; whole-cluster restart keeps everything', async (t) => {
  const c = await Cluster.start({ devices: ['default:64MiB'] });
  t.teardown(() => c.stop());
  const leader = await c.waitForLeader();
  const followers = c.ids.filter((id) => id !== leader);

  const written = new Map<number, Buffer>();
  const w = await c.client(leader);
  t.equal(w.size, 64 * MiB);
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 64; i++) {
    const offset = i * 512 * 1024 + (i % 7) * 4096; // below fio's region at 32 MiB
    const data = randomBytes(4096 * (1 + (i % 4)));
    written.set(offset, data);
    writes.push(w.write(offset, data));
  }
  await Promise.all(writes);
  await w.sync();
  await w.close();
  for (const id of followers) {
    const r = await c.client(id);
    const differing: number[] = [];
    for (const [offset, data] of written) {
      const got = await r.read(offset, data.length);
      if (!got.equals(data)) differing.push(offset);
    }
    t.same(differing, [], `${id} returned all ${written.size} writes byte for byte`);
    await r.close();
  }

  // fio (libnbd) writes with crc32c verification through a follower, and a
  // second fio verifies the same pattern through the other follower.
  const fioArgs = (name: string, uri: string, extra: string[] = []): string[] => [`--name=${name}`, '--ioengine=nbd', `--uri=${uri}`, ...region, ...extra];
  const region = ['--offset=32m', '--size=16m', '--bs=4k', '--verify=crc32c', '--verify_fatal=1', '--randrepeat=1', '--rw=randwrite', '--iodepth=16'];
  const fio = (what: string, uri: string, extra: string[] = []): void => {
    const r = spawnSync('fio', fioArgs('write', uri, extra), { encoding: 'utf8' });
    if (r.status !== 0) t.comment(`${r.stdout}\n${r.stderr}`);
    t.equal(r.status, 0, what);
  };
  fio(`fio writes and verifies through ${followers[0]}`, c.nbdUri(followers[0]!));
  fio(`fio verifies the same pattern through ${followers[1]}`, c.nbdUri(followers[1]!), ['--verify_only']);

  // Stop everything cleanly, start everything again: all data present.
  await c.stopAll();
  for (const n of c.slots.map((s) => c.node(s.id))) t.equal((await n.exited).code, 0, `${n.id} stopped cleanly`);
  await Promise.all(c.ids.map((id) => c.startNode(id)));
  await c.waitForLeader();
  for (const id of c.ids) {
    const r = await c.client(id);
    let same = 0;
    for (const [offset, data] of written) if ((await r.read(offset, data.length)).equals(data)) same++;
    t.equal(same, written.size, `${id} after the restart`);
    await r.close();
  }
  fio('fio verifies its pattern after the restart', c.nbdUri(c.ids[0]!), ['--verify_only']);
});
