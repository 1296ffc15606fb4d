// Positional I/O on a node:fs FileHandle that never returns short: the
// threadpool runs several of these at once, which is what lets a queue depth
// of 32 reach the disk as 32 requests.

import type { FileHandle } from 'node:fs/promises';

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
