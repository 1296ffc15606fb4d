// Compression of writes, decided once, where the NBD write is proposed: the
// command then carries the compressed bytes into the WAL of every replica and
// over every peer link, and each replica decompresses it at apply
// (decodeCommand). So one compression per write buys both savings.
//
// The policy, for a plaintext device (ciphertext does not compress; an
// encrypted device's writes stay ENCRYPTED_WRITE):
//   - an all-zero payload becomes WRITE_ZEROES without NO_HOLE: apply punches
//     a hole, which reads back as zeroes (what qemu's detect-zeroes=unmap
//     does), and the entry carries no data at all;
//   - a payload of at least limits.compressWriteBytesMin whose LZ4 block
//     saves at least 1/8 becomes COMPRESSED_WRITE;
//   - anything else stays a WRITE, byte for byte as before. A large write is
//     probed first (probeCompresses): when samples of it do not shrink, it is
//     neither gathered nor compressed. A device whose writes keep failing to
//     shrink is tried less often (CompressionBackoff).
// With `compression = off` every write stays a WRITE (zero payloads too).
//
// Mixed versions: a node running code without COMPRESSED_WRITE would skip
// such an entry as undecodable and its device would silently differ. So it
// is proposed only while every member of the configuration has published
// (src/device/member-table.ts) a version at or after COMPRESSED_WRITE_SINCE,
// the way etcd gates a feature on its cluster version (the lowest of its
// members'). A member not yet published counts as old. Downgrading a member
// below that version is safe only with compression off on every node and
// once no COMPRESSED_WRITE is left in any log it may be sent (after a
// checkpoint and WAL retention have passed them).

import { type RequestId, encodeCompressedWrite, encodeWriteZeroes } from './commands.ts';
import { compressBlock, compressBlockAsync, compressionPays, rememberPlaintext } from './lz4.ts';
import { limits } from '../limits.ts';

export type CompressionMode = 'lz4' | 'off';
export const COMPRESSION_MODES: readonly CompressionMode[] = ['lz4', 'off'];

/** The first version whose nodes decode COMPRESSED_WRITE. */
export const COMPRESSED_WRITE_SINCE = '0.2.0';

/** Bytes counted as writes pass through the policy (metrics: xdevice_compression_*). */
export class CompressionStats {
  /** Payload bytes of the writes the policy looked at (NBD WRITE data). */
  bytesIn = 0;
  /** Bytes of data those writes carry in their commands (a hole carries none). */
  bytesOut = 0;
  /** Writes sent as COMPRESSED_WRITE. */
  compressedWrites = 0;
  /** All-zero writes sent as WRITE_ZEROES (a hole at apply). */
  zeroWrites = 0;
  /** Writes that stayed plain WRITEs though the policy could compress (they did not pay). */
  incompressibleWrites = 0;
  /** Writes sent as written without an attempt: their device's last writes did not compress (CompressionBackoff). */
  skippedWrites = 0;
  /** Device-file chunks of Raft snapshot streams this node sent to receivers that decode LZ4: their bytes as read... */
  snapshotBytesIn = 0;
  /** ...and on the link (an LZ4 block where it saved 1/8, else as read). */
  snapshotBytesOut = 0;
  /** Chunks that went as LZ4 blocks. */
  snapshotCompressedChunks = 0;
}

/**
 * Whether `version` is at or after `since` (numeric major.minor.patch; a
 * pre-release such as 0.2.0-rc.1 comes before its release, so it counts as
 * older). A version that does not parse counts as older.
 */
export function versionAtLeast(version: string, since: string): boolean {
  const a = parseVersion(version);
  const b = parseVersion(since);
  if (!a || !b) return false;
  for (let i = 0; i < 3; i++) if (a.parts[i] !== b.parts[i]) return a.parts[i]! > b.parts[i]!;
  return !a.pre || b.pre;
}

function parseVersion(v: string): { parts: number[]; pre: boolean } | undefined {
  const m = /^v?(\d{1,9})\.(\d{1,9})\.(\d{1,9})(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$/.exec(v);
  if (!m) return undefined;
  return { parts: [Number(m[1]), Number(m[2]), Number(m[3])], pre: m[4] !== undefined };
}

/** Whether every id in `members` has published a version that decodes COMPRESSED_WRITE. */
export function membersDecodeCompressed(members: Iterable<string>, publishedVersion: (id: string) => string | undefined): boolean {
  let any = false;
  for (const id of members) {
    any = true;
    const v = publishedVersion(id);
    if (v === undefined || !versionAtLeast(v, COMPRESSED_WRITE_SINCE)) return false;
  }
  return any;
}

const ZERO_CHUNK = Buffer.alloc(64 * 1024);

/** Whether every byte of `parts` is zero (compared 64 KiB at a time: memcmp speed). */
export function allZero(parts: readonly Buffer[]): boolean {
  for (const part of parts) {
    for (let at = 0; at < part.length; at += ZERO_CHUNK.length) {
      const n = Math.min(ZERO_CHUNK.length, part.length - at);
      if (ZERO_CHUNK.compare(part, at, at + n, 0, n) !== 0) return false;
    }
  }
  return true;
}

/**
 * The attempts of one device (the way btrfs stops compressing a file whose
 * data does not shrink): after limits.compressBackoffStreak attempts in a
 * row that did not pay, the next writes go as written without one, 1, 2, 4
 * ... up to limits.compressBackoffSkipMax of them after each further failed
 * attempt; one that pays starts over. Random, encrypted-above-us or already
 * compressed data then costs LZ4 on one write in compressBackoffSkipMax + 1,
 * and data that turns compressible is found within that many writes. Only
 * the proposer decides (the command carries its form), so replicas agree
 * whatever it chose.
 */
export class CompressionBackoff {
  /** Attempts in a row that did not pay. */
  private failures = 0;
  /** Writes still to send without an attempt. */
  private skip = 0;

  /** Whether this write is to be tried (false: skip it). */
  attempt(): boolean {
    if (this.skip === 0) return true;
    this.skip--;
    return false;
  }

  /** The outcome of a write that was tried. */
  outcome(paid: boolean): void {
    if (paid) {
      this.failures = 0;
      return;
    }
    this.failures++;
    const over = this.failures - limits.compressBackoffStreak;
    if (over >= 0) this.skip = Math.min(limits.compressBackoffSkipMax, 2 ** Math.min(over, 30));
  }
}

/** A write proposed as a smaller command: its encoder, whether it is a hole, the original length. */
export interface CompactWrite {
  encode: (id: RequestId) => Buffer;
  hole: boolean;
  length: number;
}

/**
 * What a plaintext write of `parts` at `offset` is proposed as: an encoder of
 * the smaller command, or undefined for a plain WRITE. The compression is
 * done here, once (a retried proposal re-encodes the same block).
 * `compressed`: whether COMPRESSED_WRITE may be proposed (mode lz4 and every
 * member decodes it); `mode` off turns off the zero detection too.
 */
export function compactWrite(
  mode: CompressionMode,
  compressed: boolean,
  deviceId: number,
  offset: number,
  parts: readonly Buffer[],
  stats: CompressionStats,
  backoff?: CompressionBackoff,
): CompactWrite | Promise<CompactWrite | undefined> | undefined {
  if (mode === 'off') return undefined;
  let length = 0;
  for (const part of parts) length += part.length;
  if (length === 0) return undefined;
  stats.bytesIn += length;
  if (allZero(parts)) {
    stats.zeroWrites++;
    return { encode: (id) => encodeWriteZeroes(id, deviceId, offset, length, false), hole: true, length };
  }
  if (!compressed || length < limits.compressWriteBytesMin) {
    stats.bytesOut += length;
    return undefined;
  }
  if (backoff && !backoff.attempt()) {
    stats.skippedWrites++;
    stats.bytesOut += length;
    return undefined;
  }
  if (length >= limits.compressProbeWriteBytesMin && !probeCompresses(parts, length)) {
    stats.incompressibleWrites++;
    stats.bytesOut += length;
    backoff?.outcome(false);
    return undefined;
  }
  const plain = parts.length === 1 ? parts[0]! : Buffer.concat(parts, length);
  const decide = (block: Buffer): CompactWrite | undefined => {
    if (!compressionPays(length, block.length)) {
      stats.incompressibleWrites++;
      stats.bytesOut += length;
      backoff?.outcome(false);
      return undefined;
    }
    backoff?.outcome(true);
    stats.compressedWrites++;
    stats.bytesOut += block.length;
    return { encode: (id) => rememberPlaintext(encodeCompressedWrite(id, deviceId, offset, block), plain), hole: false, length };
  };
  return length >= limits.compressAsyncBytesMin ? compressBlockAsync(plain).then(decide) : decide(compressBlock(plain));
}

/** `n` bytes of `parts` from byte `at` (a view when they lie in one part). */
function bytesAt(parts: readonly Buffer[], at: number, n: number): Buffer {
  let start = 0;
  for (let i = 0; i < parts.length; i++) {
    const part = parts[i]!;
    if (at < start + part.length) {
      const from = at - start;
      if (from + n <= part.length) return part.subarray(from, from + n);
      const out = Buffer.allocUnsafe(n);
      let done = part.copy(out, 0, from);
      for (let j = i + 1; j < parts.length && done < n; j++) done += parts[j]!.copy(out, done, 0, Math.min(parts[j]!.length, n - done));
      return out;
    }
    start += part.length;
  }
  return Buffer.alloc(0);
}

/**
 * Whether LZ4 shrinks any of three samples of the write (its start, middle
 * and end, limits.compressProbeBytes each) by 1/16 or more: a cheap guess,
 * looser than the 1/8 the whole write must save, so that a write that would
 * pay is rarely turned away.
 */
export function probeCompresses(parts: readonly Buffer[], length: number): boolean {
  const n = Math.min(limits.compressProbeBytes, length);
  const align = (v: number): number => Math.max(0, Math.min(length - n, v - (v % n)));
  for (const at of new Set([0, align(length / 2), align(length - n)])) {
    const block = compressBlock(bytesAt(parts, at, n));
    if (block.length <= n - n / 16) return true;
  }
  return false;
}
