// A seeded fuzzer of authenticated peer frames against a live cluster.
//
// It knows the cluster secret, so its frames pass the handshake and carry
// valid MACs: what is fuzzed is what lies behind authentication — the codec's
// bounds, the membership check in front of Raft, the snapshot receiver.
// Links claim ids outside the configuration (a member's id is refused while
// the member is connected), and send valid framing around random and mutated
// Raft messages of every type: out-of-range terms, indexes and ids, truncated
// and oversized entries, snapshot frames out of order, stray control frames.
// Meanwhile a client writes through NBD; afterwards every node must be up,
// still committing, and return every acknowledged write.
//
// Everything random comes from one seed (XDEVICE_SEED replays a run).
import { Prng } from '../../sim/prng.ts';
import { PeerClient } from '../helpers/peer-client.ts';
import type { Cluster } from '../helpers/launcher.ts';
import { limits } from '../../../src/limits.ts';
import {
  FrameKind,
  encodePing,
  encodeRaftMessage,
  encodeRemoved,
  encodeSnapBegin,
  encodeSnapBlocks,
  encodeSnapChunk,
  encodeSnapEnd,
  encodeSnapResult,
} from '../../../src/cluster/codec.ts';
import { encodeWrite, encodeCreateDevice } from '../../../src/device/commands.ts';
import { encodeStoreState } from '../../../src/device/checkpoint.ts';
import { compressBlock } from '../../../src/device/lz4.ts';
import { ConfChangeTransition, ConfChangeType, encodeConfChange } from '../../../src/raft/confchange.ts';
import { EntryType, MessageType, message, type Entry, type Message } from '../../../src/raft/types.ts';

export interface FuzzStats {
  frames: number;
  handshakes: number;
  linksClosed: number;
  /** Batches of well-formed frames after which the link was closed anyway (should be 0). */
  unexpectedCloses: number;
  writesAcked: number;
  writesFailed: number;
}

const LINKS_PER_NODE = 3;
const BIG = [limits.raftTermMax + 1, 2 ** 50, Number.MAX_SAFE_INTEGER, 2 ** 53 - 2];

function randomBytes(r: Prng, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = r.int(256);
  return b;
}

function smallNumber(r: Prng): number {
  return r.pick([0, 1, 2, r.int(100), r.int(1_000_000), limits.raftTermMax]);
}

function entryData(r: Prng): Buffer {
  switch (r.int(4)) {
    case 0:
      return encodeWrite({ clientId: r.int(1000), seq: r.int(1000), firstUnacked: 0 }, r.int(20), r.int(64) * 4096, randomBytes(r, r.pick([0, 512, 4096])));
    case 1:
      return encodeConfChange({ transition: ConfChangeTransition.Auto, changes: [{ type: r.pick([ConfChangeType.AddNode, ConfChangeType.RemoveNode, ConfChangeType.AddLearnerNode]), nodeId: r.pick(['ghost', 'n1', 'n2', 'n3']) }] });
    case 2:
      return encodeCreateDevice({ clientId: 1, seq: r.int(100), firstUnacked: 0 }, `fz${r.int(5)}`, 4096 * (1 + r.int(10)));
    default:
      return randomBytes(r, r.int(2048));
  }
}

/** Types a node sends to another; the rest are local to a node and a protocol error on the wire. */
const WIRE_TYPES = [
  MessageType.Prop, MessageType.App, MessageType.AppResp, MessageType.Vote, MessageType.VoteResp, MessageType.PreVote, MessageType.PreVoteResp,
  MessageType.Snap, MessageType.Heartbeat, MessageType.HeartbeatResp, MessageType.TransferLeader, MessageType.TimeoutNow, MessageType.ReadIndex, MessageType.ReadIndexResp,
];

function raftMessage(r: Prng, from: string, to: string, outOfRange: boolean, anyType = false): Message {
  const entries: Entry[] = [];
  for (let i = r.int(4); i > 0; i--) entries.push({ term: smallNumber(r), index: smallNumber(r), type: r.pick([EntryType.Normal, EntryType.ConfChange]), data: entryData(r) });
  const m = message({
    type: anyType ? r.int(MessageType.ForgetLeader + 1) : r.pick(WIRE_TYPES),
    from,
    to,
    term: smallNumber(r),
    logTerm: smallNumber(r),
    index: smallNumber(r),
    commit: smallNumber(r),
    reject: r.chance(0.3),
    rejectHint: smallNumber(r),
    entries,
  });
  if (r.chance(0.1)) m.context = randomBytes(r, r.int(64));
  if (r.chance(0.1)) m.snapshot = { index: smallNumber(r), term: smallNumber(r), confState: { voters: ['n1', 'ghost'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } };
  if (outOfRange) {
    const big = r.pick(BIG);
    const field = r.int(entries.length > 0 ? 6 : 5);
    if (field === 0) m.term = big;
    else if (field === 1) m.logTerm = big;
    else if (field === 2) m.index = big;
    else if (field === 3) m.commit = big;
    else if (field === 4) m.rejectHint = big;
    else entries[0]!.term = big;
  }
  return m;
}

/** Rewrites the u32 length prefix so the framing stays valid around a mutated body. */
function reframe(body: Buffer): Buffer[] {
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length, 0);
  return [head, body];
}

function mutate(r: Prng, frame: Buffer[]): Buffer[] {
  const body = Buffer.from(Buffer.concat(frame).subarray(4));
  switch (r.int(3)) {
    case 0: // flip bytes
      for (let i = 1 + r.int(4); i > 0; i--) body[r.int(body.length)] ^= 1 << r.int(8);
      return reframe(body);
    case 1: // truncate
      return reframe(body.subarray(0, 1 + r.int(body.length)));
    default: // trailing garbage
      return reframe(Buffer.concat([body, randomBytes(r, 1 + r.int(64))]));
  }
}

function snapshotFrame(r: Prng, members: string[]): Buffer[] {
  const id = r.int(4);
  switch (r.int(7)) {
    case 0: {
      const devices = Array.from({ length: r.pick([0, 1, 3, limits.devicesMax + 1]) }, (_, i) => ({ id: r.int(8), name: `d${i}`, size: 4096 * r.int(4) }));
      const state = r.chance(0.5) ? encodeStoreState({ clusterId: '', appliedIndex: smallNumber(r), appliedTerm: 1, devices, members: {}, dedup: [] }) : randomBytes(r, r.int(256));
      return encodeSnapBegin({ snapshotId: id, metadata: { index: smallNumber(r), term: smallNumber(r), confState: { voters: members, learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } }, state });
    }
    case 1:
      return encodeSnapChunk({ snapshotId: id, file: r.int(4), offset: r.int(1 << 20), data: randomBytes(r, r.int(4096)), zeroBytes: 0 });
    case 2:
      return encodeSnapChunk({ snapshotId: id, file: r.int(4), offset: r.int(1 << 20), data: Buffer.alloc(0), zeroBytes: r.int(1 << 20) });
    case 3:
      return [encodeSnapEnd({ snapshotId: id, chunks: r.int(10), appliedEnd: smallNumber(r) })];
    case 4: {
      const blocks = Array.from({ length: r.int(4) }, () => r.int(16));
      const snapshot = { id: 1 + smallNumber(r), deviceId: 1 + r.int(8), name: `s${r.int(9)}`, createdAt: r.int(1 << 30), size: limits.snapshotBlockBytes * 16 };
      return encodeSnapBlocks({ snapshotId: id, snapshot, blocks, data: blocks.map(() => (r.chance(0.5) ? Buffer.alloc(0) : randomBytes(r, limits.snapshotBlockBytes))) });
    }
    case 5: {
      // An LZ4 chunk: a valid block, one with a lying length prefix, or noise (the prefix is bounded by the codec, the block by the receiver).
      const plain = Buffer.alloc(1 + r.int(8192), r.int(256));
      const block = r.chance(0.4) ? compressBlock(plain) : r.chance(0.5) ? Buffer.concat([u32le(r.pick([0, 1, plain.length, limits.snapshotChunkBytes + 1, 0xffffffff])), randomBytes(r, r.int(64))]) : randomBytes(r, 4 + r.int(256));
      return encodeSnapChunk({ snapshotId: id, file: r.int(4), offset: r.int(1 << 20), data: block, zeroBytes: 0, lz4: true });
    }
    default:
      return [encodeSnapResult({ snapshotId: id, ok: r.chance(0.5), reason: 'fuzz', ...(r.chance(0.2) ? { lz4: true as const } : {}) })];
  }
}

function u32le(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

export interface FuzzFrame {
  buffers: Buffer[];
  /** False if the frame is well-formed and must leave the link open; true if it may close it. */
  mayClose: boolean;
}

/** One frame to send as `self` (not a member) to `to`. */
export function fuzzFrame(r: Prng, self: string, to: string, members: string[]): FuzzFrame {
  const roll = r.int(1000);
  const keeps = (buffers: Buffer[]): FuzzFrame => ({ buffers, mayClose: false });
  const closes = (buffers: Buffer[]): FuzzFrame => ({ buffers, mayClose: true });
  if (roll < 700) return keeps(encodeRaftMessage(raftMessage(r, self, to, false))); // from a non-member: dropped
  if (roll < 820) return keeps(snapshotFrame(r, members)); // not from the leader: refused
  if (roll < 870) return keeps([encodePing(FrameKind.Ping, r.int(1 << 30))]);
  if (roll < 910) return closes(encodeRaftMessage(raftMessage(r, self, to, true))); // out of range: protocol error
  if (roll < 925) return closes(encodeRaftMessage(raftMessage(r, self, to, false, true))); // any type, local ones too
  if (roll < 945) return closes(encodeRaftMessage(raftMessage(r, r.pick(members), to, false))); // speaks for a member
  if (roll < 955) return closes(encodeRaftMessage(raftMessage(r, self, r.pick(members.filter((m) => m !== to)), false))); // addressed elsewhere
  if (roll < 985) return closes(mutate(r, encodeRaftMessage(raftMessage(r, self, to, false))));
  if (roll < 990) return closes([encodeRemoved(to)]);
  if (roll < 995) {
    // An entry header claiming more bytes than the frame holds.
    const frame = Buffer.concat(encodeRaftMessage(message({ type: MessageType.App, from: self, to, entries: [{ term: 1, index: 1, type: EntryType.Normal, data: Buffer.alloc(8) }] })));
    frame.writeUInt32LE(0xfffffff, frame.length - 8 - 4);
    return closes(reframe(frame.subarray(4)));
  }
  return closes(reframe(Buffer.concat([Buffer.from([r.pick([0, 1, 2, 3, 13, 200])]), randomBytes(r, r.int(64))])));
}

/** Sends a Ping and waits for its Pong: true if the link is still open after everything sent before it. */
async function confirm(p: PeerClient, marker: number): Promise<boolean> {
  if (!p.send([encodePing(FrameKind.Ping, marker)])) return false;
  for (;;) {
    const body = await p.next(30_000);
    if (!body) return false;
    const f = p.decode(body);
    if (f.kind === FrameKind.Pong && f.sentAtNs === marker) return true;
  }
}

export async function fuzzPeers(c: Cluster, secret: Buffer, seed: number, frames: number, log: (s: string) => void = () => {}): Promise<FuzzStats> {
  const root = new Prng(seed);
  const members = [...c.ids];
  const stats: FuzzStats = { frames: 0, handshakes: 0, linksClosed: 0, unexpectedCloses: 0, writesAcked: 0, writesFailed: 0 };
  let stop = false;

  // The workload: sequential 4 KiB writes through one node; the last acknowledged
  // content of each block must be readable everywhere at the end.
  const wr = root.fork();
  const acked = new Map<number, Buffer>();
  const doubtful = new Set<number>();
  const writer = (async () => {
    let client = await c.client(members[0]!);
    try {
      while (!stop) {
        const offset = wr.int(256) * 4096;
        const data = randomBytes(wr, 4096);
        try {
          await client.write(offset, data, { fua: true });
          if (!doubtful.has(offset)) acked.set(offset, data);
          stats.writesAcked++;
          // A steady trickle: the fuzz, not the writes, should have the CPU.
          await new Promise((resolve) => setTimeout(resolve, 10));
        } catch {
          // Not acknowledged: it may or may not land, so this block is no longer checked.
          doubtful.add(offset);
          acked.delete(offset);
          stats.writesFailed++;
          await client.close().catch(() => undefined);
          client = await c.client(members[0]!);
        }
      }
    } finally {
      await client.close().catch(() => undefined);
    }
  })();

  const perLink = Math.ceil(frames / (members.length * LINKS_PER_NODE));
  const links = members.flatMap((to, n) =>
    Array.from({ length: LINKS_PER_NODE }, async (_, k) => {
      const r = root.fork();
      const self = `fz${n}${k}`;
      const port = c.node(to).peerPort;
      let sent = 0;
      let marker = 1 << 30;
      let batch = 0;
      let p: PeerClient | undefined;
      while (sent < perLink) {
        if (!p || p.destroyed) {
          p = await PeerClient.connect(port);
          if (!(await p.handshake(secret, self, to))) throw new Error(`handshake with ${to} failed (seed ${seed})`);
          stats.handshakes++;
        }
        const f = fuzzFrame(r, self, to, members);
        if (!p.send(f.buffers)) continue;
        batch++;
        // Count a frame only once the node has read it: a Pong after it, or the
        // link closing on a frame that may close it. Well-formed frames go in
        // batches; each frame that may close ends its batch.
        if (f.mayClose || batch >= 128) {
          const open = await confirm(p, marker++);
          if (open || f.mayClose) {
            sent += batch;
            stats.frames += batch;
            if (Math.floor(stats.frames / 20_000) !== Math.floor((stats.frames - batch) / 20_000)) log(`${stats.frames} frames, ${stats.handshakes} handshakes, ${stats.writesAcked} writes acknowledged`);
          } else {
            stats.unexpectedCloses++;
          }
          if (!open) {
            stats.linksClosed++;
            p.close();
          }
          batch = 0;
        }
      }
      p?.close();
    }),
  );
  try {
    await Promise.all(links);
  } finally {
    stop = true;
    await writer;
  }

  // Every node up, still committing, and holding every acknowledged write.
  const dead = members.filter((id) => !c.live().some((n) => n.id === id));
  if (dead.length > 0) throw new Error(`nodes exited during the fuzz: ${dead.join(', ')} (seed ${seed})\n${c.logs()}`);
  const last = Buffer.alloc(4096, 0x77);
  const client = await c.client(members[1]!);
  await client.write(255 * 4096 + 4096, last, { fua: true });
  await client.close();
  for (const id of members) {
    const cl = await c.client(id);
    try {
      const started = Date.now();
      for (;;) {
        const got = await cl.read(255 * 4096 + 4096, 4096);
        if (got.equals(last)) break;
        if (Date.now() - started > 30_000) throw new Error(`${id} did not apply the write made after the fuzz (seed ${seed})`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      for (const [offset, data] of acked) {
        const got = await cl.read(offset, 4096);
        if (!got.equals(data)) throw new Error(`${id}: acknowledged write at ${offset} not readable (seed ${seed})`);
      }
    } finally {
      await cl.close();
    }
  }
  return stats;
}

/** The seed: XDEVICE_SEED to replay, otherwise a fresh one (printed by the caller). */
export function fuzzSeed(env: NodeJS.ProcessEnv = process.env): number {
  const s = env.XDEVICE_SEED;
  return s !== undefined && s !== '' ? Number(s) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
}
