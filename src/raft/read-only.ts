// ReadIndex requests the leader holds until a heartbeat round confirms it
// still leads (Raft thesis 6.4). Each request is keyed by its context bytes;
// a quorum acknowledging one request confirms every request queued before it.

import type { Message, NodeId } from './types.ts';

export interface ReadIndexStatus {
  /** The request as received (from '' or self: local). */
  req: Message;
  /** The leader's commit index when the request arrived. */
  index: number;
  acks: Set<NodeId>;
}

export interface ReadState {
  index: number;
  context: Buffer;
}

const keyOf = (ctx: Buffer): string => ctx.toString('latin1');

export class ReadOnly {
  private pending = new Map<string, ReadIndexStatus>();
  private queue: string[] = [];

  get size(): number {
    return this.queue.length;
  }

  has(ctx: Buffer): boolean {
    return this.pending.has(keyOf(ctx));
  }

  addRequest(index: number, m: Message): void {
    const k = keyOf(m.context!);
    if (this.pending.has(k)) return;
    this.pending.set(k, { req: m, index, acks: new Set() });
    this.queue.push(k);
  }

  /** Record an ack of ctx from `id`; returns the acks so far, or undefined if ctx is unknown. */
  recvAck(id: NodeId, ctx: Buffer): Set<NodeId> | undefined {
    const rs = this.pending.get(keyOf(ctx));
    if (!rs) return undefined;
    rs.acks.add(id);
    return rs.acks;
  }

  /** Dequeue ctx and every request before it. */
  advance(ctx: Buffer): ReadIndexStatus[] {
    const k = keyOf(ctx);
    const pos = this.queue.indexOf(k);
    if (pos < 0) return [];
    const keys = this.queue.splice(0, pos + 1);
    const out: ReadIndexStatus[] = [];
    for (const key of keys) {
      const rs = this.pending.get(key)!;
      this.pending.delete(key);
      out.push(rs);
    }
    return out;
  }

  lastPendingContext(): Buffer | undefined {
    if (this.queue.length === 0) return undefined;
    return this.pending.get(this.queue[this.queue.length - 1]!)!.req.context;
  }

  reset(): void {
    this.pending = new Map();
    this.queue = [];
  }
}
