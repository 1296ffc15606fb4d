// The leader's bookkeeping of the configuration and every peer's progress
// (etcd's tracker/tracker.go). The configuration is immutable once built;
// a change builds a new one (see changer.ts) and swaps it in.

import { Progress } from './progress.ts';
import { jointCommitted, jointVoteResult, VoteResult } from './quorum.ts';
import type { ConfState, NodeId } from './types.ts';

export interface TrackerConfig {
  /** voters[0] is the incoming configuration, voters[1] the outgoing one (empty unless joint). */
  voters: [Set<NodeId>, Set<NodeId>];
  learners: Set<NodeId>;
  /** Voters of the outgoing configuration that become learners on leaving the joint configuration. */
  learnersNext: Set<NodeId>;
  autoLeave: boolean;
}

export function emptyTrackerConfig(): TrackerConfig {
  return { voters: [new Set(), new Set()], learners: new Set(), learnersNext: new Set(), autoLeave: false };
}

export function cloneTrackerConfig(c: TrackerConfig): TrackerConfig {
  return {
    voters: [new Set(c.voters[0]), new Set(c.voters[1])],
    learners: new Set(c.learners),
    learnersNext: new Set(c.learnersNext),
    autoLeave: c.autoLeave,
  };
}

const sorted = (s: Set<NodeId>): NodeId[] => [...s].sort();

export function confStateOf(c: TrackerConfig): ConfState {
  return {
    voters: sorted(c.voters[0]),
    learners: sorted(c.learners),
    votersOutgoing: sorted(c.voters[1]),
    learnersNext: sorted(c.learnersNext),
    autoLeave: c.autoLeave,
  };
}

/** The voter halves of one configuration (outgoing empty unless joint). */
export interface VoterHalves {
  incoming: NodeId[];
  outgoing: NodeId[];
}

export class ProgressTracker {
  config: TrackerConfig;
  progress: Map<NodeId, Progress>;
  votes = new Map<NodeId, boolean>();
  readonly inFlightMessagesMax: number;
  readonly inFlightBytesMax: number;
  // Cached arrays of the configuration: commit runs on every ack.
  private incomingIds: NodeId[] = [];
  private outgoingIds: NodeId[] = [];
  private readonly scratch: number[] = [];
  /**
   * The configurations that the membership changes in the log after the
   * applied index lead to, oldest first (Raft thesis 4.1: a server uses the
   * latest configuration in its log, committed or not). Elections and commit
   * need a quorum of each as well as of `config`: a node whose applied
   * configuration lags — it never learned, or forgot across a restart, that
   * a change committed — must not win with votes the newer configuration no
   * longer counts. Empty while no change is in flight (the usual case).
   */
  private pending: VoterHalves[] = [];

  constructor(inFlightMessagesMax: number, inFlightBytesMax: number) {
    this.inFlightMessagesMax = inFlightMessagesMax;
    this.inFlightBytesMax = inFlightBytesMax;
    this.config = emptyTrackerConfig();
    this.progress = new Map();
  }

  setConfig(config: TrackerConfig, progress: Map<NodeId, Progress>): void {
    this.config = config;
    this.progress = progress;
    this.incomingIds = [...config.voters[0]];
    this.outgoingIds = [...config.voters[1]];
  }

  setPending(pending: VoterHalves[]): void {
    this.pending = pending;
  }

  /** The configurations in the log beyond the applied one (see `pending`). */
  pendingConfigs(): readonly VoterHalves[] {
    return this.pending;
  }

  confState(): ConfState {
    return confStateOf(this.config);
  }

  isJoint(): boolean {
    return this.config.voters[1].size > 0;
  }

  isVoter(id: NodeId): boolean {
    return this.config.voters[0].has(id) || this.config.voters[1].has(id);
  }

  /** Every voter of either half, each once. */
  voterIds(): NodeId[] {
    if (this.outgoingIds.length === 0) return this.incomingIds.slice();
    const s = new Set(this.incomingIds);
    for (const id of this.outgoingIds) s.add(id);
    return [...s];
  }

  /** Every voter an election must ask: of the configuration and of every pending one. */
  electionVoterIds(): NodeId[] {
    if (this.pending.length === 0) return this.voterIds();
    const s = new Set(this.voterIds());
    for (const p of this.pending) for (const id of [...p.incoming, ...p.outgoing]) s.add(id);
    return [...s];
  }

  isSingleton(): boolean {
    return this.incomingIds.length === 1 && this.outgoingIds.length === 0 && this.pending.length === 0;
  }

  /** The highest index durable on a quorum of voters (learners never count), in every pending configuration too. */
  committed(): number {
    const prs = this.progress;
    return this.quorumValue((id) => prs.get(id)?.match ?? 0);
  }

  /** The largest value a quorum of voters has reached: committed() over any per-voter value. */
  quorumValue(valueOf: (id: NodeId) => number): number {
    let v = jointCommitted(this.incomingIds, this.outgoingIds, valueOf, this.scratch);
    for (const p of this.pending) v = Math.min(v, jointCommitted(p.incoming, p.outgoing, valueOf, this.scratch));
    return v;
  }

  /** The outcome of `votes` in the configuration and every pending one: won only if won in each. */
  voteResult(votes: ReadonlyMap<NodeId, boolean>): VoteResult {
    let result = jointVoteResult(this.incomingIds, this.outgoingIds, votes);
    for (const p of this.pending) {
      if (result === VoteResult.Lost) break;
      const r = jointVoteResult(p.incoming, p.outgoing, votes);
      if (r !== VoteResult.Won) result = r;
    }
    return result;
  }

  /** Whether a quorum of voters was heard from since the last check. */
  quorumActive(selfId: NodeId): boolean {
    const active = new Map<NodeId, boolean>();
    for (const [id, pr] of this.progress) {
      if (!pr.isLearner) active.set(id, id === selfId || pr.recentActive);
    }
    return this.voteResult(active) === VoteResult.Won;
  }

  resetVotes(): void {
    this.votes = new Map();
  }

  recordVote(id: NodeId, granted: boolean): void {
    if (!this.votes.has(id)) this.votes.set(id, granted);
  }

  tallyVotes(): { granted: number; rejected: number; result: VoteResult } {
    let granted = 0;
    let rejected = 0;
    for (const [id, pr] of this.progress) {
      if (pr.isLearner) continue;
      const v = this.votes.get(id);
      if (v === undefined) continue;
      if (v) granted++;
      else rejected++;
    }
    return { granted, rejected, result: this.voteResult(this.votes) };
  }
}
