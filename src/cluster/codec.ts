// The peer protocol: length-prefixed binary frames on a TCP (or TLS) stream.
//
//   frame := u32le length | u8 kind | body        (length counts kind + body)
//
// Raft messages put every fixed field and entry header first and the entry
// payloads last, so an encoded message is one small header buffer followed by
// the payload Buffers themselves (written with writev, never copied), and a
// decoded message's entry payloads are slices of the received frame.
//
// Decoding is pure: bytes in, typed frames out (pg-protocol's parser is the
// model), bounded by peerFrameBytesMax. (Over 500 lines: every frame kind's
// encoder and decoder side by side, so the wire format reads in one file.)

import type { ConfState, Entry, Message, SnapshotMetadata } from '../raft/types.ts';
import { EntryType, MessageType } from '../raft/types.ts';
import { limits } from '../limits.ts';
import { WireError, WireReader, WireWriter, str8Size } from '../device/wire.ts';
import { peerMessageProblem } from '../replica/peer-input.ts';
import { snapshotNameProblem, type SnapshotRecord } from '../device/snapshot-record.ts';
import { blockLength, LZ4_PREFIX_BYTES } from '../device/lz4.ts';

/** 2: the dialer proves the secret first; frames carry a MAC (src/cluster/peer-crypto.ts). */
export const PROTOCOL_VERSION = 2;
export const NONCE_BYTES = 32;
export const MAC_BYTES = 32;
const FRAME_HEADER_BYTES = 5;

export const enum FrameKind {
  /** Dialer → listener: who I am, whom I want, my nonce, my answer to the challenge. */
  Hello = 1,
  /** Listener → dialer, first on a new connection: a nonce and nothing else. */
  Challenge = 2,
  /** Listener → dialer: the dialer is accepted; the listener's own proof. */
  Welcome = 3,
  Raft = 4,
  SnapBegin = 5,
  SnapChunk = 6,
  SnapEnd = 7,
  SnapResult = 8,
  Ping = 9,
  Pong = 10,
  /** Answer to a node that was removed from the cluster and does not know it yet. */
  Removed = 11,
  /** Preserved blocks of a device snapshot, after the device files (src/device/snapshot-transfer.ts). */
  SnapBlocks = 12,
  /** A SnapChunk whose bytes are one size-prefixed LZ4 block (src/device/lz4.ts); only to a receiver that asked for them. */
  SnapChunkLz4 = 13,
}

export interface HelloFrame {
  kind: FrameKind.Hello;
  version: number;
  clusterId: string;
  from: string;
  to: string;
  nonce: Buffer;
  /** Empty when no cluster secret is configured (TLS-only or insecure links). */
  mac: Buffer;
}
export interface ChallengeFrame {
  kind: FrameKind.Challenge;
  version: number;
  nonce: Buffer;
}
export interface WelcomeFrame {
  kind: FrameKind.Welcome;
  from: string;
  /** Empty when no cluster secret is configured. */
  mac: Buffer;
}
export interface RaftFrame {
  kind: FrameKind.Raft;
  message: Message;
}
export interface SnapBeginFrame {
  kind: FrameKind.SnapBegin;
  snapshotId: number;
  metadata: SnapshotMetadata;
  /** The state machine's own header (device table, applied index, ...), opaque here. */
  state: Buffer;
}
export interface SnapChunkFrame {
  kind: FrameKind.SnapChunk;
  snapshotId: number;
  file: number;
  offset: number;
  /** Bytes at offset; empty with zeroBytes > 0 for a run of zeroes (sent as a hole). */
  data: Buffer;
  zeroBytes: number;
  /**
   * data is a size-prefixed LZ4 block of the chunk (kind SnapChunkLz4 on the
   * wire; zeroBytes is 0): its prefix is bounded by snapshotChunkBytes here,
   * the receiver decompresses it.
   */
  lz4?: true;
}
export interface SnapBlocksFrame {
  kind: FrameKind.SnapBlocks;
  snapshotId: number;
  /** The device snapshot's record (never lost: a lost one is not shipped). */
  snapshot: SnapshotRecord;
  /** Blocks of its map (each below the snapshot's size in snapshotBlockBytes units, at most snapshotStreamBlocksPerFrameMax). */
  blocks: number[];
  /** Each block's bytes, empty for zeroes (its length is checked against the snapshot's geometry by the staging). */
  data: Buffer[];
}
export interface SnapEndFrame {
  kind: FrameKind.SnapEnd;
  snapshotId: number;
  chunks: number;
  /**
   * The sender's applied index when the copy ended: the copy may mix states
   * up to here, so the receiver serves reads only once it has replayed this far.
   */
  appliedEnd: number;
}
export interface SnapResultFrame {
  kind: FrameKind.SnapResult;
  snapshotId: number;
  ok: boolean;
  reason: string;
  /**
   * The device files are staged, send the snapshots' blocks (ok is true).
   * On the wire the ok byte is 2; only a sender that offered them gets it
   * (an older one would read it as a failure).
   */
  more?: true;
  /**
   * Not an outcome: the receiver decodes LZ4 chunks, send the rest of the
   * stream's chunks compressed where it pays (status 3 on the wire; only to
   * a begin that offered them, src/device/snapshot-transfer.ts).
   */
  lz4?: true;
}
export interface RemovedFrame {
  kind: FrameKind.Removed;
  nodeId: string;
}
export interface PingFrame {
  kind: FrameKind.Ping | FrameKind.Pong;
  /** Sender's clock reading, echoed back in Pong. */
  sentAtNs: number;
}

export type Frame =
  | HelloFrame
  | ChallengeFrame
  | WelcomeFrame
  | RaftFrame
  | SnapBeginFrame
  | SnapChunkFrame
  | SnapBlocksFrame
  | SnapEndFrame
  | SnapResultFrame
  | RemovedFrame
  | PingFrame;

// ---------------------------------------------------------------- encoding

function frameBuffer(kind: FrameKind, bodyBytes: number, trailingBytes = 0): { buf: Buffer; w: WireWriter } {
  const length = 1 + bodyBytes + trailingBytes;
  if (length + 4 > limits.peerFrameBytesMax) throw new WireError(`frame of ${length} bytes exceeds peerFrameBytesMax`);
  const buf = Buffer.allocUnsafe(FRAME_HEADER_BYTES + bodyBytes);
  const w = new WireWriter(buf);
  w.u32(length);
  w.u8(kind);
  return { buf, w };
}

function confStateSize(cs: ConfState): number {
  let n = 1;
  for (const list of [cs.voters, cs.learners, cs.votersOutgoing, cs.learnersNext]) {
    n += 2;
    for (const id of list) n += str8Size(id);
  }
  return n;
}

function writeIdList(w: WireWriter, ids: string[]): void {
  w.buf.writeUInt16LE(ids.length, w.offset);
  w.offset += 2;
  for (const id of ids) w.str8(id);
}

function readIdList(r: WireReader): string[] {
  const n = r.u8() | (r.u8() << 8);
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push(r.str8());
  return ids;
}

function snapshotMetadataSize(m: SnapshotMetadata): number {
  return 16 + confStateSize(m.confState);
}

function writeSnapshotMetadata(w: WireWriter, m: SnapshotMetadata): void {
  w.u64(m.index);
  w.u64(m.term);
  const cs = m.confState;
  writeIdList(w, cs.voters);
  writeIdList(w, cs.learners);
  writeIdList(w, cs.votersOutgoing);
  writeIdList(w, cs.learnersNext);
  w.u8(cs.autoLeave ? 1 : 0);
}

/** A term or index from a peer: above the bound it is a protocol error (the link closes). */
function readTerm(r: WireReader, what: string): number {
  const v = r.u64();
  if (v > limits.raftTermMax) throw new WireError(`${what} ${v} above raftTermMax`);
  return v;
}

function readIndex(r: WireReader, what: string): number {
  const v = r.u64();
  if (v > limits.raftIndexMax) throw new WireError(`${what} ${v} above raftIndexMax`);
  return v;
}

function readSnapshotMetadata(r: WireReader): SnapshotMetadata {
  const index = readIndex(r, 'snapshot index');
  const term = readTerm(r, 'snapshot term');
  const voters = readIdList(r);
  const learners = readIdList(r);
  const votersOutgoing = readIdList(r);
  const learnersNext = readIdList(r);
  const autoLeave = r.u8() === 1;
  return { index, term, confState: { voters, learners, votersOutgoing, learnersNext, autoLeave } };
}

export function encodeConfState(cs: ConfState): Buffer {
  const buf = Buffer.allocUnsafe(confStateSize(cs));
  const w = new WireWriter(buf);
  writeIdList(w, cs.voters);
  writeIdList(w, cs.learners);
  writeIdList(w, cs.votersOutgoing);
  writeIdList(w, cs.learnersNext);
  w.u8(cs.autoLeave ? 1 : 0);
  return buf;
}

export function decodeConfState(buf: Buffer): ConfState {
  const r = new WireReader(buf);
  const cs: ConfState = {
    voters: readIdList(r),
    learners: readIdList(r),
    votersOutgoing: readIdList(r),
    learnersNext: readIdList(r),
    autoLeave: r.u8() === 1,
  };
  r.end();
  return cs;
}

const FLAG_REJECT = 1;
const FLAG_CONTEXT = 2;
const FLAG_SNAPSHOT = 4;
const ENTRY_HEADER_BYTES = 8 + 8 + 1 + 4;

/** Encodes a Raft message as [header, ...entry payloads]: the payloads are not copied. */
export function encodeRaftMessage(m: Message): Buffer[] {
  let size = 2 + str8Size(m.from) + str8Size(m.to) + 5 * 8 + 4 + m.entries.length * ENTRY_HEADER_BYTES;
  let payloadBytes = 0;
  for (const e of m.entries) payloadBytes += e.data.length;
  if (m.context) size += 4 + m.context.length;
  if (m.snapshot) size += snapshotMetadataSize(m.snapshot);
  const { buf, w } = frameBuffer(FrameKind.Raft, size, payloadBytes);
  w.u8(m.type);
  w.u8((m.reject ? FLAG_REJECT : 0) | (m.context ? FLAG_CONTEXT : 0) | (m.snapshot ? FLAG_SNAPSHOT : 0));
  w.str8(m.from);
  w.str8(m.to);
  w.u64(m.term);
  w.u64(m.logTerm);
  w.u64(m.index);
  w.u64(m.commit);
  w.u64(m.rejectHint);
  w.u32(m.entries.length);
  for (const e of m.entries) {
    w.u64(e.term);
    w.u64(e.index);
    w.u8(e.type);
    w.u32(e.data.length);
  }
  if (m.context) w.bytes32(m.context);
  if (m.snapshot) writeSnapshotMetadata(w, m.snapshot);
  const out = [buf];
  for (const e of m.entries) if (e.data.length > 0) out.push(e.data);
  return out;
}

function decodeRaftMessage(r: WireReader): Message {
  const type = r.u8() as MessageType;
  if (type > MessageType.ForgetLeader) throw new WireError(`unknown raft message type ${type}`);
  const flags = r.u8();
  const from = r.str8();
  const to = r.str8();
  const term = r.u64();
  const logTerm = r.u64();
  const index = r.u64();
  const commit = r.u64();
  const rejectHint = r.u64();
  const count = r.u32();
  if (count * ENTRY_HEADER_BYTES > r.remaining) throw new WireError('entry count beyond frame');
  const heads: { term: number; index: number; type: EntryType; length: number }[] = [];
  for (let i = 0; i < count; i++) {
    const eTerm = r.u64();
    const eIndex = r.u64();
    const eType = r.u8();
    if (eType !== EntryType.Normal && eType !== EntryType.ConfChange) throw new WireError(`unknown entry type ${eType}`);
    heads.push({ term: eTerm, index: eIndex, type: eType, length: r.u32() });
  }
  const context = flags & FLAG_CONTEXT ? r.bytes32() : undefined;
  const snapshot = flags & FLAG_SNAPSHOT ? readSnapshotMetadata(r) : undefined;
  const entries: Entry[] = heads.map((h) => ({ term: h.term, index: h.index, type: h.type, data: r.slice(h.length) }));
  r.end();
  const m: Message = { type, from, to, term, logTerm, index, entries, commit, reject: (flags & FLAG_REJECT) !== 0, rejectHint };
  if (context) m.context = context;
  if (snapshot) m.snapshot = snapshot;
  // Bounds and types are checked here, before anything reaches Raft (src/replica/peer-input.ts).
  const problem = peerMessageProblem(m);
  if (problem) throw new WireError(problem);
  return m;
}

export function encodeHello(f: Omit<HelloFrame, 'kind'>): Buffer {
  if (f.nonce.length !== NONCE_BYTES) throw new WireError('bad nonce length');
  const { buf, w } = frameBuffer(FrameKind.Hello, 1 + str8Size(f.clusterId) + str8Size(f.from) + str8Size(f.to) + NONCE_BYTES + 1 + f.mac.length);
  w.u8(f.version);
  w.str8(f.clusterId);
  w.str8(f.from);
  w.str8(f.to);
  w.raw(f.nonce);
  w.u8(f.mac.length);
  w.raw(f.mac);
  return buf;
}

export function encodeChallenge(f: Omit<ChallengeFrame, 'kind'>): Buffer {
  if (f.nonce.length !== NONCE_BYTES) throw new WireError('bad nonce length');
  const { buf, w } = frameBuffer(FrameKind.Challenge, 1 + NONCE_BYTES);
  w.u8(f.version);
  w.raw(f.nonce);
  return buf;
}

export function encodeWelcome(f: Omit<WelcomeFrame, 'kind'>): Buffer {
  const { buf, w } = frameBuffer(FrameKind.Welcome, str8Size(f.from) + 1 + f.mac.length);
  w.str8(f.from);
  w.u8(f.mac.length);
  w.raw(f.mac);
  return buf;
}

export function encodeSnapBegin(f: Omit<SnapBeginFrame, 'kind'>): Buffer[] {
  const { buf, w } = frameBuffer(FrameKind.SnapBegin, 8 + snapshotMetadataSize(f.metadata) + 4, f.state.length);
  w.u64(f.snapshotId);
  writeSnapshotMetadata(w, f.metadata);
  w.u32(f.state.length);
  return [buf, f.state];
}

export function encodeSnapChunk(f: Omit<SnapChunkFrame, 'kind'>): Buffer[] {
  if (f.lz4 && (f.zeroBytes !== 0 || f.data.length < LZ4_PREFIX_BYTES)) throw new WireError('an LZ4 snapshot chunk carries one block and no zeroes');
  const { buf, w } = frameBuffer(f.lz4 ? FrameKind.SnapChunkLz4 : FrameKind.SnapChunk, 8 + 4 + 8 + 8, f.data.length);
  w.u64(f.snapshotId);
  w.u32(f.file);
  w.u64(f.offset);
  w.u64(f.zeroBytes);
  return f.data.length > 0 ? [buf, f.data] : [buf];
}

const SNAP_BLOCK_ENTRY_BYTES = 8 + 4;

/** Encodes a SnapBlocks frame as [header, ...block bytes]: the block buffers are not copied. */
export function encodeSnapBlocks(f: Omit<SnapBlocksFrame, 'kind'>): Buffer[] {
  if (f.blocks.length !== f.data.length) throw new WireError('snapshot blocks and their data differ in number');
  const r = f.snapshot;
  let payloadBytes = 0;
  for (const d of f.data) payloadBytes += d.length;
  const { buf, w } = frameBuffer(FrameKind.SnapBlocks, 8 + 4 * 8 + str8Size(r.name) + 4 + f.blocks.length * SNAP_BLOCK_ENTRY_BYTES, payloadBytes);
  w.u64(f.snapshotId);
  w.u64(r.id);
  w.u64(r.deviceId);
  w.u64(r.createdAt);
  w.u64(r.size);
  w.str8(r.name);
  w.u32(f.blocks.length);
  f.blocks.forEach((b, i) => {
    w.u64(b);
    w.u32(f.data[i]!.length);
  });
  return [buf, ...f.data.filter((d) => d.length > 0)];
}

function decodeSnapBlocks(r: WireReader): Omit<SnapBlocksFrame, 'kind'> {
  const snapshotId = r.u64();
  const id = readIndex(r, 'snapshot id');
  const deviceId = readIndex(r, 'snapshot device id');
  const createdAt = r.u64();
  const size = r.u64();
  if (size > limits.deviceBytesMax) throw new WireError(`snapshot of ${size} bytes beyond deviceBytesMax`);
  const name = r.str8();
  const problem = snapshotNameProblem(name);
  if (problem) throw new WireError(`snapshot blocks: ${problem}`);
  const count = r.u32();
  if (count > limits.snapshotStreamBlocksPerFrameMax) throw new WireError(`${count} snapshot blocks in one frame (at most ${limits.snapshotStreamBlocksPerFrameMax})`);
  if (count * SNAP_BLOCK_ENTRY_BYTES > r.remaining) throw new WireError('snapshot block count beyond frame');
  const blocksMax = Math.ceil(size / limits.snapshotBlockBytes);
  const blocks: number[] = [];
  const lengths: number[] = [];
  for (let i = 0; i < count; i++) {
    const b = r.u64();
    const length = r.u32();
    if (b >= blocksMax) throw new WireError(`snapshot block ${b} beyond the snapshot's ${blocksMax}`);
    if (length > limits.snapshotBlockBytes) throw new WireError(`snapshot block of ${length} bytes`);
    blocks.push(b);
    lengths.push(length);
  }
  const data = lengths.map((n) => r.slice(n));
  r.end();
  return { snapshotId, snapshot: { id, deviceId, name, createdAt, size }, blocks, data };
}

export function encodeSnapEnd(f: Omit<SnapEndFrame, 'kind'>): Buffer {
  const { buf, w } = frameBuffer(FrameKind.SnapEnd, 24);
  w.u64(f.snapshotId);
  w.u64(f.chunks);
  w.u64(f.appliedEnd);
  return buf;
}

export function encodeSnapResult(f: Omit<SnapResultFrame, 'kind'>): Buffer {
  const reason = f.reason.length > 200 ? f.reason.slice(0, 200) : f.reason;
  const { buf, w } = frameBuffer(FrameKind.SnapResult, 8 + 1 + str8Size(reason));
  w.u64(f.snapshotId);
  w.u8(f.ok ? (f.more ? 2 : f.lz4 ? 3 : 1) : 0);
  w.str8(reason);
  return buf;
}

export function encodeRemoved(nodeId: string): Buffer {
  const { buf, w } = frameBuffer(FrameKind.Removed, str8Size(nodeId));
  w.str8(nodeId);
  return buf;
}

export function encodePing(kind: FrameKind.Ping | FrameKind.Pong, sentAtNs: number): Buffer {
  const { buf, w } = frameBuffer(kind, 8);
  w.u64(sentAtNs);
  return buf;
}

// ---------------------------------------------------------------- decoding

export function decodeFrame(frame: Buffer): Frame {
  const r = new WireReader(frame);
  const kind = r.u8() as FrameKind;
  switch (kind) {
    case FrameKind.Hello: {
      const version = r.u8();
      const clusterId = r.str8();
      const from = r.str8();
      const to = r.str8();
      const nonce = r.slice(NONCE_BYTES);
      const mac = r.slice(r.u8());
      r.end();
      return { kind, version, clusterId, from, to, nonce, mac };
    }
    case FrameKind.Challenge: {
      const version = r.u8();
      const nonce = r.slice(NONCE_BYTES);
      r.end();
      return { kind, version, nonce };
    }
    case FrameKind.Welcome: {
      const from = r.str8();
      const mac = r.slice(r.u8());
      r.end();
      return { kind, from, mac };
    }
    case FrameKind.Raft:
      return { kind, message: decodeRaftMessage(r) };
    case FrameKind.SnapBegin: {
      const snapshotId = r.u64();
      const metadata = readSnapshotMetadata(r);
      const state = r.bytes32();
      r.end();
      return { kind, snapshotId, metadata, state };
    }
    case FrameKind.SnapChunk:
    case FrameKind.SnapChunkLz4: {
      const snapshotId = r.u64();
      const file = r.u32();
      const offset = r.u64();
      const zeroBytes = r.u64();
      if (offset > limits.deviceBytesMax || zeroBytes > limits.deviceBytesMax) throw new WireError('snapshot chunk beyond deviceBytesMax');
      const data = r.slice(r.remaining);
      if (data.length > 0 && zeroBytes > 0) throw new WireError('chunk with both data and zeroes');
      if (kind === FrameKind.SnapChunk) return { kind, snapshotId, file, offset, data, zeroBytes };
      // The block's claimed length is bounded before anything allocates for it.
      const length = blockLength(data);
      if (zeroBytes !== 0 || length === undefined || length === 0 || length > limits.snapshotChunkBytes) {
        throw new WireError(`LZ4 snapshot chunk of ${length ?? 'no'} bytes (1 to ${limits.snapshotChunkBytes}, no zeroes)`);
      }
      return { kind: FrameKind.SnapChunk, snapshotId, file, offset, data, zeroBytes, lz4: true };
    }
    case FrameKind.SnapBlocks:
      return { kind, ...decodeSnapBlocks(r) };
    case FrameKind.SnapEnd: {
      const snapshotId = r.u64();
      const chunks = r.u64();
      const appliedEnd = readIndex(r, 'appliedEnd');
      r.end();
      return { kind, snapshotId, chunks, appliedEnd };
    }
    case FrameKind.SnapResult: {
      const snapshotId = r.u64();
      const status = r.u8();
      if (status > 3) throw new WireError(`snapshot result status ${status}`);
      const reason = r.str8();
      r.end();
      return { kind, snapshotId, ok: status !== 0, reason, ...(status === 2 ? { more: true as const } : {}), ...(status === 3 ? { lz4: true as const } : {}) };
    }
    case FrameKind.Removed: {
      const nodeId = r.str8();
      r.end();
      return { kind, nodeId };
    }
    case FrameKind.Ping:
    case FrameKind.Pong: {
      const sentAtNs = r.u64();
      r.end();
      return { kind, sentAtNs };
    }
    default:
      throw new WireError(`unknown frame kind ${kind as number}`);
  }
}

/**
 * Splits a byte stream into frames. A frame that arrives in one chunk is a
 * slice of that chunk; a frame split across chunks is assembled once into a
 * buffer of its announced length. The announced length is checked against
 * peerFrameBytesMax before anything is allocated.
 */
export class FrameDecoder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private assembling: Buffer | undefined;
  private assembled = 0;

  /** Largest frame accepted; a transport raises it once the link is authenticated. */
  constructor(public frameBytesMax = limits.peerFrameBytesMax) {}

  /** Feeds bytes; returns the complete frame bodies (kind byte first). Throws WireError on a bad length. */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let data = chunk;
    while (data.length > 0) {
      if (this.assembling) {
        const take = Math.min(this.assembling.length - this.assembled, data.length);
        data.copy(this.assembling, this.assembled, 0, take);
        this.assembled += take;
        data = data.subarray(take);
        if (this.assembled === this.assembling.length) {
          out.push(this.assembling);
          this.assembling = undefined;
        }
        continue;
      }
      // Need the 4-byte length; it may itself be split.
      if (this.pendingBytes + data.length < 4) {
        this.pending.push(data);
        this.pendingBytes += data.length;
        break;
      }
      if (this.pendingBytes > 0) {
        data = Buffer.concat([...this.pending, data]);
        this.pending = [];
        this.pendingBytes = 0;
      }
      const length = data.readUInt32LE(0);
      if (length < 1 || length + 4 > this.frameBytesMax) throw new WireError(`frame length ${length} out of bounds`);
      if (data.length >= 4 + length) {
        out.push(data.subarray(4, 4 + length));
        data = data.subarray(4 + length);
      } else {
        this.assembling = Buffer.allocUnsafe(length);
        this.assembled = data.length - 4;
        data.copy(this.assembling, 0, 4);
        data = data.subarray(data.length);
      }
    }
    return out;
  }
}
