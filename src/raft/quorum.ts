// Quorum arithmetic: majority configurations and joint ones (two majorities
// that must both agree, Raft thesis 4.3). An empty majority agrees with
// everything, so a joint configuration with an empty outgoing half behaves
// like its incoming half alone.

import type { NodeId } from './types.ts';

export enum VoteResult {
  Pending = 'pending',
  Lost = 'lost',
  Won = 'won',
}

/**
 * The highest index acknowledged by a majority of `ids`: sort the match
 * indexes descending and take the one at position floor(n/2). `scratch` is
 * reused between calls so the hot path does not allocate.
 */
export function majorityCommitted(ids: readonly NodeId[], matchOf: (id: NodeId) => number, scratch: number[] = []): number {
  const n = ids.length;
  if (n === 0) return Number.MAX_SAFE_INTEGER;
  scratch.length = n;
  for (let i = 0; i < n; i++) scratch[i] = matchOf(ids[i]!);
  if (n === 1) return scratch[0]!;
  // Insertion sort, descending: n is 3 or 5, never large.
  for (let i = 1; i < n; i++) {
    const v = scratch[i]!;
    let j = i - 1;
    while (j >= 0 && scratch[j]! < v) {
      scratch[j + 1] = scratch[j]!;
      j--;
    }
    scratch[j + 1] = v;
  }
  return scratch[n >> 1]!;
}

export function jointCommitted(
  incoming: readonly NodeId[],
  outgoing: readonly NodeId[],
  matchOf: (id: NodeId) => number,
  scratch: number[] = [],
): number {
  const a = majorityCommitted(incoming, matchOf, scratch);
  if (outgoing.length === 0) return a;
  return Math.min(a, majorityCommitted(outgoing, matchOf, scratch));
}

export function majorityVoteResult(ids: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  if (ids.length === 0) return VoteResult.Won;
  let granted = 0;
  let missing = 0;
  for (const id of ids) {
    const v = votes.get(id);
    if (v === undefined) missing++;
    else if (v) granted++;
  }
  const q = (ids.length >> 1) + 1;
  if (granted >= q) return VoteResult.Won;
  if (granted + missing >= q) return VoteResult.Pending;
  return VoteResult.Lost;
}

export function jointVoteResult(incoming: readonly NodeId[], outgoing: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  const a = majorityVoteResult(incoming, votes);
  const b = majorityVoteResult(outgoing, votes);
  if (a === b) return a;
  if (a === VoteResult.Lost || b === VoteResult.Lost) return VoteResult.Lost;
  return VoteResult.Pending;
}
