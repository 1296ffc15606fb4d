// Segment files: naming, the header block, listing a WAL directory.
//
// A segment is a preallocated file named `<seq>-<firstIndex>.wal` (16 hex
// digits each). The sequence number orders segments and exposes a missing
// one; the first index is the index the segment's first entry would have had
// if no conflict truncated the log (everything at or below firstIndex-1 that
// is still live lives in earlier segments). Both are needed: after a Raft
// log overwrite a later segment can start at a lower index than an earlier one.
//
// The first alignment block holds the header:
//   0  8 bytes  magic "XDWALSG1"
//   8  u32      crc32c of bytes [12, 64)
//  12  u32      format version (1; 2 for a recycled segment)
//  16  u64      seq
//  24  u64      firstIndex
//  32  u32      salt (seeds every record CRC in this segment)
//  36  u32      alignment the batches were written with
//  40  u64      preallocated size
//  48  u32      flags (version 2): bit 0 = recycled
//  52..64       zero
// Batches start at offset `alignment`.
//
// Salts form a chain: a segment's salt is its predecessor's plus one (only a
// new log's first segment draws a random one), so no two segments of a
// directory ever share one. A recycled segment (recycle.ts) is an obsolete
// segment's file reused: past the log it holds that file's old batches, every
// one checksummed under an older salt. A CRC seeded with a different salt
// differs for the same bytes (crc32c is affine in its seed), so an old batch
// can never verify in its new segment. Old bytes are not zeros, though, so
// in a recycled segment every batch is written followed by one zero block: the
// end of the log looks as it does in a fresh segment. Version 2 makes an older
// build refuse such a segment instead of misreading its old bytes.

import type { DiskFile, DiskIo } from '../disk/disk-io.ts';
import { nativeDisk } from '../disk/native-disk.ts';

export const segmentHeaderBytes = 64;
const magic = Buffer.from('XDWALSG1', 'latin1');
const formatVersion = 1;
const recycledFormatVersion = 2;
const recycledFlag = 1;
const namePattern = /^([0-9a-f]{16})-([0-9a-f]{16})\.wal$/;

export interface SegmentHeader {
  seq: number;
  firstIndex: number;
  salt: number;
  alignment: number;
  segmentBytes: number;
  /** The file held another segment before: bytes past the log are old batches, not zeros. */
  recycled: boolean;
}

/** The salt of the segment after one salted `salt`: salts stay in [1, 2^32 - 1) and never repeat within 2^32 - 2 segments. */
export function nextSalt(salt: number): number {
  return salt >= 0xffff_fffe ? 1 : salt + 1;
}

export interface SegmentName {
  name: string;
  seq: number;
  firstIndex: number;
}

const hex16 = (n: number) => n.toString(16).padStart(16, '0');

export function segmentFileName(seq: number, firstIndex: number): string {
  return `${hex16(seq)}-${hex16(firstIndex)}.wal`;
}

export function parseSegmentFileName(name: string): SegmentName | undefined {
  const m = namePattern.exec(name);
  if (!m) return undefined;
  const seq = Number.parseInt(m[1]!, 16);
  const firstIndex = Number.parseInt(m[2]!, 16);
  if (!Number.isSafeInteger(seq) || !Number.isSafeInteger(firstIndex)) return undefined;
  return { name, seq, firstIndex };
}

/** The segment files of a WAL directory in sequence order; other files are ignored. */
export async function listSegments(dir: string, disk: DiskIo = nativeDisk): Promise<SegmentName[]> {
  const names = await disk.readdir(dir);
  return names
    .map(parseSegmentFileName)
    .filter((s): s is SegmentName => s !== undefined)
    .sort((a, b) => a.seq - b.seq);
}

export function encodeSegmentHeader(buf: Buffer, h: SegmentHeader, crc32c: (d: Uint8Array, i?: number) => number): void {
  buf.fill(0, 0, segmentHeaderBytes);
  magic.copy(buf, 0);
  buf.writeUInt32LE(h.recycled ? recycledFormatVersion : formatVersion, 12);
  buf.writeUInt32LE(h.seq % 0x1_0000_0000, 16);
  buf.writeUInt32LE(Math.floor(h.seq / 0x1_0000_0000), 20);
  buf.writeUInt32LE(h.firstIndex % 0x1_0000_0000, 24);
  buf.writeUInt32LE(Math.floor(h.firstIndex / 0x1_0000_0000), 28);
  buf.writeUInt32LE(h.salt >>> 0, 32);
  buf.writeUInt32LE(h.alignment, 36);
  buf.writeUInt32LE(h.segmentBytes % 0x1_0000_0000, 40);
  buf.writeUInt32LE(Math.floor(h.segmentBytes / 0x1_0000_0000), 44);
  if (h.recycled) buf.writeUInt32LE(recycledFlag, 48);
  buf.writeUInt32LE(crc32c(buf.subarray(12, segmentHeaderBytes)), 8);
}

export function decodeSegmentHeader(
  buf: Buffer,
  crc32c: (d: Uint8Array, i?: number) => number,
): { ok: true; header: SegmentHeader } | { ok: false; why: string } {
  if (buf.length < segmentHeaderBytes) return { ok: false, why: 'file shorter than a segment header' };
  if (!buf.subarray(0, 8).equals(magic)) return { ok: false, why: 'bad magic' };
  if (crc32c(buf.subarray(12, segmentHeaderBytes)) !== buf.readUInt32LE(8)) return { ok: false, why: 'header checksum mismatch' };
  const version = buf.readUInt32LE(12);
  if (version !== formatVersion && version !== recycledFormatVersion) return { ok: false, why: `unsupported format version ${version}` };
  const flags = buf.readUInt32LE(48);
  if ((version === formatVersion && flags !== 0) || (version === recycledFormatVersion && flags !== recycledFlag)) {
    return { ok: false, why: `flags ${flags} do not belong to format version ${version}` };
  }
  const u64 = (at: number) => buf.readUInt32LE(at + 4) * 0x1_0000_0000 + buf.readUInt32LE(at);
  return {
    ok: true,
    header: {
      seq: u64(16),
      firstIndex: u64(24),
      salt: buf.readUInt32LE(32),
      alignment: buf.readUInt32LE(36),
      segmentBytes: u64(40),
      recycled: version === recycledFormatVersion,
    },
  };
}

/** fsync of the directory: makes a created, renamed or removed segment name durable. */
export function syncDirectory(dir: string, disk: DiskIo = nativeDisk): Promise<void> {
  return disk.syncDir(dir);
}

/**
 * Creates a segment file of `bytes`, allocated (fallocate: no zeros are
 * written, its extents read as zeros) and synced. Only for a segment no
 * obsolete file can be recycled into (recycle.ts): the first write into an
 * unwritten extent makes that write's sync commit the filesystem journal too,
 * a slower append for the first use of the file only.
 */
export async function preallocateSegmentFile(path: string, bytes: number, direct: boolean, disk: DiskIo = nativeDisk): Promise<DiskFile> {
  const file = await disk.openFile(path, { direct, create: true });
  try {
    await disk.fallocate(file, 0, bytes);
    await disk.fdatasync(file);
  } catch (err) {
    await disk.closeFile(file).catch(() => undefined);
    throw err;
  }
  return file;
}

/** Name of the segment being prepared ahead of need; recovery removes a leftover one. */
export const preparedSegmentName = 'next-segment.tmp';
