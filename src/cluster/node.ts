// The replicated runtime of one node: opens the data directory (lock,
// interrupted installs, the WAL, the block store, bootstrap or join), builds
// the real environment (timers, the peer transport, statfs, snapshot files)
// and runs the replica core (src/replica/) in it. Everything the replica does
// is in src/replica/; this file owns only what touches the machine.

import type { Logger } from 'pino';
import type { NodeApi } from '../admin/api.ts';
import { limits } from '../limits.ts';
import { XDeviceError } from '../errors.ts';
import type { Wal, WalOptions } from '../wal/wal.ts';
import type { BlockStore } from '../device/block-store.ts';
import { Replica, type ReplicaOptions } from '../replica/replica.ts';
import type { ReplicatedDeviceTable } from '../replica/device.ts';
import { openReplicaState } from '../replica/open.ts';
import { ReplicaView } from '../replica/view.ts';
import type { Tuning } from '../replica/housekeeping.ts';
import { checkDeviceFiles, checkStartState, lockDataDir, type DataDirLock } from './data-dir.ts';
import { SpaceMonitor } from './space.ts';
import { peerTransport, realClock, realHost, snapshotFrameOf } from './real-env.ts';
import { Transport } from './transport.ts';
import type { PeerAuth } from './peer-auth.ts';
import { randomInt } from 'node:crypto';
import { join } from 'node:path';
import { WAL_DIR } from '../replica/open.ts';
import { allocatedBytes } from '../disk/usage.ts';
import { MemberPublisher } from '../replica/publish.ts';
import { VERSION } from '../version.ts';
import type { CompressionMode } from '../device/compression.ts';
import { openTrails, type AuditTrail } from '../audit/trail.ts';
import type { KeyRing } from '../crypt/keyring.ts';

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
  tuning?: Partial<Tuning>;
  /** This node's encryption keys; `encryptDevices`: create `devices` encrypted. */
  keys?: KeyRing;
  encryptDevices?: boolean;
  /** Lease reads on this node (see ReplicaOptions.leaseReads). */
  leaseReads?: boolean;
  /** Write compression on this node (see ReplicaOptions.compression). */
  compression?: CompressionMode;
}

export class NodeError extends XDeviceError {}

/**
 * Checkpoint and retention overrides from the environment
 * (XDEVICE_CHECKPOINT_ENTRIES, XDEVICE_CHECKPOINT_BYTES,
 * XDEVICE_WAL_RETAIN_ENTRIES, XDEVICE_WAL_RETAIN_BYTES): process-level tests
 * use them to make a joining node need a snapshot after a few writes, and the
 * compaction soak (scripts/soak-compaction.ts) to checkpoint often.
 */
export function tuningFromEnv(env: NodeJS.ProcessEnv = process.env): NodeConfig['tuning'] {
  const tuning: { -readonly [K in keyof Tuning]?: number } = {};
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
  const bytes = num('XDEVICE_CHECKPOINT_BYTES');
  const retainBytes = num('XDEVICE_WAL_RETAIN_BYTES');
  if (bytes !== undefined) tuning.checkpointBytes = Math.max(1, bytes);
  if (retainBytes !== undefined) tuning.walRetainBytesMax = retainBytes;
  return tuning;
}

export class ClusterNode {
  readonly replica: Replica;
  readonly devices: ReplicatedDeviceTable;
  /** The admin API's view of this node (src/admin). */
  readonly api: NodeApi;
  peerAddress = '';
  private addresses = { nbd: '', admin: '' };
  /** Publishes this member's client addresses through Raft once it serves (setAddresses). */
  private readonly publisher: MemberPublisher;
  /** The connection a stranger's message arrived on, while it is being handled (to tell it that it was removed). */
  private replyingTo: { peer: string; reply: (frame: Buffer) => void } | undefined;

  private constructor(
    private readonly config: NodeConfig,
    wal: Wal,
    readonly store: BlockStore,
    readonly transport: Transport,
    private readonly space: SpaceMonitor,
    private readonly lock: DataDirLock,
    /** The audit trails in the data directory; apply writes the cluster one. */
    readonly audit: { cluster: AuditTrail; node: AuditTrail },
  ) {
    store.auditTrail = audit.cluster;
    const options: ReplicaOptions = {
      nodeId: config.nodeId,
      devices: config.devices,
      ...(config.tuning ? { tuning: config.tuning } : {}),
      ...(config.keys ? { keys: config.keys } : {}),
      ...(config.encryptDevices ? { encryptDevices: true } : {}),
      ...(config.leaseReads ? { leaseReads: true } : {}),
      ...(config.compression ? { compression: config.compression } : {}),
    };
    const env = {
      clock: realClock,
      transport: peerTransport(transport, (peer) => (this.replyingTo?.peer === peer ? this.replyingTo.reply : undefined)),
      log: wal,
      store,
      host: realHost(config.dataDir, config.nodeId, space),
      rand: (n: number) => randomInt(n),
      logger: config.logger,
    };
    const r = (this.replica = new Replica(env, options));
    this.devices = r.devices;
    const view = new ReplicaView(r, {
      addresses: () => ({ ...this.addresses, peer: this.peerAddress }),
      version: VERSION,
      walBytes: () => allocatedBytes(join(config.dataDir, WAL_DIR)),
    });
    this.publisher = new MemberPublisher(r);
    const m = r.membership;
    this.api = {
      status: () => view.status(),
      diskUsage: () => view.diskUsage(),
      health: () => view.health(),
      members: () => view.members(),
      devices: () => view.devicesInfo(),
      addNode: (id, address, options) => m.addNode(id, address, options),
      promoteNode: (id) => m.promoteNode(id),
      removeNode: (id) => m.removeNode(id),
      transferLeader: (to) => m.transferLeader(to),
      createDevice: (name, size, options) => m.createDevice(name, size, options),
      setDeviceReadOnly: (name, readOnly) => m.setDeviceReadOnly(name, readOnly),
      verifyDevice: (name) => m.verifyDevice(name),
      verifyReport: (id) => m.verifyReport(id),
      verifyReports: () => m.verifyReports(),
      rotateKey: () => r.keyOps.rotate(),
      rekeyDevice: (name) => r.keyOps.rekey(name),
      deleteDevice: (name) => m.deleteDevice(name),
      createSnapshot: (device, name) => r.snapshotOps.create(device, name),
      deleteSnapshot: (device, name) => r.snapshotOps.delete(device, name),
      snapshots: (device) => r.snapshotOps.list(device),
      resizeDevice: (name, size, options) => m.resizeDevice(name, size, options),
      space: () => space.report(),
      pendingProposals: () => r.session.size,
      compression: () => r.compressionStats,
      on: (event, listener) => r.on(event, listener as (...args: unknown[]) => void),
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
    const initialPeers = { ...config.peers };
    if (config.peerListen && !initialPeers[nodeId]) initialPeers[nodeId] = `${config.peerListen.host}:${config.peerListen.port}`;
    const { wal, store, founded } = await openReplicaState({
      dataDir,
      nodeId,
      peers: initialPeers,
      join: config.join ?? false,
      logger,
      ...(config.wal ? { wal: config.wal } : {}),
      checkStart: checkStartState,
      checkFiles: checkDeviceFiles,
    });
    let audit: { cluster: AuditTrail; node: AuditTrail } | undefined;
    try {
      audit = await openTrails(dataDir, logger.child({ component: 'audit' }));
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
      const space = new SpaceMonitor(dataDir, config.spaceReserveBytes ?? limits.spaceReserveBytes);
      const node = new ClusterNode(config, wal, store, transport, space, lock, audit);
      await node.run(founded);
      return node;
    } catch (err) {
      await wal.close().catch(() => undefined);
      await audit?.cluster.close().catch(() => undefined);
      await audit?.node.close().catch(() => undefined);
      throw err;
    }
  }

  private async run(founded: boolean): Promise<void> {
    const t = this.transport;
    const r = this.replica;
    t.on('message', (m, reply) => {
      this.replyingTo = { peer: m.from, reply };
      try {
        r.onPeerMessage(m);
      } finally {
        this.replyingTo = undefined;
      }
    });
    t.on('removed', (by) => r.onRemovedBy(by));
    t.on('frame', (from, f) => {
      const sf = snapshotFrameOf(f);
      if (sf) r.onFrame(from, sf);
    });
    t.on('unreachable', (peer) => r.onUnreachable(peer));
    t.on('peerRtt', ({ peer, ms }) => r.emit('peerRtt', { peer, seconds: ms / 1000 }));
    t.on('disconnected', (peer) => r.onLink(peer, false));
    t.on('connected', (peer) => r.onLink(peer, true));
    await this.space.start();
    const bound = await t.listen();
    if (bound && this.config.peerListen?.port === 0) this.config.logger.info({ peerListen: bound }, 'peer transport listening');
    t.connectAll();
    this.peerAddress = bound ? `${bound.host}:${bound.port}` : '';
    r.onFatal(() => this.space.stop());
    await r.start(founded);
  }

  /** Resolves once the configured devices exist (a standalone node right after start). */
  waitForDevices(timeoutMs?: number): Promise<void> {
    return this.replica.waitForDevices(timeoutMs);
  }

  get peerMessagesDropped(): number {
    return this.replica.peerMessagesDropped;
  }

  /** Where this node now serves clients: shown by status, and published to every member through Raft. */
  setAddresses(addresses: { nbd: string; admin: string }): void {
    this.addresses = addresses;
    this.publisher.publish({ adminAddress: addresses.admin, nbdAddress: addresses.nbd, version: VERSION });
  }

  onFatal(listener: (err: Error) => void): void {
    this.replica.onFatal(listener);
  }

  onRemoved(listener: (why: string) => void): void {
    this.replica.onRemoved(listener);
  }

  /** Finishes in-flight work, checkpoints, closes everything. */
  async stop(): Promise<void> {
    if (this.replica.stopped) return;
    await this.replica.stop();
    this.space.stop();
    await this.audit.cluster.close();
    await this.audit.node.close();
    this.lock.release();
  }
}
