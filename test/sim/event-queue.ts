// A binary min-heap of timed events; ties break by insertion order so a
// simulation is a pure function of its seed.

export interface Timed {
  at: number;
  seq: number;
}

type WithoutSeq<T> = T extends unknown ? Omit<T, 'seq'> : never;

export class EventQueue<T extends Timed> {
  private heap: T[] = [];
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  /** Queues `ev` (a fresh object the caller hands over: its `seq` is set here). */
  push(ev: WithoutSeq<T>): void {
    const e = ev as T;
    e.seq = this.seq++;
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!less(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  pop(): T | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l]!, h[m]!)) m = l;
        if (r < h.length && less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }

  peekTime(): number | undefined {
    return this.heap[0]?.at;
  }
}

const less = (a: Timed, b: Timed) => a.at < b.at || (a.at === b.at && a.seq < b.seq);
