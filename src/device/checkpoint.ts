// The checkpoint: what the device files hold, as of which log index.
//
//   <data-dir>/checkpoint  := "XDCK" | u32 version | u32 crc32c(body) | u32 length | body (JSON)
//   <data-dir>/node.id     := JSON {clusterId, nodeId}, written once
//
// A checkpoint is written only after the device files were fdatasync'd: it
// promises that everything up to appliedIndex is on disk, so the WAL may drop
// entries up to it. It is replaced atomically (write a temporary file, fsync,
// rename, fsync the directory): after a crash either the old or the new one
// is there, whole. The same state travels as the header of a snapshot stream.

import { join } from 'node:path';
import type { DiskIo } from '../disk/disk-io.ts';
import { nativeDisk } from '../disk/native-disk.ts';
import { XDeviceError } from '../errors.ts';
import { crc32c } from '../native.ts';
import { type PublishedMember, validPublished } from './member-table.ts';
import type { DedupClientState } from './request-dedup.ts';
import type { VerifyRecord } from './verify.ts';
import { type DeviceEncryption, wellFormedEncryption } from './encryption.ts';
import { type SnapshotRecord, wellFormedSnapshot } from './snapshot-record.ts';

export const CHECKPOINT_FILE = 'checkpoint';
export const NODE_ID_FILE = 'node.id';
const MAGIC = 'XDCK';
const VERSION = 1;
const HEADER_BYTES = 16;

export interface DeviceRecord {
  /** Log index of the CREATE_DEVICE entry: unique for the cluster's lifetime. */
  id: number;
  name: string;
  size: number;
  /** Writes refused with EPERM (NBD READ_ONLY). Set only when true; absent in older checkpoints. */
  readOnly?: true;
  /** Encrypted devices: wrapped data keys, key generation, rekey progress (src/device/encryption.ts). Absent: plaintext. */
  encryption?: DeviceEncryption;
}

/** The replicated state besides the device files' bytes. */
export interface StoreState {
  clusterId: string;
  /** Every entry up to here is reflected in the device files. */
  appliedIndex: number;
  appliedTerm: number;
  devices: DeviceRecord[];
  /** Peer addresses of members, learned from the bootstrap configuration and membership changes. */
  members: Record<string, string>;
  /** Nodes removed from the cluster (told so if they call). Absent in older checkpoints. */
  removed?: string[];
  dedup: DedupClientState[];
  /** What members published about themselves (client addresses, version), by id. Absent in older checkpoints. */
  published?: Record<string, PublishedMember>;
  /** The latest verifies and their per-node results (src/device/verify.ts). Absent in older checkpoints. */
  verifies?: VerifyRecord[];
  /**
   * The cluster audit trail's head (last record's seq and hash, its log index)
   * as of appliedIndex: a node installing this state as a snapshot continues
   * its trail from here (src/audit/record.ts, TrailAnchor). Absent in older
   * checkpoints and from stores without a trail.
   */
  audit?: { seq: number; hash: string; index: number };
  /** Point-in-time snapshots of the devices (src/device/snapshots.ts): records only, not the preserved blocks. Absent in older checkpoints. */
  snapshots?: SnapshotRecord[];
  /** Snapshots with ids up to here are lost on this node (it installed a Raft snapshot), unless that install brought them whole. Absent: 0. */
  snapshotsLostUpTo?: number;
  /**
   * In a Raft snapshot stream's header only, never in a checkpoint: the
   * sender ships the snapshots' preserved blocks after the device files if
   * the receiver asks (src/device/snapshot-transfer.ts). An older receiver ignores it.
   */
  snapshotBlocksOffered?: true;
  /**
   * In a Raft snapshot stream's header only: the sender compresses chunks
   * with LZ4 if the receiver answers that it decodes them. An older receiver
   * ignores it and gets plain chunks.
   */
  snapshotChunksLz4Offered?: true;
}

export class CheckpointError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_CHECKPOINT', message);
  }
}

export function encodeStoreState(state: StoreState): Buffer {
  const body = Buffer.from(JSON.stringify(state));
  const header = Buffer.alloc(HEADER_BYTES);
  header.write(MAGIC, 0, 'latin1');
  header.writeUInt32LE(VERSION, 4);
  header.writeUInt32LE(crc32c(body), 8);
  header.writeUInt32LE(body.length, 12);
  return Buffer.concat([header, body]);
}

export function decodeStoreState(buf: Buffer, what = 'checkpoint'): StoreState {
  if (buf.length < HEADER_BYTES || buf.toString('latin1', 0, 4) !== MAGIC) throw new CheckpointError(`${what}: bad magic`);
  const version = buf.readUInt32LE(4);
  if (version !== VERSION) throw new CheckpointError(`${what}: unknown version ${version}`);
  const length = buf.readUInt32LE(12);
  if (buf.length !== HEADER_BYTES + length) throw new CheckpointError(`${what}: length ${buf.length - HEADER_BYTES}, header says ${length}`);
  const body = buf.subarray(HEADER_BYTES);
  if (crc32c(body) !== buf.readUInt32LE(8)) throw new CheckpointError(`${what}: checksum mismatch`);
  let state: StoreState;
  try {
    state = JSON.parse(body.toString('utf8')) as StoreState;
  } catch (err) {
    throw new CheckpointError(`${what}: ${(err as Error).message}`);
  }
  const ok =
    typeof state.clusterId === 'string' &&
    Number.isSafeInteger(state.appliedIndex) &&
    Number.isSafeInteger(state.appliedTerm) &&
    Array.isArray(state.devices) &&
    state.devices.every(
      (d) =>
        Number.isSafeInteger(d.id) &&
        typeof d.name === 'string' &&
        Number.isSafeInteger(d.size) &&
        d.size >= 0 &&
        (d.readOnly === undefined || d.readOnly === true) &&
        wellFormedEncryption(d.encryption),
    ) &&
    (state.snapshots === undefined || (Array.isArray(state.snapshots) && state.snapshots.every(wellFormedSnapshot))) &&
    (state.snapshotsLostUpTo === undefined || (Number.isSafeInteger(state.snapshotsLostUpTo) && state.snapshotsLostUpTo >= 0)) &&
    (state.snapshotBlocksOffered === undefined || state.snapshotBlocksOffered === true) &&
    (state.snapshotChunksLz4Offered === undefined || state.snapshotChunksLz4Offered === true) &&
    (state.verifies === undefined || (Array.isArray(state.verifies) && state.verifies.every(wellFormedVerify))) &&
    (state.audit === undefined ||
      (typeof state.audit === 'object' &&
        state.audit !== null &&
        Number.isSafeInteger(state.audit.seq) &&
        state.audit.seq >= 0 &&
        Number.isSafeInteger(state.audit.index) &&
        state.audit.index >= 0 &&
        typeof state.audit.hash === 'string' &&
        /^[0-9a-f]{64}$/.test(state.audit.hash))) &&
    typeof state.members === 'object' &&
    state.members !== null &&
    Array.isArray(state.dedup) &&
    validPublished(state.published);
  if (!ok) throw new CheckpointError(`${what}: malformed state`);
  return state;
}

function wellFormedVerify(v: VerifyRecord): boolean {
  return (
    typeof v === 'object' &&
    v !== null &&
    Number.isSafeInteger(v.id) &&
    typeof v.device === 'string' &&
    Number.isSafeInteger(v.deviceId) &&
    Number.isSafeInteger(v.size) &&
    Number.isSafeInteger(v.rangeBytes) &&
    v.rangeBytes > 0 &&
    Number.isSafeInteger(v.clientId) &&
    Number.isSafeInteger(v.seq) &&
    typeof v.results === 'object' &&
    v.results !== null &&
    Object.values(v.results).every((r) => typeof r === 'object' && r !== null && (typeof (r as { digests?: unknown }).digests === 'string' || typeof (r as { why?: unknown }).why === 'string'))
  );
}

export function syncDir(dir: string, disk: DiskIo = nativeDisk): Promise<void> {
  return disk.syncDir(dir);
}

/** Writes `name` in `dir` atomically and durably. */
export async function writeFileAtomic(dir: string, name: string, data: Buffer, disk: DiskIo = nativeDisk): Promise<void> {
  const tmp = join(dir, `${name}.tmp`);
  await disk.writeFile(tmp, data, { sync: true, mode: 0o644 });
  await disk.rename(tmp, join(dir, name));
  await disk.syncDir(dir);
}

export async function writeCheckpoint(dataDir: string, state: StoreState, disk: DiskIo = nativeDisk): Promise<void> {
  await writeFileAtomic(dataDir, CHECKPOINT_FILE, encodeStoreState(state), disk);
}

/** The checkpoint, or undefined on a fresh data directory. A damaged one throws: the node must not guess. */
export async function readCheckpoint(dataDir: string, disk: DiskIo = nativeDisk): Promise<StoreState | undefined> {
  let buf: Buffer;
  try {
    buf = await disk.readFile(join(dataDir, CHECKPOINT_FILE));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  await disk.unlink(join(dataDir, `${CHECKPOINT_FILE}.tmp`)).catch(() => undefined);
  return decodeStoreState(buf, join(dataDir, CHECKPOINT_FILE));
}

export interface NodeIdentity {
  clusterId: string;
  nodeId: string;
}

export async function readNodeIdentity(dataDir: string, disk: DiskIo = nativeDisk): Promise<NodeIdentity | undefined> {
  let text: string;
  try {
    text = (await disk.readFile(join(dataDir, NODE_ID_FILE))).toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const v = JSON.parse(text) as NodeIdentity;
  if (typeof v.clusterId !== 'string' || typeof v.nodeId !== 'string' || v.nodeId === '') throw new CheckpointError(`${NODE_ID_FILE}: malformed`);
  return v;
}

export async function writeNodeIdentity(dataDir: string, identity: NodeIdentity, disk: DiskIo = nativeDisk): Promise<void> {
  await writeFileAtomic(dataDir, NODE_ID_FILE, Buffer.from(JSON.stringify(identity) + '\n'), disk);
}
