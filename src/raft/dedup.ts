// Exactly-once application of client requests (Raft thesis 6.3).
//
// A client (e.g. one NBD connection's forwarding session) numbers its
// requests 1, 2, 3, ... and may retry any of them, on any leader, any number
// of times. The runtime prefixes each proposal with a header
// {clientId, seq, firstUnacked}: firstUnacked is the lowest seq the client
// still waits an answer for, so everything below it is settled and can be
// forgotten. The applier keeps, per client, the seqs applied at or above that
// floor; a seq below the floor or already applied is a duplicate.
//
// This survives reordering that a "last seq per client" rule does not: seq 5
// accepted by a leader that then lost it, and seq 6 committed by the next
// leader, then 5 retried — 5 is applied (once), not dropped.
//
// The table is part of the replicated state: it must go into snapshots
// (export / Deduplicator.from) and is deterministic given the applied log.

import { assert } from '../errors.ts';
import { limits } from '../limits.ts';

const VERSION = 1;
/** version u8 | idLen u8 | id | seq u48 | firstUnacked u48 */
const FIXED_BYTES = 1 + 1 + 6 + 6;

export interface RequestHeader {
  clientId: string;
  seq: number;
  firstUnacked: number;
}

export function encodeRequest(h: RequestHeader, payload: Buffer): Buffer {
  const id = Buffer.from(h.clientId, 'utf8');
  assert(id.length > 0 && id.length <= 255, 'clientId must be 1..255 bytes');
  assert(Number.isSafeInteger(h.seq) && h.seq >= 1 && h.seq < 2 ** 48, 'seq out of range');
  assert(Number.isSafeInteger(h.firstUnacked) && h.firstUnacked >= 1 && h.firstUnacked <= h.seq, 'firstUnacked must be in [1, seq]');
  const b = Buffer.allocUnsafe(FIXED_BYTES + id.length + payload.length);
  let o = b.writeUInt8(VERSION, 0);
  o = b.writeUInt8(id.length, o);
  o += id.copy(b, o);
  o = b.writeUIntBE(h.seq, o, 6);
  o = b.writeUIntBE(h.firstUnacked, o, 6);
  payload.copy(b, o);
  return b;
}

/** Decodes a header; the payload is a view into data (no copy). Throws on malformed input. */
export function decodeRequest(data: Buffer): { header: RequestHeader; payload: Buffer } {
  if (data.length < FIXED_BYTES || data[0] !== VERSION) throw new Error('not a client request');
  const idLen = data[1]!;
  if (idLen === 0 || data.length < FIXED_BYTES + idLen) throw new Error('truncated client request');
  const clientId = data.toString('utf8', 2, 2 + idLen);
  let o = 2 + idLen;
  const seq = data.readUIntBE(o, 6);
  o += 6;
  const firstUnacked = data.readUIntBE(o, 6);
  o += 6;
  if (seq < 1 || firstUnacked < 1 || firstUnacked > seq) throw new Error('bad client request sequence numbers');
  return { header: { clientId, seq, firstUnacked }, payload: data.subarray(o) };
}

interface ClientWindow {
  /** Every seq below is settled. */
  floor: number;
  /** Seqs >= floor already applied. */
  applied: Set<number>;
}

export interface DedupOptions {
  clientsMax?: number;
  windowMax?: number;
}

export class Deduplicator {
  // Map iteration order is insertion order: re-inserting on use keeps the
  // least recently used client first, to be forgotten first.
  private clients = new Map<string, ClientWindow>();
  private readonly clientsMax: number;
  private readonly windowMax: number;

  constructor(options: DedupOptions = {}) {
    this.clientsMax = options.clientsMax ?? limits.raftDedupClientsMax;
    this.windowMax = options.windowMax ?? limits.raftDedupWindowMax;
  }

  /**
   * Called for each committed client request, in log order. Returns true if
   * the state machine should apply it, false for a duplicate.
   */
  shouldApply(h: RequestHeader): boolean {
    let w = this.clients.get(h.clientId);
    if (w) {
      this.clients.delete(h.clientId);
    } else {
      w = { floor: 1, applied: new Set() };
      if (this.clients.size >= this.clientsMax) {
        const oldest = this.clients.keys().next().value as string;
        this.clients.delete(oldest);
      }
    }
    this.clients.set(h.clientId, w);
    const fresh = h.seq >= w.floor && !w.applied.has(h.seq);
    if (fresh) w.applied.add(h.seq);
    if (h.firstUnacked > w.floor) {
      w.floor = h.firstUnacked;
      for (const s of w.applied) if (s < w.floor) w.applied.delete(s);
    }
    if (w.applied.size > this.windowMax) {
      // A client that never acknowledges: forget its oldest seqs.
      const sorted = [...w.applied].sort((a, b) => a - b);
      const drop = sorted.length - this.windowMax;
      w.floor = sorted[drop]!;
      for (let i = 0; i < drop; i++) w.applied.delete(sorted[i]!);
    }
    return fresh;
  }

  /** The table, for a snapshot. */
  export(): Array<{ clientId: string; floor: number; applied: number[] }> {
    return [...this.clients].map(([clientId, w]) => ({ clientId, floor: w.floor, applied: [...w.applied].sort((a, b) => a - b) }));
  }

  static from(table: ReturnType<Deduplicator['export']>, options: DedupOptions = {}): Deduplicator {
    const d = new Deduplicator(options);
    for (const c of table) d.clients.set(c.clientId, { floor: c.floor, applied: new Set(c.applied) });
    return d;
  }

  get size(): number {
    return this.clients.size;
  }
}
