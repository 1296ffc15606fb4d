// The AUDIT_RECORD command (op 13): what the proposer encodes decodes the
// same on every replica, and a peer's bytes are checked field by field
// (seeded fuzz: every mutation either fails with XDEVICE_ERR_BAD_COMMAND or
// decodes to an entry that can be recorded and encoded again).

import t from 'tap';
import { CommandDecodeError, CommandOp, decodeCommand, encodeAuditRecord, encodeCommand, type Command } from '../../src/device/commands.ts';
import { AUDIT_TIME_MS_MAX, boundEntry, entryProblem, type AuditEntry } from '../../src/audit/entry.ts';
import { limits } from '../../src/limits.ts';
import { makeRandom } from './helpers/nbd-random.ts';

const id = { clientId: 77, seq: 5, firstUnacked: 2 };
const entry: AuditEntry = {
  timeMs: Date.parse('2026-12-02T08:00:00.123Z'),
  principal: 'admin:ops-ü',
  source: '127.0.0.1:51234',
  operation: 'device.create',
  args: JSON.stringify({ name: 'disk', size: 1024, token: '***' }),
  outcome: 'refused',
  reason: 'not allowed',
};

t.test('an audit record round-trips', async (t) => {
  const c = decodeCommand(encodeAuditRecord(id, entry));
  t.same(c, { op: CommandOp.AuditRecord, ...id, entry });
  t.same(encodeCommand(c), encodeAuditRecord(id, entry), 'encodeCommand gives the same bytes');
  t.same(decodeCommand(encodeAuditRecord(id, { ...entry, reason: '', outcome: 'ok' })), { op: CommandOp.AuditRecord, ...id, entry: { ...entry, reason: '', outcome: 'ok' } });
});

t.test('the encoder refuses what a decoder would refuse (checked before proposing)', async (t) => {
  const bad: Partial<AuditEntry>[] = [
    { timeMs: -1 },
    { timeMs: AUDIT_TIME_MS_MAX + 1 },
    { principal: '' },
    { source: 'x'.repeat(256) },
    { operation: 'Device Create' },
    { args: '[1,2]' },
    { args: 'not json' },
    { args: JSON.stringify({ a: 'x'.repeat(limits.auditArgsBytesMax) }) },
    { reason: 'r'.repeat(limits.auditReasonBytesMax + 1) },
    { outcome: 'maybe' as AuditEntry['outcome'] },
  ];
  for (const b of bad) t.throws(() => encodeAuditRecord(id, { ...entry, ...b }), CommandDecodeError, JSON.stringify(b).slice(0, 60));
});

t.test('boundEntry makes any event recordable: masked, cut, never refused', async (t) => {
  const circular: Record<string, unknown> = {};
  circular.self = circular;
  const events = [
    { operation: 'key.rotate', principal: 'p', source: 's', args: { passphrase: 'hunter2', nested: { apiToken: 'x', keep: 1 } }, outcome: 'ok' as const, scope: 'cluster' as const },
    { operation: 'Bad Name!', principal: '', source: 'é'.repeat(300), args: { big: 'x'.repeat(10_000) }, outcome: 'ok' as const, reason: 'y'.repeat(5000), scope: 'node' as const },
    { operation: 'auth.failure', principal: 'p', source: 's', args: circular, outcome: 'refused' as const, scope: 'node' as const },
    { operation: 'nbd.attach', principal: 'p', source: 's', args: { n: 10n, b: Buffer.alloc(3) }, outcome: 'weird' as never, scope: 'node' as const },
  ];
  for (const ev of events) {
    const e = boundEntry(ev, Date.now());
    t.equal(entryProblem(e), undefined, `${ev.operation} recordable`);
    t.same(decodeCommand(encodeAuditRecord(id, e)), { op: CommandOp.AuditRecord, ...id, entry: e });
  }
  const masked = JSON.parse(boundEntry(events[0]!, 0).args) as Record<string, unknown>;
  t.same(masked, { passphrase: '***', nested: { apiToken: '***', keep: 1 } }, 'secrets masked');
  const cut = boundEntry(events[1]!, 0);
  t.equal(cut.operation, 'invalid.operation');
  t.match(cut.reason, /^operation given as "Bad Name!"/);
  t.same(JSON.parse(cut.args), { truncated: true, bytes: 10_010 });
  t.equal(cut.principal, 'unknown');
  t.ok(Buffer.byteLength(cut.source) <= 255 && cut.source.length === 127, 'cut on a character boundary');
});

t.test('a peer’s malformed bytes are refused, never half-decoded', async (t) => {
  const good = encodeAuditRecord(id, entry);
  // Offsets in the body: header 26, time 8, then str8 principal.
  const body = 26;
  const principalLength = good[body + 8]!;
  const cases: [string, Buffer][] = [
    ['truncated', good.subarray(0, good.length - 1)],
    ['trailing byte', Buffer.concat([good, Buffer.from([0])])],
    ['invalid UTF-8 principal', Buffer.from(good).fill(0xff, body + 9, body + 10)],
    ['empty principal', Buffer.concat([good.subarray(0, body + 8), Buffer.from([0]), good.subarray(body + 9 + principalLength)])],
  ];
  const outcomeAt = body + 8 + 1 + principalLength + 1 + Buffer.byteLength(entry.source) + 1 + Buffer.byteLength(entry.operation);
  cases.push(['unknown outcome', Buffer.from(good).fill(3, outcomeAt, outcomeAt + 1)]);
  const huge = Buffer.from(good);
  huge.writeUInt32LE(0xffff_ffff, outcomeAt + 1);
  cases.push(['args length beyond the limit', huge]);
  for (const [what, bytes] of cases) t.throws(() => decodeCommand(bytes), { code: 'XDEVICE_ERR_BAD_COMMAND' }, what);
});

t.test('seeded fuzz: mutated audit records decode to recordable entries (that encode back to the same bytes) or are refused', async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1e9);
  t.comment(`XDEVICE_SEED=${seed}`);
  const random = makeRandom(seed);
  const rnd = (n: number): number => random.int(0, n - 1);
  const base = [encodeAuditRecord(id, entry), encodeAuditRecord(id, { ...entry, reason: '', args: '{}' })];
  let decoded = 0;
  let refused = 0;
  for (let i = 0; i < 5000; i++) {
    const buf = Buffer.from(base[rnd(base.length)]!);
    let bytes: Buffer = buf;
    const kind = rnd(4);
    if (kind === 0) for (let k = 1 + rnd(4); k > 0; k--) buf[26 + rnd(buf.length - 26)] = rnd(256);
    else if (kind === 1) bytes = buf.subarray(0, rnd(buf.length + 1));
    else if (kind === 2) bytes = Buffer.concat([buf, Buffer.from(Array.from({ length: 1 + rnd(8) }, () => rnd(256)))]);
    else {
      bytes = Buffer.from(Array.from({ length: rnd(200) }, () => rnd(256)));
      if (bytes.length > 1) {
        bytes[0] = 1;
        bytes[1] = CommandOp.AuditRecord;
      }
    }
    let c: Command;
    try {
      c = decodeCommand(bytes);
    } catch (err) {
      if (!(err instanceof CommandDecodeError)) t.fail(`seed ${seed} case ${i}: ${(err as Error).name} ${(err as Error).message}`);
      refused++;
      continue;
    }
    decoded++;
    if (c.op !== CommandOp.AuditRecord) continue;
    if (entryProblem(c.entry) !== undefined) t.fail(`seed ${seed} case ${i}: decoded an unrecordable entry`);
    // Every field is determined by the bytes: what decodes encodes back to exactly them.
    if (!encodeCommand(c).equals(bytes)) t.fail(`seed ${seed} case ${i}: re-encoding differs`);
  }
  t.ok(refused > 0 && decoded > 0, `${decoded} decoded, ${refused} refused`);
});
