// I/O failures under load: the WAL fails closed (every waiter, current and
// future, gets the error) and everything acknowledged before the failure is
// still there after reopening. Two sources of failure: the addon's fault
// hook, and a real tiny ext4 filesystem on a loop device that fills up.

import t, { type Test } from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir, constants } from 'node:os';
import { join } from 'node:path';
import type { Entry } from '../../src/raft/types.ts';
import { setFaultInjection } from '../../src/native.ts';
import { Wal, type WalOptions } from '../../src/wal/wal.ts';

const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
console.log(`# XDEVICE_SEED=${seed}`);
let state = seed >>> 0 || 1;
function random(n: number): number {
  state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
  return state % n;
}

const options: WalOptions = { segmentBytes: 1024 * 1024, alignmentBytes: 4096, batchBytesMax: 128 * 1024 };

function entry(index: number, size: number): Entry {
  const data = Buffer.alloc(size, index & 0xff);
  data.writeUInt32LE(index, 0);
  return { index, term: 1, type: 0, data };
}

interface LoadResult {
  acknowledged: number[];
  errors: Array<{ code: string; cause?: unknown }>;
}

/** Appenders that keep saving until the WAL refuses; records what was acknowledged and how each failure looked. */
async function loadUntilFailure(wal: Wal, appenders: number, size: number, maxSaves: number): Promise<LoadResult> {
  const acknowledged: number[] = [];
  const errors: Array<{ code: string; cause?: unknown }> = [];
  let next = wal.lastIndex() + 1;
  let stop = false;
  await Promise.all(
    Array.from({ length: appenders }, async () => {
      while (!stop && next <= maxSaves) {
        const index = next++;
        try {
          await wal.save({ entries: [entry(index, size)], hardState: { term: 1, vote: '', commit: 0 } });
          acknowledged.push(index);
        } catch (err) {
          errors.push(err as { code: string });
          stop = true;
        }
      }
    }),
  );
  return { acknowledged, errors };
}

async function checkAcknowledged(t: Test, dir: string, acknowledged: number[], size: number): Promise<void> {
  const wal = await Wal.open(dir, options);
  const max = Math.max(0, ...acknowledged);
  t.ok(wal.lastIndex() >= max, `reopened log reaches ${wal.lastIndex()} >= last acknowledged ${max}`);
  let bad = 0;
  for (const index of acknowledged) {
    const [e] = wal.entries(index, index + 1, Infinity);
    if (!e || !e.data.equals(entry(index, size).data)) bad++;
  }
  t.equal(bad, 0, `all ${acknowledged.length} acknowledged entries intact`);
  await wal.close();
}

const cases = [
  { fault: 'fdatasync', syncMode: 'fdatasync' },
  { fault: 'pwrite', syncMode: 'fdatasync' },
  { fault: 'pwrite', syncMode: 'dsync' },
] as const;

for (const { fault, syncMode } of cases) {
  t.test(`an injected ${fault} EIO (${syncMode} mode) fails the WAL closed and loses nothing acknowledged`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'xdevice-wal-fault-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    t.teardown(() => setFaultInjection(null));
    const wal = await Wal.open(dir, { ...options, syncMode });
    const afterCalls = 20 + random(200);
    setFaultInjection(fault === 'fdatasync' ? { fdatasyncErrno: constants.errno.EIO, afterCalls } : { pwriteErrno: constants.errno.EIO, afterCalls });
    const { acknowledged, errors } = await loadUntilFailure(wal, 32, 3000, 1_000_000);
    t.ok(acknowledged.length > 0, `${acknowledged.length} acknowledged before the fault (after ${afterCalls} calls)`);
    t.ok(errors.length >= 1, `${errors.length} waiters saw the failure`);
    t.ok(errors.every((e) => e.code === 'XDEVICE_ERR_WAL_FAILED'), 'every waiter got WAL_FAILED');
    t.match(errors[0]!.cause, { code: 'EIO', syscall: fault });
    setFaultInjection(null);
    await t.rejects(wal.save({ entries: [entry(wal.lastIndex() + 1, 10)] }), { code: 'XDEVICE_ERR_WAL_FAILED' }, 'future appends refused');
    await wal.close();
    await checkAcknowledged(t, dir, acknowledged, 3000);
  });
}

t.test('a real filesystem that fills up (ENOSPC) fails the WAL closed and loses nothing acknowledged', async (t) => {
  const work = mkdtempSync(join(tmpdir(), 'xdevice-wal-enospc-'));
  const image = join(work, 'fs.img');
  const mnt = join(work, 'mnt');
  mkdirSync(mnt);
  const sbin = { env: { ...process.env, PATH: `/usr/sbin:/sbin:${process.env.PATH}` } };
  execFileSync('truncate', ['-s', '8M', image]);
  execFileSync('mkfs.ext4', ['-q', '-F', image], sbin);
  execFileSync('mount', ['-o', 'loop', image, mnt], sbin);
  t.teardown(() => {
    try {
      execFileSync('umount', [mnt], sbin);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
  const dir = join(mnt, 'wal');
  const wal = await Wal.open(dir, options);
  const { acknowledged, errors } = await loadUntilFailure(wal, 16, 8000, 1_000_000);
  t.ok(acknowledged.length > 100, `${acknowledged.length} acknowledged before the disk filled`);
  t.ok(errors.length >= 1 && errors.every((e) => e.code === 'XDEVICE_ERR_WAL_FAILED'), `${errors.length} waiters saw WAL_FAILED`);
  t.match(errors[0]!.cause, { code: 'ENOSPC' });
  await t.rejects(wal.save({ entries: [entry(wal.lastIndex() + 1, 10)] }), { code: 'XDEVICE_ERR_WAL_FAILED' });
  await wal.close();
  await checkAcknowledged(t, dir, acknowledged, 8000);
});
