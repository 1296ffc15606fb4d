// Configuration of one Raft node. Everything that touches the world comes in
// here: the log storage and the source of randomness. Time is ticks.

import { limits } from '../limits.ts';
import { RaftConfigError } from './errors.ts';
import type { Storage } from './storage.ts';
import type { NodeId } from './types.ts';

/**
 * TEST ONLY. Each switch plants a known protocol bug so the simulator can show
 * it finds it (test/sim/planted-bugs.test.ts). Never set in production code.
 */
export interface TestingBugs {
  /** Commit by counting replicas of an entry from a previous term (Raft paper figure 8). */
  commitPreviousTermEntries?: boolean;
  /** Release votes and append acks before the state they depend on is durable. */
  replyBeforePersist?: boolean;
}

export interface Config {
  /** This node's id; never ''. */
  id: NodeId;
  storage: Storage;
  /** A uniformly distributed integer in [0, n). The node runtime passes crypto-seeded randomness; tests a seeded PRNG. */
  rand: (n: number) => number;
  /** A follower campaigns after a random number of ticks in [electionTicks, 2*electionTicks) without a leader. */
  electionTicks?: number;
  heartbeatTicks?: number;
  /** Last index already applied to the state machine (after a restart). */
  applied?: number;
  /** Pre-vote (Raft thesis 9.6): a node campaigns only if a majority would vote for it. Default true. */
  preVote?: boolean;
  /** A leader steps down without a live quorum; followers with a live leader ignore votes. Default true. */
  checkQuorum?: boolean;
  /** Largest total payload of entries in one App message. */
  messageBytesMax?: number;
  /** App messages in flight to one peer. */
  inFlightMessagesMax?: number;
  /** Payload bytes in flight to one peer. */
  inFlightBytesMax?: number;
  /** Uncommitted payload bytes the leader accepts before refusing proposals. */
  uncommittedBytesMax?: number;
  /** Payload bytes of committed entries handed out in one Ready (at least one entry). */
  readyCommittedBytesMax?: number;
  /** ReadIndex requests pending on the leader. */
  readIndexPendingMax?: number;
  /**
   * How a leader confirms that it still leads before a read (etcd's
   * ReadOnlyOption). 'safe' (default): a heartbeat round per ReadIndex
   * (thesis 6.4). 'lease': the leader's own reads are served without a round
   * while a quorum acknowledged a heartbeat within the lease (thesis 6.4.1);
   * correct only under bounded clock drift (limits.leaseClockDriftPercent)
   * and only with checkQuorum. Every voter that should count towards a lease
   * must run with 'lease' too: that is what makes it keep the promise (see
   * Raft.leasePromised()).
   */
  readOnly?: ReadOnlyOption;
  /** Percent by which clocks may drift (see limits.leaseClockDriftPercent). */
  leaseClockDriftPercent?: number;
  /** TEST ONLY: plant known bugs (see TestingBugs). */
  testingBugs?: TestingBugs;
}

export type ReadOnlyOption = 'safe' | 'lease';

export type ResolvedConfig = Required<Omit<Config, 'testingBugs'>> & {
  testingBugs: TestingBugs;
  /** Lease reads: ticks after a heartbeat left during which its quorum's acknowledgement keeps the lease (0: 'safe'). */
  leaseTicks: number;
};

/**
 * A follower keeps its promise for electionTicks of its ticks after the
 * heartbeat arrived, which is at least electionTicks - 1 whole tick
 * intervals; the leader's count of ticks since it sent the heartbeat may be
 * one short of the real time, and clocks drift: so the lease is
 * floor((electionTicks - 1) * (1 - drift)) ticks, and a stamp s is still
 * good while ticks - s < that.
 */
export function leaseTicksOf(electionTicks: number, driftPercent: number): number {
  return Math.floor(((electionTicks - 1) * (100 - driftPercent)) / 100);
}

/** Fills defaults from src/limits.ts and rejects contradictions up front. */
export function validateConfig(c: Config): ResolvedConfig {
  const r: ResolvedConfig = {
    id: c.id,
    storage: c.storage,
    rand: c.rand,
    electionTicks: c.electionTicks ?? limits.electionTicks,
    heartbeatTicks: c.heartbeatTicks ?? limits.heartbeatTicks,
    applied: c.applied ?? 0,
    preVote: c.preVote ?? true,
    checkQuorum: c.checkQuorum ?? true,
    messageBytesMax: c.messageBytesMax ?? limits.raftMessageBytesMax,
    inFlightMessagesMax: c.inFlightMessagesMax ?? limits.raftInFlightMessagesMax,
    inFlightBytesMax: c.inFlightBytesMax ?? limits.raftInFlightBytesMax,
    uncommittedBytesMax: c.uncommittedBytesMax ?? limits.raftUncommittedBytesMax,
    readyCommittedBytesMax: c.readyCommittedBytesMax ?? limits.raftReadyCommittedBytesMax,
    readIndexPendingMax: c.readIndexPendingMax ?? limits.raftReadIndexPendingMax,
    readOnly: c.readOnly ?? 'safe',
    leaseClockDriftPercent: c.leaseClockDriftPercent ?? limits.leaseClockDriftPercent,
    testingBugs: c.testingBugs ?? {},
    leaseTicks: 0,
  };
  const fail = (why: string): never => {
    throw new RaftConfigError(why);
  };
  if (typeof r.id !== 'string' || r.id === '') fail('id must be a non-empty string');
  if (!r.storage) fail('storage is required');
  if (typeof r.rand !== 'function') fail('rand is required');
  const positive = (name: keyof ResolvedConfig) => {
    const v = r[name];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) fail(`${name} must be a positive integer, got ${String(v)}`);
  };
  positive('electionTicks');
  positive('heartbeatTicks');
  positive('messageBytesMax');
  positive('inFlightMessagesMax');
  positive('inFlightBytesMax');
  positive('uncommittedBytesMax');
  positive('readyCommittedBytesMax');
  positive('readIndexPendingMax');
  if (r.heartbeatTicks >= r.electionTicks) fail('heartbeatTicks must be less than electionTicks');
  if (!Number.isSafeInteger(r.applied) || r.applied < 0) fail('applied must be a non-negative integer');
  if (r.inFlightBytesMax < r.messageBytesMax) fail('inFlightBytesMax must be at least messageBytesMax');
  if (r.readOnly !== 'safe' && r.readOnly !== 'lease') fail(`readOnly must be 'safe' or 'lease', got ${String(r.readOnly)}`);
  if (r.readOnly === 'lease') {
    // Without checkQuorum a follower that hears from its leader still votes
    // for others, and a leader cut off from the majority never steps down:
    // nothing would stop a second leader while the lease runs.
    if (!r.checkQuorum) fail("readOnly 'lease' needs checkQuorum: without it followers do not refuse other candidates while the leader's lease runs");
    const drift = r.leaseClockDriftPercent;
    if (typeof drift !== 'number' || !(drift >= 0 && drift < 100)) fail(`leaseClockDriftPercent must be in [0, 100), got ${String(drift)}`);
    r.leaseTicks = leaseTicksOf(r.electionTicks, drift);
    if (r.leaseTicks < 1) fail(`readOnly 'lease': electionTicks ${r.electionTicks} leaves no lease under ${drift}% clock drift`);
  }
  return r;
}
