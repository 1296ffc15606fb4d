// Housekeeping of one replica: checkpoints of the block store, compaction of
// the WAL behind them (keeping what followers and snapshot streams still
// need), the configuration history compaction needs, and installing a
// snapshot a leader streamed here.

import { limits } from '../limits.ts';
import { Role } from '../raft/rawnode.ts';
import type { ConfState, Entry, SnapshotMetadata } from '../raft/types.ts';
import { ReplicaError } from './errors.ts';
import type { ReplicaCore as Replica } from './core.ts';

export type Tuning = Pick<typeof limits, 'checkpointEntries' | 'checkpointBytes' | 'walRetainEntriesMax' | 'walRetainBytesMax'>;

interface ConfPoint {
  index: number;
  confState: ConfState;
}

export class Housekeeping {
  private readonly confHistory: ConfPoint[];
  private readonly snapshotHolds = new Map<string, number>();
  private bytesSinceCheckpoint = 0;
  private checkpointing: Promise<void> | undefined;
  /** Checkpoints written (statistics). */
  checkpoints = 0;
  /** WAL compactions done (statistics). */
  compactions = 0;

  constructor(
    private readonly r: Replica,
    readonly tuning: Tuning,
  ) {
    const meta = r.log.snapshotMetadata();
    this.confHistory = [{ index: meta.index, confState: meta.confState }];
  }

  /** A configuration took effect at `index` (compaction records the one in force at its cut). */
  noteConf(index: number, confState: ConfState): void {
    this.confHistory.push({ index, confState });
  }

  noteApplied(entries: Entry[]): void {
    for (const e of entries) this.bytesSinceCheckpoint += e.data.length;
  }

  /**
   * The WAL must keep entries after `index` while a snapshot stream to `peer`
   * runs and until the peer has caught up past it (undefined: released).
   */
  hold(peer: string, index: number | undefined): void {
    if (index === undefined) this.snapshotHolds.delete(peer);
    else this.snapshotHolds.set(peer, index);
  }

  maybeCheckpoint(force = false): Promise<void> | undefined {
    if (this.checkpointing) return this.checkpointing;
    const { store } = this.r;
    const due = store.appliedIndex - store.checkpointIndex >= this.tuning.checkpointEntries || this.bytesSinceCheckpoint >= this.tuning.checkpointBytes;
    if (!force && !due) return undefined;
    // Called between batches (from apply or on the apply chain): the capture is consistent.
    const state = store.captureState();
    this.bytesSinceCheckpoint = 0;
    const started = this.r.clock.now();
    this.checkpointing = store
      .checkpoint(state)
      .then(() => {
        this.checkpoints++;
        return this.compact();
      })
      .then(() => this.r.logger.debug({ index: state.appliedIndex, ms: Math.round(this.r.clock.now() - started) }, 'checkpoint written'))
      .catch((err: Error) => this.r.fail(err))
      .finally(() => {
        this.checkpointing = undefined;
      });
    return this.checkpointing;
  }

  /** At a clean stop: the checkpoint running, then one more at the applied index. */
  async finalCheckpoint(): Promise<void> {
    await this.checkpointing;
    await this.maybeCheckpoint(true)?.catch(() => undefined);
  }

  /** Drops WAL entries up to the checkpoint, keeping what followers and snapshot streams still need. */
  private async compact(): Promise<void> {
    const { log, raw, sender } = this.r;
    let target = Math.min(this.r.store.checkpointIndex, this.r.raftAppliedIndex);
    const st = raw.status();
    for (const [peer, held] of [...this.snapshotHolds]) {
      // A peer that got a snapshot keeps the log after it until it has caught up past it.
      const pr = st.progress[peer];
      if (!sender.isSending(peer) && (st.role !== Role.Leader || !pr || pr.match >= held)) this.snapshotHolds.delete(peer);
      else if (log.payloadBytesBetween(held, target) > this.tuning.walRetainBytesMax) {
        // Held too long: the log behind it would outgrow memory. The peer will need a fresh snapshot.
        this.snapshotHolds.delete(peer);
      } else target = Math.min(target, held);
    }
    if (st.role === Role.Leader) {
      const promoting = this.r.membership.promotingLearner;
      const pp = promoting !== undefined ? st.progress[promoting] : undefined;
      // A learner being promoted keeps its log whatever its lag (bounded in bytes, as a snapshot hold).
      if (pp && pp.match > 0 && log.payloadBytesBetween(pp.match, target) <= this.tuning.walRetainBytesMax) target = Math.min(target, pp.match);
      for (const [id, pr] of Object.entries(st.progress)) {
        if (id === this.r.nodeId) continue;
        // A follower close behind keeps its entries; one far behind (in entries
        // or in bytes: the log is held in memory) will get a snapshot.
        if (pr.match >= target - this.tuning.walRetainEntriesMax && log.payloadBytesBetween(pr.match, target) <= this.tuning.walRetainBytesMax) target = Math.min(target, pr.match);
      }
    }
    const floor = log.snapshotMetadata().index;
    if (target <= floor) return;
    const term = safeTerm(this.r, target);
    if (term === undefined) return;
    await log.compact({ index: target, term, confState: this.confStateAt(target) });
    this.compactions++;
    while (this.confHistory.length > 1 && this.confHistory[1]!.index <= target) this.confHistory.shift();
  }

  confStateAt(index: number): ConfState {
    let cs = this.confHistory[0]!.confState;
    for (const p of this.confHistory) if (p.index <= index) cs = p.confState;
    return cs;
  }

  /** Raft hands back a snapshot it accepted: the staged files replace the state, then the WAL is reset. */
  async installStaged(meta: SnapshotMetadata): Promise<void> {
    const r = this.r;
    const staged = r.receiver.take();
    if (!staged || staged.metadata.index !== meta.index) throw new ReplicaError('XDEVICE_ERR_ASSERTION', `Raft installs snapshot ${meta.index} but none is staged`);
    r.logger.info({ index: meta.index, stateIndex: staged.state.appliedIndex, consistentIndex: staged.consistentIndex }, 'installing snapshot');
    await r.store.closeFiles();
    await r.host.snapshots.installFiles(meta);
    await r.store.reload(staged.state);
    await r.log.applySnapshot(meta);
    await r.host.snapshots.finishInstall();
    r.processedIndex = Math.max(meta.index, r.store.appliedIndex);
    r.raftAppliedIndex = meta.index;
    r.readFloor = staged.consistentIndex;
    r.receiver.pinned = false;
    this.confHistory.splice(0, this.confHistory.length, { index: meta.index, confState: meta.confState });
    if (!r.transport.clusterId && staged.state.clusterId) {
      r.transport.clusterId = staged.state.clusterId;
      await r.host.snapshots.recordClusterId(staged.state.clusterId);
    }
    for (const [id, address] of Object.entries(staged.state.members)) if (id !== r.nodeId) r.transport.addPeer(id, address);
    r.reads.onApplied(r.processedIndex);
  }
}

export function safeTerm(r: Replica, index: number): number | undefined {
  try {
    return r.log.term(index);
  } catch {
    return undefined;
  }
}
