// CI's share of the simulator: 2,000 seeds over 1-, 3- and 5-node clusters
// (the size follows from the seed). A failing seed prints the command that
// replays it with a full trace. Longer campaigns: npm run sim -- --seeds 100000.

import t from 'tap';
import { runSeed, type SimStats } from './simulator.ts';

const SEEDS = Number(process.env.XDEVICE_SIM_SEEDS ?? 2000);
/**
 * Seeds from campaigns beyond CI that once failed, run on every CI pass:
 *   705595  learners caught up one entry per round trip under reordering
 *           (fixed in src/raft: gaps held by the follower, not a divergence).
 *   925927  a follower took a snapshot while its runtime was applying a
 *           leave-joint entry, which then threw (found by the campaign after
 *           that fix; raft.restore waits).
 */
const REGRESSION_SEEDS = [705595, 925927];
const FIRST = Number(process.env.XDEVICE_SIM_FROM ?? 1);

t.test(`simulator: seeds ${FIRST}..${FIRST + SEEDS - 1} keep every invariant`, async (t) => {
  const totals: Partial<Record<keyof SimStats, number>> = {};
  const sizes = new Map<number, number>();
  const failures: string[] = [];
  for (let seed = FIRST; seed < FIRST + SEEDS; seed++) {
    const r = runSeed({ seed });
    for (const [k, v] of Object.entries(r.stats) as [keyof SimStats, number][]) totals[k] = (totals[k] ?? 0) + v;
    sizes.set(r.stats.nodes, (sizes.get(r.stats.nodes) ?? 0) + 1);
    if (!r.ok) failures.push(`seed ${seed}: ${r.error}\n  replay: XDEVICE_SEED=${seed} npm run sim`);
  }
  t.comment(`cluster sizes: ${JSON.stringify(Object.fromEntries(sizes))}`);
  t.comment(`totals: ${JSON.stringify(totals)}`);
  t.same(failures, [], 'no seed broke an invariant');
  t.same([...sizes.keys()].sort(), [1, 3, 5], '1-, 3- and 5-node clusters ran');
  // The fault mix must actually have happened, or passing means nothing.
  for (const k of ['dropped', 'duplicated', 'partitions', 'crashes', 'diskFailures', 'tornWrites', 'confChanges', 'transfers', 'compactions', 'snapshotsInstalled', 'readsServed', 'acked'] as const) {
    t.ok((totals[k] ?? 0) > 0, `${k} happened (${totals[k]})`);
  }
});

t.test('simulator: seeds that once failed keep every invariant', async (t) => {
  for (const seed of REGRESSION_SEEDS) {
    const r = runSeed({ seed });
    t.ok(r.ok, `seed ${seed}: ${r.error ?? 'ok'} (replay: XDEVICE_SEED=${seed} npm run sim)`);
  }
});

t.test('simulator: a seed replays exactly', async (t) => {
  for (const seed of [7, 8, 10]) {
    const a: string[] = [];
    const b: string[] = [];
    runSeed({ seed, trace: (l) => a.push(l) });
    runSeed({ seed, trace: (l) => b.push(l) });
    t.ok(a.length > 100, `seed ${seed} traced ${a.length} lines`);
    t.same(a, b, `seed ${seed}: identical traces`);
  }
});
