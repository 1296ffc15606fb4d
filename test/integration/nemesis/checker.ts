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

/** Searches for a linearization of one register's operations; on failure, how long the longest linearizable prefix was. */
function linearizeRegister(ops: HistoryOp[], initial: string | null, budget: { steps: number }): { ok: true } | { ok: false; deepest: number } {
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
  const stack: { call: Event; prevState: string | null }[] = [];
  let state: string | null = initial;
  let entry = head.next;
  let deepest = 0;

  while (head.next !== null) {
    if (--budget.steps < 0) throw new Error('linearizability search budget exhausted');
    if (entry === null) {
      // nothing more can be tried at this depth: backtrack
      if (stack.length === 0) return { ok: false, deepest };
      const top = stack.pop()!;
      state = top.prevState;
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
          stack.push({ call: entry, prevState: state });
          state = nextState;
          lift(entry);
          if (stack.length > deepest) deepest = stack.length;
          entry = head.next;
          continue;
        }
        flip(entry.op);
      }
      entry = entry.next;
    } else {
      // A return: the op it belongs to must have been linearized before this point.
      if (stack.length === 0) return { ok: false, deepest };
      const top = stack.pop()!;
      state = top.prevState;
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
    // Failed ops did nothing; unknown reads say nothing; unknown writes may land any time after their call.
    const ops = all
      .filter((o) => o.status !== 'fail' && !(o.op === 'read' && o.status === 'unknown'))
      .map((o) => (o.status === 'unknown' ? { ...o, return: Number.MAX_SAFE_INTEGER } : o));
    opsChecked += ops.length;
    const result = linearizeRegister(ops, initial, { steps: options.stepsPerBlockMax ?? 5_000_000 });
    if (!result.ok) {
      violations.push({
        kind: classify(ops, initial),
        block,
        message: `block ${block}: no linearization of ${ops.length} operations; longest linearizable prefix has ${result.deepest}`,
        ops: ops.slice(0, 50),
      });
    }
  }
  return { ok: violations.length === 0, blocks: byBlock.size, opsChecked, violations };
}

/** Tells a lost write (a read, after an acknowledged write returned, sees an older value and never the write) from other anomalies. */
function classify(ops: HistoryOp[], initial: string | null): Violation['kind'] {
  const writes = ops.filter((o) => o.op === 'write' && o.status === 'ok');
  const reads = ops.filter((o) => o.op === 'read' && o.status === 'ok');
  for (const w of writes) {
    const later = reads.filter((r) => r.call > w.return);
    if (later.length === 0) continue;
    // every later read returns a value written before w was even called (or the initial value)
    const older = new Set<string | null>([initial, ...writes.filter((x) => x.return < w.call).map((x) => x.value)]);
    if (later.every((r) => older.has(r.value) && r.value !== w.value)) return 'lost-write';
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
