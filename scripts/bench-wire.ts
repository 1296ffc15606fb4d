// npm run bench:wire - the measurement behind the note at the top of
// src/device/wire.ts: our pre-sized WireWriter against smart-buffer (which
// the users' design names) for a control frame of the kind off the hot path.
// A control frame of the kind off the hot path (hello/handshake-like): kind, two ids, three u64, a 32-byte MAC.
import { SmartBuffer } from 'smart-buffer';
import { WireWriter, str8Size } from '../src/device/wire.ts';
const mac = Buffer.alloc(32, 7);
const N = 300_000;
function ours(): Buffer {
  const size = 1 + str8Size('node-1') + str8Size('cluster-abc') + 24 + 4 + 32;
  const w = new WireWriter(Buffer.allocUnsafe(size));
  w.u8(3); w.str8('node-1'); w.str8('cluster-abc'); w.u64(123456789012); w.u64(42); w.u64(7); w.bytes32(mac);
  return w.buf;
}
function smartDefault(): Buffer {
  const b = new SmartBuffer();
  b.writeUInt8(3);
  b.writeUInt8(Buffer.byteLength('node-1')); b.writeString('node-1');
  b.writeUInt8(Buffer.byteLength('cluster-abc')); b.writeString('cluster-abc');
  b.writeBigUInt64LE(BigInt(123456789012)); b.writeBigUInt64LE(42n); b.writeBigUInt64LE(7n);
  b.writeUInt32LE(mac.length); b.writeBuffer(mac);
  return b.toBuffer();
}
function smartSized(): Buffer {
  const b = SmartBuffer.fromSize(128);
  b.writeUInt8(3);
  b.writeUInt8(Buffer.byteLength('node-1')); b.writeString('node-1');
  b.writeUInt8(Buffer.byteLength('cluster-abc')); b.writeString('cluster-abc');
  b.writeBigUInt64LE(BigInt(123456789012)); b.writeBigUInt64LE(42n); b.writeBigUInt64LE(7n);
  b.writeUInt32LE(mac.length); b.writeBuffer(mac);
  return Buffer.from(b.toBuffer()); // copy out: do not pin the 128-byte backing store
}
const check = [ours(), smartDefault(), smartSized()];
if (!check[0]!.equals(check[1]!) || !check[0]!.equals(check[2]!)) throw new Error('encodings differ');
for (const [name, f] of [['WireWriter (sized up front)', ours], ['SmartBuffer (default 4 KiB)', smartDefault], ['SmartBuffer.fromSize(128) + copy', smartSized]] as const) {
  for (let i = 0; i < 50_000; i++) f();
  const runs: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < N; i++) f();
    runs.push(Number(process.hrtime.bigint() - t0) / N);
  }
  runs.sort((a, b) => a - b);
  const rss0 = process.memoryUsage().arrayBuffers;
  const keep: Buffer[] = []; for (let i = 0; i < 10_000; i++) keep.push(f());
  const rss1 = process.memoryUsage().arrayBuffers;
  console.log(`${name}: median ${runs[2]!.toFixed(0)} ns/frame; 10,000 kept frames hold ${((rss1 - rss0) / 1e6).toFixed(1)} MB of ArrayBuffers (${keep.length})`);
}
