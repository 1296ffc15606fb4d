// An in-memory cluster for scenario tests: each node has a MemoryStorage and
// a RawNode; messages sit in a queue until the test delivers, drops or
// reorders them. Readys are processed synchronously (persist, then send the
// after-persist messages, apply, advance), so a test drives the protocol
// message by message the way the paper's figures do.

import { bootstrap } from '../../../src/raft/bootstrap.ts';
import type { Config } from '../../../src/raft/config.ts';
import { decodeConfChange } from '../../../src/raft/confchange.ts';
import { MemoryStorage } from '../../../src/raft/memory-storage.ts';
import { RawNode, raftForTesting, type Ready } from '../../../src/raft/rawnode.ts';
import { Role } from '../../../src/raft/raft.ts';
import type { ReadState } from '../../../src/raft/read-only.ts';
import { EntryType, MessageType, type ConfState, type Entry, type Message, type NodeId } from '../../../src/raft/types.ts';

export interface TestNode {
  id: NodeId;
  storage: MemoryStorage;
  node: RawNode;
  /** Normal entries applied, in order (including the leaders' empty entries). */
  applied: Entry[];
  confState: ConfState;
  readStates: ReadState[];
}

export type NodeOptions = Partial<Omit<Config, 'id' | 'storage'>>;

/** A deterministic rand(): always the lowest value unless a test overrides it per node. */
export const fixedRand = (v = 0) => (n: number) => Math.min(v, n - 1);

export class Network {
  readonly nodes = new Map<NodeId, TestNode>();
  queue: Message[] = [];
  /** Links that drop everything: "from->to". */
  cut = new Set<string>();
  /** Messages that were dropped because of a cut, for assertions. */
  droppedCount = 0;
  private readonly options: NodeOptions;
  private readonly bootstrapApplied = new Map<NodeId, number>();

  constructor(voters: NodeId[], options: NodeOptions = {}, perNode: Record<NodeId, NodeOptions> = {}) {
    this.options = options;
    const bs = bootstrap(voters);
    for (const [k, id] of voters.entries()) {
      const storage = new MemoryStorage(bs.confState);
      storage.append(bs.entries);
      storage.setHardState(bs.hardState);
      this.bootstrapApplied.set(id, bs.applied);
      // Distinct election timeouts (10, 12, 14, ... ticks) so simultaneous
      // timeouts do not split votes forever; a test overrides rand per node.
      this.addNode(id, storage, { applied: bs.applied, rand: fixedRand(2 * k), ...perNode[id] }, bs.confState);
    }
  }

  /** Start a node (a new member joins with an empty storage). */
  addNode(id: NodeId, storage = new MemoryStorage(), options: NodeOptions = {}, confState?: ConfState): TestNode {
    const node = new RawNode({ id, storage, rand: fixedRand(0), electionTicks: 10, heartbeatTicks: 1, ...this.options, ...options });
    const tn: TestNode = { id, storage, node, applied: [], confState: confState ?? storage.initialState().confState, readStates: [] };
    this.nodes.set(id, tn);
    return tn;
  }

  /**
   * Replace a founding node's log by the bootstrap entries followed by
   * entries with the given terms (figure 7 style), and restart it.
   */
  setLog(id: NodeId, terms: number[], options: NodeOptions = {}): TestNode {
    const bs = bootstrap(this.get(id).confState.voters);
    const storage = new MemoryStorage(bs.confState);
    storage.append(bs.entries);
    const ents = terms.map((term, i) => ({ term, index: bs.entries.length + i + 1, type: EntryType.Normal, data: Buffer.from(`t${term}i${bs.entries.length + i + 1}`) }));
    storage.append(ents);
    const term = Math.max(1, ...terms);
    storage.setHardState({ term, vote: '', commit: bs.applied });
    this.bootstrapApplied.set(id, bs.applied);
    return this.addNode(id, storage, { applied: bs.applied, rand: raftForTesting(this.get(id).node).cfg.rand, ...options }, bs.confState);
  }

  /** Crash and restart a node from its storage (everything persisted survives). */
  restart(id: NodeId, options: NodeOptions = {}): TestNode {
    const old = this.get(id);
    // The test state machine is volatile: it restarts from the snapshot (or
    // the bootstrap entries) and replays the rest of the log.
    const applied = Math.max(old.storage.snapshotMetadata().index, this.bootstrapApplied.get(id) ?? 0);
    return this.addNode(id, old.storage, { rand: raftForTesting(old.node).cfg.rand, ...options, applied });
  }

  get(id: NodeId): TestNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  raft(id: NodeId) {
    return raftForTesting(this.get(id).node);
  }

  /** Process every Ready of one node: persist, queue messages, apply, advance. */
  process(id: NodeId): void {
    const tn = this.get(id);
    while (tn.node.hasReady()) {
      const rd = tn.node.ready();
      this.persistAndApply(tn, rd);
    }
  }

  private persistAndApply(tn: TestNode, rd: Ready): void {
    this.queue.push(...rd.messages);
    if (rd.snapshot) {
      tn.storage.applySnapshot(rd.snapshot);
      tn.confState = rd.snapshot.confState;
    }
    tn.storage.append(rd.entries);
    if (rd.hardState) tn.storage.setHardState(rd.hardState);
    this.queue.push(...rd.messagesAfterPersist);
    for (const e of rd.committedEntries) {
      if (e.type === EntryType.ConfChange) tn.confState = tn.node.applyConfChange(decodeConfChange(e.data), e.index);
      else tn.applied.push(e);
    }
    tn.readStates.push(...rd.readStates);
    tn.node.advance(rd);
  }

  processAll(): void {
    for (const id of this.nodes.keys()) this.process(id);
  }

  isolate(id: NodeId): void {
    for (const other of this.nodes.keys()) {
      if (other === id) continue;
      this.cut.add(`${id}->${other}`);
      this.cut.add(`${other}->${id}`);
    }
  }

  cutLink(from: NodeId, to: NodeId): void {
    this.cut.add(`${from}->${to}`);
  }

  heal(): void {
    this.cut.clear();
  }

  /** Deliver queued messages (those matching `filter`, default all) until the cluster is quiet. */
  stabilize(maxRounds = 1000): void {
    for (let round = 0; round < maxRounds; round++) {
      this.processAll();
      if (this.queue.length === 0) return;
      const batch = this.queue;
      this.queue = [];
      for (const m of batch) this.deliver(m);
    }
    throw new Error('network did not stabilize');
  }

  deliver(m: Message): void {
    if (this.cut.has(`${m.from}->${m.to}`)) {
      this.droppedCount++;
      return;
    }
    const tn = this.nodes.get(m.to);
    if (!tn) return;
    tn.node.step(m);
  }

  /** Remove queued messages matching pred (returns them). */
  take(pred: (m: Message) => boolean): Message[] {
    const out: Message[] = [];
    const keep: Message[] = [];
    for (const m of this.queue) (pred(m) ? out : keep).push(m);
    this.queue = keep;
    return out;
  }

  tick(id: NodeId, n = 1): void {
    for (let i = 0; i < n; i++) this.get(id).node.tick();
  }

  tickAll(n = 1): void {
    for (let i = 0; i < n; i++) for (const tn of this.nodes.values()) tn.node.tick();
  }

  /** Tick every node n times, delivering everything after each tick. */
  run(n: number): void {
    for (let i = 0; i < n; i++) {
      this.tickAll();
      this.stabilize();
    }
  }

  campaign(id: NodeId): void {
    this.get(id).node.campaign();
    this.stabilize();
  }

  leaders(): NodeId[] {
    return [...this.nodes.values()].filter((tn) => raftForTesting(tn.node).role === Role.Leader).map((tn) => tn.id);
  }

  propose(id: NodeId, data: string | Buffer): { index: number; term: number } {
    return this.get(id).node.propose(typeof data === 'string' ? Buffer.from(data) : data);
  }

  /** Application payloads applied on a node (leaders' empty entries left out). */
  appliedData(id: NodeId): string[] {
    return this.get(id)
      .applied.filter((e) => e.data.length > 0)
      .map((e) => e.data.toString());
  }

  /** The log of a node from storage and unstable, [first, last]. */
  logOf(id: NodeId): Entry[] {
    const log = this.raft(id).log;
    const first = log.firstIndex();
    const last = log.lastIndex();
    return last >= first ? log.slice(first, last + 1, Number.MAX_SAFE_INTEGER) : [];
  }
}

export { MessageType, Role };
