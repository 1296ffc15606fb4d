// The state-machine commands carried in Raft entries (Entry.data).
//
// Every command starts with a request id {clientId, seq}: a proposal retried
// after a leader change carries the same id, and the block store applies an
// id at most once (a write applied twice could otherwise undo a newer write
// committed in between — a linearizability violation, not just wasted work).
//
// Data commands name a device by its id (the log index of the entry that
// created it), not by name: a write still in flight for a deleted device can
// never land in a new device that reuses the name.
//
//   command := u8 version | u8 op | u64 clientId | u64 seq | u64 firstUnacked | body
//   WRITE          u64 deviceId | u64 offset | data...
//   TRIM           u64 deviceId | u64 offset | u64 length
//   WRITE_ZEROES   u64 deviceId | u64 offset | u64 length | u8 flags
//   CREATE_DEVICE  str8 name | u64 size | [u8 flags [| key]]   (flags absent in older entries: 0;
//                  key present iff flags has DEVICE_FLAG_ENCRYPTED)
//   DELETE_DEVICE  str8 name
//   RESIZE_DEVICE  str8 name | u64 size
//   PUBLISH_MEMBER str8 nodeId | str8 adminAddress | str8 nbdAddress | str8 version | u64 startedAt
//                  (op 255: new ops take free values from the top down, see the section below)
//   SET_DEVICE_FLAGS  str8 name | u8 flags             (DEVICE_FLAG_READ_ONLY)
//   VERIFY_DEVICE  str8 name | u64 rangeBytes          (verify id = this entry's index)
//   VERIFY_RESULT  u64 verifyId | str8 nodeId | u8 ok | u32 count | count x u32 crc32c   (ok = 1)
//                  u64 verifyId | str8 nodeId | u8 ok | str8 why                        (ok = 0)
//   AUDIT_RECORD   u64 timeMs | str8 principal | str8 source | str8 operation | u8 outcome
//                  | bytes32 args (JSON object) | bytes32 reason   (src/audit/entry.ts bounds)
//   REWRAP_KEYS    u16 count | count x (u64 deviceId | u32 generation | key | u8 rekeying | [key])
//   ENCRYPTED_WRITE u64 deviceId | u64 offset | u32 generation | u64 watermark | ciphertext...
//   REKEY          u8 kind=1 | u64 deviceId | u32 generation | key                   (start)
//                  u8 kind=2 | u64 deviceId | u32 generation | u64 offset | u64 readAt | ciphertext...  (step)
//   SNAPSHOT_CREATE str8 device | str8 name | u64 createdAtMs   (snapshot id = this entry's index)
//   SNAPSHOT_DELETE str8 device | str8 name
//   (what they mean at apply: src/device/snapshots.ts; an older node that does not know
//   the ops skips them as undecodable, so they are proposed only once every member
//   published a version that knows them: src/replica/snapshot-ops.ts)
//   COMPRESSED_WRITE u64 deviceId | u64 offset | u32le length | LZ4 block   (src/device/lz4.ts; the
//                  block's first 4 bytes ARE the u32le length; decoded data = `length` bytes, 1..requestBytesMax)
//   key            := str8 kekId | 92 bytes wrapped data key | 16 bytes key check value (src/crypt/wrap.ts)
//   (what the encryption commands mean at apply: src/device/encryption.ts)
//
// Over 500 lines: one format, so every command's encoder sits beside its
// decoder and the grammar above (as src/nbd/codec.ts does for NBD).

import { XDeviceError } from '../errors.ts';
import { AUDIT_OUTCOMES, type AuditEntry, entryProblem } from '../audit/entry.ts';
import type { Publication } from './member-table.ts';
import { limits } from '../limits.ts';
import { WireReader, WireWriter, str8Size } from './wire.ts';
import { KCV_BYTES, WRAPPED_KEY_BYTES, type WrappedKey } from '../crypt/wrap.ts';
import { keyIdProblem } from '../crypt/key-file.ts';
import { Lz4BlockError, blockLength, decompressBlock, takePlaintext } from './lz4.ts';

export const COMMAND_VERSION = 1;
export const COMMAND_HEADER_BYTES = 2 + 8 + 8 + 8;

export const enum CommandOp {
  Write = 1,
  Trim = 2,
  WriteZeroes = 3,
  CreateDevice = 4,
  DeleteDevice = 5,
  ResizeDevice = 6,
  /** A member's client addresses (src/device/member-table.ts). */
  PublishMember = 255,
  SetDeviceFlags = 7,
  VerifyDevice = 8,
  VerifyResult = 9,
  RewrapKeys = 10,
  EncryptedWrite = 11,
  Rekey = 12,
  /** A cluster-wide audit event, written to every replica's trail (src/audit/). */
  AuditRecord = 13,
  /** A point-in-time snapshot of a device (src/device/snapshots.ts). */
  SnapshotCreate = 14,
  SnapshotDelete = 15,
  /** A WRITE whose data is one LZ4 block (src/device/compression.ts decides when; only once every member decodes it). */
  CompressedWrite = 16,
}

/** Device flags (CREATE_DEVICE, SET_DEVICE_FLAGS). */
export const DEVICE_FLAG_READ_ONLY = 1;
/** CREATE_DEVICE only: the device is encrypted; its wrapped data key follows the flags. */
export const DEVICE_FLAG_ENCRYPTED = 2;
const DEVICE_FLAGS_KNOWN = DEVICE_FLAG_READ_ONLY | DEVICE_FLAG_ENCRYPTED;

/** One device's keys in a REWRAP_KEYS: the same data keys, wrapped with another KEK. */
export interface Rewrap {
  deviceId: number;
  generation: number;
  key: WrappedKey;
  /** The new data key of a rekey in progress, rewrapped too. */
  rekeyKey?: WrappedKey;
}

export interface RequestId {
  /** Random per client incarnation, below 2^53. */
  clientId: number;
  /** Increases by one per request of that client, from 1. */
  seq: number;
  /**
   * The lowest seq this client still waits for: every seq below it is
   * settled, so the applier may forget it (Raft thesis 6.3).
   */
  firstUnacked: number;
}

export type Command =
  | (RequestId & { op: CommandOp.Write; deviceId: number; offset: number; data: Buffer })
  /** `data`: the decompressed bytes (what apply writes); `block`: the LZ4 block as carried (a slice of the entry). */
  | (RequestId & { op: CommandOp.CompressedWrite; deviceId: number; offset: number; data: Buffer; block: Buffer })
  | (RequestId & { op: CommandOp.Trim; deviceId: number; offset: number; length: number })
  | (RequestId & { op: CommandOp.WriteZeroes; deviceId: number; offset: number; length: number; noHole: boolean })
  | (RequestId & { op: CommandOp.CreateDevice; name: string; size: number; flags?: number; key?: WrappedKey })
  | (RequestId & { op: CommandOp.DeleteDevice; name: string })
  | (RequestId & { op: CommandOp.ResizeDevice; name: string; size: number })
  | (RequestId & { op: CommandOp.PublishMember } & Publication)
  | (RequestId & { op: CommandOp.SetDeviceFlags; name: string; flags: number })
  | (RequestId & { op: CommandOp.VerifyDevice; name: string; rangeBytes: number })
  | (RequestId & { op: CommandOp.VerifyResult; verifyId: number; nodeId: string; digests?: Uint32Array; why?: string })
  | (RequestId & { op: CommandOp.AuditRecord; entry: AuditEntry })
  | (RequestId & { op: CommandOp.SnapshotCreate; device: string; name: string; createdAt: number })
  | (RequestId & { op: CommandOp.SnapshotDelete; device: string; name: string })
  | (RequestId & { op: CommandOp.RewrapKeys; devices: Rewrap[] })
  | (RequestId & { op: CommandOp.EncryptedWrite; deviceId: number; offset: number; generation: number; watermark: number; data: Buffer })
  | (RequestId & { op: CommandOp.Rekey; kind: 'start'; deviceId: number; generation: number; key: WrappedKey })
  | (RequestId & { op: CommandOp.Rekey; kind: 'step'; deviceId: number; generation: number; offset: number; readAt: number; data: Buffer });

export class CommandDecodeError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_BAD_COMMAND', message);
  }
}

function header(size: number, op: CommandOp, id: RequestId): WireWriter {
  const w = new WireWriter(Buffer.allocUnsafe(COMMAND_HEADER_BYTES + size));
  w.u8(COMMAND_VERSION);
  w.u8(op);
  w.u64(id.clientId);
  w.u64(id.seq);
  w.u64(id.firstUnacked);
  return w;
}

/** One copy of the payload into the entry: Entry.data is a single Buffer. */
export function encodeWrite(id: RequestId, deviceId: number, offset: number, data: Buffer): Buffer {
  const w = header(16 + data.length, CommandOp.Write, id);
  w.u64(deviceId);
  w.u64(offset);
  w.raw(data);
  return w.buf;
}

/**
 * encodeWrite() of the pieces back to back (the slices a payload arrived in
 * off the socket): they are copied once, straight into the entry, with no
 * gathering buffer in between. The same bytes as encodeWrite of their concatenation.
 */
export function encodeWritev(id: RequestId, deviceId: number, offset: number, parts: readonly Buffer[]): Buffer {
  let length = 0;
  for (const part of parts) length += part.length;
  const w = header(16 + length, CommandOp.Write, id);
  w.u64(deviceId);
  w.u64(offset);
  for (const part of parts) w.raw(part);
  return w.buf;
}

/** `block`: a size-prefixed LZ4 block (src/device/lz4.ts compressBlock) of the write's data. */
export function encodeCompressedWrite(id: RequestId, deviceId: number, offset: number, block: Buffer): Buffer {
  const w = header(16 + block.length, CommandOp.CompressedWrite, id);
  w.u64(deviceId);
  w.u64(offset);
  w.raw(block);
  return w.buf;
}

export function encodeTrim(id: RequestId, deviceId: number, offset: number, length: number): Buffer {
  const w = header(24, CommandOp.Trim, id);
  w.u64(deviceId);
  w.u64(offset);
  w.u64(length);
  return w.buf;
}

export function encodeWriteZeroes(id: RequestId, deviceId: number, offset: number, length: number, noHole: boolean): Buffer {
  const w = header(25, CommandOp.WriteZeroes, id);
  w.u64(deviceId);
  w.u64(offset);
  w.u64(length);
  w.u8(noHole ? 1 : 0);
  return w.buf;
}

/** Flags 0 encode as before flags existed (no trailing byte): old and new nodes read the same entry. */
export function encodeCreateDevice(id: RequestId, name: string, size: number, flags = 0, key?: WrappedKey): Buffer {
  if (((flags & DEVICE_FLAG_ENCRYPTED) !== 0) !== (key !== undefined)) throw new CommandDecodeError('an encrypted device needs its wrapped key, and only it');
  const w = header(str8Size(name) + 8 + (flags !== 0 ? 1 : 0) + (key ? keySize(key) : 0), CommandOp.CreateDevice, id);
  w.str8(name);
  w.u64(size);
  if (flags !== 0) w.u8(flags);
  if (key) writeKey(w, key);
  return w.buf;
}

function keySize(k: WrappedKey): number {
  return str8Size(k.kekId) + WRAPPED_KEY_BYTES + KCV_BYTES;
}

function writeKey(w: WireWriter, k: WrappedKey): void {
  if (k.wrapped.length !== WRAPPED_KEY_BYTES || k.kcv.length !== KCV_BYTES) throw new CommandDecodeError('malformed wrapped key');
  w.str8(k.kekId);
  w.raw(k.wrapped);
  w.raw(k.kcv);
}

function readKey(r: WireReader): WrappedKey {
  const kekId = r.str8();
  const problem = keyIdProblem(kekId);
  if (problem) throw new CommandDecodeError(problem);
  return { kekId, wrapped: Buffer.from(r.slice(WRAPPED_KEY_BYTES)), kcv: Buffer.from(r.slice(KCV_BYTES)) };
}

export function encodeRewrapKeys(id: RequestId, devices: readonly Rewrap[]): Buffer {
  let size = 2;
  for (const d of devices) size += 8 + 4 + keySize(d.key) + 1 + (d.rekeyKey ? keySize(d.rekeyKey) : 0);
  const w = header(size, CommandOp.RewrapKeys, id);
  w.u8(devices.length & 0xff);
  w.u8(devices.length >>> 8);
  for (const d of devices) {
    w.u64(d.deviceId);
    w.u32(d.generation);
    writeKey(w, d.key);
    w.u8(d.rekeyKey ? 1 : 0);
    if (d.rekeyKey) writeKey(w, d.rekeyKey);
  }
  return w.buf;
}

/** An encrypted device's write: `parts` are ciphertext, sectors below `watermark` under the rekey's key, the rest under `generation`'s. */
export function encodeEncryptedWrite(id: RequestId, deviceId: number, offset: number, generation: number, watermark: number, parts: readonly Buffer[]): Buffer {
  let length = 0;
  for (const part of parts) length += part.length;
  const w = header(28 + length, CommandOp.EncryptedWrite, id);
  w.u64(deviceId);
  w.u64(offset);
  w.u32(generation);
  w.u64(watermark);
  for (const part of parts) w.raw(part);
  return w.buf;
}

export function encodeRekeyStart(id: RequestId, deviceId: number, generation: number, key: WrappedKey): Buffer {
  const w = header(1 + 12 + keySize(key), CommandOp.Rekey, id);
  w.u8(1);
  w.u64(deviceId);
  w.u32(generation);
  writeKey(w, key);
  return w.buf;
}

export function encodeRekeyStep(id: RequestId, deviceId: number, generation: number, offset: number, readAt: number, parts: readonly Buffer[]): Buffer {
  let length = 0;
  for (const part of parts) length += part.length;
  const w = header(1 + 12 + 16 + length, CommandOp.Rekey, id);
  w.u8(2);
  w.u64(deviceId);
  w.u32(generation);
  w.u64(offset);
  w.u64(readAt);
  for (const part of parts) w.raw(part);
  return w.buf;
}

export function encodeDeleteDevice(id: RequestId, name: string): Buffer {
  const w = header(str8Size(name), CommandOp.DeleteDevice, id);
  w.str8(name);
  return w.buf;
}

export function encodeResizeDevice(id: RequestId, name: string, size: number): Buffer {
  const w = header(str8Size(name) + 8, CommandOp.ResizeDevice, id);
  w.str8(name);
  w.u64(size);
  return w.buf;
}

export function encodeSetDeviceFlags(id: RequestId, name: string, flags: number): Buffer {
  const w = header(str8Size(name) + 1, CommandOp.SetDeviceFlags, id);
  w.str8(name);
  w.u8(flags);
  return w.buf;
}

export function encodeVerifyDevice(id: RequestId, name: string, rangeBytes: number): Buffer {
  const w = header(str8Size(name) + 8, CommandOp.VerifyDevice, id);
  w.str8(name);
  w.u64(rangeBytes);
  return w.buf;
}

/** One node's checksums for a verify (`digests`), or why it has none (`why`, cut to 255 bytes). */
export function encodeVerifyResult(id: RequestId, verifyId: number, nodeId: string, result: { digests: Uint32Array } | { why: string }): Buffer {
  if ('why' in result) result = { why: cut255(result.why) };
  const body = 8 + str8Size(nodeId) + 1 + ('digests' in result ? 4 + 4 * result.digests.length : str8Size(result.why));
  const w = header(body, CommandOp.VerifyResult, id);
  w.u64(verifyId);
  w.str8(nodeId);
  if ('digests' in result) {
    w.u8(1);
    w.u32(result.digests.length);
    for (const d of result.digests) w.u32(d);
  } else {
    w.u8(0);
    w.str8(result.why);
  }
  return w.buf;
}

/** The entry must pass entryProblem() (boundEntry() makes one that does): a peer decoding it checks the same. */
export function encodeAuditRecord(id: RequestId, e: AuditEntry): Buffer {
  const problem = entryProblem(e);
  if (problem) throw new CommandDecodeError(`audit entry not recordable: ${problem}`);
  const args = Buffer.from(e.args);
  const reason = Buffer.from(e.reason);
  const w = header(8 + str8Size(e.principal) + str8Size(e.source) + str8Size(e.operation) + 1 + 4 + args.length + 4 + reason.length, CommandOp.AuditRecord, id);
  w.u64(e.timeMs);
  w.str8(e.principal);
  w.str8(e.source);
  w.str8(e.operation);
  w.u8(AUDIT_OUTCOMES.indexOf(e.outcome));
  w.bytes32(args);
  w.bytes32(reason);
  return w.buf;
}

export function encodeSnapshotCreate(id: RequestId, device: string, name: string, createdAt: number): Buffer {
  const w = header(str8Size(device) + str8Size(name) + 8, CommandOp.SnapshotCreate, id);
  w.str8(device);
  w.str8(name);
  w.u64(createdAt);
  return w.buf;
}

export function encodeSnapshotDelete(id: RequestId, device: string, name: string): Buffer {
  const w = header(str8Size(device) + str8Size(name), CommandOp.SnapshotDelete, id);
  w.str8(device);
  w.str8(name);
  return w.buf;
}

export function encodeCommand(c: Command): Buffer {
  switch (c.op) {
    case CommandOp.Write:
      return encodeWrite(c, c.deviceId, c.offset, c.data);
    case CommandOp.CompressedWrite:
      return encodeCompressedWrite(c, c.deviceId, c.offset, c.block);
    case CommandOp.Trim:
      return encodeTrim(c, c.deviceId, c.offset, c.length);
    case CommandOp.WriteZeroes:
      return encodeWriteZeroes(c, c.deviceId, c.offset, c.length, c.noHole);
    case CommandOp.CreateDevice:
      return encodeCreateDevice(c, c.name, c.size, c.flags ?? 0, c.key);
    case CommandOp.DeleteDevice:
      return encodeDeleteDevice(c, c.name);
    case CommandOp.ResizeDevice:
      return encodeResizeDevice(c, c.name, c.size);
    case CommandOp.PublishMember:
      return encodePublishMember(c, c);
    case CommandOp.SetDeviceFlags:
      return encodeSetDeviceFlags(c, c.name, c.flags);
    case CommandOp.VerifyDevice:
      return encodeVerifyDevice(c, c.name, c.rangeBytes);
    case CommandOp.VerifyResult:
      return encodeVerifyResult(c, c.verifyId, c.nodeId, c.digests ? { digests: c.digests } : { why: c.why ?? '' });
    case CommandOp.AuditRecord:
      return encodeAuditRecord(c, c.entry);
    case CommandOp.SnapshotCreate:
      return encodeSnapshotCreate(c, c.device, c.name, c.createdAt);
    case CommandOp.SnapshotDelete:
      return encodeSnapshotDelete(c, c.device, c.name);
    case CommandOp.RewrapKeys:
      return encodeRewrapKeys(c, c.devices);
    case CommandOp.EncryptedWrite:
      return encodeEncryptedWrite(c, c.deviceId, c.offset, c.generation, c.watermark, [c.data]);
    case CommandOp.Rekey:
      return c.kind === 'start' ? encodeRekeyStart(c, c.deviceId, c.generation, c.key) : encodeRekeyStep(c, c.deviceId, c.generation, c.offset, c.readAt, [c.data]);
  }
}

/** The longest prefix of s within 255 UTF-8 bytes (never half a character). */
function cut255(s: string): string {
  if (Buffer.byteLength(s) <= 255) return s;
  let out = '';
  for (const ch of s) {
    if (Buffer.byteLength(out + ch) > 255) break;
    out += ch;
  }
  return out;
}

function deviceFlags(flags: number): number {
  if ((flags & ~DEVICE_FLAGS_KNOWN) !== 0) throw new CommandDecodeError(`unknown device flags 0x${flags.toString(16)}`);
  return flags;
}

/** Reads only the request id (cheap: used to match applied entries to waiting requests). */
export function peekRequestId(data: Buffer): RequestId | undefined {
  if (data.length < COMMAND_HEADER_BYTES || data[0] !== COMMAND_VERSION) return undefined;
  const r = new WireReader(data, 2);
  return { clientId: r.u64(), seq: r.u64(), firstUnacked: r.u64() };
}

/** Decodes an entry payload; the WRITE data is a slice of `data`, not a copy. */
export function decodeCommand(data: Buffer): Command {
  try {
    const r = new WireReader(data);
    const version = r.u8();
    if (version !== COMMAND_VERSION) throw new CommandDecodeError(`unknown command version ${version}`);
    const op = r.u8() as CommandOp;
    const clientId = r.u64();
    const seq = r.u64();
    const firstUnacked = r.u64();
    if (seq < 1 || firstUnacked < 1 || firstUnacked > seq) throw new CommandDecodeError(`bad request sequence ${seq}/${firstUnacked}`);
    switch (op) {
      case CommandOp.Write: {
        const deviceId = r.u64();
        const offset = r.u64();
        return { op, clientId, seq, firstUnacked, deviceId, offset, data: r.slice(r.remaining) };
      }
      case CommandOp.CompressedWrite: {
        const deviceId = r.u64();
        const offset = r.u64();
        const block = r.slice(r.remaining);
        const length = blockLength(block);
        if (length === undefined || length < 1 || length > limits.requestBytesMax) throw new CommandDecodeError(`COMPRESSED_WRITE of ${length ?? 'no'} bytes: 1 to ${limits.requestBytesMax}`);
        const own = takePlaintext(data);
        if (own !== undefined && own.length === length) return { op, clientId, seq, firstUnacked, deviceId, offset, data: own, block };
        try {
          return { op, clientId, seq, firstUnacked, deviceId, offset, data: decompressBlock(block, length, limits.requestBytesMax), block };
        } catch (err) {
          if (err instanceof Lz4BlockError) throw new CommandDecodeError(`COMPRESSED_WRITE: ${err.message}`);
          throw err;
        }
      }
      case CommandOp.Trim: {
        const c = { op, clientId, seq, firstUnacked, deviceId: r.u64(), offset: r.u64(), length: r.u64() };
        r.end();
        return c;
      }
      case CommandOp.WriteZeroes: {
        const c = { op, clientId, seq, firstUnacked, deviceId: r.u64(), offset: r.u64(), length: r.u64(), noHole: r.u8() === 1 };
        r.end();
        return c;
      }
      case CommandOp.CreateDevice: {
        const c: Command = { op, clientId, seq, firstUnacked, name: r.str8(), size: r.u64() };
        const flags = r.remaining > 0 ? deviceFlags(r.u8()) : 0;
        const key = (flags & DEVICE_FLAG_ENCRYPTED) !== 0 ? readKey(r) : undefined;
        r.end();
        return flags !== 0 ? { ...c, flags, ...(key ? { key } : {}) } : c;
      }
      case CommandOp.DeleteDevice: {
        const c = { op, clientId, seq, firstUnacked, name: r.str8() };
        r.end();
        return c;
      }
      case CommandOp.ResizeDevice: {
        const c = { op, clientId, seq, firstUnacked, name: r.str8(), size: r.u64() };
        r.end();
        return c;
      }
      case CommandOp.PublishMember:
        return { op, clientId, seq, firstUnacked, ...decodePublication(r) };
      case CommandOp.SetDeviceFlags: {
        const c = { op, clientId, seq, firstUnacked, name: r.str8(), flags: deviceFlags(r.u8()) };
        if ((c.flags & DEVICE_FLAG_ENCRYPTED) !== 0) throw new CommandDecodeError('encryption is chosen at create, not by SET_DEVICE_FLAGS');
        r.end();
        return c;
      }
      case CommandOp.VerifyDevice: {
        const c = { op, clientId, seq, firstUnacked, name: r.str8(), rangeBytes: r.u64() };
        r.end();
        return c;
      }
      case CommandOp.VerifyResult: {
        const verifyId = r.u64();
        const nodeId = r.str8();
        const ok = r.u8();
        if (ok === 0) {
          const c = { op, clientId, seq, firstUnacked, verifyId, nodeId, why: r.str8() };
          r.end();
          return c;
        }
        if (ok !== 1) throw new CommandDecodeError(`bad verify result status ${ok}`);
        const count = r.u32();
        if (count * 4 !== r.remaining) throw new CommandDecodeError(`verify result says ${count} digests, carries ${r.remaining} bytes`);
        const digests = new Uint32Array(count);
        for (let i = 0; i < count; i++) digests[i] = r.u32();
        return { op, clientId, seq, firstUnacked, verifyId, nodeId, digests };
      }
      case CommandOp.AuditRecord:
        return { op, clientId, seq, firstUnacked, entry: decodeAuditEntry(r) };
      case CommandOp.SnapshotCreate: {
        // Names are checked at apply (a recorded refusal), not here: decoding only checks the framing.
        const c = { op, clientId, seq, firstUnacked, device: r.str8(), name: r.str8(), createdAt: r.u64() };
        r.end();
        return c;
      }
      case CommandOp.SnapshotDelete: {
        const c = { op, clientId, seq, firstUnacked, device: r.str8(), name: r.str8() };
        r.end();
        return c;
      }
      case CommandOp.RewrapKeys: {
        const count = r.u8() | (r.u8() << 8);
        if (count > limits.devicesMax) throw new CommandDecodeError(`REWRAP_KEYS for ${count} devices, more than the ${limits.devicesMax} that can exist`);
        const devices: Rewrap[] = [];
        for (let i = 0; i < count; i++) {
          const deviceId = r.u64();
          const generation = r.u32();
          const key = readKey(r);
          const rekeying = r.u8();
          if (rekeying > 1) throw new CommandDecodeError(`bad rekey marker ${rekeying}`);
          devices.push(rekeying === 1 ? { deviceId, generation, key, rekeyKey: readKey(r) } : { deviceId, generation, key });
        }
        r.end();
        return { op, clientId, seq, firstUnacked, devices };
      }
      case CommandOp.EncryptedWrite: {
        const deviceId = r.u64();
        const offset = r.u64();
        const generation = r.u32();
        const watermark = r.u64();
        return { op, clientId, seq, firstUnacked, deviceId, offset, generation, watermark, data: r.slice(r.remaining) };
      }
      case CommandOp.Rekey: {
        const kind = r.u8();
        const deviceId = r.u64();
        const generation = r.u32();
        if (kind === 1) {
          const c = { op, clientId, seq, firstUnacked, kind: 'start' as const, deviceId, generation, key: readKey(r) };
          r.end();
          return c;
        }
        if (kind !== 2) throw new CommandDecodeError(`unknown rekey kind ${kind}`);
        const offset = r.u64();
        const readAt = r.u64();
        return { op, clientId, seq, firstUnacked, kind: 'step', deviceId, generation, offset, readAt, data: r.slice(r.remaining) };
      }
      default:
        throw new CommandDecodeError(`unknown command op ${op as number}`);
    }
  } catch (err) {
    if (err instanceof CommandDecodeError) throw err;
    throw new CommandDecodeError((err as Error).message);
  }
}

// ---- PUBLISH_MEMBER (the member table) ----------------------------------------

export function encodePublishMember(id: RequestId, p: Publication): Buffer {
  const w = header(str8Size(p.nodeId) + str8Size(p.adminAddress) + str8Size(p.nbdAddress) + str8Size(p.version) + 8, CommandOp.PublishMember, id);
  w.str8(p.nodeId);
  w.str8(p.adminAddress);
  w.str8(p.nbdAddress);
  w.str8(p.version);
  w.u64(p.startedAt);
  return w.buf;
}

function decodePublication(r: WireReader): Publication {
  const p = { nodeId: r.str8(), adminAddress: r.str8(), nbdAddress: r.str8(), version: r.str8(), startedAt: r.u64() };
  r.end();
  return p;
}

// ---- AUDIT_RECORD (src/audit/) -------------------------------------------------

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function utf8(b: Buffer, what: string): string {
  try {
    return strictUtf8.decode(b);
  } catch {
    throw new CommandDecodeError(`audit record: ${what} is not UTF-8`);
  }
}

function decodeAuditEntry(r: WireReader): AuditEntry {
  const timeMs = r.u64();
  const principal = utf8(r.slice(r.u8()), 'principal');
  const source = utf8(r.slice(r.u8()), 'source');
  const operation = utf8(r.slice(r.u8()), 'operation');
  const outcome = AUDIT_OUTCOMES[r.u8()];
  if (outcome === undefined) throw new CommandDecodeError('audit record: unknown outcome');
  // Lengths are checked before the bytes are decoded (a peer's u32 is not an allocation).
  const argsLength = r.u32();
  if (argsLength > limits.auditArgsBytesMax) throw new CommandDecodeError(`audit record: ${argsLength} bytes of arguments, at most ${limits.auditArgsBytesMax}`);
  const args = utf8(r.slice(argsLength), 'args');
  const reasonLength = r.u32();
  if (reasonLength > limits.auditReasonBytesMax) throw new CommandDecodeError(`audit record: ${reasonLength} bytes of reason, at most ${limits.auditReasonBytesMax}`);
  const reason = utf8(r.slice(reasonLength), 'reason');
  r.end();
  const entry: AuditEntry = { timeMs, principal, source, operation, args, outcome, reason };
  const problem = entryProblem(entry);
  if (problem) throw new CommandDecodeError(`audit record: ${problem}`);
  return entry;
}
