// Segment recycling: an obsolete segment's file becomes a later segment
// instead of being deleted and a new file preallocated (as etcd and
// PostgreSQL do with theirs). Its blocks are allocated and written already,
// so reusing it writes no zeros and its appends never convert extents.
//
// A file goes through these names, each step ordered so that a crash at any
// point leaves nothing recovery could mistake for log:
//
//   1. `<seq>-<first>.wal` -> `recycled-<seq>.tmp` once compaction made the
//      segment obsolete, and the directory is synced before the file is
//      touched: until then the old name may come back, holding the old,
//      intact (and still valid, if obsolete) segment.
//   2. `recycled-<seq>.tmp` -> `next-segment.tmp` when the writer prepares its
//      next segment; then the header block is zeroed and synced. Neither name
//      is a segment's, so recovery never reads these files as log.
//   3. `next-segment.tmp` -> `<seq'>-<first'>.wal` at the roll; the header
//      block is zero until the new header and baseline are written. A crash in
//      between leaves a last segment with no magic, which recovery removes as
//      never started; a crash after the header but before the baseline leaves
//      old bytes where the baseline should be, under the new salt they do not
//      verify, and recovery removes it too.
//
// The new header marks the segment recycled and carries the next salt of the
// chain (segment.ts): no batch of the file's earlier lives verifies under it,
// and the writer follows each batch with a zero block so the log's end reads
// as it does in a fresh file. At most `limit` files wait; the rest are deleted.

import { join } from 'node:path';
import type { DiskFile, DiskIo } from '../disk/disk-io.ts';
import { preparedSegmentName, syncDirectory } from './segment.ts';

const poolPattern = /^recycled-([0-9a-f]{16})\.tmp$/;

export function recycledFileName(seq: number): string {
  return `recycled-${seq.toString(16).padStart(16, '0')}.tmp`;
}

export interface RecycleCounts {
  /** Segments started in a recycled file. */
  recycled: number;
  /** Segments started in a newly preallocated file. */
  preallocated: number;
  /** Obsolete segments moved to the pool. */
  pooled: number;
  /** Obsolete segments deleted (the pool was full). */
  deleted: number;
}

export class SegmentPool {
  readonly counts: RecycleCounts = { recycled: 0, preallocated: 0, pooled: 0, deleted: 0 };

  private constructor(
    private readonly dir: string,
    private readonly disk: DiskIo,
    private readonly limit: number,
    /** Paths of the files waiting, oldest first. */
    private readonly files: string[],
  ) {}

  /**
   * The files left waiting in `dir`. With `keep` false (a new log: no segment
   * survived), or when a file is not `segmentBytes` long, they are deleted:
   * only a log whose salt chain continues may reuse files of its past.
   */
  static async open(dir: string, disk: DiskIo, limit: number, segmentBytes: number, keep: boolean): Promise<SegmentPool> {
    const files: string[] = [];
    let removed = false;
    for (const name of (await disk.readdir(dir)).filter((n) => poolPattern.test(n)).sort()) {
      const path = join(dir, name);
      if (keep && files.length < limit && (await disk.stat(path)).size === segmentBytes) {
        files.push(path);
      } else {
        await disk.unlink(path);
        removed = true;
      }
    }
    if (removed) await syncDirectory(dir, disk);
    return new SegmentPool(dir, disk, limit, files);
  }

  size(): number {
    return this.files.length;
  }

  /**
   * Retires obsolete segments (oldest first): into the pool while it has
   * room, deleted otherwise. Returns after the directory sync that makes the
   * renames durable; only then may a pooled file be written.
   */
  async retire(segments: Array<{ seq: number; path: string }>): Promise<void> {
    if (segments.length === 0) return;
    const pooled: string[] = [];
    for (const s of segments) {
      if (this.files.length + pooled.length < this.limit) {
        const to = join(this.dir, recycledFileName(s.seq));
        await this.disk.rename(s.path, to);
        pooled.push(to);
        this.counts.pooled++;
      } else {
        await this.disk.unlink(s.path);
        this.counts.deleted++;
      }
    }
    await syncDirectory(this.dir, this.disk);
    this.files.push(...pooled);
  }

  /**
   * Returns the prepared next segment's file (`next-segment.tmp`, unused: the
   * log closed before it rolled) to the pool as `recycled-<seq>.tmp`, or
   * deletes it when the pool is full. Neither name is a segment's, so no
   * directory sync is needed for safety; without one, a crash may only cost
   * the file.
   */
  async giveBack(seq: number): Promise<void> {
    const from = join(this.dir, preparedSegmentName);
    if (this.files.length >= this.limit) {
      await this.disk.unlink(from);
      return;
    }
    let n = seq;
    while (this.files.includes(join(this.dir, recycledFileName(n)))) n++;
    const to = join(this.dir, recycledFileName(n));
    await this.disk.rename(from, to);
    this.files.unshift(to);
  }

  /**
   * Takes a waiting file as the prepared next segment (`next-segment.tmp`),
   * its header block zeroed and synced; undefined when none waits.
   */
  async takePrepared(alignment: number, direct: boolean): Promise<DiskFile | undefined> {
    const from = this.files.shift();
    if (from === undefined) return undefined;
    const path = join(this.dir, preparedSegmentName);
    await this.disk.rename(from, path);
    const file = await this.disk.openFile(path, { direct });
    try {
      const block = this.disk.allocAligned(alignment, alignment);
      block.fill(0);
      await this.disk.pwrite(file, block, 0);
      await this.disk.fdatasync(file);
    } catch (err) {
      await this.disk.closeFile(file).catch(() => undefined);
      throw err;
    }
    this.counts.recycled++;
    return file;
  }
}
