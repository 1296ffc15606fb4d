// The native addon's two I/O paths (XDEVICE_IO=uring|threads): which one a
// process gets and why, the fallback when io_uring is refused, and what only
// the uring path does: a write and the fdatasync queued behind it are linked,
// so the sync fails when the write fails, and short transfers are continued
// from where they stopped. Run it with XDEVICE_IO set each way: every test
// asserts what the path in use must do.

import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as native from '../../src/native.ts';

const { errno } = osConstants;
const child = fileURLToPath(new URL('./helpers/io-path-child.ts', import.meta.url));
const info = native.ioPath();
const uring = info.path === 'uring';
t.comment(`I/O path ${info.path} (asked for ${info.requested}${info.fallbackReason ? `; ${info.fallbackReason}` : ''})`);

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-uring-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function runChild(mode: string, dir: string, env: Record<string, string>, shell?: string): { status: number | null; stdout: string; stderr: string } {
  const node = [process.execPath, '--import=tsx', child, mode, dir];
  const childEnv = { ...process.env, ...env };
  const r = shell
    ? spawnSync('/bin/bash', ['-c', `${shell}; exec "$@"`, 'bash', ...node], { env: childEnv, encoding: 'utf8' })
    : spawnSync(node[0]!, node.slice(1), { env: childEnv, encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout, stderr: `${r.stderr}${r.signal ? ` (killed by ${r.signal})` : ''}` };
}

t.test('the path is the one XDEVICE_IO asks for, or a fallback that says why', async (t) => {
  t.equal(info.requested, process.env.XDEVICE_IO || 'threads');
  if (info.requested === 'threads') t.equal(info.path, 'threads');
  if (info.path !== info.requested) t.match(info.fallbackReason, /\S/, 'a fallback names its reason');
  if (uring) t.ok(Number.isSafeInteger(info.enters) && Number.isSafeInteger(info.sqes), 'uring reports its counters');
});

t.test('a refused io_uring_setup falls back to the thread path, which works', async (t) => {
  const dir = tempDir(t);
  for (const refusal of ['EPERM', 'ENOSYS']) {
    const r = runChild('roundtrip', dir, { XDEVICE_IO: 'uring', XDEVICE_IO_URING_SETUP_ERRNO: refusal });
    t.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    t.equal(out.info.path, 'threads', `${refusal}: the thread path`);
    t.equal(out.info.requested, 'uring');
    t.match(out.info.fallbackReason, new RegExp(`io_uring_setup: ${refusal}`), 'the reason names the refusal');
    t.equal(out.written, 10);
    t.equal(out.back, 'round trip');
  }
  const forced = JSON.parse(runChild('roundtrip', dir, { XDEVICE_IO: 'threads' }).stdout);
  t.same([forced.info.path, forced.info.fallbackReason], ['threads', undefined], 'threads asked for is no fallback');
  const bad = runChild('roundtrip', dir, { XDEVICE_IO: 'epoll' });
  t.not(bad.status, 0, 'an unknown path refuses to load');
  t.match(bad.stderr, /XDEVICE_IO must be 'uring' or 'threads', not 'epoll'/);
});

t.test('an fdatasync queued behind a write the kernel fails fails too on uring, runs on threads', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'ro');
  const w = await native.openFile(path, { create: true });
  await native.pwrite(w.fd, Buffer.from('before'), 0);
  await native.closeFile(w.fd);
  // A read-only descriptor: the kernel itself fails the write (EBADF), not the fault hook.
  const ro = await native.openFile(path, { readOnly: true });
  const write = native.pwrite(ro.fd, Buffer.from('x'), 0);
  const sync = native.fdatasync(ro.fd);
  const back = Buffer.alloc(6);
  const read = native.pread(ro.fd, back, 0);
  await t.rejects(write, { code: 'EBADF', syscall: 'pwrite' });
  if (uring) await t.rejects(sync, { code: 'ECANCELED', syscall: 'fdatasync' }, 'the linked sync is cancelled with the write');
  else await t.resolves(sync, 'the thread path runs the sync regardless');
  t.equal(await read, 6, 'an op behind the failed pair still runs');
  t.equal(back.toString(), 'before');
  await t.resolves(native.fdatasync(ro.fd), 'a sync issued after the failure settled runs');
  await native.closeFile(ro.fd);
});

t.test('an injected write fault takes the queued fdatasync with it on uring, as the kernel would', async (t) => {
  const dir = tempDir(t);
  t.teardown(() => native.setFaultInjection(null));
  const f = await native.openFile(join(dir, 'faulty'), { create: true });
  native.setFaultInjection({ pwriteErrno: errno.EIO, fd: f.fd });
  const write = native.pwrite(f.fd, Buffer.from('x'), 0);
  const sync = native.fdatasync(f.fd);
  await t.rejects(write, { code: 'EIO', syscall: 'pwrite' });
  if (uring) await t.rejects(sync, { code: 'ECANCELED', syscall: 'fdatasync' });
  else await t.resolves(sync);
  // A batch failing part way (afterCalls counts each of its writes) does the same.
  native.setFaultInjection({ pwriteErrno: errno.ENOSPC, afterCalls: 1, fd: f.fd });
  const batch = native.pwriteBatch(f.fd, [Buffer.from('a'), Buffer.from('b')], [0, 1]);
  const sync2 = native.fdatasync(f.fd);
  await t.rejects(batch, { code: 'ENOSPC', syscall: 'pwrite' });
  if (uring) await t.rejects(sync2, { code: 'ECANCELED' });
  else await t.resolves(sync2);
  native.setFaultInjection(null);
  const back = Buffer.alloc(2);
  t.equal(await native.pread(f.fd, back, 0), 1, 'the batch write before the fault landed');
  t.equal(back.subarray(0, 1).toString(), 'a');
  await native.closeFile(f.fd);
});

t.test('short writes are continued to the end, and the sync behind them waits for the rest', async (t) => {
  const dir = tempDir(t);
  t.teardown(() => native.setFaultInjection(null));
  const path = join(dir, 'short');
  const f = await native.openFile(path, { create: true, direct: true });
  const KiB = 1024;
  const block = (n: number, fill: number) => {
    const b = native.allocAligned(n);
    for (let i = 0; i < n; i++) b[i] = (fill + i * 7) & 0xff;
    return b;
  };
  const one = block(64 * KiB, 1);
  const parts = [block(8 * KiB, 2), block(16 * KiB, 3)];
  const batch = [block(8 * KiB, 4), block(12 * KiB, 5), block(8 * KiB, 6)];
  const before = native.ioPath().resubmits ?? 0;
  native.setFaultInjection({ shortWriteBytes: 4 * KiB, fd: f.fd });
  const results = await Promise.all([
    native.pwrite(f.fd, one, 0),
    native.fdatasync(f.fd),
    native.pwritev(f.fd, parts, 64 * KiB),
    native.pwriteBatch(f.fd, batch, [128 * KiB, 96 * KiB, 160 * KiB]),
    native.fdatasync(f.fd),
  ]);
  native.setFaultInjection(null);
  t.same(results, [64 * KiB, undefined, 24 * KiB, 28 * KiB, undefined], 'every write resolves to its whole length');
  await native.closeFile(f.fd);
  const file = readFileSync(path);
  t.ok(file.subarray(0, 64 * KiB).equals(one), 'pwrite landed whole');
  t.ok(file.subarray(64 * KiB, 88 * KiB).equals(Buffer.concat(parts)), 'pwritev landed whole');
  t.ok(file.subarray(128 * KiB, 136 * KiB).equals(batch[0]!), 'batch write 1');
  t.ok(file.subarray(96 * KiB, 108 * KiB).equals(batch[1]!), 'batch write 2');
  t.ok(file.subarray(160 * KiB, 168 * KiB).equals(batch[2]!), 'batch write 3');
  if (uring) {
    // pwrite, pwritev and the three batch writes each came back short once
    // and went again for their rest before anything queued behind them.
    t.ok((native.ioPath().resubmits ?? 0) - before >= 5, `resubmitted ${(native.ioPath().resubmits ?? 0) - before} SQEs`);
  }
});

t.test('a short write from the kernel itself (RLIMIT_FSIZE): the rest is tried, fails EFBIG, and the linked sync with it', async (t) => {
  const dir = tempDir(t);
  const r = runChild('fsize', dir, {}, 'ulimit -f 64');
  t.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  t.same(out.write, { ok: false, code: 'EFBIG', syscall: 'pwrite' }, 'the write fails with the errno of its rest');
  t.equal(out.size, 64 * 1024, 'the part below the limit landed');
  t.equal(out.read, 4 * 1024);
  t.equal(out.tailByte, 2);
  if (out.info.path === 'uring') {
    t.same(out.sync, { ok: false, code: 'ECANCELED', syscall: 'fdatasync' });
    t.ok(out.info.resubmits >= 1, 'the short write was continued');
  } else {
    t.same(out.sync, { ok: true }, 'threads: the sync runs');
  }
});
