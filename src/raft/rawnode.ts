// The interface the node runtime drives (etcd's rawnode.go). Inputs: step(),
// tick(), propose*(), readIndex(), transferLeader(), report*(). Outputs come
// out of ready(); the runtime persists, sends, applies, then advance()s.
//
// The runtime loop:
//
//   while (node.hasReady()) {
//     const rd = node.ready();
//     send(rd.messages);                            // at once, in parallel with the write
//     await persist(rd.hardState, rd.entries, rd.snapshot);   // entries before hard state, or atomically
//     send(rd.messagesAfterPersist);                // only now: they promise durable state
//     apply(rd.committedEntries);                   // calling applyConfChange for ConfChange entries
//     serve(rd.readStates);
//     node.advance(rd);
//   }
//
// Several Readys may be outstanding (the WAL writes them in order); they must
// be advanced in the order they were returned.

import { assert } from '../errors.ts';
import type { Config } from './config.ts';
import type { ConfChange } from './confchange.ts';
import { payloadBytes } from './log.ts';
import type { ProgressState } from './progress.ts';
import { Raft, Role, type ElectionRecord } from './raft.ts';
import type { ReadState } from './read-only.ts';
import { EntryType, LOCAL_MESSAGE_TYPES, message, MessageType, None, type ConfState, type Entry, type HardState, type Message, type NodeId, type SnapshotMetadata } from './types.ts';

export interface SoftState {
  lead: NodeId;
  role: Role;
}

export interface Ready {
  /** Present when the leader or this node's role changed. */
  softState?: SoftState;
  /** Present when term, vote or commit changed: persist it. */
  hardState?: HardState;
  /** Append to the log (replacing any entries at the same indexes and after). */
  entries: Entry[];
  /** Install this snapshot (its payload was streamed by the state machine) before the entries. */
  snapshot?: SnapshotMetadata;
  /** Apply in order; they are durable here already. */
  committedEntries: Entry[];
  /** Send right away (the leader's App, heartbeats, snapshots, forwards). */
  messages: Message[];
  /** Send only once this Ready's hard state, entries and snapshot are durable (votes, append acks). */
  messagesAfterPersist: Message[];
  /** Answers to readIndex(): serve once applied >= index. */
  readStates: ReadState[];
  /** Whether the write needs fdatasync (a commit-only change does not). */
  mustSync: boolean;
}

export interface PeerStatus {
  match: number;
  next: number;
  state: ProgressState;
  isLearner: boolean;
  recentActive: boolean;
  inflightMessages: number;
  inflightBytes: number;
  pendingSnapshot: number;
}

/** What the runtime may know of Raft without copying the configuration (etcd's BasicStatus). */
export interface BasicStatus {
  id: NodeId;
  /** etcd's raftState. */
  role: Role;
  term: number;
  vote: NodeId;
  lead: NodeId;
  commit: number;
  applied: number;
  lastIndex: number;
  leadTransferee: NodeId;
}

/** BasicStatus plus the configuration and, on the leader, every peer's progress (etcd's Status). */
export interface Status extends BasicStatus {
  /** The configuration: voters, learners, and the outgoing half while joint. */
  confState: ConfState;
  /** Per-peer replication state, only on the leader (empty elsewhere). */
  progress: Record<NodeId, PeerStatus>;
}


const RESPONSES = new Set<MessageType>([MessageType.AppResp, MessageType.VoteResp, MessageType.PreVoteResp, MessageType.HeartbeatResp, MessageType.SnapStatus, MessageType.Unreachable]);

export class RawNode {
  // Private: the runtime reads Raft through basicStatus(), status(),
  // isMember(), localReadIndex() and leaseRead(); protocol tests and the simulator's
  // invariant checks use raftForTesting().
  private readonly raft: Raft;
  private prevSoftState: SoftState;
  private prevHardState: HardState;
  private readonly outstanding: Ready[] = [];

  constructor(config: Config) {
    this.raft = new Raft(config);
    this.prevSoftState = { lead: this.raft.lead, role: this.raft.role };
    this.prevHardState = this.raft.hardState();
  }

  get id(): NodeId {
    return this.raft.id;
  }

  tick(): void {
    this.raft.tick();
  }

  /** Start an election now (tests; bootstrapping a single node without waiting a timeout). */
  campaign(): void {
    this.raft.step(message({ type: MessageType.Hup, from: this.raft.id }));
  }

  /**
   * A message from a peer. Returns false if it was dropped: a local-only
   * type, or a response from a node not in the configuration.
   */
  step(m: Message): boolean {
    if (LOCAL_MESSAGE_TYPES.has(m.type)) return false;
    if (RESPONSES.has(m.type) && !this.raft.trk.progress.has(m.from)) return false;
    this.raft.step(m);
    return true;
  }

  /**
   * Append data to the log (leader only). Returns the index and term it got:
   * the entry is committed when an applied entry has that index and term.
   * Throws NotLeaderError, TransferInProgressError, TooManyUncommittedBytesError,
   * ProposalDroppedError.
   */
  propose(data: Buffer): { index: number; term: number } {
    return this.raft.proposeEntry(EntryType.Normal, data);
  }

  /**
   * Propose a membership change (leader only). Throws like propose(), plus
   * ConfChangeInProgressError while another change is unapplied and
   * InvalidConfChangeError for a change the current configuration rejects.
   */
  proposeConfChange(cc: ConfChange): { index: number; term: number } {
    return this.raft.proposeConfChange(cc);
  }

  /** Apply a committed ConfChange entry (decodeConfChange(entry.data), at entry.index); returns the new configuration. */
  applyConfChange(cc: ConfChange, index?: number): ConfState {
    return this.raft.applyConfChange(cc, index);
  }

  /**
   * Ask for a linearizable read point. `context` must be unique among pending
   * requests; the answer is a ReadState with the same context in a later
   * Ready. Lost on leader changes: retry after a timeout. Throws
   * NotLeaderError when no leader is known, ReadIndexDroppedError when too
   * many are pending.
   */
  readIndex(context: Buffer): void {
    this.raft.readIndex(context);
  }

  /** Hand leadership to `transferee` (on a follower: forwarded to the leader). */
  transferLeader(transferee: NodeId): void {
    this.raft.step(message({ type: MessageType.TransferLeader, from: transferee }));
  }

  /** The transport could not reach `id`: stop pipelining to it until it answers. */
  reportUnreachable(id: NodeId): void {
    this.raft.step(message({ type: MessageType.Unreachable, from: id }));
  }

  /** The state machine finished (ok) or gave up streaming the snapshot to `id`. */
  reportSnapshot(id: NodeId, ok: boolean): void {
    this.raft.step(message({ type: MessageType.SnapStatus, from: id, reject: !ok }));
  }

  /** Forget the current leader (a follower that knows it is gone). */
  forgetLeader(): void {
    this.raft.step(message({ type: MessageType.ForgetLeader, from: this.raft.id }));
  }

  private softState(): SoftState {
    return { lead: this.raft.lead, role: this.raft.role };
  }

  hasReady(): boolean {
    const r = this.raft;
    r.flush();
    if (r.msgs.length > 0 || r.msgsAfterPersist.length > 0 || r.readStates.length > 0) return true;
    const u = r.log.unstable;
    if (u.offsetInProgress < u.offset + u.entries.length) return true;
    if (u.nextSnapshot()) return true;
    if (r.log.hasNextCommittedEntries()) return true;
    if (r.lead !== this.prevSoftState.lead || r.role !== this.prevSoftState.role) return true;
    const hs = this.prevHardState;
    return r.term !== hs.term || r.vote !== hs.vote || r.log.committed !== hs.commit;
  }

  ready(): Ready {
    const r = this.raft;
    r.flush();
    const u = r.log.unstable;
    const rd: Ready = {
      entries: u.nextEntries(),
      committedEntries: r.log.nextCommittedEntries(),
      messages: r.msgs,
      messagesAfterPersist: r.msgsAfterPersist,
      readStates: r.readStates,
      mustSync: false,
    };
    const snapshot = u.nextSnapshot();
    if (snapshot) rd.snapshot = snapshot;
    const ss = this.softState();
    if (ss.lead !== this.prevSoftState.lead || ss.role !== this.prevSoftState.role) {
      rd.softState = ss;
      this.prevSoftState = ss;
    }
    const hs = r.hardState();
    const prev = this.prevHardState;
    if (hs.term !== prev.term || hs.vote !== prev.vote || hs.commit !== prev.commit) {
      rd.hardState = hs;
      rd.mustSync = hs.term !== prev.term || hs.vote !== prev.vote;
      this.prevHardState = hs;
    }
    if (rd.entries.length > 0 || rd.snapshot) rd.mustSync = true;
    r.msgs = [];
    r.msgsAfterPersist = [];
    r.readStates = [];
    u.acceptInProgress();
    if (rd.committedEntries.length > 0) r.log.acceptApplying(rd.committedEntries[rd.committedEntries.length - 1]!.index);
    this.outstanding.push(rd);
    return rd;
  }

  /**
   * The Ready's hard state, entries and snapshot are durable and its committed
   * entries applied. Must be called for every Ready, in order.
   */
  advance(rd: Ready): void {
    assert(this.outstanding.length > 0 && this.outstanding[0] === rd, 'advance() of a Ready that is not the oldest outstanding one');
    this.outstanding.shift();
    const r = this.raft;
    if (rd.snapshot) {
      r.log.stableSnapTo(rd.snapshot.index);
      if (rd.snapshot.index > r.log.applied && rd.snapshot.index <= r.log.committed) r.log.appliedTo(rd.snapshot.index);
    }
    if (rd.entries.length > 0) {
      const last = rd.entries[rd.entries.length - 1]!;
      r.log.stableTo(last.index, last.term);
    }
    if (rd.committedEntries.length > 0) {
      r.appliedTo(rd.committedEntries[rd.committedEntries.length - 1]!.index, payloadBytes(rd.committedEntries));
    }
    // The leader counts its own entries toward commit only now (thesis 10.2.1).
    r.selfPersisted();
  }

  /** Readys returned and not yet advanced. */
  get outstandingReadys(): number {
    return this.outstanding.length;
  }

  /** Role, term, vote, leader, commit and applied: cheap enough for every request. */
  basicStatus(): BasicStatus {
    const r = this.raft;
    return {
      id: r.id,
      role: r.role,
      term: r.term,
      vote: r.vote,
      lead: r.lead,
      commit: r.log.committed,
      applied: r.log.applied,
      lastIndex: r.log.lastIndex(),
      leadTransferee: r.leadTransferee,
    };
  }

  /** Whether `id` is in the configuration (a voter of either half, or a learner). */
  isMember(id: NodeId): boolean {
    return this.raft.trk.progress.has(id);
  }

  /** This node's latest campaign (why, and who voted how), for the runtime's logs. */
  lastElection(): ElectionRecord | undefined {
    return this.raft.lastElection;
  }

  /** Whether any configuration is known yet (false on a node waiting to be added). */
  hasConfiguration(): boolean {
    return this.raft.trk.progress.size > 0;
  }

  /** See Raft.localReadIndex: a read index usable at once, or undefined (ask readIndex()). */
  localReadIndex(): number | undefined {
    return this.raft.localReadIndex();
  }

  /** See Raft.leaseRead: a read index the leader's lease vouches for, and the stamp it rests on; undefined: ask readIndex(). */
  leaseRead(): { index: number; since: number } | undefined {
    return this.raft.leaseRead();
  }

  /** Ticks so far (Raft's clock, from 1: lease stamps are these). */
  get ticks(): number {
    return this.raft.ticks;
  }

  status(): Status {
    const r = this.raft;
    const progress: Record<NodeId, PeerStatus> = {};
    if (r.role === Role.Leader) {
      for (const [id, pr] of r.trk.progress) {
        progress[id] = {
          match: pr.match,
          next: pr.next,
          state: pr.state,
          isLearner: pr.isLearner,
          recentActive: pr.recentActive,
          inflightMessages: pr.inflights.count,
          inflightBytes: pr.inflights.bytes,
          pendingSnapshot: pr.pendingSnapshot,
        };
      }
    }
    return { ...this.basicStatus(), confState: r.trk.confState(), progress };
  }
}

/**
 * The Raft inside a RawNode. For protocol tests and the simulator's
 * invariant checks only (they look at logs and trackers the way etcd's
 * in-package tests do); nothing under src/ outside src/raft calls it.
 */
export function raftForTesting(node: RawNode): Raft {
  return node['raft'];
}

export { None, Role };
