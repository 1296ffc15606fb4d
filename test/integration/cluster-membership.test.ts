// Membership at runtime through the admin API, with real processes: a fourth
// node joins while writes continue, catches up by a streamed snapshot (the
// leader has compacted its log; its chunks travel as LZ4), becomes a voter; then a founder is removed
// and the cluster keeps committing without it.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { Cluster, adminApi } from './helpers/launcher.ts';
import { metricSum, waitFor } from './helpers/tools.ts';
import type { Member } from '../../src/admin/api.ts';

t.test('add a node under writes (snapshot catch-up), then remove one', async (t) => {
  // Tiny checkpoints and no retention for laggards: the log is compacted
  // after a few hundred writes, so a new node can only catch up by snapshot.
  const c = await Cluster.start({ devices: ['default:64MiB'], env: { XDEVICE_CHECKPOINT_ENTRIES: '200', XDEVICE_WAL_RETAIN_ENTRIES: '0' } });
  t.teardown(() => c.stop());
  const leader = await c.waitForLeader();
  const acked = new Map<number, Buffer>();
  const w = await c.client(leader);
  const writeSome = async (from: number, n: number): Promise<void> => {
    for (let i = from; i < from + n; i += 8) {
      await Promise.all(
        Array.from({ length: 8 }, async (_, k) => {
          const block = (i + k) % 8192;
          // Half random, half text: LZ4 shrinks the snapshot stream's chunks.
          const data = Buffer.concat([randomBytes(2048), Buffer.alloc(2048, 0x61)]);
          await w.write(block * 4096, data);
          acked.set(block, data);
        }),
      );
    }
  };
  await writeSome(0, 2000);
  await waitFor('the leader to compact its log', async () => ((await c.status(leader)).logFirstIndex ?? 0) > 1000, 60_000);

  let writing = true;
  let next = 2000;
  const background = (async () => {
    while (writing) {
      await writeSome(next, 64);
      next += 64;
    }
  })();
  const n4 = await c.startNode('n4', { join: true, members: [...c.ids, 'n4'] });
  const added = await adminApi<{ members: Member[] }>(c.slot(leader).ports.admin, 'POST', '/members', { id: 'n4', address: `127.0.0.1:${n4.peerPort}` }, { timeoutMs: 300_000 });
  if (added.status !== 200) t.comment(JSON.stringify(added.body));
  t.equal(added.status, 200, "POST /members answered 200");
  t.ok(added.body.members.find((m) => m.id === 'n4')?.voter, 'n4 is a voter');
  writing = false;
  await background;
  await w.close();
  t.match(n4.output(), /installing snapshot/, 'n4 caught up from a streamed snapshot');
  let saved = 0;
  for (const id of c.ids) {
    const m = await c.node(id).api<string>('GET', '/metrics');
    saved += metricSum(String(m.body), 'xdevice_compression_snapshot_bytes_saved_total');
  }
  t.ok(saved > 0, `the snapshot stream went as LZ4 chunks: ${saved} bytes kept off the link`);

  const commit = (await c.status(leader)).commit;
  await waitFor('n4 to apply everything', async () => (await c.status('n4')).applied >= commit, 120_000);
  const r4 = await c.client('n4');
  let same = 0;
  for (const [block, data] of acked) if ((await r4.read(block * 4096, 4096)).equals(data)) same++;
  t.equal(same, acked.size, `n4 holds all ${acked.size} acknowledged blocks`);
  await r4.close();

  // Remove a founder that is not the leader.
  const victim = c.ids.find((id) => id !== leader)!;
  const removed = await adminApi<{ members: Member[] }>(c.slot(leader).ports.admin, 'DELETE', `/members/${victim}`);
  t.equal(removed.status, 200);
  t.notOk(removed.body.members.some((m) => m.id === victim), `${victim} is no longer a member`);
  const survivors = [...c.ids.filter((id) => id !== victim), 'n4'];
  const x = randomBytes(4096);
  const w2 = await c.client('n4');
  await w2.write(0, x);
  await w2.close();
  for (const id of survivors) {
    const r = await c.client(id);
    t.same(await r.read(0, 4096), x, `${id} sees a write committed without ${victim}`);
    await r.close();
  }
  // The removed node exits once it has applied its own removal (exit code 10):
  // either its NBD port is already closed or it refuses the write.
  const refused = await (async () => {
    const gone = await c.client(victim).catch((err: NodeJS.ErrnoException) => err);
    if (gone instanceof Error) return gone.code === 'ECONNREFUSED' || gone.code === 'ECONNRESET';
    try {
      await gone.write(4096, randomBytes(4096));
      return false;
    } catch {
      return true;
    } finally {
      await gone.close().catch(() => undefined);
    }
  })();
  t.ok(refused, 'the removed node acknowledges no write');
});
