// This replica's part in a verify (src/device/verify.ts): it tells the block
// store whether its files are exactly as of a verify's index, and proposes
// its result (checksums, or why it has none) as a VERIFY_RESULT entry once
// the local scan finished. Results travel through Raft rather than by one
// admin API asking the others: every node then holds every result (any
// node's admin API can answer, no admin addresses or tokens of other nodes
// are needed), and they survive restarts in checkpoints and snapshots.

import { encodeVerifyResult } from '../device/commands.ts';
import type { ScanOutcome, VerifyListener, VerifyRecord } from '../device/verify.ts';
import type { ReplicaCore as Replica } from './core.ts';

export class ReplicaVerifier implements VerifyListener {
  constructor(private readonly r: Replica) {
    r.store.verifies.listener = this;
  }

  /**
   * Entries this replica's WAL held when it started are replayed onto files
   * that may already hold later writes (a crash between checkpoints); after
   * a snapshot install the files are consistent only from readFloor on.
   * (Not covered: a leader that applied an entry before its own WAL write
   * was durable and then crashed; such an entry comes back from the new
   * leader onto files that may be ahead of it.)
   */
  inexactAt(index: number): string | undefined {
    const r = this.r;
    if (index <= r.walLastIndexAtStart) return `this node replayed index ${index} at start-up, onto device files that may hold later writes`;
    if (index < r.readFloor) return `this node installed a snapshot whose files are consistent only from index ${r.readFloor}`;
    return undefined;
  }

  result(v: VerifyRecord, outcome: ScanOutcome): void {
    const r = this.r;
    if (r.stopping || r.stopped || r.fatalError || r.removed) return;
    if ('why' in outcome) r.logger.warn({ verify: v.id, device: v.device, why: outcome.why }, 'verify: no checksums from this node');
    else r.logger.info({ verify: v.id, device: v.device, ranges: outcome.digests.length }, 'verify: checksums computed');
    const failed = (err: Error) => r.logger.warn({ verify: v.id, err: err.message }, 'verify: proposing this node’s result failed');
    try {
      r.propose((id) => encodeVerifyResult(id, v.id, r.nodeId, outcome)).catch(failed);
    } catch (err) {
      failed(err as Error);
    }
  }
}
