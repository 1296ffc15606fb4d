// This member tells the cluster where it serves clients: once its admin API
// and NBD server listen, it proposes a PUBLISH_MEMBER command (its admin and
// NBD addresses, version and start time) through the normal proposal path,
// like an etcd member publishing its client URLs. Every replica applies it
// into the replicated member table (src/device/member-table.ts), so
// `members list` on any member shows every member's addresses.
//
// The publisher compares what it wants published with what the table holds
// (as applied here) and proposes again while they differ: after a restart on
// other ports, after a proposal lost to a leader change or a timeout, and
// after this node was removed and added back (removal drops its record). It
// proposes only while a leader is known and this node is in the
// configuration (a joiner waits until it is added), one proposal at a time.

import { limits } from '../limits.ts';
import { type Publication, publishProblem } from '../device/member-table.ts';
import { encodePublishMember } from '../device/commands.ts';
import { ReplicaError } from './errors.ts';
import type { ReplicaCore as Replica } from './core.ts';

/** How often the publisher compares the table with what it wants published. */
const CHECK_INTERVAL_MS = 500;

export class MemberPublisher {
  private want: Publication | undefined;
  private running = false;
  /** Proposals made (tests and logs). */
  proposals = 0;

  constructor(private readonly r: Replica) {}

  /**
   * What this member serves from now on. Checked here against everything
   * apply checks (DESIGN contract 8); the proposal follows in the background.
   */
  publish(addresses: { adminAddress: string; nbdAddress: string; version: string }): void {
    const p: Publication = { nodeId: this.r.nodeId, ...addresses, startedAt: Math.max(0, Math.floor(this.r.startedAt)) };
    const problem = publishProblem(p);
    if (problem) throw new ReplicaError('XDEVICE_ERR_INVALID', `cannot publish this member's addresses: ${problem}`);
    this.want = p;
    if (this.running) return;
    this.running = true;
    void this.loop().finally(() => {
      this.running = false;
    });
  }

  /** Whether the member table, as applied here, holds what this member wants published. */
  published(): boolean {
    const want = this.want;
    if (!want) return true;
    const held = this.r.store.publishedMember(want.nodeId);
    return (
      held !== undefined &&
      held.adminAddress === want.adminAddress &&
      held.nbdAddress === want.nbdAddress &&
      held.version === want.version &&
      held.startedAt === want.startedAt
    );
  }

  private done(): boolean {
    const r = this.r;
    return r.stopping || r.stopped || r.removed || r.fatalError !== undefined;
  }

  private async loop(): Promise<void> {
    const r = this.r;
    let lastFailure = '';
    while (!this.done()) {
      const want = this.want!;
      const ready = r.raw.basicStatus().lead !== '' && r.raw.isMember(r.nodeId);
      if (ready && !this.published()) {
        this.proposals++;
        try {
          await r.propose((id) => encodePublishMember(id, want));
          if (this.published()) {
            r.logger.info({ admin: want.adminAddress, nbd: want.nbdAddress, version: want.version }, 'published client addresses to the cluster');
            lastFailure = '';
          }
        } catch (err) {
          if (this.done()) return;
          // No quorum for now, or a leader change: the next round tries again.
          const why = (err as Error).message;
          if (why !== lastFailure) r.logger.warn({ err: why }, 'publishing client addresses failed; retrying');
          lastFailure = why;
        }
      }
      await r.sleep(Math.min(CHECK_INTERVAL_MS, limits.proposalRetryMs));
    }
  }
}
