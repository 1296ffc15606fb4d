// Record framing. Pure: bytes in, typed records out.
//
// Every record starts with a 32-byte header (little-endian):
//
//   0  u32  crc32c of bytes [4, 32 + length), seeded with the segment's salt
//   4  u32  payload length
//   8  u8   kind (RecordKind)
//   9  u8   entry type (Entry) / snapshot flavour (Snapshot); 0 otherwise
//  10  u16  reserved, zero
//  12  u32  Batch: number of records that follow; 0 otherwise
//  16  u64  term    (Batch: bytes of the batch, header included)
//  24  u64  index   (Batch: batch sequence number in the segment, from 1;
//                    HardState: the commit index)
//  32  payload
//
// A batch (one write + fdatasync of group commit) is a Batch header followed
// by its records back to back, then zeros up to the next alignment boundary;
// the next batch starts there. Kind 0 never occurs in a header, so an
// all-zero header means "nothing was written here". Seeding every CRC with a
// random per-segment salt means bytes from another segment, or a record
// forged inside a payload, do not verify.

export const recordHeaderBytes = 32;

export enum RecordKind {
  Batch = 1,
  Entry = 2,
  /** term = HardState.term, index = HardState.commit, payload = vote (UTF-8). */
  HardState = 3,
  /** term/index = the snapshot's; payload = JSON of its ConfState; flavour in the type byte. */
  Snapshot = 4,
  /**
   * The segment is complete and segment `index` (its sequence number) follows
   * it: written alone in the segment's last batch once that successor is
   * durable, so recovery notices a missing last segment.
   */
  Seal = 5,
}

export enum SnapshotFlavour {
  /** The state a segment starts from; the first batch of every segment holds one. */
  Baseline = 0,
  /** compact(): entries up to index are dropped, later ones stay. */
  Compact = 1,
  /** applySnapshot(): the whole log is replaced by the snapshot. */
  Reset = 2,
}

export interface RecordSpec {
  kind: RecordKind;
  type: number;
  term: number;
  index: number;
  payload: Uint8Array;
}

export interface DecodedRecord {
  kind: RecordKind;
  type: number;
  aux: number;
  term: number;
  index: number;
  payload: Buffer;
  /** Offset just past the record. */
  end: number;
}

export type DecodeResult =
  | { status: 'ok'; record: DecodedRecord }
  /** The header is all zeros: nothing was ever written here. */
  | { status: 'empty' }
  | { status: 'bad'; why: string };

/**
 * A CRC32C function; `copy`, where it has one, copies `src` into `dst` at `at`
 * and returns the CRC of src in the same pass (the native one: the WAL's
 * staging copy and its checksum read a 1 MiB payload once instead of twice).
 */
export type Crc32c = ((data: Uint8Array, initial?: number) => number) & {
  copy?: (dst: Uint8Array, at: number, src: Uint8Array, initial: number) => number;
};

const two32 = 0x1_0000_0000;

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32LE(value % two32, at);
  buf.writeUInt32LE(Math.floor(value / two32), at + 4);
}

function readU64(buf: Buffer, at: number): number | undefined {
  const hi = buf.readUInt32LE(at + 4);
  if (hi >= 0x20_0000) return undefined; // above Number.MAX_SAFE_INTEGER: never written by us
  return hi * two32 + buf.readUInt32LE(at);
}

/**
 * Why a record could not be read back, or undefined: its term and index must
 * be integers in [0, 2^53) (what readU64 accepts). The writer refuses such a
 * record before anything is written, so the log never holds a value that
 * makes recovery fail.
 */
export function unreadableRecord(spec: RecordSpec): string | undefined {
  for (const [name, v] of [['term', spec.term], ['index', spec.index]] as const) {
    if (!Number.isSafeInteger(v) || v < 0) return `record ${name} ${v} cannot be stored (must be an integer in [0, 2^53))`;
  }
  return undefined;
}

/** Bytes a record occupies in a batch. */
export function recordBytes(payloadBytes: number): number {
  return recordHeaderBytes + payloadBytes;
}

/**
 * Writes header + payload at `at` and returns the offset after it. The payload
 * is copied exactly once: with crc32c.copy its CRC is taken as it is copied,
 * else over the bytes in place.
 */
export function encodeRecord(buf: Buffer, at: number, spec: RecordSpec, salt: number, crc32c: Crc32c, aux = 0): number {
  const unreadable = unreadableRecord(spec);
  if (unreadable) throw new RangeError(unreadable); // refusal() keeps such records from getting here
  const length = spec.payload.length;
  buf.writeUInt32LE(length, at + 4);
  buf[at + 8] = spec.kind;
  buf[at + 9] = spec.type;
  buf.writeUInt16LE(0, at + 10);
  buf.writeUInt32LE(aux, at + 12);
  writeU64(buf, spec.term, at + 16);
  writeU64(buf, spec.index, at + 24);
  const end = at + recordHeaderBytes + length;
  let crc: number;
  if (crc32c.copy !== undefined && length > 0) {
    crc = crc32c.copy(buf, at + recordHeaderBytes, spec.payload, crc32c(buf.subarray(at + 4, at + recordHeaderBytes), salt));
  } else {
    if (length > 0) buf.set(spec.payload, at + recordHeaderBytes);
    crc = crc32c(buf.subarray(at + 4, end), salt);
  }
  buf.writeUInt32LE(crc, at);
  return end;
}

export function encodeBatchHeader(buf: Buffer, at: number, batchBytes: number, seq: number, count: number, salt: number, crc32c: Crc32c): number {
  return encodeRecord(buf, at, { kind: RecordKind.Batch, type: 0, term: batchBytes, index: seq, payload: emptyPayload }, salt, crc32c, count);
}

const emptyPayload = Buffer.alloc(0);

function isZero(buf: Buffer, from: number, to: number): boolean {
  for (let i = from; i < to; i++) if (buf[i] !== 0) return false;
  return true;
}

/** Decodes the record at `at`; never reads past `limit`. */
export function decodeRecord(buf: Buffer, at: number, limit: number, salt: number, crc32c: Crc32c): DecodeResult {
  if (at + recordHeaderBytes > limit) return { status: 'bad', why: 'header runs past the end' };
  if (isZero(buf, at, at + recordHeaderBytes)) return { status: 'empty' };
  const length = buf.readUInt32LE(at + 4);
  const end = at + recordHeaderBytes + length;
  if (end > limit) return { status: 'bad', why: `length ${length} runs past the end` };
  if (crc32c(buf.subarray(at + 4, end), salt) !== buf.readUInt32LE(at)) return { status: 'bad', why: 'checksum mismatch' };
  const kind = buf[at + 8]!;
  if (kind < RecordKind.Batch || kind > RecordKind.Seal) return { status: 'bad', why: `unknown record kind ${kind}` };
  const term = readU64(buf, at + 16);
  const index = readU64(buf, at + 24);
  if (term === undefined || index === undefined) return { status: 'bad', why: 'term or index out of range' };
  return {
    status: 'ok',
    record: {
      kind,
      type: buf[at + 9]!,
      aux: buf.readUInt32LE(at + 12),
      term,
      index,
      payload: buf.subarray(at + recordHeaderBytes, end),
      end,
    },
  };
}

export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}
