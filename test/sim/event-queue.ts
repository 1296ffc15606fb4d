// A binary min-heap of timed events; ties break by insertion order so a
// simulation is a pure function of its seed. (at, seq) is a total order, so
// the order events come out in does not depend on the heap's layout.

export interface Timed {
  at: number;
  seq: number;
}

type WithoutSeq<T> = T extends unknown ? Omit<T, 'seq'> : never;

export class EventQueue<T extends Timed> {
  private readonly heap: T[] = [];
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  /** Queues `ev` (a fresh object the caller hands over: its `seq` is set here). */
  push(ev: WithoutSeq<T>): void {
    const e = ev as T;
    e.seq = this.seq++;
    const h = this.heap;
    // Sift up with a hole: parents move down until e's place is found.
    let i = h.length;
    h.push(e);
    while (i > 0) {
      const p = (i - 1) >> 1;
      const parent = h[p]!;
      if (!less(e, parent)) break;
      h[i] = parent;
      i = p;
    }
    h[i] = e;
  }

  pop(): T | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    const n = h.length;
    if (n > 0) {
      // Sift `last` down from the root with a hole.
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        let m = l;
        if (r < n && less(h[r]!, h[l]!)) m = r;
        if (!less(h[m]!, last)) break;
        h[i] = h[m]!;
        i = m;
      }
      h[i] = last;
    }
    return top;
  }

  peekTime(): number | undefined {
    return this.heap[0]?.at;
  }
}

function less(a: Timed, b: Timed): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}
