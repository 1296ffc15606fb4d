// Device snapshots shipped with a Raft snapshot (src/device/snapshot-transfer.ts),
// through the real SnapshotSender, wire codec, SnapshotReceiver, staging and
// install: a sender applies random writes, trims, snapshot creates and deletes
// (names reused) while it streams, one batch before each frame; a lagging
// receiver with snapshot copies of its own installs the stream and replays
// the log. Every snapshot it serves, at any point of the replay, reads as the
// model says; the ones up to the state's index are whole at once; after the
// replay it holds exactly the sender's snapshots, none lost. Without the
// offer (an older peer on either side) the stream works as before: no blocks,
// the snapshots lost on the receiver.
import t, { type Test } from 'tap';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { BlockStore } from '../../src/device/block-store.ts';
import { decodeStoreState, encodeStoreState } from '../../src/device/checkpoint.ts';
import { encodeCreateDevice, encodeSnapshotCreate, encodeSnapshotDelete, encodeTrim, encodeWrite, type RequestId } from '../../src/device/commands.ts';
import { decodeFrame, FrameDecoder } from '../../src/cluster/codec.ts';
import { diskSnapshots, encodeSnapshotFrame, snapshotFrameOf } from '../../src/cluster/real-env.ts';
import { nativeDisk } from '../../src/disk/native-disk.ts';
import { limits } from '../../src/limits.ts';
import { EntryType, MessageType, message, type Entry } from '../../src/raft/types.ts';
import type { Clock, PeerTransport, SnapshotFrame } from '../../src/replica/env.ts';
import { SnapshotReceiver } from '../../src/replica/snapshot-receiver.ts';
import { openShipments, SnapshotSender } from '../../src/replica/snapshot-sender.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';
import { CompressionStats } from '../../src/device/compression.ts';
import { compressBlock } from '../../src/device/lz4.ts';

const logger = pino({ level: process.env.XDEVICE_TEST_LOG ?? 'silent' });
const B = limits.snapshotBlockBytes;
const BLOCKS = 64;
const SIZE = BLOCKS * B;
const noConf = () => {};

async function tempDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'xdevice-snapxfer-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

const clock: Clock = {
  now: () => Date.now(),
  after: (ms, fn) => {
    const h = setTimeout(fn, ms);
    // Long timeouts (the result's) must not hold the process; the LZ4 answer's wait must (nothing else is pending then).
    if (ms > 5000) h.unref();
    return () => clearTimeout(h);
  },
  defer: (fn) => void setImmediate(fn),
};

/** A frame through the wire codec, as a peer link carries it. */
function overTheWire(f: SnapshotFrame): SnapshotFrame {
  const [body] = new FrameDecoder().push(Buffer.concat(encodeSnapshotFrame(f)));
  return snapshotFrameOf(decodeFrame(body!))!;
}

/** The log, the model of the device and of every snapshot (by id), and random commands on them. */
class World {
  entries: Entry[] = [];
  private seq = 0;
  live = Buffer.alloc(SIZE);
  /** Snapshot id -> its bytes; names of the ones that exist now. */
  readonly bytes = new Map<number, Buffer>();
  readonly names = new Map<string, number>();
  devId = 0;

  constructor(
    private readonly rnd: ReturnType<typeof makeRandom>,
    /** Writes of text that LZ4 shrinks instead of random bytes. */
    private readonly compressible = false,
  ) {
    this.devId = this.add(encodeCreateDevice(this.id(), 'vol', SIZE));
  }

  private id(): RequestId {
    this.seq++;
    return { clientId: 7, seq: this.seq, firstUnacked: this.seq };
  }

  private add(data: Buffer): number {
    const index = this.entries.length + 1;
    this.entries.push({ term: 1, index, type: EntryType.Normal, data });
    return index;
  }

  /** One random command. Names come from a small pool, so a deleted name is soon taken again. */
  step(): void {
    const r = this.rnd;
    const k = r.int(0, 9);
    if (k <= 5) {
      const offset = r.int(0, SIZE - 1);
      const length = r.int(1, Math.min(3 * B, SIZE - offset));
      const data = this.compressible ? Buffer.from(`block ${r.int(0, 1e9)} written at ${offset}; `.repeat(Math.ceil(length / 24))).subarray(0, length) : r.bytes(length);
      data.copy(this.live, offset);
      this.add(encodeWrite(this.id(), this.devId, offset, data));
    } else if (k === 6) {
      const offset = r.int(0, SIZE - 1);
      const length = r.int(1, Math.min(2 * B, SIZE - offset));
      this.live.fill(0, offset, offset + length);
      this.add(encodeTrim(this.id(), this.devId, offset, length));
    } else if (k <= 8 && this.names.size < 4) {
      const free = ['s0', 's1', 's2', 's3', 's4'].filter((n) => !this.names.has(n));
      const name = free[r.int(0, free.length - 1)]!;
      const id = this.add(encodeSnapshotCreate(this.id(), 'vol', name, 1000 + this.entries.length));
      this.names.set(name, id);
      this.bytes.set(id, Buffer.from(this.live));
    } else if (this.names.size > 0) {
      const names = [...this.names.keys()];
      const name = names[r.int(0, names.length - 1)]!;
      this.names.delete(name);
      this.add(encodeSnapshotDelete(this.id(), 'vol', name));
    }
  }
}

async function applyAll(t: Test, store: BlockStore, entries: Entry[], what: string): Promise<void> {
  for (const o of await store.applyBatch(entries, noConf)) if (o.error) t.fail(`${what}: entry ${o.index}: ${o.error.message}`);
}

/** Every snapshot `store` serves reads as the model says; returns how many it served. */
async function checkServed(t: Test, store: BlockStore, w: World, what: string): Promise<number> {
  let served = 0;
  for (const s of store.snapshots(w.devId)) {
    if (store.snapshotUnavailable(w.devId, s.id) !== undefined) continue;
    served++;
    const got = await store.readSnapshot(w.devId, s.id, 0, SIZE);
    if (!got.equals(w.bytes.get(s.id)!)) t.fail(`${what}: snapshot ${s.name} (index ${s.id}) differs from the model`);
  }
  return served;
}

interface Run {
  receiver: BlockStore;
  world: World;
  /** Index of the shipped state (a), the frames the receiver got, the snapshots shipped (ids). */
  stateIndex: number;
  frames: SnapshotFrame['kind'][];
  shipped: Set<number>;
  /** Chunks that arrived as LZ4 blocks; the sender's counts. */
  lz4Chunks: number;
  stats: CompressionStats;
}

/**
 * Streams a Raft snapshot from a sender applying `world` to a receiver that
 * applied a prefix of it, installs it, and returns before any replay.
 * `offer`: false strips the offer from the begin frame (what an older peer on either side amounts to).
 */
async function transfer(t: Test, seed: number, offer: boolean, restartSender = false, lz4?: Lz4Case): Promise<Run> {
  const rnd = makeRandom(seed);
  const world = new World(rnd, lz4 !== undefined);
  const dirA = await tempDir(t);
  const dirB = await tempDir(t);
  let a = await BlockStore.open(dirA, logger);
  t.teardown(() => a.closeFiles());
  const b = await BlockStore.open(dirB, logger);
  t.teardown(() => b.closeFiles());
  // Both apply a common history; the receiver then stops (it has snapshot copies of its own), the sender goes on.
  for (let i = 0; i < 40; i++) world.step();
  await applyAll(t, a, world.entries, 'sender');
  await applyAll(t, b, world.entries, 'receiver');
  if (restartSender) await a.checkpoint(a.captureState());
  for (let i = 0; i < 40; i++) world.step();
  await applyAll(t, a, world.entries, 'sender');
  if (restartSender) {
    // The sender crashes and restarts from its checkpoint: its files hold writes from beyond its applied index,
    // the snapshots created since are replaying, and it streams from the middle of its replay.
    await a.closeFiles();
    a = await BlockStore.open(dirA, logger);
    await applyAll(t, a, world.entries.slice(0, a.appliedIndex + rnd.int(0, world.entries.length - a.appliedIndex)), 'sender replay');
  }

  const filesA = diskSnapshots(dirA, 'a', nativeDisk);
  const filesB = diskSnapshots(dirB, 'b', nativeDisk);
  const frames: SnapshotFrame['kind'][] = [];
  const shipped = new Set<number>();
  const stats = new CompressionStats();
  let lz4Chunks = 0;
  let receiver!: SnapshotReceiver;
  let sender!: SnapshotSender;
  const deliver = (fn: () => void): void => void setImmediate(fn);
  const transportA = {
    sendFrame: (_peer: string, f: SnapshotFrame) => {
      let w = overTheWire(f);
      if (w.kind === 'begin' && !offer) {
        const { snapshotBlocksOffered: _o, ...state } = decodeStoreState(w.state);
        w = { ...w, state: encodeStoreState(state) };
      }
      frames.push(w.kind);
      if (w.kind === 'blocks') shipped.add(w.snapshot.id);
      if (w.kind === 'chunk' && w.lz4) {
        lz4Chunks++;
        // A block that does not decode to the length it claims. (A flipped
        // literal byte would decode to other bytes of the right length: LZ4
        // carries no checksum, and in-flight damage is the peer link's to
        // catch, by its frame MACs or TLS. Seed 1887391069 drew such a flip.)
        if (lz4 === 'corrupt' && lz4Chunks === 1) {
          w = { ...w, data: Buffer.from(w.data) };
          w.data.writeUInt32LE(w.data.readUInt32LE(0) + 1, 0);
        }
      }
      deliver(() => receiver.onFrame('a', w));
      return true;
    },
    // Before each frame the sender waits for room: the sender applies a few more commands meanwhile (apply goes on during the copy).
    waitDrain: async () => {
      // A restarted sender here replays nothing more until the stream ends (its snapshots after its applied index stay replaying).
      if (restartSender) return;
      for (let i = rnd.int(-1, 1); i > 0; i--) world.step();
      // A few entries a frame (a restarted sender replays slowly, and streams from the middle of it).
      await applyAll(t, a, world.entries.slice(0, a.appliedIndex + rnd.int(1, 3)), 'sender during the stream');
    },
    connection: () => 1,
  } as unknown as PeerTransport;
  const transportB = {
    sendFrame: (_peer: string, f: SnapshotFrame) => {
      const w = overTheWire(f);
      // An older receiver never says it decodes LZ4 chunks.
      if (w.kind === 'result' && w.lz4 && lz4 === 'older-receiver') return true;
      deliver(() => {
        if (w.kind === 'result') sender.onResult('b', w);
      });
      return true;
    },
  } as unknown as PeerTransport;
  receiver = new SnapshotReceiver(filesB, transportB, logger, () => 'a');
  const state = a.captureState();
  const meta = { index: state.appliedIndex, term: 1, confState: { voters: ['a', 'b'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } };
  const outcome = new Promise<boolean>((resolve) => {
    sender = new SnapshotSender(
      transportA,
      {
        capture: async () => ({ state, paths: a.filePaths(state) }),
        appliedIndex: () => a.appliedIndex,
        captureSnapshots: async () => ({ appliedIndex: a.appliedIndex, snapshots: await openShipments(a.snapshotsToSend(), filesA) }),
        done: (_peer, ok) => resolve(ok),
        hold: () => undefined,
      },
      filesA,
      clock,
      logger,
      () => lz4 !== undefined,
      compressBlock,
      stats,
    );
  });
  sender.send(message({ type: MessageType.Snap, from: 'a', to: 'b', snapshot: meta }));
  const ok = await outcome;
  if (lz4 === 'corrupt') {
    t.notOk(ok, `seed ${seed}: a stream with a corrupt LZ4 chunk fails`);
    t.equal(receiver.take(), undefined, 'nothing staged from it');
    await receiver.close();
    return { receiver: b, world, stateIndex: state.appliedIndex, frames, shipped, lz4Chunks, stats };
  }
  t.ok(ok, `seed ${seed}: the stream succeeds`);
  // A few more after the stream, so that the receiver replays past the shipment.
  for (let i = 0; i < 20; i++) world.step();
  await applyAll(t, a, world.entries, 'sender');
  const staged = receiver.take();
  t.ok(staged, 'the receiver staged the stream');
  // The install, as Housekeeping.installStaged does it.
  await b.closeFiles();
  await filesB.installFiles(meta);
  await b.reload(staged!.state);
  await filesB.finishInstall();
  await receiver.close();
  t.equal(b.appliedIndex, state.appliedIndex, 'the receiver starts from the shipped state');
  return { receiver: b, world, stateIndex: state.appliedIndex, frames, shipped, lz4Chunks, stats };
}

/** The sender offers LZ4 chunks: the receiver takes them, an older one never answers, or one chunk is corrupted on the way. */
type Lz4Case = 'on' | 'older-receiver' | 'corrupt';

t.test('device snapshots travel with a Raft snapshot: the receiver serves them as the sender does (seeded)', async (t) => {
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  let shippedWhole = 0;
  let replayingSeen = 0;
  let roundsShipping = 0;
  for (let round = 0; round < 6; round++) {
    const run = await transfer(t, seed + round, true);
    const { receiver: b, world: w } = run;
    if (run.frames.includes('blocks')) roundsShipping++;
    // Right after the install: every snapshot up to the state's index that still exists is whole here already.
    for (const s of b.snapshots(w.devId)) {
      const why = b.snapshotUnavailable(w.devId, s.id);
      if (s.id <= run.stateIndex && run.shipped.has(s.id)) {
        // At once, unless it reads through a later snapshot the sender deleted (lost here until the replay deletes it too).
        if (why === undefined) shippedWhole++;
        else t.match(why, /later snapshot it reads through/, `seed ${seed + round}: snapshot ${s.name} (index ${s.id}, state ${run.stateIndex}) is served at once, or says why not`);
      }
      if (why?.includes('replaying')) replayingSeen++;
    }
    await checkServed(t, b, w, `seed ${seed + round} after the install`);
    // Replay in random batches, checking what it serves after each.
    const rnd = makeRandom(seed * 7 + round);
    for (let at = b.appliedIndex; at < w.entries.length; ) {
      at = Math.min(w.entries.length, at + rnd.int(1, 6));
      await applyAll(t, b, w.entries.slice(0, at), 'receiver replay');
      await checkServed(t, b, w, `seed ${seed + round} replayed to ${at}`);
    }
    t.same(b.snapshots(w.devId).map((s) => `${s.id}:${s.name}`), [...w.names].map(([n, id]) => `${id}:${n}`).sort((x, y) => parseInt(x) - parseInt(y)), `seed ${seed + round}: the same snapshots as the sender`);
    t.equal(await checkServed(t, b, w, `seed ${seed + round} caught up`), w.names.size, `seed ${seed + round}: every one served, none lost`);
    t.ok((await b.read(w.devId, 0, SIZE)).equals(w.live), `seed ${seed + round}: the live device`);
    // And after a restart (the marks are kept: received snapshots stay whole although their ids are below lostUpTo).
    const dir = b.dataDir;
    await b.checkpoint(b.captureState());
    await b.closeFiles();
    const again = await BlockStore.open(dir, logger);
    t.equal(await checkServed(t, again, w, `seed ${seed + round} restarted`), w.names.size, `seed ${seed + round}: still every one after a restart`);
    t.same(await readdir(join(dir, 'snapshot.staging')).catch(() => 'gone'), 'gone', 'the staging is gone');
    await again.closeFiles();
  }
  t.ok(roundsShipping > 0, `snapshots' blocks were sent in ${roundsShipping} of 6 rounds`);
  t.ok(shippedWhole > 0, `some snapshots were whole at once (${shippedWhole})`);
  t.comment(`snapshots replaying right after an install: ${replayingSeen}`);
});

t.test('a sender that restarted streams from the middle of its replay: its replaying snapshots travel too (simulator seed 21000226)', async (t) => {
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  for (let round = 0; round < 4; round++) {
    const run = await transfer(t, seed + 100 + round, true, true);
    const { receiver: b, world: w } = run;
    // Checked once caught up only: while the sender is in the middle of its own crash replay, a snapshot its
    // replay recreated (and will delete again) may hold copies from its newer files (the window snapshots.ts has).
    await applyAll(t, b, w.entries, 'receiver replay');
    t.equal(await checkServed(t, b, w, `seed ${seed + 100 + round} caught up`), w.names.size, `seed ${seed + 100 + round}: every snapshot served, as the model says`);
    t.ok((await b.read(w.devId, 0, SIZE)).equals(w.live), `seed ${seed + 100 + round}: the live device`);
  }
});

t.test('without the offer (an older peer on either side) the stream works as before: no blocks, the snapshots lost on the receiver', async (t) => {
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  const run = await transfer(t, seed, false);
  const { receiver: b, world: w } = run;
  t.notOk(run.frames.includes('blocks'), 'no blocks sent');
  t.same(run.frames.filter((k) => k === 'end').length, 1, 'one end frame');
  const listed = b.snapshots(w.devId).filter((s) => s.id <= run.stateIndex);
  for (const s of listed) t.match(b.snapshotUnavailable(w.devId, s.id), /Raft snapshot/, `${s.name} lost here`);
  await applyAll(t, b, w.entries, 'receiver replay');
  await checkServed(t, b, w, 'legacy, caught up');
  t.ok((await b.read(w.devId, 0, SIZE)).equals(w.live), 'the live device');
});

t.test('with compression on, the device files travel as LZ4 chunks and arrive exact; an older receiver gets them plain; a corrupt one fails the stream', async (t) => {
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  for (let round = 0; round < 3; round++) {
    const run = await transfer(t, seed + 200 + round, true, false, 'on');
    const { receiver: b, world: w } = run;
    t.ok(run.lz4Chunks > 0, `seed ${seed + 200 + round}: ${run.lz4Chunks} chunks went as LZ4`);
    t.ok(run.stats.snapshotBytesOut < run.stats.snapshotBytesIn, `LZ4 saved bytes on the link (${run.stats.snapshotBytesIn} -> ${run.stats.snapshotBytesOut})`);
    t.equal(run.stats.snapshotCompressedChunks, run.lz4Chunks, 'every compressed chunk counted');
    await applyAll(t, b, w.entries, 'receiver replay');
    t.ok((await b.read(w.devId, 0, SIZE)).equals(w.live), `seed ${seed + 200 + round}: the live device, bit for bit`);
    t.equal(await checkServed(t, b, w, `seed ${seed + 200 + round} caught up`), w.names.size, 'every snapshot served, as the model says');
  }
  const older = await transfer(t, seed + 210, true, false, 'older-receiver');
  t.equal(older.lz4Chunks, 0, 'a receiver that never said it decodes LZ4 gets plain chunks');
  t.equal(older.stats.snapshotBytesIn, 0, 'and nothing is counted as compressed');
  await applyAll(t, older.receiver, older.world.entries, 'receiver replay');
  t.ok((await older.receiver.read(older.world.devId, 0, SIZE)).equals(older.world.live), 'its live device');
  const corrupt = await transfer(t, seed + 220, true, false, 'corrupt');
  t.ok(corrupt.lz4Chunks > 0, 'the corrupted stream carried LZ4 chunks');
});

t.test('install: redone after a crash between its steps; a received mark from an earlier install does not survive the next; strangers are quarantined', async (t) => {
  const { mkdir, rename, writeFile: put, readdir: ls } = await import('node:fs/promises');
  const { SnapshotStaging, beginInstall, finishInstall, installStagedFiles } = await import('../../src/device/snapshot-staging.ts');
  const dir = await tempDir(t);
  const rnd = makeRandom(1);
  const w = new World(rnd);
  let store = await BlockStore.open(dir, logger);
  // The device, a snapshot with a block preserved into it.
  w.entries.push({ term: 1, index: 2, type: EntryType.Normal, data: encodeSnapshotCreate({ clientId: 8, seq: 1, firstUnacked: 1 }, 'vol', 'old', 5) });
  w.entries.push({ term: 1, index: 3, type: EntryType.Normal, data: encodeWrite({ clientId: 8, seq: 2, firstUnacked: 2 }, w.devId, 0, Buffer.alloc(B, 3)) });
  await applyAll(t, store, w.entries, 'store');
  const state = store.captureState();
  await store.closeFiles();
  // An earlier install brought it whole (its mark), and a stranger sits next to it.
  await put(join(dir, 'snapshots', 'snap-2', 'received'), '');
  await mkdir(join(dir, 'snapshots', 'snap-1'));
  await put(join(dir, 'snapshots', 'snap-1', 'meta.json'), JSON.stringify({ id: 1, deviceId: w.devId, name: 'gone', createdAt: 0, size: SIZE }));
  // This install ships no snapshots (an older sender): the state lists 'old', whose copy here is stale.
  const meta = { index: state.appliedIndex, term: 1, confState: { voters: ['a', 'b'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } };
  const s = await SnapshotStaging.begin(dir, 1, 'a', meta, state);
  await s.finish(0, state.appliedIndex);
  await beginInstall(dir, meta);
  // A crash right after the first rename of the snapshots step: the next start redoes the install.
  await rename(join(dir, 'snapshots'), join(dir, 'snapshot.staging', 'snapshots.replaced'));
  await installStagedFiles(dir);
  await installStagedFiles(dir);
  await finishInstall(dir);
  store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  t.match(store.snapshotUnavailable(w.devId, 2), /Raft snapshot/, 'the stale copy is lost here: the mark of the earlier install went with it');
  t.same(await ls(join(dir, 'snapshots', 'snap-2')), ['meta.json'], 'its copies are gone');
  t.same((await ls(join(dir, 'snapshots'))).sort(), ['snap-2'], 'the stranger is not among the snapshots');
  const quarantined = await ls(join(dir, 'quarantine'));
  t.equal(quarantined.length, 1, 'it is quarantined, not removed');
  t.same(await ls(join(dir, 'quarantine', quarantined[0]!, 'snapshots')), ['snap-1']);
});
