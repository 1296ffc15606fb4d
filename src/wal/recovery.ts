// Recovery: rebuild the in-memory log from the segment files, decide where
// the log really ends, and refuse to start on anything but a torn tail.
//
// The writer has at most one batch in flight and writes a segment's first
// batch only after the previous segment is complete, so a crash can damage
// only the last batch of the last segment. Recovery therefore accepts:
//   - a last batch that does not verify, with nothing valid after it: a torn
//     write, cut off and zeroed so stale bytes can never be mistaken for data;
//   - a last segment whose header or baseline batch never became durable: it
//     never held an acknowledged append, and is removed.
// Everything else (a bad record with a valid batch after it, a bad batch in
// an earlier segment, a gap in the segment sequence, entries the remaining
// segments cannot account for) is corruption: WalCorruptError names the
// segment and offset, and the files are left as they are.

import { join } from 'node:path';
import type { Logger } from 'pino';
import type { ConfState, HardState, SnapshotMetadata } from '../raft/types.ts';
import type { DiskIo } from '../disk/disk-io.ts';
import { nativeDisk } from '../disk/native-disk.ts';
import * as native from '../native.ts';
import { WalCorruptError, WalMissingError } from './errors.ts';
import { MemoryLog } from './memory-log.ts';
import { alignUp, decodeRecord, recordHeaderBytes, RecordKind, SnapshotFlavour, type DecodedRecord } from './record.ts';
import { decodeSegmentHeader, listSegments, segmentFileName, preparedSegmentName, segmentHeaderBytes, syncDirectory, type SegmentHeader, type SegmentName } from './segment.ts';

export interface RecoveredSegment extends SegmentName {
  path: string;
  header: SegmentHeader;
  /** Aligned offset where the next batch goes. */
  end: number;
  nextBatchSeq: number;
}

export interface Recovered {
  memory: MemoryLog;
  /** Valid segments in sequence order; the last one is where appends continue. Empty for a fresh log. */
  segments: RecoveredSegment[];
}

type BatchScan =
  | { status: 'ok'; records: DecodedRecord[]; end: number }
  | { status: 'empty' }
  | { status: 'bad'; at: number; why: string };

function scanBatch(buf: Buffer, at: number, seq: number, salt: number): BatchScan {
  const head = decodeRecord(buf, at, buf.length, salt, native.crc32c);
  if (head.status === 'empty') return { status: 'empty' };
  if (head.status === 'bad') return { status: 'bad', at, why: `batch header: ${head.why}` };
  const h = head.record;
  if (h.kind !== RecordKind.Batch) return { status: 'bad', at, why: `expected a batch header, found record kind ${h.kind}` };
  if (h.index !== seq) return { status: 'bad', at, why: `batch sequence ${h.index}, expected ${seq}` };
  const limit = at + h.term;
  if (h.term < recordHeaderBytes || limit > buf.length) return { status: 'bad', at, why: `batch length ${h.term} out of range` };
  const records: DecodedRecord[] = [];
  let off = h.end;
  for (let i = 0; i < h.aux; i++) {
    const r = decodeRecord(buf, off, limit, salt, native.crc32c);
    if (r.status !== 'ok') return { status: 'bad', at: off, why: `record ${i} of batch ${seq}: ${r.status === 'bad' ? r.why : 'missing'}` };
    if (r.record.kind === RecordKind.Batch) return { status: 'bad', at: off, why: 'nested batch header' };
    records.push(r.record);
    off = r.record.end;
  }
  if (off !== limit) return { status: 'bad', at: off, why: `batch ${seq} has ${limit - off} bytes after its last record` };
  return { status: 'ok', records, end: limit };
}

/** Is there a batch header that verifies anywhere at or after `from` (aligned)? Then the log did not end before it. */
function findLaterBatch(buf: Buffer, from: number, alignment: number, salt: number): number | undefined {
  for (let at = alignUp(from, alignment); at + recordHeaderBytes <= buf.length; at += alignment) {
    if (buf[at + 8] !== RecordKind.Batch) continue;
    const r = decodeRecord(buf, at, buf.length, salt, native.crc32c);
    if (r.status === 'ok' && r.record.kind === RecordKind.Batch) return at;
  }
  return undefined;
}

export function decodeBaseline(records: DecodedRecord[]): { snapshot: SnapshotMetadata; hardState: HardState } | undefined {
  const snap = records.find((r) => r.kind === RecordKind.Snapshot && r.type === SnapshotFlavour.Baseline);
  const hs = records.find((r) => r.kind === RecordKind.HardState);
  if (!snap || !hs) return undefined;
  return { snapshot: decodeSnapshot(snap), hardState: decodeHardState(hs) };
}

export function decodeSnapshot(r: DecodedRecord): SnapshotMetadata {
  const confState = JSON.parse(r.payload.toString('utf8')) as ConfState;
  return { index: r.index, term: r.term, confState };
}

export function decodeHardState(r: DecodedRecord): HardState {
  return { term: r.term, commit: r.index, vote: r.payload.toString('utf8') };
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

function applyRecord(memory: MemoryLog, r: DecodedRecord): void {
  switch (r.kind) {
    case RecordKind.Entry:
      memory.append({ index: r.index, term: r.term, type: r.type, data: r.payload });
      return;
    case RecordKind.HardState:
      memory.setHardState(decodeHardState(r));
      return;
    case RecordKind.Snapshot:
      if (r.type === SnapshotFlavour.Compact) memory.compact(decodeSnapshot(r));
      else if (r.type === SnapshotFlavour.Reset) memory.applySnapshot(decodeSnapshot(r));
      return;
    case RecordKind.Batch:
    case RecordKind.Seal:
      return;
  }
}

/**
 * Overwrites the torn batch with zeros (written, not punched: holes would
 * bring back unwritten extents and their journal commits on the next append),
 * so its stale bytes can never be read as records again. In a fresh segment
 * that is everything up to the last non-zero byte. In a recycled one the old
 * bytes of the file's past follow (they verify under no salt of this
 * segment): the block at `from`, or the whole batch if its header verifies,
 * so that a zero block again ends the log.
 */
async function zeroTail(disk: DiskIo, path: string, buf: Buffer, from: number, header: SegmentHeader): Promise<void> {
  const { alignment, salt } = header;
  const chunk = 64 * 1024;
  const zeros = Buffer.alloc(chunk);
  let last = buf.length;
  if (header.recycled) {
    const torn = decodeRecord(buf, from, buf.length, salt, native.crc32c);
    const claimed = torn.status === 'ok' && torn.record.kind === RecordKind.Batch ? torn.record.term : 0;
    last = Math.min(buf.length, from + Math.max(alignment, claimed));
  }
  while (last > from) {
    const start = Math.max(from, last - chunk);
    if (buf.compare(zeros, 0, last - start, start, last) !== 0) break;
    last = start;
  }
  const to = Math.min(buf.length, alignUp(last, alignment));
  if (to <= from) return;
  const f = await disk.openFile(path);
  try {
    await disk.pwrite(f, Buffer.alloc(to - from), from);
    await disk.fdatasync(f);
  } finally {
    await disk.closeFile(f);
  }
}

/**
 * Writes the last segment's bytes up to the log's end back to the file and
 * syncs them before anything is appended after them. Recovery reads the page
 * cache, and a previous process's write whose fdatasync failed stays visible
 * there after a restart without a power cut (Linux marks such pages clean
 * without writing them, and no later fdatasync writes them): trusted as it
 * is, appended after, it would be lost at the next power cut with later
 * batches durable after it, and the segment would never open again
 * (simulator seed 17004348). Earlier segments were synced before the next one
 * began. Costs one write of the used part of one segment at start-up.
 */
async function writeBack(disk: DiskIo, path: string, buf: Buffer, end: number): Promise<void> {
  const f = await disk.openFile(path);
  try {
    await disk.pwrite(f, buf.subarray(0, end), 0);
    await disk.fdatasync(f);
  } finally {
    await disk.closeFile(f);
  }
}

/** A header that fails to verify may still be a bit flip over valid data: look with the salt it claims. */
function holdsBatches(buf: Buffer): boolean {
  if (buf.length < segmentHeaderBytes || buf.toString('latin1', 0, 8) !== 'XDWALSG1') return false;
  const salt = buf.readUInt32LE(32);
  const alignment = buf.readUInt32LE(36);
  if (alignment < recordHeaderBytes * 2 || (alignment & (alignment - 1)) !== 0 || alignment > buf.length) return false;
  return findLaterBatch(buf, alignment, alignment, salt) !== undefined;
}

export async function recover(dir: string, logger?: Logger, disk: DiskIo = nativeDisk): Promise<Recovered> {
  await disk.unlink(join(dir, preparedSegmentName)).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  const names = await listSegments(dir, disk);
  const memory = new MemoryLog();
  const segments: RecoveredSegment[] = [];
  for (let i = 1; i < names.length; i++) {
    if (names[i]!.seq !== names[i - 1]!.seq + 1) {
      throw new WalMissingError(names[i]!.name, `segment sequence jumps from ${names[i - 1]!.seq} to ${names[i]!.seq}: a segment is missing`);
    }
  }

  for (let i = 0; i < names.length; i++) {
    const name = names[i]!;
    const isLast = i === names.length - 1;
    const path = join(dir, name.name);
    // Payloads are slices of this buffer: the log keeps them without copying.
    let buf: Buffer = await disk.readFile(path);
    const decoded = decodeSegmentHeader(buf, native.crc32c);
    const alignment = decoded.ok ? decoded.header.alignment : 0;
    const salt = decoded.ok ? decoded.header.salt : 0;
    let valid = decoded.ok && alignment > 0 && (alignment & (alignment - 1)) === 0 && alignment >= recordHeaderBytes * 2;
    let why = decoded.ok ? 'bad alignment in header' : decoded.why;
    if (valid && decoded.ok && (decoded.header.seq !== name.seq || decoded.header.firstIndex !== name.firstIndex)) {
      valid = false;
      why = `header says seq ${decoded.header.seq} first index ${decoded.header.firstIndex}`;
    }
    if (!valid || !decoded.ok) {
      if (isLast && !holdsBatches(buf)) {
        // Created but never made durable before a crash: it held nothing acknowledged.
        logger?.warn({ segment: name.name, why }, 'removing a WAL segment whose creation did not complete');
        await disk.unlink(path);
        await syncDirectory(dir, disk);
        continue;
      }
      throw new WalCorruptError(name.name, 0, `segment header: ${why}`);
    }
    const header = decoded.header;

    // First find where the log ends in this segment, then apply: a segment is
    // judged whole before any of it reaches the in-memory log.
    let at = alignment;
    let seq = 1;
    const batches: Array<{ at: number; records: DecodedRecord[] }> = [];
    let sealedBy: number | undefined;
    let end: { status: 'empty' } | { status: 'bad'; at: number; why: string } = { status: 'empty' };
    while (at + recordHeaderBytes <= buf.length) {
      const scan = scanBatch(buf, at, seq, salt);
      if (scan.status !== 'ok') {
        end = scan;
        break;
      }
      if (seq === 1 && !decodeBaseline(scan.records)) {
        end = { status: 'bad', at, why: 'first batch has no baseline' };
        break;
      }
      batches.push({ at, records: scan.records });
      at = alignUp(scan.end, alignment);
      seq++;
      const seal = scan.records.find((r) => r.kind === RecordKind.Seal);
      if (seal) {
        if (scan.records.length !== 1 || seal.index !== name.seq + 1) {
          throw new WalCorruptError(name.name, batches.at(-1)!.at, `malformed seal (successor ${seal.index}, ${scan.records.length} records)`);
        }
        sealedBy = seal.index;
        break;
      }
    }

    const badAt = end.status === 'bad' ? end.at : at;
    const later = findLaterBatch(buf, at + alignment, alignment, salt);
    if (later !== undefined) {
      throw new WalCorruptError(name.name, badAt, `${end.status === 'bad' ? end.why : 'unwritten space'}, yet a valid batch follows at offset ${later}`);
    }
    if (end.status === 'bad') {
      if (!isLast) throw new WalCorruptError(name.name, badAt, end.why);
      if (batches.length === 0) {
        logger?.warn({ segment: name.name, why: end.why }, 'removing a WAL segment whose first batch never became durable');
        await disk.unlink(path);
        await syncDirectory(dir, disk);
        continue;
      }
      logger?.warn({ segment: name.name, offset: at, why: end.why, badAt }, 'truncating a torn WAL tail');
      await zeroTail(disk, path, buf, at, header);
    }
    if (batches.length === 0) {
      // A header and nothing after it: the write of the head was cut short
      // (a crash, a torn write) before the segment held anything. Appending
      // to it would write batches no baseline precedes.
      if (!isLast) throw new WalCorruptError(name.name, at, 'no baseline batch after the header');
      logger?.warn({ segment: name.name }, 'removing a WAL segment whose baseline never became durable');
      await disk.unlink(path);
      await syncDirectory(dir, disk);
      continue;
    }

    if (isLast) await writeBack(disk, path, buf, at);

    // Payloads stay slices of the segment buffer (no copy per entry), but a
    // mostly-empty last segment would pin its preallocated zeros: keep a
    // compact copy of the used part instead and re-slice into it.
    if (at < buf.length / 2) {
      const compact = Buffer.from(buf.subarray(0, at));
      const base = buf.byteOffset;
      for (const b of batches) {
        for (const r of b.records) r.payload = compact.subarray(r.payload.byteOffset - base, r.payload.byteOffset - base + r.payload.length);
      }
      buf = compact;
    }

    for (const [n, batch] of batches.entries()) {
      if (n === 0) {
        const baseline = decodeBaseline(batch.records)!;
        if (segments.length === 0) {
          memory.reset(baseline.snapshot, baseline.hardState, header.firstIndex - 1);
        } else if (
          memory.lastIndex() !== header.firstIndex - 1 ||
          memory.snapshot.index !== baseline.snapshot.index ||
          !sameHardState(memory.hardState, baseline.hardState)
        ) {
          throw new WalCorruptError(
            name.name,
            batch.at,
            `baseline (last index ${header.firstIndex - 1}, snapshot ${baseline.snapshot.index}) disagrees with the segments before it (last index ${memory.lastIndex()}, snapshot ${memory.snapshot.index})`,
          );
        }
      }
      try {
        for (const r of batch.records) applyRecord(memory, r);
      } catch (err) {
        throw new WalCorruptError(name.name, batch.at, `batch ${n + 1} does not apply: ${(err as Error).message}`);
      }
    }
    if (sealedBy !== undefined && isLast) {
      throw new WalMissingError(
        segmentFileName(sealedBy, memory.lastIndex() + 1),
        `segment ${name.name} was sealed when segment ${sealedBy} was started, but no such segment is in ${dir}: the last segment is missing (restore it; the node will not start without it)`,
      );
    }
    segments.push({ ...name, path, header, end: at, nextBatchSeq: seq });
  }

  if (segments.length > 0 && memory.unknownThrough > memory.snapshot.index) {
    throw new WalMissingError(segments[0]!.name, `entries ${memory.snapshot.index + 1}..${memory.unknownThrough} are in no segment: an earlier segment is missing`);
  }
  if (memory.hardState.commit > memory.lastIndex()) {
    const last = segments.at(-1);
    throw new WalCorruptError(last?.name ?? '(none)', last?.end ?? 0, `commit index ${memory.hardState.commit} is beyond the last entry ${memory.lastIndex()}: a segment is missing`);
  }
  return { memory, segments };
}
