import t from 'tap';
import { randomBytes } from 'node:crypto';
import { EntryType, MessageType, message } from '../../src/raft/types.ts';
import {
  FrameDecoder,
  FrameKind,
  decodeFrame,
  encodeChallenge,
  encodeHello,
  encodeWelcome,
  encodePing,
  encodeRaftMessage,
  encodeRemoved,
  encodeSnapBegin,
  encodeSnapBlocks,
  encodeSnapChunk,
  encodeSnapEnd,
  encodeSnapResult,
  decodeConfState,
  encodeConfState,
} from '../../src/cluster/codec.ts';
import { WireError } from '../../src/device/wire.ts';
import { compressBlock } from '../../src/device/lz4.ts';
import { limits } from '../../src/limits.ts';

const B = limits.snapshotBlockBytes;

function bodies(buffers: Buffer[]): Buffer[] {
  return new FrameDecoder().push(Buffer.concat(buffers));
}

t.test('a raft message with entries, context and snapshot round-trips', async (t) => {
  const payload = randomBytes(4096);
  const m = message({
    type: MessageType.App,
    from: 'node1',
    to: 'node2',
    term: 7,
    logTerm: 6,
    index: 2 ** 40 + 3,
    commit: 99,
    reject: true,
    rejectHint: 12,
    entries: [
      { term: 7, index: 2 ** 40 + 4, type: EntryType.Normal, data: payload },
      { term: 7, index: 2 ** 40 + 5, type: EntryType.ConfChange, data: Buffer.from('cc') },
      { term: 7, index: 2 ** 40 + 6, type: EntryType.Normal, data: Buffer.alloc(0) },
    ],
    context: Buffer.from('ctx'),
    snapshot: { index: 5, term: 2, confState: { voters: ['a', 'b'], learners: ['c'], votersOutgoing: [], learnersNext: ['d'], autoLeave: true } },
  });
  const enc = encodeRaftMessage(m);
  t.equal(enc[1], payload, 'the payload buffer is passed through, not copied');
  const [body] = bodies(enc);
  const f = decodeFrame(body!);
  t.equal(f.kind, FrameKind.Raft);
  if (f.kind !== FrameKind.Raft) return;
  t.same(f.message, m);
  t.equal(f.message.entries[0]!.data.buffer, body!.buffer, 'decoded payloads are slices of the frame');
});

t.test('a message without optional fields decodes without them', async (t) => {
  const m = message({ type: MessageType.Heartbeat, from: 'x', to: 'y', term: 1, commit: 3 });
  const f = decodeFrame(bodies(encodeRaftMessage(m))[0]!);
  t.same(f, { kind: FrameKind.Raft, message: m });
  t.notOk('context' in (f as { message: object }).message);
});

t.test('control and snapshot frames round-trip', async (t) => {
  const nonce = randomBytes(32);
  const cases: [Buffer[], object][] = [
    [[encodeHello({ version: 2, clusterId: 'c1', from: 'a', to: 'b', nonce, mac: Buffer.alloc(32, 2) })], { kind: FrameKind.Hello, version: 2, clusterId: 'c1', from: 'a', to: 'b', nonce, mac: Buffer.alloc(32, 2) }],
    [[encodeChallenge({ version: 2, nonce })], { kind: FrameKind.Challenge, version: 2, nonce }],
    [[encodeWelcome({ from: 'b', mac: Buffer.alloc(0) })], { kind: FrameKind.Welcome, from: 'b', mac: Buffer.alloc(0) }],
    [[encodePing(FrameKind.Pong, 123456789012)], { kind: FrameKind.Pong, sentAtNs: 123456789012 }],
    [[encodeRemoved('n7')], { kind: FrameKind.Removed, nodeId: 'n7' }],
    [
      encodeSnapBegin({ snapshotId: 3, metadata: { index: 10, term: 2, confState: { voters: ['a'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } }, state: Buffer.from('state') }),
      { kind: FrameKind.SnapBegin, snapshotId: 3, metadata: { index: 10, term: 2, confState: { voters: ['a'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } }, state: Buffer.from('state') },
    ],
    [encodeSnapChunk({ snapshotId: 3, file: 1, offset: 4096, data: Buffer.from('abc'), zeroBytes: 0 }), { kind: FrameKind.SnapChunk, snapshotId: 3, file: 1, offset: 4096, data: Buffer.from('abc'), zeroBytes: 0 }],
    [encodeSnapChunk({ snapshotId: 3, file: 1, offset: 0, data: Buffer.alloc(0), zeroBytes: 1 << 20 }), { kind: FrameKind.SnapChunk, snapshotId: 3, file: 1, offset: 0, data: Buffer.alloc(0), zeroBytes: 1 << 20 }],
    [[encodeSnapEnd({ snapshotId: 3, chunks: 9, appliedEnd: 77 })], { kind: FrameKind.SnapEnd, snapshotId: 3, chunks: 9, appliedEnd: 77 }],
    [[encodeSnapResult({ snapshotId: 3, ok: false, reason: 'disk full' })], { kind: FrameKind.SnapResult, snapshotId: 3, ok: false, reason: 'disk full' }],
    [[encodeSnapResult({ snapshotId: 3, ok: true, reason: '', more: true })], { kind: FrameKind.SnapResult, snapshotId: 3, ok: true, reason: '', more: true }],
    [[encodeSnapResult({ snapshotId: 3, ok: true, reason: '', lz4: true })], { kind: FrameKind.SnapResult, snapshotId: 3, ok: true, reason: '', lz4: true }],
    [
      encodeSnapChunk({ snapshotId: 3, file: 1, offset: 8192, data: compressBlock(Buffer.alloc(5000, 'x')), zeroBytes: 0, lz4: true }),
      { kind: FrameKind.SnapChunk, snapshotId: 3, file: 1, offset: 8192, data: compressBlock(Buffer.alloc(5000, 'x')), zeroBytes: 0, lz4: true },
    ],
    [
      encodeSnapBlocks({ snapshotId: 3, snapshot: { id: 40, deviceId: 2, name: 's.1', createdAt: 99, size: 3 * B + 512 }, blocks: [3, 0, 1], data: [Buffer.alloc(512, 7), Buffer.alloc(0), Buffer.alloc(B, 9)] }),
      { kind: FrameKind.SnapBlocks, snapshotId: 3, snapshot: { id: 40, deviceId: 2, name: 's.1', createdAt: 99, size: 3 * B + 512 }, blocks: [3, 0, 1], data: [Buffer.alloc(512, 7), Buffer.alloc(0), Buffer.alloc(B, 9)] },
    ],
    [encodeSnapBlocks({ snapshotId: 4, snapshot: { id: 5, deviceId: 1, name: 'e', createdAt: 0, size: 0 }, blocks: [], data: [] }), { kind: FrameKind.SnapBlocks, snapshotId: 4, snapshot: { id: 5, deviceId: 1, name: 'e', createdAt: 0, size: 0 }, blocks: [], data: [] }],
  ];
  for (const [enc, expected] of cases) t.same(decodeFrame(bodies(enc)[0]!), expected);
});

t.test('snapshot blocks frames: every number from the peer is bounded before anything acts on it', async (t) => {
  const snapshot = { id: 40, deviceId: 2, name: 's1', createdAt: 99, size: 4 * B };
  const body = (f: Parameters<typeof encodeSnapBlocks>[0]): Buffer => bodies(encodeSnapBlocks(f))[0]!;
  const good = body({ snapshotId: 1, snapshot, blocks: [1, 2], data: [Buffer.alloc(B, 1), Buffer.alloc(0)] });
  t.equal((decodeFrame(good) as { blocks: number[] }).blocks.length, 2);
  t.throws(() => decodeFrame(body({ snapshotId: 1, snapshot, blocks: [4], data: [Buffer.alloc(0)] })), { message: /block 4 beyond/ }, 'a block beyond the geometry');
  t.throws(() => decodeFrame(body({ snapshotId: 1, snapshot: { ...snapshot, size: limits.deviceBytesMax + 512 }, blocks: [], data: [] })), { message: /deviceBytesMax/ }, 'a size beyond deviceBytesMax');
  t.throws(() => decodeFrame(body({ snapshotId: 1, snapshot: { ...snapshot, name: 'a b' }, blocks: [], data: [] })), { message: /snapshot name/ }, 'a bad name');
  t.throws(() => decodeFrame(body({ snapshotId: 1, snapshot: { ...snapshot, id: limits.raftIndexMax + 1 }, blocks: [], data: [] })), { message: /above raftIndexMax/ }, 'an id beyond raftIndexMax');
  const many = Array.from({ length: limits.snapshotStreamBlocksPerFrameMax + 1 }, (_, i) => i);
  t.throws(() => decodeFrame(body({ snapshotId: 1, snapshot: { ...snapshot, size: many.length * B }, blocks: many, data: many.map(() => Buffer.alloc(0)) })), { message: /in one frame/ }, 'too many blocks in a frame');
  t.throws(() => decodeFrame(body({ snapshotId: 1, snapshot, blocks: [0], data: [Buffer.alloc(B + 1)] })), { message: /bytes/ }, 'a block longer than snapshotBlockBytes');
  // A length claiming more than the frame holds, trailing bytes, a truncation anywhere: WireError.
  for (let n = 1; n < good.length; n += 97) t.throws(() => decodeFrame(good.subarray(0, n)), WireError, `truncated at ${n}`);
  t.throws(() => decodeFrame(Buffer.concat([good, Buffer.alloc(1)])), WireError, 'trailing bytes');
  const result = bodies([encodeSnapResult({ snapshotId: 3, ok: true, reason: '' })])[0]!;
  result[1 + 8] = 4;
  t.throws(() => decodeFrame(result), { message: /status 4/ }, 'a result status beyond lz4');
});

t.test('LZ4 snapshot chunks: the block\'s claimed length is bounded before anything allocates for it', async (t) => {
  const chunk = (data: Buffer): Buffer => bodies(encodeSnapChunk({ snapshotId: 1, file: 0, offset: 0, data, zeroBytes: 0, lz4: true }))[0]!;
  const claim = (n: number, rest = Buffer.alloc(8)): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    return Buffer.concat([b, rest]);
  };
  t.equal((decodeFrame(chunk(claim(limits.snapshotChunkBytes))) as { lz4?: true }).lz4, true, 'a chunk of snapshotChunkBytes is accepted (the receiver decompresses it)');
  t.throws(() => decodeFrame(chunk(claim(limits.snapshotChunkBytes + 1))), { message: /LZ4 snapshot chunk/ }, 'a claim beyond snapshotChunkBytes');
  t.throws(() => decodeFrame(chunk(claim(0xffffffff))), { message: /LZ4 snapshot chunk/ }, 'a claim of 4 GiB');
  t.throws(() => decodeFrame(chunk(claim(0))), { message: /LZ4 snapshot chunk/ }, 'an empty chunk');
  const short = chunk(claim(100));
  t.throws(() => decodeFrame(short.subarray(0, short.length - 10)), { message: /LZ4 snapshot chunk/ }, 'no room for the prefix');
  t.throws(() => encodeSnapChunk({ snapshotId: 1, file: 0, offset: 0, data: Buffer.alloc(0), zeroBytes: 4096, lz4: true }), WireError, 'an LZ4 chunk never carries zeroes');
});

t.test('conf state encoding round-trips', async (t) => {
  const cs = { voters: ['n1', 'n2', 'n3'], learners: ['n4'], votersOutgoing: ['n1'], learnersNext: [], autoLeave: false };
  t.same(decodeConfState(encodeConfState(cs)), cs);
});

t.test('the decoder reassembles frames split at every byte boundary', async (t) => {
  const frames = [
    Buffer.concat(encodeRaftMessage(message({ type: MessageType.App, from: 'a', to: 'b', entries: [{ term: 1, index: 1, type: EntryType.Normal, data: randomBytes(1000) }] }))),
    encodePing(FrameKind.Ping, 1),
    Buffer.concat(encodeRaftMessage(message({ type: MessageType.Vote, from: 'a', to: 'b', term: 3 }))),
  ];
  const stream = Buffer.concat(frames);
  const expected = frames.map((f) => f.subarray(4));
  for (let cut = 1; cut < stream.length; cut += 7) {
    const d = new FrameDecoder();
    const got = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
    t.same(got, expected, `cut at ${cut}`);
  }
  // one byte at a time
  const d = new FrameDecoder();
  const got: Buffer[] = [];
  for (const b of stream) got.push(...d.push(Buffer.from([b])));
  t.same(got, expected);
});

t.test('malformed input throws WireError, never anything else', async (t) => {
  t.throws(() => new FrameDecoder(1024).push(Buffer.from([0xff, 0xff, 0, 0, 1])), WireError, 'oversized length');
  t.throws(() => new FrameDecoder().push(Buffer.from([0, 0, 0, 0])), WireError, 'zero length');
  t.throws(() => decodeFrame(Buffer.from([99])), WireError, 'unknown kind');
  const good = bodies(encodeRaftMessage(message({ type: MessageType.App, from: 'a', to: 'b', entries: [{ term: 1, index: 1, type: EntryType.Normal, data: Buffer.alloc(10) }] })))[0]!;
  for (let n = 1; n < good.length; n++) t.throws(() => decodeFrame(good.subarray(0, n)), WireError, `truncated at ${n}`);
  t.throws(() => decodeFrame(Buffer.concat([good, Buffer.alloc(1)])), WireError, 'trailing bytes');
  // fuzz: random bodies never throw anything but WireError
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1e9);
  t.comment(`XDEVICE_SEED=${seed}`);
  let x = seed;
  const rnd = () => ((x = (x * 1103515245 + 12345) % 2 ** 31), x);
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.from(good);
    for (let k = 0; k < 3; k++) b[rnd() % b.length] = rnd() & 0xff;
    try {
      decodeFrame(b);
    } catch (err) {
      if (!(err instanceof WireError)) t.fail(`non-WireError ${String(err)} (XDEVICE_SEED=${seed})`);
    }
  }
});

t.test('terms and indexes above the bounds are a protocol error, not a number for Raft', async (t) => {
  const { limits } = await import('../../src/limits.ts');
  const body = (m: Parameters<typeof message>[0]) => Buffer.concat(encodeRaftMessage(message(m))).subarray(4);
  t.equal((decodeFrame(body({ type: MessageType.Heartbeat, from: 'a', to: 'b', term: limits.raftTermMax })) as { message: { term: number } }).message.term, limits.raftTermMax);
  for (const [name, m] of [
    ['term 2^53-1', { term: Number.MAX_SAFE_INTEGER }],
    ['term above raftTermMax', { term: limits.raftTermMax + 1 }],
    ['commit 2^53-1', { commit: Number.MAX_SAFE_INTEGER }],
    ['index above raftIndexMax', { index: limits.raftIndexMax + 1 }],
    ['logTerm 2^50', { logTerm: 2 ** 50 }],
    ['rejectHint 2^53-1', { rejectHint: Number.MAX_SAFE_INTEGER }],
    ['entry term', { entries: [{ term: Number.MAX_SAFE_INTEGER, index: 1, type: EntryType.Normal, data: Buffer.alloc(1) }] }],
    ['entry index', { entries: [{ term: 1, index: limits.raftIndexMax + 5, type: EntryType.Normal, data: Buffer.alloc(1) }] }],
  ] as [string, object][]) {
    t.throws(() => decodeFrame(body({ type: MessageType.App, from: 'a', to: 'b', ...m })), { code: 'XDEVICE_ERR_BAD_FRAME', message: /above raft(Term|Index)Max/ }, name);
  }
  const snap = Buffer.concat(
    encodeSnapBegin({ snapshotId: 1, metadata: { index: 2 ** 52, term: 1, confState: { voters: ['a'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } }, state: Buffer.alloc(0) }),
  ).subarray(4);
  t.throws(() => decodeFrame(snap), { message: /snapshot index/ });
});

t.test('a decoder refuses a frame above its limit before allocating', async (t) => {
  const d = new FrameDecoder(1024);
  const header = Buffer.alloc(4);
  header.writeUInt32LE(48 * 1024 * 1024, 0);
  t.throws(() => d.push(header), { message: /out of bounds/ });
  const ok = new FrameDecoder(1024);
  t.equal(ok.push(encodePing(FrameKind.Ping, 1)).length, 1);
  ok.frameBytesMax = 64;
  const big = Buffer.alloc(4);
  big.writeUInt32LE(100, 0);
  t.throws(() => ok.push(big), { message: /out of bounds/ });
});
