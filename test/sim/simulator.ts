// A deterministic cluster simulator in the spirit of TigerBeetle's VOPR: whole
// Raft clusters under a fault schedule drawn from one seed, with invariants
// checked after every event. Same seed, same run, on any machine.
//
// Model:
//   time      integer units; each node ticks every TICK units
//   network   per message: drop, duplicate, delay (hence reorder);
//             partitions that isolate one node or split the cluster
//   disk      a Ready is written after a random delay, Readys of one node in
//             order; a crash loses every write not completed; a failed write
//             crashes the node (fail closed), sometimes after persisting the
//             entries but not the hard state (a torn write, which our
//             contract allows: entries first)
//   nodes     crash and restart from their durable storage; the state
//             machine restarts from its snapshot and replays the log
//   clients   propose numbered requests through whichever node they think
//             leads, retry on errors and timeouts; reads ask for a ReadIndex
//   operator  membership changes (add learner, promote, remove, joint swap),
//             leadership transfers, log compaction (snapshots for laggards)

import { bootstrap } from '../../src/raft/bootstrap.ts';
import type { TestingBugs } from '../../src/raft/config.ts';
import { ConfChangeTransition, ConfChangeType, confChanges, decodeConfChange, type ConfChange } from '../../src/raft/confchange.ts';
import { decodeRequest, encodeRequest } from '../../src/raft/dedup.ts';
import { RequestDedup, type DedupClientState } from '../../src/device/request-dedup.ts';
import { MemoryStorage } from '../../src/raft/memory-storage.ts';
import { RawNode, raftForTesting, type Ready } from '../../src/raft/rawnode.ts';
import { Role } from '../../src/raft/raft.ts';
import { EntryType, MessageType, type ConfState, type Entry, type Message, type NodeId } from '../../src/raft/types.ts';
import { EventQueue, type Timed } from './event-queue.ts';
import { Prng } from './prng.ts';
import { HostilePeers, type HostileOptions, type HostileStats } from './hostile-peers.ts';
import { limits } from '../../src/limits.ts';

export interface SimOptions {
  seed: number;
  /** Founding voters: 1, 3 or 5. Default: drawn from the seed. */
  nodes?: number;
  /** Time units with faults, then time units healed. */
  faultyTime?: number;
  healTime?: number;
  testingBugs?: TestingBugs;
  /** Write a trace of every event to this function. */
  trace?: (line: string) => void;
  /** Hostile peers (garbage terms, strangers, a twin id) filtered by the cluster layer's rules: test/sim/hostile-peers.ts. */
  hostile?: HostileOptions;
}

export interface SimResult {
  seed: number;
  ok: boolean;
  error?: string;
  stats: SimStats;
  hostile?: HostileStats;
}

export interface SimStats {
  nodes: number;
  events: number;
  messages: number;
  dropped: number;
  duplicated: number;
  partitions: number;
  crashes: number;
  diskFailures: number;
  tornWrites: number;
  elections: number;
  proposals: number;
  acked: number;
  reads: number;
  readsServed: number;
  confChanges: number;
  transfers: number;
  compactions: number;
  snapshotsSent: number;
  snapshotsInstalled: number;
}

const TICK = 10;
const ELECTION_TICKS = 10;
/** A client re-proposes a request not acknowledged within this time. */
const ACK_TIMEOUT = 500;

class InvariantViolation extends Error {}

function violation(msg: string): never {
  throw new InvariantViolation(msg);
}

type Ev =
  | (Timed & { kind: 'tick'; node: NodeId })
  | (Timed & { kind: 'deliver'; msg: Message; snapshotData?: SmSnapshot })
  | (Timed & { kind: 'persist'; node: NodeId; incarnation: number; rd: Ready })
  | (Timed & { kind: 'restart'; node: NodeId })
  | (Timed & { kind: 'kill'; node: NodeId; incarnation: number })
  | (Timed & { kind: 'snapReport'; node: NodeId; incarnation: number; to: NodeId; ok: boolean })
  | (Timed & { kind: 'client'; client: number })
  | (Timed & { kind: 'fault' })
  | (Timed & { kind: 'heal' })
  | (Timed & { kind: 'twinStart' })
  | (Timed & { kind: 'twinTick' });

/** The replicated state: applied client operations in order, and the dedup table. */
interface SmSnapshot {
  index: number;
  ops: string[];
  dedup: DedupClientState<string>[];
  confState: ConfState;
}

interface SimNode {
  id: NodeId;
  alive: boolean;
  incarnation: number;
  /** Permanently stopped (removed from the cluster). */
  retired: boolean;
  /** Durable. */
  storage: MemoryStorage;
  snapshotData: SmSnapshot;
  /** Recent snapshot payloads by index: a Snap may leave a little after a newer compaction. */
  snapshotHistory: Map<number, SmSnapshot>;
  /** Volatile. */
  raw?: RawNode;
  ops: string[];
  opSet: Set<string>;
  dedup: RequestDedup<string>;
  appliedIndex: number;
  confState: ConfState;
  lastPersistAt: number;
  maxOutstanding: number;
  /** Snapshot payloads received and staged by index, waiting for Raft to install one. */
  staged: Map<number, SmSnapshot>;
  /** Commit index at the last check. */
  lastCommit: number;
  /** Was a member of the configuration at some point (so a removal means something). */
  wasMember: boolean;
  lastRole: Role;
}

interface PendingRequest {
  seq: number;
  node?: NodeId;
  incarnation?: number;
  index?: number;
  term?: number;
  sentAt: number;
}

interface Client {
  id: string;
  nextSeq: number;
  pending: Map<number, PendingRequest>;
  leaderHint: NodeId;
}

export class Simulator {
  readonly seed: number;
  private readonly rng: Prng;
  private readonly q = new EventQueue<Ev>();
  private now = 0;
  private readonly nodes = new Map<NodeId, SimNode>();
  private nextNodeNum: number;
  private readonly clients: Client[] = [];
  private partition: Set<NodeId> | undefined; // nodes cut off from the rest
  private faulty = true;
  private readonly faultyTime: number;
  private readonly healTime: number;
  private readonly bugs: TestingBugs;
  private readonly trace: ((line: string) => void) | undefined;
  // Fault rates, drawn per seed so some runs are calm and some are brutal.
  private readonly dropRate: number;
  private readonly dupRate: number;
  private readonly maxDelay: number;
  private readonly diskFailRate: number;
  private readonly messageBytesMax: number;
  private readonly leaderKillRate: number;
  // Invariant state.
  private readonly leaderOfTerm = new Map<number, NodeId>();
  /** `${index}:${term}` -> the entry's previous term and data: log matching by induction. */
  private readonly entryIdentity = new Map<string, { prevTerm: number; data: Buffer }>();
  private readonly committedTerm = new Map<number, number>();
  private maxCommitted = 0;
  private readonly appliedAt = new Map<number, { term: number; data: Buffer }>();
  private readonly opOrder: string[] = [];
  private readonly acked = new Set<string>();
  private maxAckedIndex = 0;
  private readonly reads = new Map<string, { node: NodeId; minIndex: number }>();
  private readCounter = 0;
  readonly stats: SimStats;
  private readonly hostile: HostilePeers | undefined;
  private readonly founders: NodeId[];

  constructor(o: SimOptions) {
    this.seed = o.seed;
    this.rng = new Prng(o.seed);
    // The cluster size follows from the seed alone, so any seed replays with no other flag.
    const n = o.nodes ?? [1, 3, 3, 5, 5][o.seed % 5]!;
    this.faultyTime = o.faultyTime ?? 4000;
    this.healTime = o.healTime ?? 4000;
    this.bugs = o.testingBugs ?? {};
    this.trace = o.trace;
    this.dropRate = this.rng.pick([0, 0.01, 0.05, 0.15, 0.3]);
    this.dupRate = this.rng.pick([0, 0.01, 0.05]);
    this.maxDelay = this.rng.pick([2, 10, 30]);
    this.diskFailRate = this.rng.pick([0, 0.001, 0.005]);
    this.messageBytesMax = this.rng.pick([1, 128, 1024, 1 << 20]);
    this.leaderKillRate = this.rng.pick([0, 0.1, 0.3]);
    this.stats = {
      nodes: n, events: 0, messages: 0, dropped: 0, duplicated: 0, partitions: 0, crashes: 0, diskFailures: 0, tornWrites: 0,
      elections: 0, proposals: 0, acked: 0, reads: 0, readsServed: 0, confChanges: 0, transfers: 0, compactions: 0, snapshotsSent: 0, snapshotsInstalled: 0,
    };
    const ids = Array.from({ length: n }, (_, i) => `n${i + 1}`);
    this.founders = ids;
    this.hostile = o.hostile ? new HostilePeers(o.seed, ids, o.hostile) : undefined;
    this.nextNodeNum = n + 1;
    const bs = bootstrap(ids);
    for (const id of ids) {
      const storage = new MemoryStorage(bs.confState);
      storage.append(bs.entries);
      storage.setHardState(bs.hardState);
      const snapshotData: SmSnapshot = { index: bs.applied, ops: [], dedup: [], confState: bs.confState };
      this.createNode(id, storage, snapshotData);
    }
    for (let c = 0; c < 3; c++) this.clients.push({ id: `c${c}`, nextSeq: 1, pending: new Map(), leaderHint: '' });
  }

  private log(line: string): void {
    if (this.trace) this.trace(`${String(this.now).padStart(6)} ${line}`);
  }

  // ---- nodes -------------------------------------------------------------------

  private createNode(id: NodeId, storage: MemoryStorage, snapshotData: SmSnapshot): SimNode {
    const n: SimNode = {
      id, alive: false, incarnation: 0, retired: false, storage, snapshotData, snapshotHistory: new Map([[snapshotData.index, snapshotData]]),
      ops: [], opSet: new Set(), dedup: new RequestDedup<string>(), appliedIndex: 0, confState: snapshotData.confState,
      lastPersistAt: 0, maxOutstanding: 1, lastRole: Role.Follower, lastCommit: 0, staged: new Map(), wasMember: snapshotData.confState.voters.includes(id),
    };
    this.nodes.set(id, n);
    this.start(n);
    return n;
  }

  private start(n: SimNode): void {
    const snap = n.snapshotData;
    n.ops = snap.ops.slice();
    n.opSet = new Set(n.ops);
    n.dedup = RequestDedup.from<string>(snap.dedup);
    n.appliedIndex = snap.index;
    n.confState = snap.confState;
    n.incarnation++;
    n.alive = true;
    n.lastRole = Role.Follower;
    n.lastCommit = 0;
    n.staged = new Map();
    n.maxOutstanding = this.rng.pick([1, 1, 2, 3]);
    const nodeRng = this.rng.fork();
    n.raw = new RawNode({
      id: n.id,
      storage: n.storage,
      rand: (k) => nodeRng.int(k),
      electionTicks: ELECTION_TICKS,
      heartbeatTicks: 1,
      applied: snap.index,
      messageBytesMax: this.messageBytesMax,
      inFlightMessagesMax: this.rng.pick([2, 4, 256]),
      inFlightBytesMax: Math.max(this.messageBytesMax, 4096),
      uncommittedBytesMax: 1 << 16,
      testingBugs: this.bugs,
    });
    // Commit recovered at restart (hard state, applied index) is not an advance by a leader.
    n.lastCommit = n.raw.basicStatus().commit;
    this.q.push({ at: this.now + 1 + this.rng.int(TICK), kind: 'tick', node: n.id });
    this.log(`${n.id} start (incarnation ${n.incarnation}, applied ${snap.index}, last ${n.storage.lastIndex()})`);
  }

  private crash(n: SimNode, why: string): void {
    if (!n.alive) return;
    n.alive = false;
    n.raw = undefined;
    this.stats.crashes++;
    this.log(`${n.id} CRASH (${why})`);
    if (!n.retired) this.q.push({ at: this.now + this.rng.range(20, 400), kind: 'restart', node: n.id });
  }

  private liveNodes(): SimNode[] {
    return [...this.nodes.values()].filter((n) => n.alive);
  }

  // ---- the runtime loop of one node ------------------------------------------

  private drive(n: SimNode): void {
    const raw = n.raw;
    if (!n.alive || !raw) return;
    while (raw.outstandingReadys < n.maxOutstanding && raw.hasReady()) {
      const rd = raw.ready();
      if (rd.softState) this.onSoftState(n, rd.softState.role);
      for (const m of rd.messages) this.send(n, m);
      // Writes of one node complete in order.
      const at = Math.max(this.now + this.rng.range(1, 8), n.lastPersistAt);
      n.lastPersistAt = at;
      this.q.push({ at, kind: 'persist', node: n.id, incarnation: n.incarnation, rd });
    }
  }

  private onSoftState(n: SimNode, role: Role): void {
    const raft = raftForTesting(n.raw!);
    if (role === Role.Leader && n.lastRole !== Role.Leader) {
      this.stats.elections++;
      this.log(`${n.id} LEADER term ${raft.term}`);
      this.checkLeader(n);
      if (this.faulty && this.rng.chance(this.leaderKillRate / 2)) {
        // Cut a fresh leader off at once: its first entries stay on it alone.
        this.partition = new Set([n.id]);
        this.stats.partitions++;
        this.log(`PARTITION {${n.id}} | rest (fresh leader)`);
      }
      if (this.faulty && this.rng.chance(this.leaderKillRate)) {
        this.q.push({ at: this.now + this.rng.range(1, 30), kind: 'kill', node: n.id, incarnation: n.incarnation });
      }
    }
    n.lastRole = role;
  }

  private persist(n: SimNode, rd: Ready): void {
    const raw = n.raw!;
    if (this.faulty && this.rng.chance(this.diskFailRate)) {
      this.stats.diskFailures++;
      if (this.rng.chance(0.5) && (rd.entries.length > 0 || rd.snapshot)) {
        // Torn: the entries reached the disk, the hard state did not.
        this.stats.tornWrites++;
        this.writeLog(n, rd);
      }
      this.crash(n, 'storage write failed');
      return;
    }
    this.writeLog(n, rd);
    if (rd.hardState) n.storage.setHardState(rd.hardState);
    for (const m of rd.messagesAfterPersist) this.send(n, m);
    for (const e of rd.committedEntries) this.apply(n, e);
    for (const rs of rd.readStates) this.onReadState(n, rs.context.toString(), rs.index);
    raw.advance(rd);
    this.checkCommit(n);
  }

  private writeLog(n: SimNode, rd: Ready): void {
    if (rd.snapshot) {
      const data = n.staged.get(rd.snapshot.index);
      if (!data) violation(`${n.id}: Raft installs snapshot ${rd.snapshot.index} but no such payload was staged`);
      n.storage.applySnapshot(rd.snapshot);
      n.snapshotData = data;
      this.remember(n, data);
      n.ops = data.ops.slice();
      n.opSet = new Set(n.ops);
      n.dedup = RequestDedup.from<string>(data.dedup);
      n.appliedIndex = data.index;
      n.confState = rd.snapshot.confState;
      for (const k of n.staged.keys()) if (k <= data.index) n.staged.delete(k);
      this.stats.snapshotsInstalled++;
      this.log(`${n.id} installed snapshot ${rd.snapshot.index}`);
    }
    if (rd.entries.length > 0) {
      // Identity is checked against what precedes each entry on this node's
      // disk: the storage before the append, then the Ready's own entries.
      let prevTerm: number | undefined;
      try {
        prevTerm = n.storage.term(rd.entries[0]!.index - 1);
      } catch {
        prevTerm = undefined; // compacted below: covered by the snapshot
      }
      for (const e of rd.entries) {
        if (prevTerm !== undefined) this.checkEntryIdentity(n, e, prevTerm);
        prevTerm = e.term;
      }
      n.storage.append(rd.entries);
    }
  }

  private remember(n: SimNode, snap: SmSnapshot): void {
    n.snapshotHistory.set(snap.index, snap);
    if (n.snapshotHistory.size > 8) n.snapshotHistory.delete(n.snapshotHistory.keys().next().value as number);
  }

  private apply(n: SimNode, e: Entry): void {
    if (e.index !== n.appliedIndex + 1) violation(`${n.id} applies ${e.index} after ${n.appliedIndex}`);
    n.appliedIndex = e.index;
    const seen = this.appliedAt.get(e.index);
    if (seen) {
      if (seen.term !== e.term || !seen.data.equals(e.data)) violation(`state machine safety: ${n.id} applies ${e.index}/${e.term}, another node applied ${e.index}/${seen.term}`);
    } else {
      this.appliedAt.set(e.index, { term: e.term, data: e.data });
    }
    if (e.type === EntryType.ConfChange) {
      const cc = decodeConfChange(e.data);
      n.confState = n.raw!.applyConfChange(cc);
      if (n.confState.voters.includes(n.id) || n.confState.learners.includes(n.id)) n.wasMember = true;
      this.log(`${n.id} applied conf change at ${e.index}: voters ${n.confState.voters} outgoing ${n.confState.votersOutgoing} learners ${n.confState.learners}`);
    } else if (e.data.length > 0) {
      const { header } = decodeRequest(e.data);
      const op = `${header.clientId}:${header.seq}`;
      if (n.dedup.admit(header)) {
        if (n.opSet.has(op)) violation(`exactly once: ${n.id} applies ${op} twice`);
        const pos = n.ops.length;
        n.ops.push(op);
        n.opSet.add(op);
        if (pos < this.opOrder.length) {
          if (this.opOrder[pos] !== op) violation(`one order: ${n.id} applies ${op} at position ${pos}, another node applied ${this.opOrder[pos]}`);
        } else {
          this.opOrder.push(op);
        }
      }
      this.onApplied(n, e, op);
    }
  }

  // ---- network -----------------------------------------------------------------

  private cutOff(a: NodeId, b: NodeId): boolean {
    const p = this.partition;
    return p !== undefined && p.has(a) !== p.has(b);
  }

  private send(from: SimNode, m: Message): void {
    this.stats.messages++;
    let snapshotData: SmSnapshot | undefined;
    if (m.type === MessageType.Snap) {
      // The runtime streams the state machine's snapshot alongside.
      snapshotData = from.snapshotHistory.get(m.snapshot!.index);
      if (!snapshotData) violation(`${from.id} sends snapshot ${m.snapshot!.index} but holds no such payload`);
      this.stats.snapshotsSent++;
    }
    const copies = this.faulty && this.rng.chance(this.dupRate) ? 2 : 1;
    if (copies === 2) this.stats.duplicated++;
    for (let i = 0; i < copies; i++) {
      const lost = this.faulty && (this.rng.chance(this.dropRate) || this.cutOff(m.from, m.to));
      if (lost) {
        this.stats.dropped++;
      } else {
        const delay = this.faulty && this.rng.chance(0.02) ? this.rng.range(1, 300) : this.rng.range(1, this.maxDelay);
        this.q.push({ at: this.now + delay, kind: 'deliver', msg: m, ...(snapshotData ? { snapshotData } : {}) });
      }
      if (m.type === MessageType.Snap) {
        this.q.push({ at: this.now + this.rng.range(5, 50), kind: 'snapReport', node: from.id, incarnation: from.incarnation, to: m.to, ok: !lost });
      }
    }
    if (this.hostile && this.faulty) {
      const members = [...this.nodes.keys()];
      for (const extra of this.hostile.onSend(m, members)) this.q.push({ at: this.now + 1 + (this.stats.messages % 7), kind: 'deliver', msg: extra });
    }
  }

  private deliver(m: Message, snapshotData: SmSnapshot | undefined): void {
    const n = this.nodes.get(m.to);
    if (!n || !n.alive || !n.raw) return;
    if (this.faulty && this.cutOff(m.from, m.to)) {
      this.stats.dropped++;
      return;
    }
    // The cluster layer's checks (src/replica/peer-input.ts) run before Raft sees anything.
    if (this.hostile) {
      const raw = n.raw;
      const st = raw.basicStatus();
      if (!this.hostile.admit(m, (id) => raw.isMember(id), raw.hasConfiguration(), { id: n.id, leading: st.role === Role.Leader, lead: st.lead, term: st.term, now: this.now })) return;
    }
    if (snapshotData) n.staged.set(snapshotData.index, snapshotData);
    if (this.trace) {
      this.log(`  ${m.from}->${m.to} ${MessageType[m.type]} t${m.term} i${m.index} lt${m.logTerm} c${m.commit} n${m.entries.length}${m.reject ? ` REJECT hint ${m.rejectHint}` : ''}`);
    }
    n.raw.step(m);
    const term = n.raw.basicStatus().term;
    if (term > limits.raftTermMax) violation(`${n.id} reached term ${term} (above raftTermMax: the WAL could not store its successor)`);
    this.checkCommit(n);
    this.drive(n);
  }

  // ---- clients -----------------------------------------------------------------

  private clientStep(c: Client): void {
    // Retry what timed out, then maybe start a new request (only while faulty,
    // so the healed phase can drain).
    for (const p of c.pending.values()) {
      if (this.now - p.sentAt > ACK_TIMEOUT) this.proposeRequest(c, p);
    }
    if (this.faulty && c.pending.size < 4 && this.rng.chance(0.7)) {
      const p: PendingRequest = { seq: c.nextSeq++, sentAt: this.now };
      c.pending.set(p.seq, p);
      this.proposeRequest(c, p);
    }
    if (this.rng.chance(0.15)) this.startRead();
  }

  private proposeRequest(c: Client, p: PendingRequest): void {
    p.sentAt = this.now;
    const live = this.liveNodes();
    if (live.length === 0) return;
    const hinted = this.nodes.get(c.leaderHint);
    const n = hinted && hinted.alive ? hinted : this.rng.pick(live);
    const firstUnacked = Math.min(...c.pending.keys());
    const data = encodeRequest({ clientId: c.id, seq: p.seq, firstUnacked }, Buffer.from(`payload-${c.id}-${p.seq}`));
    try {
      const r = n.raw!.propose(data);
      this.stats.proposals++;
      p.node = n.id;
      p.incarnation = n.incarnation;
      p.index = r.index;
      p.term = r.term;
      this.log(`${c.id}:${p.seq} proposed at ${n.id} -> ${r.index}/${r.term}`);
      this.drive(n);
    } catch (e) {
      const err = e as { code?: string; leader?: string };
      c.leaderHint = err.code === 'XDEVICE_ERR_NOT_LEADER' ? (err.leader ?? '') : '';
      // Refused outright: retry soon (elsewhere), not after the ack timeout.
      p.sentAt = this.now - ACK_TIMEOUT + 20;
    }
  }

  /** The node that took a proposal applied an entry: acknowledge if it is that proposal. */
  private onApplied(n: SimNode, e: Entry, op: string): void {
    const [clientId, seqStr] = op.split(':') as [string, string];
    const c = this.clients.find((x) => x.id === clientId)!;
    const p = c.pending.get(Number(seqStr));
    if (!p || p.node !== n.id || p.incarnation !== n.incarnation || p.index !== e.index || p.term !== e.term) return;
    c.pending.delete(p.seq);
    this.acked.add(op);
    this.stats.acked++;
    if (e.index > this.maxAckedIndex) this.maxAckedIndex = e.index;
  }

  private startRead(): void {
    const live = this.liveNodes();
    if (live.length === 0) return;
    const n = this.rng.pick(live);
    const ctx = `read-${this.readCounter++}`;
    try {
      n.raw!.readIndex(Buffer.from(ctx));
      this.stats.reads++;
      // Linearizability: the read must see every write acknowledged before it started.
      this.reads.set(ctx, { node: n.id, minIndex: this.maxAckedIndex });
      this.drive(n);
    } catch {
      // no leader known: the client would retry elsewhere
    }
  }

  private onReadState(n: SimNode, ctx: string, index: number): void {
    const r = this.reads.get(ctx);
    if (!r) return;
    if (r.node !== n.id) violation(`read ${ctx} answered at ${n.id}, asked at ${r.node}`);
    if (index < r.minIndex) violation(`linearizability: read ${ctx} at ${n.id} got read index ${index} < ${r.minIndex} acknowledged before it started`);
    this.reads.delete(ctx);
    this.stats.readsServed++;
  }

  // ---- operator and faults ---------------------------------------------------

  private leader(): SimNode | undefined {
    let best: SimNode | undefined;
    for (const n of this.nodes.values()) {
      if (n.alive && n.raw!.basicStatus().role === Role.Leader && (!best || n.raw!.basicStatus().term > best.raw!.basicStatus().term)) best = n;
    }
    return best;
  }

  private fault(): void {
    const r = this.rng.int(100);
    const live = this.liveNodes();
    if (r < 12) {
      // partition: isolate one node, or split in two
      const ids = [...this.nodes.keys()];
      const side = new Set<NodeId>();
      if (this.rng.chance(0.5)) side.add(this.rng.pick(ids));
      else for (const id of ids) if (this.rng.chance(0.5)) side.add(id);
      this.partition = side;
      this.stats.partitions++;
      this.log(`PARTITION {${[...side]}} | rest`);
    } else if (r < 25) {
      this.partition = undefined;
      this.log('partition healed');
    } else if (r < 37) {
      if (live.length > 0) this.crash(this.rng.pick(live), 'injected');
    } else if (r < 42) {
      // Kill a leader shortly after it is elected, the moment when its log
      // differs most from the others' (Raft figure 8).
      const l = this.leader();
      if (l) this.q.push({ at: this.now + this.rng.range(1, 40), kind: 'kill', node: l.id, incarnation: l.incarnation });
    } else if (r < 50) {
      this.confChange();
    } else if (r < 58) {
      const l = this.leader();
      if (l) {
        const voters = l.confState.voters.filter((id) => id !== l.id);
        if (voters.length > 0) {
          const to = this.rng.pick(voters);
          this.log(`transfer ${l.id} -> ${to}`);
          this.stats.transfers++;
          l.raw!.transferLeader(to);
          this.drive(l);
        }
      }
    } else if (r < 75) {
      // compaction at a random live node, up to what it applied
      if (live.length > 0) {
        const n = this.rng.pick(live);
        const first = n.storage.firstIndex();
        if (n.appliedIndex >= first && n.appliedIndex <= n.storage.lastIndex()) {
          n.storage.compact(n.appliedIndex, n.confState);
          n.snapshotData = { index: n.appliedIndex, ops: n.ops.slice(), dedup: n.dedup.export(), confState: n.confState };
          this.remember(n, n.snapshotData);
          this.stats.compactions++;
          this.log(`${n.id} compacted to ${n.appliedIndex}`);
        }
      }
    }
  }

  private confChange(): void {
    const l = this.leader();
    if (!l) return;
    const cs = l.confState;
    if (cs.votersOutgoing.length > 0) return; // auto-leave will follow
    const choice = this.rng.int(4);
    let cc: ConfChange;
    if (choice === 0 && this.nodes.size < 8) {
      const id = `n${this.nextNodeNum++}`;
      // A new member starts with an empty log and empty membership.
      this.createNode(id, new MemoryStorage(), { index: 0, ops: [], dedup: [], confState: { voters: [], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } });
      cc = confChanges.addLearner(id);
    } else if (choice === 1 && cs.learners.length > 0) {
      cc = confChanges.addVoter(this.rng.pick(cs.learners));
    } else if (choice === 2 && cs.voters.length + cs.learners.length > 1) {
      const victims = [...cs.voters, ...cs.learners];
      const id = this.rng.pick(victims);
      if (cs.voters.length === 1 && cs.voters[0] === id) return;
      cc = confChanges.remove(id);
    } else if (choice === 3 && cs.learners.length > 0 && cs.voters.length > 1) {
      // Joint: swap a voter and a learner in one step.
      const learner = this.rng.pick(cs.learners);
      const voter = this.rng.pick(cs.voters);
      cc = {
        transition: this.rng.pick([ConfChangeTransition.Auto, ConfChangeTransition.Implicit]),
        changes: [
          { type: ConfChangeType.AddNode, nodeId: learner },
          { type: ConfChangeType.AddLearnerNode, nodeId: voter },
        ],
      };
    } else {
      return;
    }
    try {
      const r = l.raw!.proposeConfChange(cc);
      this.stats.confChanges++;
      this.log(`${l.id} proposes conf change ${JSON.stringify(cc.changes)} at ${r.index}`);
      this.drive(l);
    } catch (e) {
      this.log(`conf change refused: ${(e as Error).message}`);
    }
  }

  /**
   * Nodes that are no longer members stop for good, as an operator would stop
   * them: only once another node leads with a configuration without them.
   */
  private retireRemoved(): void {
    const l = this.leader();
    if (!l) return;
    const cs = l.confState;
    const members = new Set([...cs.voters, ...cs.learners, ...cs.votersOutgoing]);
    for (const n of this.nodes.values()) {
      if (n === l || members.has(n.id) || n.retired || !n.alive || !n.wasMember) continue;
      const own = n.confState;
      if (own.voters.includes(n.id) || own.learners.includes(n.id) || own.votersOutgoing.includes(n.id)) continue;
      if (n.raw!.basicStatus().role === Role.Leader) continue;
      if (this.rng.chance(0.2)) {
        n.retired = true;
        this.crash(n, 'removed from the cluster');
      }
    }
  }

  // ---- invariants --------------------------------------------------------------

  private checkEntryIdentity(n: SimNode, e: Entry, prevTerm: number): void {
    const key = `${e.index}:${e.term}`;
    const seen = this.entryIdentity.get(key);
    if (!seen) {
      this.entryIdentity.set(key, { prevTerm, data: e.data });
    } else if (seen.prevTerm !== prevTerm || !seen.data.equals(e.data)) {
      violation(`log matching: entry ${key} at ${n.id} follows term ${prevTerm} / data differs; elsewhere it follows term ${seen.prevTerm}`);
    }
  }

  private checkLeader(n: SimNode): void {
    const raft = raftForTesting(n.raw!);
    const other = this.leaderOfTerm.get(raft.term);
    if (other !== undefined && other !== n.id) violation(`election safety: ${other} and ${n.id} both lead term ${raft.term}`);
    this.leaderOfTerm.set(raft.term, n.id);
    // Leader completeness: every committed entry is in the new leader's log.
    const first = raft.log.firstIndex();
    if (raft.log.lastIndex() < this.maxCommitted) violation(`leader completeness: ${n.id} leads term ${raft.term} with last index ${raft.log.lastIndex()} < committed ${this.maxCommitted}`);
    for (let i = Math.max(first, 1); i <= this.maxCommitted; i++) {
      const t = this.committedTerm.get(i);
      if (t !== undefined && raft.log.term(i) !== t) violation(`leader completeness: ${n.id} (term ${raft.term}) has ${i}/${raft.log.term(i)}, committed ${i}/${t}`);
    }
  }

  private checkCommit(n: SimNode): void {
    const raft = raftForTesting(n.raw!);
    const c = raft.log.committed;
    if (raft.role === Role.Leader && c > n.lastCommit && raft.log.term(c) !== raft.term) {
      // Raft 5.4.2: a leader moves its commit index only to an entry of its own term.
      violation(`commit rule: ${n.id} leading term ${raft.term} advanced its commit to ${c}, an entry of term ${raft.log.term(c)}`);
    }
    n.lastCommit = c;
    if (c <= this.maxCommitted) return;
    const first = raft.log.firstIndex();
    for (let i = Math.max(this.maxCommitted + 1, first); i <= c; i++) {
      const t = raft.log.term(i);
      const prev = this.committedTerm.get(i);
      if (prev !== undefined && prev !== t) violation(`commit: ${n.id} commits ${i}/${t}, previously committed ${i}/${prev}`);
      this.committedTerm.set(i, t);
    }
    this.maxCommitted = c;
  }

  /** One line per node, for failure reports. */
  describe(): string {
    const lines: string[] = [];
    for (const n of this.nodes.values()) {
      if (!n.alive || !n.raw) {
        lines.push(`${n.id}: down${n.retired ? ' (retired)' : ''}`);
        continue;
      }
      const st = n.raw.status();
      const prs = Object.entries(st.progress)
        .map(([id, p]) => `${id}{m${p.match} n${p.next} ${p.state}${p.isLearner ? ' L' : ''} if${p.inflightMessages}${p.recentActive ? '' : ' inactive'}}`)
        .join(' ');
      lines.push(`${n.id}: ${st.role} t${st.term} lead=${st.lead} commit ${st.commit} applied ${n.appliedIndex} last ${st.lastIndex} first ${n.storage.firstIndex()} voters ${st.confState.voters} out ${st.confState.votersOutgoing} learners ${st.confState.learners} ${prs}`);
    }
    return lines.join('\n');
  }

  private checkFinal(): void {
    const l = this.leader();
    if (!l) violation('liveness: no leader after the faults healed');
    const pending = this.clients.reduce((k, c) => k + c.pending.size, 0);
    if (pending > 0) {
      const list = this.clients.flatMap((c) => [...c.pending.values()].map((p) => `${c.id}:${p.seq}@${p.node}/${p.index}/${p.term} sent ${p.sentAt}`));
      violation(`liveness: ${pending} client requests still unacknowledged after the faults healed: ${list.join(', ')}`);
    }
    const members = [...l.confState.voters, ...l.confState.learners];
    const ref = l.ops;
    for (const id of members) {
      const n = this.nodes.get(id)!;
      if (!n.alive) violation(`liveness: member ${id} is down after healing`);
      if (n.appliedIndex !== l.appliedIndex) violation(`liveness: ${id} applied ${n.appliedIndex}, leader ${l.id} applied ${l.appliedIndex}`);
      if (n.ops.length !== ref.length || n.ops.some((op, i) => op !== ref[i])) violation(`state machine: ${id} and ${l.id} differ`);
    }
    for (const op of this.acked) if (!l.opSet.has(op)) violation(`durability: acknowledged ${op} is not applied`);
  }

  // ---- main loop ---------------------------------------------------------------

  run(): SimResult {
    try {
      for (const c of this.clients) this.q.push({ at: this.rng.range(50, 150), kind: 'client', client: this.clients.indexOf(c) });
      this.q.push({ at: this.rng.range(100, 300), kind: 'fault' });
      this.q.push({ at: this.faultyTime, kind: 'heal' });
      if (this.hostile?.twinOf) this.q.push({ at: this.rng.range(200, Math.max(300, this.faultyTime / 2)), kind: 'twinStart' });
      const end = this.faultyTime + this.healTime;
      for (;;) {
        const ev = this.q.pop();
        if (!ev || ev.at > end) break;
        this.now = ev.at;
        this.stats.events++;
        this.handle(ev);
      }
      this.checkFinal();
      return { seed: this.seed, ok: true, stats: this.stats, ...(this.hostile ? { hostile: this.hostile.stats } : {}) };
    } catch (e) {
      const err = e as Error;
      const msg = err instanceof InvariantViolation ? err.message : `${err.name}: ${err.message}\n${err.stack ?? ''}`;
      this.log(`FAILED: ${msg}`);
      this.log(`state:\n${this.describe()}`);
      return { seed: this.seed, ok: false, error: msg, stats: this.stats, ...(this.hostile ? { hostile: this.hostile.stats } : {}) };
    }
  }

  private handle(ev: Ev): void {
    switch (ev.kind) {
      case 'tick': {
        const n = this.nodes.get(ev.node)!;
        if (!n.alive) return;
        n.raw!.tick();
        this.drive(n);
        this.q.push({ at: this.now + TICK, kind: 'tick', node: n.id });
        return;
      }
      case 'deliver':
        this.deliver(ev.msg, ev.snapshotData);
        return;
      case 'persist': {
        const n = this.nodes.get(ev.node)!;
        if (!n.alive || n.incarnation !== ev.incarnation) return;
        this.persist(n, ev.rd);
        this.drive(n);
        return;
      }
      case 'restart': {
        const n = this.nodes.get(ev.node)!;
        if (n.alive || n.retired) return;
        if (this.faulty && this.rng.chance(0.3)) {
          this.q.push({ at: this.now + this.rng.range(50, 300), kind: 'restart', node: n.id });
          return;
        }
        this.start(n);
        this.drive(n);
        return;
      }
      case 'kill': {
        const n = this.nodes.get(ev.node)!;
        if (this.faulty && n.alive && n.incarnation === ev.incarnation) this.crash(n, 'leader killed');
        return;
      }
      case 'snapReport': {
        const n = this.nodes.get(ev.node)!;
        if (!n.alive || n.incarnation !== ev.incarnation) return;
        n.raw!.reportSnapshot(ev.to, ev.ok);
        this.drive(n);
        return;
      }
      case 'client':
        this.clientStep(this.clients[ev.client]!);
        this.q.push({ at: this.now + this.rng.range(10, 60), kind: 'client', client: ev.client });
        return;
      case 'fault':
        if (!this.faulty) return;
        this.fault();
        this.retireRemoved();
        this.q.push({ at: this.now + this.rng.range(20, 200), kind: 'fault' });
        return;
      case 'twinStart':
        this.hostile!.startTwin(this.founders);
        this.log(`TWIN of ${this.hostile!.twinOf} starts with an empty log`);
        this.q.push({ at: this.now + TICK, kind: 'twinTick' });
        return;
      case 'twinTick': {
        // Its links are refused while the member with its id is connected.
        const member = this.nodes.get(this.hostile!.twinOf!);
        for (const m of this.hostile!.tickTwin(member?.alive === true)) this.q.push({ at: this.now + 1 + (this.stats.events % this.maxDelay), kind: "deliver", msg: m });
        this.q.push({ at: this.now + TICK, kind: 'twinTick' });
        return;
      }
      case 'heal':
        this.faulty = false;
        this.partition = undefined;
        this.log('HEAL: no more faults');
        for (const n of this.nodes.values()) if (!n.alive && !n.retired) this.q.push({ at: this.now + 1, kind: 'restart', node: n.id });
        return;
    }
  }
}

export function runSeed(o: SimOptions): SimResult {
  return new Simulator(o).run();
}
