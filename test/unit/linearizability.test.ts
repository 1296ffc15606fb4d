// The nemesis checker must catch what it exists to catch: stale reads, lost
// writes, values nobody wrote — and must accept every legal interleaving.
import t from 'tap';
import { checkHistory, fromJsonLines, toJsonLines, type HistoryOp } from '../integration/nemesis/checker.ts';

const w = (client: number, block: number, value: string, call: number, ret: number, status: HistoryOp['status'] = 'ok'): HistoryOp => ({ client, op: 'write', block, value, call, return: ret, status });
const r = (client: number, block: number, value: string | null, call: number, ret: number, status: HistoryOp['status'] = 'ok'): HistoryOp => ({ client, op: 'read', block, value, call, return: ret, status });

t.test('sequential and concurrent legal histories pass', async (t) => {
  t.ok(checkHistory([w(1, 0, 'a', 0, 10), r(2, 0, 'a', 20, 30), w(1, 0, 'b', 40, 50), r(2, 0, 'b', 60, 70)]).ok);
  // two overlapping writes: readers may see them in either order, but consistently
  t.ok(checkHistory([w(1, 0, 'a', 0, 100), w(2, 0, 'b', 0, 100), r(3, 0, 'b', 10, 20), r(3, 0, 'a', 30, 40), r(4, 0, 'a', 110, 120)]).ok);
  // a read overlapping a write may see old or new
  t.ok(checkHistory([w(1, 0, 'a', 0, 10), w(1, 0, 'b', 20, 60), r(2, 0, 'a', 30, 40), r(3, 0, 'b', 50, 55)]).ok);
  t.ok(checkHistory([r(1, 5, null, 0, 1)]).ok, 'the initial value is readable');
});

t.test('a stale read is caught', async (t) => {
  const res = checkHistory([w(1, 0, 'a', 0, 10), w(1, 0, 'b', 20, 30), r(2, 0, 'a', 40, 50)]);
  t.notOk(res.ok);
  t.equal(res.violations.length, 1);
  t.equal(res.violations[0]!.block, 0);
  // a read that flips back to an older value after seeing the newer one
  const flip = checkHistory([w(1, 0, 'a', 0, 10), w(2, 0, 'b', 0, 10), r(3, 0, 'b', 20, 30), r(3, 0, 'a', 40, 50)]);
  t.notOk(flip.ok);
});

t.test('a lost acknowledged write is caught and named', async (t) => {
  const res = checkHistory([w(1, 0, 'a', 0, 10), r(2, 0, 'a', 15, 18), w(1, 0, 'b', 20, 30), r(2, 0, 'a', 100, 110), r(3, 0, 'a', 120, 130)]);
  t.notOk(res.ok);
  t.equal(res.violations[0]!.kind, 'lost-write');
  const never = checkHistory([w(1, 3, 'x', 0, 10), r(2, 3, null, 20, 30)]);
  t.equal(never.violations[0]?.kind, 'lost-write', 'reading the initial value after an acknowledged write');
});

t.test('a value nobody wrote is caught', async (t) => {
  const res = checkHistory([w(1, 0, 'a', 0, 10), r(2, 0, 'zz', 20, 30)]);
  t.notOk(res.ok);
  t.ok(res.violations.some((v) => v.kind === 'phantom-read'));
  const failed = checkHistory([w(1, 0, 'a', 0, 10, 'fail'), r(2, 0, 'a', 20, 30)]);
  t.ok(failed.violations.some((v) => v.kind === 'phantom-read'), 'a failed write must not become visible');
});

t.test('unknown outcomes may or may not have happened', async (t) => {
  t.ok(checkHistory([w(1, 0, 'a', 0, 10, 'unknown'), r(2, 0, 'a', 20, 30)]).ok, 'it happened');
  t.ok(checkHistory([w(1, 0, 'a', 0, 10, 'unknown'), r(2, 0, null, 20, 30)]).ok, 'it did not happen (yet)');
  t.ok(checkHistory([w(1, 0, 'a', 0, 10, 'unknown'), r(2, 0, null, 20, 30), r(2, 0, 'a', 40, 50)]).ok, 'it happened late');
  t.notOk(checkHistory([w(1, 0, 'a', 0, 10, 'unknown'), r(2, 0, 'a', 20, 30), r(2, 0, null, 40, 50)]).ok, 'but not un-happened');
  t.ok(checkHistory([w(1, 0, 'a', 0, 10), r(2, 0, 'zz', 20, 30, 'unknown')]).ok, 'an unknown read says nothing');
});

t.test('blocks are independent registers and the JSON-lines form round-trips', async (t) => {
  const h = [w(1, 0, 'a', 0, 10), w(1, 1, 'b', 0, 10), r(2, 0, 'a', 20, 30), r(2, 1, 'b', 20, 30)];
  const res = checkHistory(h);
  t.ok(res.ok);
  t.equal(res.blocks, 2);
  t.equal(res.opsChecked, 4);
  t.same(fromJsonLines(toJsonLines(h)), h);
});

t.test('a long random legal history (20,000 operations on one register) passes (seeded)', async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000);
  t.comment(`XDEVICE_SEED=${seed}`);
  let s = seed >>> 0;
  const rand = (n: number) => ((s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0) % n);
  // Simulate a linearizable register: each op takes effect at a random instant inside its interval.
  const history: HistoryOp[] = [];
  let value: string | null = null;
  let now = 0;
  const open: { op: HistoryOp; at: number }[] = [];
  for (let i = 0; i < 20_000; i++) {
    now += 1 + rand(5);
    const call = now;
    const at = call + rand(20);
    const ret = at + rand(20);
    const op = rand(2) === 0 ? w(rand(4), 0, `v${i}`, call, ret) : r(rand(4), 0, null, call, ret);
    open.push({ op, at });
  }
  open.sort((a, b) => a.at - b.at);
  for (const { op } of open) {
    if (op.op === 'write') value = op.value;
    else op.value = value;
    history.push(op);
  }
  const res = checkHistory(history);
  t.ok(res.ok, `seed ${seed}: ${res.violations.map((v) => v.message).join('; ')}`);
});

/**
 * A long nemesis-like history: 100,000 operations over 16 blocks from 8
 * clients, one in ten writes of unknown outcome (half never happen, half
 * happen, some after the client gave up on them), each op taking effect at a
 * random instant inside its interval. Seeded; XDEVICE_SEED replays it.
 */
function longHistory(seed: number): HistoryOp[] {
  let s = seed >>> 0;
  const rand = (n: number) => ((s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0) % n);
  const events: { op: HistoryOp; at: number }[] = [];
  let now = 0;
  for (let i = 0; i < 100_000; i++) {
    now += 1 + rand(3);
    const call = now;
    const at = call + rand(20);
    const ret = at + rand(20);
    const block = rand(16);
    if (rand(2) === 0) {
      const unknown = rand(10) === 0;
      const op = w(rand(8), block, `v${i}`, call, ret, unknown ? 'unknown' : 'ok');
      if (!unknown) events.push({ op, at });
      else if (rand(2) === 0) events.push({ op, at: at + rand(200) }); // landed, perhaps long after the timeout
      else events.push({ op, at: Infinity }); // never landed
    } else {
      events.push({ op: r(rand(8), block, null, call, ret), at });
    }
  }
  events.sort((a, b) => a.at - b.at);
  const value = new Map<number, string | null>();
  for (const { op, at } of events) {
    if (at === Infinity) continue;
    if (op.op === 'write') value.set(op.block, op.value);
    else op.value = value.get(op.block) ?? null;
  }
  return events.map((e) => e.op).sort((a, b) => a.call - b.call);
}

t.test('a long history (100,000 operations, unknown writes) passes, and one planted stale read in it is named (seeded)', async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000);
  t.comment(`XDEVICE_SEED=${seed}`);
  const history = longHistory(seed);
  t.ok(history.filter((o) => o.status === 'unknown').length > 1000, 'over a thousand writes of unknown outcome');
  const clean = checkHistory(history);
  t.ok(clean.ok, `seed ${seed}: the legal history passes: ${clean.violations.map((v) => v.message).join('; ')}`);
  t.equal(clean.opsChecked < history.length, true, 'unknown writes nobody read were dropped');

  // Plant: a read in the second half returns the value of an acknowledged
  // write that a later acknowledged write overwrote before the read began.
  const mid = history.length / 2;
  let planted: { read: HistoryOp; old: HistoryOp; newer: HistoryOp } | undefined;
  for (let i = mid; i < history.length && !planted; i++) {
    const rd = history[i]!;
    if (rd.op !== 'read' || rd.status !== 'ok') continue;
    const before = history.slice(0, i).filter((o) => o.block === rd.block && o.op === 'write' && o.status === 'ok' && o.return < rd.call);
    for (let k = before.length - 1; k > 0 && !planted; k--) {
      const newer = before[k]!;
      const old = before.slice(0, k).reverse().find((o) => o.return < newer.call);
      if (old) planted = { read: rd, old, newer };
    }
  }
  t.ok(planted, 'found a read to make stale');
  const { read, old, newer } = planted!;
  const original = read.value;
  read.value = old.value;
  const res = checkHistory(history);
  read.value = original;
  t.notOk(res.ok, 'the stale read is found');
  t.equal(res.violations.length, 1, 'one violation');
  const v = res.violations[0]!;
  t.equal(v.block, read.block, `the block is named: ${v.message}`);
  t.equal(v.kind, 'not-linearizable');
  t.ok(v.ops.includes(read), 'the stale read is among the operations named');
  t.ok(v.ops.includes(old), 'so is the write whose value it returned');
  const overwriter = v.ops.find((o) => o !== old && o.op === 'write');
  t.ok(overwriter && overwriter.status === 'ok' && overwriter.call > old.return && overwriter.return < read.call, `and an acknowledged write that overwrote it before the read (planted against ${newer.value})`);
  t.ok(v.ops.length <= 3, `${v.ops.length} operations named, not the whole block`);
  t.match(v.message, new RegExp(`read "${old.value}" by client ${read.client}`), 'the message names the read');
});
