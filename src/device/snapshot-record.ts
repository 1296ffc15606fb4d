// A snapshot's record and the small formats around it (src/device/snapshots.ts
// has the copy-on-write that uses them): the name rule shared by propose and
// apply, the record's shape check (checkpoints, meta.json), and map.log, the
// append-only list of preserved block numbers (u64 LE each).

import { limits } from '../limits.ts';

const SNAPSHOT_NAME_RE = /^[A-Za-z0-9._-]+$/;

export interface SnapshotRecord {
  /** Log index of the SNAPSHOT_CREATE entry. */
  id: number;
  deviceId: number;
  name: string;
  /** Wall-clock ms, chosen by the proposer (the same on every replica). */
  createdAt: number;
  /** The device's size at the snapshot (a device with snapshots is not resized). */
  size: number;
  /** This node cannot serve the snapshot (see the header). Node-local. */
  lost?: true;
}

/** Why `name` is not a snapshot name, or undefined. */
export function snapshotNameProblem(name: string): string | undefined {
  if (typeof name !== 'string' || name === '') return 'a snapshot name is required';
  if (Buffer.byteLength(name) > limits.snapshotNameBytesMax) return `snapshot name longer than ${limits.snapshotNameBytesMax} bytes`;
  if (!SNAPSHOT_NAME_RE.test(name)) return `bad snapshot name "${name}" (letters, digits, '.', '_', '-')`;
  return undefined;
}

export function wellFormedSnapshot(r: unknown): r is SnapshotRecord {
  const s = r as SnapshotRecord;
  return (
    typeof s === 'object' &&
    s !== null &&
    Number.isSafeInteger(s.id) &&
    s.id > 0 &&
    Number.isSafeInteger(s.deviceId) &&
    typeof s.name === 'string' &&
    snapshotNameProblem(s.name) === undefined &&
    Number.isSafeInteger(s.createdAt) &&
    s.createdAt >= 0 &&
    Number.isSafeInteger(s.size) &&
    s.size >= 0 &&
    (s.lost === undefined || s.lost === true)
  );
}

/** Block numbers covering [offset, offset+length), length > 0. */
export function blockSpan(offset: number, length: number, blockBytes = limits.snapshotBlockBytes): { first: number; last: number } {
  return { first: Math.floor(offset / blockBytes), last: Math.floor((offset + length - 1) / blockBytes) };
}

/** The set of preserved blocks as kept in map.log: a torn last record (crash mid-append) is dropped. */
export function decodeBlockMap(buf: Buffer, blocksMax: number): { blocks: Set<number>; bytes: number } {
  const blocks = new Set<number>();
  const whole = buf.length - (buf.length % 8);
  for (let at = 0; at < whole; at += 8) {
    const lo = buf.readUInt32LE(at);
    const hi = buf.readUInt32LE(at + 4);
    const block = hi * 0x1_0000_0000 + lo;
    if (!Number.isSafeInteger(block) || block >= blocksMax) throw new Error(`snapshot map names block ${block}, beyond the ${blocksMax} of the device`);
    blocks.add(block);
  }
  return { blocks, bytes: whole };
}

export function encodeBlockMap(blocks: readonly number[]): Buffer {
  const buf = Buffer.alloc(8 * blocks.length);
  blocks.forEach((b, i) => {
    buf.writeUInt32LE(b % 0x1_0000_0000, 8 * i);
    buf.writeUInt32LE(Math.floor(b / 0x1_0000_0000), 8 * i + 4);
  });
  return buf;
}
