// The native addon against the real kernel: CRC32C vectors, aligned buffers,
// O_DIRECT and its fallback, errno errors, per-file ordering, hole punching,
// sd_notify over a real datagram socket, and the fault-injection hook.

import t, { type Test } from 'tap';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, readFileSync, statSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { constants as osConstants } from 'node:os';
import { pino } from 'pino';
import * as native from '../../src/native.ts';

const { errno } = osConstants;

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-native-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function seededRandom(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x1_0000_0000;
  };
}

const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
console.log(`# XDEVICE_SEED=${seed}`);

// RFC 3720 appendix B.4; the CRC bytes listed there are the little-endian encoding.
const rfc3720Vectors: Array<[string, Buffer, number]> = [
  ['32 bytes of zeroes', Buffer.alloc(32, 0x00), 0x8a9136aa],
  ['32 bytes of ones', Buffer.alloc(32, 0xff), 0x62a8ab43],
  ['32 incrementing bytes', Buffer.from(Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e],
  ['32 decrementing bytes', Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)), 0x113fdb5c],
  [
    'an iSCSI read command PDU',
    Buffer.from(
      '01c000000000000000000000000000001400000000000400000000140000001828000000000000000200000000000000',
      'hex',
    ),
    0xd9963a56,
  ],
  ['"123456789" (the check value)', Buffer.from('123456789'), 0xe3069283],
];

t.test('crc32c matches the RFC 3720 test vectors in every implementation', async (t) => {
  const impl = native.crc32cImplementation();
  t.ok(impl === 'sse4.2' || impl === 'software');
  const hasSse42 = readFileSync('/proc/cpuinfo', 'utf8').includes(' sse4_2');
  t.equal(impl, hasSse42 ? 'sse4.2' : 'software', 'the CPU instruction is used when the CPU has it');
  for (const [name, data, expected] of rfc3720Vectors) {
    t.equal(native.crc32cSoftware(data), expected, `software: ${name}`);
    t.equal(native.crc32c(data), expected, `default: ${name}`);
    if (hasSse42) t.equal(native.crc32cHardware(data), expected, `sse4.2: ${name}`);
  }
  if (!hasSse42) t.throws(() => native.crc32cHardware(Buffer.alloc(1)), /SSE4\.2/);
});

t.test('crc32c chains and agrees across implementations on unaligned slices', async (t) => {
  const random = seededRandom(seed);
  const data = Buffer.alloc(70_000);
  for (let i = 0; i < data.length; i++) data[i] = Math.floor(random() * 256);
  for (let round = 0; round < 200; round++) {
    const start = Math.floor(random() * 64);
    const end = start + Math.floor(random() * (data.length - start));
    const slice = data.subarray(start, end);
    const whole = native.crc32cSoftware(slice);
    if (native.crc32cImplementation() === 'sse4.2') {
      t.equal(native.crc32cHardware(slice), whole, `slice [${start}, ${end})`);
    }
    const cut = start + Math.floor(random() * (end - start));
    const chained = native.crc32c(data.subarray(cut, end), native.crc32c(data.subarray(start, cut)));
    t.equal(chained, whole, `chained at ${cut}`);
    t.equal(native.crc32cSoftware(data.subarray(cut, end), native.crc32cSoftware(data.subarray(start, cut))), whole);
  }
  t.equal(native.crc32c(Buffer.alloc(0)), 0);
  t.equal(native.crc32c(Buffer.alloc(0), 0xdeadbeef), 0xdeadbeef, 'empty data leaves the running crc unchanged');
});

t.test('allocAligned gives zeroed buffers that O_DIRECT accepts', async (t) => {
  const dir = tempDir(t);
  const buf = native.allocAligned(64 * 1024);
  t.equal(buf.length, 64 * 1024);
  t.ok(buf.every((b) => b === 0), 'zero filled');
  t.equal(native.allocAligned(0).length, 0);
  t.throws(() => native.allocAligned(4096, 3000), RangeError);
  t.throws(() => native.allocAligned(-1), RangeError);

  const file = await native.openFile(join(dir, 'direct'), { direct: true, create: true });
  t.equal(file.direct, true, 'the test directory is on a filesystem with O_DIRECT');
  for (const alignment of [512, 4096, 65536]) {
    const aligned = native.allocAligned(8192, alignment);
    aligned.fill(alignment & 0xff || 0x5a);
    t.equal(await native.pwrite(file.fd, aligned, 0), 8192, `O_DIRECT write from a ${alignment}-aligned buffer`);
  }
  // O_DIRECT rejects a buffer that is not aligned: proves the others were.
  const misaligned = native.allocAligned(8192 + 512).subarray(1, 4097);
  await t.rejects(native.pwrite(file.fd, misaligned, 0), { code: 'EINVAL', syscall: 'pwrite', errno: -errno.EINVAL });
  await native.closeFile(file.fd);
});

t.test('O_DIRECT: tmpfs works either way, a filesystem that refuses it falls back and says so once', async (t) => {
  const lines: string[] = [];
  native.setNativeLogger(
    pino(
      new Writable({
        write(chunk, _enc, done) {
          lines.push(String(chunk));
          done();
        },
      }),
    ),
  );
  // Linux >= 6.6 supports O_DIRECT on tmpfs; older kernels refuse it.
  const shmDir = mkdtempSync('/dev/shm/xdevice-native-');
  t.teardown(() => rmSync(shmDir, { recursive: true, force: true }));
  const shm = await native.openFile(join(shmDir, 'f'), { direct: true, create: true });
  const block = native.allocAligned(4096).fill(0x42);
  t.equal(await native.pwrite(shm.fd, block, 4096), 4096);
  await native.fdatasync(shm.fd);
  const back = native.allocAligned(4096);
  t.equal(await native.pread(shm.fd, back, 4096), 4096);
  t.same(back, block);
  await native.closeFile(shm.fd);

  // ramfs has no direct I/O at all: the open must fall back, not fail.
  const ramfs = tempDir(t);
  execFileSync('mount', ['-t', 'ramfs', 'xdevice-test', ramfs]);
  t.teardown(() => execFileSync('umount', [ramfs]));
  const files = [];
  for (const name of ['a', 'b']) {
    const f = await native.openFile(join(ramfs, name), { direct: true, create: true });
    t.equal(f.direct, false, `${name}: direct=false on ramfs`);
    files.push(f);
  }
  const odd = Buffer.from('not aligned at all');
  t.equal(await native.pwrite(files[0]!.fd, odd, 3), odd.length, 'buffered I/O takes any alignment');
  await native.fdatasync(files[0]!.fd);
  t.equal(readFileSync(join(ramfs, 'a')).subarray(3).toString(), 'not aligned at all');
  for (const f of files) await native.closeFile(f.fd);
  const warnings = lines.filter((l) => l.includes('O_DIRECT refused'));
  t.equal(warnings.length, 1, 'the fallback was logged, once for two files');
});

t.test('errors carry code, errno and syscall', async (t) => {
  const dir = tempDir(t);
  await t.rejects(native.openFile(join(dir, 'missing', 'x')), {
    code: 'ENOENT',
    errno: -errno.ENOENT,
    syscall: 'open',
    path: join(dir, 'missing', 'x'),
  });
  await t.rejects(native.fdatasync(123456), { code: 'EBADF', syscall: 'fdatasync' }, 'a descriptor not opened here');
  const f = await native.openFile(join(dir, 'ro'), { create: true });
  await native.closeFile(f.fd);
  const ro = await native.openFile(join(dir, 'ro'), { readOnly: true });
  await t.rejects(native.pwrite(ro.fd, Buffer.from('x'), 0), { code: 'EBADF', syscall: 'pwrite' });
  await native.closeFile(ro.fd);
  await t.rejects(native.pread(ro.fd, Buffer.alloc(1), 0), { code: 'EBADF' }, 'closed descriptors are refused');
  t.throws(() => native.pwrite(ro.fd, 'x' as unknown as Buffer, 0), TypeError);
  t.throws(() => native.pwrite(ro.fd, Buffer.alloc(1), -1), RangeError);
  t.throws(() => native.pwrite(ro.fd, Buffer.alloc(1), 0.5), RangeError);
  const err = await native.fstat(99999).catch((e: unknown) => e);
  t.ok(native.isNativeError(err));
  t.match(String((err as Error).message), /^EBADF: bad file descriptor, fstat/);
});

t.test('operations on one file complete in submission order', async (t) => {
  const dir = tempDir(t);
  const f = await native.openFile(join(dir, 'order'), { create: true });
  const settled: number[] = [];
  const pending: Promise<unknown>[] = [];
  const count = 2000;
  for (let i = 0; i < count; i++) {
    // Every write hits the same 8 bytes: only submission order makes the last one win.
    const b = Buffer.alloc(8);
    b.writeUInt32LE(i, 0);
    b.writeUInt32LE((i ^ 0xa5a5a5a5) >>> 0, 4);
    pending.push(native.pwrite(f.fd, b, (i % 3) * 4).then(() => settled.push(i)));
    if (i % 97 === 0) pending.push(native.fdatasync(f.fd).then(() => settled.push(-i - 1)));
  }
  await Promise.all(pending);
  const expectedOrder: number[] = [];
  for (let i = 0; i < count; i++) {
    expectedOrder.push(i);
    if (i % 97 === 0) expectedOrder.push(-i - 1);
  }
  t.same(settled, expectedOrder, 'promises settle in submission order');
  const last = Buffer.alloc(16);
  t.equal(await native.pread(f.fd, last, 0), 16);
  const model = Buffer.alloc(16);
  for (let i = 0; i < count; i++) {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(i, 0);
    b.writeUInt32LE((i ^ 0xa5a5a5a5) >>> 0, 4);
    b.copy(model, (i % 3) * 4);
  }
  t.same(last, model, 'the file holds what in-order execution produces');
  await native.closeFile(f.fd);
});

t.test('pwritev writes its buffers back to back; pread stops at end of file', async (t) => {
  const dir = tempDir(t);
  const f = await native.openFile(join(dir, 'v'), { create: true });
  const parts = [Buffer.from('head-'), Buffer.alloc(0), Buffer.from('middle-'), Buffer.from('tail')];
  t.equal(await native.pwritev(f.fd, parts, 10), 16);
  const many = Array.from({ length: 3000 }, (_, i) => Buffer.from([i & 0xff]));
  t.equal(await native.pwritev(f.fd, many, 100), 3000, 'more buffers than IOV_MAX');
  const back = Buffer.alloc(5000);
  t.equal(await native.pread(f.fd, back, 0), 3100, 'short read at end of file');
  t.equal(back.subarray(10, 26).toString(), 'head-middle-tail');
  t.ok(back.subarray(100, 3100).every((b, i) => b === (i & 0xff)));
  await native.closeFile(f.fd);
});

t.test('pwriteBatch writes each buffer at its own position, in order; bad arguments throw; faults count per write', async (t) => {
  const dir = tempDir(t);
  const f = await native.openFile(join(dir, 'batch'), { create: true });
  const bufs = [Buffer.from('aaaa'), Buffer.from('bbbb'), Buffer.alloc(0), Buffer.from('cc'), Buffer.from('dddd')];
  // The last write overlaps the first: in-order execution decides the bytes.
  t.equal(await native.pwriteBatch(f.fd, bufs, [0, 100, 50, 8192, 2]), 14);
  const back = Buffer.alloc(8194);
  t.equal(await native.pread(f.fd, back, 0), 8194);
  t.equal(back.subarray(0, 6).toString(), 'aadddd');
  t.equal(back.subarray(100, 104).toString(), 'bbbb');
  t.equal(back.subarray(8192, 8194).toString(), 'cc');
  t.ok(back.subarray(6, 100).every((b) => b === 0), 'nothing written between');
  t.throws(() => native.pwriteBatch(f.fd, [Buffer.from('x')], []), TypeError);
  t.throws(() => native.pwriteBatch(f.fd, [Buffer.from('x')], [-1]), RangeError);
  t.throws(() => native.pwriteBatch(f.fd, ['x' as unknown as Buffer], [0]), TypeError);
  // afterCalls counts each write of the batch, as separate pwrites would.
  native.setFaultInjection({ pwriteErrno: errno.EIO, afterCalls: 2, fd: f.fd });
  await t.rejects(native.pwriteBatch(f.fd, [Buffer.from('1'), Buffer.from('2'), Buffer.from('3')], [0, 1, 2]), { code: 'EIO', syscall: 'pwrite' });
  native.setFaultInjection(null);
  t.equal(await native.pread(f.fd, back, 0), 8194);
  t.equal(back.subarray(0, 3).toString(), '12d', 'the writes before the failed one landed');
  await t.rejects(native.pwriteBatch(123456, [Buffer.from('x')], [0]), { code: 'EBADF' });
  await native.closeFile(f.fd);
});

t.test('fallocate preallocates; punchHole deallocates and reads back zeros', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'holes');
  const f = await native.openFile(path, { create: true, direct: true });
  const MiB = 1024 * 1024;
  await native.fallocate(f.fd, 0, 4 * MiB, { keepSize: true });
  let st = await native.fstat(f.fd);
  t.equal(st.size, 0, 'KEEP_SIZE does not grow the file');
  t.ok(st.blocks * 512 >= 4 * MiB, 'but the blocks are allocated');
  await native.fallocate(f.fd, 0, 4 * MiB);
  st = await native.fstat(f.fd);
  t.equal(st.size, 4 * MiB);
  t.equal(statSync(path).size, 4 * MiB);

  const data = native.allocAligned(4 * MiB).fill(0xee);
  await native.pwrite(f.fd, data, 0);
  await native.fdatasync(f.fd);
  const before = (await native.fstat(f.fd)).blocks;
  await native.punchHole(f.fd, MiB, 2 * MiB);
  st = await native.fstat(f.fd);
  t.equal(st.size, 4 * MiB, 'punching keeps the size');
  t.equal(before - st.blocks, (2 * MiB) / 512, 'two MiB of blocks were released');
  const back = native.allocAligned(4 * MiB);
  await native.pread(f.fd, back, 0);
  t.ok(back.subarray(0, MiB).every((b) => b === 0xee));
  t.ok(back.subarray(MiB, 3 * MiB).every((b) => b === 0), 'the hole reads as zeros');
  t.ok(back.subarray(3 * MiB).every((b) => b === 0xee));
  t.throws(() => native.punchHole(f.fd, 0, 0), RangeError, 'an empty range is a caller bug');
  await native.closeFile(f.fd);
});

// A real AF_UNIX datagram receiver: Node has none, python3's socket module does.
async function notifyReceiver(t: Test, address: string): Promise<{ next(): Promise<string> }> {
  const script = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = sys.argv[1]
s.bind('\\0' + addr[1:] if addr.startswith('@') else addr)
print('bound', flush=True)
s.settimeout(60)
while True:
    data = s.recv(4096)
    print(data.hex(), flush=True)
`;
  const child = spawn('/usr/bin/python3', ['-c', script, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  const lines = createInterface({ input: child.stdout });
  const queue: string[] = [];
  const waiters: Array<(line: string) => void> = [];
  lines.on('line', (line) => {
    const w = waiters.shift();
    if (w) w(line);
    else queue.push(line);
  });
  const next = () =>
    new Promise<string>((resolve, reject) => {
      const q = queue.shift();
      if (q !== undefined) return resolve(q);
      waiters.push(resolve);
      child.once('exit', (code) => reject(new Error(`receiver exited with ${code}`)));
    });
  t.equal(await next(), 'bound');
  return { next: async () => Buffer.from(await next(), 'hex').toString() };
}

t.test('sdNotify sends datagrams to path and abstract sockets', async (t) => {
  const dir = tempDir(t);
  const saved = process.env.NOTIFY_SOCKET;
  t.teardown(() => {
    if (saved === undefined) delete process.env.NOTIFY_SOCKET;
    else process.env.NOTIFY_SOCKET = saved;
  });

  delete process.env.NOTIFY_SOCKET;
  t.equal(native.sdNotify('READY=1'), false, 'not under systemd: nothing sent');

  const path = join(dir, 'notify.sock');
  const byPath = await notifyReceiver(t, path);
  process.env.NOTIFY_SOCKET = path;
  t.equal(native.sdNotify('READY=1'), true);
  t.equal(await byPath.next(), 'READY=1');
  t.equal(native.sdNotify('STATUS=serving\nWATCHDOG=1'), true);
  t.equal(await byPath.next(), 'STATUS=serving\nWATCHDOG=1');

  const abstract = `@xdevice-test-${process.pid}-${seed}`;
  const byAbstract = await notifyReceiver(t, abstract);
  process.env.NOTIFY_SOCKET = abstract;
  t.equal(native.sdNotify('STOPPING=1'), true);
  t.equal(await byAbstract.next(), 'STOPPING=1');
  t.equal(native.sdNotify('WATCHDOG=1', path), true, 'an explicit socket overrides the environment');
  t.equal(await byPath.next(), 'WATCHDOG=1');

  process.env.NOTIFY_SOCKET = join(dir, 'nobody-listens.sock');
  t.throws(() => native.sdNotify('READY=1'), { code: 'ENOENT', syscall: 'sendto' });
  process.env.NOTIFY_SOCKET = 'vsock:2:1234';
  t.throws(() => native.sdNotify('READY=1'), { code: 'EAFNOSUPPORT' });
});

t.test('fault injection fails matching calls until cleared', async (t) => {
  const dir = tempDir(t);
  t.teardown(() => native.setFaultInjection(null));
  const f = await native.openFile(join(dir, 'faulty'), { create: true });
  const other = await native.openFile(join(dir, 'healthy'), { create: true });
  const b = Buffer.from('data');

  native.setFaultInjection({ fdatasyncErrno: errno.EIO, afterCalls: 2, fd: f.fd });
  await native.fdatasync(f.fd);
  await native.fdatasync(f.fd);
  await t.rejects(native.fdatasync(f.fd), { code: 'EIO', syscall: 'fdatasync', errno: -errno.EIO });
  await t.rejects(native.fdatasync(f.fd), { code: 'EIO' }, 'a dead disk stays dead');
  await native.fdatasync(other.fd);
  t.equal(await native.pwrite(f.fd, b, 0), 4, 'writes are not affected by an fdatasync fault');

  native.setFaultInjection({ pwriteErrno: errno.ENOSPC });
  await t.rejects(native.pwrite(f.fd, b, 0), { code: 'ENOSPC', syscall: 'pwrite' });
  await t.rejects(native.pwritev(other.fd, [b], 0), { code: 'ENOSPC', syscall: 'pwritev' });
  await native.fdatasync(f.fd);

  native.setFaultInjection(null);
  t.equal(await native.pwrite(f.fd, b, 0), 4);
  await native.fdatasync(f.fd);
  await native.closeFile(f.fd);
  await native.closeFile(other.fd);
});

t.test('a latency fault delays matching writes and fdatasyncs until cleared', async (t) => {
  const dir = tempDir(t);
  t.teardown(() => native.setFaultInjection(null));
  const slow = await native.openFile(join(dir, 'slow'), { create: true });
  const fast = await native.openFile(join(dir, 'fast'), { create: true });
  const b = Buffer.from('data');
  const elapsedMs = async (op: () => Promise<unknown>): Promise<number> => {
    const start = process.hrtime.bigint();
    await op();
    return Number(process.hrtime.bigint() - start) / 1e6;
  };

  // Lower bounds only: a loaded machine can make a call slower, never faster than a sleep.
  native.setFaultInjection({ delayUs: 200_000, fd: slow.fd });
  t.ok((await elapsedMs(() => native.fdatasync(slow.fd))) >= 150, 'fdatasync on the matching descriptor sleeps');
  t.ok((await elapsedMs(() => native.pwrite(slow.fd, b, 0))) >= 150, 'pwrite sleeps');
  t.ok((await elapsedMs(() => native.pwritev(slow.fd, [b, b], 0))) >= 150, 'pwritev sleeps');
  // Upper bounds are checked against a delay far beyond anything a loaded disk explains.
  native.setFaultInjection({ delayUs: 60_000_000, fd: slow.fd });
  t.ok((await elapsedMs(() => native.fdatasync(fast.fd))) < 30_000, 'other descriptors are not delayed');

  native.setFaultInjection({ delayUs: 200_000, fdatasyncErrno: errno.EIO });
  const failed = native.fdatasync(fast.fd);
  const start = process.hrtime.bigint();
  await t.rejects(failed, { code: 'EIO' }, 'the errno fault still applies after the delay');
  t.ok(Number(process.hrtime.bigint() - start) / 1e6 >= 150, 'every descriptor is delayed without fd');

  // Clearing wakes a sleep already in progress: a 60 s delay must not hold the call.
  native.setFaultInjection({ delayUs: 60_000_000 });
  const stuck = native.fdatasync(slow.fd);
  let settled = false;
  void stuck.then(() => (settled = true));
  await new Promise((r) => setTimeout(r, 50));
  t.equal(settled, false, 'the call is still sleeping under the delay');
  native.setFaultInjection(null);
  await stuck;
  t.equal(settled, true, 'clearing released the sleeping call');
  t.ok((await elapsedMs(() => native.fdatasync(slow.fd))) < 30_000, 'the 60 s delay is gone once cleared');

  t.throws(() => native.setFaultInjection({ delayUs: -1 }), RangeError);
  await native.closeFile(slow.fd);
  await native.closeFile(fast.fd);
});

t.test('closeFile runs after earlier operations and releases the I/O thread', async (t) => {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'sub'));
  const before = native.openFileCount();
  const f = await native.openFile(join(dir, 'sub', 'c'), { create: true, mode: 0o600 });
  t.equal(native.openFileCount(), before + 1);
  t.equal(statSync(join(dir, 'sub', 'c')).mode & 0o777, 0o600);
  const writes = Array.from({ length: 50 }, (_, i) => native.pwrite(f.fd, Buffer.from([i]), i));
  const closed = native.closeFile(f.fd);
  t.equal(native.openFileCount(), before, 'the descriptor is gone for new submissions at once');
  t.same(await Promise.all(writes), Array(50).fill(1), 'writes submitted before close all ran');
  await closed;
  t.same([...readFileSync(join(dir, 'sub', 'c'))], Array.from({ length: 50 }, (_, i) => i));
});

t.test('crc32cCopy copies and checksums in one pass, and refuses what does not fit or overlaps', async (t) => {
  const src = Buffer.from('123456789');
  const dst = Buffer.alloc(16, 0xaa);
  t.equal(native.crc32cCopy(dst, 3, src, 0), 0xe3069283, 'the check value of "123456789"');
  t.same(dst.subarray(3, 12), src, 'the bytes were copied');
  t.equal(dst[2], 0xaa, 'nothing before `at` touched');
  t.equal(dst[12], 0xaa, 'nothing after the copy touched');
  t.equal(native.crc32cCopy(dst, 0, src.subarray(4), native.crc32c(src.subarray(0, 4))), native.crc32c(src), 'continues a CRC');
  t.throws(() => native.crc32cCopy(dst, 8, src, 0), RangeError, 'src past the end of dst');
  t.throws(() => native.crc32cCopy(dst, -1, src, 0), RangeError);
  const both = Buffer.alloc(64, 1);
  t.throws(() => native.crc32cCopy(both, 4, both.subarray(0, 16), 0), RangeError, 'overlapping ranges');
  t.doesNotThrow(() => native.crc32cCopy(both, 16, both.subarray(0, 16), 0), 'adjacent ranges are fine');
  t.throws(() => native.crc32cCopy('x' as unknown as Buffer, 0, src, 0), TypeError);
});
