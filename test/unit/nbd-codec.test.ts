// The pure codec: every encoder round-trips through its decoder, every
// malformed input is refused the way the spec says, and seeded random and
// mutated inputs never make a decoder throw anything but NbdProtocolError.
// Replay a failure with XDEVICE_SEED=<seed>.

import t from 'tap';
import {
  decodeChunkPayload,
  decodeClientFlags,
  decodeExportNamePayload,
  decodeExportNameReply,
  decodeGreeting,
  decodeInfoPayload,
  decodeInfoRequestPayload,
  decodeMetaContextPayload,
  decodeMetaContextRequestPayload,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  decodeRequestHeader,
  decodeServerPayload,
  encodeBlockStatusChunk,
  encodeClientFlags,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSizePayload,
  encodeInfoExportPayload,
  encodeInfoRequestPayload,
  encodeInfoStringPayload,
  encodeMetaContextPayload,
  encodeMetaContextRequestPayload,
  encodeNoneChunk,
  encodeOffsetDataHeader,
  encodeOffsetHoleChunk,
  encodeOption,
  encodeOptionReply,
  encodeRequest,
  encodeServerPayload,
  encodeSimpleReply,
  readU64,
  writeU64,
} from '../../src/nbd/codec.ts';
import { NbdInfo, NbdReplyType, NBD_REPLY_FLAG_DONE } from '../../src/nbd/constants.ts';
import { NbdProtocolError } from '../../src/nbd/errors.ts';
import { limits } from '../../src/limits.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';

t.test('64-bit integers round-trip up to 2^53', async (t) => {
  const buf = Buffer.alloc(8);
  for (const value of [0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 40 + 12345, Number.MAX_SAFE_INTEGER]) {
    writeU64(buf, 0, value);
    t.equal(readU64(buf, 0), value);
  }
});

t.test('greeting, client flags and option header round-trip', async (t) => {
  t.same(decodeGreeting(encodeGreeting(3)), { handshakeFlags: 3 });
  t.equal(decodeClientFlags(encodeClientFlags(0xdeadbeef)), 0xdeadbeef);
  const option = encodeOption(7, Buffer.from('abc'));
  t.same(decodeOptionHeader(option), { option: 7, length: 3 });
  t.equal(option.subarray(16).toString(), 'abc');
  const reply = encodeOptionReply(6, 0x80000001, Buffer.from('no'));
  t.same(decodeOptionReplyHeader(reply), { option: 6, replyType: 0x80000001, length: 2 });
});

t.test('bad magics are protocol errors', async (t) => {
  const greeting = encodeGreeting(1);
  greeting[0] = 0;
  t.throws(() => decodeGreeting(greeting), NbdProtocolError);
  const oldstyle = encodeGreeting(1);
  oldstyle.writeUInt32BE(0x00420281, 8);
  t.throws(() => decodeGreeting(oldstyle), /oldstyle/);
  const option = encodeOption(1);
  option[7] ^= 1;
  t.throws(() => decodeOptionHeader(option), /IHAVEOPT/);
  const request = encodeRequest(0, 0, 0, 1, 0, 512);
  request[0] = 0x12;
  t.throws(() => decodeRequestHeader(request), /bad request magic/);
  t.throws(() => decodeRequestHeader(Buffer.alloc(27)), /short/);
  t.throws(() => decodeReplyHeader(Buffer.alloc(20)), /bad reply magic/);
  t.throws(() => decodeOptionReplyHeader(Buffer.alloc(20)), /magic/);
});

t.test('requests round-trip, including 64-bit offsets and both cookie halves', async (t) => {
  const encoded = encodeRequest(0x1f, 6, 0xfedcba98, 0x76543210, 2 ** 45 + 7, 0xffffffff);
  t.same(decodeRequestHeader(encoded), {
    flags: 0x1f,
    type: 6,
    cookieHi: 0xfedcba98,
    cookieLo: 0x76543210,
    offset: 2 ** 45 + 7,
    length: 0xffffffff,
  });
  const twoInOne = Buffer.alloc(60);
  encodeRequest(1, 1, 0, 9, 4096, 512, twoInOne, 30);
  t.equal(decodeRequestHeader(twoInOne, 30).cookieLo, 9);
});

t.test('export name and INFO/GO payloads', async (t) => {
  const name = decodeExportNamePayload(Buffer.from('disk-ä'));
  t.ok(name.ok && name.name === 'disk-ä');
  t.notOk(decodeExportNamePayload(Buffer.from([0x61, 0x00, 0x62])).ok, 'NUL is refused');
  t.notOk(decodeExportNamePayload(Buffer.from([0xc3, 0x28])).ok, 'invalid UTF-8 is refused');
  t.notOk(decodeExportNamePayload(Buffer.alloc(limits.nbdStringBytesMax + 1, 0x61)).ok, 'too long');

  const info = decodeInfoRequestPayload(encodeInfoRequestPayload('a', [NbdInfo.NAME, NbdInfo.BLOCK_SIZE]));
  t.same(info, { ok: true, name: 'a', infos: [1, 3] });
  t.same(decodeInfoRequestPayload(encodeInfoRequestPayload('', [])), { ok: true, name: '', infos: [] });
  t.notOk(decodeInfoRequestPayload(Buffer.alloc(5)).ok, 'shorter than 6');
  const overrun = encodeInfoRequestPayload('abc', []);
  overrun.writeUInt32BE(100, 0);
  t.notOk(decodeInfoRequestPayload(overrun).ok, 'name overruns');
  const badCount = encodeInfoRequestPayload('abc', [1]);
  badCount.writeUInt16BE(5, 7);
  t.notOk(decodeInfoRequestPayload(badCount).ok, 'count does not match');
});

t.test('meta context payloads', async (t) => {
  const decoded = decodeMetaContextRequestPayload(encodeMetaContextRequestPayload('x', ['base:allocation', 'qemu:dirty']));
  t.same(decoded, { ok: true, name: 'x', queries: ['base:allocation', 'qemu:dirty'] });
  t.same(decodeMetaContextRequestPayload(encodeMetaContextRequestPayload('', [])), { ok: true, name: '', queries: [] });
  const truncated = encodeMetaContextRequestPayload('x', ['base:allocation']);
  t.notOk(decodeMetaContextRequestPayload(truncated.subarray(0, truncated.length - 1)).ok, 'query overruns');
  const trailing = Buffer.concat([encodeMetaContextRequestPayload('x', []), Buffer.from([1])]);
  t.notOk(decodeMetaContextRequestPayload(trailing).ok, 'trailing bytes');
  const many = encodeMetaContextRequestPayload('x', Array.from({ length: limits.metaContextQueriesMax + 1 }, () => 'base:'));
  const tooMany = decodeMetaContextRequestPayload(many);
  t.ok(!tooMany.ok && tooMany.tooBig, 'too many queries is TOO_BIG');
  const hugeCount = encodeMetaContextRequestPayload('x', []);
  hugeCount.writeUInt32BE(0xffffffff, 5);
  t.notOk(decodeMetaContextRequestPayload(hugeCount).ok, 'a huge count allocates nothing and fails');
});

t.test('option reply payloads round-trip', async (t) => {
  t.same(decodeServerPayload(encodeServerPayload('a', 'the a disk')), { ok: true, name: 'a', description: 'the a disk' });
  t.notOk(decodeServerPayload(Buffer.from([0, 0, 0, 9, 0x61])).ok);
  t.same(decodeInfoPayload(encodeInfoExportPayload(2 ** 40, 0x1234)), {
    ok: true,
    reply: { info: NbdInfo.EXPORT, size: 2 ** 40, transmissionFlags: 0x1234 },
  });
  t.same(decodeInfoPayload(encodeInfoStringPayload(NbdInfo.NAME, 'n')), { ok: true, reply: { info: NbdInfo.NAME, name: 'n' } });
  t.same(decodeInfoPayload(encodeInfoStringPayload(NbdInfo.DESCRIPTION, 'd')), {
    ok: true,
    reply: { info: NbdInfo.DESCRIPTION, description: 'd' },
  });
  t.same(decodeInfoPayload(encodeInfoBlockSizePayload(1, 4096, 2 ** 25)), {
    ok: true,
    reply: { info: NbdInfo.BLOCK_SIZE, minimum: 1, preferred: 4096, maximum: 2 ** 25 },
  });
  t.same(decodeInfoPayload(Buffer.from([0, 99, 1])), { ok: true, reply: { info: 99, unknown: true } });
  t.notOk(decodeInfoPayload(Buffer.from([0, 0, 1])).ok, 'INFO_EXPORT must be 12 bytes');
  t.same(decodeMetaContextPayload(encodeMetaContextPayload(7, 'base:allocation')), { ok: true, contextId: 7, name: 'base:allocation' });
  t.same(decodeExportNameReply(encodeExportNameReply(4096, 3, true)), { size: 4096, transmissionFlags: 3 });
  t.equal(encodeExportNameReply(4096, 3, false).length, 134, '124 zeroes without NO_ZEROES');
  t.equal(encodeExportNameReply(4096, 3, true).length, 10);
});

t.test('transmission replies round-trip', async (t) => {
  t.same(decodeReplyHeader(encodeSimpleReply(22, 1, 2)), { kind: 'simple', error: 22, cookieHi: 1, cookieLo: 2 });
  const none = decodeReplyHeader(encodeNoneChunk(0, 5));
  t.same(none, { kind: 'structured', flags: NBD_REPLY_FLAG_DONE, type: 0, cookieHi: 0, cookieLo: 5, length: 0 });

  const data = Buffer.from('hello');
  const dataChunk = Buffer.concat([encodeOffsetDataHeader(0, 0, 6, 2 ** 33, data.length), data]);
  const dataHeader = decodeReplyHeader(dataChunk);
  t.ok(dataHeader.kind === 'structured' && dataHeader.length === 13);
  t.same(decodeChunkPayload(NbdReplyType.OFFSET_DATA, dataChunk.subarray(20)), { type: 1, offset: 2 ** 33, data });

  const hole = encodeOffsetHoleChunk(NBD_REPLY_FLAG_DONE, 0, 6, 512, 4096);
  t.same(decodeChunkPayload(NbdReplyType.OFFSET_HOLE, hole.subarray(20)), { type: 2, offset: 512, length: 4096 });

  const status = encodeBlockStatusChunk(1, 0, 7, 1, [{ length: 4096, flags: 3 }, { length: 512, flags: 0 }]);
  t.same(decodeChunkPayload(NbdReplyType.BLOCK_STATUS, status.subarray(20)), {
    type: 5,
    contextId: 1,
    descriptors: [{ length: 4096, flags: 3 }, { length: 512, flags: 0 }],
  });

  const error = encodeErrorChunk(1, 0, 8, 22, 'bad');
  t.same(decodeChunkPayload(NbdReplyType.ERROR, error.subarray(20)), { type: NbdReplyType.ERROR, error: 22, message: 'bad' });
  const errorOffset = encodeErrorChunk(1, 0, 8, 5, 'io', 1024);
  t.same(decodeChunkPayload(NbdReplyType.ERROR_OFFSET, errorOffset.subarray(20)), {
    type: NbdReplyType.ERROR_OFFSET,
    error: 5,
    message: 'io',
    offset: 1024,
  });
  const longMessage = encodeErrorChunk(1, 0, 8, 5, 'x'.repeat(10_000));
  t.equal(longMessage.readUInt16BE(24), limits.nbdStringBytesMax, 'error messages are capped at the string limit');
});

t.test('malformed chunks are refused', async (t) => {
  t.throws(() => decodeChunkPayload(NbdReplyType.NONE, Buffer.alloc(1)), NbdProtocolError);
  t.throws(() => decodeChunkPayload(NbdReplyType.OFFSET_DATA, Buffer.alloc(8)), NbdProtocolError);
  t.throws(() => decodeChunkPayload(NbdReplyType.OFFSET_HOLE, Buffer.alloc(11)), NbdProtocolError);
  t.throws(() => decodeChunkPayload(NbdReplyType.BLOCK_STATUS, Buffer.alloc(8)), NbdProtocolError);
  t.throws(() => decodeChunkPayload(NbdReplyType.BLOCK_STATUS, Buffer.alloc(13)), NbdProtocolError);
  t.throws(() => decodeChunkPayload(3, Buffer.alloc(4)), /unknown structured reply type/);
  const overrun = Buffer.alloc(8);
  overrun.writeUInt16BE(100, 4);
  t.throws(() => decodeChunkPayload(NbdReplyType.ERROR, overrun), /overruns/);
  t.same(decodeChunkPayload(0x8123, Buffer.from([0, 0, 0, 5, 0, 0])), { type: NbdReplyType.ERROR, error: 5, message: '' }, 'unknown error types are errors');
});

/** A decoder either answers or throws NbdProtocolError; nothing else may escape. */
function survives(fn: () => unknown): boolean {
  try {
    fn();
    return true;
  } catch (error) {
    return error instanceof NbdProtocolError;
  }
}

t.test('seeded fuzz: random and mutated inputs to every decoder', async (t) => {
  const seed = seedFromEnv();
  const random = makeRandom(seed);
  t.comment(`XDEVICE_SEED=${seed}`);
  const valid: Buffer[] = [
    encodeInfoRequestPayload('disk', [0, 1, 2, 3]),
    encodeMetaContextRequestPayload('disk', ['base:allocation', 'base:']),
    encodeServerPayload('a', 'b'),
    encodeInfoExportPayload(1 << 20, 3),
    encodeRequest(1, 1, 0, 1, 4096, 512),
    encodeBlockStatusChunk(1, 0, 1, 1, [{ length: 1, flags: 0 }]).subarray(20),
    encodeErrorChunk(1, 0, 1, 22, 'msg', 9).subarray(20),
  ];
  const decoders: Array<(b: Buffer) => unknown> = [
    decodeGreeting,
    decodeClientFlags,
    decodeOptionHeader,
    decodeOptionReplyHeader,
    decodeRequestHeader,
    decodeReplyHeader,
    decodeExportNamePayload,
    decodeInfoRequestPayload,
    decodeMetaContextRequestPayload,
    decodeServerPayload,
    decodeInfoPayload,
    decodeMetaContextPayload,
    decodeExportNameReply,
    (b) => decodeChunkPayload(random.int(0, 7), b),
    (b) => decodeChunkPayload(0x8000 | random.int(0, 3), b),
  ];
  const inputs = 100_000;
  let failures = 0;
  for (let i = 0; i < inputs; i++) {
    let input: Buffer;
    if (random.int(0, 1) === 0) {
      input = random.bytes(random.int(0, 64));
    } else {
      input = Buffer.from(valid[random.int(0, valid.length - 1)]!);
      for (let m = random.int(1, 4); m > 0 && input.length > 0; m--) input[random.int(0, input.length - 1)] = random.int(0, 255);
      if (random.int(0, 3) === 0) input = input.subarray(0, random.int(0, input.length));
    }
    const decoder = decoders[i % decoders.length]!;
    if (!survives(() => decoder(input))) {
      failures++;
      if (failures === 1) t.fail(`decoder ${i % decoders.length} threw on ${input.toString('hex')} (XDEVICE_SEED=${seed})`);
    }
  }
  t.equal(failures, 0, `${inputs} fuzzed inputs, only NbdProtocolError escaped`);
});
