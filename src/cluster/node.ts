// The node runtime: drives Raft's Ready loop against the WAL, the peer
// transport and the block store, in the order the contracts need:
//
//   ready()  ─┬─ send messages now (the leader's App goes out while its own
//             │  append is still being written)
//             ├─ WAL save (one group commit) ── then send messagesAfterPersist
//             ├─ apply committedEntries in order ── settle waiters, reads
//             └─ advance() once saved and applied, in Ready order
//
// Several Readys are in flight at once (the WAL merges their writes into
// group commits); every proposal and read made in one event-loop turn lands in
// one Ready. Requests from this node's NBD connections are proposed here (the
// leader) or forwarded to the leader as Raft Prop messages (a follower) and
// settle when they apply on this node (src/cluster/requests.ts). Reads go
// through ReadIndex on every node (src/cluster/read-gate.ts).
//
// A failed WAL write or fdatasync, or a failed apply, takes the node out of
// service: every waiter gets ESHUTDOWN, the transport closes, 'fatal' fires.
// Nothing unacknowledged was promised, and what was acknowledged is on a
// majority's disks.

import { EventEmitter } from 'node:events';
import { createHash, randomInt } from 'node:crypto';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { AddNodeOptions, DeviceInfo, HealthReport, Member, NodeApi, NodeEvents, NodeStatus, PeerStatus, ResizeOptions, Role as ApiRole } from '../admin/api.ts';
import { limits } from '../limits.ts';
import { XDeviceError } from '../errors.ts';
import { bootstrap } from '../raft/bootstrap.ts';
import { ConfChangeType, confChanges, decodeConfChange } from '../raft/confchange.ts';
import { NotLeaderError } from '../raft/errors.ts';
import { RawNode, Role, type Ready, type SoftState } from '../raft/rawnode.ts';
import type { ElectionRecord, VoteTally } from '../raft/raft.ts';
import { EntryType, MessageType, message, type ConfState, type Entry, type Message, type SnapshotMetadata } from '../raft/types.ts';
import { Wal, type WalOptions } from '../wal/wal.ts';
import { BlockStore } from '../device/block-store.ts';
import { readCheckpoint, readNodeIdentity, writeNodeIdentity, writeCheckpoint } from '../device/checkpoint.ts';
import { checkDeviceFiles, checkStartState, lockDataDir, type DataDirLock } from './data-dir.ts';
import { deviceNameProblem, deviceSizeProblem } from '../device/device-rules.ts';
import { promotionBlocker } from './promotion.ts';
import { SpaceMonitor } from './space.ts';
import { probeFileSize } from './file-size-probe.ts';
import { COMMAND_VERSION, CommandOp, encodeCreateDevice, encodeDeleteDevice, encodeResizeDevice, type RequestId } from '../device/commands.ts';
import { ReplicatedDeviceTable, type ReplicaService } from '../device/replicated.ts';
import { finishInstall, installStagedFiles, pendingInstall } from '../device/snapshot-staging.ts';
import { encodeRemoved, FrameKind } from './codec.ts';
import { admitPeerMessage, isLeaderMessage } from './peer-input.ts';
import { ReadGate } from './read-gate.ts';
import { RequestError, RequestSession } from './requests.ts';
import { SnapshotReceiver } from './snapshot-receiver.ts';
import { SnapshotSender } from './snapshot-sender.ts';
import { Transport } from './transport.ts';
import type { PeerAuth } from './peer-auth.ts';

export interface NodeConfig {
  nodeId: string;
  dataDir: string;
  /** Where peers reach this node; port 0 picks one (tests). */
  peerListen?: { host: string; port: number };
  /** Initial members, id → host:port (may include this node). Empty: a one-node cluster. */
  peers: Record<string, string>;
  /** How peer links are authenticated; without any, every peer link is refused. */
  peerAuth?: PeerAuth;
  /** Devices created when the cluster is bootstrapped. */
  devices: { name: string; size: number }[];
  /** Start empty and wait for an existing cluster to add this node. */
  join?: boolean;
  logger: Logger;
  /** WAL tuning (tests use small segments). */
  wal?: WalOptions;
  /** Free bytes kept on the data filesystem (default limits.spaceReserveBytes). */
  spaceReserveBytes?: number;
  /** Overrides of checkpoint and retention limits (tests force snapshots with small values). */
  tuning?: Partial<Pick<typeof limits, 'checkpointEntries' | 'checkpointBytes' | 'walRetainEntriesMax' | 'walRetainBytesMax'>>;
}

export class NodeError extends XDeviceError {}


/**
 * Checkpoint and retention overrides from the environment
 * (XDEVICE_CHECKPOINT_ENTRIES, XDEVICE_WAL_RETAIN_ENTRIES): process-level
 * tests use them to make a joining node need a snapshot after a few writes.
 */
export function tuningFromEnv(env: NodeJS.ProcessEnv = process.env): NodeConfig['tuning'] {
  const tuning: { checkpointEntries?: number; walRetainEntriesMax?: number } = {};
  const num = (name: string): number | undefined => {
    const v = env[name];
    if (v === undefined || v === '') return undefined;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < 0) throw new NodeError('XDEVICE_ERR_CONFIG', `${name} must be a non-negative integer`);
    return n;
  };
  const entries = num('XDEVICE_CHECKPOINT_ENTRIES');
  const retain = num('XDEVICE_WAL_RETAIN_ENTRIES');
  if (entries !== undefined) tuning.checkpointEntries = Math.max(1, entries);
  if (retain !== undefined) tuning.walRetainEntriesMax = retain;
  return tuning;
}

const WAL_DIR = 'wal';

interface ConfPoint {
  index: number;
  confState: ConfState;
}

export class ClusterNode extends EventEmitter implements ReplicaService {
  readonly devices: ReplicatedDeviceTable;
  /** The admin API's view of this node (src/admin). */
  readonly api: NodeApi;
  private readonly raw: RawNode;
  private readonly session: RequestSession;
  private readonly reads: ReadGate;
  private readonly sender: SnapshotSender;
  private readonly receiver: SnapshotReceiver;
  private readonly logger: Logger;
  private tickTimer: NodeJS.Timeout | undefined;
  /** Peer messages from ids outside the configuration, dropped before Raft. */
  peerMessagesDropped = 0;
  private lastDropLogAt = 0;
  private readyScheduled = false;
  private installing = false;
  private advanceChain: Promise<void> = Promise.resolve();
  private applyChain: Promise<void> = Promise.resolve();
  /** Highest committed index reflected in the store (entries at or below the store's own index are skipped). */
  private processedIndex: number;
  /** Highest committed index Raft handed to apply: membership is known up to here. */
  private raftAppliedIndex: number;
  /** After a fuzzy snapshot, reads wait until replay made the files consistent up to here. */
  private readFloor = 0;
  private bytesSinceCheckpoint = 0;
  private checkpointing: Promise<void> | undefined;
  private readonly confHistory: ConfPoint[];
  private readonly snapshotHolds = new Map<string, number>();
  private fatalError: Error | undefined;
  private removed = false;
  private removedWhy: string | undefined;
  private stopping = false;
  private stopped = false;
  /** Term and vote last made durable: a hard state that changes only the commit index is not worth a WAL record. */
  private savedTerm = 0;
  private savedVote = '';
  private readonly startedAt = Date.now();
  private addresses = { nbd: '', admin: '' };
  private lastLeader = '';
  private lastRole: Role = Role.Follower;
  private readonly walLastIndexAtStart: number;
  private readonly tuning: Pick<typeof limits, 'checkpointEntries' | 'checkpointBytes' | 'walRetainEntriesMax' | 'walRetainBytesMax'>;
  private readonly space: SpaceMonitor;
  /** Learners this leader was asked to add: promoted once promotionBlocker() has nothing to say. */
  private readonly autoPromote = new Set<string>();
  private promoting = false;
  /** Date.now() when this node last stepped a leader's message (App, Heartbeat, Snap). */
  private leaderContactAt = Date.now();

  private constructor(
    private readonly config: NodeConfig,
    private readonly wal: Wal,
    readonly store: BlockStore,
    readonly transport: Transport,
    private readonly lock: DataDirLock,
  ) {
    super();
    this.logger = config.logger;
    this.tuning = {
      checkpointEntries: config.tuning?.checkpointEntries ?? limits.checkpointEntries,
      checkpointBytes: config.tuning?.checkpointBytes ?? limits.checkpointBytes,
      walRetainEntriesMax: config.tuning?.walRetainEntriesMax ?? limits.walRetainEntriesMax,
      walRetainBytesMax: config.tuning?.walRetainBytesMax ?? limits.walRetainBytesMax,
    };
    this.space = new SpaceMonitor(config.dataDir, config.spaceReserveBytes ?? limits.spaceReserveBytes);
    this.walLastIndexAtStart = wal.lastIndex();
    wal.onBatchDurable = (e) => this.emit('walFsync', { durationSeconds: e.syncSeconds, bytes: e.bytes });
    const applied = wal.snapshotMetadata().index;
    this.raw = new RawNode({ id: config.nodeId, storage: wal, rand: (n) => randomInt(n), applied });
    this.processedIndex = Math.max(applied, store.appliedIndex);
    this.raftAppliedIndex = applied;
    const hs = wal.hardState();
    this.savedTerm = hs.term;
    this.savedVote = hs.vote;
    this.confHistory = [{ index: applied, confState: wal.snapshotMetadata().confState }];
    this.session = new RequestSession((data) => this.submitProposal(data));
    this.reads = new ReadGate(config.nodeId, (ctx) => this.askReadIndex(ctx), () => (this.processedIndex >= this.readFloor ? this.processedIndex : 0));
    this.receiver = new SnapshotReceiver(config.dataDir, transport, this.logger.child({ component: 'snapshot' }), () => this.raw.basicStatus().lead);
    this.sender = new SnapshotSender(
      transport,
      {
        capture: () =>
          this.onApplyChain(() => {
            const state = this.store.captureState();
            return { state, paths: this.store.filePaths(state) };
          }),
        appliedIndex: () => this.processedIndex,
        done: (peer, ok, snap) => {
          if (ok) this.transport.send(snap);
          this.raw.reportSnapshot(peer, ok);
          this.schedule();
        },
        hold: (peer, index) => {
          if (index === undefined) this.snapshotHolds.delete(peer);
          else this.snapshotHolds.set(peer, index);
        },
      },
      this.logger.child({ component: 'snapshot' }),
    );
    this.devices = new ReplicatedDeviceTable(this, config.devices[0]?.name);
    this.api = {
      status: () => this.status(),
      health: () => this.health(),
      members: () => this.members(),
      devices: () => this.devicesInfo(),
      addNode: (id, address, options) => this.addNode(id, address, options),
      promoteNode: (id) => this.promoteNode(id),
      removeNode: (id) => this.removeNode(id),
      transferLeader: (to) => this.transferLeader(to),
      createDevice: (name, size) => this.createDevice(name, size),
      deleteDevice: (name) => this.deleteDevice(name),
      resizeDevice: (name, size, options) => this.resizeDevice(name, size, options),
      space: () => this.space.report(),
      pendingProposals: () => this.pendingProposals(),
      on: (event, listener) => this.on(event, listener as (...args: unknown[]) => void),
    };
  }

  // ---- startup ---------------------------------------------------------------------

  static async start(config: NodeConfig): Promise<ClusterNode> {
    const { dataDir, nodeId } = config;
    if (!nodeId) throw new NodeError('XDEVICE_ERR_CONFIG', 'node id is required');
    // Locked before anything in it is read: a second node on this directory exits here.
    const lock = lockDataDir(dataDir);
    try {
      return await ClusterNode.open(config, lock);
    } catch (err) {
      lock.release();
      throw err;
    }
  }

  private static async open(config: NodeConfig, lock: DataDirLock): Promise<ClusterNode> {
    const { dataDir, nodeId, logger } = config;
    const identity = await readNodeIdentity(dataDir);
    if (identity && identity.nodeId !== nodeId) {
      throw new NodeError('XDEVICE_ERR_CONFIG', `${dataDir} belongs to node ${identity.nodeId}, not ${nodeId}`);
    }

    // A snapshot install interrupted by a crash is finished first (see snapshot-staging.ts).
    const interrupted = await pendingInstall(dataDir);
    if (interrupted) {
      logger.warn({ index: interrupted.index }, 'finishing an interrupted snapshot install');
      await installStagedFiles(dataDir);
    }
    const wal = await Wal.open(join(dataDir, WAL_DIR), { logger: logger.child({ component: 'wal' }), ...config.wal });
    try {
      if (interrupted) {
        if (wal.snapshotMetadata().index < interrupted.index) await wal.applySnapshot(interrupted);
        await finishInstall(dataDir);
      }
      const checkpoint = await readCheckpoint(dataDir);
      checkStartState({
        dataDir,
        identity,
        checkpointIndex: checkpoint?.appliedIndex,
        wal: { lastIndex: wal.lastIndex(), snapshotIndex: wal.snapshotMetadata().index, term: wal.hardState().term, confState: wal.snapshotMetadata().confState },
      });
      if (checkpoint) {
        const lo = Math.max(checkpoint.appliedIndex + 1, wal.firstIndex());
        checkDeviceFiles(dataDir, checkpoint.devices, lo <= wal.lastIndex() ? wal.entries(lo, wal.lastIndex() + 1, Number.MAX_SAFE_INTEGER) : []);
      }
      const store = await BlockStore.open(dataDir, logger.child({ component: 'store' }));
      const fresh = wal.lastIndex() === 0 && wal.snapshotMetadata().index === 0 && wal.hardState().term === 0;
      const initialPeers = { ...config.peers };
      if (config.peerListen && !initialPeers[nodeId]) initialPeers[nodeId] = `${config.peerListen.host}:${config.peerListen.port}`;
      let bootstrapped = false;
      // node.id is written last: without it, a founder's bootstrap did not
      // finish (or never began) and is done (again) now.
      if (!identity && !config.join) {
        // Every founding member writes the same initial log: the voters as
        // membership entries at indexes 1..n, counted as applied.
        const voters = Object.keys(initialPeers).length > 0 ? Object.keys(initialPeers) : [nodeId];
        if (!voters.includes(nodeId)) throw new NodeError('XDEVICE_ERR_CONFIG', `--peers does not list this node (${nodeId})`);
        const bs = bootstrap(voters);
        if (fresh) await wal.save({ hardState: bs.hardState, entries: bs.entries });
        if (wal.snapshotMetadata().index < bs.applied) await wal.compact({ index: bs.applied, term: 1, confState: bs.confState });
        const clusterId = createHash('sha256').update([...bs.confState.voters].join('\0')).digest('hex').slice(0, 16);
        store.clusterId = clusterId;
        for (const [id, address] of Object.entries(initialPeers)) store.setMember(id, address);
        const state = store.captureState();
        await writeCheckpoint(dataDir, { ...state, appliedIndex: bs.applied, appliedTerm: 1 });
        store.appliedIndex = bs.applied;
        store.appliedTerm = 1;
        store.checkpointIndex = bs.applied;
        await writeNodeIdentity(dataDir, { clusterId, nodeId });
        bootstrapped = true;
        logger.info({ clusterId, voters: bs.confState.voters }, 'bootstrapped a new cluster');
      } else if (fresh && !identity) {
        await writeNodeIdentity(dataDir, { clusterId: '', nodeId });
      }
      // Addresses given on the command line win over those remembered (an operator moved a peer).
      const peers: Record<string, string> = { ...store.memberAddresses(), ...initialPeers };
      const transport = new Transport({
        nodeId,
        clusterId: store.clusterId,
        ...(config.peerListen ? { listen: config.peerListen } : {}),
        peers,
        auth: config.peerAuth ?? {},
        logger: logger.child({ component: 'transport' }),
      });
      const node = new ClusterNode(config, wal, store, transport, lock);
      await node.run(bootstrapped);
      return node;
    } catch (err) {
      await wal.close().catch(() => undefined);
      throw err;
    }
  }

  private async run(bootstrapped: boolean): Promise<void> {
    const t = this.transport;
    t.on('message', (m, reply) => this.onPeerMessage(m, reply));
    t.on('removed', (by) => this.leaveRemoved(`${by} says this node was removed from the cluster`));
    t.on('frame', (from, f) => {
      if (f.kind === FrameKind.SnapResult) this.sender.onResult(from, f);
      else this.receiver.onFrame(from, f);
    });
    t.on('unreachable', (peer) => {
      if (this.raw.isMember(peer)) this.raw.reportUnreachable(peer);
    });
    t.on('peerRtt', ({ peer, ms }) => this.emit('peerRtt', { peer, seconds: ms / 1000 }));
    await this.space.start();
    // Operators learn of a lost peer from every survivor, once per loss, and of its return.
    t.on('disconnected', (peer) => this.notice('warn', { peer }, 'peer link lost'));
    t.on('connected', (peer) => this.notice('info', { peer }, 'peer link up'));
    const bound = await t.listen();
    if (bound && this.config.peerListen?.port === 0) this.logger.info({ peerListen: bound }, 'peer transport listening');
    t.connectAll();
    this.peerAddress = bound ? `${bound.host}:${bound.port}` : '';

    this.tickTimer = setInterval(() => this.tick(), limits.tickMs);
    const cs = this.raw.status().confState;
    if (cs.voters.length === 1 && cs.voters[0] === this.config.nodeId && cs.learners.length === 0) {
      // Alone: no one to wait for, become leader now.
      this.raw.campaign();
    }
    this.schedule();
    if (bootstrapped) {
      const alone = cs.voters.length === 1;
      const created = this.createInitialDevices(alone);
      // A standalone node serves its devices as soon as start() returns.
      if (alone) await created;
    }
  }

  peerAddress = '';

  /** Devices named in the configuration are created once, when the cluster is founded. */
  private async createInitialDevices(alone: boolean): Promise<void> {
    for (const d of this.config.devices) {
      try {
        await this.createDevice(d.name, d.size);
      } catch (err) {
        if ((err as XDeviceError).code === 'XDEVICE_ERR_EXISTS') continue;
        if (this.stopped || this.fatalError) return;
        if (!alone) {
          // Other founders propose the same device; one of them wins.
          this.logger.debug({ device: d.name, err: (err as Error).message }, 'initial device not created here');
          continue;
        }
        this.logger.error({ device: d.name, err: (err as Error).message }, 'could not create the initial device');
      }
    }
  }

  /** Resolves once the configured devices exist (a standalone node right after start). */
  async waitForDevices(timeoutMs = limits.requestTimeoutMs): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.config.devices.some((d) => !this.store.device(d.name))) {
      if (Date.now() > deadline || this.fatalError || this.stopped) throw new NodeError('XDEVICE_ERR_TIMEOUT', 'devices not created in time');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  // ---- the loop ----------------------------------------------------------------------

  private tick(): void {
    if (this.fatalError || this.stopped) return;
    this.raw.tick();
    this.promoteCaughtUp();
    const now = Date.now();
    this.session.sweep(now);
    this.reads.sweep(now);
    this.schedule();
  }

  private schedule(): void {
    if (this.readyScheduled || this.stopped || this.fatalError) return;
    this.readyScheduled = true;
    setImmediate(() => {
      this.readyScheduled = false;
      this.processReady();
    });
  }

  private processReady(): void {
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
    } else {
      persisted = this.persist(rd);
      applied = this.applyChain = this.applyChain.then(() => this.apply(rd.committedEntries));
    }
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

  private persist(rd: Ready): Promise<void> {
    // The commit index need not be durable: after a restart Raft learns it
    // again from the leader (or, alone, by committing a new entry), and the
    // checkpoint says what the files hold. So a hard state goes to the WAL
    // only when term or vote change — one record less in nearly every save.
    const hs = rd.hardState;
    const hardState = hs && (hs.term !== this.savedTerm || hs.vote !== this.savedVote) ? hs : undefined;
    if (rd.entries.length === 0 && !hardState) return Promise.resolve();
    if (hardState) {
      this.savedTerm = hardState.term;
      this.savedVote = hardState.vote;
    }
    const started = process.hrtime.bigint();
    let bytes = 0;
    for (const e of rd.entries) bytes += e.data.length;
    return this.wal.save({ ...(hardState ? { hardState } : {}), entries: rd.entries }).then(() => {
      this.emit('walSync', { durationSeconds: Number(process.hrtime.bigint() - started) / 1e9, bytes });
    });
  }

  private async apply(entries: Entry[]): Promise<void> {
    if (entries.length === 0) return;
    const started = process.hrtime.bigint();
    // Waiters settle as each write is queued (see BlockStore.applyBatch);
    // reads wait for processedIndex, which moves once the batch completed.
    await this.store.applyBatch(
      entries,
      (e) => this.applyConfEntry(e),
      (o) => {
        if (o.request?.clientId !== this.session.clientId) return;
        this.emit('proposal', { outcome: o.error && !o.duplicate ? 'failed' : 'committed' });
        this.session.settle(o);
      },
    );
    this.emit('apply', { durationSeconds: Number(process.hrtime.bigint() - started) / 1e9, entries: entries.length });
    const last = entries[entries.length - 1]!;
    this.raftAppliedIndex = Math.max(this.raftAppliedIndex, last.index);
    this.processedIndex = Math.max(this.processedIndex, last.index, this.store.appliedIndex);
    for (const e of entries) this.bytesSinceCheckpoint += e.data.length;
    this.reads.onApplied(this.processedIndex);
    this.maybeCheckpoint();
  }

  private applyConfEntry(e: Entry): void {
    const cc = decodeConfChange(e.data);
    const cs = this.raw.applyConfChange(cc);
    this.confHistory.push({ index: e.index, confState: cs });
    const address = cc.context?.toString('utf8');
    for (const ch of cc.changes) {
      if (ch.type === ConfChangeType.RemoveNode) {
        this.store.setMember(ch.nodeId, undefined);
        if (ch.nodeId === this.config.nodeId) {
          this.leaveRemoved(`removed from the cluster at index ${e.index}`);
        } else {
          this.transport.removePeer(ch.nodeId);
        }
      } else if (address) {
        this.store.setMember(ch.nodeId, address);
        if (ch.nodeId !== this.config.nodeId) this.transport.addPeer(ch.nodeId, address);
      }
    }
    // Entries this node's WAL held before it started are replays of old changes, not news.
    if (e.index <= this.walLastIndexAtStart) this.logger.debug({ index: e.index, voters: cs.voters, learners: cs.learners }, 'membership change replayed');
    else this.notice('info', { index: e.index, voters: cs.voters, learners: cs.learners }, 'membership changed');
  }

  private leaveRemoved(why: string): void {
    if (this.removed) return;
    this.removed = true;
    this.removedWhy = why;
    this.notice('warn', { why }, 'this node is no longer a member; leaving service');
    this.session.failAll('ESHUTDOWN', 'this node was removed from the cluster');
    this.reads.failAll('ESHUTDOWN', 'this node was removed from the cluster');
    this.emit('removed', why);
  }

  /** Logs an event an operator cares about and offers it to the status page's recent events. */
  private notice(level: 'info' | 'warn', fields: Record<string, unknown>, msg: string): void {
    this.logger[level](fields, msg);
    this.emit('notice', { level, msg, fields });
  }

  private onSoftState(ss: SoftState): void {
    const previousRole = this.lastRole;
    this.lastRole = ss.role;
    const election = this.raw.lastElection();
    if ((previousRole === Role.Candidate || previousRole === Role.PreCandidate) && ss.role === Role.Follower && election) {
      // A lost pre-vote repeats every timeout while a live leader is out of reach: debug, not info.
      const lost = previousRole === Role.PreCandidate ? election.preVote : election.vote;
      if (lost?.outcome === 'lost') {
        if (previousRole === Role.Candidate) this.notice('info', describeElection(election), 'election lost');
        else this.logger.debug(describeElection(election), 'pre-vote lost');
      }
    }
    if (ss.lead !== this.lastLeader) {
      const previous = this.lastLeader;
      this.lastLeader = ss.lead;
      const term = this.raw.basicStatus().term;
      if (ss.lead === this.config.nodeId) {
        // Why this node campaigned (timeout or transfer) and who voted for it.
        this.notice('info', { ...(election ? describeElection(election) : { term }), previous }, 'became leader');
      } else {
        this.notice('info', { leader: ss.lead, previous, role: ss.role, term }, ss.lead === '' ? 'leader lost' : 'leader changed');
      }
      this.emit('leaderChange', { leader: ss.lead, term: this.raw.basicStatus().term });
      // The new leader may never have seen what the old one was given.
      if (ss.lead !== '') this.session.retryAll();
    }
  }

  private send(m: Message): void {
    if (m.to === this.config.nodeId) {
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

  /**
   * A message from a peer link (authenticated, terms and indexes already
   * bounded by the codec). Only members of the current configuration speak
   * to Raft: anything else is dropped and counted, so a stranger's vote,
   * proposal or ConfChange never reaches it.
   */
  private onPeerMessage(m: Message, reply: (frame: Buffer) => void): void {
    if (this.fatalError || this.stopped) return;
    if (!this.raw.isMember(m.from)) {
      if (this.store.wasRemoved(m.from)) {
        // Removed while cut off, it never applied its own removal: tell it.
        reply(encodeRemoved(m.from));
        return;
      }
      const st = this.raw.basicStatus();
      const leaderlessLong = st.role !== Role.Leader && Date.now() - this.leaderContactAt >= limits.peerLeaderlessGraceMs;
      if (!admitPeerMessage(m, (id) => this.raw.isMember(id), this.raw.hasConfiguration(), { term: st.term, lead: st.lead, leaderlessLong })) {
        this.peerMessagesDropped++;
        const now = Date.now();
        if (now - this.lastDropLogAt > 1000) {
          this.lastDropLogAt = now;
          this.logger.warn({ from: m.from, type: MessageType[m.type], dropped: this.peerMessagesDropped }, 'dropped a message from a peer outside the configuration');
        }
        return;
      }
    }
    if (isLeaderMessage(m)) this.leaderContactAt = Date.now();
    this.onMessage(m);
  }

  private onMessage(m: Message): void {
    if (this.fatalError || this.stopped) return;
    if (m.type === MessageType.Snap) {
      // Only once the streamed files are durably staged may Raft take the snapshot.
      const staged = this.receiver.staged;
      if (!staged || staged.metadata.index !== m.snapshot?.index || staged.from !== m.from) {
        this.logger.warn({ from: m.from, index: m.snapshot?.index }, 'snapshot message without staged data; dropped');
        return;
      }
      // Raft may now hand the snapshot back to be installed: keep the staging
      // from being replaced by another stream until that is settled.
      this.receiver.pinned = true;
      this.raw.step(m);
      this.processReady();
      if (!this.installing) this.receiver.pinned = false;
      return;
    }
    if (m.type === MessageType.Prop && this.raw.basicStatus().role === Role.Leader && this.space.wouldBreachReserve(0)) {
      // A follower's own check missed it (its disk is not this one): writes
      // would fail at apply here, so they are not proposed; the follower's
      // request times out (EIO) rather than stopping this node.
      const kept = m.entries.filter((e) => !allocates(e.data));
      if (kept.length !== m.entries.length) {
        this.logger.warn({ from: m.from, dropped: m.entries.length - kept.length }, 'forwarded writes not proposed: data filesystem below its reserve');
        if (kept.length === 0) return;
        m = { ...m, entries: kept };
      }
    }
    this.raw.step(m);
    // Right away rather than next turn: an App starts the follower's append,
    // an AppResp may commit writes someone waits for. (Proposals, in
    // contrast, are gathered for a turn: they share one Ready.)
    this.processReady();
  }

  /** Runs fn between two apply batches. */
  private onApplyChain<T>(fn: () => T | Promise<T>): Promise<T> {
    const p = this.applyChain.then(fn);
    this.applyChain = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  // ---- snapshots, checkpoints, compaction ------------------------------------------------

  private installSnapshot(meta: SnapshotMetadata): Promise<void> {
    return this.receiver.exclusive(() => this.installStaged(meta));
  }

  private async installStaged(meta: SnapshotMetadata): Promise<void> {
    const staged = this.receiver.take();
    if (!staged || staged.metadata.index !== meta.index) throw new NodeError('XDEVICE_ERR_ASSERTION', `Raft installs snapshot ${meta.index} but none is staged`);
    this.logger.info({ index: meta.index, stateIndex: staged.state.appliedIndex, consistentIndex: staged.consistentIndex }, 'installing snapshot');
    await this.store.closeFiles();
    await installStagedFiles(this.config.dataDir);
    await this.store.reload(staged.state);
    await this.wal.applySnapshot(meta);
    await finishInstall(this.config.dataDir);
    this.processedIndex = Math.max(meta.index, this.store.appliedIndex);
    this.raftAppliedIndex = meta.index;
    this.readFloor = staged.consistentIndex;
    this.receiver.pinned = false;
    this.confHistory.splice(0, this.confHistory.length, { index: meta.index, confState: meta.confState });
    if (!this.transport.clusterId && staged.state.clusterId) {
      this.transport.clusterId = staged.state.clusterId;
      await writeNodeIdentity(this.config.dataDir, { clusterId: staged.state.clusterId, nodeId: this.config.nodeId });
    }
    for (const [id, address] of Object.entries(staged.state.members)) if (id !== this.config.nodeId) this.transport.addPeer(id, address);
    this.reads.onApplied(this.processedIndex);
  }

  private maybeCheckpoint(force = false): Promise<void> | undefined {
    if (this.checkpointing) return this.checkpointing;
    const due = this.store.appliedIndex - this.store.checkpointIndex >= this.tuning.checkpointEntries || this.bytesSinceCheckpoint >= this.tuning.checkpointBytes;
    if (!force && !due) return undefined;
    // Called between batches (from apply or on the apply chain): the capture is consistent.
    const state = this.store.captureState();
    this.bytesSinceCheckpoint = 0;
    const started = Date.now();
    this.checkpointing = this.store
      .checkpoint(state)
      .then(() => this.compact())
      .then(() => this.logger.debug({ index: state.appliedIndex, ms: Date.now() - started }, 'checkpoint written'))
      .catch((err: Error) => this.fail(err))
      .finally(() => {
        this.checkpointing = undefined;
      });
    return this.checkpointing;
  }

  /** Drops WAL entries up to the checkpoint, keeping what followers and snapshot streams still need. */
  private async compact(): Promise<void> {
    let target = Math.min(this.store.checkpointIndex, this.raftAppliedIndex);
    const st = this.raw.status();
    for (const [peer, held] of [...this.snapshotHolds]) {
      // A peer that got a snapshot keeps the log after it until it has caught up past it.
      const pr = st.progress[peer];
      if (!this.sender.isSending(peer) && (st.role !== Role.Leader || !pr || pr.match >= held)) this.snapshotHolds.delete(peer);
      else if (this.wal.payloadBytesBetween(held, target) > this.tuning.walRetainBytesMax) {
        // Held too long: the log behind it would outgrow memory. The peer will need a fresh snapshot.
        this.snapshotHolds.delete(peer);
      } else target = Math.min(target, held);
    }
    if (st.role === Role.Leader) {
      for (const [id, pr] of Object.entries(st.progress)) {
        if (id === this.config.nodeId) continue;
        // A follower close behind keeps its entries; one far behind (in entries
        // or in bytes: the log is held in memory) will get a snapshot.
        if (pr.match >= target - this.tuning.walRetainEntriesMax && this.wal.payloadBytesBetween(pr.match, target) <= this.tuning.walRetainBytesMax) target = Math.min(target, pr.match);
      }
    }
    const floor = this.wal.snapshotMetadata().index;
    if (target <= floor) return;
    const term = safeTerm(this.wal, target);
    if (term === undefined) return;
    await this.wal.compact({ index: target, term, confState: this.confStateAt(target) });
    while (this.confHistory.length > 1 && this.confHistory[1]!.index <= target) this.confHistory.shift();
  }

  private confStateAt(index: number): ConfState {
    let cs = this.confHistory[0]!.confState;
    for (const p of this.confHistory) if (p.index <= index) cs = p.confState;
    return cs;
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
    this.raw.step(message({ type: MessageType.Prop, from: this.config.nodeId, entries: [{ term: 0, index: 0, type: EntryType.Normal, data }] }));
    return true;
  }

  readBarrier(): Promise<void> {
    try {
      this.checkServing();
    } catch (err) {
      return Promise.reject(err);
    }
    // The sole voter leading needs no round and no trip through the Ready loop.
    const local = this.raw.localReadIndex();
    if (local !== undefined) return this.reads.waitApplied(local);
    return this.reads.wait();
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

  // ---- administration (NodeApi) ----------------------------------------------------------

  private requireLeader(): void {
    const r = this.raw.basicStatus();
    if (r.role !== Role.Leader) throw new NotLeaderError(r.lead);
  }

  private async waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (this.fatalError || this.stopped) throw new RequestError('ESHUTDOWN', 'node stopped');
      if (Date.now() > deadline) throw new NodeError('XDEVICE_ERR_TIMEOUT', `timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, limits.tickMs));
    }
  }

  private async proposeConfChange(cc: Parameters<RawNode['proposeConfChange']>[0]): Promise<void> {
    this.checkServing();
    this.requireLeader();
    const { index, term } = this.raw.proposeConfChange(cc);
    this.schedule();
    await this.waitFor(() => this.raftAppliedIndex >= index, limits.requestTimeoutMs, `membership change at ${index}`);
    const applied = safeTerm(this.wal, index);
    if (applied !== undefined && applied !== term) {
      throw new NodeError('XDEVICE_ERR_PROPOSAL_DROPPED', 'the membership change was lost to a leader change; retry');
    }
  }

  /**
   * Adds a node as a learner, once this leader has connected to it and
   * authenticated it; it becomes a voter when it has installed its snapshot
   * and caught up (promotionBlocker), by this leader's tick. An interrupted
   * caller leaves a learner that `members list` shows and remove-node removes.
   */
  async addNode(id: string, address: string, options: AddNodeOptions = {}): Promise<void> {
    if (!id || id.length > 255) throw new NodeError('XDEVICE_ERR_INVALID', 'bad node id');
    this.checkServing();
    this.requireLeader();
    const cs = this.raw.status().confState;
    if (cs.voters.includes(id)) return;
    if (!cs.learners.includes(id)) {
      await this.probePeer(id, address);
      await this.proposeConfChange(confChanges.addLearner(id, Buffer.from(address)));
    }
    if (options.promote === false) return;
    this.autoPromote.add(id);
    if (options.wait === false) return;
    await this.waitFor(() => this.raw.status().confState.voters.includes(id), limits.addNodeCatchUpTimeoutMs, `${id} to catch up and become a voter`);
  }

  /** Connects to `address` as peer `id` and waits for the authenticated handshake; refuses if it does not come. */
  private async probePeer(id: string, address: string): Promise<void> {
    const known = this.transport.peerAddress(id);
    if (known !== address) this.transport.addPeer(id, address);
    this.transport.connectAll();
    const linked = () => this.transport.status().some((l) => l.id === id && l.connected);
    const deadline = Date.now() + limits.addNodeProbeTimeoutMs;
    while (!linked() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (linked()) return;
    if (known === undefined) this.transport.removePeer(id);
    else if (known !== address) this.transport.addPeer(id, known);
    throw new NodeError(
      'XDEVICE_ERR_PEER_UNREACHABLE',
      `cannot connect to and authenticate ${id} at ${address} within ${limits.addNodeProbeTimeoutMs / 1000} s: start it first (with --join and the cluster's peer authentication), then add it; nothing was changed`,
    );
  }

  /** Operator promotion of a learner (`members promote`): only once it could vote without hurting the cluster. */
  async promoteNode(id: string): Promise<void> {
    this.checkServing();
    this.requireLeader();
    const st = this.raw.status();
    if (st.confState.voters.includes(id)) return;
    if (!st.confState.learners.includes(id)) throw new NodeError('XDEVICE_ERR_NOT_FOUND', `${id} is not a learner`);
    const why = this.promotionBlocker(id);
    if (why) throw new NodeError('XDEVICE_ERR_NOT_READY', `${id} cannot vote yet: ${why}`);
    await this.proposeConfChange(confChanges.addVoter(id, Buffer.from(this.store.memberAddresses()[id] ?? this.transport.peerAddress(id) ?? '')));
    this.autoPromote.delete(id);
  }

  private promotionBlocker(id: string): string | undefined {
    const st = this.raw.status();
    return promotionBlocker(st.progress[id], { commit: st.commit, snapshotIndex: this.wal.snapshotMetadata().index });
  }

  /** The leader's promotion policy, run every tick: one learner at a time. */
  private promoteCaughtUp(): void {
    if (this.autoPromote.size === 0 || this.promoting || this.raw.basicStatus().role !== Role.Leader) return;
    const st = this.raw.status();
    for (const id of this.autoPromote) {
      if (!st.confState.learners.includes(id)) {
        this.autoPromote.delete(id);
        continue;
      }
      if (this.promotionBlocker(id)) continue;
      this.promoting = true;
      this.logger.info({ id, match: st.progress[id]?.match, commit: st.commit }, 'learner caught up; promoting it to voter');
      this.promoteNode(id)
        .catch((err: Error) => this.logger.warn({ id, err: err.message }, 'promotion failed; will retry'))
        .finally(() => {
          this.promoting = false;
        });
      return;
    }
  }

  async removeNode(id: string): Promise<void> {
    const cs = this.raw.status().confState;
    if (!cs.voters.includes(id) && !cs.learners.includes(id)) throw new NodeError('XDEVICE_ERR_NOT_FOUND', `${id} is not a member`);
    await this.proposeConfChange(confChanges.remove(id));
  }

  async transferLeader(to: string): Promise<void> {
    this.checkServing();
    this.requireLeader();
    if (!this.raw.status().confState.voters.includes(to)) throw new NodeError('XDEVICE_ERR_NOT_FOUND', `${to} is not a voter`);
    if (to === this.config.nodeId) return;
    this.raw.transferLeader(to);
    this.schedule();
    await this.waitFor(() => this.raw.basicStatus().lead === to, limits.requestTimeoutMs, `leadership to move to ${to}`);
  }

  private async tableCommand(encode: (id: RequestId) => Buffer): Promise<void> {
    try {
      await this.propose(encode);
    } catch (err) {
      const code = (err as XDeviceError).code;
      if (typeof code === 'string' && code.startsWith('XDEVICE_ERR_')) throw new NodeError(code, (err as Error).message);
      throw err;
    }
  }

  /** Everything apply will check, checked before proposing (DESIGN contract 8). */
  private async checkTableCommand(name: string, size?: number): Promise<void> {
    const problem = deviceNameProblem(name) ?? (size === undefined ? undefined : deviceSizeProblem(size));
    if (problem) throw new NodeError('XDEVICE_ERR_INVALID', problem);
    if (size === undefined) return;
    await probeFileSize(this.config.dataDir, size);
    if (this.space.wouldBreachReserve(0)) {
      const r = this.space.report();
      throw new NodeError('XDEVICE_ERR_NO_SPACE', `the data filesystem has ${r.freeBytes} bytes free, below the reserve of ${r.reserveBytes}: free space first`);
    }
  }

  async createDevice(name: string, size: number): Promise<void> {
    await this.checkTableCommand(name, size);
    if (this.store.device(name)) throw new NodeError('XDEVICE_ERR_EXISTS', `device ${name} exists`);
    if (this.store.devices().length >= limits.devicesMax) throw new NodeError('XDEVICE_ERR_INVALID', `${limits.devicesMax} devices exist`);
    return this.tableCommand((id) => encodeCreateDevice(id, name, size));
  }

  async deleteDevice(name: string): Promise<void> {
    await this.checkTableCommand(name);
    if (!this.store.device(name)) throw new NodeError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    return this.tableCommand((id) => encodeDeleteDevice(id, name));
  }

  async resizeDevice(name: string, size: number, options: ResizeOptions = {}): Promise<void> {
    await this.checkTableCommand(name, size);
    const current = this.store.device(name);
    if (!current) throw new NodeError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    if (size < current.size && !options.allowShrink) {
      throw new NodeError('XDEVICE_ERR_INVALID', `shrinking ${name} from ${current.size} to ${size} bytes discards its tail: say so with allowShrink (xdevice-cli --allow-shrink)`);
    }
    return this.tableCommand((id) => encodeResizeDevice(id, name, size));
  }

  /** Refuses a write of `bytes` that would take the data filesystem below its reserve (ENOSPC, before proposing). */
  checkSpace(bytes: number): void {
    if (bytes <= 0) return;
    if (this.space.wouldBreachReserve(bytes)) {
      const r = this.space.report();
      this.emit('spaceRefused', bytes);
      throw new RequestError('ENOSPC', `data filesystem has ${r.freeBytes} bytes free, reserve ${r.reserveBytes}`);
    }
    this.space.admit(bytes);
  }

  pendingProposals(): number {
    return this.session.size;
  }

  setAddresses(addresses: { nbd: string; admin: string }): void {
    this.addresses = addresses;
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

  // ---- status ---------------------------------------------------------------------------

  status(): NodeStatus {
    const st = this.raw.status();
    const cs = st.confState;
    const members = this.store.memberAddresses();
    const links = new Map(this.transport.status().map((l) => [l.id, l]));
    const isLearner = cs.learners.includes(this.config.nodeId);
    const role: ApiRole = isLearner ? 'learner' : (st.role as ApiRole);
    const peerIds = new Set([...cs.voters, ...cs.learners, ...cs.votersOutgoing]);
    peerIds.delete(this.config.nodeId);
    const peers: PeerStatus[] = [...peerIds].sort().map((id) => {
      const pr = st.progress[id];
      const link = links.get(id);
      return {
        id,
        address: members[id] ?? link?.address ?? '',
        match: pr?.match ?? 0,
        next: pr?.next ?? 0,
        state: pr?.state ?? 'unknown',
        lagEntries: pr ? Math.max(0, st.commit - pr.match) : 0,
        voter: cs.voters.includes(id) || cs.votersOutgoing.includes(id),
        connected: link?.connected ?? false,
        messagesDropped: link?.droppedMessages ?? 0,
        ...(link?.rttMs !== undefined ? { rttMs: link.rttMs } : {}),
      };
    });
    const sending = this.sender.progress;
    const receiving = this.receiver.progress;
    return {
      id: this.config.nodeId,
      role,
      term: st.term,
      leader: st.lead,
      commit: st.commit,
      applied: this.processedIndex,
      logFirstIndex: this.wal.firstIndex(),
      logLastIndex: this.wal.lastIndex(),
      backend: 'replicated',
      peers,
      nbdAddress: this.addresses.nbd,
      adminAddress: this.addresses.admin,
      ...(sending
        ? { snapshot: { direction: 'sending' as const, peer: sending.peer, bytesDone: sending.bytesDone, bytesTotal: sending.bytesTotal } }
        : receiving
          ? { snapshot: { direction: 'receiving' as const, peer: receiving.peer, bytesDone: receiving.bytesDone, bytesTotal: 0 } }
          : {}),
      uptimeSeconds: Math.floor((Date.now() - this.startedAt) / 1000),
    };
  }

  members(): Member[] {
    const cs = this.raw.status().confState;
    const addr = this.store.memberAddresses();
    const ids = [...new Set([...cs.voters, ...cs.learners, ...cs.votersOutgoing])].sort();
    return ids.map((id) => ({
      id,
      address: addr[id] ?? (id === this.config.nodeId ? this.peerAddress : ''),
      voter: cs.voters.includes(id) || cs.votersOutgoing.includes(id),
      learner: cs.learners.includes(id),
      ...(id === this.config.nodeId && this.addresses.admin ? { adminAddress: this.addresses.admin } : {}),
      ...(id === this.config.nodeId && this.addresses.nbd ? { nbdAddress: this.addresses.nbd } : {}),
    }));
  }

  async devicesInfo(): Promise<DeviceInfo[]> {
    const out: DeviceInfo[] = [];
    for (const d of this.store.devices()) out.push({ name: d.name, size: d.size, usedBytes: await this.store.usedBytes(d.id), readOnly: false });
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async health(): Promise<HealthReport> {
    const st = this.raw.status();
    const links = this.transport.status();
    const voters = st.confState.voters;
    // Reachability is counted where it means something: the leader dials every
    // voter. A follower only sees its own links (followers need not reach each
    // other), so it reports whether it hears from a leader, not a count.
    let quorum: { name: string; ok: boolean; detail: string };
    if (st.role === Role.Leader) {
      const reachable = 1 + links.filter((l) => l.connected && voters.includes(l.id)).length;
      quorum = { name: 'quorum', ok: reachable > voters.length / 2, detail: `${reachable} of ${voters.length} voters reachable from the leader` };
    } else if (st.lead !== '') {
      const heard = links.some((l) => l.id === st.lead && l.connected);
      quorum = { name: 'quorum', ok: heard, detail: heard ? `leader ${st.lead} is reachable and holds a quorum (this node does not count voters; the leader's /health does)` : `leader ${st.lead} not reachable from here` };
    } else {
      quorum = { name: 'quorum', ok: false, detail: 'unknown here: no leader known' };
    }
    const space = this.space.report();
    const checks = [
      { name: 'storage', ok: !this.fatalError, detail: this.fatalError ? this.fatalError.message : 'WAL and device files writable' },
      { name: 'member', ok: !this.removed, detail: this.removed ? 'removed from the cluster' : `member of ${voters.length}-voter cluster` },
      { name: 'leader', ok: st.lead !== '', detail: st.lead ? `leader ${st.lead} (term ${st.term})` : 'no leader known' },
      quorum,
      { name: 'apply', ok: st.commit - this.processedIndex < 10_000, detail: `applied ${this.processedIndex} of ${st.commit} committed` },
      {
        name: 'space',
        ok: space.freeBytes >= space.reserveBytes,
        detail: `${space.freeBytes} bytes free on the data filesystem (reserve ${space.reserveBytes}${space.freeBytes < space.reserveBytes ? ': writes get ENOSPC' : ''})`,
      },
    ];
    return { healthy: checks.every((c) => c.ok), checks, space };
  }

  // ---- leaving -----------------------------------------------------------------------------

  private fail(err: Error): void {
    if (this.fatalError || this.stopped) return;
    this.fatalError = err;
    this.logger.fatal({ err: err.message, code: (err as XDeviceError).code }, 'node failed; leaving service');
    this.emit('notice', { level: 'error', msg: 'node failed; leaving service', fields: { err: err.message } });
    clearInterval(this.tickTimer);
    this.space.stop();
    this.session.failAll('ESHUTDOWN', `node failed: ${err.message}`);
    this.reads.failAll('ESHUTDOWN', `node failed: ${err.message}`);
    void this.transport.close();
    this.emit('fatal', err);
  }

  /** Finishes in-flight work, checkpoints, closes everything. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopping = true;
    // Let requests already admitted finish (bounded: they time out).
    await this.waitFor(() => this.session.size === 0 && this.reads.pending === 0, limits.requestTimeoutMs, 'in-flight requests').catch(() => undefined);
    this.stopped = true;
    clearInterval(this.tickTimer);
    this.space.stop();
    await this.advanceChain.catch(() => undefined);
    await this.applyChain.catch(() => undefined);
    if (!this.fatalError) {
      await this.checkpointing;
      await this.maybeCheckpoint(true)?.catch(() => undefined);
    }
    this.session.failAll('ESHUTDOWN', 'node stopped');
    this.reads.failAll('ESHUTDOWN', 'node stopped');
    await this.receiver.close();
    await this.transport.close();
    await this.wal.close().catch(() => undefined);
    await this.store.closeFiles();
    this.lock.release();
  }
}

/** Does this entry payload write data (and so take space in a device file)? */
function allocates(data: Buffer): boolean {
  return data.length > 1 && data[0] === COMMAND_VERSION && (data[1] === CommandOp.Write || data[1] === CommandOp.WriteZeroes);
}

/** An election for one log line: {term, cause: 'timeout', preVote: 'won: granted node1,node2; rejected node3', vote: …}. */
function describeElection(e: ElectionRecord): Record<string, unknown> {
  const tally = (v: VoteTally | undefined) =>
    v && `${v.outcome}: granted ${v.granted.join(',') || 'none'}${v.rejected.length > 0 ? `; rejected ${v.rejected.join(',')}` : ''}`;
  return { term: e.term, cause: e.cause, ...(e.preVote ? { preVote: tally(e.preVote) } : {}), ...(e.vote ? { vote: tally(e.vote) } : {}) };
}

function safeTerm(wal: Wal, index: number): number | undefined {
  try {
    return wal.term(index);
  } catch {
    return undefined;
  }
}
