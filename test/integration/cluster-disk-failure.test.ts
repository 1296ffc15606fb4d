// The leader's disk fails (fdatasync returns EIO, injected through the native
// addon's fault hook): the node leaves service — the process exits non-zero —
// and no acknowledged write is lost: the other two hold every one, elect a
// new leader and keep committing. Restarted on a good disk, the failed node
// recovers its WAL and catches up.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { Cluster } from './helpers/launcher.ts';
import { waitFor } from './helpers/tools.ts';
import type { NbdClient } from '../../src/nbd/client.ts';

t.test('a node whose fdatasync fails leaves the cluster without losing acknowledged data', async (t) => {
  const c = await Cluster.start({ devices: ['default:32MiB'] });
  t.teardown(() => c.stop());
  // Every node watches its own fault file (absent: no faults yet).
  const leader = await c.waitForLeader();
  const others = c.ids.filter((id) => id !== leader);

  // Two writers: one on the leader, one on a follower; each moves to another
  // node when its connection fails.
  const acked = new Map<number, Buffer>();
  let acks = 0;
  let writing = true;
  const dead = new Set<string>();
  const writer = async (start: string, base: number): Promise<void> => {
    let at = start;
    let client: NbdClient | undefined = await c.client(at);
    for (let i = 0; writing; i++) {
      const block = base + (i % 2048);
      const data = randomBytes(4096);
      for (;;) {
        try {
          if (!client) {
            at = c.ids.find((id) => !dead.has(id) && id !== at) ?? others[0]!;
            client = await c.client(at);
          }
          await client.write(block * 4096, data);
          acked.set(block, data);
          acks++;
          break;
        } catch {
          await client?.close().catch(() => undefined);
          client = undefined;
          if (!writing) return;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
    await client?.close();
  };
  const writers = [writer(leader, 0), writer(others[0]!, 4096)];
  await waitFor('writes flowing', async () => acks >= 300, 60_000, 20);

  // The WAL writes with O_DSYNC (fdatasync only when it starts a segment):
  // a failing disk fails both.
  c.setDiskFault(leader, { fdatasyncErrno: 'EIO', pwriteErrno: 'EIO' });
  dead.add(leader);
  const exit = await c.node(leader).exited;
  t.not(exit.code, 0, `the failed node exited non-zero (${exit.code ?? exit.signal})`);
  t.match(c.node(leader).output(), /leaving service/, 'it said why');
  const newLeader = await c.waitForLeader(others);
  t.not(newLeader, leader);
  const before = acks;
  try {
    await waitFor('writes flowing on the survivors', async () => acks >= before + 200, 60_000, 20);
  } catch (err) {
    t.comment(c.logs(60));
    for (const id of others) t.comment(JSON.stringify(await c.status(id)));
    writing = false;
    throw err;
  }
  writing = false;
  await Promise.all(writers);

  for (const id of others) {
    const r = await c.client(id);
    let same = 0;
    for (const [block, data] of acked) if ((await r.read(block * 4096, 4096)).equals(data)) same++;
    t.equal(same, acked.size, `${id} holds all ${acked.size} acknowledged writes`);
    await r.close();
  }

  // A new disk (no faults): the node recovers from what is really on disk and catches up.
  c.setDiskFault(leader, {});
  await c.startNode(leader);
  const commit = (await c.status(newLeader)).commit;
  await waitFor(`${leader} to catch up`, async () => (await c.status(leader)).applied >= commit, 120_000);
  const r = await c.client(leader);
  let same = 0;
  for (const [block, data] of acked) if ((await r.read(block * 4096, 4096)).equals(data)) same++;
  t.equal(same, acked.size, `${leader}, restarted, holds every acknowledged write`);
  await r.close();
});
