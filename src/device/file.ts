// A block device in one sparse file. Reads and writes go through node:fs
// (the libuv threadpool runs them concurrently); TRIM and hole-making
// WRITE_ZEROES punch holes through the native addon; FLUSH and FUA are
// fdatasync. Block status comes from FIEMAP. All connections share one
// descriptor and one page cache, so a flush on any of them covers every
// completed write: CAN_MULTI_CONN holds.

import { constants as fsConstants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { assert } from '../errors.ts';
import { closeFile, openFile, punchHole } from '../native.ts';
import type { Extent, WriteOptions, ZeroOptions } from './block-device.ts';
import { deviceError, HandleDevice, writeFully, writeZeroBytes } from './fd-io.ts';
import { fileExtents } from '../disk/fiemap.ts';

export interface FileDeviceOptions {
  name: string;
  path: string;
  /** Export size; a shorter file is extended (sparsely), a longer one is refused. */
  size: number;
  description?: string;
  readOnly?: boolean;
}

export class FileDevice extends HandleDevice {
  private extentsWork = true;

  private constructor(
    options: FileDeviceOptions,
    handle: FileHandle,
    /** A second descriptor from the native addon, which alone can punch holes. */
    private readonly nativeFd: number,
  ) {
    super(options, handle, options.size, {
      readOnly: options.readOnly ?? false,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canWriteZeroes: true,
      canFastZero: true,
      canMultiConn: true,
      canExtents: true,
      canCache: false,
    });
  }

  static async open(options: FileDeviceOptions): Promise<FileDevice> {
    assert(Number.isSafeInteger(options.size) && options.size >= 0, 'FileDevice: bad size');
    const readOnly = options.readOnly ?? false;
    const flags = readOnly ? fsConstants.O_RDONLY : fsConstants.O_RDWR | fsConstants.O_CREAT;
    const handle = await open(options.path, flags, 0o644);
    try {
      const { size } = await handle.stat();
      if (size > options.size) {
        throw deviceError('EINVAL', `${options.path} holds ${size} bytes, more than the device size ${options.size}`);
      }
      if (size < options.size) {
        if (readOnly) throw deviceError('EINVAL', `${options.path} is shorter than the device size`);
        await handle.truncate(options.size);
      }
      const native = await openFile(options.path, { readOnly });
      return new FileDevice(options, handle, native.fd);
    } catch (error) {
      await handle.close();
      throw error;
    }
  }

  async writev(offset: number, data: readonly Buffer[], options?: WriteOptions): Promise<void> {
    let length = 0;
    for (const part of data) length += part.length;
    this.check(offset, length, true);
    const { bytesWritten } = await this.handle.writev(data as Buffer[], offset);
    if (bytesWritten < length) {
      // A short pwritev (rare: signals, quotas) is finished piece by piece.
      await writeFully(this.handle, offset + bytesWritten, Buffer.concat(data as Buffer[]).subarray(bytesWritten));
    }
    if (options?.fua === true) await this.handle.datasync();
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.check(offset, length, true);
    await punchHole(this.nativeFd, offset, length);
    if (options?.fua === true) await this.handle.datasync();
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    this.check(offset, length, true);
    if (options?.noHole === true) {
      // Allocated zeroes cost as much as a write: a fast-zero request must fail instead.
      if (options.fast === true) throw deviceError('ENOTSUP', 'zeroing without holes is not faster than writing');
      await writeZeroBytes(this.handle, offset, length);
    } else {
      await punchHole(this.nativeFd, offset, length);
    }
    if (options?.fua === true) await this.handle.datasync();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length, false);
    if (this.extentsWork) {
      try {
        const extents = fileExtents(this.handle.fd, offset, length);
        if (extents.length > 0) return extents;
      } catch {
        // tmpfs and some others have no FIEMAP: from now on say "allocated", which is always correct.
        this.extentsWork = false;
      }
    }
    return [{ length, flags: 0 }];
  }

  protected override async closeHandles(): Promise<void> {
    await Promise.all([this.handle.close(), closeFile(this.nativeFd)]);
  }
}
