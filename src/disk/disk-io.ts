// Everything the WAL and the block store do to storage, as one interface, so
// that the same code runs on the real disk (native-disk.ts: the native addon
// and node:fs) and on a simulated one (test/sim/sim-disk.ts) under the
// deterministic simulator.
//
// The contract is the native addon's (src/native.ts), which callers rely on:
//   - operations on one handle complete in the order they were submitted: a
//     caller may issue pwrite then fdatasync without awaiting the first, and
//     the sync covers the write; closeFile runs after everything before it;
//   - operations on different handles, and path operations, are unordered
//     with respect to each other until awaited;
//   - a direct handle needs offsets and lengths in multiples of the logical
//     block size (512) and buffers from allocAligned;
//   - failures reject with errors shaped like node:fs errors (`code` 'EIO',
//     'ENOSPC', 'ENOENT', ..., `errno`, `syscall`); a failed write or sync
//     must be treated as fatal by the caller (the page cache cannot be trusted).
//
// Pure computation (crc32c, encoding) is not I/O and stays out of it.

/** An open file. Opaque: only the DiskIo that opened it can use it. */
export interface DiskFile {
  /** False when O_DIRECT was asked for and refused (tmpfs): I/O is buffered, fdatasync still makes it durable. */
  readonly direct: boolean;
}

export interface DiskOpenOptions {
  /** O_DIRECT: offsets and lengths must then be multiples of the logical block size (use allocAligned buffers). */
  direct?: boolean;
  /** O_DSYNC: every write returns only once it is durable. */
  dsync?: boolean;
  create?: boolean;
  readOnly?: boolean;
  /** Permission bits for a created file (default 0o644). */
  mode?: number;
}

export interface DiskFileStat {
  size: number;
  /** Bytes actually allocated to the file (holes do not count). */
  allocatedBytes: number;
}

export interface DiskPathStat {
  size: number;
  isDirectory: boolean;
}

/** One run of a file's allocation map, as NBD base:allocation describes it. */
export interface Extent {
  /** Length in bytes. */
  length: number;
  /** NBD_STATE_HOLE (1) | NBD_STATE_ZERO (2) flags: 0 data, 2 allocated but reads as zeroes, 3 a hole. */
  flags: number;
}

export interface DiskIo {
  // ---- open files --------------------------------------------------------------
  openFile(path: string, opts?: DiskOpenOptions): Promise<DiskFile>;
  /** Closes after every operation submitted before it on this handle. */
  closeFile(file: DiskFile): Promise<void>;
  /** Reads until buf is full or end of file; resolves to the bytes read. */
  pread(file: DiskFile, buf: Uint8Array, position: number): Promise<number>;
  /** Writes all of buf at position or rejects. Resolves to buf.length. */
  pwrite(file: DiskFile, buf: Uint8Array, position: number): Promise<number>;
  /** Writes bufs[i] at positions[i] in order; rejects at the first error (earlier ones may have landed). */
  pwriteBatch(file: DiskFile, bufs: Uint8Array[], positions: number[]): Promise<number>;
  /** Makes the file's data (and the size needed to read it) durable. */
  fdatasync(file: DiskFile): Promise<void>;
  /** Allocates [offset, offset+length); without keepSize the file grows to cover it. */
  fallocate(file: DiskFile, offset: number, length: number, opts?: { keepSize?: boolean }): Promise<void>;
  /** Deallocates [offset, offset+length) so it reads as zeroes; the size stays. */
  punchHole(file: DiskFile, offset: number, length: number): Promise<void>;
  /** Sets the size (ftruncate): a shrink discards the tail, a growth reads as zeroes. */
  truncate(file: DiskFile, size: number): Promise<void>;
  fstat(file: DiskFile): Promise<DiskFileStat>;
  /**
   * The allocation map of [offset, offset+length) (possibly fewer bytes when
   * the file is very fragmented: ask again from where they end). Synchronous,
   * as FIEMAP is. Throws when the filesystem cannot tell.
   */
  extents(file: DiskFile, offset: number, length: number): Extent[];
  /** A zero-filled buffer whose memory suits direct I/O (alignment defaults to 4096). */
  allocAligned(size: number, alignment?: number): Buffer;

  // ---- paths --------------------------------------------------------------------
  /** Names in a directory (no order promised). */
  readdir(dir: string): Promise<string[]>;
  mkdir(dir: string, opts?: { recursive?: boolean }): Promise<void>;
  /** Rejects with ENOENT when nothing is there. */
  stat(path: string): Promise<DiskPathStat>;
  rename(from: string, to: string): Promise<void>;
  unlink(path: string): Promise<void>;
  /** rm -r (recursive) / rm -f (force: a missing path is no error). */
  rm(path: string, opts?: { recursive?: boolean; force?: boolean }): Promise<void>;
  /** fsync of a directory: makes the names created, renamed or removed in it durable. */
  syncDir(dir: string): Promise<void>;
  /** The whole content of a (small) file. */
  readFile(path: string): Promise<Buffer>;
  /** Creates or replaces a (small) file's content; with sync it is durable (fsync) before this resolves. Its name needs syncDir. */
  writeFile(path: string, data: Uint8Array, opts?: { sync?: boolean; mode?: number }): Promise<void>;
}

/** Whether something is at `path` (any failure to look counts as no, as the callers always did). */
export function pathExists(disk: DiskIo, path: string): Promise<boolean> {
  return disk.stat(path).then(
    () => true,
    () => false,
  );
}
