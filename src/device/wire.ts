// Little helpers to build and parse the binary formats of XDevice (peer frames,
// state-machine commands, checkpoints). Numbers that can grow past 2^32 (terms,
// indices, offsets) travel as 64-bit little-endian integers but must stay within
// Number.MAX_SAFE_INTEGER, the range every other part of XDevice computes with.

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
