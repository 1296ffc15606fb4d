// Simulator seeds with hostile peers (test/sim/hostile-peers.ts): copies of
// real messages with out-of-range terms and indexes, votes/proposals/
// ConfChanges from a stranger id, and a twin process claiming a founding
// member's id with an empty log. Through the cluster layer's rules every
// invariant holds (election safety: no two leaders in a term); without them
// (planted), the out-of-range terms break the cluster.
//
// Liveness is required too: the rules hear the leader a node follows even
// when it is outside that node's configuration (added by a change not applied
// there yet, or leading on after removing itself), a stale leader's messages
// (so it learns its term is over), and any leader after a long silence.
import t from 'tap';
import { runSeed } from './simulator.ts';
import type { HostileStats } from './hostile-peers.ts';

const SEEDS = Number(process.env.XDEVICE_SIM_HOSTILE_SEEDS ?? 300);

t.test(`hostile peers: seeds 1..${SEEDS} keep every invariant`, async (t) => {
  const totals: Partial<Record<keyof HostileStats, number>> = {};
  const failures: string[] = [];
  const stalled: number[] = [];
  for (let seed = 1; seed <= SEEDS; seed++) {
    const r = runSeed({ seed, hostile: {} });
    for (const [k, v] of Object.entries(r.hostile ?? {}) as [keyof HostileStats, number][]) totals[k] = (totals[k] ?? 0) + v;
    if (r.ok) continue;
    if (r.error!.startsWith('liveness')) stalled.push(seed);
    failures.push(`seed ${seed}: ${r.error}\n  replay: XDEVICE_SEED=${seed} npm run sim -- --hostile`);
  }
  t.comment(`totals: ${JSON.stringify(totals)}`);
  t.same(failures, [], 'no seed broke an invariant (election safety, log matching, commits, term bound, liveness)');
  t.same(stalled, [], 'none stalled');
  for (const k of ['garbageSent', 'protocolErrors', 'strangerSent', 'strangersDropped', 'twinMessages', 'twinRefused'] as const) {
    t.ok((totals[k] ?? 0) > 0, `${k} happened (${totals[k]})`);
  }
});

t.test('planted: without the checks, out-of-range terms reach Raft and a seed fails', async (t) => {
  let found: { seed: number; error: string } | undefined;
  for (let seed = 1; seed <= 100 && !found; seed++) {
    const r = runSeed({ seed, hostile: { skipChecks: true } });
    if (!r.ok) found = { seed, error: r.error! };
  }
  t.ok(found, 'a seed failed');
  t.match(found?.error ?? '', /raftTermMax|election safety|log matching|commit/i);
  if (found) t.comment(`seed ${found.seed}: ${found.error.split('\n')[0]}`);
});
