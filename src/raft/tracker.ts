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

  isSingleton(): boolean {
    return this.incomingIds.length === 1 && this.outgoingIds.length === 0;
  }

  /** The highest index durable on a quorum of voters (learners never count). */
  committed(): number {
    const prs = this.progress;
    return jointCommitted(this.incomingIds, this.outgoingIds, (id) => prs.get(id)?.match ?? 0, this.scratch);
  }

  /** The largest value a quorum of voters has reached: committed() over any per-voter value. */
  quorumValue(valueOf: (id: NodeId) => number): number {
    return jointCommitted(this.incomingIds, this.outgoingIds, valueOf, this.scratch);
  }

  /** Whether a quorum of voters was heard from since the last check. */
  quorumActive(selfId: NodeId): boolean {
    const active = new Map<NodeId, boolean>();
    for (const [id, pr] of this.progress) {
      if (!pr.isLearner) active.set(id, id === selfId || pr.recentActive);
    }
    return jointVoteResult(this.incomingIds, this.outgoingIds, active) === VoteResult.Won;
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
    return { granted, rejected, result: jointVoteResult(this.incomingIds, this.outgoingIds, this.votes) };
  }
}
