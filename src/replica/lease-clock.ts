// The lease of a leader (lease-reads) in real time. Raft's lease counts
// ticks, and ticks run late when the event loop is busy or the process was
// stopped (SIGSTOP, a long GC): Raft then thinks less time passed than did,
// and would keep reading on a lease its followers no longer honour. So the
// replica records when each tick began and also checks the lease against
// its own monotonic clock, from the start of the tick whose stamp a quorum
// echoed (a heartbeat stamped with it left no earlier).

import { limits } from '../limits.ts';

/**
 * The lease in this node's own clock: a follower keeps its promise for at
 * least electionTicks - 1 tick intervals after the heartbeat arrived,
 * shortened by the drift bound (limits.leaseClockDriftPercent).
 */
export const LEASE_MS = ((limits.electionTicks - 1) * limits.tickMs * (100 - limits.leaseClockDriftPercent)) / 100;

export class LeaseClock {
  /** Tick start times, a ring: a stamp older than the lease is useless anyway. */
  private readonly times: ({ tick: number; at: number } | undefined)[];

  constructor(
    private readonly leaseMs = LEASE_MS,
    kept = 2 * limits.electionTicks + 2,
  ) {
    this.times = new Array<{ tick: number; at: number } | undefined>(kept);
  }

  /** Raft's clock reached `tick` at `at` (call it before the tick, so stamps leave after `at`). */
  note(tick: number, at: number): void {
    this.times[tick % this.times.length] = { tick, at };
  }

  /** Whether a lease resting on stamp `since` still holds at `now`; false for a tick not recorded. */
  holds(since: number, now: number): boolean {
    const t = this.times[since % this.times.length];
    return t !== undefined && t.tick === since && now - t.at < this.leaseMs;
  }
}
