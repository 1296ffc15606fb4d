// Hostile peers for the simulator (SimOptions.hostile): what reaches a node
// besides its cluster's own messages, and the cluster layer's rules that
// decide what of it Raft may see (src/replica/peer-input.ts, the same code
// the node runs; the one-live-link rule of src/cluster/transport.ts).
//
//   garbage   copies of real messages with out-of-range terms and indexes
//             (2^53-1, raftTermMax+1, ...): a protocol error, the link drops them
//   strangers votes, proposals and ConfChanges from an id outside the
//             configuration: dropped before Raft
//   a twin    a second process with a founding member's id and a fresh
//             (amnesiac) log, campaigning; its links are refused while the
//             member's own link is live, and nobody dials it (peers dial the
//             member's address), so it never receives a vote request
//
// Its draws come from a generator of its own, so the seed's other faults are
// the same as without it.
import { bootstrap } from '../../src/raft/bootstrap.ts';
import { ConfChangeTransition, ConfChangeType, encodeConfChange } from '../../src/raft/confchange.ts';
import { MemoryStorage } from '../../src/raft/memory-storage.ts';
import { RawNode } from '../../src/raft/rawnode.ts';
import { EntryType, MessageType, message, type Message, type NodeId } from '../../src/raft/types.ts';
import { admitPeerMessage, isLeaderMessage, peerMessageProblem } from '../../src/replica/peer-input.ts';
import { limits } from '../../src/limits.ts';
import { Prng } from './prng.ts';

export interface HostileOptions {
  /** Planted bug: hand everything to Raft unchecked (the test that this suite can fail). */
  skipChecks?: boolean;
}

export interface HostileStats {
  garbageSent: number;
  strangerSent: number;
  protocolErrors: number;
  strangersDropped: number;
  twinMessages: number;
  twinRefused: number;
}

/** peerLeaderlessGraceMs in simulator time: 20 election timeouts (10 ticks of 10 units). */
const LEADERLESS_GRACE = 2000;

const HUGE = [Number.MAX_SAFE_INTEGER, limits.raftTermMax + 1, 2 ** 50];

export class HostilePeers {
  readonly stats: HostileStats = { garbageSent: 0, strangerSent: 0, protocolErrors: 0, strangersDropped: 0, twinMessages: 0, twinRefused: 0 };
  private readonly rng: Prng;
  private readonly garbageRate: number;
  /** The id a twin process claims, and its Raft (no storage delays: it never persists anything that matters). */
  readonly twinOf: NodeId | undefined;
  private twin: { raw: RawNode; storage: MemoryStorage } | undefined;

  constructor(
    seed: number,
    founders: NodeId[],
    private readonly options: HostileOptions,
  ) {
    this.rng = new Prng(seed ^ 0x4f57_11e5);
    this.garbageRate = this.rng.pick([0.005, 0.02, 0.05]);
    this.twinOf = founders.length >= 3 && this.rng.chance(0.7) ? this.rng.pick(founders) : undefined;
  }

  /** Extra messages that arrive somewhere when `m` is sent: garbage copies, strangers. */
  onSend(m: Message, members: NodeId[]): Message[] {
    const out: Message[] = [];
    if (this.rng.chance(this.garbageRate)) {
      this.stats.garbageSent++;
      const g: Message = { ...m, entries: m.entries.map((e) => ({ ...e })) };
      const big = this.rng.pick(HUGE);
      switch (this.rng.int(5)) {
        case 0:
          g.term = big;
          break;
        case 1:
          g.commit = big;
          break;
        case 2:
          g.index = big;
          g.logTerm = big;
          break;
        case 3:
          if (g.entries.length > 0) g.entries[0]!.term = big;
          else g.term = big;
          break;
        default:
          g.rejectHint = big;
      }
      out.push(g);
    }
    if (this.rng.chance(this.garbageRate)) {
      this.stats.strangerSent++;
      const to = this.rng.pick(members);
      const term = m.term + this.rng.range(1, 5);
      out.push(
        this.rng.pick([
          message({ type: MessageType.Vote, from: 'ghost', to, term, logTerm: term, index: 1_000_000 }),
          message({ type: MessageType.PreVote, from: 'ghost', to, term, logTerm: term, index: 1_000_000 }),
          message({ type: MessageType.Heartbeat, from: 'ghost', to, term, commit: 0 }),
          message({
            type: MessageType.Prop,
            from: 'ghost',
            to,
            entries: [{ term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange({ transition: ConfChangeTransition.Auto, changes: [{ type: ConfChangeType.AddNode, nodeId: 'ghost' }] }) }],
          }),
          message({ type: MessageType.App, from: 'ghost', to, term, logTerm: 0, index: 0, commit: 0, entries: [{ term, index: 1, type: EntryType.Normal, data: Buffer.from('ghost') }] }),
        ]),
      );
    }
    return out;
  }

  /** Sim time each node last stepped a leader's message (for the node's peerLeaderlessGraceMs, in sim units). */
  private readonly leaderContactAt = new Map<NodeId, number>();

  /** The cluster layer's verdict on a message about to be stepped by a node with these members. */
  admit(m: Message, isMember: (id: string) => boolean, configured: boolean, receiver: { id: NodeId; leading: boolean; lead: NodeId; term: number; now: number }): boolean {
    if (this.options.skipChecks) return true;
    if (peerMessageProblem(m)) {
      this.stats.protocolErrors++;
      return false;
    }
    if (!this.leaderContactAt.has(receiver.id)) this.leaderContactAt.set(receiver.id, receiver.now);
    const leaderlessLong = !receiver.leading && receiver.now - this.leaderContactAt.get(receiver.id)! >= LEADERLESS_GRACE;
    if (!admitPeerMessage(m, isMember, configured, { term: receiver.term, lead: receiver.lead, leaderlessLong })) {
      this.stats.strangersDropped++;
      return false;
    }
    if (isLeaderMessage(m)) this.leaderContactAt.set(receiver.id, receiver.now);
    return true;
  }

  /** Starts the twin (a fresh process with the founding configuration). */
  startTwin(founders: NodeId[]): void {
    if (!this.twinOf || this.twin) return;
    const bs = bootstrap(founders);
    const storage = new MemoryStorage(bs.confState);
    storage.append(bs.entries);
    storage.setHardState(bs.hardState);
    const rng = this.rng.fork();
    const raw = new RawNode({ id: this.twinOf, storage, rand: (k) => rng.int(k), electionTicks: 10, heartbeatTicks: 1, applied: bs.applied });
    this.twin = { raw, storage };
  }

  /**
   * One tick of the twin; returns the messages that get through: none while
   * the member holding its id is connected (`memberAlive`).
   */
  tickTwin(memberAlive: boolean): Message[] {
    const t = this.twin;
    if (!t) return [];
    t.raw.tick();
    const out: Message[] = [];
    while (t.raw.hasReady()) {
      const rd = t.raw.ready();
      if (rd.entries.length > 0) t.storage.append(rd.entries);
      if (rd.hardState) t.storage.setHardState(rd.hardState);
      for (const m of [...rd.messages, ...rd.messagesAfterPersist]) {
        this.stats.twinMessages++;
        if (memberAlive) this.stats.twinRefused++;
        else out.push(m);
      }
      t.raw.advance(rd);
    }
    return out;
  }
}
