// The write-ahead log the Raft log lives in: Storage for Raft's reads (served
// from memory), save/compact/applySnapshot for the runtime's writes (made
// durable by group commit), recovery on open.
//
// The in-memory view changes when a write is submitted, not when it becomes
// durable: a later save must see the earlier one (to place its entries and
// truncate correctly), and Raft only acts on durability through the promise.

import { randomInt } from 'node:crypto';
import type { Logger } from 'pino';
import type { DiskIo } from '../disk/disk-io.ts';
import { nativeDisk } from '../disk/native-disk.ts';
import { limits } from '../limits.ts';
import { StorageError, type Storage } from '../raft/storage.ts';
import type { ConfState, Entry, HardState, SnapshotMetadata } from '../raft/types.ts';
import { WalClosedError, WalUsageError } from './errors.ts';
import { GroupCommitWriter, hardStateRecord, type ActiveSegment, type BatchDurable, type LogState } from './group-commit.ts';

export type { BatchDurable } from './group-commit.ts';
import type { MemoryLog } from './memory-log.ts';
import { RecordKind, SnapshotFlavour, type RecordSpec } from './record.ts';
import { recover } from './recovery.ts';
import { SegmentPool, type RecycleCounts } from './recycle.ts';

export interface WalOptions {
  logger?: Logger;
  /** O_DIRECT writes (default true; falls back to buffered + fdatasync where refused). */
  direct?: boolean;
  /** 'dsync' (default): O_DSYNC writes; 'fdatasync': plain writes each followed by fdatasync. */
  syncMode?: 'dsync' | 'fdatasync';
  /** Overrides of limits.walSegmentBytes / walAlignmentBytes / walBatchBytesMax / walRecycledSegments (tests use small segments). */
  segmentBytes?: number;
  recycledSegments?: number;
  alignmentBytes?: number;
  batchBytesMax?: number;
  /** Where the segment files live (default: the real disk; the simulator passes a simulated one). */
  disk?: DiskIo;
  /** Defers the group-commit flush to the end of the turn (default setImmediate). */
  defer?: (fn: () => void) => void;
  /** Draws a new log's first salt, in [1, 2^32 - 1) (default crypto randomInt; a simulator passes a seeded one); later segments chain on. */
  salt?: () => number;
  /** TEST ONLY (simulator self-test): in 'fdatasync' mode, every Nth group commit skips its fdatasync. */
  testingSkipSyncEvery?: number;
}

const randomSalt = (): number => randomInt(1, 0xffff_ffff);

interface SegmentRef {
  name: string;
  path: string;
  seq: number;
  firstIndex: number;
}

export class Wal implements Storage {
  /** Set by the runtime to observe each durable batch (the fsync histogram). */
  onBatchDurable: ((e: BatchDurable) => void) | undefined;
  private closed = false;
  private deleting: Promise<void> = Promise.resolve();

  private constructor(
    private readonly dir: string,
    private readonly memory: MemoryLog,
    private readonly writer: GroupCommitWriter,
    private readonly segments: SegmentRef[],
    private readonly logger: Logger | undefined,
    private readonly pool: SegmentPool,
  ) {}

  /** Opens (creating if needed) the WAL in `dir` and recovers it; throws WalCorruptError on damage before the tail. */
  static async open(dir: string, opts: WalOptions = {}): Promise<Wal> {
    const disk = opts.disk ?? nativeDisk;
    await disk.mkdir(dir, { recursive: true });
    const { memory, segments } = await recover(dir, opts.logger, disk);
    const segmentRefs: SegmentRef[] = segments.map((s) => ({ name: s.name, path: s.path, seq: s.seq, firstIndex: s.firstIndex }));
    const last = segments.at(-1);
    const alignment = last?.header.alignment ?? opts.alignmentBytes ?? limits.walAlignmentBytes;
    const direct = opts.direct ?? true;
    const segmentBytes = opts.segmentBytes ?? limits.walSegmentBytes;
    const pool = await SegmentPool.open(dir, disk, opts.recycledSegments ?? limits.walRecycledSegments, segmentBytes, segments.length > 0);
    const syncMode = opts.syncMode ?? 'dsync';
    let active: ActiveSegment | undefined;
    if (last) {
      const file = await disk.openFile(last.path, { direct, dsync: syncMode === 'dsync' });
      active = {
        name: last.name,
        path: last.path,
        seq: last.seq,
        firstIndex: last.firstIndex,
        file,
        salt: last.header.salt,
        alignment,
        segmentBytes: last.header.segmentBytes,
        recycled: last.header.recycled,
        offset: last.end,
        nextBatchSeq: last.nextBatchSeq,
      };
    }
    const state: LogState = { lastIndex: memory.lastIndex(), hardState: memory.hardState, snapshot: memory.snapshot };
    let wal: Wal | undefined;
    const writer = await GroupCommitWriter.start(
      {
        dir,
        disk,
        defer: opts.defer ?? setImmediate,
        salt: opts.salt ?? randomSalt,
        direct,
        syncMode,
        segmentBytes,
        alignment,
        pool,
        batchBytesMax: opts.batchBytesMax ?? limits.walBatchBytesMax,
        logger: opts.logger,
        onSegmentCreated: (s) => segmentRefs.push({ name: s.name, path: s.path, seq: s.seq, firstIndex: s.firstIndex }),
        onBatchDurable: (e) => wal?.onBatchDurable?.(e),
        testingSkipSyncEvery: opts.testingSkipSyncEvery,
      },
      active,
      state,
    );
    opts.logger?.info(
      { dir, segments: segmentRefs.length, firstIndex: memory.firstIndex(), lastIndex: memory.lastIndex() },
      'WAL recovered',
    );
    wal = new Wal(dir, memory, writer, segmentRefs, opts.logger, pool);
    return wal;
  }

  /**
   * Makes hard state and entries durable in one group commit. Entries must be
   * contiguous; the first may be at or below lastIndex(), which durably
   * replaces the conflicting suffix (Raft log overwrite). Entries at or below
   * the snapshot index are already compacted and ignored.
   */
  save(batch: { hardState?: HardState; entries?: Entry[] }): Promise<void> {
    const refused = this.refusal();
    if (refused) return Promise.reject(refused);
    let entries = batch.entries ?? [];
    const skip = entries.findIndex((e) => e.index > this.memory.snapshot.index);
    entries = skip < 0 ? [] : skip > 0 ? entries.slice(skip) : entries;
    if (entries.length > 0) {
      const first = entries[0]!.index;
      if (first > this.memory.lastIndex() + 1) {
        return Promise.reject(new WalUsageError(`entry ${first} would leave a gap after ${this.memory.lastIndex()}`));
      }
      for (let i = 1; i < entries.length; i++) {
        if (entries[i]!.index !== first + i) {
          return Promise.reject(new WalUsageError(`entries not contiguous: ${entries[i]!.index} after ${first + i - 1}`));
        }
      }
    }
    if (entries.length === 0 && !batch.hardState) return Promise.resolve();
    const records: RecordSpec[] = [];
    for (const e of entries) {
      records.push({ kind: RecordKind.Entry, type: e.type, term: e.term, index: e.index, payload: e.data });
    }
    if (batch.hardState) records.push(hardStateRecord(batch.hardState));
    const refusal = this.writer.refusal(records);
    if (refusal) return Promise.reject(refusal);
    const submitted = this.writer.submit(records, this.stateAfter(entries, batch.hardState));
    for (const e of entries) this.memory.append(e);
    if (batch.hardState) this.memory.setHardState({ ...batch.hardState });
    return submitted;
  }

  /** Drops everything up to snapshot.index once the compaction is durable; segments wholly below it are recycled or deleted. */
  async compact(snapshot: SnapshotMetadata): Promise<void> {
    const refused = this.refusal();
    if (refused) throw refused;
    if (snapshot.index <= this.memory.snapshot.index) {
      throw new StorageError('XDEVICE_ERR_COMPACTED', `compact to ${snapshot.index}: already compacted through ${this.memory.snapshot.index}`);
    }
    if (snapshot.index > this.memory.lastIndex()) {
      throw new StorageError('XDEVICE_ERR_UNAVAILABLE', `compact to ${snapshot.index}: last index is ${this.memory.lastIndex()}`);
    }
    if (snapshot.term !== this.memory.term(snapshot.index)) {
      throw new WalUsageError(`compact to ${snapshot.index} at term ${snapshot.term}: the log has term ${this.memory.term(snapshot.index)} there`);
    }
    await this.writeSnapshot(snapshot, SnapshotFlavour.Compact);
  }

  /** A follower installed a snapshot: the whole log is replaced by it. */
  async applySnapshot(snapshot: SnapshotMetadata): Promise<void> {
    const refused = this.refusal();
    if (refused) throw refused;
    if (snapshot.index <= this.memory.snapshot.index) {
      throw new StorageError('XDEVICE_ERR_SNAPSHOT_OUT_OF_DATE', `snapshot ${snapshot.index} is not newer than ${this.memory.snapshot.index}`);
    }
    await this.writeSnapshot(snapshot, SnapshotFlavour.Reset);
  }

  private async writeSnapshot(snapshot: SnapshotMetadata, flavour: SnapshotFlavour): Promise<void> {
    const copy: SnapshotMetadata = { index: snapshot.index, term: snapshot.term, confState: cloneConfState(snapshot.confState) };
    const record: RecordSpec = {
      kind: RecordKind.Snapshot,
      type: flavour,
      term: copy.term,
      index: copy.index,
      payload: Buffer.from(JSON.stringify(copy.confState)),
    };
    const refusal = this.writer.refusal([record]);
    if (refusal) throw refusal;
    const lastIndex = flavour === SnapshotFlavour.Reset ? copy.index : this.memory.lastIndex();
    const submitted = this.writer.submit([record], { lastIndex, hardState: this.memory.hardState, snapshot: copy });
    if (flavour === SnapshotFlavour.Reset) this.memory.applySnapshot(copy);
    else this.memory.compact(copy);
    await submitted;
    await this.deleteObsoleteSegments(copy.index);
  }

  /**
   * A segment can go once the segment after it starts at or below the durable
   * snapshot: every live entry after the snapshot is then in later segments,
   * and each segment carries its own baseline of snapshot and hard state.
   */
  private deleteObsoleteSegments(snapshotIndex: number): Promise<void> {
    this.deleting = this.deleting.then(async () => {
      const active = this.writer.activeSeq();
      const doomed: SegmentRef[] = [];
      while (this.segments.length > 1) {
        const [head, next] = this.segments as [SegmentRef, SegmentRef];
        if (head.seq >= active || next.firstIndex - 1 > snapshotIndex) break;
        doomed.push(this.segments.shift()!);
      }
      if (doomed.length === 0) return;
      await this.pool.retire(doomed);
      this.logger?.debug({ segments: doomed.map((s) => s.name), dir: this.dir }, 'retired compacted WAL segments');
    });
    return this.deleting;
  }

  private stateAfter(entries: Entry[], hardState: HardState | undefined): LogState {
    const lastIndex = entries.length > 0 ? entries[entries.length - 1]!.index : this.memory.lastIndex();
    return { lastIndex, hardState: hardState ? { ...hardState } : this.memory.hardState, snapshot: this.memory.snapshot };
  }

  private refusal(): Error | undefined {
    if (this.closed) return new WalClosedError();
    return this.writer.failure();
  }

  hardState(): HardState {
    return { ...this.memory.hardState };
  }

  /** Waits for submitted writes, closes the segment file; the Wal refuses everything afterwards. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.writer.close();
    await this.deleting.catch(() => undefined);
  }

  /** Resolves once the next segment file is preallocated in the background (benchmarks measure appends without it). */
  nextSegmentPrepared(): Promise<void> {
    return this.writer.nextSegmentPrepared();
  }

  /** How segment files were started and retired since open (metrics, tests). */
  recycleCounts(): RecycleCounts {
    return { ...this.pool.counts };
  }

  /** Segment file names currently part of the log (oldest first). */
  segmentNames(): string[] {
    return this.segments.map((s) => s.name);
  }

  // ---- Storage ---------------------------------------------------------------

  initialState(): { hardState: HardState; confState: ConfState } {
    return { hardState: this.hardState(), confState: cloneConfState(this.memory.confState()) };
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    return this.memory.entries(lo, hi, maxBytes);
  }

  term(index: number): number {
    return this.memory.term(index);
  }

  /** Payload bytes of the held entries in (lo, hi]: what keeping them costs in memory. */
  payloadBytesBetween(lo: number, hi: number): number {
    return this.memory.payloadBytesBetween(lo, hi);
  }

  firstIndex(): number {
    return this.memory.firstIndex();
  }

  lastIndex(): number {
    return this.memory.lastIndex();
  }

  snapshotMetadata(): SnapshotMetadata {
    const s = this.memory.snapshot;
    return { index: s.index, term: s.term, confState: cloneConfState(s.confState) };
  }
}

function cloneConfState(c: ConfState): ConfState {
  return {
    voters: [...c.voters],
    learners: [...c.learners],
    votersOutgoing: [...c.votersOutgoing],
    learnersNext: [...c.learnersNext],
    autoLeave: c.autoLeave,
  };
}
