// The node's AuditSink: what every part records through (src/audit/event.ts).
//
// A `node` event is appended to this node's trail. A `cluster` event is
// proposed as an AUDIT_RECORD command (its time fixed here, by the
// proposer), forwarded to the leader like any proposal, and written by
// every replica as it applies (src/device/block-store.ts → trail.ts). If no
// leader is known, or the proposal fails, the event goes to this node's
// trail instead, saying it was not replicated: nothing is lost silently.
//
// record() never throws and never waits. What it has started and not yet
// finished is bounded (limits.auditPendingMax): beyond that, events are
// counted, and the count is recorded once there is room again.

import type { Logger } from 'pino';
import { limits } from '../limits.ts';
import type { AuditEvent, AuditSink } from './event.ts';
import { boundEntry, cutUtf8, type AuditEntry } from './entry.ts';
import type { AuditTrail } from './trail.ts';

/** How cluster events reach Raft (the replica); absent without Raft, where this node is the cluster. */
export interface AuditProposer {
  leaderKnown(): boolean;
  /** Resolves once the entry applied on this node; rejects if it was not committed (timeout, shutdown). */
  propose(entry: AuditEntry): Promise<void>;
}

export class AuditLog implements AuditSink {
  private pending = 0;
  private dropped = 0;

  constructor(
    readonly cluster: AuditTrail,
    readonly node: AuditTrail,
    private readonly proposer: AuditProposer | undefined,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  record(event: AuditEvent): void {
    try {
      if (this.pending >= limits.auditPendingMax) {
        if (this.dropped++ === 0) this.logger.error({ pending: this.pending }, 'audit: too many events being recorded; counting the ones dropped');
        return;
      }
      const entry = boundEntry(event, this.now());
      if (event.scope === 'node') this.track(this.node.append(entry), 'node');
      else if (!this.proposer) this.track(this.cluster.append(entry), 'cluster');
      else if (!this.proposer.leaderKnown()) this.unreplicated(entry, 'no leader is known');
      else this.track(this.proposer.propose(entry).catch((err: Error) => this.unreplicated(entry, err.message)), 'cluster');
    } catch (err) {
      this.logger.error({ err: (err as Error).message, operation: event.operation }, 'audit: event not recorded');
    }
  }

  /** A cluster event that could not go through Raft, kept on this node with why. */
  private unreplicated(entry: AuditEntry, why: string): void {
    const note = `not replicated to the cluster (${why}); recorded on this node only`;
    const reason = cutUtf8(entry.reason ? `${entry.reason}; ${note}` : note, limits.auditReasonBytesMax);
    this.track(this.node.append({ ...entry, reason }), 'node');
  }

  private track(p: Promise<unknown>, scope: string): void {
    this.pending++;
    p.catch((err: Error) => this.logger.error({ err: err.message, scope }, 'audit: event not recorded')).finally(() => {
      this.pending--;
      if (this.dropped > 0 && this.pending < limits.auditPendingMax / 2) {
        const count = this.dropped;
        this.dropped = 0;
        this.record({ operation: 'audit.dropped', principal: 'system', source: 'local', args: { count }, outcome: 'failed', reason: `${count} event(s) were not recorded: too many at once`, scope: 'node' });
      }
    });
  }
}
