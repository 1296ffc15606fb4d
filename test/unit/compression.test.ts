// Write compression (src/device/compression.ts, src/device/lz4.ts) and the
// COMPRESSED_WRITE command: the policy, the version gate, the codec, a seeded
// fuzzer of the decoder, and the same device content whether a write log was
// proposed with compression or without.

import t from 'tap';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { BlockStore } from '../../src/device/block-store.ts';
import {
  CommandDecodeError,
  CommandOp,
  type Command,
  type RequestId,
  decodeCommand,
  encodeCommand,
  encodeCompressedWrite,
  encodeCreateDevice,
  encodeWrite,
} from '../../src/device/commands.ts';
import { CompressionBackoff, CompressionStats, allZero, compactWrite, membersDecodeCompressed, probeCompresses, versionAtLeast, COMPRESSED_WRITE_SINCE } from '../../src/device/compression.ts';
import { compressBlock, decompressBlock, Lz4BlockError } from '../../src/device/lz4.ts';
import { limits } from '../../src/limits.ts';
import { EntryType, type Entry } from '../../src/raft/types.ts';
import { VERSION } from '../../src/version.ts';
import { tempDir } from './helpers/store-log.ts';
import { makeRandom } from './helpers/nbd-random.ts';

const logger = pino({ level: 'silent' });
/** compactWrite, settled (large writes compress on the thread pool). */
const compactNow = async (...args: Parameters<typeof compactWrite>) => await compactWrite(...args);
const id: RequestId = { clientId: 77, seq: 5, firstUnacked: 2 };

/** Half random, half a repeated byte, per 512 bytes (fio's buffer_compress_percentage=50, buffer_compress_chunk=512). */
function halfCompressible(length: number, rnd: () => number = Math.random): Buffer {
  const b = Buffer.alloc(length);
  for (let at = 0; at < length; at += 512) {
    for (let i = at; i < Math.min(at + 256, length); i++) b[i] = Math.floor(rnd() * 256);
    b.fill(0x61, Math.min(at + 256, length), Math.min(at + 512, length));
  }
  return b;
}

t.test('versions: at or after COMPRESSED_WRITE_SINCE, pre-releases before their release, junk never', async (t) => {
  t.ok(versionAtLeast(VERSION, COMPRESSED_WRITE_SINCE), `this build (${VERSION}) decodes COMPRESSED_WRITE`);
  t.ok(versionAtLeast('0.2.0', '0.2.0'));
  t.ok(versionAtLeast('0.10.0', '0.2.0'), 'numeric, not lexical');
  t.ok(versionAtLeast('1.0.0', '0.2.0'));
  t.ok(versionAtLeast('0.2.1+build.5', '0.2.0'));
  t.notOk(versionAtLeast('0.1.0', '0.2.0'), 'the version before compression');
  t.notOk(versionAtLeast('0.2.0-rc.1', '0.2.0'), 'a pre-release is older than its release');
  t.ok(versionAtLeast('0.2.0-rc.1', '0.2.0-rc.1'));
  for (const junk of ['', '0.2', 'latest', '0.2.0.1', '0.0.0-unknown']) t.notOk(versionAtLeast(junk, '0.2.0'), `"${junk}"`);
});

t.test('the gate: every member published a version that decodes it, none unpublished', async (t) => {
  const table: Record<string, string> = { a: '0.2.0', b: '0.3.1', c: '0.1.0' };
  const v = (x: string) => table[x];
  t.ok(membersDecodeCompressed(['a', 'b'], v));
  t.notOk(membersDecodeCompressed(['a', 'b', 'c'], v), 'one old member closes it');
  t.notOk(membersDecodeCompressed(['a', 'd'], v), 'a member not yet published counts as old');
  t.notOk(membersDecodeCompressed([], v), 'no configuration: nothing known');
});

t.test('allZero looks at every byte of every part', async (t) => {
  t.ok(allZero([Buffer.alloc(200_000), Buffer.alloc(7)]));
  t.ok(allZero([]));
  for (const at of [0, 65_535, 65_536, 199_999]) {
    const b = Buffer.alloc(200_000);
    b[at] = 1;
    t.notOk(allZero([b]), `a one at ${at}`);
  }
  t.notOk(allZero([Buffer.alloc(10), Buffer.from([0, 0, 3])]), 'in a later part');
});

t.test('policy: holes for zeroes, LZ4 when it saves 1/8, plain otherwise, nothing with off', async (t) => {
  const stats = new CompressionStats();
  const dev = 9;
  const zeros = (await compactNow('lz4', true, dev, 4096, [Buffer.alloc(8192)], stats));
  t.ok(zeros?.hole, 'all zeroes: a hole');
  t.same(decodeCommand(zeros!.encode(id)), { op: CommandOp.WriteZeroes, ...id, deviceId: dev, offset: 4096, length: 8192, noHole: false });
  t.ok((await compactNow('lz4', false, dev, 0, [Buffer.alloc(4096)], stats))?.hole, 'holes need no version gate (WRITE_ZEROES is old)');

  const data = halfCompressible(64 * 1024);
  const c = (await compactNow('lz4', true, dev, 1 << 20, [data.subarray(0, 1000), data.subarray(1000)], stats));
  t.ok(c && !c.hole, 'compressible: compressed');
  const cmd = decodeCommand(c!.encode(id));
  t.equal(cmd.op, CommandOp.CompressedWrite);
  if (cmd.op === CommandOp.CompressedWrite) {
    t.same(cmd.data, data, 'decodes to the original bytes');
    t.ok(cmd.block.length < data.length * 0.6, `${cmd.block.length} bytes carried for ${data.length}`);
  }

  const own = (await compactNow('lz4', true, dev, 0, [data], stats))!.encode(id);
  const first = decodeCommand(own);
  t.equal(first.op === CommandOp.CompressedWrite && first.data, data, 'the proposer’s own apply takes the plaintext it compressed');
  const second = decodeCommand(own);
  t.ok(second.op === CommandOp.CompressedWrite && second.data !== data && second.data.equals(data), 'once: later decodes decompress');
  t.ok((decodeCommand(Buffer.from(own)) as { data: Buffer }).data.equals(data), 'a copy (a peer’s, the WAL’s) is decompressed');
  const large = halfCompressible(limits.compressAsyncBytesMin);
  const pending = compactWrite('lz4', true, dev, 0, [large], stats);
  t.ok(pending instanceof Promise, 'a large write compresses off the event loop');
  const done = await pending;
  t.ok((decodeCommand(Buffer.from(done!.encode(id))) as { data: Buffer }).data.equals(large), 'and decodes to its bytes');
  t.equal((await compactNow('lz4', true, dev, 0, [randomBytes(64 * 1024)], stats)), undefined, 'random data: as written');
  t.equal((await compactNow('lz4', false, dev, 0, [data], stats)), undefined, 'gate closed: as written');
  t.equal((await compactNow('lz4', true, dev, 0, [data.subarray(0, limits.compressWriteBytesMin - 1)], stats)), undefined, 'below the minimum: as written');
  const before = { ...stats };
  t.equal((await compactNow('off', true, dev, 0, [Buffer.alloc(4096)], stats)), undefined, 'off: zeroes as written too');
  t.same({ ...stats }, before, 'off counts nothing');
  t.equal(stats.zeroWrites, 2);
  t.equal(stats.compressedWrites, 3);
  t.equal(stats.incompressibleWrites, 1);
  t.ok(stats.bytesOut < stats.bytesIn, 'bytes saved');
});

t.test('large writes are probed: samples that do not shrink send the write as written, unread by LZ4 as a whole', async (t) => {
  const dev = 1;
  const MiB = 1024 * 1024;
  /** `b` cut into parts of `n` bytes (the last shorter), as a socket delivers a payload. */
  const cut = (b: Buffer, n: number): Buffer[] => {
    const out: Buffer[] = [];
    for (let at = 0; at < b.length; at += n) out.push(b.subarray(at, Math.min(b.length, at + n)));
    return out;
  };
  const random = randomBytes(MiB);
  t.notOk(probeCompresses(cut(random, 65_536), MiB), 'random data: no sample shrinks');
  const stats = new CompressionStats();
  t.equal(compactWrite('lz4', true, dev, 0, cut(random, 65_536), stats), undefined, 'decided at once, without the thread pool');
  t.equal(stats.incompressibleWrites, 1);
  t.equal(stats.bytesOut, MiB, 'counted as sent as written');
  // Only the middle is compressible: the middle sample finds it, and parts of
  // 1000 bytes make every sample straddle parts.
  const mixed = Buffer.from(random);
  halfCompressible(MiB / 2).copy(mixed, MiB / 4);
  const parts = cut(mixed, 1000);
  t.ok(probeCompresses(parts, MiB), 'the middle sample shrinks');
  const done = await compactWrite('lz4', true, dev, 0, parts, stats);
  t.ok(done, 'so the whole write is compressed');
  t.ok((decodeCommand(Buffer.from(done!.encode(id))) as { data: Buffer }).data.equals(mixed), 'and decodes to its bytes');
  const small = randomBytes(limits.compressProbeWriteBytesMin - 1);
  t.equal(await compactWrite('lz4', true, dev, 0, [small], stats), undefined, 'below the probe size: the full attempt decides');
  t.equal(stats.incompressibleWrites, 2);
});

t.test('a device whose writes do not shrink is tried less often, and found again when they do', async (t) => {
  const dev = 1;
  const stats = new CompressionStats();
  const backoff = new CompressionBackoff();
  const write = async (data: Buffer) => await compactWrite('lz4', true, dev, 0, [data], stats, backoff);
  const streak = limits.compressBackoffStreak;
  const skipMax = limits.compressBackoffSkipMax;
  for (let i = 0; i < streak; i++) t.equal(await write(randomBytes(4096)), undefined);
  t.equal(stats.incompressibleWrites, streak, `the first ${streak} random writes are tried`);
  t.equal(stats.skippedWrites, 0);
  // The streak's last failure skips 1, the next 2, then 4 ...: count attempts over a long run.
  const n = 20 * (skipMax + 1);
  for (let i = 0; i < n; i++) await write(randomBytes(4096));
  const tried = stats.incompressibleWrites - streak;
  t.equal(tried + stats.skippedWrites, n, 'every write either tried or skipped');
  const doublings = Math.log2(skipMax) + 1;
  t.ok(tried <= doublings + Math.ceil(n / (skipMax + 1)), `${tried} of ${n} tried: at most one in ${skipMax + 1} once backed off`);
  t.ok(tried >= Math.floor(n / (skipMax + 1)), 'and still tried now and then');
  t.equal(stats.bytesOut, stats.bytesIn, 'skipped writes are counted as sent as written');
  // All-zero writes still become holes while backed off (no LZ4 is involved).
  const zero = await write(Buffer.alloc(4096));
  t.ok(zero?.hole, 'a zero write is a hole while backed off');
  // Compressible data is found within skipMax + 1 writes and resets the backoff.
  let found = -1;
  for (let i = 0; i <= skipMax + 1 && found < 0; i++) if (await write(halfCompressible(4096))) found = i;
  t.ok(found >= 0 && found <= skipMax, `compressible data compressed after ${found} skipped writes`);
  const skipped = stats.skippedWrites;
  t.ok(await write(halfCompressible(4096)), 'and then every compressible write is');
  t.ok(await write(halfCompressible(4096)));
  for (let i = 0; i < streak; i++) await write(randomBytes(4096));
  t.equal(stats.skippedWrites, skipped, `after a success, ${streak} failures in a row are tried again before any skip`);
  // Large writes: a failed probe counts as a failed attempt too.
  const big = new CompressionBackoff();
  const bigStats = new CompressionStats();
  for (let i = 0; i < streak + 1; i++) compactWrite('lz4', true, dev, 0, [randomBytes(limits.compressProbeWriteBytesMin)], bigStats, big);
  t.equal(bigStats.incompressibleWrites, streak, 'probed large writes back off the same way');
  t.equal(bigStats.skippedWrites, 1);
  // Without a backoff (other callers) every write is tried.
  const plainStats = new CompressionStats();
  for (let i = 0; i < 2 * streak; i++) await compactWrite('lz4', true, dev, 0, [randomBytes(4096)], plainStats);
  t.equal(plainStats.incompressibleWrites, 2 * streak, 'no backoff: every write tried');
});

t.test('codec: COMPRESSED_WRITE round-trips, re-encodes to the same bytes, and refuses what does not add up', async (t) => {
  const data = halfCompressible(10_000);
  const block = compressBlock(data);
  const bytes = encodeCompressedWrite(id, 3, 512, block);
  const c = decodeCommand(bytes);
  t.same(c, { op: CommandOp.CompressedWrite, ...id, deviceId: 3, offset: 512, data, block });
  t.ok(encodeCommand(c).equals(bytes), 'encodeCommand gives the same bytes');

  const refused = (what: string, b: Buffer) => t.throws(() => decodeCommand(b), CommandDecodeError, what);
  refused('no block', encodeCompressedWrite(id, 3, 512, Buffer.alloc(0)));
  refused('a length prefix only', encodeCompressedWrite(id, 3, 512, Buffer.from([0, 16, 0, 0])));
  const zeroLength = Buffer.from(block);
  zeroLength.writeUInt32LE(0, 0);
  refused('length 0', encodeCompressedWrite(id, 3, 512, zeroLength));
  const huge = Buffer.from(block);
  huge.writeUInt32LE(limits.requestBytesMax + 1, 0);
  refused('a length beyond the largest write (never allocated)', encodeCompressedWrite(id, 3, 512, huge));
  const longer = Buffer.from(block);
  longer.writeUInt32LE(data.length + 1, 0);
  refused('a length the block does not fill', encodeCompressedWrite(id, 3, 512, longer));
  const shorter = Buffer.from(block);
  shorter.writeUInt32LE(data.length - 1, 0);
  refused('a block longer than its length', encodeCompressedWrite(id, 3, 512, shorter));
  refused('truncated', encodeCompressedWrite(id, 3, 512, block.subarray(0, block.length - 1)));
  refused('trailing bytes', encodeCompressedWrite(id, 3, 512, Buffer.concat([block, Buffer.from([0x10, 0x41])])));
  t.throws(() => decompressBlock(block, data.length, data.length - 1), Lz4BlockError, 'the caller’s bound holds in lz4.ts too');
});

t.test('seeded fuzz: mutated COMPRESSED_WRITEs decode to exactly their length (and re-encode to the same bytes) or are refused', async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1e9);
  t.comment(`XDEVICE_SEED=${seed}`);
  const random = makeRandom(seed);
  const rnd = (n: number): number => random.int(0, n - 1);
  const unit = () => rnd(1 << 30) / (1 << 30);
  const bodyAt = 2 + 24 + 16;
  const base = [4096, 513, 70_000].map((n) => encodeCompressedWrite(id, 1, 0, compressBlock(halfCompressible(n, unit))));
  base.push(encodeCompressedWrite(id, 1, 0, compressBlock(Buffer.alloc(5000, 7))));
  let decoded = 0;
  let refused = 0;
  for (let i = 0; i < 3000; i++) {
    const buf = Buffer.from(base[rnd(base.length)]!);
    let bytes: Buffer = buf;
    const kind = rnd(5);
    if (kind === 0) for (let k = 1 + rnd(4); k > 0; k--) buf[bodyAt + rnd(buf.length - bodyAt)] = rnd(256);
    else if (kind === 1) bytes = buf.subarray(0, bodyAt + rnd(buf.length - bodyAt + 1));
    else if (kind === 2) bytes = Buffer.concat([buf, Buffer.from(Array.from({ length: 1 + rnd(8) }, () => rnd(256)))]);
    else if (kind === 3) buf.writeUInt32LE(rnd(2) === 0 ? rnd(1 << 16) : rnd(2 ** 32), bodyAt);
    else {
      bytes = Buffer.from(Array.from({ length: bodyAt + rnd(300) }, () => rnd(256)));
      Buffer.from(buf.subarray(0, 26)).copy(bytes);
    }
    let c: Command;
    try {
      c = decodeCommand(bytes);
    } catch (err) {
      if (!(err instanceof CommandDecodeError)) t.fail(`seed ${seed} case ${i}: ${(err as Error).name} ${(err as Error).message}`);
      refused++;
      continue;
    }
    decoded++;
    if (c.op !== CommandOp.CompressedWrite) {
      t.fail(`seed ${seed} case ${i}: decoded as op ${c.op}`);
      continue;
    }
    if (c.data.length !== c.block.readUInt32LE(0) || c.data.length < 1 || c.data.length > limits.requestBytesMax) t.fail(`seed ${seed} case ${i}: ${c.data.length} bytes decoded`);
    if (!encodeCommand(c).equals(bytes)) t.fail(`seed ${seed} case ${i}: re-encoding differs`);
    // Deterministic: the same bytes decode to the same data again.
    const again = decodeCommand(Buffer.from(bytes)) as typeof c;
    if (!again.data.equals(c.data)) t.fail(`seed ${seed} case ${i}: a second decode differs`);
  }
  t.ok(refused > 0 && decoded > 0, `${decoded} decoded, ${refused} refused`);
});

t.test('the same writes applied as proposed with compression and without give identical device content', async (t) => {
  const size = 4 << 20;
  const writes: { offset: number; data: Buffer }[] = [];
  for (let i = 0; i < 60; i++) {
    const length = [512, 4096, 65536, 200_000][i % 4]!;
    const offset = (i * 37 * 4096) % (size - length);
    const kind = i % 3;
    writes.push({ offset, data: kind === 0 ? halfCompressible(length) : kind === 1 ? randomBytes(length) : Buffer.alloc(length) });
  }
  const contents: Buffer[] = [];
  for (const mode of ['lz4', 'off'] as const) {
    const store = await BlockStore.open(await tempDir(t, 'xdevice-compress-'), logger);
    t.teardown(() => store.closeFiles());
    const entries: Entry[] = [];
    let seq = 0;
    const next = (): RequestId => ({ clientId: 1, seq: ++seq, firstUnacked: seq });
    const add = (data: Buffer) => entries.push({ term: 1, index: entries.length + 1, type: EntryType.Normal, data });
    add(encodeCreateDevice(next(), 'd', size));
    const stats = new CompressionStats();
    for (const w of writes) {
      // Fill first so a hole has something to replace.
      add(encodeWrite(next(), 1, w.offset, Buffer.alloc(w.data.length, 0xff)));
      const compact = (await compactNow(mode, true, 1, w.offset, [w.data], stats));
      add(compact ? compact.encode(next()) : encodeWrite(next(), 1, w.offset, w.data));
    }
    const outcomes = await store.applyBatch(entries, () => {});
    t.ok(outcomes.every((o) => !o.error), `${mode}: every write applied`);
    t.equal(stats.compressedWrites > 0 && stats.zeroWrites > 0, mode === 'lz4', `${mode}: ${stats.compressedWrites} compressed, ${stats.zeroWrites} holes`);
    contents.push(await store.read(1, 0, size));
  }
  t.ok(contents[0]!.equals(contents[1]!), 'identical content');
});
