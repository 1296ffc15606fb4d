// The Raft protocol as a pure state machine (Ongaro's thesis; etcd-io/raft's
// raft.go is the model for the structure). It changes only through step()
// and tick(); what the world must do — persist, send, apply — accumulates in
// msgs / msgsAfterPersist / the log and is handed out by RawNode.ready().
//
// Over 500 lines, as etcd's raft.go: the step functions of every role and
// the handlers they share read best together; what keeps its own state lives
// beside it (log, progress, inflights, tracker, read-only, changer).

import { assert } from '../errors.ts';
import { Changer, restoreConfState, type ChangeResult } from './changer.ts';
import { validateConfig, type Config, type ResolvedConfig } from './config.ts';
import { decodeConfChange, encodeConfChange, enterJoint, isLeaveJoint, leaveJointChange, type ConfChange } from './confchange.ts';
import {
  ConfChangeInProgressError,
  InvalidConfChangeError,
  NotLeaderError,
  ProposalDroppedError,
  ReadIndexDroppedError,
  TooManyUncommittedBytesError,
  TransferInProgressError,
} from './errors.ts';
import { payloadBytes, RaftLog } from './log.ts';
import { ProgressState, type Progress } from './progress.ts';
import { VoteResult } from './quorum.ts';
import { ReadOnly, type ReadState } from './read-only.ts';
import { StorageError } from './storage.ts';
import { ProgressTracker, type VoterHalves } from './tracker.ts';
import { EntryType, isEmptyHardState, message, MessageType, None, type ConfState, type Entry, type HardState, type Message, type NodeId, type SnapshotMetadata } from './types.ts';

export enum Role {
  Follower = 'follower',
  PreCandidate = 'pre-candidate',
  Candidate = 'candidate',
  Leader = 'leader',
}

/** Context of a Vote sent after TimeoutNow: voters grant it despite a live leader (thesis 3.10). */
export const CAMPAIGN_TRANSFER_CONTEXT: Buffer = Buffer.from('xdevice-campaign-transfer');

const isTransferContext = (ctx: Buffer | undefined): boolean => ctx !== undefined && ctx.equals(CAMPAIGN_TRANSFER_CONTEXT);

const isCompacted = (e: unknown): boolean => e instanceof StorageError && e.code === 'XDEVICE_ERR_COMPACTED';

/** This node's latest campaign: why it began and how the polls went (for the runtime's log; no logic reads it). */
export interface ElectionRecord {
  /** The term campaigned for. */
  term: number;
  /** 'timeout': no leader heard within the election timeout (or an explicit campaign); 'transfer': TimeoutNow from the leader. */
  cause: 'timeout' | 'transfer';
  preVote?: VoteTally;
  vote?: VoteTally;
}

export interface VoteTally {
  granted: NodeId[];
  rejected: NodeId[];
  outcome: 'won' | 'lost';
}

export class Raft {
  readonly id: NodeId;
  readonly cfg: ResolvedConfig;
  term = 0;
  vote: NodeId = None;
  lead: NodeId = None;
  role: Role = Role.Follower;
  isLearner = false;
  readonly log: RaftLog;
  trk: ProgressTracker;

  /** Safe to send at once. */
  msgs: Message[] = [];
  /** Depend on this node's durable state: sent only after the Ready carrying it is persisted. */
  msgsAfterPersist: Message[] = [];
  readStates: ReadState[] = [];
  readonly readOnly = new ReadOnly();
  /** ReadIndex requests received before this leader committed an entry of its term. */
  private pendingReadIndexMessages: Message[] = [];
  /** Follower: Apps of this term's leader that arrived ahead of a gap, by previous index (see holdApp). */
  private readonly heldApps = new Map<number, Message>();
  private heldAppBytes = 0;

  leadTransferee: NodeId = None;
  /** Index of the last membership change proposed; a new one waits until it is applied. */
  pendingConfIndex = 0;
  /** Indexes of the ConfChange entries in the log after the applied index, ascending (see ProgressTracker.pending). */
  private confTail: number[] = [];
  /** Peers tracked only because a pending configuration makes them voters (see refreshPendingConfigs). */
  private readonly pendingTracked = new Set<NodeId>();
  /** Payload bytes appended by this leader and not yet applied. */
  uncommittedBytes = 0;

  lastElection: ElectionRecord | undefined;

  electionElapsed = 0;
  heartbeatElapsed = 0;
  randomizedElectionTimeout = 0;

  // Lease reads (cfg.readOnly 'lease', see leaseRead()). `ticks` is this
  // node's clock: heartbeats carry it as a stamp, followers echo it. Starts
  // at 1 so that a stamp of 0 means none.
  ticks = 1;
  /** Ticks since a leader's heartbeat arrived (or since start): below electionTicks, this node votes for no one else. */
  private leasePromiseElapsed = 0;
  /** This leader sent TimeoutNow in this term: its successor may be elected despite the promises. */
  private leaseRevoked = false;

  // Work deferred to flush(), so a burst of proposals or reads in one turn
  // becomes one App / one heartbeat per peer instead of one per request.
  private needBroadcast = false;
  private needReadHeartbeat = false;

  constructor(config: Config) {
    this.cfg = validateConfig(config);
    this.id = this.cfg.id;
    this.log = new RaftLog(this.cfg.storage, this.cfg.readyCommittedBytesMax);
    const { hardState, confState } = this.cfg.storage.initialState();
    this.trk = new ProgressTracker(this.cfg.inFlightMessagesMax, this.cfg.inFlightBytesMax);
    this.switchToConfig(restoreConfState(this.trk, this.log.lastIndex(), confState));
    if (!isEmptyHardState(hardState)) this.loadState(hardState);
    if (this.cfg.applied > 0) {
      // Applied entries were committed even if the commit index persisted lags.
      const applied = Math.min(this.cfg.applied, this.log.lastIndex());
      this.log.commitTo(applied);
      this.log.appliedTo(applied);
    }
    for (const e of this.log.slice(this.log.applied + 1, this.log.lastIndex() + 1, Number.MAX_SAFE_INTEGER)) {
      if (e.type === EntryType.ConfChange) this.confTail.push(e.index);
    }
    this.refreshPendingConfigs();
    this.log.onAppend = (ents) => this.noteAppended(ents);
    this.becomeFollower(this.term, None);
  }

  // ---- the configurations in the log beyond the applied one -------------------

  private noteAppended(ents: Entry[]): void {
    const first = ents[0]!.index;
    let changed = false;
    while (this.confTail.length > 0 && this.confTail[this.confTail.length - 1]! >= first) {
      this.confTail.pop();
      changed = true;
    }
    for (const e of ents) {
      if (e.type === EntryType.ConfChange) {
        this.confTail.push(e.index);
        changed = true;
      }
    }
    if (changed) this.refreshPendingConfigs();
  }

  private dropConfTail(upTo: number): void {
    if (this.confTail.length === 0 || this.confTail[0]! > upTo) return;
    this.confTail = this.confTail.filter((i) => i > upTo);
    this.refreshPendingConfigs();
  }

  /**
   * The configurations the log's unapplied membership changes lead to, from
   * the applied one (Raft thesis 4.1). A change that would not apply ends the
   * chain: at apply it would fail too, and nothing after it counts.
   */
  private refreshPendingConfigs(): void {
    const chain: VoterHalves[] = [];
    let at = this.trk;
    for (const index of this.confTail) {
      const e = this.log.slice(index, index + 1, Number.MAX_SAFE_INTEGER)[0];
      if (!e || e.type !== EntryType.ConfChange) break;
      let next: ChangeResult;
      try {
        next = computeConfChangeOn(at, decodeConfChange(e.data), this.log.lastIndex());
      } catch {
        break;
      }
      chain.push({ incoming: [...next.config.voters[0]], outgoing: [...next.config.voters[1]] });
      // A voter the change adds directly (not a learner first) is tracked
      // from now on, as a learner until the change applies: a leader
      // replicates to it, so it can make up the quorum the change needs.
      for (const id of next.config.voters[0]) {
        if (id !== this.id && !this.trk.progress.has(id)) {
          const pr = next.progress.get(id)!;
          pr.isLearner = true;
          this.trk.progress.set(id, pr);
          this.pendingTracked.add(id);
        }
      }
      at = new ProgressTracker(this.cfg.inFlightMessagesMax, this.cfg.inFlightBytesMax);
      at.setConfig(next.config, next.progress);
    }
    this.trk.setPending(chain);
    for (const id of this.pendingTracked) {
      const c = this.trk.config;
      if (c.voters[0].has(id) || c.voters[1].has(id) || c.learners.has(id)) {
        this.pendingTracked.delete(id); // a member now: its progress is the configuration's
      } else if (!chain.some((h) => h.incoming.includes(id) || h.outgoing.includes(id))) {
        this.trk.progress.delete(id); // the change that added it was truncated away
        this.pendingTracked.delete(id);
      }
    }
  }

  private loadState(hs: HardState): void {
    assert(hs.commit <= this.log.lastIndex(), `hard state commit ${hs.commit} beyond last index ${this.log.lastIndex()}`);
    this.log.commitTo(hs.commit);
    this.term = hs.term;
    this.vote = hs.vote;
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  promotable(): boolean {
    const pr = this.trk.progress.get(this.id);
    return pr !== undefined && !pr.isLearner && !this.log.unstable.snapshot;
  }

  // ---- sending ---------------------------------------------------------------

  private send(m: Message): void {
    if (m.from === None) m.from = this.id;
    const t = m.type;
    if (t === MessageType.Vote || t === MessageType.VoteResp || t === MessageType.PreVote || t === MessageType.PreVoteResp) {
      assert(m.term !== 0, `${MessageType[t]} without a term`);
    } else if (t !== MessageType.Prop && t !== MessageType.ReadIndex && t !== MessageType.TransferLeader) {
      // Forwarded requests carry no term: they are local to whoever handles them.
      m.term = this.term;
    }
    // A vote request carries our new term and self-vote; answers carry votes
    // and append acks. All of them promise durable state (Raft figure 2).
    const afterPersist = t === MessageType.AppResp || t === MessageType.VoteResp || t === MessageType.PreVoteResp || t === MessageType.Vote;
    if (afterPersist && !this.cfg.testingBugs.replyBeforePersist) this.msgsAfterPersist.push(m);
    else this.msgs.push(m);
  }

  /** Send an App to `to` if flow control allows; returns whether a message went out. */
  maybeSendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.trk.progress.get(to);
    if (!pr || pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    let prevTerm: number;
    let ents: Entry[];
    try {
      prevTerm = this.log.term(prevIndex);
      // A full window sends only an empty App (see Progress.msgAppFlowPaused).
      ents = pr.state === ProgressState.Replicate && pr.inflights.full() ? [] : this.log.entriesFrom(pr.next, this.cfg.messageBytesMax);
    } catch (e) {
      if (!isCompacted(e)) throw e;
      return this.maybeSendSnapshot(to, pr);
    }
    if (ents.length === 0 && !sendIfEmpty) return false;
    let bytes = 0;
    for (let i = 0; i < ents.length; i++) bytes += ents[i]!.data.length;
    this.send(message({ type: MessageType.App, to, index: prevIndex, logTerm: prevTerm, entries: ents, commit: this.log.committed }));
    pr.sentEntries(ents.length, bytes, prevIndex + ents.length);
    return true;
  }

  private maybeSendSnapshot(to: NodeId, pr: Progress): boolean {
    // A peer we have not heard from may be down: do not start streaming to it.
    if (!pr.recentActive) return false;
    const snapshot = this.log.snapshotMetadata();
    assert(snapshot.index > 0, 'the log is compacted but there is no snapshot');
    this.send(message({ type: MessageType.Snap, to, snapshot }));
    pr.becomeSnapshot(snapshot.index);
    return true;
  }

  private bcastAppend(): void {
    for (const id of this.trk.progress.keys()) {
      if (id === this.id) continue;
      // Fill the in-flight window: a batch larger than one message goes out pipelined.
      if (this.maybeSendAppend(id, true)) while (this.maybeSendAppend(id, false));
    }
  }

  private bcastHeartbeat(): void {
    const ctx = this.readOnly.lastPendingContext();
    for (const [id, pr] of this.trk.progress) {
      if (id === this.id) continue;
      // Never tell a peer to commit beyond what it is known to hold.
      const commit = Math.min(pr.match, this.log.committed);
      const stamp = this.cfg.readOnly === 'lease' ? this.ticks : 0;
      this.send(message({ type: MessageType.Heartbeat, to: id, commit, index: stamp, ...(ctx ? { context: ctx } : {}) }));
    }
  }

  /** Emit deferred broadcasts; RawNode calls this before collecting a Ready. */
  flush(): void {
    if (this.needBroadcast) {
      this.needBroadcast = false;
      if (this.role === Role.Leader) this.bcastAppend();
    }
    if (this.needReadHeartbeat) {
      this.needReadHeartbeat = false;
      if (this.role === Role.Leader) this.bcastHeartbeat();
    }
  }

  hasPendingFlush(): boolean {
    return this.needBroadcast || this.needReadHeartbeat;
  }

  // ---- role changes ----------------------------------------------------------

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = None;
    }
    this.lead = None;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.randomizedElectionTimeout = this.cfg.electionTicks + this.cfg.rand(this.cfg.electionTicks);
    this.abortLeaderTransfer();
    this.trk.resetVotes();
    const last = this.log.lastIndex();
    for (const [id, pr] of this.trk.progress) {
      pr.match = id === this.id ? this.log.persistedIndex() : 0;
      pr.next = last + 1;
      pr.state = ProgressState.Probe;
      pr.pendingSnapshot = 0;
      pr.msgAppFlowPaused = false;
      pr.recentActive = false;
      pr.leaseStamp = 0;
      pr.inflights.reset();
    }
    this.leaseRevoked = false;
    this.pendingConfIndex = 0;
    this.uncommittedBytes = 0;
    this.readOnly.reset();
    this.pendingReadIndexMessages = [];
    this.needBroadcast = false;
    this.needReadHeartbeat = false;
    this.dropHeldApps();
  }

  becomeFollower(term: number, lead: NodeId): void {
    this.reset(term);
    this.lead = lead;
    this.role = Role.Follower;
  }

  private becomePreCandidate(): void {
    assert(this.role !== Role.Leader, 'leader cannot become pre-candidate');
    // Neither the term nor the vote change: a pre-election is only a poll.
    this.trk.resetVotes();
    this.lead = None;
    this.role = Role.PreCandidate;
  }

  private becomeCandidate(): void {
    assert(this.role !== Role.Leader, 'leader cannot become candidate');
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = Role.Candidate;
  }

  private becomeLeader(): void {
    assert(this.role !== Role.Follower, 'follower cannot become leader');
    this.reset(this.term);
    this.lead = this.id;
    this.role = Role.Leader;
    const self = this.trk.progress.get(this.id)!;
    self.becomeReplicate();
    self.recentActive = true;
    // Conservatively treat any membership change in the log as pending.
    this.pendingConfIndex = this.log.lastIndex();
    // Raft 5.4.2 / 8: an entry of our own term lets us commit (and serve reads).
    this.appendEntry(EntryType.Normal, Buffer.alloc(0));
  }

  // ---- elections -------------------------------------------------------------

  private hup(transfer: boolean): void {
    if (this.role === Role.Leader || !this.promotable()) return;
    if (this.hasUnappliedConfChanges()) return;
    this.lastElection = { term: this.term + 1, cause: transfer ? 'transfer' : 'timeout' };
    if (this.cfg.preVote && !transfer) this.campaign(true, false);
    else this.campaign(false, transfer);
  }

  private recordTally(pre: boolean, outcome: VoteTally['outcome']): void {
    if (!this.lastElection) return;
    const granted: NodeId[] = [];
    const rejected: NodeId[] = [];
    for (const [id, v] of this.trk.votes) (v ? granted : rejected).push(id);
    this.lastElection[pre ? 'preVote' : 'vote'] = { granted: granted.sort(), rejected: rejected.sort(), outcome };
  }

  private hasUnappliedConfChanges(): boolean {
    if (this.log.applied >= this.log.committed) return false;
    const ents = this.log.slice(this.log.applied + 1, this.log.committed + 1, Number.MAX_SAFE_INTEGER);
    for (const e of ents) if (e.type === EntryType.ConfChange) return true;
    return false;
  }

  private campaign(pre: boolean, transfer: boolean): void {
    let term: number;
    let voteType: MessageType;
    if (pre) {
      this.becomePreCandidate();
      voteType = MessageType.PreVote;
      term = this.term + 1;
    } else {
      this.becomeCandidate();
      voteType = MessageType.Vote;
      term = this.term;
    }
    // Our own vote counts at once: the requests below leave only after the
    // new term and vote are durable, so no other vote can arrive before that.
    this.trk.recordVote(this.id, true);
    if (this.trk.tallyVotes().result === VoteResult.Won) {
      this.recordTally(pre, 'won');
      if (pre) this.campaign(false, transfer);
      else this.becomeLeader();
      return;
    }
    const index = this.log.lastIndex();
    const logTerm = this.log.lastTerm();
    for (const id of this.trk.electionVoterIds()) {
      if (id === this.id) continue;
      this.send(message({ type: voteType, to: id, term, index, logTerm, ...(transfer ? { context: CAMPAIGN_TRANSFER_CONTEXT } : {}) }));
    }
  }

  // ---- step ------------------------------------------------------------------

  step(m: Message): void {
    if (m.term === 0) {
      // local message
    } else if (m.term > this.term) {
      if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
        const inLease = this.cfg.checkQuorum && this.lead !== None && this.electionElapsed < this.cfg.electionTicks;
        // Thesis 4.2.3: a node that hears from a live leader ignores votes, so
        // a removed or partitioned server cannot depose it.
        if ((inLease || this.leasePromised()) && !isTransferContext(m.context)) return;
      }
      if (m.type === MessageType.PreVote) {
        // A pre-vote never changes our term.
      } else if (m.type === MessageType.PreVoteResp && !m.reject) {
        // A granted pre-vote carries the future term; we only adopt it by campaigning.
      } else if (m.type === MessageType.App || m.type === MessageType.Heartbeat || m.type === MessageType.Snap) {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, None);
      }
    } else if (m.term < this.term) {
      if ((this.cfg.checkQuorum || this.cfg.preVote) && (m.type === MessageType.Heartbeat || m.type === MessageType.App)) {
        // A stale leader (e.g. just healed from a partition) may never hear a
        // higher term otherwise: pre-vote keeps our term from reaching it.
        this.send(message({ type: MessageType.AppResp, to: m.from }));
      } else if (m.type === MessageType.PreVote) {
        this.send(message({ type: MessageType.PreVoteResp, to: m.from, term: this.term, reject: true }));
      }
      return;
    }

    switch (m.type) {
      case MessageType.Hup:
        this.hup(isTransferContext(m.context));
        return;
      case MessageType.Vote:
      case MessageType.PreVote: {
        const canVote =
          this.vote === m.from ||
          (this.vote === None && this.lead === None) ||
          (m.type === MessageType.PreVote && m.term > this.term);
        const respType = m.type === MessageType.Vote ? MessageType.VoteResp : MessageType.PreVoteResp;
        // A promise to a leaseholder outlives a term change (a late answer to
        // an old campaign can move us to a term without a leader).
        const promised = this.leasePromised() && this.vote !== m.from && !isTransferContext(m.context);
        if (canVote && !promised && this.candidateUpToDate(m.index, m.logTerm)) {
          this.send(message({ type: respType, to: m.from, term: m.term }));
          if (m.type === MessageType.Vote) {
            this.electionElapsed = 0;
            this.vote = m.from;
          }
        } else {
          this.send(message({ type: respType, to: m.from, term: this.term, reject: true }));
        }
        return;
      }
      default:
        break;
    }
    switch (this.role) {
      case Role.Leader:
        this.stepLeader(m);
        break;
      case Role.Candidate:
      case Role.PreCandidate:
        this.stepCandidate(m);
        break;
      case Role.Follower:
        this.stepFollower(m);
        break;
    }
  }

  /**
   * Raft 5.4.1: grant only to a candidate whose log is at least as up to date
   * as ours. A node removed from the configuration compares against its
   * commit index instead. Its uncommitted tail can still commit, but only by
   * a majority of the configuration without it, and every quorum the
   * candidate can win intersects that majority in a voter other than us that
   * does the full check. Without
   * this, a removed node with a longer log (e.g. the old leader) blocks the
   * remaining voters forever when they have not learned that the removal
   * committed and still need its vote.
   */
  private candidateUpToDate(index: number, logTerm: number): boolean {
    // Not removed: a voter of a configuration the log's unapplied changes lead
    // to (a node that restarted before applying its own promotion) holds
    // entries such a configuration may have committed (sim seed 12002237).
    const pendingVoter = this.trk.pendingConfigs().some((p) => p.incoming.includes(this.id) || p.outgoing.includes(this.id));
    if (this.trk.progress.has(this.id) || pendingVoter) return this.log.isUpToDate(index, logTerm);
    const c = this.log.committed;
    const ct = this.log.zeroTermOnOutOfBounds(c);
    return logTerm > ct || (logTerm === ct && index >= c);
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case MessageType.Beat:
        this.bcastHeartbeat();
        return;
      case MessageType.CheckQuorum:
        // A removed leader holds no vote and serves nothing alone; it stays
        // until it has handed over (or hears a higher term), because the
        // remaining voters may need it to learn that the removal committed.
        if (!this.leadsWithoutVote() && !this.trk.quorumActive(this.id)) {
          this.becomeFollower(this.term, None);
          return;
        }
        for (const [id, pr] of this.trk.progress) if (id !== this.id) pr.recentActive = false;
        return;
      case MessageType.Prop:
        // Forwarded by a follower: accept if we can, drop otherwise (the
        // follower's runtime times out and retries).
        for (const e of m.entries) {
          try {
            this.proposeEntry(e.type, e.data);
          } catch {
            return;
          }
        }
        return;
      case MessageType.ReadIndex:
        try {
          this.leaderReadIndex(m);
        } catch {
          // A remote request over the limit is dropped; the requester retries.
        }
        return;
      case MessageType.ForgetLeader:
        return;
      default:
        break;
    }

    const pr = this.trk.progress.get(m.from);
    if (!pr) return;
    switch (m.type) {
      case MessageType.AppResp:
        this.handleAppResp(m, pr);
        return;
      case MessageType.HeartbeatResp: {
        pr.recentActive = true;
        // Unpause (see Progress.msgAppFlowPaused), except a full window that
        // is still moving: an empty App there would only race the Apps in
        // flight, be rejected, and knock the peer back to probing.
        if (pr.state !== ProgressState.Replicate || !pr.ackedSinceHeartbeat) pr.msgAppFlowPaused = false;
        pr.ackedSinceHeartbeat = false;
        // No progress for a heartbeat: the next gap reported is news (see handleAppGap).
        if (pr.match === pr.matchAtHeartbeat) pr.resentBelow = 0;
        pr.matchAtHeartbeat = pr.match;
        // A stamp from our clock (never ahead of it) echoed in this term: the
        // peer promised not to vote for anyone else for a while after it.
        if (this.cfg.readOnly === 'lease' && m.index > pr.leaseStamp && m.index <= this.ticks) pr.leaseStamp = m.index;
        if (pr.match < this.log.lastIndex() || pr.state === ProgressState.Probe) this.maybeSendAppend(m.from, true);
        if (!m.context || m.context.length === 0) return;
        const acks = this.readOnly.recvAck(m.from, m.context);
        if (!acks || !this.hasQuorum(acks)) return;
        for (const rs of this.readOnly.advance(m.context)) this.respondToReadIndex(rs.req, rs.index);
        return;
      }
      case MessageType.SnapStatus:
        if (pr.state !== ProgressState.Snapshot) return;
        if (m.reject) pr.pendingSnapshot = 0;
        pr.becomeProbe();
        // Wait for a heartbeat answer before probing: the peer may still be busy installing.
        pr.msgAppFlowPaused = true;
        return;
      case MessageType.Unreachable:
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        return;
      case MessageType.TransferLeader: {
        if (pr.isLearner) return;
        const transferee = m.from;
        if (this.leadTransferee !== None) {
          if (this.leadTransferee === transferee) return;
          this.abortLeaderTransfer();
        }
        if (transferee === this.id) return;
        // The transfer must finish within an election timeout (thesis 3.10).
        this.electionElapsed = 0;
        this.leadTransferee = transferee;
        if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(transferee);
        else this.maybeSendAppend(transferee, true);
        return;
      }
      default:
        return;
    }
  }

  private handleAppResp(m: Message, pr: Progress): void {
    pr.recentActive = true;
    pr.ackedSinceHeartbeat = true;
    if (m.reject) {
      if (this.rejectionReportsGap(m)) {
        this.handleAppGap(m, pr);
        return;
      }
      let nextProbeIdx = m.rejectHint;
      if (m.logTerm > 0) nextProbeIdx = this.log.findConflictByTerm(m.rejectHint, m.logTerm).index;
      if (pr.maybeDecrTo(m.index, nextProbeIdx)) {
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        this.maybeSendAppend(m.from, true);
      }
      return;
    }
    this.handleAppAck(m.from, pr, m.index);
  }

  /**
   * A rejection whose hint names an entry we hold with the same term: by log
   * matching the follower's log equals ours up to the hint, so the App was
   * refused for a gap (its predecessors are still in flight, reordered, or
   * were lost), not for a divergence. The reply left the follower only once
   * its log was durable, so the hint is as good as an acknowledgement.
   */
  private rejectionReportsGap(m: Message): boolean {
    return m.logTerm > 0 && m.rejectHint < m.index && this.log.matchTerm(m.rejectHint, m.logTerm);
  }

  /**
   * Under reordering a pipelined stream is refused for gaps all the time:
   * each App that overtakes its predecessors. Falling back to probing there
   * (etcd does: it assumes an ordered transport) discards the window, resends
   * what is already in flight, and each resend that overtakes starts it
   * again: a lagging follower then catches up one entry per round trip. So
   * a gap counts as an acknowledgement up to the hint; a follower that is
   * replicating stays replicating and goes back to resend the gap at most
   * once per window (Progress.resentBelow), and only for an App sent after
   * the last go-back; a window that stopped moving for a heartbeat clears
   * that (HeartbeatResp), so a real loss is still repaired.
   */
  private handleAppGap(m: Message, pr: Progress): void {
    if (pr.state === ProgressState.Replicate) {
      if (m.index <= pr.match) return; // stale: acknowledged beyond it since
      this.handleAppAck(m.from, pr, m.rejectHint);
      if (pr.state !== ProgressState.Replicate || m.index < pr.resentBelow) return;
      pr.goBack();
      while (this.maybeSendAppend(m.from, false)) {
        // refill the window from the gap
      }
      return;
    }
    // Probe or Snapshot: the follower's log is known to match up to the hint,
    // which is all an accepted probe would tell.
    this.handleAppAck(m.from, pr, m.rejectHint);
  }

  /** The follower's log matches ours up to `index` and is durable there. */
  private handleAppAck(from: NodeId, pr: Progress, index: number): void {
    const wasPaused = pr.isPaused();
    if (pr.maybeUpdate(index) || (pr.match === index && pr.state === ProgressState.Probe)) {
      if (pr.state === ProgressState.Probe) {
        pr.becomeReplicate();
      } else if (pr.state === ProgressState.Snapshot && pr.match + 1 >= this.log.firstIndex()) {
        // The peer caught up past the compaction point (by the snapshot or otherwise).
        pr.becomeProbe();
        pr.becomeReplicate();
      } else if (pr.state === ProgressState.Replicate) {
        pr.inflights.freeLE(index);
      }
      if (this.maybeCommit()) {
        this.afterCommit();
      } else if (wasPaused) {
        this.maybeSendAppend(from, true);
      }
      // The window may have opened for several messages at once.
      while (this.maybeSendAppend(from, false)) {
        // keep sending
      }
      if (from === this.leadTransferee && pr.match === this.log.lastIndex()) this.sendTimeoutNow(from);
    }
  }

  private stepCandidate(m: Message): void {
    const myVoteResp = this.role === Role.PreCandidate ? MessageType.PreVoteResp : MessageType.VoteResp;
    switch (m.type) {
      case MessageType.App:
        this.becomeFollower(m.term, m.from);
        this.handleAppendEntries(m);
        return;
      case MessageType.Heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.becomeFollower(m.term, m.from);
        this.handleSnapshot(m);
        return;
      case myVoteResp: {
        this.trk.recordVote(m.from, !m.reject);
        const { result } = this.trk.tallyVotes();
        if (result === VoteResult.Won) {
          this.recordTally(this.role === Role.PreCandidate, 'won');
          if (this.role === Role.PreCandidate) this.campaign(false, false);
          else this.becomeLeader();
        } else if (result === VoteResult.Lost) {
          this.recordTally(this.role === Role.PreCandidate, 'lost');
          this.becomeFollower(this.term, None);
        }
        return;
      }
      default:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.Prop:
      case MessageType.TransferLeader:
      case MessageType.ReadIndex:
        if (this.lead === None) return;
        m.to = this.lead;
        this.send(m);
        return;
      case MessageType.App:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppendEntries(m);
        return;
      case MessageType.Heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshot(m);
        return;
      case MessageType.TimeoutNow:
        // Leadership transfer: campaign at once, without pre-vote.
        this.hup(true);
        return;
      case MessageType.ReadIndexResp:
        this.readStates.push({ index: m.index, context: m.context ?? Buffer.alloc(0) });
        return;
      case MessageType.ForgetLeader:
        // A leaderless follower votes again at once: that breaks a promise to
        // a leaseholder (etcd ignores it under ReadOnlyLeaseBased too).
        if (this.cfg.readOnly === 'lease') return;
        this.lead = None;
        return;
      default:
        return;
    }
  }

  // ---- follower handlers ----------------------------------------------------

  private handleAppendEntries(m: Message): void {
    if (m.index < this.log.committed) {
      this.send(message({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
      return;
    }
    const lastnewi = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (lastnewi !== undefined) {
      this.send(message({ type: MessageType.AppResp, to: m.from, index: Math.max(lastnewi, this.appendHeldApps()) }));
      return;
    }
    if (m.index > this.log.lastIndex()) this.holdApp(m);
    // Reject with a hint: the last index whose term is <= the leader's term at
    // m.index, so the leader skips whole terms at once.
    const hint = this.log.findConflictByTerm(Math.min(m.index, this.log.lastIndex()), m.logTerm);
    this.send(message({ type: MessageType.AppResp, to: m.from, index: m.index, reject: true, rejectHint: hint.index, logTerm: hint.term }));
  }

  /**
   * An App that arrived ahead of a gap (its previous entry is not here yet)
   * is refused as usual, so the leader learns where our log ends, and also
   * kept, within what the leader may have in flight to us: once the gap
   * fills it is appended without another round trip. Without this, under
   * reordering every App that overtakes its predecessor is lost work and a
   * lagging follower catches up about one message per round trip. Keeping it
   * is the same as the network delivering it later, which Raft allows; the
   * held Apps are all of this term's leader (reset() drops them).
   */
  private holdApp(m: Message): void {
    if (m.entries.length === 0 || this.heldApps.has(m.index)) return;
    const bytes = payloadBytes(m.entries);
    if (this.heldApps.size >= this.cfg.inFlightMessagesMax || this.heldAppBytes + bytes > this.cfg.inFlightBytesMax) return;
    this.heldApps.set(m.index, m);
    this.heldAppBytes += bytes;
  }

  /** Append the held Apps that connect to the log now; returns the highest index they matched. */
  private appendHeldApps(): number {
    let matched = 0;
    for (let progressed = this.heldApps.size > 0; progressed; ) {
      progressed = false;
      for (const [prev, held] of this.heldApps) {
        if (prev > this.log.lastIndex()) continue;
        this.heldApps.delete(prev);
        this.heldAppBytes -= payloadBytes(held.entries);
        if (prev < this.log.committed) continue;
        const last = this.log.maybeAppend(held.index, held.logTerm, held.commit, held.entries);
        if (last === undefined) continue;
        matched = Math.max(matched, last);
        progressed = true;
      }
    }
    return matched;
  }

  private dropHeldApps(): void {
    this.heldApps.clear();
    this.heldAppBytes = 0;
  }

  private handleHeartbeat(m: Message): void {
    this.log.commitTo(Math.min(m.commit, this.log.lastIndex()));
    // Lease reads: echoing the stamp is the promise (see leasePromised()); a
    // node without 'lease' echoes nothing and never counts towards a lease.
    let stamp = 0;
    if (this.cfg.readOnly === 'lease') {
      this.leasePromiseElapsed = 0;
      stamp = m.index;
    }
    this.send(message({ type: MessageType.HeartbeatResp, to: m.from, index: stamp, ...(m.context ? { context: m.context } : {}) }));
  }

  private handleSnapshot(m: Message): void {
    const s = m.snapshot;
    if (s && this.restore(s)) {
      this.send(message({ type: MessageType.AppResp, to: m.from, index: this.log.lastIndex() }));
    } else {
      this.send(message({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
    }
  }

  private restore(s: SnapshotMetadata): boolean {
    if (s.index <= this.log.committed) return false;
    if (this.role !== Role.Follower) {
      this.becomeFollower(this.term + 1, None);
      return false;
    }
    // No membership check (etcd has one): the leader sends its latest
    // compaction point, which may predate the change that added us; the log
    // after it tells us we are a member. Refusing would loop forever.
    const cs = s.confState;
    if (this.log.matchTerm(s.index, s.term)) {
      // We have the snapshot's last entry: just move the commit index.
      this.log.commitTo(s.index);
      return false;
    }
    if (this.log.applying > this.log.applied) {
      // Entries handed out in a Ready are still being applied, membership
      // changes among them: the runtime will applyConfChange() them, which
      // must not meet the snapshot's configuration. Refuse for now; the
      // leader sends the snapshot again.
      return false;
    }
    this.log.restore(s);
    this.confTail = [];
    this.pendingTracked.clear();
    this.dropHeldApps();
    this.trk = new ProgressTracker(this.cfg.inFlightMessagesMax, this.cfg.inFlightBytesMax);
    this.switchToConfig(restoreConfState(this.trk, this.log.lastIndex(), cs));
    return true;
  }

  // ---- commit ----------------------------------------------------------------

  maybeCommit(): boolean {
    const mci = this.trk.committed();
    if (this.cfg.testingBugs.commitPreviousTermEntries) {
      if (mci > this.log.committed && mci <= this.log.lastIndex()) {
        this.log.commitTo(mci);
        return true;
      }
      return false;
    }
    return this.log.maybeCommit(mci, this.term);
  }

  private afterCommit(): void {
    this.needBroadcast = true;
    if (this.pendingReadIndexMessages.length > 0 && this.committedEntryInCurrentTerm()) {
      const pending = this.pendingReadIndexMessages;
      this.pendingReadIndexMessages = [];
      for (const m of pending) this.serveReadIndex(m);
    }
  }

  committedEntryInCurrentTerm(): boolean {
    return this.log.zeroTermOnOutOfBounds(this.log.committed) === this.term;
  }

  /** The leader's own entries became durable (RawNode.advance). */
  selfPersisted(): void {
    if (this.role !== Role.Leader) return;
    const pr = this.trk.progress.get(this.id);
    if (!pr) return;
    if (pr.maybeUpdate(this.log.persistedIndex()) && this.maybeCommit()) this.afterCommit();
  }

  // ---- proposals -------------------------------------------------------------

  private appendEntry(type: EntryType, data: Buffer): Entry {
    const e: Entry = { term: this.term, index: this.log.lastIndex() + 1, type, data };
    this.log.append([e]);
    this.needBroadcast = true;
    return e;
  }

  private checkCanPropose(): void {
    if (this.role !== Role.Leader) throw new NotLeaderError(this.lead);
    if (!this.trk.progress.has(this.id)) throw new ProposalDroppedError('this node is not in the configuration');
    if (this.leadTransferee !== None) throw new TransferInProgressError(this.leadTransferee);
  }

  private reserveUncommitted(bytes: number): void {
    // Always admit one entry into an empty budget, however large, so a big
    // request cannot be refused forever.
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.cfg.uncommittedBytesMax) {
      throw new TooManyUncommittedBytesError(this.uncommittedBytes, this.cfg.uncommittedBytesMax);
    }
    this.uncommittedBytes += bytes;
  }

  proposeEntry(type: EntryType, data: Buffer): { index: number; term: number } {
    if (type === EntryType.ConfChange) return this.proposeConfChange(decodeConfChange(data));
    this.checkCanPropose();
    this.reserveUncommitted(data.length);
    const e = this.appendEntry(type, data);
    return { index: e.index, term: e.term };
  }

  proposeConfChange(cc: ConfChange): { index: number; term: number } {
    this.checkCanPropose();
    if (this.pendingConfIndex > this.log.applied) throw new ConfChangeInProgressError(this.pendingConfIndex, this.log.applied);
    const joint = this.trk.isJoint();
    if (isLeaveJoint(cc)) {
      if (!joint) throw new InvalidConfChangeError('not in a joint configuration');
    } else if (joint) {
      throw new InvalidConfChangeError('leave the joint configuration first');
    }
    // Validate against the configuration it will apply to: no other change is
    // in flight, so that is the current one.
    this.computeConfChange(cc);
    const data = encodeConfChange(cc);
    this.reserveUncommitted(data.length);
    const e = this.appendEntry(EntryType.ConfChange, data);
    this.pendingConfIndex = e.index;
    return { index: e.index, term: e.term };
  }

  /** Called after the state machine applied up to `applied` (RawNode.advance). */
  appliedTo(applied: number, appliedBytes: number): void {
    this.log.appliedTo(applied);
    this.dropConfTail(applied);
    this.uncommittedBytes = Math.max(0, this.uncommittedBytes - appliedBytes);
    if (this.role === Role.Leader && this.trk.config.autoLeave && applied >= this.pendingConfIndex && this.trk.progress.has(this.id)) {
      // Leave the joint configuration on our own (ConfChangeTransition Auto/Implicit).
      const e = this.appendEntry(EntryType.ConfChange, encodeConfChange(leaveJointChange()));
      this.pendingConfIndex = e.index;
    }
  }

  // ---- membership ------------------------------------------------------------

  private computeConfChange(cc: ConfChange): ChangeResult {
    return computeConfChangeOn(this.trk, cc, this.log.lastIndex());
  }

  /**
   * Apply a committed membership change (the runtime calls this when it
   * applies the entry; `index` is the entry's, or the oldest unapplied
   * change in the log is taken to be the one).
   */
  applyConfChange(cc: ConfChange, index?: number): ConfState {
    const r = this.computeConfChange(cc);
    if (index !== undefined) this.confTail = this.confTail.filter((i) => i > index);
    else this.confTail.shift();
    return this.switchToConfig(r);
  }

  private switchToConfig(r: ChangeResult): ConfState {
    this.trk.setConfig(r.config, r.progress);
    this.refreshPendingConfigs();
    const cs = this.trk.confState();
    const pr = this.trk.progress.get(this.id);
    this.isLearner = pr?.isLearner ?? false;
    if ((!pr || this.isLearner) && this.role === Role.Leader) {
      // Removed or demoted. Stepping down at once can deadlock the cluster:
      // the remaining voters may not know the removal committed, still count
      // us, and our longer log refuses their votes. So keep leading — no new
      // proposals — until a remaining voter has caught up, then hand over.
      this.handOverLeadership();
      return cs;
    }
    if (this.role !== Role.Leader || cs.voters.length === 0) return cs;
    // The quorum changed: commit may move, and new peers need a first App.
    if (this.maybeCommit()) this.afterCommit();
    this.needBroadcast = true;
    if (this.leadTransferee !== None && !this.trk.isVoter(this.leadTransferee)) this.abortLeaderTransfer();
    return cs;
  }

  /** A leader outside the configuration transfers to the most caught-up voter. */
  private handOverLeadership(): void {
    if (this.leadTransferee !== None && this.trk.isVoter(this.leadTransferee)) return;
    let best: NodeId = None;
    let bestMatch = -1;
    for (const id of this.trk.voterIds()) {
      if (id === this.id) continue;
      const p = this.trk.progress.get(id)!;
      if (p.match > bestMatch) {
        best = id;
        bestMatch = p.match;
      }
    }
    this.needBroadcast = true;
    if (best === None) return;
    this.step(message({ type: MessageType.TransferLeader, from: best }));
  }

  /** Whether this node leads a configuration it is no longer a voter of. */
  private leadsWithoutVote(): boolean {
    const pr = this.trk.progress.get(this.id);
    return this.role === Role.Leader && (!pr || pr.isLearner);
  }

  // ---- reads -----------------------------------------------------------------

  /** A ReadIndex request, local (from '') or forwarded by a follower. */
  private leaderReadIndex(m: Message): void {
    if (this.readOnly.size + this.pendingReadIndexMessages.length >= this.cfg.readIndexPendingMax) {
      throw new ReadIndexDroppedError(`${this.cfg.readIndexPendingMax} requests pending`);
    }
    // Until we commit an entry of our term, our commit index may be behind
    // what an earlier leader acknowledged (thesis 6.4, step 1).
    if (!this.committedEntryInCurrentTerm()) {
      this.pendingReadIndexMessages.push(m);
      return;
    }
    this.serveReadIndex(m);
  }

  /**
   * Alone only if we are the single voter: a removed or demoted leader still
   * handing over must confirm with the new configuration like anyone else.
   */
  private isSoleVoter(): boolean {
    return this.trk.isSingleton() && this.trk.isVoter(this.id);
  }

  /**
   * A read index this node may use at once, without a heartbeat round or a
   * trip through Ready: what readIndex() would answer, when that needs no
   * one else — the sole voter leading, once it committed an entry of its
   * term. undefined otherwise (ask readIndex()).
   */
  localReadIndex(): number | undefined {
    if (this.role !== Role.Leader || !this.isSoleVoter() || !this.committedEntryInCurrentTerm()) return undefined;
    return this.log.committed;
  }

  /**
   * Lease reads (thesis 6.4.1; etcd's ReadOnlyLeaseBased, made to hold across
   * restarts and term changes): a voter running with 'lease' that answers a
   * heartbeat promises to vote for no other candidate, and not to campaign,
   * for electionTicks of its ticks after it arrived; at start it holds the
   * same promise, since it may have made one before a crash. So once a
   * quorum of voters has echoed the stamp s of a heartbeat, no other leader
   * can be elected before a quorum's promises run out, which under bounded
   * drift is no earlier than leaseTicks of our ticks after s left. Until
   * then our commit index is as fresh as a ReadIndex round would make it:
   * the index, read at once, with `since` the stamp the lease rests on, for
   * the runtime's own check against its real clock (its ticks may run late).
   * undefined when the lease does not hold (ask readIndex()): 'safe' mode,
   * not the leader, no entry of this term committed yet, a transfer begun
   * (TimeoutNow campaigns past the promises), leading without a vote, or no
   * quorum heard within the lease.
   */
  leaseRead(): { index: number; since: number } | undefined {
    if (this.cfg.readOnly !== 'lease' || this.role !== Role.Leader || this.leaseRevoked || this.leadTransferee !== None) return undefined;
    if (this.leadsWithoutVote() || !this.committedEntryInCurrentTerm()) return undefined;
    const since = this.trk.quorumValue((id) => (id === this.id ? this.ticks : (this.trk.progress.get(id)?.leaseStamp ?? 0)));
    if (since <= 0 || this.ticks - since >= this.cfg.leaseTicks) return undefined;
    return { index: this.log.committed, since };
  }

  /** Whether this node's promise to a leaseholder still holds (see leaseRead()). */
  leasePromised(): boolean {
    return this.cfg.readOnly === 'lease' && this.leasePromiseElapsed < this.cfg.electionTicks;
  }

  private serveReadIndex(m: Message): void {
    if (this.isSoleVoter()) {
      this.respondToReadIndex(m, this.log.committed);
      return;
    }
    if (this.readOnly.has(m.context!)) return;
    this.readOnly.addRequest(this.log.committed, m);
    this.readOnly.recvAck(this.id, m.context!);
    this.needReadHeartbeat = true;
  }

  private respondToReadIndex(req: Message, index: number): void {
    const context = req.context ?? Buffer.alloc(0);
    if (req.from === None || req.from === this.id) {
      this.readStates.push({ index, context });
    } else {
      this.send(message({ type: MessageType.ReadIndexResp, to: req.from, index, context }));
    }
  }

  private hasQuorum(ids: Set<NodeId>): boolean {
    const votes = new Map<NodeId, boolean>();
    for (const id of ids) votes.set(id, true);
    return this.trk.voteResult(votes) === VoteResult.Won;
  }

  /** Local ReadIndex request: throws when it cannot be served here. */
  readIndex(context: Buffer): void {
    const m = message({ type: MessageType.ReadIndex, context });
    if (this.role === Role.Leader) {
      this.leaderReadIndex(m);
      return;
    }
    if (this.lead === None) throw new NotLeaderError(None);
    this.step(m);
  }

  // ---- leadership transfer ---------------------------------------------------

  private sendTimeoutNow(to: NodeId): void {
    // The transferee campaigns past every promise (transfer context): from
    // now on, whenever TimeoutNow arrives, a successor may exist.
    this.leaseRevoked = true;
    this.send(message({ type: MessageType.TimeoutNow, to }));
  }

  abortLeaderTransfer(): void {
    this.leadTransferee = None;
  }

  // ---- time --------------------------------------------------------------------

  tick(): void {
    this.ticks++;
    this.leasePromiseElapsed++;
    if (this.role === Role.Leader) this.tickHeartbeat();
    else this.tickElection();
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.step(message({ type: MessageType.Hup, from: this.id }));
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.cfg.electionTicks) {
      this.electionElapsed = 0;
      if (this.cfg.checkQuorum) this.step(message({ type: MessageType.CheckQuorum, from: this.id }));
      // A transfer that did not finish within an election timeout is abandoned.
      if (this.role === Role.Leader && this.leadTransferee !== None) this.abortLeaderTransfer();
      // A removed leader tries again, perhaps with another voter.
      if (this.leadsWithoutVote()) this.handOverLeadership();
    }
    if (this.role !== Role.Leader) return;
    if (this.heartbeatElapsed >= this.cfg.heartbeatTicks) {
      this.heartbeatElapsed = 0;
      this.step(message({ type: MessageType.Beat, from: this.id }));
    }
  }
}

function computeConfChangeOn(trk: ProgressTracker, cc: ConfChange, lastIndex: number): ChangeResult {
  const changer = new Changer(trk, lastIndex);
  if (isLeaveJoint(cc)) return changer.leaveJoint();
  const { joint, autoLeave } = enterJoint(cc);
  return joint ? changer.enterJoint(autoLeave, cc.changes) : changer.simple(cc.changes);
}
