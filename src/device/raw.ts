// A block device on a raw block device (/dev/sdX, /dev/loopN): size from the
// BLKGETSIZE64 ioctl, TRIM as BLKDISCARD, allocated zeroes as BLKZEROOUT,
// FLUSH/FUA as fdatasync. A raw device cannot report holes, so no extents.
// The ioctls are synchronous (the `ioctl` package runs them on the event
// loop); discards are bounded per call to keep each stall short.

import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { WriteOptions, ZeroOptions } from './block-device.ts';
import { HandleDevice, writeZeroBytes } from './fd-io.ts';

const require = createRequire(import.meta.url);
const ioctl = require('ioctl') as (fd: number, request: number, arg?: Buffer | number) => number;

/** _IOR(0x12, 114, size_t) */
const BLKGETSIZE64 = 0x80081272;
/** _IO(0x12, 104): logical sector size (int). */
const BLKSSZGET = 0x1268;
/** _IO(0x12, 119): discard a {start, length} u64 pair. */
const BLKDISCARD = 0x1277;
/** _IO(0x12, 127): write zeroes over a {start, length} u64 pair. */
const BLKZEROOUT = 0x127f;
/** Bytes per discard/zero-out ioctl, so one NBD request cannot stall the event loop for long. */
const IOCTL_RANGE_BYTES_MAX = 64 * 1024 * 1024;

export interface RawDeviceOptions {
  name: string;
  path: string;
  description?: string;
  readOnly?: boolean;
}

function rangeArgument(start: number, length: number): Buffer {
  const buf = Buffer.alloc(16);
  buf.writeBigUInt64LE(BigInt(start), 0);
  buf.writeBigUInt64LE(BigInt(length), 8);
  return buf;
}

export class RawDevice extends HandleDevice {
  private discardWorks = true;

  private constructor(
    options: RawDeviceOptions,
    handle: FileHandle,
    size: number,
    readonly sectorBytes: number,
  ) {
    super(options, handle, size, {
      readOnly: options.readOnly ?? false,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canWriteZeroes: true,
      // BLKZEROOUT may fall back to writing zeroes in the kernel: never promise fast.
      canFastZero: false,
      canMultiConn: true,
      canExtents: false,
      canCache: false,
    });
  }

  static async open(options: RawDeviceOptions): Promise<RawDevice> {
    const handle = await open(options.path, options.readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR);
    try {
      const sizeBuf = Buffer.alloc(8);
      ioctl(handle.fd, BLKGETSIZE64, sizeBuf);
      const size = Number(sizeBuf.readBigUInt64LE(0));
      const sectorBuf = Buffer.alloc(4);
      ioctl(handle.fd, BLKSSZGET, sectorBuf);
      const sectorBytes = sectorBuf.readInt32LE(0) || 512;
      return new RawDevice(options, handle, size, sectorBytes);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.check(offset, length, true);
    // TRIM is advisory: only whole sectors are discarded (the spec allows rounding inward).
    const start = Math.ceil(offset / this.sectorBytes) * this.sectorBytes;
    const end = Math.floor((offset + length) / this.sectorBytes) * this.sectorBytes;
    if (this.discardWorks && end > start) {
      try {
        this.ioctlRanges(BLKDISCARD, start, end - start);
      } catch (error) {
        if ((error as { code?: string }).code !== 'EOPNOTSUPP') throw error;
        this.discardWorks = false;
      }
    }
    if (options?.fua === true) await this.handle.datasync();
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    this.check(offset, length, true);
    const start = Math.ceil(offset / this.sectorBytes) * this.sectorBytes;
    const end = Math.floor((offset + length) / this.sectorBytes) * this.sectorBytes;
    if (end > start) {
      if (start > offset) await writeZeroBytes(this.handle, offset, start - offset);
      try {
        this.ioctlRanges(BLKZEROOUT, start, end - start);
      } catch {
        await writeZeroBytes(this.handle, start, end - start);
      }
      if (offset + length > end) await writeZeroBytes(this.handle, end, offset + length - end);
    } else {
      await writeZeroBytes(this.handle, offset, length);
    }
    if (options?.fua === true) await this.handle.datasync();
  }

  private ioctlRanges(request: number, start: number, length: number): void {
    for (let at = start; at < start + length; at += IOCTL_RANGE_BYTES_MAX) {
      const n = Math.min(IOCTL_RANGE_BYTES_MAX, start + length - at);
      ioctl(this.handle.fd, request, rangeArgument(at, n));
    }
  }
}
