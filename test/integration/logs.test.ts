// What an operator reads in the journal or a log shipper, from real node
// processes: JSON lines with level names and ISO times, a compact start-up, an
// election that says why and with whose votes, a lost peer reported by every
// survivor (warn) and its return (info), and a restart that replays old
// membership changes without announcing them as new.
import t from 'tap';
import { Cluster, adminApi, startNode } from './helpers/launcher.ts';
import { waitFor } from './helpers/tools.ts';
import { VERSION } from '../../src/version.ts';

interface Line {
  level: string;
  time: string;
  msg: string;
  [k: string]: unknown;
}

function lines(output: string): Line[] {
  return output
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Line);
}

t.test('node logs for operators', { timeout: 300_000 }, async (t) => {
  // debug, so that the replayed membership change can be seen to be logged as a replay
  const cluster = await Cluster.start({ size: 3, devices: ['default:8MiB'], env: { XDEVICE_LOG_LEVEL: 'debug' } });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();

  for (const slot of cluster.slots) {
    const all = lines(slot.proc!.output());
    t.ok(all.length > 0, `${slot.id} logged JSON`);
    t.ok(all.every((l) => ['trace', 'debug', 'info', 'warn', 'error', 'fatal'].includes(l.level)), `${slot.id}: level names, not numbers`);
    t.ok(all.every((l) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(l.time)), `${slot.id}: ISO 8601 UTC times`);
    const start = all.find((l) => l.msg === 'starting');
    t.match(start, { level: 'info', version: VERSION, node: slot.id, backend: 'replicated' }, `${slot.id}: one start-up summary`);
    t.match(String(start?.given), /data-dir=.* \(flag\)/, 'the summary names the settings given and where');
    t.match(String(start?.given), /peers=node1=127\.0\.0\.1:\d+,node2=127\.0\.0\.1:\d+,node3=127\.0\.0\.1:\d+ \(flag\)/, 'peers spelled out');
    t.notMatch(String(start?.given), /\[object Object\]/);
    const beforeServing = all.slice(0, all.findIndex((l) => l.msg === 'serving') + 1).filter((l) => l.level !== 'debug' && l.level !== 'trace');
    t.ok(beforeServing.length <= 10, `${slot.id}: ${beforeServing.length} info lines up to "serving" (${beforeServing.map((l) => l.msg).join(' | ')})`);
    t.notOk(all.some((l) => l.msg === 'effective configuration' && l.level === 'info'), 'the full configuration is debug only');
  }
  const won = lines(cluster.slots[leader]!.proc!.output()).find((l) => l.msg === 'became leader');
  t.match(won, { level: 'info', cause: 'timeout', vote: /^won: granted / }, 'the leader says why it campaigned and who voted');
  t.ok(((won?.vote as string).match(/node\d/g) ?? []).length >= 2, `a majority granted its vote (${won?.vote as string})`);

  // A leadership transfer: the new leader names the cause.
  const target = (leader + 1) % 3;
  t.equal((await adminApi(cluster.slots[leader]!.ports.admin, 'POST', '/leader', { to: cluster.slots[target]!.id })).status, 200);
  const transferred = await waitFor('the transfer to be logged', async () =>
    lines(cluster.slots[target]!.proc!.output()).find((l) => l.msg === 'became leader' && l.cause === 'transfer'),
  );
  t.match(transferred, { vote: /^won: / }, 'a transfer campaigns without pre-vote');
  t.notOk('preVote' in transferred, 'no pre-vote after TimeoutNow');

  // A membership change (a learner that joins; add-node needs a live, authenticated
  // peer), then a crash and restart of a follower.
  const learner = await startNode({ id: 'node9', peers: cluster.slots.map((s) => `${s.id}=127.0.0.1:${s.ports.peer}`).join(','), extraArgs: ['--join'] });
  t.teardown(() => learner.kill());
  const now = await cluster.leaderIndex();
  t.equal((await adminApi(cluster.slots[now]!.ports.admin, 'POST', '/members', { id: 'node9', address: `127.0.0.1:${learner.peerPort}`, promote: false, wait: false })).status, 200);
  const victim = (now + 1) % 3;
  await waitFor('the change to reach the victim', async () =>
    lines(cluster.slots[victim]!.proc!.output()).find((l) => l.msg === 'membership changed' && (l.learners as string[]).includes('node9')),
  );
  const survivors = [0, 1, 2].filter((i) => i !== victim);
  const mark = survivors.map((i) => cluster.slots[i]!.proc!.output().length);
  await cluster.kill(victim);
  for (const [k, i] of survivors.entries()) {
    const lost = await waitFor(`${cluster.slots[i]!.id} to report the lost peer`, async () =>
      lines(cluster.slots[i]!.proc!.output().slice(mark[k])).find((l) => l.msg === 'peer link lost' && l.peer === cluster.slots[victim]!.id),
    );
    t.equal(lost.level, 'warn', `${cluster.slots[i]!.id} warns that ${cluster.slots[victim]!.id} is gone`);
  }
  const restarted = await cluster.startNode(victim);
  for (const [k, i] of survivors.entries()) {
    const up = await waitFor(`${cluster.slots[i]!.id} to report the peer back`, async () =>
      lines(cluster.slots[i]!.proc!.output().slice(mark[k])).find((l) => l.msg === 'peer link up' && l.peer === cluster.slots[victim]!.id),
    );
    t.equal(up.level, 'info', `${cluster.slots[i]!.id} says ${cluster.slots[victim]!.id} is back`);
  }
  await waitFor('the restarted node to apply', async () => (await adminApi(restarted.adminPort, 'GET', '/status')).status === 200);
  await cluster.converged();
  const after = lines(restarted.output());
  t.ok(after.some((l) => l.msg === 'membership change replayed' && l.level === 'debug' && (l.learners as string[]).includes('node9')), 'the old change is replayed (debug)');
  t.notOk(after.some((l) => l.msg === 'membership changed'), 'and not announced as a new change');
});
