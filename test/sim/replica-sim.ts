// The simulator on the real replica core, in the spirit of TigerBeetle's VOPR:
// several src/replica/ Replicas in one process, each over the real WAL and
// the real block store on a simulated disk, linked by a simulated network,
// all driven by one event queue and one seeded PRNG. Same seed, same run.
//
//   time      the event queue's clock in ms; every Replica's Clock reads it,
//             timers and deferrals are events
//   network   every Raft message is encoded and decoded by the real peer
//             codec (src/cluster/codec.ts), then dropped, duplicated,
//             delayed (hence reordered) or cut by a partition; snapshot
//             streams flow in order per link and die with a partition;
//             strangers send random messages that must change nothing
//   disk      test/sim/sim-disk.ts under src/wal and src/device: latency,
//             failed and torn writes, failed fdatasync, lost unsynced data
//             at a crash, a full disk
//   nodes     crash (volatile state gone, unsynced data lost) and restart
//             through src/replica/open.ts, as the production runtime does
//   clients   NBD-level writes, reads, trims, write-zeroes and flushes on
//             any node's device (src/replica/device.ts); device-table
//             changes; membership changes and leadership transfers
//
// After every event: election safety, leader completeness, the commit rule,
// committed entries never change, applied entries identical across
// replicas at equal indexes, votes that made a leader came from voters, no
// replica failed except from an injected disk fault. At the end, after the
// faults heal: a leader, every client operation answered, every member
// applied as far as the leader, every block identical on every member and
// the whole history linearizable per block (test/integration/nemesis/checker.ts).
//
// Over 500 lines: the environment of every simulated replica (clock,
// transport, host), the fault schedule, the clients and the invariants all
// read and change one simulation's state; each is a section below.

import { createHash } from 'node:crypto';
import { pino } from 'pino';
import { EventQueue, type Timed } from './event-queue.ts';
import { Prng } from './prng.ts';
import { SimDisk, type SimDiskStats, type SimFault } from './sim-disk.ts';
import type { DiskIo } from '../../src/disk/disk-io.ts';
import { checkHistory, type HistoryOp } from '../integration/nemesis/checker.ts';
import { Replica, type PlantedBugs } from '../../src/replica/replica.ts';
import { openReplicaState } from '../../src/replica/open.ts';
import type { Host, PeerTransport, SnapshotFrame, LinkStatus, Clock } from '../../src/replica/env.ts';
import { diskSnapshots } from '../../src/cluster/real-env.ts';
import { checkStartState } from '../../src/cluster/data-dir.ts';
import { decodeFrame, encodeRaftMessage, FrameKind } from '../../src/cluster/codec.ts';
import { raftForTesting } from '../../src/raft/rawnode.ts';
import { Role } from '../../src/raft/raft.ts';
import { jointVoteResult, VoteResult } from '../../src/raft/quorum.ts';
import { EntryType, MessageType, message, type Entry, type Message, type SnapshotMetadata } from '../../src/raft/types.ts';
import { ConfChangeType, decodeConfChange } from '../../src/raft/confchange.ts';
import { limits } from '../../src/limits.ts';
import { encodeSnapshotCreate, encodeSnapshotDelete } from '../../src/device/commands.ts';
import { MemberPublisher } from '../../src/replica/publish.ts';
import { VERSION } from '../../src/version.ts';

export interface ReplicaSimOptions {
  seed: number;
  /** Founding voters: 1, 3 or 5 (default: drawn from the seed). */
  nodes?: number;
  /**
   * Simulated ms with faults, then at most healMs healed: clients keep
   * working for healTrafficMs after the heal, then issue nothing new, and the
   * run ends as soon as the cluster has converged (a leader, every operation
   * answered, every member up and applied to the leader's last index) or at
   * healMs, whichever is first. The liveness bound is healMs either way.
   */
  faultyMs?: number;
  healMs?: number;
  healTrafficMs?: number;
  /** How WAL batches are made durable (default: drawn from the seed). */
  syncMode?: 'dsync' | 'fdatasync';
  /** A planted bug the simulator must find (test/sim/planted-bugs.test.ts). */
  plant?: Plant;
  /**
   * Lease reads on every node, each node's timers running up to 8% fast
   * (within limits.leaseClockDriftPercent), rates from their own PRNG so a
   * seed's fault mix stays the same.
   */
  leaseReads?: boolean;
  trace?: (line: string) => void;
}

export const PLANTS = ['ackBeforeCommit', 'promoteEarly', 'skipSync', 'applyTwice', 'readBeforeApplied', 'commitPreviousTermEntries', 'replyBeforePersist'] as const;
export type Plant = (typeof PLANTS)[number];

function plantedBugs(plant: Plant | undefined): PlantedBugs | undefined {
  switch (plant) {
    case 'ackBeforeCommit':
    case 'promoteEarly':
    case 'readBeforeApplied':
      return { [plant]: true };
    case 'commitPreviousTermEntries':
    case 'replyBeforePersist':
      return { raft: { [plant]: true } };
    default:
      return undefined;
  }
}

export interface ReplicaSimStats {
  nodes: number;
  events: number;
  messages: number;
  dropped: number;
  duplicated: number;
  partitions: number;
  crashes: number;
  diskFaults: number;
  elections: number;
  writes: number;
  acked: number;
  reads: number;
  readsServed: number;
  tableChanges: number;
  /** SNAPSHOT_CREATE/DELETE proposed on the default device (copy-on-write under the faults). */
  deviceSnapshots: number;
  /** Snapshots compared across the members at the end. */
  deviceSnapshotsChecked: number;
  confChanges: number;
  transfers: number;
  snapshotsInstalled: number;
  /** Snapshot chunks that travelled as LZ4 blocks. */
  snapshotLz4Chunks: number;
  strangerMessages: number;
}

export interface ReplicaSimResult {
  seed: number;
  ok: boolean;
  error?: string;
  stats: ReplicaSimStats;
  /**
   * A hash of what the run did: its stats, the final clock, every PRNG's
   * state, every client operation with its times, each node's end state and
   * disk counters. Two versions of the simulator that run a seed the same way
   * give the same digest (a speed-up must not change it).
   */
  digest: string;
}

const BLOCK = 4096;
/** Blocks 0..CHECKED-1 carry unique values and are checked for linearizability; the rest take trims and zeroes too. */
const CHECKED = 6;
const BLOCKS = 10;
const DEVICE_BYTES = 1024 * 1024;
const DISK_BYTES = 512 * 1024 * 1024;
/** Events one seed may run before it counts as a livelock. */
const EVENTS_MAX = 300_000;
/** Free space kept back on the data filesystem (writes past it get ENOSPC before they are proposed). */
const RESERVE = 8 * 1024 * 1024;
const silent = pino({ level: 'silent' });

class Violation extends Error {}
function violation(msg: string): never {
  throw new Violation(msg);
}

/** What an event is, for a livelock's report: a thunk where building the string would cost every event. */
type What = string | (() => string);
type Ev = Timed & { what: What; fn: () => void };

const describe = (what: What): string => (typeof what === 'string' ? what : what());

interface Node {
  id: string;
  disk: SimDisk;
  /** The disk as this incarnation sees it (after a crash, the old one's calls never settle). */
  io: DiskIo;
  incarnation: number;
  alive: boolean;
  /** Stopped for good (removed from the cluster). */
  retired: boolean;
  join: boolean;
  starting: boolean;
  replica?: Replica;
  lastRole?: Role;
  /** Disk faults were armed while this incarnation ran: a failure is expected, not a bug. */
  faulted: boolean;
  /** The highest membership change this node has applied, in any incarnation. */
  confApplied: number;
}

class Sim {
  readonly rng: Prng;
  readonly q = new EventQueue<Ev>();
  now = 0;
  readonly nodes = new Map<string, Node>();
  readonly stats: ReplicaSimStats;
  readonly history: HistoryOp[] = [];
  private partitioned = new Set<string>();
  private faulty = true;
  private readonly leaderOfTerm = new Map<number, string>();
  private readonly committedTerm = new Map<number, number>();
  private maxCommitted = 0;
  private readonly appliedAt = new Map<number, { term: number; data: Buffer }>();
  private clientsBusy = 0;
  private nextValue = 0;
  private nextSnapshot = 0;
  private spare: string[] = [];
  private pendingFailure: string | undefined;

  private readonly bugs: PlantedBugs | undefined;
  /** Both ways a WAL batch is made durable run (production's default is 'dsync'). */
  private readonly syncMode: 'dsync' | 'fdatasync';

  constructor(readonly o: ReplicaSimOptions) {
    this.rng = new Prng(o.seed);
    this.bugs = plantedBugs(o.plant);
    const drawn = this.rng.chance(0.5) ? 'fdatasync' : 'dsync';
    this.syncMode = o.plant === 'skipSync' ? 'fdatasync' : (o.syncMode ?? drawn);
    const n = o.nodes ?? this.rng.pick([1, 3, 3, 5]);
    this.stats = {
      nodes: n, events: 0, messages: 0, dropped: 0, duplicated: 0, partitions: 0, crashes: 0, diskFaults: 0, elections: 0,
      writes: 0, acked: 0, reads: 0, readsServed: 0, tableChanges: 0, deviceSnapshots: 0, deviceSnapshotsChecked: 0, confChanges: 0, transfers: 0, snapshotsInstalled: 0, snapshotLz4Chunks: 0, strangerMessages: 0,
    };
    for (let i = 1; i <= n; i++) this.addNode(`n${i}`, false);
    this.spare = n === 1 ? [] : [`n${n + 1}`];
  }

  /** Uniform in [0, 1). */
  uniform(): number {
    return this.rng.next() / 4294967296;
  }

  trace(line: string): void {
    this.o.trace?.(`${String(this.now).padStart(7)} ${line}`);
  }

  at(delay: number, what: What, fn: () => void): void {
    this.q.push({ at: this.now + Math.max(0, Math.floor(delay)), what, fn });
  }

  private addNode(id: string, join: boolean): Node {
    const what = `disk ${id}`;
    const disk = new SimDisk({ seed: this.rng.int(2 ** 31), capacityBytes: DISK_BYTES, scheduler: { after: (ms, fn) => this.at(ms, what, fn) }, ...(this.o.trace ? { trace: (l: string) => this.trace(`${id} ${l}`) } : {}) });
    const n: Node = { id, disk, io: disk.io(), incarnation: 0, alive: false, retired: false, join, starting: false, faulted: false, confApplied: 0 };
    this.nodes.set(id, n);
    return n;
  }

  private founders(): Record<string, string> {
    const peers: Record<string, string> = {};
    for (const n of this.nodes.values()) if (!n.join) peers[n.id] = `${n.id}:1`;
    return this.stats.nodes === 1 ? {} : peers;
  }

  // ---- the environment of one incarnation -------------------------------------------

  /** Timer rate per node (leaseReads: bounded clock drift; 1 otherwise). */
  private readonly timerRate = new Map<string, number>();
  private driftRng: Prng | undefined;

  private clock(n: Node, inc: number): Clock {
    let rate = this.timerRate.get(n.id);
    if (rate === undefined) {
      this.driftRng ??= new Prng(this.o.seed ^ 0x5eed1ea5);
      rate = this.o.leaseReads ? 0.92 + (0.08 * this.driftRng.int(1000)) / 1000 : 1;
      this.timerRate.set(n.id, rate);
    }
    const r = rate;
    const timer = `timer ${n.id}`;
    const turn = `turn ${n.id}`;
    return {
      now: () => this.now,
      after: (ms, fn) => {
        let live = true;
        this.at(ms * r, timer, () => live && n.incarnation === inc && fn());
        return () => {
          live = false;
        };
      },
      defer: (fn) => this.at(0, turn, () => n.incarnation === inc && fn()),
    };
  }

  private linked(a: string, b: string): boolean {
    return !this.partitioned.has(a) && !this.partitioned.has(b);
  }

  /** How often each node was cut off by a partition (each cut breaks its connections). */
  private readonly cuts = new Map<string, number>();

  /**
   * The TCP connection from a to b: a new number after b restarts or either is
   * cut off by a partition, undefined while b is down or they are apart.
   */
  private connectionId(a: string, b: string): number | undefined {
    const target = this.nodes.get(b);
    if (!target?.alive || !this.linked(a, b)) return undefined;
    return target.incarnation * 1_000_000 + (this.cuts.get(a) ?? 0) + (this.cuts.get(b) ?? 0);
  }

  private transport(n: Node, inc: number): PeerTransport {
    const peers = new Map<string, string>();
    const live = (): boolean => n.incarnation === inc && n.alive;
    const sim = this;
    const t: PeerTransport = {
      clusterId: '',
      send: (m) => {
        if (!live()) return;
        sim.stats.messages++;
        if (sim.o.trace) sim.trace(`send ${MessageType[m.type]} ${m.from}->${m.to} term ${m.term} index ${m.index} logTerm ${m.logTerm} commit ${m.commit}${m.reject ? ` reject hint ${m.rejectHint}` : ''} entries ${m.entries.length}${m.snapshot ? ` snap ${m.snapshot.index}` : ''}`);
        // Through the real codec: what the peer gets is what the wire carries.
        const wire = Buffer.concat(encodeRaftMessage(m));
        const copies = sim.faulty && sim.rng.chance(0.02) ? 2 : 1;
        if (copies === 2) sim.stats.duplicated++;
        for (let i = 0; i < copies; i++) {
          if (!sim.linked(n.id, m.to) || (sim.faulty && sim.rng.chance(0.05))) {
            sim.stats.dropped++;
            continue;
          }
          const delay = sim.faulty ? sim.rng.range(1, 60) : sim.rng.range(1, 4);
          sim.at(delay, () => `deliver ${MessageType[m.type]} ${m.from}->${m.to}`, () => sim.deliver(m.to, wire));
        }
      },
      sendFrame: (peer, f) => {
        const target = sim.nodes.get(peer);
        if (!live() || !sim.linked(n.id, peer) || !target?.alive) return false;
        // A stream is one TCP connection: it breaks when the peer's process
        // restarts or a partition cuts either off (the sender's next write
        // fails, as on a reset socket), and what was in flight is lost.
        const key = `${n.id}>${peer}`;
        const conn = sim.connectionId(n.id, peer);
        if (f.kind === 'begin') sim.linkEpoch.set(key, conn!);
        const epoch = sim.linkEpoch.get(key);
        if (f.kind !== 'result' && epoch !== conn) return false;
        const copy: SnapshotFrame = f.kind === 'chunk' ? { ...f, data: Buffer.from(f.data) } : f;
        if (f.kind === 'chunk' && f.lz4) sim.stats.snapshotLz4Chunks++;
        // In order per link.
        const at = Math.max(sim.now + 1, (sim.linkClock.get(key) ?? 0) + 1);
        sim.linkClock.set(key, at);
        const sentTo = target.incarnation;
        sim.at(at - sim.now, () => `frame ${f.kind} ${n.id}->${peer}`, () => {
          const to = sim.nodes.get(peer);
          if (!to?.alive || !to.replica || to.incarnation !== sentTo || sim.connectionId(n.id, peer) !== conn) return;
          sim.guard(to, () => to.replica!.onFrame(n.id, copy));
        });
        return true;
      },
      waitDrain: (peer) =>
        new Promise((resolve, reject) => {
          const key = `${n.id}>${peer}`;
          const epoch = sim.linkEpoch.get(key);
          sim.at(1, `drain ${n.id}`, () => {
            if (epoch !== undefined && sim.connectionId(n.id, peer) !== epoch) reject(new Error(`peer ${peer} disconnected`));
            else resolve();
          });
        }),
      // A TCP connection to the peer's process: a new one after each restart or cut, none while it is down or apart.
      connection: (peer) => sim.connectionId(n.id, peer),
      tellRemoved: (peer) => sim.at(sim.rng.range(1, 10), `removed ${peer}`, () => {
        const p = sim.nodes.get(peer);
        if (p?.alive && p.replica) sim.guard(p, () => p.replica!.onRemovedBy(n.id));
      }),
      addPeer: (id, address) => void peers.set(id, address),
      removePeer: (id) => void peers.delete(id),
      peerAddress: (id) => peers.get(id),
      status: (): LinkStatus[] =>
        [...peers].map(([id, address]) => ({ id, address, connected: !!sim.nodes.get(id)?.alive && sim.linked(n.id, id), droppedMessages: 0 })),
      connectAll: () => undefined,
      close: async () => undefined,
    };
    return t;
  }

  private readonly linkClock = new Map<string, number>();
  /** The peer incarnation a snapshot stream's connection was made to. */
  private readonly linkEpoch = new Map<string, number>();

  private host(n: Node): Host {
    const disk = n.disk;
    const free = (): number => Math.max(0, disk.capacityBytes - disk.usedBytes());
    return {
      space: {
        wouldBreachReserve: (bytes) => free() - bytes < RESERVE,
        admit: () => undefined,
        report: () => ({ freeBytes: free(), totalBytes: DISK_BYTES, reserveBytes: RESERVE }),
      },
      probeFileSize: async () => undefined,
      snapshots: (() => {
        const real = diskSnapshots(`/${n.id}`, n.id, n.io);
        return {
          ...real,
          installFiles: async (meta: SnapshotMetadata) => {
            this.stats.snapshotsInstalled++;
            await real.installFiles(meta);
          },
        };
      })(),
    };
  }

  // ---- nodes -----------------------------------------------------------------------------

  async start(n: Node): Promise<void> {
    // One process per data directory (the runtime holds a lock on it): a restart of a running node is a no-op.
    if (n.alive || n.starting || n.retired) return;
    n.starting = true;
    try {
      await this.open(n);
    } finally {
      n.starting = false;
    }
  }

  private async open(n: Node): Promise<void> {
    const inc = ++n.incarnation;
    n.io = n.disk.io();
    // Faults armed before the heal may still surface in a process that ran through it; a restart after it starts clean.
    if (!this.faulty) n.faulted = false;
    const clock = this.clock(n, inc);
    const transport = this.transport(n, inc);
    let opened;
    try {
      opened = await openReplicaState({
        dataDir: `/${n.id}`,
        nodeId: n.id,
        peers: this.founders(),
        join: n.join,
        logger: silent,
        disk: n.io,
        now: () => this.now,
        wal: {
          defer: (fn: () => void) => clock.defer(fn),
          salt: () => 1 + this.rng.int(2 ** 32 - 2),
          segmentBytes: 1024 * 1024,
          syncMode: this.syncMode,
          ...(this.o.plant === 'skipSync' ? { testingSkipSyncEvery: 3 } : {}),
        },
        checkStart: checkStartState,
      });
    } catch (err) {
      if (n.faulted) {
        // An injected fault while opening: the operator restarts it later.
        this.trace(`${n.id} open failed (${(err as Error).message}); retry later`);
        this.at(500, `restart ${n.id}`, () => void this.start(n).catch((e) => this.fail(e)));
        return;
      }
      violation(`${n.id} cannot open its data directory: ${(err as Error).message}`);
    }
    if (n.incarnation !== inc) return;
    // A membership change it applied holds after any crash: the commit index
    // covering it was durable first, so the node restarts in the configuration
    // it had (seed 40016828: three nodes restarted in the one before a
    // removal, whose removed voter had retired, and no leader could be elected).
    const recovered = Math.max(opened.wal.hardState().commit, opened.wal.snapshotMetadata().index);
    if (recovered < n.confApplied) violation(`${n.id} applied the membership change at ${n.confApplied} but restarted with commit index ${recovered}: its configuration went back`);
    if (this.o.plant === 'applyTwice') opened.store.testingApplyTwice = true;
    transport.clusterId = opened.store.clusterId;
    for (const [id, address] of Object.entries({ ...opened.store.memberAddresses(), ...this.founders() })) if (id !== n.id) transport.addPeer(id, address);
    const replica = new Replica(
      { clock, transport, log: opened.wal, store: opened.store, host: this.host(n), rand: (k) => this.rng.int(k), logger: silent },
      { nodeId: n.id, devices: [{ name: 'default', size: DEVICE_BYTES }], tuning: { checkpointEntries: 40, walRetainEntriesMax: 30 }, ...(this.bugs ? { plantedBugs: this.bugs } : {}), ...(this.o.leaseReads ? { leaseReads: true } : {}) },
    );
    n.replica = replica;
    n.alive = true;
    n.lastRole = undefined;
    replica.onFatal((err) => {
      if (n.incarnation !== inc) return;
      if (!n.faulted) this.fail(new Violation(`${n.id} failed without an injected fault: ${err.message} (disk used ${n.disk.usedBytes()} of ${n.disk.capacityBytes})`));
      this.crash(n, `fatal: ${err.message}`);
      this.at(this.rng.range(200, 1500), `restart ${n.id}`, () => void this.start(n).catch((e) => this.fail(e)));
    });
    replica.onRemoved(() => {
      this.at(this.rng.range(10, 200), `retire ${n.id}`, () => {
        if (n.incarnation === inc && !n.retired) {
          n.retired = true;
          this.crash(n, 'removed from the cluster');
        }
      });
    });
    this.hookApply(n, replica);
    this.trace(`${n.id} started (incarnation ${inc}, applied ${replica.processedIndex})`);
    await replica.start(opened.founded);
    // Members publish their version as real nodes do: once all have, writes go
    // out compressed (COMPRESSED_WRITE), so the faults here reach that path too.
    if (n.incarnation === inc && n.alive) new MemberPublisher(replica).publish({ adminAddress: '', nbdAddress: '', version: VERSION });
  }

  crash(n: Node, why: string): void {
    if (!n.alive) return;
    this.stats.crashes++;
    n.alive = false;
    n.replica?.halt();
    n.replica = undefined;
    n.incarnation++;
    n.disk.crash();
    this.trace(`${n.id} crashed: ${why}`);
    const ops = this.inFlight.get(n);
    this.inFlight.delete(n);
    for (const op of ops ?? []) op.fail();
  }

  /** Records what every replica applies: the same entry at the same index everywhere. */
  private hookApply(n: Node, r: Replica): void {
    const store = r.store;
    const apply = store.applyBatch.bind(store);
    store.applyBatch = (entries: readonly Entry[], ...rest) => {
      for (const e of entries) {
        // Checked by the leader that proposed it (a newer leader knows no match for anyone yet).
        if (e.type === EntryType.ConfChange && r.raw.basicStatus().role === Role.Leader && e.term === r.raw.basicStatus().term) this.checkPromotion(n, r, e);
        if (e.type === EntryType.ConfChange) n.confApplied = Math.max(n.confApplied, e.index);
        const seen = this.appliedAt.get(e.index);
        if (!seen) this.appliedAt.set(e.index, { term: e.term, data: e.data });
        else if (seen.term !== e.term || !seen.data.equals(e.data)) this.fail(new Violation(`state machine safety: ${n.id} applies ${e.index}/${e.term}, another replica applied ${e.index}/${seen.term}`));
      }
      return apply(entries, ...rest);
    };
  }

  /** A learner becomes a voter only once it holds the log: promoted with nothing replicated, it can stall every commit. */
  private checkPromotion(n: Node, r: Replica, e: Entry): void {
    const cc = decodeConfChange(e.data);
    const st = r.raw.status();
    for (const ch of cc.changes) {
      if (ch.type !== ConfChangeType.AddNode || !st.confState.learners.includes(ch.nodeId)) continue;
      const match = st.progress[ch.nodeId]?.match ?? 0;
      if (match < r.log.snapshotMetadata().index || match === 0) this.fail(new Violation(`promotion: ${n.id} makes learner ${ch.nodeId} a voter at match ${match} (snapshot ${r.log.snapshotMetadata().index}, commit ${st.commit}): it has not caught up`));
    }
  }

  guard(n: Node, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.fail(new Violation(`${n.id} threw on peer input: ${(err as Error).stack ?? err}`));
    }
  }

  deliver(to: string, wire: Buffer): void {
    const n = this.nodes.get(to);
    if (!n?.alive || !n.replica) return;
    let f;
    try {
      f = decodeFrame(wire.subarray(4));
    } catch {
      // The real transport closes the link on a frame it cannot decode; nothing reaches the replica.
      this.stats.dropped++;
      return;
    }
    if (f.kind !== FrameKind.Raft) violation('codec returned a non-Raft frame for a Raft message');
    const m = f.message;
    if (m.type === MessageType.VoteResp || m.type === MessageType.PreVoteResp) this.noteVote(n);
    this.guard(n, () => n.replica!.onPeerMessage(m));
  }

  private noteVote(_n: Node): void {
    // Votes are checked where they count: a new leader's tally (checkLeader).
  }

  fail(err: unknown): void {
    this.pendingFailure ??= err instanceof Violation ? err.message : `simulator error: ${(err as Error).stack ?? err}`;
  }

  // ---- faults, operators, clients ----------------------------------------------------------

  private members(): Node[] {
    return [...this.nodes.values()].filter((n) => !n.retired);
  }

  private leader(): Node | undefined {
    let best: Node | undefined;
    for (const n of this.nodes.values()) {
      if (!n.alive || !n.replica) continue;
      const b = n.replica.raw.basicStatus();
      if (b.role === Role.Leader && (!best || b.term > best.replica!.raw.basicStatus().term)) best = n;
    }
    return best;
  }

  private fault(): void {
    if (!this.faulty) return;
    const r = this.uniform();
    const live = this.members().filter((n) => n.alive);
    if (r < 0.25 && live.length > 0) {
      const n = this.rng.pick(live);
      this.crash(n, 'killed');
      this.at(this.rng.range(100, 2000), `restart ${n.id}`, () => void this.start(n).catch((e) => this.fail(e)));
    } else if (r < 0.45) {
      const cut = new Set(this.members().filter(() => this.rng.chance(0.3)).map((n) => n.id));
      // TCP connections of a node cut off break (as the transport's idle
      // timeout breaks them): streams over them fail instead of waiting.
      for (const id of cut) if (!this.partitioned.has(id)) this.cuts.set(id, (this.cuts.get(id) ?? 0) + 1);
      this.partitioned = cut;
      this.stats.partitions++;
      this.trace(`partition: ${[...this.partitioned].join(',') || 'none'}`);
    } else if (r < 0.55) {
      this.partitioned.clear();
    } else if (r < 0.7 && live.length > 0) {
      const n = this.rng.pick(live);
      n.faulted = true;
      const fault = this.rng.pick(['writeEio', 'tornWrite', 'syncEio', 'full'] as const);
      if (fault === 'full') n.disk.capacityBytes = n.disk.usedBytes() + this.rng.range(0, 2 * RESERVE);
      else n.disk.arm(fault as SimFault, { skip: this.rng.int(20) });
      this.stats.diskFaults++;
      this.trace(`${n.id} disk fault armed`);
    } else if (r < 0.8) {
      void this.operator();
    } else {
      this.stranger();
    }
    this.at(this.rng.range(200, 1500), 'fault', () => this.fault());
  }

  /** A peer outside the configuration speaks: nothing it says may change anything. */
  private stranger(): void {
    const live = this.members().filter((n) => n.alive && n.replica);
    if (live.length === 0) return;
    const n = this.rng.pick(live);
    // Votes, proposals and TimeoutNow at any term (up to raftTermMax), and a
    // leader's App or Heartbeat only from a term before the node's own: a
    // peer that holds the cluster secret and forges a current leader's
    // messages is byzantine, beyond what Raft (or etcd) defends against.
    const own = n.replica!.raw.basicStatus().term;
    const leaderish = this.rng.chance(0.4);
    const type = leaderish ? this.rng.pick([MessageType.App, MessageType.Heartbeat]) : this.rng.pick([MessageType.Vote, MessageType.PreVote, MessageType.Prop, MessageType.TimeoutNow]);
    const term = leaderish ? this.rng.int(Math.max(1, own)) : this.rng.chance(0.5) ? this.rng.int(1000) : limits.raftTermMax;
    const m: Message = message({ type, from: 'x9', to: n.id, term, index: this.rng.int(100), logTerm: this.rng.int(term + 1), commit: this.rng.int(100) });
    this.stats.strangerMessages++;
    this.deliver(n.id, Buffer.concat(encodeRaftMessage(m)));
  }

  private async operator(): Promise<void> {
    const l = this.leader();
    if (!l?.replica) return;
    const r = l.replica;
    const cs = r.raw.status().confState;
    const pick = this.uniform();
    try {
      if (pick < 0.3 && this.spare.length > 0) {
        const id = this.spare.shift()!;
        const n = this.addNode(id, true);
        await this.start(n);
        this.stats.confChanges++;
        await r.membership.addNode(id, `${id}:1`, { wait: false });
      } else if (pick < 0.45 && cs.voters.length > 3) {
        const victim = this.rng.pick(cs.voters.filter((v) => v !== l.id));
        this.stats.confChanges++;
        await r.membership.removeNode(victim);
      } else if (pick < 0.7 && cs.voters.length > 1) {
        this.stats.transfers++;
        await r.membership.transferLeader(this.rng.pick(cs.voters.filter((v) => v !== l.id)));
      } else if (pick < 0.85 && r.store.device('default')) {
        // Proposed directly: members here publish no version (src/replica/snapshot-ops.ts checks that).
        this.stats.deviceSnapshots++;
        const snaps = r.store.snapshots(r.store.device('default')!.id);
        if (snaps.length < 3 && (snaps.length === 0 || this.rng.chance(0.6))) await r.propose((id) => encodeSnapshotCreate(id, 'default', `s${++this.nextSnapshot}`, this.now));
        else await r.propose((id) => encodeSnapshotDelete(id, 'default', this.rng.pick(snaps).name));
      } else {
        this.stats.tableChanges++;
        const aux = r.store.device('aux');
        if (!aux) await r.membership.createDevice('aux', 64 * 1024);
        else if (this.rng.chance(0.5)) await r.membership.resizeDevice('aux', aux.size + 4096);
        else await r.membership.deleteDevice('aux');
      }
    } catch (err) {
      this.trace(`operator: ${(err as Error).message}`);
    }
  }

  private value(): string {
    return `v${this.o.seed}.${++this.nextValue}`;
  }

  /** One client operation on a random serving node; the next follows when it is answered. */
  private client(c: number): void {
    const serving = this.members().filter((n) => n.alive && n.replica?.devices.get('default'));
    if (serving.length === 0 || (!this.faulty && this.now > this.quiesceAt)) {
      if (this.faulty || this.now <= this.quiesceAt) this.at(50, `client ${c}`, () => this.client(c));
      return;
    }
    const n = this.rng.pick(serving);
    const dev = n.replica!.devices.get('default')!;
    const block = this.rng.int(BLOCKS);
    const kind = this.uniform();
    const call = this.now;
    this.clientsBusy++;
    let answered = false;
    const inFlight = { fail: (): void => undefined, what: () => `${n.id} block ${block} kind ${kind.toFixed(2)} at ${call}` };
    const done = (): void => {
      if (answered) return;
      answered = true;
      this.inFlight.get(n)?.delete(inFlight);
      this.clientsBusy--;
      this.at(this.rng.range(1, 30), `client ${c}`, () => this.client(c));
    };
    // A crash of the node resets the client's connection: the answer never comes.
    inFlight.fail = done;
    let set = this.inFlight.get(n);
    if (!set) this.inFlight.set(n, (set = new Set()));
    set.add(inFlight);
    if (block < CHECKED && kind < 0.6) {
      const value = this.value();
      const data = Buffer.alloc(BLOCK);
      data.write(value);
      this.stats.writes++;
      const op: HistoryOp = { client: `${c}@${n.id}`, op: 'write', block, value, call, return: Number.MAX_SAFE_INTEGER, status: 'unknown' };
      this.history.push(op);
      dev.write(block * BLOCK, data).then(
        () => {
          this.stats.acked++;
          op.return = this.now;
          op.status = 'ok';
          done();
        },
        () => done(),
      );
    } else if (block < CHECKED) {
      this.stats.reads++;
      dev.read(block * BLOCK, BLOCK).then(
        (buf) => {
          this.stats.readsServed++;
          this.history.push({ client: `${c}@${n.id}`, op: 'read', block, value: decodeValue(buf), call, return: this.now, status: 'ok' });
          done();
        },
        () => done(),
      );
    } else {
      const p = kind < 0.3 ? dev.trim(block * BLOCK, BLOCK) : kind < 0.5 ? dev.writeZeroes(block * BLOCK, BLOCK) : kind < 0.8 ? dev.write(block * BLOCK, Buffer.alloc(BLOCK, c + 1)) : dev.flush();
      p.then(done, done);
    }
  }

  // ---- invariants -------------------------------------------------------------------------

  private check(): void {
    for (const n of this.nodes.values()) {
      if (!n.alive || !n.replica) continue;
      const raft = raftForTesting(n.replica.raw);
      if (raft.role === Role.Leader && n.lastRole !== Role.Leader) this.checkLeader(n);
      n.lastRole = raft.role;
      this.checkCommit(n);
    }
  }

  private checkLeader(n: Node): void {
    const raft = raftForTesting(n.replica!.raw);
    this.stats.elections++;
    const other = this.leaderOfTerm.get(raft.term);
    if (other !== undefined && other !== n.id) violation(`election safety: ${other} and ${n.id} both lead term ${raft.term}`);
    this.leaderOfTerm.set(raft.term, n.id);
    if (raft.log.lastIndex() < this.maxCommitted) violation(`leader completeness: ${n.id} leads term ${raft.term} with last index ${raft.log.lastIndex()} < committed ${this.maxCommitted}`);
    for (let i = Math.max(raft.log.firstIndex(), 1); i <= this.maxCommitted; i++) {
      const t = this.committedTerm.get(i);
      if (t !== undefined && raft.log.term(i) !== t) violation(`leader completeness: ${n.id} (term ${raft.term}) has ${i}/${raft.log.term(i)}, committed ${i}/${t}`);
    }
    const e = n.replica!.raw.lastElection();
    const cs = n.replica!.raw.status().confState;
    if (e?.vote && e.term === raft.term) {
      // A learner a pending change promotes is asked too (its vote only adds
      // the pending configuration's quorum to the applied one's): never a
      // node outside both, and the applied configuration's own voters must
      // have elected the leader without it.
      const pending = raft.trk.pendingConfigs();
      const applied = (id: string): boolean => cs.voters.includes(id) || cs.votersOutgoing.includes(id);
      const appliedVotes = new Map<string, boolean>();
      for (const id of e.vote.granted) {
        if (applied(id)) appliedVotes.set(id, true);
        else if (!pending.some((p) => p.incoming.includes(id) || p.outgoing.includes(id))) violation(`learners never vote: ${n.id} won term ${raft.term} with a vote from ${id}, not a voter`);
      }
      if (jointVoteResult(cs.voters, cs.votersOutgoing, appliedVotes) !== VoteResult.Won) {
        violation(`learners never vote: ${n.id} won term ${raft.term} without a quorum of its configuration's voters (${[...appliedVotes.keys()].join(' ')})`);
      }
    }
  }

  private checkCommit(n: Node): void {
    const raft = raftForTesting(n.replica!.raw);
    const c = raft.log.committed;
    if (c <= this.maxCommitted) return;
    for (let i = Math.max(this.maxCommitted + 1, raft.log.firstIndex()); i <= c; i++) {
      const t = raft.log.term(i);
      const prev = this.committedTerm.get(i);
      if (prev !== undefined && prev !== t) violation(`commit: ${n.id} commits ${i}/${t}, previously committed ${i}/${prev}`);
      this.committedTerm.set(i, t);
    }
    this.maxCommitted = c;
  }

  private end = 0;
  /** Clients issue nothing new after this (ms). */
  private quiesceAt = 0;
  private readonly inFlight = new Map<Node, Set<{ fail: () => void; what: () => string }>>();

  async run(): Promise<void> {
    const faultyMs = this.o.faultyMs ?? 20_000;
    const healMs = this.o.healMs ?? 30_000;
    this.end = faultyMs + healMs;
    this.quiesceAt = faultyMs + Math.min(this.o.healTrafficMs ?? 1_000, healMs - 2 * limits.requestTimeoutMs);
    for (const n of this.nodes.values()) this.at(this.rng.int(20), `start ${n.id}`, () => void this.start(n).catch((e) => this.fail(e)));
    this.at(500, 'fault', () => this.fault());
    for (let c = 0; c < 3; c++) this.at(300 + c, `client ${c}`, () => this.client(c));
    this.at(faultyMs, 'heal', () => this.heal());
    await this.runUntil(() => this.now > this.quiesceAt && this.converged(), this.end);
    let done = false;
    const final = this.finalChecks().then(
      () => undefined,
      (err: unknown) => err,
    );
    void final.then(() => {
      done = true;
    });
    // The final reads go through the simulated disk: events keep running.
    await this.runUntil(() => done, this.end + 60_000);
    const err = await final;
    if (err) throw err;
  }

  /** Runs events in time order until `stop()` or the queue passes `until`. */
  private async runUntil(stop: () => boolean, until: number): Promise<void> {
    while (this.q.size > 0 && !stop()) {
      const ev = this.q.pop()!;
      if (ev.at > until) {
        // Not yet: it stays queued for a later run.
        this.q.push({ at: ev.at, what: ev.what, fn: ev.fn });
        break;
      }
      this.now = ev.at;
      // A seed runs ~11k events on average: 27 times that is a
      // protocol loop that keeps the cluster from converging (a livelock).
      if (++this.stats.events > EVENTS_MAX) violation(`liveness: ${EVENTS_MAX} events by ${this.now} ms without the run ending (a livelock; last: ${describe(ev.what)})`);
      ev.fn();
      // Every promise reaction the event set off runs before the next event.
      await new Promise((r) => setImmediate(r));
      if (this.pendingFailure) violation(this.pendingFailure);
      this.check();
    }
  }

  private heal(): void {
    this.faulty = false;
    this.partitioned.clear();
    for (const n of this.nodes.values()) {
      n.disk.disarm();
      n.disk.capacityBytes = DISK_BYTES;
      if (!n.alive && !n.retired) this.at(this.rng.range(1, 100), `restart ${n.id}`, () => void this.start(n).catch((e) => this.fail(e)));
    }
    this.trace('healed');
  }

  /**
   * The end state the final checks ask for, held now (stricter: every member
   * applied to the leader's last index, nothing of the leader's unapplied).
   * Until it holds the run goes on to healMs, and the final checks judge.
   */
  private converged(): boolean {
    if (this.clientsBusy > 0) return false;
    const l = this.leader();
    if (!l?.replica) return false;
    const st = l.replica.raw.status();
    const last = st.lastIndex;
    if (st.commit !== last || l.replica.processedIndex !== last) return false;
    for (const id of [...st.confState.voters, ...st.confState.learners]) {
      const n = this.nodes.get(id);
      if (!n?.alive || !n.replica || n.replica.processedIndex !== last) return false;
    }
    return true;
  }

  private async finalChecks(): Promise<void> {
    const l = this.leader();
    if (!l?.replica) {
      const who = [...this.nodes.values()].map((n) => `${n.id}:${n.alive ? `${n.replica?.raw.basicStatus().role}@${n.replica?.raw.basicStatus().term}` : 'down'}`);
      violation(`liveness: no leader after the faults healed (${who.join(' ')})`);
    }
    if (this.clientsBusy > 0) {
      const open = [...this.inFlight.values()].flatMap((set) => [...set].map((o) => o.what()));
      violation(`liveness: ${this.clientsBusy} client operations unanswered after the faults healed: ${open.join('; ')}`);
    }
    const cs = l.replica.raw.status().confState;
    const members = [...new Set([...cs.voters, ...cs.learners])].map((id) => this.nodes.get(id)!);
    for (const n of members) {
      if (!n.alive || !n.replica) violation(`liveness: member ${n.id} is down after healing`);
      if (n.replica.processedIndex < l.replica.processedIndex) violation(`liveness: ${n.id} applied ${n.replica.processedIndex}, leader ${l.id} applied ${l.replica.processedIndex}`);
    }
    // Every block identical on every member, read from its own files.
    const dev = l.replica.store.device('default');
    if (dev) {
      for (let b = 0; b < BLOCKS; b++) {
        const ref = await l.replica.store.read(dev.id, b * BLOCK, BLOCK);
        for (const n of members) {
          const got = await n.replica!.store.read(dev.id, b * BLOCK, BLOCK);
          if (!got.equals(ref)) violation(`replicas differ: block ${b} on ${n.id} is ${decodeValue(got)}, on leader ${l.id} ${decodeValue(ref)}`);
        }
        if (b < CHECKED) this.history.push({ client: 'final', op: 'read', block: b, value: decodeValue(ref), call: this.now, return: this.now + 1, status: 'ok' });
      }
    }
    // Every snapshot the same on every member (each crashed and replayed on its own schedule, or caught up from a Raft snapshot).
    if (dev) {
      const ids = (n: Node) => n.replica!.store.snapshots(dev.id).map((x) => `${x.id}:${x.name}`).join(',');
      for (const n of members) if (ids(n) !== ids(l)) violation(`snapshot lists differ: ${n.id} has [${ids(n)}], leader ${l.id} [${ids(l)}]`);
      for (const snap of l.replica.store.snapshots(dev.id)) {
        this.stats.deviceSnapshotsChecked++;
        let ref: { id: string; bytes: Buffer } | undefined;
        for (const n of members) {
          // Every member serves it, one that caught up from a Raft snapshot too (the snapshot's blocks came with it).
          const why = n.replica!.store.snapshotUnavailable(dev.id, snap.id);
          if (why !== undefined) violation(`snapshot ${snap.name} (index ${snap.id}) not served by ${n.id}: ${why}`);
          const bytes = await n.replica!.store.readSnapshot(dev.id, snap.id, 0, snap.size);
          if (!ref) ref = { id: n.id, bytes };
          else if (!bytes.equals(ref.bytes)) violation(`snapshot ${snap.name} (index ${snap.id}) differs between ${ref.id} and ${n.id}`);
        }
      }
    }
    const result = checkHistory(this.history);
    if (!result.ok) {
      const v = result.violations[0]!;
      violation(`linearizability: block ${v.block}: ${v.message}`);
    }
  }
}

/** ReplicaSimResult.digest. */
function digestOf(sim: Sim, error: string | undefined): string {
  const h = createHash('sha256');
  h.update(`${JSON.stringify(sim.stats)}|${sim.now}|${sim.rng.fingerprint()}|${error?.split('\n')[0] ?? 'ok'}\n`);
  for (const op of sim.history) h.update(`${op.client} ${op.op} ${op.block} ${op.value} ${op.call} ${op.return} ${op.status}\n`);
  for (const n of sim.nodes.values()) {
    const st = n.replica?.raw.basicStatus();
    h.update(`${n.id} ${n.alive} ${n.retired} ${n.incarnation} ${n.replica?.processedIndex} ${st?.role} ${st?.term} ${n.disk.usedBytes()} ${n.disk.fingerprint()} ${JSON.stringify(n.disk.stats)}\n`);
  }
  return h.digest('hex').slice(0, 16);
}

function decodeValue(buf: Buffer): string | null {
  const end = buf.indexOf(0);
  const s = buf.subarray(0, end < 0 ? buf.length : end).toString('latin1');
  return s === '' ? null : s;
}

export async function runReplicaSeed(o: ReplicaSimOptions): Promise<ReplicaSimResult> {
  const sim = new Sim(o);
  // An I/O error nobody observes: in production the node's safety net would exit on it (a crash, not a clean failure).
  const unobserved = (err: unknown): void => sim.fail(new Violation(`unobserved rejection: ${(err as Error).stack ?? err}`));
  process.on('unhandledRejection', unobserved);
  try {
    await sim.run();
    return { seed: o.seed, ok: true, stats: sim.stats, digest: digestOf(sim, undefined) };
  } catch (err) {
    const error = err instanceof Violation ? err.message : `simulator error: ${(err as Error).stack ?? err}`;
    return { seed: o.seed, ok: false, error, stats: sim.stats, digest: digestOf(sim, error) };
  } finally {
    process.off('unhandledRejection', unobserved);
  }
}

export type { SimDiskStats };
