// Positional I/O on a node:fs FileHandle that never returns short: the
// threadpool runs several of these at once, which is what lets a queue depth
// of 32 reach the disk as 32 requests.

import type { FileHandle } from 'node:fs/promises';
import type { BlockDevice, BlockDeviceCapabilities, WriteOptions, ZeroOptions } from './block-device.ts';

export async function readFully(handle: FileHandle, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(out, done, length - done, offset + done);
    if (bytesRead === 0) {
      // Past the end of a file shorter than its device: reads as zeroes.
      out.fill(0, done);
      break;
    }
    done += bytesRead;
  }
  return out;
}

export async function writeFully(handle: FileHandle, offset: number, data: Buffer): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, offset + done);
    done += bytesWritten;
  }
}

const ZERO_BLOCK_BYTES = 1024 * 1024;
let zeroBlock: Buffer | undefined;

/** Writes real zeroes (allocating the range), 1 MiB at a time. */
export async function writeZeroBytes(handle: FileHandle, offset: number, length: number): Promise<void> {
  zeroBlock ??= Buffer.alloc(ZERO_BLOCK_BYTES);
  let done = 0;
  while (done < length) {
    const n = Math.min(ZERO_BLOCK_BYTES, length - done);
    await writeFully(handle, offset + done, zeroBlock.subarray(0, n));
    done += n;
  }
}

export function deviceError(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

/**
 * What a device on one node:fs FileHandle does the same whatever is under it
 * (a sparse file, a raw block device): bounds and read-only checks, reads,
 * writes, FLUSH and FUA as fdatasync, close. Subclasses add TRIM, zeroing
 * and block status.
 */
export abstract class HandleDevice implements BlockDevice {
  readonly name: string;
  readonly description: string | undefined;
  readonly path: string;
  readonly preferredBlockSize = 4096;
  protected closed = false;

  protected constructor(
    options: { name: string; path: string; description?: string },
    protected readonly handle: FileHandle,
    readonly size: number,
    readonly capabilities: BlockDeviceCapabilities,
  ) {
    this.name = options.name;
    this.description = options.description;
    this.path = options.path;
  }

  abstract trim(offset: number, length: number, options?: WriteOptions): Promise<void>;
  abstract writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void>;

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length, false);
    return readFully(this.handle, offset, length);
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true);
    await writeFully(this.handle, offset, data);
    if (options?.fua === true) await this.handle.datasync();
  }

  async flush(): Promise<void> {
    this.check(0, 0, false);
    await this.handle.datasync();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.closeHandles();
  }

  /** Closes the descriptors (once). */
  protected async closeHandles(): Promise<void> {
    await this.handle.close();
  }

  protected check(offset: number, length: number, writing: boolean): void {
    if (this.closed) throw deviceError('ESHUTDOWN', `device ${this.name} is closed`);
    if (writing && this.capabilities.readOnly) throw deviceError('EPERM', `device ${this.name} is read-only`);
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw deviceError(writing ? 'ENOSPC' : 'EINVAL', `range ${offset}+${length} beyond ${this.size}`);
    }
  }
}
