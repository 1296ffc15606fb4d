// The leader's view of one peer's log (etcd's tracker/progress.go).
//
//   Probe      we do not know where the peer's log ends: send one App at a
//              time and back off on rejection;
//   Replicate  the peer is caught up: send optimistically, pipelined,
//              bounded by the in-flight window;
//   Snapshot   the peer needs entries we compacted: wait until the state
//              machine has streamed the snapshot and reported it.

import { Inflights } from './inflights.ts';

export enum ProgressState {
  Probe = 'probe',
  Replicate = 'replicate',
  Snapshot = 'snapshot',
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = ProgressState.Probe;
  /** In Snapshot state, the index of the snapshot being sent. */
  pendingSnapshot = 0;
  /** Heard from since the last check-quorum round. */
  recentActive = false;
  /**
   * Probe: an App is outstanding, wait for its answer or the next heartbeat.
   * Replicate: the in-flight window is full. A heartbeat answer clears it so
   * an empty App goes out: if every message in the window was lost, its
   * ack or rejection is what unblocks replication.
   */
  msgAppFlowPaused = false;
  inflights: Inflights;
  isLearner: boolean;
  /** An App was acknowledged since the last heartbeat answer (the window is moving). */
  ackedSinceHeartbeat = false;
  /**
   * Replicate: everything below this index was sent again by the last
   * go-back, so a gap reported for an App before it may be an answer to the
   * first copy and does not trigger another one (see Raft.handleAppGap).
   */
  resentBelow = 0;
  /** match at the last heartbeat answer: unchanged at the next one means the window is stuck. */
  matchAtHeartbeat = 0;
  /** Lease reads: the latest heartbeat stamp (leader's tick) this peer echoed in this term; 0: none. */
  leaseStamp = 0;

  constructor(next: number, inflights: Inflights, isLearner: boolean) {
    this.next = next;
    this.inflights = inflights;
    this.isLearner = isLearner;
  }

  private resetState(state: ProgressState): void {
    this.msgAppFlowPaused = false;
    this.pendingSnapshot = 0;
    this.resentBelow = 0;
    this.state = state;
    this.inflights.reset();
  }

  becomeProbe(): void {
    // Coming back from a snapshot: the peer has at least the snapshot now.
    if (this.state === ProgressState.Snapshot) {
      const pending = this.pendingSnapshot;
      this.resetState(ProgressState.Probe);
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState(ProgressState.Probe);
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.resetState(ProgressState.Replicate);
    this.next = this.match + 1;
  }

  /**
   * Replicate: the peer reported a gap after `match`. Resend from there,
   * still pipelined; what was in flight counts as lost.
   */
  goBack(): void {
    this.resentBelow = this.next;
    this.next = this.match + 1;
    this.msgAppFlowPaused = false;
    this.inflights.reset();
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.resetState(ProgressState.Snapshot);
    this.pendingSnapshot = snapshotIndex;
  }

  /** Account for an App carrying `entries` entries ending before `nextIndex`, of `bytes` payload. */
  sentEntries(entries: number, bytes: number, lastIndex: number): void {
    if (this.state === ProgressState.Replicate) {
      if (entries > 0) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex, bytes);
      }
      this.msgAppFlowPaused = this.inflights.full();
    } else if (this.state === ProgressState.Probe) {
      // One probe at a time; an empty App (commit notice) does not count.
      if (entries > 0) this.msgAppFlowPaused = true;
    }
  }

  /** The peer acknowledged its log up to n. Returns whether match moved. */
  maybeUpdate(n: number): boolean {
    if (n + 1 > this.next) this.next = n + 1;
    if (this.match < n) {
      this.match = n;
      this.msgAppFlowPaused = false;
      return true;
    }
    return false;
  }

  /**
   * The peer rejected an App whose previous index was `rejected`; `matchHint`
   * is where its log may match. Returns false if the rejection is stale.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === ProgressState.Replicate) {
      // Stale: the peer already acknowledged beyond it.
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    // Probe: only the answer to the probe outstanding counts.
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.msgAppFlowPaused = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.Probe:
        return this.msgAppFlowPaused;
      case ProgressState.Replicate:
        return this.msgAppFlowPaused;
      case ProgressState.Snapshot:
        return true;
    }
  }
}
