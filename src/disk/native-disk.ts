// The production DiskIo: the native addon (src/native.ts) for open files,
// node:fs for paths, exactly as the WAL and the block store called them
// before the interface existed. The test-only fault hook (src/wal/fault-file.ts
// and native.setFaultInjection) lives in the addon, so it applies here unchanged.

import { ftruncate as ftruncateCb } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { promisify } from 'node:util';
import * as native from '../native.ts';
import type { DiskFile, DiskFileStat, DiskIo, DiskOpenOptions, DiskPathStat, Extent } from './disk-io.ts';
import { fileExtents } from './fiemap.ts';

const ftruncate = promisify(ftruncateCb);

/** A native descriptor; `fd` is for this module only. */
interface NativeFile extends DiskFile {
  readonly fd: number;
}

const fdOf = (file: DiskFile): number => (file as NativeFile).fd;

class NativeDisk implements DiskIo {
  openFile(path: string, opts: DiskOpenOptions = {}): Promise<DiskFile> {
    // OpenedFile is { fd, direct }: it serves as the handle itself.
    return native.openFile(path, opts) as Promise<NativeFile>;
  }

  closeFile(file: DiskFile): Promise<void> {
    return native.closeFile(fdOf(file));
  }

  pread(file: DiskFile, buf: Uint8Array, position: number): Promise<number> {
    return native.pread(fdOf(file), buf, position);
  }

  pwrite(file: DiskFile, buf: Uint8Array, position: number): Promise<number> {
    return native.pwrite(fdOf(file), buf, position);
  }

  pwriteBatch(file: DiskFile, bufs: Uint8Array[], positions: number[]): Promise<number> {
    return native.pwriteBatch(fdOf(file), bufs, positions);
  }

  fdatasync(file: DiskFile): Promise<void> {
    return native.fdatasync(fdOf(file));
  }

  fallocate(file: DiskFile, offset: number, length: number, opts: { keepSize?: boolean } = {}): Promise<void> {
    return native.fallocate(fdOf(file), offset, length, opts);
  }

  punchHole(file: DiskFile, offset: number, length: number): Promise<void> {
    return native.punchHole(fdOf(file), offset, length);
  }

  truncate(file: DiskFile, size: number): Promise<void> {
    return ftruncate(fdOf(file), size);
  }

  async fstat(file: DiskFile): Promise<DiskFileStat> {
    const st = await native.fstat(fdOf(file));
    return { size: st.size, allocatedBytes: st.blocks * 512 };
  }

  extents(file: DiskFile, offset: number, length: number): Extent[] {
    return fileExtents(fdOf(file), offset, length);
  }

  allocAligned(size: number, alignment?: number): Buffer {
    return native.allocAligned(size, alignment);
  }

  readdir(dir: string): Promise<string[]> {
    return readdir(dir);
  }

  async mkdir(dir: string, opts: { recursive?: boolean } = {}): Promise<void> {
    await mkdir(dir, opts);
  }

  async stat(path: string): Promise<DiskPathStat> {
    const st = await stat(path);
    return { size: st.size, isDirectory: st.isDirectory() };
  }

  rename(from: string, to: string): Promise<void> {
    return rename(from, to);
  }

  unlink(path: string): Promise<void> {
    return unlink(path);
  }

  rm(path: string, opts: { recursive?: boolean; force?: boolean } = {}): Promise<void> {
    return rm(path, opts);
  }

  async syncDir(dir: string): Promise<void> {
    const handle = await open(dir, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }

  readFile(path: string): Promise<Buffer> {
    return readFile(path);
  }

  async writeFile(path: string, data: Uint8Array, opts: { sync?: boolean; mode?: number } = {}): Promise<void> {
    const h = await open(path, 'w', opts.mode ?? 0o644);
    try {
      await h.writeFile(data);
      if (opts.sync) await h.sync();
    } finally {
      await h.close();
    }
  }
}

/** The real disk: what every production caller gets when it passes no DiskIo. */
export const nativeDisk: DiskIo = new NativeDisk();
