// What arrives from peers, before Raft sees it: only members of the current
// configuration speak to Raft (src/replica/peer-input.ts decides the
// exceptions), a Snap message only once its files are durably staged, and a
// leader below its space reserve does not propose forwarded writes.

import { limits } from '../limits.ts';
import { Role } from '../raft/rawnode.ts';
import { MessageType, type Message } from '../raft/types.ts';
import { COMMAND_VERSION, CommandOp } from '../device/commands.ts';
import type { SnapshotFrame } from './env.ts';
import { admitPeerMessage, isLeaderMessage } from './peer-input.ts';
import type { ReplicaCore as Replica } from './core.ts';

export class PeerInbox {
  private lastDropLogAt = -Infinity;
  /** When this replica last stepped a leader's message (App, Heartbeat, Snap). */
  private leaderContactAt: number;

  constructor(private readonly r: Replica) {
    this.leaderContactAt = r.clock.now();
  }

  /**
   * A message from a peer link (authenticated, terms and indexes already
   * bounded by the decoder). Only members of the current configuration speak
   * to Raft: anything else is dropped and counted, so a stranger's vote,
   * proposal or ConfChange never reaches it.
   */
  onPeerMessage(m: Message): void {
    if (this.r.fatalError || this.r.stopped) return;
    if (!this.r.raw.isMember(m.from)) {
      if (this.r.store.wasRemoved(m.from)) {
        // Removed while cut off, it never applied its own removal: tell it.
        this.r.transport.tellRemoved(m.from);
        return;
      }
      const st = this.r.raw.basicStatus();
      const now = this.r.clock.now();
      const leaderlessLong = st.role !== Role.Leader && now - this.leaderContactAt >= limits.peerLeaderlessGraceMs;
      if (!admitPeerMessage(m, (id) => this.r.raw.isMember(id), this.r.raw.hasConfiguration(), { term: st.term, lead: st.lead, leaderlessLong })) {
        this.r.peerMessagesDropped++;
        if (now - this.lastDropLogAt > 1000) {
          this.lastDropLogAt = now;
          this.r.logger.warn({ from: m.from, type: MessageType[m.type], dropped: this.r.peerMessagesDropped }, 'dropped a message from a peer outside the configuration');
        }
        return;
      }
    }
    if (isLeaderMessage(m)) this.leaderContactAt = this.r.clock.now();
    this.onMessage(m);
  }

  private onMessage(m: Message): void {
    if (m.type === MessageType.Snap) {
      // Only once the streamed files are durably staged may Raft take the snapshot.
      const staged = this.r.receiver.staged;
      if (!staged || staged.metadata.index !== m.snapshot?.index || staged.from !== m.from) {
        this.r.logger.warn({ from: m.from, index: m.snapshot?.index }, 'snapshot message without staged data; dropped');
        return;
      }
      // Raft may now hand the snapshot back to be installed: keep the staging
      // from being replaced by another stream until that is settled.
      this.r.receiver.pinned = true;
      this.r.raw.step(m);
      this.r.processReady();
      if (!this.r.installing) this.r.receiver.pinned = false;
      return;
    }
    if (m.type === MessageType.Prop && this.r.raw.basicStatus().role === Role.Leader && this.r.host.space.wouldBreachReserve(0)) {
      // A follower's own check missed it (its disk is not this one): writes
      // would fail at apply here, so they are not proposed; the follower's
      // request times out (EIO) rather than stopping this replica.
      const kept = m.entries.filter((e) => !allocates(e.data));
      if (kept.length !== m.entries.length) {
        this.r.logger.warn({ from: m.from, dropped: m.entries.length - kept.length }, 'forwarded writes not proposed: data filesystem below its reserve');
        if (kept.length === 0) return;
        m = { ...m, entries: kept };
      }
    }
    this.r.raw.step(m);
    // Right away rather than next turn: an App starts the follower's append,
    // an AppResp may commit writes someone waits for. (Proposals, in
    // contrast, are gathered for a turn: they share one Ready.)
    this.r.processReady();
  }

  /** A snapshot frame from a peer link. */
  onFrame(from: string, f: SnapshotFrame): void {
    if (this.r.fatalError || this.r.stopped) return;
    if (f.kind === 'result') this.r.sender.onResult(from, f);
    else this.r.receiver.onFrame(from, f);
  }

  /** The link to a peer failed: Raft probes it instead of pipelining. */
  onUnreachable(peer: string): void {
    if (this.r.raw.isMember(peer)) this.r.raw.reportUnreachable(peer);
  }
}

/** Does this entry payload write data (and so take space in a device file)? */
function allocates(data: Buffer): boolean {
  return data.length > 1 && data[0] === COMMAND_VERSION && (data[1] === CommandOp.Write || data[1] === CommandOp.CompressedWrite || data[1] === CommandOp.WriteZeroes);
}
