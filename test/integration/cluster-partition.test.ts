// A leader cut off from the other two (a silent partition: every peer link
// black-holed by a proxy) is a minority: it acknowledges no write and serves
// no read — not even the value it last saw — while the majority elects a new
// leader and goes on. After the partition heals it follows the new leader and
// reads the majority's data.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { Cluster } from './helpers/launcher.ts';
import { waitFor } from './helpers/tools.ts';

t.test('the minority side of a partition acknowledges no write and serves no read', async (t) => {
  const c = await Cluster.start({ proxied: true, devices: ['default:16MiB'] });
  t.teardown(() => c.stop());
  const old = await c.waitForLeader();
  const majority = c.ids.filter((id) => id !== old);

  const v1 = randomBytes(4096);
  const onOld = await c.client(old);
  await onOld.write(0, v1);

  c.partition([[old]], 'blackhole');
  const newLeader = await c.waitForLeader(majority);
  t.not(newLeader, old, 'the majority elected a new leader');
  const v2 = randomBytes(4096);
  const onMajority = await c.client(majority[0]!);
  await onMajority.write(0, v2);
  t.same(await onMajority.read(0, 4096), v2, 'the majority commits and reads its write');

  // The isolated node: a write and a read, both must fail (no quorum), never succeed.
  const outcome = await Promise.allSettled([onOld.write(8192, randomBytes(4096)), onOld.read(0, 4096)]);
  t.equal(outcome[0].status, 'rejected', 'the isolated node did not acknowledge the write');
  t.equal(outcome[1].status, 'rejected', 'the isolated node did not serve a (stale) read');
  if (outcome[1].status === 'fulfilled') t.notSame(outcome[1].value, v1, 'and above all not the stale value');
  const st = await c.status(old);
  t.not(st.role, 'leader', 'the isolated node stepped down (check-quorum)');
  await onOld.close().catch(() => undefined);

  c.heal();
  await waitFor('the old leader to follow the new one', async () => (await c.status(old)).leader === (await c.status(majority[0]!)).leader && (await c.status(old)).leader !== '', 60_000);
  const again = await c.client(old);
  t.same(await again.read(0, 4096), v2, 'after healing it reads the majority’s value');
  await again.close();
  await onMajority.close();
});
