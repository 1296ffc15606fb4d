// Record framing: round trips, and every single-bit flip is caught.

import t from 'tap';
import { crc32c } from '../../src/native.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';
import {
  alignUp,
  decodeRecord,
  encodeBatchHeader,
  encodeRecord,
  recordBytes,
  recordHeaderBytes,
  RecordKind,
  type RecordSpec,
} from '../../src/wal/record.ts';
import { decodeSegmentHeader, encodeSegmentHeader, nextSalt, parseSegmentFileName, segmentFileName } from '../../src/wal/segment.ts';

const salt = 0x1234_5678;

t.test('a record round-trips with its fields and payload', async (t) => {
  const buf = Buffer.alloc(256);
  const spec: RecordSpec = { kind: RecordKind.Entry, type: 1, term: 2 ** 40 + 3, index: Number.MAX_SAFE_INTEGER, payload: Buffer.from('hello wal') };
  const end = encodeRecord(buf, 7, spec, salt, crc32c);
  t.equal(end, 7 + recordBytes(spec.payload.length));
  const r = decodeRecord(buf, 7, buf.length, salt, crc32c);
  t.equal(r.status, 'ok');
  if (r.status !== 'ok') return;
  t.equal(r.record.kind, RecordKind.Entry);
  t.equal(r.record.type, 1);
  t.equal(r.record.term, 2 ** 40 + 3);
  t.equal(r.record.index, Number.MAX_SAFE_INTEGER);
  t.equal(r.record.payload.toString(), 'hello wal');
  t.equal(r.record.end, end);
});

t.test('every single-bit flip in header or payload is detected', async (t) => {
  const buf = Buffer.alloc(128);
  const end = encodeRecord(buf, 0, { kind: RecordKind.HardState, type: 0, term: 9, index: 77, payload: Buffer.from('node-3') }, salt, crc32c);
  let detected = 0;
  for (let bit = 0; bit < end * 8; bit++) {
    const copy = Buffer.from(buf);
    copy[bit >> 3]! ^= 1 << (bit & 7);
    if (decodeRecord(copy, 0, copy.length, salt, crc32c).status !== 'ok') detected++;
  }
  t.equal(detected, end * 8, `all ${end * 8} flips detected`);
});

t.test('a record only verifies under the salt of its segment', async (t) => {
  const buf = Buffer.alloc(64);
  encodeRecord(buf, 0, { kind: RecordKind.Entry, type: 0, term: 1, index: 1, payload: Buffer.from('x') }, salt, crc32c);
  t.equal(decodeRecord(buf, 0, buf.length, salt + 1, crc32c).status, 'bad');
});

t.test('zeros are "empty", truncation and unknown kinds are "bad"', async (t) => {
  const zeros = Buffer.alloc(64);
  t.same(decodeRecord(zeros, 0, zeros.length, salt, crc32c), { status: 'empty' });
  const buf = Buffer.alloc(64);
  const end = encodeRecord(buf, 0, { kind: RecordKind.Entry, type: 0, term: 1, index: 1, payload: Buffer.alloc(20, 1) }, salt, crc32c);
  t.match(decodeRecord(buf, 0, end - 1, salt, crc32c), { status: 'bad', why: /runs past the end/ });
  t.match(decodeRecord(buf, 0, 10, salt, crc32c), { status: 'bad', why: /header runs past/ });
  buf[8] = 99;
  buf.writeUInt32LE(crc32c(buf.subarray(4, end), salt), 0);
  t.match(decodeRecord(buf, 0, end, salt, crc32c), { status: 'bad', why: /unknown record kind 99/ });
});

t.test('batch headers carry length, sequence and count', async (t) => {
  const buf = Buffer.alloc(64);
  encodeBatchHeader(buf, 0, 4160, 17, 3, salt, crc32c);
  const r = decodeRecord(buf, 0, buf.length, salt, crc32c);
  t.match(r, { status: 'ok', record: { kind: RecordKind.Batch, term: 4160, index: 17, aux: 3 } });
  t.equal(recordHeaderBytes, 32);
  t.equal(alignUp(4097, 4096), 8192);
  t.equal(alignUp(8192, 4096), 8192);
});

t.test('segment names and headers', async (t) => {
  const name = segmentFileName(3, 0x1f);
  t.equal(name, '0000000000000003-000000000000001f.wal');
  t.same(parseSegmentFileName(name), { name, seq: 3, firstIndex: 31 });
  t.equal(parseSegmentFileName('0000000000000003.wal'), undefined);
  t.equal(parseSegmentFileName('next-segment.tmp'), undefined);
  const buf = Buffer.alloc(4096);
  const header = { seq: 2 ** 33, firstIndex: 2 ** 45 + 1, salt: 0xfedcba98, alignment: 4096, segmentBytes: 64 * 1024 * 1024, recycled: false };
  encodeSegmentHeader(buf, header, crc32c);
  t.same(decodeSegmentHeader(buf, crc32c), { ok: true, header });
  buf[20]! ^= 4;
  t.match(decodeSegmentHeader(buf, crc32c), { ok: false, why: /checksum/ });
  t.match(decodeSegmentHeader(Buffer.alloc(4096), crc32c), { ok: false, why: /magic/ });
});

t.test('a recycled segment header: format version 2 with its flag; a version and flags that disagree are refused', async (t) => {
  const buf = Buffer.alloc(4096);
  const header = { seq: 7, firstIndex: 100, salt: 0x1234, alignment: 4096, segmentBytes: 1024 * 1024, recycled: true };
  encodeSegmentHeader(buf, header, crc32c);
  t.equal(buf.readUInt32LE(12), 2, 'version 2');
  t.same(decodeSegmentHeader(buf, crc32c), { ok: true, header });
  buf.writeUInt32LE(1, 12);
  buf.writeUInt32LE(crc32c(buf.subarray(12, 64)), 8);
  t.match(decodeSegmentHeader(buf, crc32c), { ok: false, why: /flags 1 do not belong to format version 1/ });
});

t.test('salts chain without repeating; a record never verifies under another salt of the chain', async (t) => {
  t.equal(nextSalt(5), 6);
  t.equal(nextSalt(0xffff_fffe), 1, 'wraps past the largest salt, skipping 0');
  // crc32c is affine in its seed: a different seed gives a different CRC for the same bytes, always.
  const buf = Buffer.alloc(4096);
  let s = 0xffff_fff0;
  const first = s;
  const end = encodeRecord(buf, 0, { kind: RecordKind.Entry, type: 0, term: 3, index: 9, payload: Buffer.alloc(3000, 7) }, first, crc32c);
  let verified = 0;
  for (let i = 0; i < 5000; i++) {
    s = nextSalt(s);
    if (decodeRecord(buf, 0, end, s, crc32c).status === 'ok') verified++;
  }
  t.equal(verified, 0, 'none of the next 5000 salts verifies it');
});

t.test('the native one-pass copy + CRC writes the same record bytes as copy then CRC', async (t) => {
  t.type(crc32c.copy, 'function', 'the WAL stages payloads with crc32c.copy');
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  const random = makeRandom(seed);
  const twoPass = (d: Uint8Array, i?: number): number => crc32c(d, i);
  // Lengths around every loop of the native pass: bytes to the 8-byte boundary,
  // 32-byte words, three 4 KiB stripes, and a 1 MiB write's tail.
  const lengths = [0, 1, 7, 8, 31, 32, 33, 4095, 3 * 4096 - 1, 3 * 4096, 3 * 4096 + 9, 1024 * 1024 + 3];
  for (let i = 0; i < 40; i++) lengths.push(random.int(0, 70_000));
  const differing: string[] = [];
  for (const length of lengths) {
    const source = random.bytes(length + 16);
    const skew = random.int(0, 15);
    const payload = source.subarray(skew, skew + length);
    const at = random.int(0, 40);
    const spec: RecordSpec = { kind: RecordKind.Entry, type: 0, term: 5, index: 1000 + length, payload };
    const one = Buffer.alloc(at + recordBytes(length) + 8, 0xee);
    const two = Buffer.alloc(one.length, 0xee);
    const endOne = encodeRecord(one, at, spec, salt, crc32c);
    const endTwo = encodeRecord(two, at, spec, salt, twoPass);
    const r = decodeRecord(one, at, one.length, salt, crc32c);
    if (endOne !== endTwo || !one.equals(two)) differing.push(`length ${length}, source skew ${skew}, at ${at}: the records differ`);
    else if (r.status !== 'ok' || !r.record.payload.equals(payload)) differing.push(`length ${length}: does not decode back`);
  }
  t.same(differing, [], `${lengths.length} lengths, skews and offsets encode alike and decode back (XDEVICE_SEED=${seed})`);
});
