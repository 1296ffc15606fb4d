// A sparse in-memory block device: 64 KiB chunks allocated on first write,
// dropped again by TRIM and by zeroing whole chunks. Unallocated chunks are
// holes (read as zeroes, reported as HOLE|ZERO). It serves tests and the
// NBD benchmark; all connections share one Map, hence CAN_MULTI_CONN.
//
// Chunks are carved from 16 MiB slabs and recycled through a free list: a
// gigabyte of data is 64 ArrayBuffers instead of 16384, which keeps V8's
// garbage collector from walking them all. Freed chunks stay with the device
// (reused by later writes), so memory follows the high-water mark of data.

import type { BlockDevice, BlockDeviceCapabilities, Extent, ReadSegment, WriteOptions, ZeroOptions } from './block-device.ts';
import { assert } from '../errors.ts';

const CHUNK_BYTES = 64 * 1024;
const SLAB_BYTES = 16 * 1024 * 1024;
const HOLE_ZERO = 3;

export interface MemoryDeviceOptions {
  name: string;
  size: number;
  description?: string;
  readOnly?: boolean;
}

function deviceError(code: string, message: string): Error {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

export class MemoryDevice implements BlockDevice {
  readonly name: string;
  readonly description: string | undefined;
  readonly size: number;
  readonly capabilities: BlockDeviceCapabilities;
  readonly preferredBlockSize = 4096;
  private readonly chunks = new Map<number, Buffer>();
  /** Zeroed chunks ready for reuse. */
  private readonly freeChunks: Buffer[] = [];
  private slab: Buffer | undefined;
  private slabUsed = 0;
  private closed = false;

  constructor(options: MemoryDeviceOptions) {
    assert(Number.isSafeInteger(options.size) && options.size >= 0, 'MemoryDevice: bad size');
    this.name = options.name;
    this.description = options.description;
    this.size = options.size;
    const readOnly = options.readOnly ?? false;
    this.capabilities = {
      readOnly,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canWriteZeroes: true,
      canFastZero: true,
      canMultiConn: true,
      canExtents: true,
      canCache: true,
    };
  }

  /** Bytes held in allocated chunks (for tests of sparseness). */
  get allocatedBytes(): number {
    return this.chunks.size * CHUNK_BYTES;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length, false);
    const out = Buffer.allocUnsafe(length);
    this.copyOut(offset, length, out);
    return out;
  }

  async readSparse(offset: number, length: number): Promise<ReadSegment[]> {
    this.check(offset, length, false);
    const segments: ReadSegment[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      // Gather the longest run of the same kind (allocated or hole) starting here.
      const allocated = this.chunks.has(Math.floor(at / CHUNK_BYTES));
      let runEnd = Math.min(end, (Math.floor(at / CHUNK_BYTES) + 1) * CHUNK_BYTES);
      while (runEnd < end && this.chunks.has(runEnd / CHUNK_BYTES) === allocated) {
        runEnd = Math.min(end, runEnd + CHUNK_BYTES);
      }
      const runLength = runEnd - at;
      if (allocated) {
        const data = Buffer.allocUnsafe(runLength);
        this.copyOut(at, runLength, data);
        segments.push({ offset: at, length: runLength, data });
      } else {
        segments.push({ offset: at, length: runLength, data: null });
      }
      at = runEnd;
    }
    return segments;
  }

  async write(offset: number, data: Buffer, _options?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true);
    this.copyIn(offset, data);
  }

  async writev(offset: number, data: readonly Buffer[], _options?: WriteOptions): Promise<void> {
    let length = 0;
    for (const part of data) length += part.length;
    this.check(offset, length, true);
    let at = offset;
    for (const part of data) {
      this.copyIn(at, part);
      at += part.length;
    }
  }

  async flush(): Promise<void> {
    this.check(0, 0, false);
  }

  async trim(offset: number, length: number, _options?: WriteOptions): Promise<void> {
    this.check(offset, length, true);
    this.zero(offset, length, true);
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    this.check(offset, length, true);
    this.zero(offset, length, options?.noHole !== true);
  }

  async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length, false);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length, false);
    const extents: Extent[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const index = Math.floor(at / CHUNK_BYTES);
      const flags = this.chunks.has(index) ? 0 : HOLE_ZERO;
      const next = Math.min(end, (index + 1) * CHUNK_BYTES);
      const last = extents[extents.length - 1];
      if (last !== undefined && last.flags === flags) last.length += next - at;
      else extents.push({ length: next - at, flags });
      at = next;
    }
    return extents;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.chunks.clear();
    this.freeChunks.length = 0;
    this.slab = undefined;
  }

  private check(offset: number, length: number, writing: boolean): void {
    if (this.closed) throw deviceError('ESHUTDOWN', `device ${this.name} is closed`);
    if (writing && this.capabilities.readOnly) throw deviceError('EPERM', `device ${this.name} is read-only`);
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw deviceError(writing ? 'ENOSPC' : 'EINVAL', `range ${offset}+${length} beyond ${this.size}`);
    }
  }

  private copyIn(offset: number, data: Buffer): void {
    let done = 0;
    while (done < data.length) {
      const at = offset + done;
      const index = Math.floor(at / CHUNK_BYTES);
      const within = at - index * CHUNK_BYTES;
      const n = Math.min(CHUNK_BYTES - within, data.length - done);
      let chunk = this.chunks.get(index);
      if (chunk === undefined) {
        chunk = this.allocateChunk();
        this.chunks.set(index, chunk);
      }
      data.copy(chunk, within, done, done + n);
      done += n;
    }
  }

  private allocateChunk(): Buffer {
    const recycled = this.freeChunks.pop();
    if (recycled !== undefined) return recycled;
    if (this.slab === undefined || this.slabUsed === this.slab.length) {
      // Sized to what the device can still hold, so small devices get small slabs.
      const remaining = Math.ceil(this.size / CHUNK_BYTES) * CHUNK_BYTES - (this.chunks.size + this.freeChunks.length) * CHUNK_BYTES;
      this.slab = Buffer.alloc(Math.max(CHUNK_BYTES, Math.min(SLAB_BYTES, remaining)));
      this.slabUsed = 0;
    }
    const chunk = this.slab.subarray(this.slabUsed, this.slabUsed + CHUNK_BYTES);
    this.slabUsed += CHUNK_BYTES;
    return chunk;
  }

  private freeChunk(index: number): void {
    const chunk = this.chunks.get(index);
    if (chunk === undefined) return;
    this.chunks.delete(index);
    chunk.fill(0);
    this.freeChunks.push(chunk);
  }

  private copyOut(offset: number, length: number, out: Buffer): void {
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const index = Math.floor(at / CHUNK_BYTES);
      const within = at - index * CHUNK_BYTES;
      const n = Math.min(CHUNK_BYTES - within, length - done);
      const chunk = this.chunks.get(index);
      if (chunk === undefined) out.fill(0, done, done + n);
      else chunk.copy(out, done, within, within + n);
      done += n;
    }
  }

  /** Zeroes a range; whole chunks are freed when `mayFree` (the hole then reads as zeroes). */
  private zero(offset: number, length: number, mayFree: boolean): void {
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const index = Math.floor(at / CHUNK_BYTES);
      const within = at - index * CHUNK_BYTES;
      const n = Math.min(CHUNK_BYTES - within, length - done);
      const chunk = this.chunks.get(index);
      if (n === CHUNK_BYTES && mayFree) {
        this.freeChunk(index);
      } else if (chunk !== undefined) {
        chunk.fill(0, within, within + n);
      } else if (!mayFree) {
        // NO_HOLE: the range must end up allocated.
        this.chunks.set(index, this.allocateChunk());
      }
      done += n;
    }
  }
}
