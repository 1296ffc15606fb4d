// A linearizability checker for per-block registers (Wing & Gong's search with
// Lowe's memoisation, as in porcupine and Knossos), written for our histories.
//
// Every block is an independent register (P-compositionality: a history is
// linearizable iff each block's sub-history is), so each block is checked on
// its own and the search stays small.
//
// Operation outcomes:
//   ok      - the call returned success: it took effect between call and return.
//   fail    - the call definitely did not take effect (refused before sending).
//   unknown - timed out / connection lost: a write may or may not have taken
//             effect, at any time after its call; an unknown read says nothing.

export type OpKind = 'write' | 'read';
export type OpStatus = 'ok' | 'fail' | 'unknown';

export interface HistoryOp {
  client: number | string;
  op: OpKind;
  block: number;
  /** Written value, or the value a read returned (null: the initial contents). */
  value: string | null;
  /** Nanoseconds (any monotonic clock shared by all clients of the history). */
  call: number;
  return: number;
  status: OpStatus;
}

export interface Violation {
  kind: 'not-linearizable' | 'phantom-read' | 'lost-write';
  block: number;
  message: string;
  ops: HistoryOp[];
}

export interface CheckResult {
  ok: boolean;
  blocks: number;
  opsChecked: number;
  violations: Violation[];
}

interface Event {
  op: number; // index into ops
  isCall: boolean;
  time: number;
  prev: Event | null;
  next: Event | null;
  match: Event | null; // call ↔ return
}

/** Where the search got furthest: the op it could not place, with the register's value and the op that wrote it. */
interface Stuck {
  deepest: number;
  op: number;
  state: string | null;
  /** Index of the write that produced `state` (-1: the initial value). */
  writer: number;
}

/** Searches for a linearization of one register's operations; on failure, where the longest linearizable prefix got stuck. */
function linearizeRegister(ops: HistoryOp[], initial: string | null, budget: { steps: number }): { ok: true } | ({ ok: false } & Stuck) {
  // Build the event list sorted by time; calls before returns at equal times
  // (an op that returns at t and one that is called at t may overlap).
  const events: Event[] = [];
  ops.forEach((o, i) => {
    const call: Event = { op: i, isCall: true, time: o.call, prev: null, next: null, match: null };
    const ret: Event = { op: i, isCall: false, time: o.return, prev: null, next: null, match: null };
    call.match = ret;
    ret.match = call;
    events.push(call, ret);
  });
  events.sort((a, b) => a.time - b.time || (a.isCall === b.isCall ? a.op - b.op : a.isCall ? -1 : 1));
  const head: Event = { op: -1, isCall: false, time: -Infinity, prev: null, next: null, match: null };
  let prev = head;
  for (const e of events) {
    prev.next = e;
    e.prev = prev;
    prev = e;
  }

  const lift = (call: Event) => {
    call.prev!.next = call.next;
    if (call.next) call.next.prev = call.prev;
    const ret = call.match!;
    ret.prev!.next = ret.next;
    if (ret.next) ret.next.prev = ret.prev;
  };
  const unlift = (call: Event) => {
    const ret = call.match!;
    ret.prev!.next = ret;
    if (ret.next) ret.next.prev = ret;
    call.prev!.next = call;
    if (call.next) call.next.prev = call;
  };

  // The cache key is the set of linearized ops plus the state. The set is
  // kept as a 64-bit Zobrist hash (two 32-bit halves XORed per op), O(1) per
  // step where a serialized bitset would make long histories quadratic.
  const n = ops.length;
  const zobristLo = new Uint32Array(n);
  const zobristHi = new Uint32Array(n);
  let seed = 0x9e3779b9;
  const next32 = () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let z = seed;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return (z ^ (z >>> 14)) >>> 0;
  };
  for (let i = 0; i < n; i++) {
    zobristLo[i] = next32();
    zobristHi[i] = next32();
  }
  let setLo = 0;
  let setHi = 0;
  const flip = (op: number) => {
    setLo = (setLo ^ zobristLo[op]!) >>> 0;
    setHi = (setHi ^ zobristHi[op]!) >>> 0;
  };
  const cache = new Set<string>();
  const key = (state: string | null) => `${setLo}:${setHi}:${state === null ? '\u0000' : state}`;
  const stack: { call: Event; prevState: string | null; prevWriter: number }[] = [];
  let state: string | null = initial;
  let writer = -1;
  let entry = head.next;
  let stuck: Stuck | undefined;
  const fail = (): { ok: false } & Stuck => ({ ok: false, ...(stuck ?? { deepest: 0, op: ops.length > 0 ? 0 : -1, state: initial, writer: -1 }) });

  while (head.next !== null) {
    if (--budget.steps < 0) throw new Error('linearizability search budget exhausted');
    if (entry === null) {
      // nothing more can be tried at this depth: backtrack
      if (stack.length === 0) return fail();
      const top = stack.pop()!;
      state = top.prevState;
      writer = top.prevWriter;
      flip(top.call.op);
      unlift(top.call);
      entry = top.call.next;
      continue;
    }
    if (entry.isCall) {
      const o = ops[entry.op]!;
      let nextState: string | null;
      let legal: boolean;
      if (o.op === 'write') {
        nextState = o.value;
        legal = true;
      } else {
        nextState = state;
        legal = o.value === state;
      }
      if (legal) {
        flip(entry.op);
        const k = key(nextState);
        if (!cache.has(k)) {
          cache.add(k);
          stack.push({ call: entry, prevState: state, prevWriter: writer });
          state = nextState;
          if (o.op === 'write') writer = entry.op;
          lift(entry);
          entry = head.next;
          continue;
        }
        flip(entry.op);
      }
      entry = entry.next;
    } else {
      // A return: the op it belongs to must have been linearized before this point.
      if (!stuck || stack.length > stuck.deepest) stuck = { deepest: stack.length, op: entry.op, state, writer };
      if (stack.length === 0) return fail();
      const top = stack.pop()!;
      state = top.prevState;
      writer = top.prevWriter;
      flip(top.call.op);
      unlift(top.call);
      entry = top.call.next;
    }
  }
  return { ok: true };
}

export interface CheckOptions {
  /** Value of every block before the history (null = never written). */
  initial?: string | null;
  /** Upper bound on search steps per block. */
  stepsPerBlockMax?: number;
}

export function checkHistory(history: HistoryOp[], options: CheckOptions = {}): CheckResult {
  const initial = options.initial ?? null;
  const byBlock = new Map<number, HistoryOp[]>();
  for (const o of history) {
    let list = byBlock.get(o.block);
    if (!list) byBlock.set(o.block, (list = []));
    list.push(o);
  }
  const violations: Violation[] = [];
  let opsChecked = 0;
  for (const [block, all] of [...byBlock].sort((a, b) => a[0] - b[0])) {
    const written = new Set<string | null>([initial]);
    for (const o of all) if (o.op === 'write' && o.status !== 'fail') written.add(o.value);
    // Reads of values nobody wrote: corruption, reported on their own.
    for (const o of all) {
      if (o.op === 'read' && o.status === 'ok' && !written.has(o.value)) {
        violations.push({ kind: 'phantom-read', block, message: `block ${block}: read returned "${o.value}", which no write wrote`, ops: [o] });
      }
    }
    const ops = reduce(all, initial);
    opsChecked += ops.length;
    let result: ReturnType<typeof linearizeRegister>;
    try {
      result = linearizeRegister(ops, initial, { steps: options.stepsPerBlockMax ?? 5_000_000 });
    } catch (e) {
      throw new Error(`block ${block} (${ops.length} operations): ${(e as Error).message}`);
    }
    if (!result.ok) violations.push(describeViolation(block, ops, initial, result));
  }
  return { ok: violations.length === 0, blocks: byBlock.size, opsChecked, violations };
}

/**
 * The operations the search needs. Failed ops did nothing; unknown reads say
 * nothing; an unknown write may take effect any time after its call, which
 * left open (until MAX_SAFE_INTEGER) makes long histories unsearchable. Every
 * written value is unique (the workload writes each value once), and that
 * makes two exact reductions:
 *   - an unknown write no read observed is dropped: a linearization without
 *     it extends to one with it placed last, and one with it stays legal
 *     without it (no read sits between it and the next write);
 *   - an unknown write that was read ends at its first reader's return: only
 *     it can precede a read of its value, so every linearization places it
 *     before that read returned.
 * A value written twice (a workload that breaks the premise) keeps the open
 * interval, so the result stays exact either way.
 */
function reduce(all: HistoryOp[], initial: string | null): HistoryOp[] {
  const writes = new Map<string | null, number>();
  for (const o of all) if (o.op === 'write' && o.status !== 'fail') writes.set(o.value, (writes.get(o.value) ?? 0) + 1);
  const firstRead = new Map<string | null, number>();
  for (const o of all) {
    if (o.op !== 'read' || o.status !== 'ok') continue;
    const seen = firstRead.get(o.value);
    if (seen === undefined || o.return < seen) firstRead.set(o.value, o.return);
  }
  const out: HistoryOp[] = [];
  for (const o of all) {
    if (o.status === 'fail' || (o.op === 'read' && o.status === 'unknown')) continue;
    if (o.status !== 'unknown') {
      out.push(o);
      continue;
    }
    const unique = writes.get(o.value) === 1 && o.value !== initial;
    const seen = firstRead.get(o.value);
    if (!unique) out.push({ ...o, return: Number.MAX_SAFE_INTEGER });
    else if (seen !== undefined) out.push({ ...o, return: Math.max(o.call, seen) });
  }
  return out;
}

function describeOp(o: HistoryOp | undefined): string {
  if (!o) return 'the initial value';
  const ret = o.status === 'unknown' ? `unknown outcome, called at ${o.call}` : `${o.call}..${o.return}`;
  return `${o.op} "${o.value}" by client ${o.client} (${ret})`;
}

/** Names the operation the search could not place and the writes around it. */
function describeViolation(block: number, ops: HistoryOp[], initial: string | null, stuck: Stuck): Violation {
  const op = ops[stuck.op];
  const holder = stuck.writer >= 0 ? ops[stuck.writer] : undefined;
  let message = `block ${block}: no linearization of ${ops.length} operations; the longest linearizable prefix (${stuck.deepest}) ends with the register at "${stuck.state}" from ${describeOp(holder)}`;
  if (!op) return { kind: classify(ops, initial), block, message, ops: holder ? [holder] : [] };
  message += `, and ${describeOp(op)} cannot follow it`;
  const named: HistoryOp[] = [];
  if (op.op === 'read') {
    const source = ops.find((o) => o.op === 'write' && o.value === op.value);
    message += ` (its value is from ${describeOp(source)}`;
    if (source) named.push(source);
    // The proof of a stale read: an acknowledged write after the source, done before the read began.
    const sourceReturn = source ? source.return : -Infinity;
    let overwriter: HistoryOp | undefined;
    for (const o of ops) {
      if (o.op === 'write' && o.status === 'ok' && o !== source && o.call > sourceReturn && o.return < op.call && (!overwriter || o.return > overwriter.return)) overwriter = o;
    }
    if (overwriter) {
      message += `, which ${describeOp(overwriter)} overwrote before the read was called`;
      named.push(overwriter);
    }
    message += ')';
    if (!overwriter && holder && holder !== source) named.push(holder);
  } else if (holder) {
    named.push(holder);
  }
  named.push(op);
  return { kind: classify(ops, initial), block, message, ops: named };
}

/**
 * Tells a lost write (every read called after an acknowledged write returned
 * sees a value older than that write: written by a write that returned before
 * it was called, or the initial value) from other anomalies. Sorting the
 * reads by call makes it O(n log n) on long histories.
 */
function classify(ops: HistoryOp[], initial: string | null): Violation['kind'] {
  const writes = ops.filter((o) => o.op === 'write' && o.status === 'ok');
  const reads = ops.filter((o) => o.op === 'read' && o.status === 'ok').sort((a, b) => a.call - b.call);
  if (reads.length === 0) return 'not-linearizable';
  const returnOf = new Map<string | null, number>();
  for (const w of writes) returnOf.set(w.value, w.return);
  // When the write of each read's value returned (-Infinity: the initial value; +Infinity: not an acknowledged write).
  const sourceReturn = (r: HistoryOp) => (r.value === initial ? -Infinity : (returnOf.get(r.value) ?? Infinity));
  const suffixMax = new Float64Array(reads.length + 1);
  suffixMax[reads.length] = -Infinity;
  for (let i = reads.length - 1; i >= 0; i--) suffixMax[i] = Math.max(suffixMax[i + 1]!, sourceReturn(reads[i]!));
  for (const w of writes) {
    let lo = 0;
    let hi = reads.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (reads[mid]!.call > w.return) hi = mid;
      else lo = mid + 1;
    }
    if (lo === reads.length) continue;
    // Every later read's value was written before w was even called (so none of them is w's).
    if (suffixMax[lo]! < w.call) return 'lost-write';
  }
  return 'not-linearizable';
}

/** The JSON-lines form of a history, readable by other checkers. */
export function toJsonLines(history: HistoryOp[]): string {
  return history.map((o) => JSON.stringify({ client: o.client, op: o.op, block: o.block, value: o.value, call: o.call, return: o.return, status: o.status })).join('\n') + '\n';
}

export function fromJsonLines(text: string): HistoryOp[] {
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as HistoryOp);
}
