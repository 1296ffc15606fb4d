// CI's share of the simulator on the real replica core (test/sim/replica-sim.ts):
// XDEVICE_SIM_SEEDS seeds (default 2,000: the first eighth here, the others in
// sim-2..8.test.ts, so tap runs them on both cores) over 1-, 3- and 5-node clusters, plus
// every seed that once failed. A failing seed prints the command that replays
// it with a full trace. Longer campaigns: npm run sim -- --seeds 100000.

import t from 'tap';
import { runCiShare } from './sim-range.ts';
import { runReplicaSeed } from './replica-sim.ts';

/**
 * Seeds that once failed, each a bug in the runtime the simulator found (the
 * seed numbers are of the simulator version that found them; the seeds keep
 * the same fault mix in spirit, and run on every CI pass):
 *   11   a stranger's term at raftTermMax spread through the cluster (peerTermJumpMax)
 *   59   a disk fault that surfaced after the heal (the sim's own bookkeeping)
 *   106  a failed apply in a pipelined Ready surfaced as an unhandled rejection
 *   554  an AppResp for entries already in the log went out before they were durable
 *   24   a complete snapshot staging Raft never took was installed at restart (stale reads)
 *   479, 502  WAL segment heads torn by a power cut (fixed in src/wal)
 *   3001850, 3002269  compaction moved the leader's snapshot past a learner between its promotion's proposal and apply
 *   327  a node restarted with its commit index from before two membership changes in its
 *        log won an election by its applied configuration with a removed voter's vote,
 *        without 22 committed entries (fixed in src/raft: elections and commit need a
 *        quorum of every configuration the log's unapplied changes lead to, thesis 4.1)
 *   12002237  a node that restarted before applying its own addition voted by its commit
 *        index as if removed, electing a leader without a committed entry (src/raft)
 *   7000108, 7004734  a receiver that died after a snapshot stream's last chunk: the sender waited 120 s for its report (now it gives up when the connection goes)
 *   17004348  WAL recovery trusted a batch whose fdatasync had failed in the previous process (the
 *        page cache still showed it), appended after it, and the next power cut left a gap the WAL
 *        refuses: the node could never start again (fixed in src/wal/recovery.ts: the last
 *        segment's recovered bytes are written back and synced before appends continue)
 *   40016828  a membership change was applied before its commit index was durable: three nodes
 *        restarted in the configuration before a removal whose removed voter had retired, and
 *        no leader could be elected (fixed in src/replica/replica.ts: a batch holding a
 *        membership change is applied once a hard state covering it is durable; the simulator
 *        now checks at every restart that a node keeps the changes it applied)
 *   21000066, 14006043  the simulator's own network: a partition dropped a snapshot stream's frames but kept
 *        its connection, so the sender waited 120 s for a report that was lost and the follower
 *        never caught up (a partition now breaks the connections of the nodes it cuts off, as
 *        the transport's idle timeout does, and frames in flight on them are lost)
 */
const REGRESSION_SEEDS = [11, 24, 59, 106, 327, 479, 502, 554, 3001850, 3002269, 7000108, 7004734, 12002237, 14006043, 17004348, 21000066, 40016828];

await runCiShare(t, 0);

t.test('simulator: seeds that once failed keep every invariant', async (t) => {
  for (const seed of REGRESSION_SEEDS) {
    const r = await runReplicaSeed({ seed });
    t.ok(r.ok, `seed ${seed}: ${r.error ?? 'ok'} (replay: XDEVICE_SEED=${seed} npm run sim)`);
  }
});

t.test('simulator: a seed replays exactly', async (t) => {
  for (const seed of [7, 10]) {
    const a: string[] = [];
    const b: string[] = [];
    await runReplicaSeed({ seed, trace: (l) => a.push(l) });
    await runReplicaSeed({ seed, trace: (l) => b.push(l) });
    t.ok(a.length > 1000, `seed ${seed} traced ${a.length} lines`);
    t.same(a, b, `seed ${seed}: identical traces`);
  }
});
