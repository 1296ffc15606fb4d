// Device snapshots in the block store (src/device/snapshots.ts): the
// SNAPSHOT_CREATE/DELETE codec (and a seeded fuzzer of its decoder and of the
// block map's), the checks shared by propose and apply, copy-on-write and the
// chain rule against a model under random writes, trims, creates and
// deletes, the dirty bitmap, and crash replay: a store reopened from an
// older checkpoint and replayed over device files that already hold newer
// data keeps every snapshot exactly as it was (nothing new is preserved).
import t from 'tap';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { BlockStore } from '../../src/device/block-store.ts';
import {
  CommandDecodeError,
  CommandOp,
  decodeCommand,
  encodeCreateDevice,
  encodeResizeDevice,
  encodeSnapshotCreate,
  encodeSnapshotDelete,
  encodeTrim,
  encodeWrite,
  encodeWriteZeroes,
} from '../../src/device/commands.ts';
import { decodeBlockMap, encodeBlockMap, SnapshotSet, snapshotNameProblem } from '../../src/device/snapshots.ts';
import { limits } from '../../src/limits.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';
import { tempDir, Log } from './helpers/store-log.ts';

const logger = pino({ level: 'silent' });
const B = limits.snapshotBlockBytes;
const SIZE = 16 * B;
const noConf = () => {};

t.test('codec: SNAPSHOT_CREATE/DELETE round-trip; malformed entries fail as CommandDecodeError only (seeded fuzz)', async (t) => {
  const id = { clientId: 5, seq: 3, firstUnacked: 1 };
  t.same(decodeCommand(encodeSnapshotCreate(id, 'vol', 's1', 1234567)), { op: CommandOp.SnapshotCreate, ...id, device: 'vol', name: 's1', createdAt: 1234567 });
  t.same(decodeCommand(encodeSnapshotDelete(id, 'vol', 's1')), { op: CommandOp.SnapshotDelete, ...id, device: 'vol', name: 's1' });
  const good = [encodeSnapshotCreate(id, 'vol', 'snap.2026-12-03', Date.now()), encodeSnapshotDelete(id, 'vol', 'x_y-z')];
  for (const g of good) {
    for (let n = 0; n < g.length; n++) t.throws(() => decodeCommand(g.subarray(0, n)), CommandDecodeError, `truncated at ${n}`);
    t.throws(() => decodeCommand(Buffer.concat([g, Buffer.alloc(1)])), CommandDecodeError, 'trailing byte');
  }
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  const rnd = makeRandom(seed);
  for (let i = 0; i < 5000; i++) {
    const b = Buffer.from(good[i % 2]!);
    for (let k = rnd.int(1, 4); k > 0; k--) b[rnd.int(0, b.length - 1)] = rnd.int(0, 255);
    try {
      decodeCommand(b);
    } catch (err) {
      if (!(err instanceof CommandDecodeError)) t.fail(`not a CommandDecodeError: ${String(err)} (XDEVICE_SEED=${seed})`);
    }
    // The block map: any bytes give a set of blocks below the bound, or an error naming the bad block.
    const map = rnd.bytes(rnd.int(0, 40));
    try {
      const m = decodeBlockMap(map, 1000);
      if (m.bytes !== map.length - (map.length % 8) || [...m.blocks].some((x) => x >= 1000)) t.fail(`bad map decode (XDEVICE_SEED=${seed})`);
    } catch (err) {
      if (!/beyond/.test((err as Error).message)) t.fail(`unexpected map error ${String(err)} (XDEVICE_SEED=${seed})`);
    }
  }
  t.same([...decodeBlockMap(Buffer.concat([encodeBlockMap([3, 0, 2 ** 40]), Buffer.alloc(5)]), 2 ** 41).blocks], [3, 0, 2 ** 40], 'a torn last record is dropped');
});

t.test('validation shared by propose and apply', async (t) => {
  for (const bad of ['', 'a b', 'a/b', 'x'.repeat(65), 'é', 'a@b']) t.ok(snapshotNameProblem(bad), `"${bad}" refused`);
  for (const ok of ['s1', 'A.b_c-9', 'x'.repeat(64), '.hidden']) t.equal(snapshotNameProblem(ok), undefined, `"${ok}" accepted`);
  const dev = { name: 'vol' };
  const existing = [{ id: 5, deviceId: 1, name: 's1', createdAt: 0, size: 0 }];
  t.equal(SnapshotSet.createProblem(dev, existing, 's1')?.code, 'XDEVICE_ERR_EXISTS');
  t.equal(SnapshotSet.createProblem({ name: 'e', encryption: {} }, [], 's')?.code, 'XDEVICE_ERR_INVALID');
  const full = Array.from({ length: limits.snapshotsPerDeviceMax }, (_, i) => ({ id: i + 1, deviceId: 1, name: `s${i}`, createdAt: 0, size: 0 }));
  t.match(SnapshotSet.createProblem(dev, full, 'one-more'), { code: 'XDEVICE_ERR_INVALID', message: /snapshotsPerDeviceMax/ });
  t.equal(SnapshotSet.createProblem(dev, existing, 's2'), undefined);
});

/** A device model: bytes, and each snapshot's bytes at its creation. */
function pattern(seed: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff;
  return b;
}

t.test('copy-on-write: snapshots read as of their index, the live device as of now; dirty bitmap; apply-time refusals', async (t) => {
  const dir = await tempDir(t, 'xdevice-snap-');
  const store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  const log = new Log(9);
  const create = log.add(encodeCreateDevice(log.id(), 'vol', SIZE));
  const devId = create.index;
  const a = pattern(1, SIZE);
  log.add(encodeWrite(log.id(), devId, 0, a));
  log.add(encodeSnapshotCreate(log.id(), 'vol', 's1', 1000));
  const b = pattern(2, 3 * B);
  log.add(encodeWrite(log.id(), devId, B + 100, b)); // blocks 1..4
  log.add(encodeTrim(log.id(), devId, 10 * B, B)); // block 10
  log.add(encodeSnapshotCreate(log.id(), 'vol', 's2', 2000));
  log.add(encodeWriteZeroes(log.id(), devId, 0, SIZE, false));
  const dup = log.add(encodeSnapshotCreate(log.id(), 'vol', 's1', 3000));
  const resize = log.add(encodeResizeDevice(log.id(), 'vol', 2 * SIZE));
  const outcomes = await store.applyBatch(log.entries, noConf);
  t.equal(outcomes.find((o) => o.index === dup.index)?.error?.code, 'XDEVICE_ERR_EXISTS', 'a duplicate name is a recorded refusal');
  t.equal(outcomes.find((o) => o.index === resize.index)?.error?.code, 'XDEVICE_ERR_CONFLICT', 'resize with snapshots is refused');
  const [s1, s2] = store.snapshots(devId);
  t.same([s1?.name, s2?.name, s1?.createdAt], ['s1', 's2', 1000]);
  const expect2 = Buffer.from(a);
  b.copy(expect2, B + 100);
  expect2.fill(0, 10 * B, 11 * B);
  t.ok((await store.readSnapshot(devId, s1!.id, 0, SIZE)).equals(a), 's1 reads the first pattern');
  t.ok((await store.readSnapshot(devId, s2!.id, 0, SIZE)).equals(expect2), 's2 reads the pattern with the overwrite and the trim');
  t.ok((await store.read(devId, 0, SIZE)).equals(Buffer.alloc(SIZE)), 'the live device is zeroed');
  t.ok((await store.readSnapshot(devId, s1!.id, B + 50, 200)).equals(a.subarray(B + 50, B + 250)), 'an unaligned read across a block edge');
  t.same(store.snapshotDirty(devId, s1!.id, 0, SIZE), [{ length: SIZE, flags: 1 }], 'the first snapshot: everything is dirty');
  t.same(
    store.snapshotDirty(devId, s2!.id, 0, SIZE),
    [{ length: B, flags: 0 }, { length: 4 * B, flags: 1 }, { length: 5 * B, flags: 0 }, { length: B, flags: 1 }, { length: 5 * B, flags: 0 }],
    's2: exactly the blocks written or trimmed between s1 and s2',
  );
  t.ok((await store.snapshotHeldBytes(devId, s2!.id)) >= 10 * B, 's2 holds the blocks the zeroing overwrote');
  const held1 = await store.snapshotHeldBytes(devId, s1!.id);
  // Delete s2: s1's chain went through it, so its blocks s1 lacks move to s1.
  log.add(encodeSnapshotDelete(log.id(), 'vol', 's2'));
  await store.applyBatch(log.entries, noConf);
  t.same(store.snapshots(devId).map((s) => s.name), ['s1']);
  t.ok((await store.readSnapshot(devId, s1!.id, 0, SIZE)).equals(a), 's1 still reads the first pattern after s2 is deleted');
  t.ok((await store.snapshotHeldBytes(devId, s1!.id)) > held1, 's1 took over blocks from s2');
  log.add(encodeSnapshotDelete(log.id(), 'vol', 's1'));
  await store.applyBatch(log.entries, noConf);
  t.same(store.snapshots(devId), []);
  t.same(await readdir(join(dir, 'snapshots')), [], 'deleting the last snapshot frees its files');
});

t.test('random model (seeded): writes, trims, creates and deletes; every snapshot matches; crash replay keeps them', async (t) => {
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  const rnd = makeRandom(seed);
  const dir = await tempDir(t, 'xdevice-snap-');
  let store = await BlockStore.open(dir, logger);
  const log = new Log(9);
  const devId = log.add(encodeCreateDevice(log.id(), 'vol', SIZE)).index;
  await store.applyBatch(log.entries, noConf);
  const live = Buffer.alloc(SIZE);
  const model = new Map<string, Buffer>();
  let checkpointAt = 0;
  let n = 0;
  for (let step = 0; step < 120; step++) {
    const k = rnd.int(0, 9);
    if (k <= 4) {
      const offset = rnd.int(0, SIZE - 1);
      const length = rnd.int(1, Math.min(3 * B, SIZE - offset));
      const data = rnd.bytes(length);
      data.copy(live, offset);
      log.add(encodeWrite(log.id(), devId, offset, data));
    } else if (k === 5) {
      const offset = rnd.int(0, SIZE - 1);
      const length = rnd.int(1, Math.min(2 * B, SIZE - offset));
      live.fill(0, offset, offset + length);
      log.add(rnd.int(0, 1) ? encodeTrim(log.id(), devId, offset, length) : encodeWriteZeroes(log.id(), devId, offset, length, false));
    } else if (k <= 7 && model.size < 6) {
      const name = `s${n++}`;
      model.set(name, Buffer.from(live));
      log.add(encodeSnapshotCreate(log.id(), 'vol', name, step));
    } else if (model.size > 0) {
      const names = [...model.keys()];
      const name = names[rnd.int(0, names.length - 1)]!;
      model.delete(name);
      log.add(encodeSnapshotDelete(log.id(), 'vol', name));
    }
    // Apply in batches of a few entries; now and then a checkpoint (the crash point below replays from the last one).
    if (rnd.int(0, 3) === 0) {
      const outcomes = await store.applyBatch(log.entries, noConf);
      for (const o of outcomes) if (o.error) t.fail(`entry ${o.index}: ${o.error.message} (XDEVICE_SEED=${seed})`);
      if (rnd.int(0, 2) === 0) {
        await store.checkpoint(store.captureState());
        checkpointAt = store.appliedIndex;
      }
    }
  }
  await store.applyBatch(log.entries, noConf);
  const check = async (what: string): Promise<void> => {
    t.same(store.snapshots(devId).map((s) => s.name).sort(), [...model.keys()].sort(), `${what}: the snapshot list`);
    for (const [name, bytes] of model) {
      const s = store.snapshot(devId, name)!;
      const got = await store.readSnapshot(devId, s.id, 0, SIZE);
      if (!got.equals(bytes)) t.fail(`${what}: snapshot ${name} differs from the model (XDEVICE_SEED=${seed})`);
    }
    if (!(await store.read(devId, 0, SIZE)).equals(live)) t.fail(`${what}: live device differs (XDEVICE_SEED=${seed})`);
  };
  await check('after apply');
  // A crash: the device file and snapshot files hold everything, the checkpoint is older; replay from it.
  await store.closeFiles();
  store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  t.equal(store.appliedIndex, checkpointAt, 'reopened at the last checkpoint');
  const outcomes = await store.applyBatch(log.entries, noConf);
  for (const o of outcomes) if (o.error) t.fail(`replayed entry ${o.index}: ${o.error.message} (XDEVICE_SEED=${seed})`);
  await check('after crash replay');
});

t.test('a Raft snapshot install: the records travel, the copies do not; older snapshots are lost on that node, newer ones whole', async (t) => {
  const { copyFile, mkdir } = await import('node:fs/promises');
  const dirA = await tempDir(t, 'xdevice-snap-');
  const dirB = await tempDir(t, 'xdevice-snap-');
  const a = await BlockStore.open(dirA, logger);
  t.teardown(() => a.closeFiles());
  const log = new Log(9);
  const devId = log.add(encodeCreateDevice(log.id(), 'vol', SIZE)).index;
  const p1 = pattern(3, SIZE);
  log.add(encodeWrite(log.id(), devId, 0, p1));
  log.add(encodeSnapshotCreate(log.id(), 'vol', 's1', 1));
  log.add(encodeWrite(log.id(), devId, 0, pattern(4, 2 * B)));
  await a.applyBatch(log.entries, noConf);
  const state = a.captureState();
  t.same(state.snapshots?.map((s) => s.name), ['s1'], 'the state lists the snapshot');
  // The receiving side: the device file as streamed, the state as staged (SnapshotStaging.finish sets snapshotsLostUpTo).
  const b = await BlockStore.open(dirB, logger);
  t.teardown(() => b.closeFiles());
  await b.closeFiles();
  await mkdir(join(dirB, 'devices'), { recursive: true });
  await copyFile(join(dirA, 'devices', `dev-${devId}.img`), join(dirB, 'devices', `dev-${devId}.img`));
  await b.reload({ ...state, snapshotsLostUpTo: state.appliedIndex });
  const s1 = b.snapshot(devId, 's1')!;
  t.equal(s1.lost, true, 's1 is listed, lost on this node');
  t.match(b.snapshotUnavailable(devId, s1.id), /Raft snapshot/, 'and says why it is not served here');
  await t.rejects(b.readSnapshot(devId, s1.id, 0, 4096), { code: 'EIO' }, 'reads of it fail rather than show wrong data');
  t.same(b.captureState().snapshotsLostUpTo, state.appliedIndex, 'the mark is kept in its checkpoints');
  // Later entries: a new snapshot is whole on this node; deleting the lost one works.
  const after = Buffer.from(p1);
  pattern(4, 2 * B).copy(after, 0);
  log.add(encodeSnapshotCreate(log.id(), 'vol', 's2', 2));
  log.add(encodeWrite(log.id(), devId, 5 * B, pattern(5, B)));
  log.add(encodeSnapshotDelete(log.id(), 'vol', 's1'));
  for (const o of await b.applyBatch(log.entries, noConf)) t.equal(o.error, undefined, `entry ${o.index} applies`);
  const s2 = b.snapshot(devId, 's2')!;
  t.equal(b.snapshotUnavailable(devId, s2.id), undefined, 's2 is served');
  t.ok((await b.readSnapshot(devId, s2.id, 0, SIZE)).equals(after), 's2 reads the device as of its index');
  t.same(b.snapshots(devId).map((s) => s.name), ['s2'], 's1 deleted');
});

t.test('crash replay: a snapshot created later in the log (replaying) does not change what earlier creates, deletes and resizes did', async (t) => {
  const dir = await tempDir(t);
  let store = await BlockStore.open(dir, logger);
  const log = new Log();
  const devId = log.add(encodeCreateDevice(log.id(), 'vol', SIZE)).index;
  await store.applyBatch(log.entries, noConf);
  await store.checkpoint(store.captureState()); // the replay below starts here
  log.add(encodeResizeDevice(log.id(), 'vol', 2 * SIZE)); // no snapshot exists yet: it applies
  log.add(encodeResizeDevice(log.id(), 'vol', SIZE));
  const p1 = pattern(11, SIZE);
  log.add(encodeWrite(log.id(), devId, 0, p1));
  const first = log.add(encodeSnapshotCreate(log.id(), 'vol', 'x', 1)).index;
  log.add(encodeWrite(log.id(), devId, 0, pattern(12, 4 * B)));
  log.add(encodeSnapshotDelete(log.id(), 'vol', 'x'));
  const p2 = Buffer.from(p1);
  pattern(12, 4 * B).copy(p2, 0);
  const again = log.add(encodeSnapshotCreate(log.id(), 'vol', 'x', 2)).index; // the same name, taken again
  log.add(encodeWrite(log.id(), devId, 2 * B, pattern(13, 6 * B)));
  const before = await store.applyBatch(log.entries, noConf);
  t.same(before.filter((o) => o.error).map((o) => o.index), [], 'every entry applies');
  t.ok((await store.readSnapshot(devId, again, 0, SIZE)).equals(p2), 'x (taken again) reads the device as of its index');
  // A crash: the device file and the snapshot directories hold everything, the checkpoint is from before all of it.
  await store.closeFiles();
  store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  t.match(store.snapshotUnavailable(devId, again), /replaying/, 'x is replaying until its create replays');
  const replayed = await store.applyBatch(log.entries, noConf);
  t.same(replayed.filter((o) => o.error).map((o) => `${o.index}: ${o.error!.message}`), [], 'the replay applies every entry as the first apply did (the resizes and the first x included)');
  t.same(store.snapshots(devId).map((s) => `${s.id}:${s.name}`), [`${again}:x`], 'the first x came and went; the second is the one left');
  t.not(first, again);
  t.equal(store.snapshotUnavailable(devId, again), undefined, 'x is served');
  t.ok((await store.readSnapshot(devId, again, 0, SIZE)).equals(p2), 'and still reads the device as of its index');
});

t.test('start-up: unfinished creates and finished deletes are cleaned up; unknown directories are quarantined, never removed', async (t) => {
  const { mkdir, writeFile: put } = await import('node:fs/promises');
  const dir = await tempDir(t, 'xdevice-snap-');
  let store = await BlockStore.open(dir, logger);
  const log = new Log(9);
  const devId = log.add(encodeCreateDevice(log.id(), 'vol', SIZE)).index;
  log.add(encodeSnapshotCreate(log.id(), 'vol', 'keep', 1));
  await store.applyBatch(log.entries, noConf);
  await store.checkpoint(store.captureState());
  await store.closeFiles();
  const snaps = join(dir, 'snapshots');
  await mkdir(join(snaps, 'snap-99.new'), { recursive: true });
  await mkdir(join(snaps, 'snap-98'), { recursive: true }); // no meta.json: a finished delete
  await mkdir(join(snaps, 'stranger'), { recursive: true });
  await put(join(snaps, 'stranger', 'data'), 'precious');
  await mkdir(join(snaps, 'snap-1'), { recursive: true }); // at or below the applied index, not in the table
  await put(join(snaps, 'snap-1', 'meta.json'), JSON.stringify({ id: 1, deviceId: devId, name: 'old', createdAt: 0, size: SIZE }));
  store = await BlockStore.open(dir, logger, { now: () => Date.UTC(2026, 0, 2) });
  t.teardown(() => store.closeFiles());
  t.same(store.snapshots(devId).map((s) => s.name), ['keep']);
  t.same((await readdir(snaps)).sort(), ['snap-2'], 'only the table’s snapshot is left in place');
  const q = join(dir, 'quarantine', '2026-01-02T00-00-00-000Z', 'snapshots');
  t.same((await readdir(q)).sort(), ['snap-1', 'stranger'], 'the others are quarantined');
});

t.test('after a restart, a snapshot newer than the checkpoint is not served until replay re-applies its creation', async (t) => {
  const dir = await tempDir(t, 'xdevice-snap-');
  let store = await BlockStore.open(dir, logger);
  const log = new Log(9);
  const devId = log.add(encodeCreateDevice(log.id(), 'vol', SIZE)).index;
  const p = pattern(7, SIZE);
  log.add(encodeWrite(log.id(), devId, 0, pattern(6, SIZE)));
  await store.applyBatch(log.entries, noConf);
  await store.checkpoint(store.captureState());
  log.add(encodeWrite(log.id(), devId, 0, p));
  const snap = log.add(encodeSnapshotCreate(log.id(), 'vol', 's', 1));
  log.add(encodeWrite(log.id(), devId, 0, pattern(8, B)));
  await store.applyBatch(log.entries, noConf);
  await store.closeFiles();
  store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  t.match(store.snapshotUnavailable(devId, snap.index), /replaying/, 'not served before replay reaches it');
  await t.rejects(store.readSnapshot(devId, snap.index, 0, 4096), { code: 'EIO' });
  // Replay up to just before the snapshot: the live device goes back to older data meanwhile.
  await store.applyBatch(log.entries.slice(0, snap.index - 1), noConf);
  t.match(store.snapshotUnavailable(devId, snap.index), /replaying/);
  await store.applyBatch(log.entries, noConf);
  t.equal(store.snapshotUnavailable(devId, snap.index), undefined, 'served once its creation is replayed');
  t.ok((await store.readSnapshot(devId, snap.index, 0, SIZE)).equals(p), 'and reads as of its index');
});
