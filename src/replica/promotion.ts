// When a learner may become a voter. A voter that cannot keep up slows every
// commit, and one that is not there at all can stop a small cluster (a 1-node
// cluster with an unreachable second voter commits nothing), so a learner is
// promoted only once the leader has seen it:
//   - replicating (its last answer accepted an append),
//   - holding everything the leader has compacted (its snapshot is installed:
//     match at or above the leader's snapshot index, and above zero), and
//   - within learnerPromotionLagEntriesMax of the commit index.
// Each condition is needed at any commit index: `match >= commit - bound`
// alone holds for match 0 while commit is small.

import { limits } from '../limits.ts';

export interface LearnerView {
  match: number;
  /** Raft progress state: probe | replicate | snapshot. */
  state: string;
}

export interface LeaderView {
  commit: number;
  /** The leader's snapshot (compaction) index: entries up to it exist only in snapshots. */
  snapshotIndex: number;
}

/** Why the learner is not yet fit to vote, or undefined if it is. */
export function promotionBlocker(learner: LearnerView | undefined, leader: LeaderView, lagEntriesMax = limits.learnerPromotionLagEntriesMax): string | undefined {
  if (!learner) return 'the leader has no progress for it';
  if (learner.state !== 'replicate') return `it is not replicating yet (${learner.state})`;
  if (learner.match === 0 || learner.match < leader.snapshotIndex) return `its snapshot is not installed (match ${learner.match}, snapshot ${leader.snapshotIndex})`;
  if (leader.commit - learner.match > lagEntriesMax) return `it is ${leader.commit - learner.match} entries behind (at most ${lagEntriesMax})`;
  return undefined;
}
