// This node's client session: every state-machine command it proposes (for
// any NBD connection or admin call) gets a request id {clientId, seq} and a
// waiter that settles when the entry applies HERE — that is the
// acknowledgement contract: committed (durable on a majority) and applied on
// the node that answers.
//
// A proposal can be lost (a leader dies before replicating it, a forwarded
// Prop is dropped): the session proposes it again with the same id after
// proposalRetryMs, and at once when the leader changes. The block store's
// dedup applies an id at most once, so retries are safe. A request that is
// not applied within requestTimeoutMs fails with EIO: the node has no quorum.

import { limits } from '../limits.ts';
import type { RequestId } from '../device/commands.ts';
import type { ApplyOutcome } from '../device/block-store.ts';
import type { Clock } from './env.ts';
import { XDeviceError } from '../errors.ts';

/** An errno-style error the NBD layer maps (EIO, ESHUTDOWN, ENOSPC, ...), or an XDEVICE_ERR_* for admin calls. */
export class RequestError extends XDeviceError {
  constructor(code: string, message: string) {
    super(code, message);
  }
}

interface Pending {
  seq: number;
  data: Buffer;
  resolve: () => void;
  reject: (err: Error) => void;
  deadline: number;
  lastProposedAt: number;
  /** Not handed to Raft yet (no leader when last tried): the next sweep tries. */
  unsent: boolean;
}

export class RequestSession {
  /** Random per process start: a restarted node never reuses an id it may have proposed before. */
  readonly clientId: number;
  private nextSeq = 1;
  private readonly pending = new Map<number, Pending>();

  /**
   * @param submit proposes (or forwards) the encoded command; returns false
   *   when it could not be handed to Raft now (no leader): the sweep retries.
   */
  constructor(
    private readonly submit: (data: Buffer) => boolean,
    private readonly clock: Clock,
    rand: (n: number) => number,
  ) {
    this.clientId = (1 + rand(2 ** 47 - 1)) * 64 + rand(64);
  }

  get size(): number {
    return this.pending.size;
  }

  /** The lowest seq still waiting (everything below is settled). */
  private firstUnacked(): number {
    for (const seq of this.pending.keys()) return seq; // Map keeps insertion (= seq) order
    return this.nextSeq;
  }

  /** Proposes the command `encode` builds for a fresh request id; resolves when it applied here. */
  propose(encode: (id: RequestId) => Buffer, now = this.clock.now()): Promise<void> {
    const seq = this.nextSeq++;
    const firstUnacked = this.pending.size === 0 ? seq : this.firstUnacked();
    const data = encode({ clientId: this.clientId, seq, firstUnacked });
    return new Promise<void>((resolve, reject) => {
      const p: Pending = { seq, data, resolve, reject, deadline: now + limits.requestTimeoutMs, lastProposedAt: now, unsent: false };
      this.pending.set(seq, p);
      p.unsent = !this.submit(data);
    });
  }

  /** An entry applied on this node: settle our waiter, if it is ours. */
  settle(o: ApplyOutcome): void {
    if (!o.request || o.request.clientId !== this.clientId) return;
    const p = this.pending.get(o.request.seq);
    if (!p) return;
    this.pending.delete(o.request.seq);
    if (o.error && !o.duplicate) p.reject(new RequestError(o.error.code, o.error.message));
    else p.resolve();
  }

  /** Proposes everything still waiting again (a new leader may never have seen it). */
  retryAll(now = this.clock.now()): void {
    for (const p of this.pending.values()) {
      p.lastProposedAt = now;
      p.unsent = !this.submit(p.data);
    }
  }

  /** Periodic: retry stale proposals, fail expired ones. */
  sweep(now = this.clock.now()): void {
    for (const p of this.pending.values()) {
      if (now >= p.deadline) {
        this.pending.delete(p.seq);
        p.reject(new RequestError('EIO', `not committed within ${limits.requestTimeoutMs} ms (no quorum?)`));
      } else if (p.unsent || now - p.lastProposedAt >= limits.proposalRetryMs) {
        p.lastProposedAt = now;
        p.unsent = !this.submit(p.data);
      }
    }
  }

  /** Fails every waiter (the node leaves service). */
  failAll(code: string, message: string): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) p.reject(new RequestError(code, message));
  }
}
