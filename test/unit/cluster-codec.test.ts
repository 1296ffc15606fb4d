import t from 'tap';
import { randomBytes } from 'node:crypto';
import { EntryType, MessageType, message } from '../../src/raft/types.ts';
import {
  FrameDecoder,
  FrameKind,
  decodeFrame,
  encodeAuth,
  encodeHello,
  encodeHelloAck,
  encodePing,
  encodeRaftMessage,
  encodeRemoved,
  encodeSnapBegin,
  encodeSnapChunk,
  encodeSnapEnd,
  encodeSnapResult,
  decodeConfState,
  encodeConfState,
} from '../../src/cluster/codec.ts';
import { WireError } from '../../src/device/wire.ts';

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
    [[encodeHello({ version: 1, clusterId: 'c1', from: 'a', to: 'b', nonce })], { kind: FrameKind.Hello, version: 1, clusterId: 'c1', from: 'a', to: 'b', nonce }],
    [[encodeHelloAck({ from: 'b', nonce, mac: Buffer.alloc(32, 1) })], { kind: FrameKind.HelloAck, from: 'b', nonce, mac: Buffer.alloc(32, 1) }],
    [[encodeAuth(Buffer.alloc(0))], { kind: FrameKind.Auth, mac: Buffer.alloc(0) }],
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
  ];
  for (const [enc, expected] of cases) t.same(decodeFrame(bodies(enc)[0]!), expected);
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
