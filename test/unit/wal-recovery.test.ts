// Recovery from every kind of damage: torn tails at every byte, bit flips
// before the tail, missing segments, zero-filled and half-created segments.

import t, { type Test } from 'tap';
import { readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync, truncateSync, cpSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Wal } from '../../src/wal/wal.ts';
import { alignUp } from '../../src/wal/record.ts';
import { checkLog, entries, entry, smallSegments, walDir } from './wal-helpers.ts';

const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
console.log(`# XDEVICE_SEED=${seed}`);

function segmentFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => n.endsWith('.wal'))
    .sort();
}

function snapshotDir(dir: string): Map<string, Buffer> {
  return new Map(segmentFiles(dir).map((n) => [n, readFileSync(join(dir, n))]));
}

/** A log of `count` single-entry batches, closed; returns where the last batch starts and ends in the last segment. */
async function buildLog(t: Test, count: number, size = 100): Promise<{ dir: string; last: string; lastStart: number; lastEnd: number }> {
  const dir = walDir(t);
  const wal = await Wal.open(dir, smallSegments);
  for (let i = 1; i < count; i++) await wal.save({ entries: [entry(i, 1, size)], hardState: { term: 1, vote: 'n1', commit: i - 1 } });
  const last = segmentFiles(dir).at(-1)!;
  const before = readFileSync(join(dir, last));
  await wal.save({ entries: [entry(count, 1, size)] });
  await wal.close();
  const after = readFileSync(join(dir, last));
  let lastStart = 0;
  while (before[lastStart] === after[lastStart]) lastStart++;
  lastStart -= lastStart % 4096; // the batch starts on an alignment boundary
  const lastEnd = lastStart + 32 + 32 + size; // batch header + record header + payload
  return { dir, last, lastStart, lastEnd };
}

async function expectCorrupt(t: Test, dir: string, segment: string, offset: number | RegExp, code = 'XDEVICE_ERR_WAL_CORRUPT'): Promise<void> {
  const before = snapshotDir(dir);
  const err = await Wal.open(dir, smallSegments).then(
    async (w) => {
      await w.close();
      return undefined;
    },
    (e: unknown) => e,
  );
  t.match(err, code === 'XDEVICE_ERR_WAL_CORRUPT' ? { code, segment, offset } : { code, segment }, 'refuses to start, naming segment and offset');
  t.match(String((err as Error | undefined)?.message), segment, 'the message names the segment');
  const after = snapshotDir(dir);
  t.same([...after.keys()], [...before.keys()], 'no file removed');
  t.ok([...before].every(([n, b]) => after.get(n)!.equals(b)), 'no file changed');
}

t.test('a torn tail cut at every byte offset of the last record is truncated', async (t) => {
  const size = 200;
  const { dir, last, lastStart, lastEnd } = await buildLog(t, 5, size);
  const pristine = readFileSync(join(dir, last));
  let survivors = 0;
  for (let cut = lastStart; cut <= lastEnd; cut++) {
    // bytes from `cut` on never reached the disk: they read as the preallocated zeros
    const torn = Buffer.from(pristine);
    torn.fill(0, cut, lastEnd);
    writeFileSync(join(dir, last), torn);
    const wal = await Wal.open(dir, smallSegments);
    const complete = cut === lastEnd;
    if (wal.lastIndex() !== (complete ? 5 : 4)) t.fail(`cut at ${cut}: lastIndex ${wal.lastIndex()}`);
    else survivors++;
    if (cut % 37 === 0 || complete) {
      // the log continues cleanly after the truncation point
      await wal.save({ entries: [entry(wal.lastIndex() + 1, 2, size)] });
      await wal.close();
      const again = await Wal.open(dir, smallSegments);
      checkLog(t, again, 1, complete ? 6 : 5, (i) => (i <= (complete ? 5 : 4) ? 1 : 2), size);
      await again.close();
    } else {
      await wal.close();
    }
  }
  t.equal(survivors, lastEnd - lastStart + 1, 'every cut recovered to the right index');
});

t.test('a torn tail holding garbage (not zeros) is truncated and zeroed', async (t) => {
  const { dir, last, lastStart, lastEnd } = await buildLog(t, 4);
  const buf = readFileSync(join(dir, last));
  for (let i = lastStart + 40; i < lastEnd + 3000; i++) buf[i] = (i * 131) & 0xff;
  writeFileSync(join(dir, last), buf);
  const wal = await Wal.open(dir, smallSegments);
  t.equal(wal.lastIndex(), 3);
  await wal.close();
  const zeroed = readFileSync(join(dir, last));
  t.ok(zeroed.subarray(lastStart, lastEnd + 3000).every((b) => b === 0), 'the torn bytes were overwritten with zeros');
});

t.test('a file shorter than its preallocation (cut off) still recovers', async (t) => {
  const { dir, last, lastStart } = await buildLog(t, 6);
  truncateSync(join(dir, last), lastStart + 50);
  const wal = await Wal.open(dir, smallSegments);
  checkLog(t, wal, 1, 5, () => 1);
  await wal.save({ entries: entries(6, 8, 1) });
  await wal.close();
  const again = await Wal.open(dir, smallSegments);
  checkLog(t, again, 1, 8, () => 1);
  await again.close();
});

t.test('a bit flip before the tail refuses to start and names segment and offset', async (t) => {
  const random = (() => {
    let s = seed || 1;
    return (n: number) => {
      s = (s * 48271) % 0x7fffffff;
      return s % n;
    };
  })();
  const { dir, last, lastStart } = await buildLog(t, 6);
  const pristine = readFileSync(join(dir, last));
  // entries 1..5 occupy the batches before the last one; the second data batch is at 2*4096+4096 (header + baseline)
  const victims = [
    { what: 'a record payload', offset: 3 * 4096 + 64 + random(100) },
    { what: 'a record header', offset: 3 * 4096 + 32 + random(32) },
    { what: 'a batch header', offset: 3 * 4096 + random(32) },
  ];
  for (const v of victims) {
    const buf = Buffer.from(pristine);
    buf[v.offset]! ^= 1 << random(8);
    writeFileSync(join(dir, last), buf);
    t.ok(v.offset < lastStart, `${v.what} at ${v.offset} is before the tail`);
    await expectCorrupt(t, dir, last, v.offset < 3 * 4096 + 32 ? 3 * 4096 : 3 * 4096 + (v.offset >= 3 * 4096 + 32 ? 32 : 0));
  }
  writeFileSync(join(dir, last), pristine);
  const wal = await Wal.open(dir, smallSegments);
  checkLog(t, wal, 1, 6, () => 1);
  await wal.close();
});

t.test('damage in an earlier segment is corruption even at its end', async (t) => {
  const dir = walDir(t);
  const wal = await Wal.open(dir, smallSegments);
  for (let i = 1; i <= 40; i++) await wal.save({ entries: [entry(i, 1, 3000)] });
  await wal.close();
  const files = segmentFiles(dir);
  t.ok(files.length >= 3);
  const first = readFileSync(join(dir, files[0]!));
  // the last batch of the first segment: find the last non-zero block
  let end = first.length;
  while (end > 0 && first[end - 1] === 0) end--;
  const lastBatch = alignUp(end, 4096) - 4096;
  const damaged = Buffer.from(first);
  damaged[end - 10]! ^= 0x40;
  writeFileSync(join(dir, files[0]!), damaged);
  await expectCorrupt(t, dir, files[0]!, lastBatch + 32);

  writeFileSync(join(dir, files[0]!), first);
  const header = Buffer.from(readFileSync(join(dir, files[1]!)));
  header[17]! ^= 1;
  writeFileSync(join(dir, files[1]!), header);
  await expectCorrupt(t, dir, files[1]!, 0);
});

t.test('a missing segment refuses to start', async (t) => {
  const build = async () => {
    const dir = walDir(t);
    const wal = await Wal.open(dir, smallSegments);
    for (let i = 1; i <= 50; i++) await wal.save({ entries: [entry(i, 1, 3000)], hardState: { term: 1, vote: '', commit: i } });
    await wal.close();
    return dir;
  };
  let dir = await build();
  let files = segmentFiles(dir);
  t.ok(files.length >= 4, `${files.length} segments`);
  unlinkSync(join(dir, files[1]!));
  await expectCorrupt(t, dir, files[2]!, 0, 'XDEVICE_ERR_WAL_MISSING');

  dir = await build();
  files = segmentFiles(dir);
  unlinkSync(join(dir, files[0]!));
  await expectCorrupt(t, dir, files[1]!, 0, 'XDEVICE_ERR_WAL_MISSING');

  // The last segment: the one before it was sealed when it was started.
  dir = walDir(t);
  const wal = await Wal.open(dir, smallSegments);
  await wal.save({ entries: [entry(1, 1, 3000)], hardState: { term: 1, vote: '', commit: 0 } });
  for (let i = 2; i <= 50; i++) await wal.save({ entries: [entry(i, 1, 3000)] });
  await wal.close();
  files = segmentFiles(dir);
  unlinkSync(join(dir, files.at(-1)!));
  const missing = segmentFiles(dir);
  const err = (await Wal.open(dir, smallSegments).then(
    (w) => w.close().then(() => undefined),
    (e: unknown) => e,
  )) as Error & { code?: string; segment?: string };
  t.equal(err?.code, 'XDEVICE_ERR_WAL_MISSING', 'a deleted last segment is noticed');
  t.equal(err?.segment, files.at(-1), 'the error names the missing segment');
  t.match(err.message, missing.at(-1)!, 'and the sealed segment before it');
  t.same(segmentFiles(dir), missing, 'no file removed');
});

t.test('a segment is sealed only once its successor holds a durable batch', async (t) => {
  // Reopening after every roll finds a consistent log: the seal never names a successor recovery would drop.
  const dir = walDir(t);
  for (let i = 1; i <= 30; i++) {
    const wal = await Wal.open(dir, smallSegments);
    await wal.save({ entries: [entry(i, 1, 3000)], ...(i === 1 ? { hardState: { term: 1, vote: '', commit: 0 } } : {}) });
    await wal.close();
  }
  const wal = await Wal.open(dir, smallSegments);
  t.equal(wal.lastIndex(), 30);
  const got = wal.entries(1, 31, Infinity);
  t.equal(got.filter((e, k) => e.index === k + 1 && e.data.equals(entry(k + 1, 1, 3000).data)).length, 30, 'every entry intact');
  t.ok(segmentFiles(dir).length >= 3, 'several segments were rolled');
  await wal.close();
});

t.test('a zero-filled preallocated tail and a half-created last segment are not damage', async (t) => {
  const dir = walDir(t);
  let wal = await Wal.open(dir, smallSegments);
  await wal.save({ entries: entries(1, 3, 1), hardState: { term: 1, vote: 'a', commit: 2 } });
  await wal.close();
  // the rest of the segment is preallocated zeros: reopening finds the end there
  wal = await Wal.open(dir, smallSegments);
  checkLog(t, wal, 1, 3, () => 1);
  await wal.close();

  // a crash while creating the next segment: zeros, no header
  const files = segmentFiles(dir);
  const next = join(dir, '0000000000000002-0000000000000004.wal');
  writeFileSync(next, Buffer.alloc(64 * 1024));
  writeFileSync(join(dir, 'next-segment.tmp'), Buffer.alloc(4096, 7));
  wal = await Wal.open(dir, smallSegments);
  checkLog(t, wal, 1, 3, () => 1);
  t.same(wal.hardState(), { term: 1, vote: 'a', commit: 2 });
  t.same(segmentFiles(dir), files, 'the never-started segment was removed');
  await wal.save({ entries: entries(4, 5, 1) });
  await wal.close();
  wal = await Wal.open(dir, smallSegments);
  checkLog(t, wal, 1, 5, () => 1);
  await wal.close();
});

t.test('a copy of a log recovers identically (no hidden state outside the directory)', async (t) => {
  const { dir } = await buildLog(t, 10);
  const copy = mkdtempSync(join(tmpdir(), 'xdevice-wal-copy-'));
  t.teardown(() => rmSync(copy, { recursive: true, force: true }));
  cpSync(dir, copy, { recursive: true });
  const wal = await Wal.open(copy, smallSegments);
  checkLog(t, wal, 1, 10, () => 1);
  t.same(wal.hardState(), { term: 1, vote: 'n1', commit: 8 });
  await wal.close();
});
