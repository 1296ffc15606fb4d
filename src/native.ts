// The typed face of the native addon (native/, built to build/Release/xdevice.node).
//
// No I/O call blocks the event loop, and the operations on one descriptor
// complete in the order they were submitted: a caller may issue pwrite then
// fdatasync without awaiting the first and the sync covers the write.
// Descriptors must come from openFile (others are rejected with EBADF) and be
// released with closeFile.
//
// Two paths do the I/O, picked once at load by XDEVICE_IO (see ioPath()):
// 'threads' (default) runs each file's operations on its own I/O thread;
// 'uring' submits through one io_uring from the event loop's own thread, a
// write and the fdatasync queued behind it as one linked submission,
// completions reaped without a thread hop of ours (measured no cheaper, so
// not the default: native/addon.cc, kDefaultIoPath). 'uring' falls back to
// 'threads' when the kernel refuses io_uring (ENOSYS, EPERM,
// kernel.io_uring_disabled).
// One difference shows: on 'uring' an fdatasync queued right behind a write
// that fails rejects too (ECANCELED), since what it was to make durable was
// never written; on 'threads' it runs and covers whatever did land.
//
// Failed calls reject with errors shaped like node:fs errors: `code` ('EIO',
// 'ENOSPC', 'EINVAL', ...), `errno` (negative, as node:fs) and `syscall`.
// Argument type errors (a string for a position) throw synchronously: those
// are bugs, not I/O outcomes.

import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';

export interface OpenedFile {
  fd: number;
  /** False when O_DIRECT was asked for and refused (tmpfs): I/O is buffered, fdatasync still makes it durable. */
  direct: boolean;
}

export interface OpenOptions {
  /** O_DIRECT: buffers, offsets and lengths must then be multiples of the logical block size (use allocAligned). */
  direct?: boolean;
  /** O_DSYNC: every write returns only once it is durable. */
  dsync?: boolean;
  create?: boolean;
  readOnly?: boolean;
  /** Permission bits for a created file (default 0o644). */
  mode?: number;
}

export interface FileStat {
  size: number;
  /** 512-byte blocks actually allocated (holes do not count). */
  blocks: number;
  blockSize: number;
}

export interface FaultSpec {
  fdatasyncErrno?: number;
  /** Fails pwrite and pwritev. */
  pwriteErrno?: number;
  /** Matching calls that still succeed first; after that every matching call fails until cleared. */
  afterCalls?: number;
  /** Only this descriptor (default: all). */
  fd?: number;
  /**
   * A slow disk: sleep this many microseconds on the I/O thread before every matching
   * pwrite, pwritev and fdatasync. Starts at once (afterCalls counts errno faults only);
   * replacing or clearing the spec cuts a sleep in progress short.
   */
  delayUs?: number;
  /**
   * Short writes: the first write syscall of each matching pwrite/pwritev (each write of a
   * pwriteBatch) moves at most this many bytes, as a kernel may; the rest must follow.
   */
  shortWriteBytes?: number;
}

export interface IoPathInfo {
  /** The path in use. */
  path: 'uring' | 'threads';
  /** What XDEVICE_IO asked for ('threads' when unset). */
  requested: 'uring' | 'threads';
  /** Why 'uring' was asked for and 'threads' is used. */
  fallbackReason?: string;
  /** 'uring' only: io_uring_enter calls that submitted, SQEs submitted, and SQEs submitted again after a short transfer or a broken chain. */
  enters?: number;
  sqes?: number;
  resubmits?: number;
}

export type NativeError = Error & { code: string; errno: number; syscall: string; path?: string };

interface Binding {
  openFile(path: string, opts: OpenOptions): Promise<OpenedFile>;
  closeFile(fd: number): Promise<void>;
  pwrite(fd: number, buf: Uint8Array, position: number): Promise<number>;
  pwritev(fd: number, bufs: Uint8Array[], position: number): Promise<number>;
  pwriteBatch(fd: number, bufs: Uint8Array[], positions: number[]): Promise<number>;
  pread(fd: number, buf: Uint8Array, position: number): Promise<number>;
  fdatasync(fd: number): Promise<void>;
  fallocate(fd: number, offset: number, length: number, keepSize: boolean): Promise<void>;
  punchHole(fd: number, offset: number, length: number): Promise<void>;
  fstat(fd: number): Promise<FileStat>;
  openFileCount(): number;
  allocAligned(size: number, alignment?: number): Buffer;
  crc32c(data: Uint8Array, initial?: number): number;
  crc32cSoftware(data: Uint8Array, initial?: number): number;
  crc32cHardware(data: Uint8Array, initial?: number): number;
  crc32cImplementation(): 'sse4.2' | 'software';
  crc32cCopy(dst: Uint8Array, at: number, src: Uint8Array, initial: number): number;
  sdNotify(state: string, socketPath?: string): boolean;
  setFaultInjection(spec: FaultSpec | null): void;
  lockFile(path: string): number;
  ioPath(): IoPathInfo;
}

const require = createRequire(import.meta.url);
// src/ and dist/ both sit beside build/.
function loadBinding(): Binding {
  try {
    return require('../build/Release/xdevice.node') as Binding;
  } catch (err) {
    // An install with scripts blocked (npm --ignore-scripts, or a strict allowScripts
    // policy) leaves the addon unbuilt: say how to build it instead of a bare MODULE_NOT_FOUND.
    if ((err as { code?: string }).code !== 'MODULE_NOT_FOUND') throw err;
    throw new Error(
      'the native addon (build/Release/xdevice.node) is not built: its install script did not run. ' +
        'Build it with `npm rebuild -g xdevice --allow-scripts=xdevice,ioctl` (global install) or `npm run build` (checkout)',
      { cause: err },
    );
  }
}

const binding = loadBinding();

let logger: Logger | undefined;
let directFallbackLogged = false;

/** Where the addon wrapper reports (once) that O_DIRECT was refused. Defaults to a pino logger on stderr. */
export function setNativeLogger(l: Logger): void {
  logger = l;
}

function log(): Logger {
  logger ??= pino({ name: 'xdevice-native' }, pino.destination(2));
  return logger;
}

export async function openFile(path: string, opts: OpenOptions = {}): Promise<OpenedFile> {
  const opened = await binding.openFile(path, opts);
  if (opts.direct && !opened.direct && !directFallbackLogged) {
    directFallbackLogged = true;
    log().warn({ path }, 'O_DIRECT refused by the filesystem: using buffered I/O, durability relies on fdatasync');
  }
  return opened;
}

/** Closes after every operation submitted before it on this descriptor. */
export function closeFile(fd: number): Promise<void> {
  return binding.closeFile(fd);
}

/** Writes all of buf at position or rejects (a short write is retried, an error is not). Resolves to buf.length. */
export function pwrite(fd: number, buf: Uint8Array, position: number): Promise<number> {
  return binding.pwrite(fd, buf, position);
}

/** Writes the buffers back to back from position, all or nothing (as pwrite). Do not modify the array until it settles. */
export function pwritev(fd: number, bufs: Uint8Array[], position: number): Promise<number> {
  return binding.pwritev(fd, bufs, position);
}

/**
 * Writes bufs[i] at positions[i], in order, in one trip to the file's I/O
 * thread (one thread wake for many scattered writes). Each write is complete
 * or the batch rejects at the first error (earlier ones may have landed).
 * Resolves to the bytes written. Do not modify the arrays until it settles.
 */
export function pwriteBatch(fd: number, bufs: Uint8Array[], positions: number[]): Promise<number> {
  return binding.pwriteBatch(fd, bufs, positions);
}

/** Reads until buf is full or end of file; resolves to the bytes read. */
export function pread(fd: number, buf: Uint8Array, position: number): Promise<number> {
  return binding.pread(fd, buf, position);
}

export function fdatasync(fd: number): Promise<void> {
  return binding.fdatasync(fd);
}

/** Preallocates [offset, offset+length); with keepSize the file size does not grow (FALLOC_FL_KEEP_SIZE). */
export function fallocate(fd: number, offset: number, length: number, opts: { keepSize?: boolean } = {}): Promise<void> {
  return binding.fallocate(fd, offset, length, opts.keepSize ?? false);
}

/** Deallocates [offset, offset+length) so it reads as zeros (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE). */
export function punchHole(fd: number, offset: number, length: number): Promise<void> {
  return binding.punchHole(fd, offset, length);
}

export function fstat(fd: number): Promise<FileStat> {
  return binding.fstat(fd);
}

/** Which I/O path this process uses, why, and (uring) its submission counters. */
export function ioPath(): IoPathInfo {
  return binding.ioPath();
}

/** Descriptors opened through openFile and not yet closed (one I/O thread each on the 'threads' path). */
export function openFileCount(): number {
  return binding.openFileCount();
}

/** A zero-filled Buffer whose memory starts at a multiple of alignment (default 4096), freed when collected. */
export function allocAligned(size: number, alignment?: number): Buffer {
  return binding.allocAligned(size, alignment);
}

/**
 * CRC32C of data, continuing from a previous result: crc32c(b, crc32c(a)) === crc32c(a ++ b).
 * `crc32c.copy` does the same while copying data into a buffer, in one pass
 * (src/wal/record.ts stages payloads with it).
 */
export const crc32c = Object.assign((data: Uint8Array, initial = 0): number => binding.crc32c(data, initial), {
  copy: crc32cCopy,
});

/** Copies src into dst at `at` and returns crc32c(src, initial), reading src once. They must not overlap. */
export function crc32cCopy(dst: Uint8Array, at: number, src: Uint8Array, initial = 0): number {
  return binding.crc32cCopy(dst, at, src, initial);
}

export function crc32cSoftware(data: Uint8Array, initial = 0): number {
  return binding.crc32cSoftware(data, initial);
}

/** Throws when the CPU lacks SSE4.2 (see crc32cImplementation()). */
export function crc32cHardware(data: Uint8Array, initial = 0): number {
  return binding.crc32cHardware(data, initial);
}

export function crc32cImplementation(): 'sse4.2' | 'software' {
  return binding.crc32cImplementation();
}

/**
 * Sends a systemd notification ("READY=1", "STOPPING=1", "WATCHDOG=1", "STATUS=...")
 * to $NOTIFY_SOCKET (a path or an abstract "@name"), or to socketPath when given.
 * Returns false when no socket is configured; throws a NativeError when sending fails.
 * Never blocks.
 */
export function sdNotify(state: string, socketPath?: string): boolean {
  return socketPath === undefined ? binding.sdNotify(state) : binding.sdNotify(state, socketPath);
}

/** Test hook: fail matching syscalls with an errno and/or delay them (process-wide); null disarms. */
export function setFaultInjection(spec: FaultSpec | null): void {
  binding.setFaultInjection(spec);
}

export function isNativeError(err: unknown): err is NativeError {
  return err instanceof Error && typeof (err as NativeError).code === 'string' && typeof (err as NativeError).syscall === 'string';
}

/**
 * Takes an exclusive flock on `path` (created if missing) without waiting:
 * the descriptor to keep open while holding it, or undefined if another
 * process holds it. The descriptor is not one of openFile's (no I/O thread);
 * the lock goes when the process exits.
 */
export function lockFile(path: string): number | undefined {
  const fd = binding.lockFile(path);
  return fd < 0 ? undefined : fd;
}
