// Linearizable reads on any node (Raft thesis 6.4): before reading its local
// files, a node learns the leader's commit index at a moment after the read
// arrived (ReadIndex: the leader confirms with a heartbeat quorum that it
// still leads), then waits until it has applied that far.
//
// Two reads need no round (Replica.readBarrier, then only waitApplied()):
// the sole voter's, and, with lease-reads, the leader's while its lease
// holds (Raft.leaseRead). A follower's reads always take one round: it asks
// the leader (ReadIndex, forwarded) and serves locally once applied there.
//
// Reads arriving in one event-loop turn share one ReadIndex round. A round
// lost to a leader change is asked again after readIndexRetryMs; a read
// that cannot get an answer within requestTimeoutMs fails with EIO — a node
// cut off from the majority never serves a stale read.

import { limits } from '../limits.ts';
import { RequestError } from './requests.ts';
import type { Clock } from './env.ts';

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
  deadline: number;
}

interface Round {
  waiters: Waiter[];
  askedAt: number;
  /** Raft could not take the request (no leader): the next sweep asks again. */
  unasked: boolean;
}

export class ReadGate {
  private batch: Waiter[] = [];
  private flushScheduled = false;
  private readonly rounds = new Map<string, Round>();
  /** Waiters with a read index, waiting for apply (appended in index order per round). */
  private applyWaiters: { index: number; waiter: Waiter }[] = [];
  private counter = 0;

  /**
   * @param ask asks Raft for a read index with this context; returns false
   *   when it cannot now (no leader known): the sweep asks again.
   * @param applied this node's applied index.
   */
  constructor(
    private readonly nodeId: string,
    private readonly ask: (context: Buffer) => boolean,
    private readonly applied: () => number,
    private readonly clock: Clock,
  ) {}

  get pending(): number {
    let n = this.batch.length + this.applyWaiters.length;
    for (const r of this.rounds.values()) n += r.waiters.length;
    return n;
  }

  /** Resolves when a read may be served from the local files. */
  wait(now = this.clock.now()): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.batch.push({ resolve, reject, deadline: now + limits.requestTimeoutMs });
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        this.clock.defer(() => {
          this.flushScheduled = false;
          this.flush();
        });
      }
    });
  }

  /** Resolves once this node has applied `index` (the caller knows it is a valid read index). */
  waitApplied(index: number, now = this.clock.now()): Promise<void> {
    if (this.applied() >= index) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.applyWaiters.push({ index, waiter: { resolve, reject, deadline: now + limits.requestTimeoutMs } });
    });
  }

  private flush(now = this.clock.now()): void {
    if (this.batch.length === 0) return;
    const waiters = this.batch;
    this.batch = [];
    this.startRound(waiters, now);
  }

  private startRound(waiters: Waiter[], now: number): void {
    // Unique across the cluster: the leader keys pending requests by context.
    const context = Buffer.from(`${this.nodeId}\0${++this.counter}`);
    const round: Round = { waiters, askedAt: now, unasked: false };
    this.rounds.set(context.toString('latin1'), round);
    round.unasked = !this.ask(context);
  }

  /** Raft answered a round: its reads wait for apply to reach `index`. */
  onReadState(context: Buffer, index: number): void {
    const key = context.toString('latin1');
    const round = this.rounds.get(key);
    if (!round) return;
    this.rounds.delete(key);
    if (this.applied() >= index) {
      for (const w of round.waiters) w.resolve();
      return;
    }
    for (const waiter of round.waiters) this.applyWaiters.push({ index, waiter });
  }

  /** Apply progressed. */
  onApplied(applied: number): void {
    if (this.applyWaiters.length === 0) return;
    const still: { index: number; waiter: Waiter }[] = [];
    for (const w of this.applyWaiters) {
      if (w.index <= applied) w.waiter.resolve();
      else still.push(w);
    }
    this.applyWaiters = still;
  }

  /** Periodic: ask lost rounds again, fail reads past their deadline. */
  sweep(now = this.clock.now()): void {
    for (const [key, round] of [...this.rounds]) {
      const live = round.waiters.filter((w) => {
        if (now < w.deadline) return true;
        w.reject(new RequestError('EIO', `no read index within ${limits.requestTimeoutMs} ms (no quorum?)`));
        return false;
      });
      if (live.length === 0) {
        this.rounds.delete(key);
        continue;
      }
      round.waiters = live;
      if (round.unasked || now - round.askedAt >= limits.readIndexRetryMs) {
        this.rounds.delete(key);
        this.startRound(live, now);
      }
    }
    this.applyWaiters = this.applyWaiters.filter((w) => {
      if (now < w.waiter.deadline) return true;
      w.waiter.reject(new RequestError('EIO', `not applied within ${limits.requestTimeoutMs} ms`));
      return false;
    });
  }

  failAll(code: string, message: string): void {
    const all: Waiter[] = [...this.batch, ...this.applyWaiters.map((w) => w.waiter)];
    for (const r of this.rounds.values()) all.push(...r.waiters);
    this.batch = [];
    this.applyWaiters = [];
    this.rounds.clear();
    for (const w of all) w.reject(new RequestError(code, message));
  }
}
