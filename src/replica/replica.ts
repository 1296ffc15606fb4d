// The replica core: drives Raft's Ready loop against the WAL, the peer
// transport and the block store, in the order the contracts need:
//
//   ready()  ─┬─ send messages now (the leader's App goes out while its own
//             │  append is still being written)
//             ├─ WAL save (one group commit) ── then send messagesAfterPersist
//             ├─ apply committedEntries in order ── settle waiters, reads
//             └─ advance() once saved and applied, in Ready order
//
// Several Readys are in flight at once (the WAL merges their writes into
// group commits); every proposal and read made in one turn lands in one
// Ready. Requests from this node's NBD connections are proposed here (the
// leader) or forwarded to the leader as Raft Prop messages (a follower) and
// settle when they apply on this node (requests.ts). Reads go through
// ReadIndex on every node (read-gate.ts).
//
// Deterministic: the clock, the transport, the WAL, the store and the host
// come in through ReplicaEnv (env.ts) and nothing else does. The production
// runtime (src/cluster/node.ts) and the simulator (test/sim/) both run this.
//
// Longer than 500 lines on purpose: the Ready loop's ordering (the persist,
// apply and advance chains, the snapshot-install gate, what settles when) is
// one piece of state, and it is easier to check in one place. Peer input
// (inbound.ts), leadership (leadership.ts), housekeeping, membership and the
// admin view live beside it.
//
// A failed WAL write or fdatasync, or a failed apply, takes the replica out
// of service: every waiter gets ESHUTDOWN, the transport closes, 'fatal'
// fires. Nothing unacknowledged was promised, and what was acknowledged is on
// a majority's disks.

import { EventEmitter } from 'node:events';
import type { NodeEvents } from '../admin/api.ts';
import { limits } from '../limits.ts';
import { XDeviceError } from '../errors.ts';
import { RawNode, Role, type Ready, type SoftState } from '../raft/rawnode.ts';
import { EntryType, MessageType, message, type Entry, type Message, type SnapshotMetadata } from '../raft/types.ts';
import type { RequestId } from '../device/commands.ts';
import type { BlockStore } from '../device/block-store.ts';
import type { Logger } from 'pino';
import type { Clock, Host, LogStorage, PeerTransport, ReplicaEnv, SnapshotFrame } from './env.ts';
import { settleEarly, type PlantedBugs } from './planted.ts';
import type { ReplicaCore } from './core.ts';
import { LeaseClock } from './lease-clock.ts';
import { ReadGate } from './read-gate.ts';
import { RequestError, RequestSession } from './requests.ts';
import { SnapshotReceiver } from './snapshot-receiver.ts';
import { openShipments, SnapshotSender } from './snapshot-sender.ts';
import { ReplicatedDeviceTable, type ReplicaService } from './device.ts';
import { compressBlock } from '../device/lz4.ts';
import { type CompressionMode, CompressionStats, membersDecodeCompressed } from '../device/compression.ts';
import { KeyRing } from '../crypt/keyring.ts';
import { SnapshotOps } from './snapshot-ops.ts';
import { KeyOps } from './keys.ts';
import { Housekeeping, type Tuning } from './housekeeping.ts';
import { Membership } from './membership.ts';
import { PeerInbox } from './inbound.ts';
import { Leadership } from './leadership.ts';
import { ReplicaError } from './errors.ts';

export type { ReplicaEnv } from './env.ts';
export type { PlantedBugs } from './planted.ts';

export interface ReplicaOptions {
  nodeId: string;
  /** Devices created when this replica founded the cluster. */
  devices: { name: string; size: number }[];
  tuning?: Partial<Tuning>;
  /** Planted faults for the simulator's self-test (test/sim/planted-bugs.test.ts); never set in production. */
  plantedBugs?: PlantedBugs;
  /** This node's encryption keys (absent: none; it still replicates encrypted devices, it cannot serve them). */
  keys?: KeyRing;
  /** Create the initial devices encrypted (the `encrypt-devices` option). */
  encryptDevices?: boolean;
  /**
   * Lease reads (the `lease-reads` option; Raft's readOnly 'lease'): as the
   * leader, serve reads without a ReadIndex round while the lease holds. Set
   * it on every member: a voter without it does not count towards a lease.
   */
  leaseReads?: boolean;
  /** Write compression (the `compression` option, src/device/compression.ts); default lz4. */
  compression?: CompressionMode;
}


export class Replica extends EventEmitter implements ReplicaService, ReplicaCore {
  readonly nodeId: string;
  readonly devices: ReplicatedDeviceTable;
  readonly raw: RawNode;
  readonly clock: Clock;
  readonly log: LogStorage;
  readonly store: BlockStore;
  readonly transport: PeerTransport;
  readonly host: Host;
  readonly logger: Logger;
  readonly session: RequestSession;
  readonly reads: ReadGate;
  /** When each of Raft's ticks began (lease reads). */
  private readonly leaseClock = new LeaseClock();
  readonly sender: SnapshotSender;
  readonly receiver: SnapshotReceiver;
  readonly housekeeping: Housekeeping;
  readonly membership: Membership;
  readonly keys: KeyRing;
  readonly keyOps: KeyOps;
  readonly snapshotOps: SnapshotOps;
  private readonly inbox: PeerInbox;
  private readonly leadership: Leadership;
  readonly bugs: PlantedBugs;
  /** What write compression saved on this node (the writes it proposed). */
  readonly compressionStats = new CompressionStats();
  /** Whether every member decodes COMPRESSED_WRITE, as of the applied indexes in `key`. */
  private compressionGate = { key: '', ok: false };
  /** Peer messages from ids outside the configuration, dropped before Raft. */
  peerMessagesDropped = 0;
  /** Highest committed index reflected in the store (entries at or below the store's own index are skipped). */
  processedIndex: number;
  /** Highest committed index Raft handed to apply: membership is known up to here. */
  raftAppliedIndex: number;
  /** After a fuzzy snapshot, reads wait until replay made the files consistent up to here. */
  readFloor = 0;
  fatalError: Error | undefined;
  removed = false;
  removedWhy: string | undefined;
  stopping = false;
  stopped = false;
  readonly startedAt: number;
  readonly walLastIndexAtStart: number;
  private readyScheduled = false;
  /** A snapshot is being installed: no Ready is handed out meanwhile. */
  installing = false;
  private advanceChain: Promise<void> = Promise.resolve();
  /** The latest WAL save handed out: durable means this and every save before it. */
  private lastSave: Promise<void> = Promise.resolve();
  applyChain: Promise<void> = Promise.resolve();
  private cancelTick: (() => void) | undefined;
  /** Term and vote last made durable: a hard state that changes only the commit index is not worth a WAL record. */
  private savedTerm: number;
  private savedVote: string;

  constructor(
    env: ReplicaEnv,
    private readonly options: ReplicaOptions,
  ) {
    super();
    this.nodeId = options.nodeId;
    this.keys = options.keys ?? new KeyRing(undefined);
    this.clock = env.clock;
    this.log = env.log;
    this.store = env.store;
    this.transport = env.transport;
    this.host = env.host;
    this.logger = env.logger;
    this.bugs = options.plantedBugs ?? {};
    this.startedAt = this.clock.now();
    const log = this.log;
    this.walLastIndexAtStart = log.lastIndex();
    log.onBatchDurable = (e) => this.emit('walFsync', { durationSeconds: e.syncSeconds, bytes: e.bytes });
    const applied = log.snapshotMetadata().index;
    this.raw = new RawNode({
      id: options.nodeId,
      storage: log,
      rand: env.rand,
      applied,
      ...(options.leaseReads ? { readOnly: 'lease' as const } : {}),
      ...(this.bugs.raft ? { testingBugs: this.bugs.raft } : {}),
    });
    this.leaseClock.note(this.raw.ticks, this.startedAt);
    this.processedIndex = Math.max(applied, this.store.appliedIndex);
    this.raftAppliedIndex = applied;
    const hs = log.hardState();
    this.savedTerm = hs.term;
    this.savedVote = hs.vote;
    this.session = new RequestSession((data) => this.submitProposal(data), this.clock, env.rand);
    this.reads = new ReadGate(
      options.nodeId,
      (ctx) => this.askReadIndex(ctx),
      () => (this.processedIndex >= this.readFloor ? this.processedIndex : 0),
      this.clock,
    );
    const snapLogger = this.logger.child({ component: 'snapshot' });
    this.receiver = new SnapshotReceiver(this.host.snapshots, this.transport, snapLogger, () => this.raw.basicStatus().lead);
    this.sender = new SnapshotSender(
      this.transport,
      {
        capture: () =>
          this.onApplyChain(() => {
            const state = this.store.captureState();
            return { state, paths: this.store.filePaths(state) };
          }),
        appliedIndex: () => this.processedIndex,
        captureSnapshots: () =>
          // The files are opened before the next batch: a delete after it unlinks them, the descriptors still read them.
          this.onApplyChain(async () => ({ appliedIndex: this.store.appliedIndex, snapshots: await openShipments(this.store.snapshotsToSend(), this.host.snapshots) })),
        done: (peer, ok, snap) => {
          if (ok) this.transport.send(snap);
          this.raw.reportSnapshot(peer, ok);
          this.schedule();
        },
        hold: (peer, index) => this.housekeeping.hold(peer, index),
      },
      this.host.snapshots,
      this.clock,
      snapLogger,
      () => (this.options.compression ?? 'lz4') === 'lz4',
      this.host.compressChunk ?? compressBlock,
      this.compressionStats,
    );
    this.housekeeping = new Housekeeping(this, {
      checkpointEntries: options.tuning?.checkpointEntries ?? limits.checkpointEntries,
      checkpointBytes: options.tuning?.checkpointBytes ?? limits.checkpointBytes,
      walRetainEntriesMax: options.tuning?.walRetainEntriesMax ?? limits.walRetainEntriesMax,
      walRetainBytesMax: options.tuning?.walRetainBytesMax ?? limits.walRetainBytesMax,
    });
    this.membership = new Membership(this);
    this.keyOps = new KeyOps(this);
    this.snapshotOps = new SnapshotOps(this);
    this.inbox = new PeerInbox(this);
    this.leadership = new Leadership(this);
    this.devices = new ReplicatedDeviceTable(this, options.devices[0]?.name);
  }

  /** Starts ticking; a sole voter campaigns at once. `founded`: this replica just bootstrapped the cluster. */
  async start(founded: boolean): Promise<void> {
    const tick = (): void => {
      this.cancelTick = this.clock.after(limits.tickMs, () => {
        this.tick();
        if (!this.stopped && !this.fatalError) tick();
      });
    };
    tick();
    const cs = this.raw.status().confState;
    if (cs.voters.length === 1 && cs.voters[0] === this.nodeId && cs.learners.length === 0) {
      // Alone: no one to wait for, become leader now.
      this.raw.campaign();
    }
    this.schedule();
    if (founded) {
      const alone = cs.voters.length === 1;
      const created = this.membership.createInitialDevices(this.options.devices, alone, this.options.encryptDevices === true);
      // A standalone node serves its devices as soon as start() returns.
      if (alone) await created;
    }
  }

  /** Resolves once the configured devices exist (a standalone node right after start). */
  async waitForDevices(timeoutMs = limits.requestTimeoutMs): Promise<void> {
    await this.waitFor(() => this.options.devices.every((d) => this.store.device(d.name)), timeoutMs, 'the configured devices to be created');
  }

  // ---- the loop ----------------------------------------------------------------------

  private tick(): void {
    if (this.fatalError || this.stopped) return;
    // Before the tick: heartbeats it stamps leave after this moment.
    this.leaseClock.note(this.raw.ticks + 1, this.clock.now());
    this.raw.tick();
    this.membership.promoteCaughtUp();
    this.keyOps.tick();
    const now = this.clock.now();
    this.session.sweep(now);
    this.reads.sweep(now);
    this.schedule();
  }

  schedule(): void {
    if (this.readyScheduled || this.stopped || this.fatalError) return;
    this.readyScheduled = true;
    this.clock.defer(() => {
      this.readyScheduled = false;
      this.processReady();
    });
  }

  /** Hands out every Ready Raft has, up to readyOutstandingMax in flight. */
  processReady(): void {
    if (this.fatalError || this.stopped) return;
    while (!this.installing && this.raw.outstandingReadys < limits.readyOutstandingMax && this.raw.hasReady()) {
      const rd = this.raw.ready();
      try {
        this.handleReady(rd);
      } catch (err) {
        this.fail(err as Error);
        return;
      }
    }
  }

  private handleReady(rd: Ready): void {
    if (rd.softState) this.onSoftState(rd.softState);
    for (const m of rd.messages) this.send(m);
    let persisted: Promise<void>;
    let applied: Promise<void>;
    if (rd.snapshot) {
      // Rare: stop handing out Readys until the snapshot replaced the state
      // (a later Ready's entries must not reach the WAL before the reset).
      this.installing = true;
      const snap = rd.snapshot;
      persisted = this.applyChain.then(() => this.installSnapshot(snap)).then(() => this.persist(rd));
      applied = this.applyChain = persisted.then(() => this.apply(rd.committedEntries));
    } else if (rd.committedEntries.some((e) => e.type === EntryType.ConfChange)) {
      // A membership change is applied only once its commit is durable here:
      // a node that applied a removal (and whose removed peer then retired)
      // would otherwise restart with the configuration before it, needing the
      // retired voter, and a cluster that lost every commit index at once
      // could not elect again (simulator seed 40016828). Rare: one record and
      // one wait per change, never on the write path.
      const lastCommitted = rd.committedEntries[rd.committedEntries.length - 1]!.index;
      persisted = this.persist(rd, lastCommitted);
      applied = this.applyChain = Promise.all([this.applyChain, persisted]).then(() => this.apply(rd.committedEntries));
    } else {
      persisted = this.persist(rd);
      applied = this.applyChain = this.applyChain.then(() => this.apply(rd.committedEntries));
    }
    // Observed now: advanceChain reaches these only once the Readys before
    // this one have advanced, and a failure meanwhile must not surface as an
    // unhandled rejection (the process's safety net would exit instead of
    // failing closed here; found by the simulator, seed 106). The error
    // itself still reaches fail() through advanceChain.
    persisted.catch(() => undefined);
    applied.catch(() => undefined);
    if (this.bugs.ackBeforeCommit && rd.entries.length > 0) settleEarly(this.session, rd.entries);
    persisted.then(
      () => {
        for (const m of rd.messagesAfterPersist) this.send(m);
      },
      () => undefined,
    );
    for (const rs of rd.readStates) this.reads.onReadState(rs.context, rs.index);
    this.advanceChain = this.advanceChain
      .then(() => Promise.all([persisted, applied]))
      .then(
        () => {
          if (this.fatalError) return;
          this.raw.advance(rd);
          if (rd.snapshot) this.installing = false;
          // At once, not next turn: the leader's own append may just have
          // committed entries whose writers are waiting.
          this.processReady();
        },
        (err: Error) => this.fail(err),
      );
  }

  /** Makes the Ready's entries durable; `commitAtLeast` also records the commit index (a membership change is about to be applied). */
  private persist(rd: Ready, commitAtLeast?: number): Promise<void> {
    // The commit index need not be durable for data: after a restart Raft
    // learns it again from the leader (or, alone, by committing a new entry),
    // and the checkpoint says what the files hold. So a hard state goes to
    // the WAL only when term or vote change — one record less in nearly every
    // save — or when a membership change will be applied (see handleReady).
    const hs = rd.hardState;
    let hardState = hs && (hs.term !== this.savedTerm || hs.vote !== this.savedVote) ? hs : undefined;
    if (commitAtLeast !== undefined) {
      const base = hs ?? this.log.hardState();
      const known = this.log.hardState().commit;
      hardState = { term: base.term, vote: base.vote, commit: Math.max(base.commit, commitAtLeast, known) };
    }
    // A Ready with nothing to write still promises what earlier Readys are
    // writing: an AppResp for entries a duplicated App found already in the
    // log must wait until they are durable (found by the simulator, seed 554:
    // a follower acknowledged an entry whose write then failed, and lost it).
    if (rd.entries.length === 0 && !hardState) return this.lastSave;
    if (hardState) {
      this.savedTerm = hardState.term;
      this.savedVote = hardState.vote;
    }
    const started = this.clock.now();
    let bytes = 0;
    for (const e of rd.entries) bytes += e.data.length;
    const previous = this.lastSave;
    const saved = this.log.save({ ...(hardState ? { hardState } : {}), entries: rd.entries });
    // Durable in order: a save counts only once every save before it is durable too.
    const p = Promise.all([previous, saved]).then(() => {
      this.emit('walSync', { durationSeconds: (this.clock.now() - started) / 1000, bytes });
    });
    this.lastSave = p;
    p.catch(() => undefined);
    return p;
  }

  private async apply(entries: Entry[]): Promise<void> {
    if (entries.length === 0) return;
    const started = this.clock.now();
    // Waiters settle as each write is queued (see BlockStore.applyBatch);
    // reads wait for processedIndex, which moves once the batch completed.
    await this.store.applyBatch(
      entries,
      (e) => this.membership.applyConfEntry(e),
      (o) => {
        if (o.request?.clientId !== this.session.clientId) return;
        this.emit('proposal', { outcome: o.error && !o.duplicate ? 'failed' : 'committed' });
        this.session.settle(o);
      },
    );
    this.emit('apply', { durationSeconds: (this.clock.now() - started) / 1000, entries: entries.length });
    const last = entries[entries.length - 1]!;
    this.raftAppliedIndex = Math.max(this.raftAppliedIndex, last.index);
    this.processedIndex = Math.max(this.processedIndex, last.index, this.store.appliedIndex);
    this.housekeeping.noteApplied(entries);
    this.reads.onApplied(this.processedIndex);
    this.housekeeping.maybeCheckpoint();
  }

  private onSoftState(ss: SoftState): void {
    this.leadership.onSoftState(ss);
  }

  private send(m: Message): void {
    if (m.to === this.nodeId) {
      this.raw.step(m);
      this.schedule();
      return;
    }
    if (m.type === MessageType.Snap) {
      this.sender.send(m);
      return;
    }
    this.transport.send(m);
  }

  // ---- what arrives from peers (inbound.ts) ------------------------------------------------

  onPeerMessage(m: Message): void {
    this.inbox.onPeerMessage(m);
  }

  onFrame(from: string, f: SnapshotFrame): void {
    this.inbox.onFrame(from, f);
  }

  onUnreachable(peer: string): void {
    this.inbox.onUnreachable(peer);
  }

  onRemovedBy(by: string): void {
    this.leaveRemoved(`${by} says this node was removed from the cluster`);
  }

  onLink(peer: string, up: boolean): void {
    if (up) this.notice('info', { peer }, 'peer link up');
    else this.notice('warn', { peer }, 'peer link lost');
  }

  /** Runs fn between two apply batches. */
  onApplyChain<T>(fn: () => T | Promise<T>): Promise<T> {
    const p = this.applyChain.then(fn);
    this.applyChain = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  private installSnapshot(meta: SnapshotMetadata): Promise<void> {
    return this.receiver.exclusive(() => this.housekeeping.installStaged(meta));
  }

  // ---- proposals and reads (ReplicaService) ------------------------------------------------

  checkServing(): void {
    if (this.fatalError) throw new RequestError('ESHUTDOWN', `node failed: ${this.fatalError.message}`);
    if (this.removed) throw new RequestError('ESHUTDOWN', 'node removed from the cluster');
    if (this.stopping || this.stopped) throw new RequestError('ESHUTDOWN', 'node stopping');
  }

  propose(encode: (id: RequestId) => Buffer): Promise<void> {
    try {
      this.checkServing();
    } catch (err) {
      return Promise.reject(err);
    }
    const p = this.session.propose(encode);
    this.schedule();
    return p;
  }

  /** Hands a command to Raft: appended here if leader, forwarded as Prop to the leader otherwise. */
  private submitProposal(data: Buffer): boolean {
    if (this.fatalError || this.stopped || this.removed) return false;
    const r = this.raw.basicStatus();
    if (r.role === Role.Leader) {
      try {
        this.raw.propose(data);
        return true;
      } catch {
        // Transfer in progress, too many uncommitted bytes, removed: retry later.
        return false;
      }
    }
    if (r.lead === '') return false;
    this.raw.step(message({ type: MessageType.Prop, from: this.nodeId, entries: [{ term: 0, index: 0, type: EntryType.Normal, data }] }));
    return true;
  }

  readBarrier(): Promise<void> {
    try {
      this.checkServing();
    } catch (err) {
      return Promise.reject(err);
    }
    if (this.bugs.readBeforeApplied) return Promise.resolve();
    // The sole voter leading needs no round and no trip through the Ready
    // loop; nor does a leader whose lease holds.
    const local = this.raw.localReadIndex() ?? this.leaseReadIndex();
    if (local !== undefined) return this.reads.waitApplied(local);
    return this.reads.wait();
  }

  /** Raft's lease, checked against the real clock too (see lease-clock.ts). */
  private leaseReadIndex(): number | undefined {
    const lease = this.raw.leaseRead();
    if (lease === undefined || !this.leaseClock.holds(lease.since, this.clock.now())) return undefined;
    return lease.index;
  }

  private askReadIndex(context: Buffer): boolean {
    if (this.fatalError || this.stopped || this.removed) return false;
    try {
      this.raw.readIndex(context);
    } catch {
      return false;
    }
    this.schedule();
    return true;
  }

  /** How this node compacts writes: its mode, and whether COMPRESSED_WRITE may be proposed now (every member decodes it). */
  compression(): { mode: CompressionMode; compressed: boolean; stats: CompressionStats } {
    const mode = this.options.compression ?? 'lz4';
    if (mode === 'off') return { mode, compressed: false, stats: this.compressionStats };
    // Membership and the member table change only as entries apply.
    const key = `${this.raftAppliedIndex}/${this.processedIndex}`;
    if (this.compressionGate.key !== key) {
      const cs = this.raw.status().confState;
      const members = new Set([...cs.voters, ...cs.learners, ...cs.votersOutgoing, ...cs.learnersNext]);
      this.compressionGate = { key, ok: membersDecodeCompressed(members, (id) => this.store.publishedMember(id)?.version) };
    }
    return { mode, compressed: this.compressionGate.ok, stats: this.compressionStats };
  }

  /** Refuses a write of `bytes` that would take the data filesystem below its reserve (ENOSPC, before proposing). */
  checkSpace(bytes: number): void {
    if (bytes <= 0) return;
    const space = this.host.space;
    if (space.wouldBreachReserve(bytes)) {
      const r = space.report();
      this.emit('spaceRefused', bytes);
      throw new RequestError('ENOSPC', `data filesystem has ${r.freeBytes} bytes free, reserve ${r.reserveBytes}`);
    }
    space.admit(bytes);
  }

  // ---- waiting, events, leaving -------------------------------------------------------------

  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => this.clock.after(ms, resolve));
  }

  async waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = this.clock.now() + timeoutMs;
    while (!cond()) {
      if (this.fatalError || this.stopped) throw new RequestError('ESHUTDOWN', 'node stopped');
      if (this.clock.now() > deadline) throw new ReplicaError('XDEVICE_ERR_TIMEOUT', `timed out waiting for ${what}`);
      await this.sleep(limits.tickMs);
    }
  }

  /** Logs an event an operator cares about and offers it to the status page's recent events. */
  notice(level: 'info' | 'warn', fields: Record<string, unknown>, msg: string): void {
    this.logger[level](fields, msg);
    this.emit('notice', { level, msg, fields });
  }

  leaveRemoved(why: string): void {
    if (this.removed) return;
    this.removed = true;
    this.removedWhy = why;
    this.notice('warn', { why }, 'this node is no longer a member; leaving service');
    this.session.failAll('ESHUTDOWN', 'this node was removed from the cluster');
    this.reads.failAll('ESHUTDOWN', 'this node was removed from the cluster');
    this.emit('removed', why);
  }

  fail(err: Error): void {
    if (this.fatalError || this.stopped) return;
    this.fatalError = err;
    this.logger.fatal({ err: err.message, code: (err as XDeviceError).code }, 'node failed; leaving service');
    this.emit('notice', { level: 'error', msg: 'node failed; leaving service', fields: { err: err.message } });
    this.cancelTick?.();
    this.session.failAll('ESHUTDOWN', `node failed: ${err.message}`);
    this.reads.failAll('ESHUTDOWN', `node failed: ${err.message}`);
    void this.transport.close();
    this.emit('fatal', err);
  }

  onFatal(listener: (err: Error) => void): void {
    if (this.fatalError) listener(this.fatalError);
    else this.once('fatal', listener);
  }

  onRemoved(listener: (why: string) => void): void {
    if (this.removedWhy !== undefined) listener(this.removedWhy);
    else this.once('removed', listener);
  }

  override on<K extends keyof NodeEvents>(event: K, listener: (e: NodeEvents[K]) => void): this;
  override on(event: string | symbol, listener: (...args: any[]) => void): this;
  override on(event: string | symbol, listener: (...args: any[]) => void): this {
    return super.on(event, listener);
  }

  /** Finishes in-flight work, checkpoints, closes the transport and the WAL (the owner closes the rest). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopping = true;
    // Let requests already admitted finish (bounded: they time out).
    await this.waitFor(() => this.session.size === 0 && this.reads.pending === 0, limits.requestTimeoutMs, 'in-flight requests').catch(() => undefined);
    this.stopped = true;
    this.cancelTick?.();
    await this.advanceChain.catch(() => undefined);
    await this.applyChain.catch(() => undefined);
    if (!this.fatalError) await this.housekeeping.finalCheckpoint();
    this.session.failAll('ESHUTDOWN', 'node stopped');
    this.reads.failAll('ESHUTDOWN', 'node stopped');
    await this.receiver.close();
    await this.transport.close();
    await this.log.close().catch(() => undefined);
    await this.store.closeFiles();
  }

  /** Stops at once without a checkpoint (the simulator's crash: volatile state is simply dropped). */
  halt(): void {
    this.stopped = true;
    this.cancelTick?.();
    this.session.failAll('ESHUTDOWN', 'node crashed');
    this.reads.failAll('ESHUTDOWN', 'node crashed');
  }
}
