// What the admin API (and through it xdevice-cli) can see and do on a node.
// The replicated runtime (src/cluster) and the single-node file/memory
// backends both implement it; the HTTP layer never reaches past it.

import type { VerifyMismatch, VerifyReport } from '../device/verify.ts';
import type { CompressionStats } from '../device/compression.ts';

export type Role = 'leader' | 'follower' | 'candidate' | 'pre-candidate' | 'learner' | 'standalone';

export interface PeerStatus {
  id: string;
  address: string;
  /** Highest log index known replicated on the peer (leader's view). */
  match: number;
  next: number;
  /** probe | replicate | snapshot (Raft progress state), or unknown on followers. */
  state: string;
  /** commit - match: how far the peer trails. */
  lagEntries: number;
  voter: boolean;
  connected: boolean;
  /** Raft messages to this peer dropped since start: not sent (no link, full queue) or lost with a closed link. */
  messagesDropped?: number;
  /** Bytes sent to this peer since start (Raft messages and snapshot streams, as written to the link). */
  bytesSent?: number;
  /** Last measured peer round trip, milliseconds (undefined if unknown). */
  rttMs?: number;
}

export interface NodeStatus {
  id: string;
  role: Role;
  term: number;
  leader: string;
  commit: number;
  applied: number;
  /** First and last index held in the WAL. */
  logFirstIndex?: number;
  logLastIndex?: number;
  /** Applied index of the last checkpoint (device files synced, index recorded): the WAL may be compacted up to it. */
  checkpointIndex?: number;
  /** Checkpoints written and WAL compactions done since this process started. */
  checkpoints?: number;
  compactions?: number;
  backend: 'replicated' | 'file' | 'memory';
  peers: PeerStatus[];
  /** Addresses for clients, so tools can find the leader's admin API and NBD server. */
  nbdAddress: string;
  adminAddress: string;
  /** Bytes of a snapshot being sent or received, for progress bars. */
  snapshot?: { direction: 'sending' | 'receiving'; peer: string; bytesDone: number; bytesTotal: number };
  uptimeSeconds: number;
  /** The version of the running program. */
  version: string;
  /** Bytes the WAL's segment files occupy on disk (GET /status; DiskUsage). */
  walBytes?: number;
  /** Bytes allocated in this node's device files. */
  dataBytes?: number;
  /** Free bytes on the data filesystem. */
  freeBytes?: number;
  totalBytes?: number;
}

/** The part of a node's status that reads the disk (GET /status merges it into NodeStatus). */
export interface DiskUsage {
  /** Absent where there is no WAL (the file and memory backends). */
  walBytes?: number;
  dataBytes: number;
  freeBytes?: number;
  totalBytes?: number;
}

export interface Member {
  id: string;
  /** Peer (Raft) address. */
  address: string;
  voter: boolean;
  learner: boolean;
  /** Admin and NBD addresses, as the member published them through Raft (PUBLISH_MEMBER). */
  adminAddress?: string;
  nbdAddress?: string;
  /** The version it runs and when it started (epoch ms), as it published them. */
  version?: string;
  startedAt?: number;
}

export interface DeviceInfo {
  name: string;
  size: number;
  /** Bytes allocated in this node's data file. */
  usedBytes: number;
  readOnly: boolean;
  /** Bytes this node holds for the device's snapshots (preserved blocks), and how many it has. */
  snapshotBytes?: number;
  snapshots?: number;
  /** Encrypted devices: key generation, KEK id, rekey progress, and whether this node can serve it (never a key). */
  encryption?: DeviceEncryptionInfo;
}

export interface DeviceEncryptionInfo {
  generation: number;
  kekId: string;
  /** A rekey in progress: bytes under the new key so far. */
  rekey?: { generation: number; doneBytes: number };
  /** Why this node cannot serve the export, if it cannot. */
  unavailable?: string;
}

export interface HealthCheck {
  name: string;
  ok: boolean;
  detail: string;
}

export interface SpaceInfo {
  /** Free bytes on the data directory's filesystem (as last measured, minus writes admitted since). */
  freeBytes: number;
  totalBytes: number;
  /** Below this, writes get ENOSPC before they are proposed. */
  reserveBytes: number;
}

export interface HealthReport {
  healthy: boolean;
  checks: HealthCheck[];
  space?: SpaceInfo;
}

export interface AddNodeOptions {
  /** Promote to voter once caught up (default true); false leaves a learner for `members promote`. */
  promote?: boolean;
  /** Wait until it votes (default true). */
  wait?: boolean;
}

export interface CreateDeviceOptions {
  /** Writes refused with EPERM; NBD clients see READ_ONLY. */
  readOnly?: boolean;
  /** Encrypted at rest (AES-256-XTS) with a new data key wrapped by the node's newest key-encryption key. */
  encrypt?: boolean;
}

export type { VerifyMismatch, VerifyReport };

export interface ResizeOptions {
  /** Shrinking discards the tail of the device: refused unless asked for. */
  allowShrink?: boolean;
}

/** Metric hooks a node emits; src/admin/metrics.ts turns them into Prometheus series. */
export interface NodeEvents {
  /** A WAL save as Raft waits for it: queueing, encoding, write and sync. */
  walSync: { durationSeconds: number; bytes: number };
  /** The call that made one WAL batch durable (fdatasync, or the O_DSYNC write). */
  walFsync: { durationSeconds: number; bytes: number };
  /** Committed entries applied to the block store. */
  apply: { durationSeconds: number; entries: number };
  leaderChange: { leader: string; term: number };
  proposal: { outcome: 'committed' | 'failed' };
  peerRtt: { peer: string; seconds: number };
  /** Something an operator cares about (leader changes, lost peers, membership): the status page's recent events. */
  notice: { level: 'info' | 'warn' | 'error'; msg: string; fields: Record<string, unknown> };
}

export interface NodeApi {
  /** Cheap and synchronous (metrics read it): no disk figures. */
  status(): NodeStatus;
  /** WAL and data bytes, free space: what status() leaves out. */
  diskUsage(): Promise<DiskUsage>;
  health(): Promise<HealthReport>;
  members(): Member[];
  devices(): Promise<DeviceInfo[]>;
  addNode(id: string, address: string, options?: AddNodeOptions): Promise<void>;
  /** Makes a learner a voter, if it has caught up (see src/cluster/promotion.ts). */
  promoteNode(id: string): Promise<void>;
  removeNode(id: string): Promise<void>;
  transferLeader(to: string): Promise<void>;
  createDevice(name: string, size: number, options?: CreateDeviceOptions): Promise<void>;
  /** Replicated backend only (absent: the admin API answers 501). */
  setDeviceReadOnly?(name: string, readOnly: boolean): Promise<void>;
  /** Starts a verify of a device's replicas; resolves with its id. */
  verifyDevice?(name: string): Promise<number>;
  verifyReport?(id: number): VerifyReport;
  verifyReports?(): VerifyReport[];
  /** Rewraps every encrypted device's data key with the newest key-encryption key (leader; replicated backend only). */
  rotateKey?(): Promise<{ kekId: string; devices: string[] }>;
  /** Starts replacing a device's data key (re-encrypted in the background); progress in devices(). */
  rekeyDevice?(name: string): Promise<{ device: string; generation: number; watermark: number; size: number }>;
  deleteDevice(name: string): Promise<void>;
  /** Point-in-time snapshots (replicated backend only; absent: 501). */
  createSnapshot?(device: string, name: string): Promise<SnapshotInfo>;
  deleteSnapshot?(device: string, name: string): Promise<void>;
  snapshots?(device: string): Promise<SnapshotInfo[]>;
  resizeDevice(name: string, size: number, options?: ResizeOptions): Promise<void>;
  /** Free space of the data filesystem, where the backend has one. */
  space(): SpaceInfo | undefined;
  /** Proposals accepted but not yet applied here. */
  pendingProposals(): number;
  /** What write compression did to the writes this node proposed (replicated backend only). */
  compression?(): Readonly<CompressionStats>;
  on<K extends keyof NodeEvents>(event: K, listener: (e: NodeEvents[K]) => void): unknown;
}

/** One device snapshot as the admin API reports it (src/replica/snapshot-ops.ts builds it). */
export interface SnapshotInfo {
  device: string;
  name: string;
  /** Log index of the SNAPSHOT_CREATE: the point in the log the snapshot shows. */
  index: number;
  createdAt: string;
  size: number;
  /** Bytes of preserved blocks this node holds for it. */
  heldBytes: number;
  /** The NBD export serving it. */
  export: string;
  /** Why this node cannot serve it, if it cannot. */
  unavailable?: string;
}
