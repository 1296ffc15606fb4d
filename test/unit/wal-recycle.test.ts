// Segment recycling on the real disk: compaction hands obsolete segment files
// to later segments (the same inodes come back under new names), nothing is
// zero-filled, and the log reads back intact across reopens.

import t from 'tap';
import { readdirSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { DiskIo } from '../../src/disk/disk-io.ts';
import { nativeDisk } from '../../src/disk/native-disk.ts';
import type { WalOptions } from '../../src/wal/wal.ts';
import { checkLog, entries, entry, openWal, walDir } from './wal-helpers.ts';

const confState = { voters: ['n1'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };

/** The real disk, counting the bytes every pwrite hands it. */
function countingDisk(): { disk: DiskIo; written: () => number } {
  let written = 0;
  const disk: DiskIo = Object.create(nativeDisk) as DiskIo;
  disk.pwrite = (file, buf, position) => {
    written += buf.length;
    return nativeDisk.pwrite(file, buf, position);
  };
  disk.pwriteBatch = (file, bufs, positions) => {
    for (const b of bufs) written += b.length;
    return nativeDisk.pwriteBatch(file, bufs, positions);
  };
  return { disk, written: () => written };
}

function inodes(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const name of readdirSync(dir)) out.set(name, statSync(join(dir, name)).ino);
  return out;
}

function processDiskWrites(): number | undefined {
  try {
    const m = /^write_bytes: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

// 256 KiB less a record header: with its batch header each save is exactly 64 blocks.
const entryBytes = 256 * 1024 - 64;
const opts = (disk: DiskIo): WalOptions => ({ disk, segmentBytes: 4 * 1024 * 1024, alignmentBytes: 4096, batchBytesMax: 1024 * 1024, recycledSegments: 2 });

t.test('compacted segments are recycled: their files come back as new segments and nothing is zero-filled', async (t) => {
  const dir = walDir(t);
  const counting = countingDisk();
  const wal = await openWal(t, dir, opts(counting.disk));
  let last = 0;
  const append = async (n: number) => {
    for (let i = 0; i < n; i++) {
      last++;
      await wal.save({ entries: [entry(last, 1, entryBytes)], hardState: { term: 1, vote: 'n1', commit: last } });
    }
  };
  // Fifteen entries a segment: fill five segments, then drop the first three.
  await append(75);
  await wal.nextSegmentPrepared();
  const before = inodes(dir);
  const oldInodes = new Set(wal.segmentNames().slice(0, 3).map((n) => before.get(n)!));
  await wal.compact({ index: 50, term: 1, confState });
  t.same(wal.recycleCounts(), { recycled: 0, preallocated: 6, pooled: 2, deleted: 1 }, 'two segments pooled, the third deleted');
  const pooled = readdirSync(dir).filter((n) => n.startsWith('recycled-'));
  t.equal(pooled.length, 2, 'two files wait in the pool');
  const pooledInodes = new Set(pooled.map((n) => statSync(join(dir, n)).ino));
  t.ok([...pooledInodes].every((ino) => oldInodes.has(ino)), 'the pool holds the compacted files');

  const written0 = counting.written();
  const process0 = processDiskWrites();
  await append(45);
  await wal.nextSegmentPrepared();
  const appended = 45 * entryBytes;
  const counts = wal.recycleCounts();
  t.equal(counts.recycled, 2, 'both pooled files started new segments');
  const after = inodes(dir);
  const reused = wal.segmentNames().filter((n) => !before.has(n) && pooledInodes.has(after.get(n)!));
  t.equal(reused.length, 2, `two new segments live in the pooled inodes (${reused.join(', ')})`);
  const ratio = (counting.written() - written0) / appended;
  t.ok(ratio > 1 && ratio < 1.05, `bytes written per appended byte ${ratio.toFixed(4)} (zero-filling would make it about 2)`);
  const process1 = processDiskWrites();
  if (process0 !== undefined && process1 !== undefined && process1 > process0) {
    const disk = (process1 - process0) / appended;
    t.ok(disk < 1.3, `the kernel saw ${disk.toFixed(3)} disk bytes per appended byte`);
  }
  checkLog(t, wal, 51, last, () => 1, entryBytes);
  await wal.close();

  const reopened = await openWal(t, dir, opts(nativeDisk));
  checkLog(t, reopened, 51, last, () => 1, entryBytes);
  await reopened.save({ entries: [entry(last + 1, 1, entryBytes)] });
  checkLog(t, reopened, 51, last + 1, () => 1, entryBytes);
});

t.test('a new log never reuses files it finds in the pool; the pool keeps at most its limit', async (t) => {
  const dir = walDir(t);
  const small: WalOptions = { segmentBytes: 64 * 1024, alignmentBytes: 4096, batchBytesMax: 16 * 1024, recycledSegments: 1 };
  let wal = await openWal(t, dir, small);
  for (let i = 1; i <= 40; i++) await wal.save({ entries: entries(i, i, 1, 3000), hardState: { term: 1, vote: 'n1', commit: i } });
  await wal.compact({ index: 39, term: 1, confState });
  const counts = wal.recycleCounts();
  t.ok(counts.pooled <= 1 && counts.deleted >= 1, `pool of one: ${JSON.stringify(counts)}`);
  await wal.close();
  t.ok(readdirSync(dir).filter((n) => n.startsWith('recycled-')).length <= 1, 'at most one file waits');

  // Every segment removed by hand (a wiped log), pool files left: the new log deletes them.
  for (const n of readdirSync(dir)) if (n.endsWith('.wal')) unlinkSync(join(dir, n));
  const leftover = readdirSync(dir).filter((n) => n.startsWith('recycled-'));
  t.equal(leftover.length, 1, 'a file waits in the pool');
  wal = await openWal(t, dir, small);
  t.same(readdirSync(dir).filter((n) => n.startsWith('recycled-')), [], `the new log deleted ${leftover.length} leftover file(s)`);
  t.equal(wal.lastIndex(), 0, 'an empty log');
  for (let i = 1; i <= 30; i++) await wal.save({ entries: entries(i, i, 1, 3000) });
  checkLog(t, wal, 1, 30, () => 1, 3000);
});

t.test('a prepared file the log closed before using goes back to the pool, under a name of its own, across many reopens', async (t) => {
  const dir = walDir(t);
  const small: WalOptions = { segmentBytes: 64 * 1024, alignmentBytes: 4096, batchBytesMax: 16 * 1024, recycledSegments: 2 };
  let last = 0;
  for (let round = 0; round < 6; round++) {
    const wal = await openWal(t, dir, small);
    for (let i = 0; i < 20; i++) {
      last++;
      await wal.save({ entries: entries(last, last, 1, 3000), hardState: { term: 1, vote: 'n1', commit: last } });
    }
    await wal.compact({ index: last - 1, term: 1, confState });
    await wal.nextSegmentPrepared();
    await wal.close();
    const pool = readdirSync(dir).filter((n) => n.startsWith('recycled-'));
    t.ok(pool.length >= 1 && pool.length <= 2, `round ${round}: ${pool.length} file(s) wait, no more than the limit`);
    t.notOk(readdirSync(dir).includes('next-segment.tmp'), `round ${round}: the prepared file was not left behind`);
  }
  const wal = await openWal(t, dir, small);
  checkLog(t, wal, last, last, () => 1, 3000);
});
