// The cost of peer-link integrity per frame: HMAC-SHA256 sealing and opening
// (what the transport does with a cluster secret), against AES-256-GCM and
// ChaCha20-Poly1305 (which would also encrypt). Prints µs per frame and MB/s.
//   node --import=tsx scripts/bench-peer-mac.ts
import { createCipheriv, randomBytes } from 'node:crypto';
import { FrameOpener, FrameSealer } from '../src/cluster/peer-crypto.ts';

function frameOf(bytes: number): Buffer[] {
  const head = Buffer.alloc(5 + 64);
  head.writeUInt32LE(1 + 64 + bytes, 0);
  head[4] = 4;
  return [head, randomBytes(bytes)];
}

function time(label: string, bytes: number, iterations: number, fn: () => void): void {
  for (let i = 0; i < Math.min(50, iterations); i++) fn();
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) fn();
  const us = Number(process.hrtime.bigint() - start) / 1e3 / iterations;
  console.log(`${label.padEnd(36)} ${String(bytes).padStart(8)} B  ${us.toFixed(1).padStart(8)} µs/frame  ${((bytes / us) | 0).toString().padStart(5)} MB/s`);
}

const key = randomBytes(32);
for (const bytes of [4096, 1 << 20]) {
  const n = bytes > 100_000 ? 300 : 20_000;
  const frame = frameOf(bytes);
  const sealer = new FrameSealer(key);
  time('HMAC-SHA256 seal', bytes, n, () => sealer.seal(frame));
  const sealers = new FrameSealer(key);
  const sealed = Array.from({ length: n + 50 }, () => Buffer.concat(sealers.seal(frame)).subarray(4));
  const opener = new FrameOpener(key);
  let k = 0;
  time('HMAC-SHA256 open (verify)', bytes, n, () => opener.open(sealed[k++]!));
  const iv = randomBytes(12);
  time('AES-256-GCM encrypt (reference)', bytes, n, () => {
    const c = createCipheriv('aes-256-gcm', key, iv);
    for (const b of frame) c.update(b);
    c.final();
    c.getAuthTag();
  });
  time('ChaCha20-Poly1305 encrypt (reference)', bytes, n, () => {
    const c = createCipheriv('chacha20-poly1305', key, iv, { authTagLength: 16 });
    for (const b of frame) c.update(b);
    c.final();
    c.getAuthTag();
  });
}
