// The transmission phase against a live in-process server: every command,
// the errors the spec names, pipelining with out-of-order replies, DISC, and
// server shutdown. Byte-level abuse is in nbd-hostile.test.ts.

import t from 'tap';
import { Duplex } from 'node:stream';
import { NbdClient } from '../../src/nbd/client.ts';
import { decodeReplyHeader, encodeRequest } from '../../src/nbd/codec.ts';
import {
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_SEND_FAST_ZERO,
  NbdCommand,
  NbdError,
} from '../../src/nbd/constants.ts';
import { NbdRemoteError } from '../../src/nbd/errors.ts';
import { Transmission, type RequestEvent } from '../../src/nbd/transmission.ts';
import { InputQueue } from '../../src/nbd/input-queue.ts';
import { transmissionFlagsFor } from '../../src/nbd/handshake.ts';
import { MemoryDevice } from '../../src/device/memory.ts';
import { limits } from '../../src/limits.ts';
import { rawTransmission, startHarness } from './helpers/nbd-harness.ts';

function nbdError(error: unknown): number {
  return error instanceof NbdRemoteError ? error.nbdError : -1;
}

/** The NBD error a request failed with: 0 if it succeeded, -1 for a failure without one (a closed connection). */
async function errorOf(promise: Promise<unknown>): Promise<number> {
  try {
    await promise;
    return 0;
  } catch (error) {
    return nbdError(error);
  }
}

t.test('write, read back, flush, FUA, across structured and simple replies', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  for (const structuredReplies of [true, false]) {
    const c = await h.client('a', { structuredReplies });
    const data = Buffer.alloc(300_000);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7 + (structuredReplies ? 1 : 2)) & 0xff;
    await c.write(1234, data, { fua: true });
    await c.sync();
    t.ok((await c.read(1234, data.length)).equals(data), `read back (structured=${structuredReplies})`);
    t.equal((await c.read(0, 0)).length, 0, 'zero-length read');
    await c.close();
  }
});

t.test('holes: structured reads send OFFSET_HOLE and read as zeroes; block status reports them', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client('a');
  const chunk = 64 * 1024;
  await c.write(chunk, Buffer.alloc(chunk, 0xaa));
  const read = await c.read(0, 3 * chunk);
  t.ok(read.subarray(0, chunk).every((b) => b === 0), 'leading hole reads as zeroes');
  t.ok(read.subarray(chunk, 2 * chunk).every((b) => b === 0xaa), 'data');
  t.ok(read.subarray(2 * chunk).every((b) => b === 0), 'trailing hole');
  const df = await c.read(0, 3 * chunk, { df: true });
  t.ok(df.equals(read), 'DF returns the same bytes in one chunk');
  t.same(await c.blockStatus(0, 3 * chunk), [
    { length: chunk, flags: 3 },
    { length: chunk, flags: 0 },
    { length: chunk, flags: 3 },
  ]);
  t.same(await c.blockStatus(0, 3 * chunk, { reqOne: true }), [{ length: chunk, flags: 3 }], 'REQ_ONE: one extent');
  t.same(await c.blockStatus(0, 1000, { reqOne: true }), [{ length: 1000, flags: 3 }], 'never longer than asked');
  await c.trim(chunk, chunk);
  t.same(await c.blockStatus(0, 3 * chunk), [{ length: 3 * chunk, flags: 3 }], 'TRIM made a hole');
});

t.test('write zeroes: holes, NO_HOLE allocates, FAST_ZERO', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client('a');
  t.ok(c.transmissionFlags & NBD_FLAG_SEND_FAST_ZERO);
  t.ok(c.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN);
  const chunk = 64 * 1024;
  await c.write(0, Buffer.alloc(2 * chunk, 1));
  await c.writeZeroes(0, chunk);
  await c.writeZeroes(chunk, chunk, { noHole: true });
  t.same(await c.blockStatus(0, 2 * chunk), [{ length: chunk, flags: 3 }, { length: chunk, flags: 0 }]);
  t.ok((await c.read(0, 2 * chunk)).every((b) => b === 0));
  await c.writeZeroes(4 * chunk, 100, { fast: true, fua: true });
  await c.cache(0, chunk);
});

t.test('errors the spec names', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client('small');
  t.equal(await errorOf(c.read(4000, 200)), NbdError.EINVAL, 'read beyond the end: EINVAL');
  t.equal(await errorOf(c.write(4000, Buffer.alloc(200))), NbdError.ENOSPC, 'write beyond the end: ENOSPC');
  t.equal(await errorOf(c.writeZeroes(4000, 200)), NbdError.ENOSPC, 'write zeroes beyond the end: ENOSPC');
  t.equal(await errorOf(c.trim(4000, 200)), NbdError.EINVAL, 'trim beyond the end: EINVAL');
  t.equal(await errorOf(c.blockStatus(4096, 1)), NbdError.EINVAL, 'block status beyond the end');
  t.equal(await errorOf(c.request(NbdCommand.FLUSH, 0, 1, 0)), NbdError.EINVAL, 'flush with an offset');
  t.equal(await errorOf(c.request(99, 0, 0, 0)), NbdError.EINVAL, 'unknown command');
  t.equal(await errorOf(c.request(NbdCommand.READ, 1 << 12, 0, 1)), NbdError.EINVAL, 'unknown flag');
  t.equal(await errorOf(c.request(NbdCommand.WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 1, Buffer.alloc(1))), NbdError.EINVAL, 'NO_HOLE on WRITE');
  t.equal(await errorOf(c.request(NbdCommand.READ, NBD_CMD_FLAG_REQ_ONE, 0, 1)), NbdError.EINVAL, 'REQ_ONE on READ');
  t.equal(await errorOf(c.request(NbdCommand.TRIM, NBD_CMD_FLAG_FAST_ZERO, 0, 1)), NbdError.EINVAL, 'FAST_ZERO on TRIM');
  t.equal((await c.read(0, 10)).length, 10, 'the connection survives every refusal');

  const ro = await h.client('ro');
  t.equal(await errorOf(ro.write(0, Buffer.alloc(512))), NbdError.EPERM, 'write to read-only: EPERM');
  t.equal(await errorOf(ro.request(NbdCommand.TRIM, 0, 0, 512)), NbdError.EPERM, 'trim on read-only: EPERM');
  t.equal(await errorOf(ro.writeZeroes(0, 512)), NbdError.EPERM, 'zeroes on read-only: EPERM');
  t.equal(await errorOf(ro.write(1 << 30, Buffer.alloc(512))), NbdError.EPERM, 'read-only is checked before range');

  const simple = await h.client('a', { structuredReplies: false });
  t.equal(await errorOf(simple.read(0, 512, { df: true })), NbdError.EINVAL, 'DF without structured replies');
  t.equal(await errorOf(simple.blockStatus(0, 512)), NbdError.EINVAL, 'block status without a meta context');
  t.equal(await errorOf(simple.read(0, limits.requestBytesMax + 1)), NbdError.EINVAL, 'read over the payload limit');
  t.ok((await simple.read(0, 16)).every((b) => b === 0), 'simple-reply connection still in step after a refused READ');
});

t.test('an oversized WRITE has its payload consumed and fails; far beyond the limit disconnects', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client('a');
  const before = Buffer.alloc(4096, 0x5a);
  await c.write(0, before);
  const oversized = Buffer.alloc(limits.requestBytesMax + 4096, 0xee);
  t.equal(await errorOf(c.write(0, oversized)), NbdError.EINVAL, 'write over the payload limit: EINVAL');
  t.ok((await c.read(0, 4096)).equals(before), 'nothing was written and the stream is still framed');

  const raw = await rawTransmission(h.port, 'a');
  raw.socket.write(encodeRequest(0, NbdCommand.WRITE, 0, 1, 0, 2 * limits.requestBytesMax + 1));
  await raw.closed;
  t.ok(raw.isClosed(), 'a WRITE claiming more than twice the limit is a hard disconnect');
  t.ok((await c.read(0, 4096)).equals(before), 'other connections are unaffected');
});

t.test('pipelining: many requests in flight, replies out of order, each matched by cookie', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client('a');
  const n = 500;
  const writes: Promise<void>[] = [];
  for (let i = 0; i < n; i++) writes.push(c.write(i * 4096, Buffer.alloc(4096, i & 0xff)));
  await Promise.all(writes);
  // A slow request ahead of fast ones: the fast replies must not wait for it.
  const device = h.devices.a;
  const originalRead = device.read.bind(device);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  device.read = async (offset, length) => {
    if (offset === 0) await gate;
    return originalRead(offset, length);
  };
  const slow = c.read(0, 4096, { df: true });
  const fast = await Promise.all(Array.from({ length: 50 }, (_, i) => c.read((i + 1) * 4096, 4096, { df: true })));
  t.ok(fast.every((b, i) => b.every((x) => x === ((i + 1) & 0xff))), 'later requests answered first');
  release();
  t.ok((await slow).every((x) => x === 0));
  device.read = originalRead;
});

t.test('in-flight requests are bounded per connection', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client('a');
  const device = h.devices.a;
  let running = 0;
  let maxRunning = 0;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const originalFlush = device.flush.bind(device);
  device.flush = async () => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    await gate;
    running--;
  };
  const flushes = Array.from({ length: limits.nbdInFlightRequestsMax * 3 }, () => c.sync());
  while (running < limits.nbdInFlightRequestsMax) await new Promise((r) => setTimeout(r, 5));
  t.equal(maxRunning, limits.nbdInFlightRequestsMax, 'the server stops reading at the limit');
  release();
  await Promise.all(flushes);
  device.flush = originalFlush;
});

t.test('several connections to one export see each other\'s writes', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const clients = await Promise.all([h.client('a'), h.client('a'), h.client('a')]);
  t.equal(h.server.connectionCount, 3);
  await Promise.all(clients.map((c, i) => c.write(i * 4096, Buffer.alloc(4096, i + 1), { fua: true })));
  for (const c of clients) {
    const all = await c.read(0, 3 * 4096);
    t.same([all[0], all[4096], all[8192]], [1, 2, 3]);
  }
});

t.test('DISC: in-flight requests finish and are answered before the server closes', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const raw = await rawTransmission(h.port, 'a');
  const device = h.devices.a;
  const originalWrite = device.write.bind(device);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  device.write = async (offset, data, options) => {
    await gate;
    return originalWrite(offset, data, options);
  };
  raw.socket.write(Buffer.concat([encodeRequest(0, NbdCommand.WRITE, 0, 77, 8192, 4), Buffer.from([9, 9, 9, 9])]));
  raw.socket.write(encodeRequest(0, NbdCommand.DISC, 0, 78, 0, 0));
  await new Promise((r) => setTimeout(r, 50));
  t.notOk(raw.isClosed(), 'the server waits for the write');
  release();
  const reply = decodeReplyHeader(await raw.input.read(16));
  t.same([reply.kind, reply.cookieLo, reply.kind === 'simple' && reply.error], ['simple', 77, 0]);
  await raw.closed;
  device.write = originalWrite;
  t.same([...(await device.read(8192, 4))], [9, 9, 9, 9], 'the write landed');
});

t.test('server close: in-flight requests finish, new requests get ESHUTDOWN, connections close', async (t) => {
  const h = await startHarness();
  const c = await h.client('a');
  const device = h.devices.a;
  const originalWrite = device.write.bind(device);
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  device.write = async (offset, data, options) => {
    await gate;
    return originalWrite(offset, data, options);
  };
  const inFlight = c.write(0, Buffer.alloc(512, 3));
  await new Promise((r) => setTimeout(r, 20));
  const closing = h.server.close();
  t.equal(await errorOf(c.read(0, 512)), NbdError.ESHUTDOWN, 'a request after shutdown began: ESHUTDOWN');
  release();
  await inFlight;
  t.same([...(await device.read(0, 4))], [3, 3, 3, 3], 'the in-flight write finished');
  await closing;
  t.equal(h.server.connectionCount, 0);
  t.equal(await errorOf(c.read(0, 1)), -1, 'the connection is gone');
  device.write = originalWrite;
});

t.test('request events carry command, bytes, duration and error', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const events: RequestEvent[] = [];
  h.server.on('request', (e: RequestEvent) => events.push(e));
  const c = await h.client('small');
  await c.write(0, Buffer.alloc(100));
  t.equal(await errorOf(c.read(4090, 100)), NbdError.EINVAL, 'refused read');
  t.same(events.map((e) => [e.command, e.bytes, e.error]), [['write', 100, undefined], ['read', 100, 'EINVAL']]);
  t.ok(events.every((e) => e.durationNs >= 0));
});

t.test('device errors map to NBD errors; unknown failures are EIO', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await h.client('a');
  const device = h.devices.a;
  const originalFlush = device.flush.bind(device);
  for (const [code, expected] of [['ENOSPC', NbdError.ENOSPC], ['EDQUOT', NbdError.ENOSPC], ['EROFS', NbdError.EPERM], ['ESHUTDOWN', NbdError.ESHUTDOWN], ['EOVERFLOW', NbdError.EINVAL], [undefined, NbdError.EIO]] as const) {
    device.flush = async () => {
      throw Object.assign(new Error('injected'), code === undefined ? {} : { code });
    };
    t.equal(await errorOf(c.sync()), expected, `${code ?? 'no code'} → ${expected}`);
  }
  device.flush = originalFlush;
  await c.sync();
});

t.test('client refuses to use the connection before openDevice and after close', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const c = await NbdClient.connect({ host: '127.0.0.1', port: h.port });
  await t.rejects(c.read(0, 1), /openDevice/);
  t.same((await c.list()).map((e) => e.name), ['a', 'ro', 'small']);
  t.equal((await c.info('ro')).size, 1 << 20);
  await c.close();
  const d = await h.client('a');
  await d.close();
  await t.rejects(d.read(0, 1));
});


t.test('a WRITE payload trickled one byte per segment is gathered and lands intact', async (t) => {
  const h = await startHarness();
  t.teardown(() => h.close());
  const raw = await rawTransmission(h.port, 'a');
  const payload = Buffer.alloc(3000);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 13) & 0xff;
  raw.socket.write(encodeRequest(0, NbdCommand.WRITE, 0, 5, 65536, payload.length));
  for (let i = 0; i < payload.length; i++) {
    raw.socket.write(payload.subarray(i, i + 1));
    // Each byte leaves as its own segment (TCP_NODELAY), more of them than the slice limit.
    if (i < 1500) await new Promise((r) => setImmediate(r));
  }
  const reply = decodeReplyHeader(await raw.input.read(16));
  t.same([reply.cookieLo, reply.kind === 'simple' && reply.error], [5, 0]);
  t.ok((await h.devices.a.read(65536, payload.length)).equals(payload));
  raw.socket.destroy();
});

t.test('payload bytes in flight are bounded across connections, not only per connection', async (t) => {
  const budgetBytes = 1 << 20;
  const h = await startHarness({ inFlightBytesTotalMax: budgetBytes });
  t.teardown(() => h.close());
  const device = h.devices.a;
  let running = 0;
  let maxRunning = 0;
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const hold = async () => {
    running++;
    maxRunning = Math.max(maxRunning, running);
    await gate;
    running--;
  };
  const originalWrite = device.write.bind(device);
  const originalWritev = device.writev.bind(device);
  device.write = async (o, d, opts) => {
    await hold();
    return originalWrite(o, d, opts);
  };
  device.writev = async (o, d, opts) => {
    await hold();
    return originalWritev(o, d, opts);
  };
  const size = 256 * 1024;
  const clients = await Promise.all(Array.from({ length: 8 }, () => h.client('a')));
  const writes = clients.flatMap((c, i) => Array.from({ length: 8 }, (_, k) => c.write((i * 8 + k) * size, Buffer.alloc(size, i + 1))));
  await new Promise((r) => setTimeout(r, 300));
  // 1 MiB of 256 KiB writes is 4, plus at most one request past the budget.
  t.ok(maxRunning <= budgetBytes / size + 1, `at most ${budgetBytes / size + 1} writes held at once across 8 connections (saw ${maxRunning})`);
  t.ok(maxRunning >= 2, 'several connections did get writes through');
  t.ok(h.server.budget.bytes <= budgetBytes + size, `budget in use ${h.server.budget.bytes}`);
  release();
  await Promise.all(writes);
  t.equal(h.server.budget.bytes, 0, 'every byte returned to the budget');
  for (let i = 0; i < 8; i++) t.ok((await clients[i]!.read(i * 8 * size, size)).every((b) => b === i + 1), `client ${i}'s data`);
  // A connection closed in the middle of a WRITE payload returns its bytes too.
  const raw = await rawTransmission(h.port);
  raw.socket.write(encodeRequest(0, NbdCommand.WRITE, 0, 1, 0, size));
  raw.socket.write(Buffer.alloc(1000));
  await new Promise((r) => setTimeout(r, 100));
  t.equal(h.server.budget.bytes, size, 'the half-sent write holds its bytes');
  raw.socket.destroy();
  await new Promise((r) => setTimeout(r, 200));
  t.equal(h.server.budget.bytes, 0, 'and returns them when its connection closes');
});

t.test('a WRITE payload already buffered across chunks reaches writev() as slices of those chunks (no gathering copy)', async (t) => {
  const device = new MemoryDevice({ name: 'm', size: 1 << 20 });
  const seen: Buffer[][] = [];
  const writev = device.writev.bind(device);
  device.writev = async (o, d, opts) => {
    seen.push([...d]);
    return writev(o, d, opts);
  };
  const replies: Buffer[] = [];
  const socket = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      replies.push(chunk);
      cb();
    },
  });
  const payload = Buffer.alloc(8192);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  // Header and the first half in one chunk, the second half in another: both buffered before parsing starts.
  const first = Buffer.concat([encodeRequest(0, NbdCommand.WRITE, 0, 9, 4096, payload.length), payload.subarray(0, 4096)]);
  const second = Buffer.from(payload.subarray(4096));
  const input = new InputQueue();
  input.push(first);
  input.push(second);
  t.notOk(input.contiguous(28 + payload.length), 'the request spans two chunks');
  t.ok(input.contiguous(28 + 4096), 'its first part lies in one');
  const tx = new Transmission({ socket, input, negotiated: { device, transmissionFlags: transmissionFlagsFor(device, false), structuredReplies: false, baseAllocation: false, tls: false } });
  const done = tx.run();
  await new Promise((r) => setTimeout(r, 50));
  t.equal(seen.length, 1, 'one writev');
  t.equal(seen[0]!.length, 2, 'two slices');
  t.equal(seen[0]![0]!.buffer, first.buffer, 'the first slice is a view of the first chunk');
  t.equal(seen[0]![1]!.buffer, second.buffer, 'the second slice is a view of the second chunk');
  t.ok((await device.read(4096, payload.length)).equals(payload), 'the bytes landed');
  const reply = decodeReplyHeader(Buffer.concat(replies));
  t.same([reply.cookieLo, reply.kind === 'simple' && reply.error], [9, 0]);
  socket.destroy();
  await done;
});
