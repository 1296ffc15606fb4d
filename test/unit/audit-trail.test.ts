// The audit trail on disk: appends chain, rotate by size and continue the
// chain across files; verify finds a hand-edited, removed, reordered or
// cut-off record (naming file and line); start-up refuses a trail whose end
// was removed and repairs a torn append; the cluster trail skips entries it
// already holds (replay); the sink never throws and loses nothing silently;
// the block store hands AUDIT_RECORD entries to the trail exactly once.

import t, { type Test } from 'tap';
import { appendFile, readFile, readdir, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { AuditTrail, headFileName, openTrails, trailFileName } from '../../src/audit/trail.ts';
import { verifyTrail } from '../../src/audit/verify.ts';
import { boundEntry, type AuditEntry } from '../../src/audit/entry.ts';
import { AuditLog } from '../../src/audit/sink.ts';
import { auditResponse, type AuditListing, type AuditVerifyReport } from '../../src/audit/query.ts';
import type { AuditEvent } from '../../src/audit/event.ts';
import { GENESIS_HASH } from '../../src/audit/record.ts';
import { BlockStore } from '../../src/device/block-store.ts';
import { encodeAuditRecord, encodeCreateDevice } from '../../src/device/commands.ts';
import { EntryType, type Entry } from '../../src/raft/types.ts';
import { limits } from '../../src/limits.ts';
import { parseSince } from '../../src/parse.ts';
import { tempDir } from './helpers/store-log.ts';

const logger = pino({ level: 'silent' });

function event(i: number, over: Partial<AuditEvent> = {}): AuditEvent {
  return { operation: 'device.create', principal: 'admin', source: '127.0.0.1:4000', args: { name: `d${i}`, token: 'secret' }, outcome: 'ok', scope: 'node', ...over };
}

function entry(i: number, timeMs = Date.parse('2026-12-02T08:00:00Z') + i * 1000): AuditEntry {
  return boundEntry(event(i), timeMs);
}

async function lines(dir: string, name: string): Promise<string[]> {
  return (await readFile(join(dir, name), 'utf8')).split('\n').filter((l) => l !== '');
}

async function writeLines(dir: string, name: string, ls: string[]): Promise<void> {
  await writeFile(join(dir, name), ls.map((l) => l + '\n').join(''));
}

/** A closed node trail of `n` records in a fresh directory. */
async function trailOf(t: Test, n: number): Promise<string> {
  const dir = await tempDir(t, 'xdevice-audit-');
  const trail = await AuditTrail.open(dir, 'node', logger);
  for (let i = 1; i <= n; i++) await trail.append(entry(i));
  await trail.close();
  return dir;
}

t.test('appends chain from the genesis hash, masked, and verify passes', async (t) => {
  const dir = await tempDir(t, 'xdevice-audit-');
  const trail = await AuditTrail.open(dir, 'node', logger);
  const first = await trail.append(entry(1));
  const second = await trail.append(entry(2));
  t.equal(first!.seq, 1);
  t.equal(first!.prevHash, GENESIS_HASH);
  t.equal(second!.prevHash, first!.hash);
  t.same(first!.args, { name: 'd1', token: '***' }, 'secret masked');
  t.same(trail.head, { seq: 2, hash: second!.hash, index: 0 });
  await trail.close();
  const stored = await lines(dir, trailFileName('node', 1));
  t.equal(stored.length, 2);
  t.match(JSON.parse(stored[0]!), { seq: 1, time: '2026-12-02T08:00:01.000Z', scope: 'node', principal: 'admin', operation: 'device.create', outcome: 'ok' });
  const report = await verifyTrail(dir, 'node');
  t.same({ ok: report.ok, records: report.records, files: report.files, head: report.head }, { ok: true, records: 2, files: 1, head: { seq: 2, hash: second!.hash } });
  // Reopened, the chain continues.
  const again = await AuditTrail.open(dir, 'node', logger);
  t.equal((await again.append(entry(3)))!.prevHash, second!.hash);
  await again.close();
  t.ok((await verifyTrail(dir, 'node')).ok);
});

t.test('rotation by size: the chain continues across files, and a removed file is found', async (t) => {
  const dir = await tempDir(t, 'xdevice-audit-');
  const trail = await AuditTrail.open(dir, 'cluster', logger);
  // Near the argument limit, so a few thousand records fill several files (queued at once: one batch).
  const big = 'x'.repeat(limits.auditArgsBytesMax - 100);
  const count = Math.ceil((2.5 * limits.auditFileBytesMax) / limits.auditArgsBytesMax);
  const writes: Promise<unknown>[] = [];
  for (let i = 1; i <= count; i++) writes.push(trail.append(boundEntry(event(i, { args: { big } }), i), i));
  await Promise.all(writes);
  await trail.close();
  const files = (await readdir(dir)).filter((f) => f.endsWith('.jsonl')).sort();
  t.same(files, [trailFileName('cluster', 1), trailFileName('cluster', 2), trailFileName('cluster', 3)]);
  for (const f of files) {
    t.ok((await stat(join(dir, f))).size <= limits.auditFileBytesMax, `${f} within the limit`);
  }
  const report = await verifyTrail(dir, 'cluster');
  t.same({ ok: report.ok, files: report.files, records: report.records }, { ok: true, files: 3, records: count });
  // The first record of file 2 links to the last of file 1.
  const last1 = JSON.parse((await lines(dir, files[0]!)).at(-1)!);
  const first2 = JSON.parse((await lines(dir, files[1]!))[0]!);
  t.equal(first2.prevHash, last1.hash);
  await unlink(join(dir, files[1]!));
  const broken = await verifyTrail(dir, 'cluster');
  t.equal(broken.ok, false);
  t.match(broken.problem, { file: join(dir, files[2]!), line: 0, what: /rotated file of the trail is missing/ });
});

t.test('verify names the first bad record: edit, removal, reorder, truncation, torn line', async (t) => {
  const name = trailFileName('node', 1);
  const cases: [string, (ls: string[]) => string[], number, RegExp][] = [
    ['a hand-edited field', (ls) => ls.map((l, i) => (i === 2 ? l.replace('"outcome":"ok"', '"outcome":"refused"') : l)), 3, /hash does not match its content: the record was edited/],
    ['an edited hash as well (the next record no longer links)', (ls) => ls.map((l, i) => (i === 2 ? l.replace('"principal":"admin"', '"principal":"other"') : l)), 3, /edited/],
    ['a removed line', (ls) => ls.filter((_, i) => i !== 2), 3, /record 4 follows record 2: 1 record\(s\) before it were removed/],
    ['reordered lines', (ls) => [ls[0]!, ls[2]!, ls[1]!, ...ls.slice(3)], 2, /record 3 follows record 1/],
    ['an added field', (ls) => ls.map((l, i) => (i === 1 ? l.replace('{', '{"extra":1,') : l)), 2, /unexpected field "extra"/],
    ['a line that is not JSON', (ls) => ls.map((l, i) => (i === 4 ? l.slice(0, 20) : l)), 5, /not JSON/],
  ];
  for (const [what, edit, line, msg] of cases) {
    const dir = await trailOf(t, 6);
    await writeLines(dir, name, edit(await lines(dir, name)));
    const r = await verifyTrail(dir, 'node');
    t.equal(r.ok, false, what);
    t.match(r.problem, { file: join(dir, name), line, what: msg }, what);
  }
  // The end cut off: the chain alone is fine, the head names a later record.
  const dir = await trailOf(t, 6);
  await writeLines(dir, name, (await lines(dir, name)).slice(0, 4));
  const cut = await verifyTrail(dir, 'node');
  t.match(cut.problem, { file: join(dir, name), what: /ends at record 4, its head names record 6: the last 2 record\(s\) were removed/ });
  // A torn last line.
  const torn = await trailOf(t, 3);
  await appendFile(join(torn, name), '{"seq":4,"ti');
  t.match((await verifyTrail(torn, 'node')).problem, { line: 4, what: /no newline/ });
});

t.test('start-up refuses a trail whose end was removed or edited, and repairs a torn append', async (t) => {
  const name = trailFileName('node', 1);
  const cut = await trailOf(t, 5);
  await writeLines(cut, name, (await lines(cut, name)).slice(0, 3));
  await t.rejects(AuditTrail.open(cut, 'node', logger), { code: 'XDEVICE_ERR_AUDIT', message: /says the trail ends at record 5, the files end at 3/ });
  const edited = await trailOf(t, 2);
  const ls = await lines(edited, name);
  const last = JSON.parse(ls[1]!);
  last.hash = 'f'.repeat(64);
  await writeLines(edited, name, [ls[0]!, JSON.stringify(last)]);
  await t.rejects(AuditTrail.open(edited, 'node', logger), { code: 'XDEVICE_ERR_AUDIT', message: /does not have the hash/ });
  const noHead = await trailOf(t, 2);
  await unlink(join(noHead, headFileName('node')));
  await t.rejects(AuditTrail.open(noHead, 'node', logger), { code: 'XDEVICE_ERR_AUDIT', message: /missing while the trail holds 2 records/ });

  const torn = await trailOf(t, 3);
  await appendFile(join(torn, name), '{"seq":4,"ti');
  const trail = await AuditTrail.open(torn, 'node', logger);
  t.equal(trail.head.seq, 3, 'the torn line is not a record');
  await trail.append(entry(4));
  await trail.close();
  t.ok((await verifyTrail(torn, 'node')).ok, 'repaired and continued');
  t.equal((await lines(torn, name)).length, 4);
});

t.test('the cluster trail writes an entry once: replays at or below its last index are skipped', async (t) => {
  const dir = await tempDir(t, 'xdevice-audit-');
  let trail = await AuditTrail.open(dir, 'cluster', logger);
  await trail.applyRecord(5, entry(1));
  await trail.applyRecord(9, entry(2));
  await trail.applyRecord(9, entry(2));
  await trail.applyRecord(7, entry(3));
  await trail.close();
  trail = await AuditTrail.open(dir, 'cluster', logger);
  t.same(trail.head.index, 9, 'the last index survives a restart');
  await trail.applyRecord(5, entry(1));
  await trail.applyRecord(9, entry(2));
  await trail.applyRecord(12, entry(4));
  await trail.close();
  const stored = (await lines(dir, trailFileName('cluster', 1))).map((l) => JSON.parse(l) as { seq: number; index: number });
  t.same(stored.map((r) => [r.seq, r.index]), [[1, 5], [2, 9], [3, 12]]);
  t.ok((await verifyTrail(dir, 'cluster')).ok);
});

t.test('the block store hands AUDIT_RECORD entries to the trail, once across a replay', async (t) => {
  const dir = await tempDir(t, 'xdevice-audit-');
  const id = (seq: number) => ({ clientId: 3, seq, firstUnacked: seq });
  const entries: Entry[] = [
    { term: 1, index: 1, type: EntryType.Normal, data: encodeCreateDevice(id(1), 'd', 1 << 20) },
    { term: 1, index: 2, type: EntryType.Normal, data: encodeAuditRecord(id(2), entry(1)) },
    { term: 1, index: 3, type: EntryType.Normal, data: encodeAuditRecord(id(3), entry(2)) },
  ];
  const open = async () => {
    const store = await BlockStore.open(dir, logger);
    const trails = await openTrails(dir, logger);
    store.auditTrail = trails.cluster;
    return { store, trails };
  };
  let { store, trails } = await open();
  const outcomes = await store.applyBatch(entries, () => {});
  t.ok(outcomes.every((o) => !o.error), 'no errors');
  await store.closeFiles();
  await trails.cluster.close();
  await trails.node.close();
  // A crash before any checkpoint: the whole log replays.
  ({ store, trails } = await open());
  await store.applyBatch(entries, () => {});
  await store.closeFiles();
  const listing = (await auditResponse(trails, new URLSearchParams({ scope: 'cluster' }))) as AuditListing;
  t.same(listing.records.map((r) => [r.seq, r.index, r.args.name]), [[1, 2, 'd1'], [2, 3, 'd2']]);
  await trails.cluster.close();
  await trails.node.close();
  // Without a trail (the simulator) the entry applies as a no-op.
  const bare = await BlockStore.open(join(dir, 'bare'), logger);
  t.ok((await bare.applyBatch(entries, () => {})).every((o) => !o.error));
  await bare.closeFiles();
});

t.test('the sink: node events appended, cluster events proposed, or kept here saying why', async (t) => {
  const dir = await tempDir(t, 'xdevice-audit-');
  const trails = await openTrails(dir, logger);
  let leader = true;
  let refuse: string | undefined;
  const proposed: AuditEntry[] = [];
  const log = new AuditLog(trails.cluster, trails.node, {
    leaderKnown: () => leader,
    propose: async (e) => {
      if (refuse) throw new Error(refuse);
      proposed.push(e);
      await trails.cluster.applyRecord(100 + proposed.length, e);
    },
  }, logger, () => Date.parse('2026-12-02T09:00:00Z'));
  log.record(event(1, { scope: 'node', operation: 'auth.failure', outcome: 'refused' }));
  log.record(event(2, { scope: 'cluster' }));
  leader = false;
  log.record(event(3, { scope: 'cluster' }));
  leader = true;
  refuse = 'timed out waiting for a quorum';
  log.record(event(4, { scope: 'cluster', reason: 'why not' }));
  // Never throws, whatever it is given.
  t.doesNotThrow(() => log.record({ ...event(5), args: undefined as never }));
  await new Promise((r) => setTimeout(r, 200));
  t.equal(proposed.length, 1);
  t.equal(proposed[0]!.timeMs, Date.parse('2026-12-02T09:00:00Z'), 'the proposer fixes the time');
  const node = (await auditResponse(trails, new URLSearchParams({ scope: 'node' }))) as AuditListing;
  t.same(node.records.map((r) => [r.operation, r.args.name ?? null, r.reason ?? null]), [
    ['auth.failure', 'd1', null],
    ['device.create', 'd3', 'not replicated to the cluster (no leader is known); recorded on this node only'],
    // Recorded at once, before the failed proposal's fallback.
    ['device.create', null, null],
    ['device.create', 'd4', 'why not; not replicated to the cluster (timed out waiting for a quorum); recorded on this node only'],
  ]);
  const all = (await auditResponse(trails, new URLSearchParams({ scope: 'all', limit: '2' }))) as AuditListing;
  t.equal(all.records.length, 2, 'limit');
  const since = (await auditResponse(trails, new URLSearchParams({ since: '2026-12-02T10:00:00Z' }))) as AuditListing;
  t.same(since.records, [], 'since after every record');
  const verified = (await auditResponse(trails, new URLSearchParams({ verify: 'true' }))) as AuditVerifyReport;
  t.equal(verified.ok, true);
  await t.rejects(auditResponse(trails, new URLSearchParams({ scope: 'everything' })), { code: 'XDEVICE_ERR_INVALID' });
  await t.rejects(auditResponse(trails, new URLSearchParams({ limit: '0' })), { code: 'XDEVICE_ERR_INVALID' });
  await t.rejects(auditResponse(trails, new URLSearchParams({ since: 'yesterday' })), { code: 'XDEVICE_ERR_INVALID' });
  await trails.cluster.close();
  await trails.node.close();
});

t.test('parseSince: ISO times and durations back from now', async (t) => {
  const now = Date.parse('2026-12-02T08:00:00Z');
  t.equal(parseSince('2026-12-01T00:00:00Z', now), Date.parse('2026-12-01T00:00:00Z'));
  t.equal(parseSince('2026-12-01', now), Date.parse('2026-12-01'));
  t.equal(parseSince('15m', now), now - 15 * 60_000);
  t.equal(parseSince('2h', now), now - 2 * 3_600_000);
  t.equal(parseSince('7d', now), now - 7 * 86_400_000);
  for (const bad of ['', 'yesterday', '5y', '-1h', '2026-13-45', '12:00']) t.throws(() => parseSince(bad, now), `"${bad}"`);
});
