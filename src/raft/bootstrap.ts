// Bootstrapping a new cluster. The initial voters are written into the log
// as membership entries, exactly as later changes are, so a node that joins
// afterwards learns the whole membership history by replaying the log from
// index 1 (or from a snapshot that carries the ConfState).

import { encodeConfChange, confChanges } from './confchange.ts';
import { EntryType, type ConfState, type Entry, type HardState, type NodeId } from './types.ts';

export interface BootstrapState {
  /** Write these at indexes 1..n before the first start. */
  entries: Entry[];
  hardState: HardState;
  /** The membership after those entries; they count as applied. */
  confState: ConfState;
  /** Pass as Config.applied on the first start. */
  applied: number;
}

/**
 * The initial log of every founding member (identical on each). Members that
 * join later start from an empty log and an empty ConfState.
 */
export function bootstrap(voters: readonly NodeId[]): BootstrapState {
  if (voters.length === 0) throw new Error('bootstrap needs at least one voter');
  if (new Set(voters).size !== voters.length) throw new Error('bootstrap: duplicate voter ids');
  const sorted = [...voters].sort();
  const entries: Entry[] = sorted.map((id, i) => ({ term: 1, index: i + 1, type: EntryType.ConfChange, data: encodeConfChange(confChanges.addVoter(id)) }));
  return {
    entries,
    hardState: { term: 1, vote: '', commit: entries.length },
    confState: { voters: sorted, learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false },
    applied: entries.length,
  };
}
