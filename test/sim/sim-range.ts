// One tap test over a range of simulator seeds: every invariant holds, and
// the fault mix actually happened (or passing would mean nothing).

import type { Test } from 'tap';
import { runReplicaSeed, type ReplicaSimStats } from './replica-sim.ts';

/** CI's simulator seeds in all (XDEVICE_SIM_SEEDS), run in CI_SHARES files so tap spreads them over the cores. */
export const CI_SEEDS = Number(process.env.XDEVICE_SIM_SEEDS ?? 2000);
/**
 * Files of 250 seeds: about 45 s of CPU each on an idle core, and well under
 * tap's 600 s per file even when CI's integration tests load both cores
 * (files of 500 seeds once took over 600 s there).
 */
export const CI_SHARES = 8;

/** Share `k` (0-based) of CI's seeds 1..CI_SEEDS. */
export function runCiShare(t: Test, k: number): Promise<void> {
  const per = Math.ceil(CI_SEEDS / CI_SHARES);
  const first = 1 + k * per;
  return runSeedRange(t, first, Math.max(0, Math.min(per, CI_SEEDS - first + 1)));
}

export async function runSeedRange(t: Test, first: number, count: number): Promise<void> {
  await t.test(`simulator on the real replica core: seeds ${first}..${first + count - 1} keep every invariant`, async (t) => {
    const totals: Partial<Record<keyof ReplicaSimStats, number>> = {};
    const sizes = new Map<number, number>();
    const failures: string[] = [];
    for (let seed = first; seed < first + count; seed++) {
      const r = await runReplicaSeed({ seed });
      for (const [k, v] of Object.entries(r.stats) as [keyof ReplicaSimStats, number][]) totals[k] = (totals[k] ?? 0) + v;
      sizes.set(r.stats.nodes, (sizes.get(r.stats.nodes) ?? 0) + 1);
      if (!r.ok) failures.push(`seed ${seed}: ${r.error}\n  replay: XDEVICE_SEED=${seed} npm run sim`);
    }
    t.comment(`cluster sizes: ${JSON.stringify(Object.fromEntries(sizes))}`);
    t.comment(`totals: ${JSON.stringify(totals)}`);
    t.same(failures, [], 'no seed broke an invariant');
    t.same([...sizes.keys()].sort(), [1, 3, 5], '1-, 3- and 5-node clusters ran');
    for (const k of ['dropped', 'duplicated', 'partitions', 'crashes', 'diskFaults', 'confChanges', 'transfers', 'tableChanges', 'snapshotsInstalled', 'snapshotLz4Chunks', 'readsServed', 'acked', 'strangerMessages'] as const) {
      t.ok((totals[k] ?? 0) > 0, `${k} happened (${totals[k]})`);
    }
  });
}
