// Exactly-once application of client requests (Raft thesis 6.3).
//
// A client (one node's request session) numbers its requests 1, 2, 3, ... and
// may retry any of them, through any leader, any number of times. Each
// request carries the lowest seq its client still waits for (firstUnacked):
// everything below is settled and forgotten. Per client the table keeps the
// seqs applied at or above that floor; a seq below the floor or already
// applied is a duplicate.
//
// This survives reordering that "last seq per client" does not: seq 5
// accepted by a leader that then lost it, seq 6 committed by the next leader,
// then 5 retried — 5 is applied once, not dropped.
//
// The table is replicated state: it changes only as entries apply, in log
// order, so every node holds the same one; it goes into checkpoints and
// snapshots. Clients are forgotten least recently used first beyond
// raftDedupClientsMax, and a client's window is capped at raftDedupWindowMax.

import { limits } from '../limits.ts';
import type { RequestId } from './commands.ts';

interface ClientWindow {
  floor: number;
  applied: Set<number>;
}

/** Client ids are numbers on the wire of src/device/commands.ts; the Raft simulator uses strings. */
export interface DedupClientState<K extends number | string = number> {
  clientId: K;
  floor: number;
  applied: number[];
}

export class RequestDedup<K extends number | string = number> {
  // Map iteration is insertion order: re-inserting on use keeps the least
  // recently used client first, to be forgotten first.
  private clients = new Map<K, ClientWindow>();

  constructor(
    private readonly clientsMax = limits.raftDedupClientsMax,
    private readonly windowMax = limits.raftDedupWindowMax,
  ) {}

  /** Whether a request is new (and records it as applied). Call once per committed request, in log order. */
  admit(id: Pick<RequestId, 'seq' | 'firstUnacked'> & { clientId: K }): boolean {
    let w = this.clients.get(id.clientId);
    if (w) {
      this.clients.delete(id.clientId);
    } else {
      w = { floor: 1, applied: new Set() };
      if (this.clients.size >= this.clientsMax) this.clients.delete(this.clients.keys().next().value as K);
    }
    this.clients.set(id.clientId, w);
    const fresh = id.seq >= w.floor && !w.applied.has(id.seq);
    if (fresh) w.applied.add(id.seq);
    if (id.firstUnacked > w.floor) {
      w.floor = id.firstUnacked;
      for (const s of w.applied) if (s < w.floor) w.applied.delete(s);
    }
    if (w.applied.size > this.windowMax) {
      // A client that never settles: forget its oldest seqs.
      const sorted = [...w.applied].sort((a, b) => a - b);
      const drop = sorted.length - this.windowMax;
      w.floor = sorted[drop]!;
      for (let i = 0; i < drop; i++) w.applied.delete(sorted[i]!);
    }
    return fresh;
  }

  export(): DedupClientState<K>[] {
    return [...this.clients].map(([clientId, w]) => ({ clientId, floor: w.floor, applied: [...w.applied].sort((a, b) => a - b) }));
  }

  static from<K extends number | string = number>(table: readonly DedupClientState<K>[], clientsMax?: number, windowMax?: number): RequestDedup<K> {
    const d = new RequestDedup<K>(clientsMax, windowMax);
    for (const c of table) d.clients.set(c.clientId, { floor: c.floor, applied: new Set(c.applied) });
    return d;
  }

  get size(): number {
    return this.clients.size;
  }
}
