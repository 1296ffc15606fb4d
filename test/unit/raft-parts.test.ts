// Unit tests of the pieces under the protocol: quorum arithmetic, in-flight
// window, progress states, the unstable log, MemoryStorage, configuration.

import t from 'tap';
import { validateConfig } from '../../src/raft/config.ts';
import { Inflights } from '../../src/raft/inflights.ts';
import { Unstable } from '../../src/raft/log-unstable.ts';
import { MemoryStorage } from '../../src/raft/memory-storage.ts';
import { Progress, ProgressState } from '../../src/raft/progress.ts';
import { jointCommitted, jointVoteResult, majorityCommitted, majorityVoteResult, VoteResult } from '../../src/raft/quorum.ts';
import { EntryType, type Entry } from '../../src/raft/types.ts';

const ent = (index: number, term: number, data = ''): Entry => ({ index, term, type: EntryType.Normal, data: Buffer.from(data) });

t.test('majority commit index: the median of the voters’ match indexes', async (t) => {
  const match = (m: Record<string, number>) => (id: string) => m[id] ?? 0;
  t.equal(majorityCommitted(['a'], match({ a: 7 })), 7);
  t.equal(majorityCommitted(['a', 'b', 'c'], match({ a: 9, b: 5, c: 2 })), 5);
  t.equal(majorityCommitted(['a', 'b', 'c', 'd'], match({ a: 9, b: 5, c: 2, d: 1 })), 2, 'four voters need three');
  t.equal(majorityCommitted(['a', 'b', 'c', 'd', 'e'], match({ a: 1, b: 8, c: 3, d: 9, e: 4 })), 4);
  t.equal(majorityCommitted([], match({})), Number.MAX_SAFE_INTEGER, 'an empty config agrees with anything');
  t.equal(jointCommitted(['a', 'b', 'c'], ['c', 'd', 'e'], match({ a: 9, b: 9, c: 5, d: 1, e: 1 })), 1, 'joint: the minimum of both halves');
  t.equal(jointCommitted(['a', 'b', 'c'], [], match({ a: 9, b: 9, c: 5 })), 9);
});

t.test('vote results: won, lost, pending, joint', async (t) => {
  const v = (o: Record<string, boolean>) => new Map(Object.entries(o));
  t.equal(majorityVoteResult(['a', 'b', 'c'], v({ a: true, b: true })), VoteResult.Won);
  t.equal(majorityVoteResult(['a', 'b', 'c'], v({ a: true, b: false })), VoteResult.Pending);
  t.equal(majorityVoteResult(['a', 'b', 'c'], v({ a: false, b: false })), VoteResult.Lost);
  t.equal(jointVoteResult(['a', 'b', 'c'], ['c', 'd', 'e'], v({ a: true, b: true, c: false })), VoteResult.Pending);
  t.equal(jointVoteResult(['a', 'b', 'c'], ['c', 'd', 'e'], v({ a: true, b: true, d: false, e: false })), VoteResult.Lost);
  t.equal(jointVoteResult(['a', 'b', 'c'], ['c', 'd', 'e'], v({ a: true, c: true, d: true })), VoteResult.Won);
});

t.test('in-flight window: bounded by count and bytes, freed in order', async (t) => {
  const w = new Inflights(3, 100);
  w.add(5, 10);
  w.add(7, 10);
  w.add(9, 10);
  t.ok(w.full(), 'full by count');
  w.freeLE(7);
  t.equal(w.count, 1);
  t.equal(w.bytes, 10);
  w.add(11, 95);
  t.ok(w.full(), 'full by bytes');
  t.throws(() => w.add(12, 1));
  w.freeLE(100);
  t.equal(w.count, 0);
  // The ring wraps.
  for (let i = 0; i < 10; i++) {
    w.add(20 + i, 1);
    w.freeLE(20 + i);
  }
  t.equal(w.count, 0);
});

t.test('progress: probe, replicate, snapshot', async (t) => {
  const pr = new Progress(11, new Inflights(2, 1 << 20), false);
  t.equal(pr.state, ProgressState.Probe);
  pr.sentEntries(1, 10, 11);
  t.ok(pr.isPaused(), 'one probe at a time');
  t.notOk(pr.maybeDecrTo(5, 3), 'a stale rejection is ignored');
  t.ok(pr.maybeDecrTo(10, 4), 'rejection of the outstanding probe');
  t.equal(pr.next, 5, 'jumps to the hint');
  t.notOk(pr.isPaused());
  t.ok(pr.maybeUpdate(8));
  pr.becomeReplicate();
  t.equal(pr.next, 9);
  pr.sentEntries(2, 10, 10);
  pr.sentEntries(2, 10, 12);
  t.ok(pr.isPaused(), 'window full');
  t.equal(pr.next, 13, 'optimistic next');
  pr.becomeSnapshot(50);
  t.ok(pr.isPaused());
  pr.becomeProbe();
  t.equal(pr.next, 51, 'after a snapshot, probe from behind it');
});

t.test('unstable log: append, truncate, stable', async (t) => {
  const u = new Unstable(5);
  u.truncateAndAppend([ent(5, 1), ent(6, 1), ent(7, 1)]);
  t.equal(u.maybeLastIndex(), 7);
  t.same(u.nextEntries().map((e) => e.index), [5, 6, 7]);
  u.acceptInProgress();
  t.same(u.nextEntries(), []);
  u.truncateAndAppend([ent(6, 2)]);
  t.equal(u.maybeLastIndex(), 6);
  t.equal(u.maybeTerm(6), 2);
  t.same(u.nextEntries().map((e) => e.index), [6], 'the replaced entry is handed out again');
  u.stableTo(7, 1);
  t.equal(u.offset, 5, 'a stale stableTo of a replaced entry is ignored');
  u.stableTo(5, 1);
  t.equal(u.offset, 6);
  t.same(u.entries.map((e) => e.term), [2]);
});

t.test('MemoryStorage: entries, terms, compaction, snapshots, byte limits', async (t) => {
  const s = new MemoryStorage();
  s.append([ent(1, 1, 'aaaa'), ent(2, 1, 'bbbb'), ent(3, 2, 'cccc'), ent(4, 2, 'dddd')]);
  t.equal(s.firstIndex(), 1);
  t.equal(s.lastIndex(), 4);
  t.same(s.entries(1, 5, 8).map((e) => e.index), [1, 2], 'stops at maxBytes');
  t.same(s.entries(1, 5, 1).map((e) => e.index), [1], 'at least one entry');
  s.append([ent(3, 3, 'x')]);
  t.equal(s.lastIndex(), 3, 'append truncates a conflicting suffix');
  t.equal(s.term(3), 3);
  s.compact(2, { voters: ['a'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false });
  t.equal(s.firstIndex(), 3);
  t.equal(s.term(2), 1, 'the snapshot term stays readable');
  t.throws(() => s.entries(2, 3, 100), { code: 'XDEVICE_ERR_COMPACTED' });
  t.throws(() => s.term(1), { code: 'XDEVICE_ERR_COMPACTED' });
  t.throws(() => s.entries(3, 10, 100), { code: 'XDEVICE_ERR_UNAVAILABLE' });
  t.same(s.snapshotMetadata().confState.voters, ['a']);
  t.throws(() => s.applySnapshot({ index: 1, term: 1, confState: s.snapshotMetadata().confState }), { code: 'XDEVICE_ERR_SNAPSHOT_OUT_OF_DATE' });
  s.applySnapshot({ index: 10, term: 4, confState: s.snapshotMetadata().confState });
  t.equal(s.firstIndex(), 11);
  t.equal(s.lastIndex(), 10);
  t.equal(s.initialState().hardState.commit, 10);
});

t.test('config: defaults from limits, bad values rejected up front', async (t) => {
  const base = { id: 'a', storage: new MemoryStorage(), rand: () => 0 };
  const c = validateConfig(base);
  t.equal(c.electionTicks, 10);
  t.equal(c.preVote, true);
  t.equal(c.checkQuorum, true);
  for (const bad of [{ id: '' }, { electionTicks: 0 }, { heartbeatTicks: 10, electionTicks: 10 }, { messageBytesMax: -1 }, { inFlightBytesMax: 10, messageBytesMax: 100 }, { applied: 1.5 }]) {
    t.throws(() => validateConfig({ ...base, ...bad }), { code: 'XDEVICE_ERR_RAFT_CONFIG' }, JSON.stringify(bad));
  }
});
