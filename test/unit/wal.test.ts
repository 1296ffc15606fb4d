// The WAL as Raft's Storage: durable saves, reads, overwrite, compaction,
// snapshot install, segment rolling, and failing closed.

import t from 'tap';
import { readdirSync } from 'node:fs';
import { constants } from 'node:os';
import { setFaultInjection } from '../../src/native.ts';
import { Wal } from '../../src/wal/wal.ts';
import { checkLog, entries, entry, openWal, smallSegments, walDir } from './wal-helpers.ts';

const confState = { voters: ['a', 'b', 'c'], learners: ['d'], votersOutgoing: [], learnersNext: [], autoLeave: false };

t.test('a fresh log is empty and creates one segment', async (t) => {
  const dir = walDir(t);
  const wal = await openWal(t, dir);
  t.equal(wal.firstIndex(), 1);
  t.equal(wal.lastIndex(), 0);
  t.equal(wal.term(0), 0);
  t.same(wal.initialState(), { hardState: { term: 0, vote: '', commit: 0 }, confState: { voters: [], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } });
  t.same(readdirSync(dir).filter((n) => n.endsWith('.wal')), ['0000000000000001-0000000000000001.wal']);
});

t.test('saves are durable across reopen, with hard state', async (t) => {
  const dir = walDir(t);
  let wal = await Wal.open(dir, smallSegments);
  await wal.save({ entries: entries(1, 5, 1), hardState: { term: 1, vote: 'node-a', commit: 3 } });
  await Promise.all([wal.save({ entries: entries(6, 8, 2) }), wal.save({ entries: entries(9, 9, 2), hardState: { term: 2, vote: '', commit: 8 } })]);
  t.same(wal.hardState(), { term: 2, vote: '', commit: 8 });
  checkLog(t, wal, 1, 9, (i) => (i <= 5 ? 1 : 2));
  await wal.close();
  await t.rejects(wal.save({ entries: entries(10, 10, 2) }), { code: 'XDEVICE_ERR_WAL_CLOSED' });

  wal = await openWal(t, dir);
  checkLog(t, wal, 1, 9, (i) => (i <= 5 ? 1 : 2));
  t.same(wal.hardState(), { term: 2, vote: '', commit: 8 });
  t.equal(wal.term(5), 1);
  t.equal(wal.term(6), 2);
});

t.test('Storage reads: bounds, errors and maxBytes', async (t) => {
  const wal = await openWal(t, walDir(t));
  await wal.save({ entries: entries(1, 10, 1) });
  t.equal(wal.entries(3, 6, 1e9).length, 3);
  t.equal(wal.entries(3, 6, 0).length, 1, 'always at least one entry');
  t.equal(wal.entries(3, 6, 250).length, 2, 'stops before exceeding maxBytes');
  t.same(wal.entries(4, 4, 1e9), []);
  t.throws(() => wal.entries(5, 12, 1e9), { code: 'XDEVICE_ERR_UNAVAILABLE' });
  t.throws(() => wal.term(11), { code: 'XDEVICE_ERR_UNAVAILABLE' });
  await wal.compact({ index: 4, term: 1, confState });
  t.throws(() => wal.entries(4, 6, 1e9), { code: 'XDEVICE_ERR_COMPACTED' });
  t.throws(() => wal.term(3), { code: 'XDEVICE_ERR_COMPACTED' });
  t.equal(wal.term(4), 1, 'the snapshot term at firstIndex()-1');
});

t.test('an overwrite replaces the conflicting suffix durably', async (t) => {
  const dir = walDir(t);
  let wal = await Wal.open(dir, smallSegments);
  await wal.save({ entries: entries(1, 10, 1) });
  await wal.save({ entries: entries(6, 7, 2) });
  checkLog(t, wal, 1, 7, (i) => (i <= 5 ? 1 : 2));
  // a second conflict further back, in the same group commit as more entries
  await Promise.all([wal.save({ entries: entries(3, 4, 3) }), wal.save({ entries: entries(5, 6, 3) })]);
  checkLog(t, wal, 1, 6, (i) => (i <= 2 ? 1 : 3));
  await t.rejects(wal.save({ entries: entries(9, 9, 3) }), { code: 'XDEVICE_ERR_WAL_USAGE' }, 'a gap is refused');
  await t.rejects(wal.save({ entries: [entry(7, 3), entry(9, 3)] }), { code: 'XDEVICE_ERR_WAL_USAGE' });
  await wal.close();
  wal = await openWal(t, dir);
  checkLog(t, wal, 1, 6, (i) => (i <= 2 ? 1 : 3));
});

t.test('segments roll when full and replay in order, also across an overwrite', async (t) => {
  const dir = walDir(t);
  let wal = await Wal.open(dir, smallSegments);
  // commit stays below the overwrite point: Raft never truncates committed entries
  for (let i = 1; i <= 60; i++) await wal.save({ entries: [entry(i, 1, 3000)], hardState: { term: 1, vote: 'x', commit: Math.min(i - 1, 15) } });
  t.ok(wal.segmentNames().length >= 3, `rolled into ${wal.segmentNames().length} segments`);
  // overwrite back into a range that lives in an earlier segment
  await wal.save({ entries: entries(20, 25, 2, 3000) });
  for (let i = 26; i <= 40; i++) await wal.save({ entries: [entry(i, 2, 3000)] });
  const names = wal.segmentNames();
  await wal.close();
  wal = await openWal(t, dir);
  t.same(wal.segmentNames(), names);
  checkLog(t, wal, 1, 40, (i) => (i < 20 ? 1 : 2), 3000);
  t.same(wal.hardState(), { term: 1, vote: 'x', commit: 15 });
});

t.test('compaction survives restart and deletes segments wholly below it', async (t) => {
  const dir = walDir(t);
  let wal = await Wal.open(dir, smallSegments);
  for (let i = 1; i <= 80; i++) await wal.save({ entries: [entry(i, 1 + Math.floor(i / 30), 3000)] });
  const before = wal.segmentNames().length;
  await t.rejects(wal.compact({ index: 81, term: 3, confState }), { code: 'XDEVICE_ERR_UNAVAILABLE' });
  await t.rejects(wal.compact({ index: 50, term: 9, confState }), { code: 'XDEVICE_ERR_WAL_USAGE' }, 'term must match the log');
  await wal.compact({ index: 50, term: 2, confState });
  t.equal(wal.firstIndex(), 51);
  t.equal(wal.term(50), 2);
  t.ok(wal.segmentNames().length < before, `segments ${before} -> ${wal.segmentNames().length}`);
  t.equal(readdirSync(dir).filter((n) => n.endsWith('.wal')).length, wal.segmentNames().length, 'deleted from disk');
  await t.rejects(wal.compact({ index: 40, term: 1, confState }), { code: 'XDEVICE_ERR_COMPACTED' });
  await wal.close();

  wal = await Wal.open(dir, smallSegments);
  t.same(wal.snapshotMetadata(), { index: 50, term: 2, confState });
  t.same(wal.initialState().confState, confState);
  checkLog(t, wal, 51, 80, (i) => 1 + Math.floor(i / 30), 3000);
  // compact everything, roll, compact again: the old segments all go
  await wal.compact({ index: 80, term: 3, confState });
  for (let i = 81; i <= 120; i++) await wal.save({ entries: [entry(i, 3, 3000)] });
  await wal.compact({ index: 119, term: 3, confState });
  t.equal(wal.segmentNames().length, 1, 'only the active segment is left');
  await wal.close();
  wal = await openWal(t, dir);
  checkLog(t, wal, 120, 120, () => 3, 3000);
  t.equal(wal.term(119), 3);
});

t.test('applySnapshot discards the log and starts after the snapshot', async (t) => {
  const dir = walDir(t);
  let wal = await Wal.open(dir, smallSegments);
  for (let i = 1; i <= 30; i++) await wal.save({ entries: [entry(i, 1, 3000)], hardState: { term: 1, vote: 'a', commit: Math.min(i, 10) } });
  await t.rejects(wal.applySnapshot({ index: 0, term: 0, confState }), { code: 'XDEVICE_ERR_SNAPSHOT_OUT_OF_DATE' });
  await wal.applySnapshot({ index: 100, term: 4, confState });
  t.equal(wal.firstIndex(), 101);
  t.equal(wal.lastIndex(), 100);
  t.equal(wal.term(100), 4);
  await wal.save({ entries: entries(101, 103, 4), hardState: { term: 4, vote: '', commit: 102 } });
  await wal.close();
  wal = await openWal(t, dir);
  t.same(wal.snapshotMetadata(), { index: 100, term: 4, confState });
  checkLog(t, wal, 101, 103, () => 4);
  t.same(wal.hardState(), { term: 4, vote: '', commit: 102 });
  await t.rejects(wal.applySnapshot({ index: 100, term: 4, confState }), { code: 'XDEVICE_ERR_SNAPSHOT_OUT_OF_DATE' });
});

t.test('entries at or below the snapshot are ignored; big saves are refused before anything changes', async (t) => {
  const wal = await openWal(t, walDir(t));
  await wal.save({ entries: entries(1, 5, 1) });
  await wal.compact({ index: 3, term: 1, confState });
  await wal.save({ entries: entries(2, 7, 1) });
  checkLog(t, wal, 4, 7, () => 1);
  await t.rejects(wal.save({ entries: [entry(8, 1, 64 * 1024)] }), { code: 'XDEVICE_ERR_WAL_USAGE' });
  t.equal(wal.lastIndex(), 7);
});

t.test('after a failed fdatasync the log fails closed for every waiter, now and later', async (t) => {
  const dir = walDir(t);
  t.teardown(() => setFaultInjection(null));
  const wal = await Wal.open(dir, { ...smallSegments, syncMode: 'fdatasync' });
  await wal.save({ entries: entries(1, 3, 1) });
  setFaultInjection({ fdatasyncErrno: constants.errno.EIO });
  const waiters = Array.from({ length: 20 }, (_, i) => wal.save({ entries: [entry(4 + i, 1)] }));
  const results = await Promise.allSettled(waiters);
  t.ok(results.every((r) => r.status === 'rejected' && (r.reason as { code: string }).code === 'XDEVICE_ERR_WAL_FAILED'), 'all 20 rejected');
  t.match((results[0] as PromiseRejectedResult).reason.cause, { code: 'EIO', syscall: 'fdatasync' });
  setFaultInjection(null);
  await t.rejects(wal.save({ entries: [entry(4, 1)] }), { code: 'XDEVICE_ERR_WAL_FAILED' }, 'no retry after the disk recovers');
  await t.rejects(wal.compact({ index: 2, term: 1, confState }), { code: 'XDEVICE_ERR_WAL_FAILED' });
  await wal.close();
  const reopened = await openWal(t, dir);
  // The batch whose fdatasync failed may or may not be on disk; what was acknowledged must be.
  t.ok(reopened.lastIndex() >= 3, 'acknowledged entries survive');
  t.same(reopened.entries(1, 4, 1e9), entries(1, 3, 1));
});

t.test('the writer refuses a term or index it could not read back, before writing anything', async (t) => {
  const dir = walDir(t);
  let wal = await Wal.open(dir, smallSegments);
  await wal.save({ entries: entries(1, 3, 1), hardState: { term: 1, vote: '', commit: 2 } });
  for (const bad of [2 ** 53, Number.MAX_SAFE_INTEGER + 2, -1, 1.5, Number.NaN]) {
    await t.rejects(wal.save({ hardState: { term: bad, vote: 'x', commit: 3 } }), { code: 'XDEVICE_ERR_WAL_USAGE', message: /cannot be stored/ }, `hard state term ${bad}`);
    await t.rejects(wal.save({ entries: [{ ...entry(4, 1), term: bad }] }), { code: 'XDEVICE_ERR_WAL_USAGE' }, `entry term ${bad}`);
  }
  await t.rejects(wal.applySnapshot({ index: 2 ** 53, term: 1, confState }), { code: 'XDEVICE_ERR_WAL_USAGE' });
  t.same(wal.hardState(), { term: 1, vote: '', commit: 2 }, 'the in-memory state did not take the refused values');
  t.equal(wal.lastIndex(), 3);
  // Still writable, and it recovers: nothing unreadable reached the disk.
  await wal.save({ entries: entries(4, 4, Number.MAX_SAFE_INTEGER), hardState: { term: Number.MAX_SAFE_INTEGER, vote: '', commit: 3 } });
  await wal.close();
  wal = await openWal(t, dir);
  t.equal(wal.hardState().term, Number.MAX_SAFE_INTEGER, '2^53-1 is the largest term that reads back');
  t.equal(wal.lastIndex(), 4);
});
