// Group commit: the one place that writes segment files.
//
// Saves queue up while a batch is in flight; when it completes, everything
// queued (up to batchBytesMax) goes out as the next batch: one aligned pwrite
// and one fdatasync, issued back to back (the addon keeps per-file order: on
// the file's I/O thread by default, as one linked write+fsync chain with
// XDEVICE_IO=uring), so the sync covers the write without a round trip to the
// event loop in between. A save's promise resolves only after the
// fdatasync of its batch. The batch is encoded into one reusable aligned
// staging buffer: the payload bytes are copied exactly once, which O_DIRECT
// needs anyway (caller buffers are not aligned).
//
// The first I/O error is final: the page cache can no longer be trusted, so
// the writer rejects the failed batch, everything queued, and every later
// save with the same WalFailedError.

import { join } from 'node:path';
import type { Logger } from 'pino';
import type { HardState, SnapshotMetadata } from '../raft/types.ts';
import type { DiskFile, DiskIo } from '../disk/disk-io.ts';
import * as native from '../native.ts';
import { assert } from '../errors.ts';
import { WalClosedError, WalFailedError, WalUsageError } from './errors.ts';
import {
  alignUp,
  encodeBatchHeader,
  encodeRecord,
  unreadableRecord,
  recordBytes,
  recordHeaderBytes,
  RecordKind,
  SnapshotFlavour,
  type RecordSpec,
} from './record.ts';
import type { SegmentPool } from './recycle.ts';
import { encodeSegmentHeader, nextSalt, preallocateSegmentFile, preparedSegmentName, segmentFileName, syncDirectory } from './segment.ts';

/** The staging buffer's first size; it doubles up to batchBytesMax as batches need. */
const stagingInitialBytes = 256 * 1024;

/** What a segment created after a save must start from (its baseline). */
export interface LogState {
  lastIndex: number;
  hardState: HardState;
  snapshot: SnapshotMetadata;
}

export interface ActiveSegment {
  name: string;
  path: string;
  seq: number;
  firstIndex: number;
  file: DiskFile;
  salt: number;
  alignment: number;
  segmentBytes: number;
  /** A recycled file: every batch is written followed by a zero block (segment.ts). */
  recycled: boolean;
  /** Aligned offset of the next batch. */
  offset: number;
  nextBatchSeq: number;
}

export interface WriterOptions {
  dir: string;
  disk: DiskIo;
  /** Runs fn once the current turn's saves are in (setImmediate; a simulator passes its own). */
  defer: (fn: () => void) => void;
  /** A new log's first salt, in [1, 2^32 - 1) (random; a simulator passes a seeded source); later segments chain on. */
  salt: () => number;
  /** Obsolete segment files to start new segments in before preallocating one. */
  pool: SegmentPool;
  direct: boolean;
  /**
   * How a batch is made durable. 'dsync' (default): segments are opened
   * O_DSYNC and the batch's single pwrite returns once durable, one syscall
   * and one thread hop fewer than 'fdatasync': pwrite then fdatasync.
   */
  syncMode: 'dsync' | 'fdatasync';
  segmentBytes: number;
  alignment: number;
  batchBytesMax: number;
  logger?: Logger;
  /** Called after a new segment is durable (its name is in the directory). */
  onSegmentCreated?: (segment: ActiveSegment) => void;
  /** Called after each data batch is durable, with the time of the call that made it so (metrics). */
  onBatchDurable?: (e: BatchDurable) => void;
  /** TEST ONLY, a planted bug for the simulator's self-test: in 'fdatasync' mode, every Nth batch gets no fdatasync. */
  testingSkipSyncEvery?: number | undefined;
}

export interface BatchDurable {
  /** Padded bytes written. */
  bytes: number;
  /**
   * Seconds of the call that made the batch durable: the fdatasync
   * ('fdatasync' mode), or the O_DSYNC pwrite, inside which the kernel syncs ('dsync').
   */
  syncSeconds: number;
}

interface PendingSave {
  records: RecordSpec[];
  bytes: number;
  after: LogState;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class GroupCommitWriter {
  /** Data batches written (for testingSkipSyncEvery). */
  private batchesWritten = 0;
  private readonly queue: PendingSave[] = [];
  private inFlight = false;
  private flushScheduled = false;
  private failed: WalFailedError | undefined;
  private closing = false;
  private idleWaiters: Array<() => void> = [];
  private staging: Buffer;
  private active: ActiveSegment | undefined;
  private prepared: Promise<{ file: DiskFile; recycled: boolean }> | undefined;
  /** The state after the last durable batch: a new segment's baseline. */
  private durable: LogState;

  private constructor(
    private readonly opts: WriterOptions,
    active: ActiveSegment | undefined,
    durable: LogState,
  ) {
    this.active = active;
    this.durable = durable;
    // Grown on demand up to batchBytesMax: most batches are small, and a
    // full-size staging buffer per open cost 8 MiB of zeroed memory each time.
    this.staging = opts.disk.allocAligned(Math.min(opts.batchBytesMax, stagingInitialBytes) + opts.alignment, opts.alignment);
  }

  /** Continues appending to `active` (a recovered segment), or creates the first segment when there is none. */
  static async start(opts: WriterOptions, active: ActiveSegment | undefined, state: LogState): Promise<GroupCommitWriter> {
    const writer = new GroupCommitWriter(opts, active, state);
    if (active) writer.prepareNext();
    else await writer.createSegment(1, state);
    return writer;
  }

  /** The most a single save may hold (it must fit an empty segment next to the header and baseline). */
  saveBytesMax(): number {
    // header block, a baseline of up to two blocks, and the batch's own padding
    return this.opts.segmentBytes - 4 * this.opts.alignment;
  }

  /** Sequence number of the segment being appended to (Infinity once closed). */
  activeSeq(): number {
    return this.active?.seq ?? Number.POSITIVE_INFINITY;
  }

  segment(): ActiveSegment {
    assert(this.active, 'no active segment');
    return this.active;
  }

  /** Why `records` cannot be submitted, checked before the caller changes its in-memory view. */
  refusal(records: RecordSpec[]): Error | undefined {
    if (this.failed) return this.failed;
    if (this.closing) return new WalClosedError();
    for (const r of records) {
      const unreadable = unreadableRecord(r);
      if (unreadable) return new WalUsageError(unreadable);
    }
    const bytes = this.bytesOf(records);
    if (bytes > this.saveBytesMax()) return new WalUsageError(`a save of ${bytes} bytes does not fit a segment (at most ${this.saveBytesMax()})`);
    return undefined;
  }

  private bytesOf(records: RecordSpec[]): number {
    let bytes = 0;
    for (const r of records) bytes += recordBytes(r.payload.length);
    return bytes;
  }

  submit(records: RecordSpec[], after: LogState): Promise<void> {
    const refused = this.refusal(records);
    if (refused) return Promise.reject(refused);
    const bytes = this.bytesOf(records);
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ records, bytes, after, resolve, reject });
      this.scheduleFlush();
    });
  }

  /** Waits for every submitted save, then closes the segment file. Later saves are refused. */
  async close(): Promise<void> {
    this.closing = true;
    while (this.inFlight || this.queue.length > 0) {
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
    await this.discardPrepared();
    if (this.active) {
      const file = this.active.file;
      this.active = undefined;
      await this.opts.disk.closeFile(file);
    }
  }

  /** Resolves once the next segment is preallocated (or its preparation failed, which the roll will report). */
  async nextSegmentPrepared(): Promise<void> {
    await this.prepared?.catch(() => undefined);
  }

  failure(): WalFailedError | undefined {
    return this.failed;
  }

  /**
   * Flushes at the end of this event-loop turn, not at once: every save made
   * in the same turn (above all, by the continuations of the saves the last
   * batch just resolved) joins one batch. Flushing on the first submit would
   * send a batch of one and make everyone else wait a whole extra fdatasync.
   */
  private scheduleFlush(): void {
    if (this.flushScheduled || this.inFlight) return;
    this.flushScheduled = true;
    this.opts.defer(this.flushSoon);
  }

  private readonly flushSoon = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  private flush(): void {
    if (this.inFlight || this.queue.length === 0) return;
    let bytes = recordHeaderBytes;
    let count = 0;
    while (count < this.queue.length) {
      const next = this.queue[count]!;
      if (count > 0 && bytes + next.bytes > Math.min(this.opts.batchBytesMax, this.saveBytesMax())) break;
      bytes += next.bytes;
      count++;
    }
    const batch = this.queue.splice(0, count);
    this.inFlight = true;
    this.writeBatch(batch, bytes).then(
      () => {
        this.durable = batch[batch.length - 1]!.after;
        for (const s of batch) s.resolve();
        this.settled();
      },
      (err: unknown) => {
        this.fail(err, batch);
        this.settled();
      },
    );
  }

  private settled(): void {
    this.inFlight = false;
    if (this.failed) {
      for (const s of this.queue.splice(0)) s.reject(this.failed);
    }
    if (this.queue.length > 0) this.scheduleFlush();
    if (!this.inFlight && this.queue.length === 0) {
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private fail(err: unknown, batch: PendingSave[]): void {
    this.failed ??= new WalFailedError(err);
    this.opts.logger?.error({ err }, 'WAL write failed: refusing all further appends');
    for (const s of batch) s.reject(this.failed);
  }

  private async writeBatch(batch: PendingSave[], bytes: number): Promise<void> {
    const { alignment, disk } = this.opts;
    const padded = alignUp(bytes, alignment);
    let segment = this.segment();
    // One block at the end of every segment stays free for its seal: the zero block a recycled segment writes after each batch goes there.
    let sealing: ActiveSegment | undefined;
    if (segment.offset + padded + alignment > segment.segmentBytes) {
      sealing = { ...segment };
      await this.createSegment(segment.seq + 1, this.durable);
      segment = this.segment();
      assert(segment.offset + padded + alignment <= segment.segmentBytes, `a ${padded}-byte batch does not fit a new segment`);
    }
    const created = sealing !== undefined;
    const written = padded + (segment.recycled ? alignment : 0);
    if (this.staging.length < written) {
      const grown = Math.min(2 * this.staging.length, this.opts.batchBytesMax + 2 * alignment);
      this.staging = disk.allocAligned(Math.max(written, grown), alignment);
    }
    const buf = this.staging;
    let at = recordHeaderBytes;
    let count = 0;
    for (const save of batch) {
      for (const r of save.records) {
        at = encodeRecord(buf, at, r, segment.salt, native.crc32c);
        count++;
      }
    }
    assert(at === bytes, `batch encoded to ${at} bytes, expected ${bytes}`);
    encodeBatchHeader(buf, 0, bytes, segment.nextBatchSeq, count, segment.salt, native.crc32c);
    buf.fill(0, bytes, written);
    const started = process.hrtime.bigint();
    let writeDone = started;
    const write = disk.pwrite(segment.file, buf.subarray(0, written), segment.offset);
    const pending: Promise<unknown>[] = [write];
    // Queued right behind the write (same I/O thread, or linked in one io_uring chain): no event-loop round trip between them.
    const skip = this.opts.testingSkipSyncEvery !== undefined && ++this.batchesWritten % this.opts.testingSkipSyncEvery === 0;
    if (this.opts.syncMode === 'fdatasync' && !skip) {
      void write.then(() => (writeDone = process.hrtime.bigint()), () => undefined);
      pending.push(disk.fdatasync(segment.file));
    }
    if (created) pending.push(syncDirectory(this.opts.dir, disk));
    await Promise.all(pending);
    if (this.opts.onBatchDurable) {
      const syncStarted = this.opts.syncMode === 'fdatasync' ? writeDone : started;
      this.opts.onBatchDurable({ bytes: written, syncSeconds: Number(process.hrtime.bigint() - syncStarted) / 1e9 });
    }
    segment.offset += padded;
    segment.nextBatchSeq++;
    // Only now that the successor holds a durable batch: a crash before this
    // leaves an unsealed segment and a successor recovery may drop as never started.
    if (sealing) await this.seal(sealing, segment.seq);
  }

  /** Writes the Seal batch into the (already closed) segment `s`, naming its successor. */
  private async seal(s: ActiveSegment, successor: number): Promise<void> {
    const { disk } = this.opts;
    const block = disk.allocAligned(s.alignment, s.alignment);
    block.fill(0);
    const end = encodeRecord(block, recordHeaderBytes, { kind: RecordKind.Seal, type: 0, term: 0, index: successor, payload: Buffer.alloc(0) }, s.salt, native.crc32c);
    encodeBatchHeader(block, 0, end, s.nextBatchSeq, 1, s.salt, native.crc32c);
    const file = await disk.openFile(s.path, { direct: this.opts.direct });
    try {
      await disk.pwrite(file, block, s.offset);
      await disk.fdatasync(file);
    } finally {
      await disk.closeFile(file);
    }
  }

  /**
   * Creates, preallocates and starts segment `seq`: header block plus a
   * baseline batch (the snapshot and hard state as of `state`), so that every
   * segment can be replayed without the ones before it once they are compacted.
   * The head is durable before the first data batch is written (O_DSYNC, or
   * its own fdatasync): a crash before that leaves a last segment without a
   * valid baseline and with nothing after it, which recovery removes. (Made
   * durable only by the first batch's fdatasync, the two could land in either
   * order: a durable batch behind a torn baseline, which recovery must call
   * corrupt. The simulated disk found that.)
   */
  private async createSegment(seq: number, state: LogState): Promise<void> {
    const { alignment, segmentBytes, dir, direct, disk } = this.opts;
    const firstIndex = state.lastIndex + 1;
    const name = segmentFileName(seq, firstIndex);
    const path = join(dir, name);
    // Chained, so that no batch an old file of this directory holds verifies in a new segment.
    const salt = this.active ? nextSalt(this.active.salt) : this.opts.salt();
    let file: DiskFile;
    let recycled = false;
    if (this.prepared) {
      ({ file, recycled } = await this.prepared);
      this.prepared = undefined;
      // Under its final name only now: a crash before the baseline is durable
      // leaves a last segment recovery recognises as never started.
      await disk.rename(join(dir, preparedSegmentName), path);
    } else {
      file = await preallocateSegmentFile(path, segmentBytes, direct, disk);
      this.opts.pool.counts.preallocated++;
    }
    if (this.opts.syncMode === 'dsync') {
      // Zero-filling ran without O_DSYNC (one fdatasync at its end); appends use it.
      const zeroed = file;
      file = await disk.openFile(path, { direct, dsync: true });
      await disk.closeFile(zeroed);
    }
    try {
      const baseline: RecordSpec[] = [
        {
          kind: RecordKind.Snapshot,
          type: SnapshotFlavour.Baseline,
          term: state.snapshot.term,
          index: state.snapshot.index,
          payload: Buffer.from(JSON.stringify(state.snapshot.confState)),
        },
        hardStateRecord(state.hardState),
      ];
      const baselineBytes = recordHeaderBytes + baseline.reduce((n, r) => n + recordBytes(r.payload.length), 0);
      const end = alignment + alignUp(baselineBytes, alignment);
      // A recycled file's old bytes follow the baseline: a zero block ends it, as after every batch.
      const head = disk.allocAligned(end + (recycled ? alignment : 0), alignment);
      head.fill(0);
      encodeSegmentHeader(head, { seq, firstIndex, salt, alignment, segmentBytes, recycled }, native.crc32c);
      let at = alignment + recordHeaderBytes;
      for (const r of baseline) at = encodeRecord(head, at, r, salt, native.crc32c);
      encodeBatchHeader(head, alignment, baselineBytes, 1, baseline.length, salt, native.crc32c);
      await disk.pwrite(file, head, 0);
      const previous = this.active;
      this.active = { name, path, seq, firstIndex, file, salt, alignment, segmentBytes, recycled, offset: end, nextBatchSeq: 2 };
      if (previous) await disk.closeFile(previous.file);
      if (seq === 1) {
        // No data batch follows yet: make the empty log durable now.
        await disk.fdatasync(file);
        await syncDirectory(dir, disk);
      } else if (this.opts.syncMode === 'fdatasync') {
        // Once per segment: the baseline must be down before a batch after it can be.
        await disk.fdatasync(file);
      }
    } catch (err) {
      if (this.active?.file !== file) await disk.closeFile(file).catch(() => undefined);
      throw err;
    }
    this.opts.onSegmentCreated?.(this.active);
    this.prepareNext();
  }

  /**
   * Prepares the next segment's file in the background, so a roll costs a
   * rename: a recycled one when the pool has one, else a preallocated one.
   */
  private prepareNext(): void {
    const { disk, pool, alignment, direct, segmentBytes } = this.opts;
    const path = join(this.opts.dir, preparedSegmentName);
    const prepared = disk
      .unlink(path)
      .catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      })
      .then(async () => {
        const reused = await pool.takePrepared(alignment, direct);
        if (reused) return { file: reused, recycled: true };
        const file = await preallocateSegmentFile(path, segmentBytes, direct, disk);
        pool.counts.preallocated++;
        return { file, recycled: false };
      });
    prepared.catch(() => undefined); // a failure surfaces at the roll that needs it
    this.prepared = prepared;
  }

  private async discardPrepared(): Promise<void> {
    const prepared = this.prepared;
    this.prepared = undefined;
    if (!prepared) return;
    const file = (await prepared.catch(() => undefined))?.file;
    if (!file) {
      await this.opts.disk.unlink(join(this.opts.dir, preparedSegmentName)).catch(() => undefined);
      return;
    }
    await this.opts.disk.closeFile(file).catch(() => undefined);
    // Kept for the next open (named for the segment it would have become); deleted if the pool is full.
    await this.opts.pool.giveBack(this.active?.seq === undefined ? 0 : this.active.seq + 1).catch(() => undefined);
  }
}

export function hardStateRecord(hs: HardState): RecordSpec {
  return { kind: RecordKind.HardState, type: 0, term: hs.term, index: hs.commit, payload: Buffer.from(hs.vote, 'utf8') };
}
