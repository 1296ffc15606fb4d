// The replica core's only door to the world. Everything under src/replica/
// is deterministic given what comes through here: it owns no timer, socket,
// file or clock. The production runtime (src/cluster/node.ts) supplies real
// ones; the simulator (test/sim/) supplies simulated ones, so what the
// simulator runs is what production runs.
//
//   clock       now, after(ms), defer (the "next turn" the Ready loop uses)
//   transport   Raft messages and snapshot frames out; what comes in is
//               handed to Replica's on* methods by whoever owns the sockets
//   log         the WAL (src/wal/wal.ts implements LogStorage)
//   store       the state machine: the block store over device files
//   host        what the data filesystem says (free space, file size limits)
//               and the snapshot files (staging, install, reading for a send)
//
// Inbound events are method calls on the replica (onPeerMessage, onFrame,
// onUnreachable, onRemovedBy, onLink), never callbacks registered here, so
// this file stays a list of what the core asks of the world.

import type { Logger } from 'pino';
import type { Storage } from '../raft/storage.ts';
import type { BlockStore } from '../device/block-store.ts';
import type { Entry, HardState, Message, NodeId, SnapshotMetadata } from '../raft/types.ts';
import type { StoreState } from '../device/checkpoint.ts';
import type { StagedSnapshot } from '../device/snapshot-staging.ts';
import type { SnapshotBlocks } from '../device/snapshot-transfer.ts';
import type { SnapshotRecord } from '../device/snapshots.ts';

export type Cancel = () => void;

export interface Clock {
  /** Milliseconds; only differences mean anything. */
  now(): number;
  /** Runs fn once after ms. */
  after(ms: number, fn: () => void): Cancel;
  /** Runs fn on a later turn, after the current event and its promise reactions. */
  defer(fn: () => void): void;
}

/** Snapshot stream frames, as the core speaks them (the transport encodes them on the wire; the protocol: src/device/snapshot-transfer.ts). */
export type SnapshotFrame =
  | { kind: 'begin'; snapshotId: number; metadata: SnapshotMetadata; state: Buffer }
  /** `lz4`: data is one size-prefixed LZ4 block of the chunk (at most snapshotChunkBytes once decompressed), sent only after the receiver asked. */
  | { kind: 'chunk'; snapshotId: number; file: number; offset: number; data: Buffer; zeroBytes: number; lz4?: true }
  /** Blocks of one device snapshot's map with their bytes (empty: zeroes); each Buffer the sender's own, not reused. */
  | { kind: 'blocks'; snapshotId: number; snapshot: SnapshotRecord; blocks: number[]; data: Buffer[] }
  | { kind: 'end'; snapshotId: number; chunks: number; appliedEnd: number }
  /**
   * `more`: ok so far, the device files are staged; send the snapshots' blocks (only to a begin that offered them).
   * `lz4`: not an outcome; the receiver decodes LZ4 chunks (only to a begin that offered them).
   */
  | { kind: 'result'; snapshotId: number; ok: boolean; reason: string; more?: true; lz4?: true };

export interface LinkStatus {
  id: NodeId;
  address: string;
  connected: boolean;
  rttMs?: number;
  droppedMessages: number;
  /** Bytes written to the peer's connections since start (frames as sealed; absent where not measured). */
  sentBytes?: number;
}

export interface PeerTransport {
  /** The cluster id links are bound to ('' until a joiner learns it). */
  clusterId: string;
  /** Best effort: may be dropped, delayed, reordered. */
  send(m: Message): void;
  /** A snapshot frame on the peer's link; false if the link is down. */
  sendFrame(peer: NodeId, frame: SnapshotFrame): boolean;
  /** Resolves when the peer's link has room again (rejects if it went down). */
  waitDrain(peer: NodeId): Promise<void>;
  /**
   * The live connection to the peer: a new value after every reconnect,
   * undefined while it is down. A snapshot stream lives and dies with one.
   */
  connection(peer: NodeId): number | undefined;
  /** Tells a peer outside the configuration that it was removed. */
  tellRemoved(peer: NodeId): void;
  addPeer(id: NodeId, address: string): void;
  removePeer(id: NodeId): void;
  peerAddress(id: NodeId): string | undefined;
  status(): LinkStatus[];
  connectAll(): void;
  close(): Promise<void>;
}

/** The WAL as the core uses it: Raft's Storage plus durable saves, compaction, snapshot resets. */
export interface LogStorage extends Storage {
  save(batch: { hardState?: HardState; entries?: Entry[] }): Promise<void>;
  compact(meta: SnapshotMetadata): Promise<void>;
  applySnapshot(meta: SnapshotMetadata): Promise<void>;
  snapshotMetadata(): SnapshotMetadata;
  hardState(): HardState;
  payloadBytesBetween(from: number, to: number): number;
  close(): Promise<void>;
  onBatchDurable?: ((e: { syncSeconds: number; bytes: number }) => void) | undefined;
}

export interface SpaceReport {
  /** Free bytes a writer may use, as last measured minus writes admitted since. */
  freeBytes: number;
  totalBytes: number;
  reserveBytes: number;
}

/** A device file opened to be streamed to a peer. */
export interface SnapshotFile {
  /** Ranges that may hold data (holes need not be read). */
  dataRanges(size: number): { offset: number; end: number }[];
  read(buf: Buffer, offset: number): Promise<number>;
  close(): Promise<void>;
}

export interface Host {
  /** Free space on the data filesystem (src/cluster/space.ts in production). */
  space: {
    wouldBreachReserve(bytes: number): boolean;
    admit(bytes: number): void;
    report(): SpaceReport;
  };
  /** Throws a reason if the data filesystem cannot hold a device file of this size. */
  probeFileSize(size: number): Promise<void>;
  /**
   * A snapshot chunk as a size-prefixed LZ4 block, off the event loop
   * (libuv's pool in production). Absent: compressed inline, which the
   * simulator wants (a thread's timing is not simulated).
   */
  compressChunk?(data: Buffer): Promise<Buffer>;
  /** Snapshot files: staging a received stream, installing it, reading files to send. */
  snapshots: {
    beginStaging(snapshotId: number, from: NodeId, metadata: SnapshotMetadata, state: StoreState): Promise<StagingHandle>;
    /** Marks the staging as taken by Raft and moves its files into place (crash-safe: src/device/snapshot-staging.ts); finishInstall() once the WAL was reset. */
    installFiles(metadata: SnapshotMetadata): Promise<void>;
    finishInstall(): Promise<void>;
    /** A joiner learned its cluster id from a snapshot: recorded in the node identity. */
    recordClusterId(clusterId: string): Promise<void>;
    openForSend(path: string): Promise<SnapshotFile | undefined>;
  };
}

export interface StagingHandle {
  readonly snapshotId: number;
  readonly from: NodeId;
  readonly bytes: number;
  /** 'snapshots' after endDevices(): blocks frames, then finish(). */
  readonly phase: 'devices' | 'snapshots';
  chunk(file: number, offset: number, data: Buffer, zeroBytes: number): void;
  blocks(f: SnapshotBlocks): void;
  /** The stream is broken (a chunk that does not decode): finish() and endDevices() throw this. */
  fail(err: Error): void;
  settled(): Promise<unknown>;
  endDevices(chunks: number, appliedEnd: number): Promise<void>;
  finish(chunks: number, appliedEnd: number): Promise<StagedSnapshot>;
  abort(): Promise<void>;
}

/** Everything a Replica is given. */
export interface ReplicaEnv {
  clock: Clock;
  transport: PeerTransport;
  log: LogStorage;
  store: BlockStore;
  host: Host;
  /** Uniform integer in [0, n). */
  rand(n: number): number;
  logger: Logger;
}
