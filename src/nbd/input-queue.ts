// Bytes received but not yet parsed. Chunks are kept as they came off the
// socket so a request payload that lies inside one chunk is handed on as a
// slice (no copy); only messages split across chunks are gathered.

import { assert } from '../errors.ts';
import { NbdConnectionClosedError } from './errors.ts';

export class InputQueue {
  private chunks: Buffer[] = [];
  /** Bytes of chunks[0] already consumed. */
  private head = 0;
  private bytes = 0;
  private waiter: { need: number; resolve: () => void; reject: (e: Error) => void } | undefined;
  private closedError: Error | undefined;

  get length(): number {
    return this.bytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    const waiter = this.waiter;
    if (waiter !== undefined && this.bytes >= waiter.need) {
      this.waiter = undefined;
      waiter.resolve();
    }
  }

  /** No more bytes will come: a pending and every later wait() fails. */
  close(error: Error = new NbdConnectionClosedError()): void {
    this.closedError ??= error;
    const waiter = this.waiter;
    if (waiter !== undefined) {
      this.waiter = undefined;
      waiter.reject(this.closedError);
    }
  }

  /** Resolves once `need` bytes are buffered. One waiter at a time (the handshake reads sequentially). */
  wait(need: number): Promise<void> {
    if (this.bytes >= need) return Promise.resolve();
    if (this.closedError !== undefined) return Promise.reject(this.closedError);
    assert(this.waiter === undefined, 'InputQueue: concurrent waits');
    return new Promise((resolve, reject) => {
      this.waiter = { need, resolve, reject };
    });
  }

  /** Reads exactly `n` bytes, waiting for them. */
  async read(n: number): Promise<Buffer> {
    await this.wait(n);
    return this.take(n);
  }

  /** Whether the next `n` bytes (buffered) lie in one received chunk, so take(n) is a slice, not a copy. */
  contiguous(n: number): boolean {
    return n === 0 || (this.chunks.length > 0 && this.chunks[0]!.length - this.head >= n);
  }

  /** The next `n` bytes, consumed: a slice when they lie in one chunk, else a gathered copy. */
  take(n: number): Buffer {
    assert(n <= this.bytes, 'InputQueue.take beyond buffered bytes');
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) {
      const slice = first.subarray(this.head, this.head + n);
      this.consume(n);
      return slice;
    }
    const out = Buffer.allocUnsafe(n);
    this.copyInto(out, 0, n);
    return out;
  }

  /** Copies up to `max` bytes into `target` at `at`, consuming them; returns how many. */
  copyInto(target: Buffer, at: number, max: number): number {
    let copied = 0;
    while (copied < max && this.bytes > 0) {
      const first = this.chunks[0]!;
      const n = Math.min(max - copied, first.length - this.head);
      first.copy(target, at + copied, this.head, this.head + n);
      copied += n;
      this.consume(n);
    }
    return copied;
  }

  /** Consumes up to `max` bytes as slices of the received chunks (no copy); returns how many. */
  takeSlices(max: number, out: Buffer[]): number {
    let taken = 0;
    while (taken < max && this.bytes > 0) {
      const first = this.chunks[0]!;
      const n = Math.min(max - taken, first.length - this.head);
      out.push(first.subarray(this.head, this.head + n));
      taken += n;
      this.consume(n);
    }
    return taken;
  }

  /** Drops up to `n` bytes; returns how many were dropped. */
  skip(n: number): number {
    const dropped = Math.min(n, this.bytes);
    this.consume(dropped);
    return dropped;
  }

  /**
   * Returns a buffer and position where `n` contiguous bytes start, without
   * consuming them (for fixed headers parsed in place).
   */
  peek(n: number): { buf: Buffer; at: number } {
    assert(n <= this.bytes, 'InputQueue.peek beyond buffered bytes');
    const first = this.chunks[0]!;
    if (first.length - this.head >= n) return { buf: first, at: this.head };
    // Split across chunks: copy without consuming (only small fixed headers get here).
    const gathered = Buffer.allocUnsafe(n);
    let copied = 0;
    let position = this.head;
    for (let i = 0; copied < n; i++) {
      const chunk = this.chunks[i]!;
      const take = Math.min(n - copied, chunk.length - position);
      chunk.copy(gathered, copied, position, position + take);
      copied += take;
      position = 0;
    }
    return { buf: gathered, at: 0 };
  }

  private consume(n: number): void {
    this.bytes -= n;
    while (n > 0) {
      const first = this.chunks[0]!;
      const left = first.length - this.head;
      if (n < left) {
        this.head += n;
        return;
      }
      n -= left;
      this.chunks.shift();
      this.head = 0;
    }
    if (this.chunks.length > 0 && this.head === this.chunks[0]!.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
