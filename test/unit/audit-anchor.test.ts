// The cluster audit trail across a snapshot (issue 15): a node caught up by a
// snapshot never applies the AUDIT_RECORD entries the snapshot covers. The
// snapshot's state carries the trail's head (BlockStore.captureState), the
// installing node writes an anchor there (BlockStore.reload) and its chain
// continues from it: later records are identical, byte for byte, to those of
// the nodes that applied everything; verify passes and names the anchor; an
// anchor edited to go back or to another hash is found; the state without a
// trail carries none.

import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { AuditTrail, openTrails, trailFileName } from '../../src/audit/trail.ts';
import { verifyTrail } from '../../src/audit/verify.ts';
import { boundEntry } from '../../src/audit/entry.ts';
import { BlockStore } from '../../src/device/block-store.ts';
import { decodeStoreState, encodeStoreState } from '../../src/device/checkpoint.ts';
import { encodeAuditRecord, encodeCreateDevice } from '../../src/device/commands.ts';
import { EntryType, type Entry } from '../../src/raft/types.ts';
import { tempDir } from './helpers/store-log.ts';

const logger = pino({ level: 'silent' });

const id = (seq: number) => ({ clientId: 3, seq, firstUnacked: seq });
const audit = (index: number): Entry => ({
  term: 1,
  index,
  type: EntryType.Normal,
  data: encodeAuditRecord(id(index), boundEntry({ operation: 'device.create', principal: 'admin', source: '127.0.0.1:4000', args: { name: `d${index}` }, outcome: 'ok', scope: 'cluster' }, Date.parse('2026-12-02T08:00:00Z') + index * 1000)),
});
const log: Entry[] = [{ term: 1, index: 1, type: EntryType.Normal, data: encodeCreateDevice(id(1), 'd', 1 << 20) }, ...[2, 3, 4, 5, 6, 7].map(audit)];

async function node(dir: string) {
  const store = await BlockStore.open(dir, logger);
  const trails = await openTrails(dir, logger);
  store.auditTrail = trails.cluster;
  return {
    store,
    trails,
    async close() {
      await store.closeFiles();
      await trails.cluster.close();
      await trails.node.close();
    },
  };
}

const lines = async (dir: string): Promise<string[]> => (await readFile(join(dir, 'audit', trailFileName('cluster', 1)), 'utf8')).split('\n').filter((l) => l !== '');

t.test('a node caught up by a snapshot continues the cluster trail from its anchor', async (t) => {
  const base = await tempDir(t, 'xdevice-anchor-');
  // The leader applies everything; its state as of index 5 is the snapshot.
  const leader = await node(join(base, 'leader'));
  await leader.store.applyBatch(log.slice(0, 5), () => {});
  const state = decodeStoreState(encodeStoreState(leader.store.captureState()), 'snapshot');
  t.match(state.audit, { seq: 4, index: 5 }, 'the snapshot state carries the trail head (4 records up to index 5)');
  await leader.store.applyBatch(log.slice(5), () => {});

  // The lagging node had applied up to index 2, then installs the snapshot and applies the rest.
  const lagging = await node(join(base, 'lagging'));
  await lagging.store.applyBatch(log.slice(0, 2), () => {});
  await lagging.store.closeFiles();
  await lagging.store.reload(state);
  t.same(lagging.trails.cluster.head, state.audit, 'the trail head is the anchor');
  await lagging.store.applyBatch(log.slice(5), () => {});
  t.same(lagging.trails.cluster.head, leader.trails.cluster.head, 'both trails end at the same record and hash');
  await leader.close();
  await lagging.close();

  const ours = await lines(join(base, 'lagging'));
  const theirs = await lines(join(base, 'leader'));
  t.same(ours[0], theirs[0], 'record 1 (applied before the lag) is the same');
  t.match(JSON.parse(ours[1]!), { anchor: state.audit }, 'then the anchor');
  t.same(ours.slice(2), theirs.slice(4), 'from the anchor on, the same records byte for byte');
  t.equal(ours.length, 4);

  const report = await verifyTrail(join(base, 'lagging', 'audit'), 'cluster');
  t.ok(report.ok, JSON.stringify(report.problem));
  t.match(report.anchors, [{ seq: 4, index: 5, line: 2 }], 'verify names the anchor');
  t.equal(report.records, 3);
  t.same(report.head, { seq: 6, hash: theirs[5] && (JSON.parse(theirs[5]) as { hash: string }).hash });
  t.ok((await verifyTrail(join(base, 'leader', 'audit'), 'cluster')).anchors.length === 0, 'a node that applied everything has no anchor');

  // Reopened, the trail continues after the last record (an anchor at the end also works: below).
  const reopened = await AuditTrail.open(join(base, 'lagging', 'audit'), 'cluster', logger);
  t.same(reopened.head.seq, 6);
  await reopened.close();

  // An anchor edited to go back, or to give another hash for a record this node holds, is found.
  const file = join(base, 'lagging', 'audit', trailFileName('cluster', 1));
  const edited = async (anchor: object): Promise<string | undefined> => {
    await writeFile(file, [ours[0], JSON.stringify({ anchor, time: '2026-12-02T09:00:00.000Z' }), ...ours.slice(2)].map((l) => `${l}\n`).join(''));
    return (await verifyTrail(join(base, 'lagging', 'audit'), 'cluster')).problem?.what;
  };
  const first = JSON.parse(ours[0]!) as { seq: number; hash: string; index: number };
  t.match(await edited({ seq: 0, hash: '0'.repeat(64), index: 0 }), /the trail went back/);
  t.match(await edited({ seq: 1, hash: 'f'.repeat(64), index: first.index }), /another hash/);
  t.match(await edited({ seq: 3, hash: state.audit!.hash, index: 5 }), /prevHash|removed/, 'an anchor moved changes what follows it');
});

t.test('a trail already at or past the snapshot is left alone; an anchor as the last line is the head at start-up', async (t) => {
  const base = await tempDir(t, 'xdevice-anchor-');
  const a = await node(join(base, 'a'));
  await a.store.applyBatch(log.slice(0, 4), () => {});
  const early = a.store.captureState().audit!;
  await a.store.applyBatch(log.slice(4), () => {});
  await a.trails.cluster.anchorAt(early);
  t.same((await lines(join(base, 'a'))).length, 6, 'no anchor written behind the head');
  await a.close();

  const b = await AuditTrail.open(join(base, 'b', 'audit'), 'cluster', logger);
  await b.anchorAt({ seq: 9, hash: 'a'.repeat(64), index: 20 });
  await b.close();
  const reopened = await AuditTrail.open(join(base, 'b', 'audit'), 'cluster', logger);
  t.same(reopened.head, { seq: 9, hash: 'a'.repeat(64), index: 20 });
  await reopened.applyRecord(20, boundEntry({ operation: 'x', principal: 'p', source: 's', args: {}, outcome: 'ok', scope: 'cluster' }, 0));
  await reopened.applyRecord(21, boundEntry({ operation: 'y', principal: 'p', source: 's', args: {}, outcome: 'ok', scope: 'cluster' }, 0));
  await reopened.close();
  const stored = (await lines(join(base, 'b'))).map((l) => JSON.parse(l) as { seq?: number; prevHash?: string });
  t.match(stored[1], { seq: 10, prevHash: 'a'.repeat(64) }, 'index 20 is covered by the anchor; 21 chains from it');
  t.equal(stored.length, 2);
  t.ok((await verifyTrail(join(base, 'b', 'audit'), 'cluster')).ok);

  const bare = await BlockStore.open(join(base, 'bare'), logger);
  t.notOk('audit' in bare.captureState(), 'a store without a trail carries no head');
  await bare.closeFiles();
});
