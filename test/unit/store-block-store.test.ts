import t from 'tap';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { BlockStore } from '../../src/device/block-store.ts';
import { readCheckpoint, decodeStoreState, encodeStoreState, CheckpointError } from '../../src/device/checkpoint.ts';
import {
  encodeCreateDevice,
  encodeDeleteDevice,
  encodeResizeDevice,
  encodeTrim,
  encodeWrite,
  encodeWritev,
  encodeWriteZeroes,
  decodeCommand,
  CommandOp,
} from '../../src/device/commands.ts';
import { tempDir, Log } from './helpers/store-log.ts';
import { limits } from '../../src/limits.ts';
import { nativeDisk } from '../../src/disk/native-disk.ts';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;

const noConf = () => {};

t.test('commands round-trip and reject bad sequence numbers', async (t) => {
  const id = { clientId: 2 ** 52 + 1, seq: 9, firstUnacked: 3 };
  const data = randomBytes(100);
  t.same(decodeCommand(encodeWrite(id, 5, 4096, data)), { op: CommandOp.Write, ...id, deviceId: 5, offset: 4096, data });
  // The NBD server's pieces encode to exactly the bytes of their concatenation.
  const parts = [data.subarray(0, 1), data.subarray(1, 1), data.subarray(1, 64), data.subarray(64)];
  t.same(encodeWritev(id, 5, 4096, parts), encodeWrite(id, 5, 4096, data), 'encodeWritev is byte-identical to encodeWrite');
  t.same(encodeWritev(id, 5, 4096, []), encodeWrite(id, 5, 4096, Buffer.alloc(0)));
  t.same(decodeCommand(encodeTrim(id, 5, 0, 10)), { op: CommandOp.Trim, ...id, deviceId: 5, offset: 0, length: 10 });
  t.same(decodeCommand(encodeWriteZeroes(id, 5, 1, 2, true)), { op: CommandOp.WriteZeroes, ...id, deviceId: 5, offset: 1, length: 2, noHole: true });
  t.same(decodeCommand(encodeCreateDevice(id, 'disk-ü', 123)), { op: CommandOp.CreateDevice, ...id, name: 'disk-ü', size: 123 });
  t.same(decodeCommand(encodeDeleteDevice(id, 'd')), { op: CommandOp.DeleteDevice, ...id, name: 'd' });
  t.same(decodeCommand(encodeResizeDevice(id, 'd', 77)), { op: CommandOp.ResizeDevice, ...id, name: 'd', size: 77 });
  t.throws(() => decodeCommand(encodeTrim({ clientId: 1, seq: 2, firstUnacked: 3 }, 1, 0, 1)), { code: 'XDEVICE_ERR_BAD_COMMAND' });
  t.throws(() => decodeCommand(Buffer.from([1, 99])), { code: 'XDEVICE_ERR_BAD_COMMAND' });
});

t.test('apply writes, trims, zeroes and table commands; read them back', async (t) => {
  const dir = await tempDir(t, 'xdevice-store-');
  const store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  const log = new Log();
  const create = log.add(encodeCreateDevice(log.id(), 'd0', 4 * MiB));
  const devId = create.index;
  const a = randomBytes(8192);
  log.add(encodeWrite(log.id(), devId, 4096, a));
  log.add(Buffer.alloc(0)); // leader no-op
  log.add(encodeTrim(log.id(), devId, 8192, 4096));
  log.add(encodeWrite(log.id(), devId, MiB, Buffer.alloc(4096, 0xee)));
  log.add(encodeWriteZeroes(log.id(), devId, MiB, 4096, false));
  const outcomes = await store.applyBatch(log.entries, noConf);
  t.equal(store.appliedIndex, log.entries.length);
  t.ok(outcomes.every((o) => !o.error), 'no errors');
  t.same(store.devices(), [{ id: devId, name: 'd0', size: 4 * MiB }]);
  const got = await store.read(devId, 0, 16384);
  t.same(got.subarray(0, 4096), Buffer.alloc(4096), 'untouched reads zero');
  t.same(got.subarray(4096, 8192), a.subarray(0, 4096));
  t.same(got.subarray(8192, 12288), Buffer.alloc(4096), 'trimmed');
  t.same(await store.read(devId, MiB, 4096), Buffer.alloc(4096), 'zeroed');

  // Errors are outcomes, deterministic, and change nothing.
  const more = new Log(8);
  more.entries = [...log.entries];
  const dup = more.add(encodeCreateDevice(more.id(), 'd0', MiB));
  const beyond = more.add(encodeWrite(more.id(), devId, 4 * MiB - 10, Buffer.alloc(20)));
  const gone = more.add(encodeWrite(more.id(), 999, 0, Buffer.alloc(20)));
  const out2 = await store.applyBatch(more.entries.slice(log.entries.length), noConf);
  t.equal(out2.find((o) => o.index === dup.index)!.error!.code, 'XDEVICE_ERR_EXISTS');
  t.equal(out2.find((o) => o.index === beyond.index)!.error!.code, 'ENOSPC');
  t.equal(out2.find((o) => o.index === gone.index)!.error!.code, 'ESHUTDOWN');
});

t.test('short zero writes are written as zeroes, long ones and trims punch holes (limits.zeroHoleBytesMin)', async (t) => {
  const dir = await tempDir(t, 'xdevice-store-');
  const store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  const log = new Log();
  const devId = log.add(encodeCreateDevice(log.id(), 'd0', 4 * MiB)).index;
  const Z = limits.zeroHoleBytesMin;
  const base = MiB;
  log.add(encodeWrite(log.id(), devId, base, Buffer.alloc(4 * Z, 0xee)));
  log.add(encodeWriteZeroes(log.id(), devId, base, 4096, false)); // short: written
  log.add(encodeWriteZeroes(log.id(), devId, base + Z, Z, false)); // long: a hole
  log.add(encodeTrim(log.id(), devId, base + 3 * Z, 4096)); // a trim: a hole however short
  const outcomes = await store.applyBatch(log.entries, noConf);
  t.ok(outcomes.every((o) => !o.error), 'no errors');
  const got = await store.read(devId, base, 4 * Z);
  t.same(got.subarray(0, 4096), Buffer.alloc(4096), 'the short zero write reads zero');
  t.same(got.subarray(4096, Z), Buffer.alloc(Z - 4096, 0xee), 'and stops where it ends');
  t.same(got.subarray(Z, 2 * Z), Buffer.alloc(Z), 'the long one reads zero');
  t.same(got.subarray(3 * Z, 3 * Z + 4096), Buffer.alloc(4096), 'the trim reads zero');
  await store.checkpoint(store.captureState());
  const [path] = store.filePaths(store.captureState());
  const f = await nativeDisk.openFile(path!, { readOnly: true });
  t.teardown(() => nativeDisk.closeFile(f));
  const hole = (offset: number, length: number): boolean => nativeDisk.extents(f, offset, length).every((e) => (e.flags & 1) !== 0);
  t.notOk(hole(base, 4096), 'the short zero write is allocated (written, not punched)');
  t.ok(hole(base + Z, Z), 'the long zero write is a hole');
  t.ok(hole(base + 3 * Z, 4096), 'the trim is a hole');
});

t.test('a retried request applies once even after a newer write to the same block', async (t) => {
  const dir = await tempDir(t, 'xdevice-store-');
  const store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  const log = new Log(1);
  const dev = log.add(encodeCreateDevice(log.id(), 'd', MiB)).index;
  const first = log.id();
  log.add(encodeWrite(first, dev, 0, Buffer.alloc(512, 1)));
  const other = new Log(2);
  log.add(encodeWrite(other.id(), dev, 0, Buffer.alloc(512, 2)));
  log.add(encodeWrite(first, dev, 0, Buffer.alloc(512, 1))); // the retry
  const out = await store.applyBatch(log.entries, noConf);
  t.equal(out.at(-1)!.duplicate, true);
  t.same(await store.read(dev, 0, 512), Buffer.alloc(512, 2));
});

t.test('replay from a checkpoint gives the same bytes (idempotent apply)', async (t) => {
  const dir = await tempDir(t, 'xdevice-store-');
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1e9);
  t.comment(`XDEVICE_SEED=${seed}`);
  let x = seed;
  const rnd = (n: number) => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n);
  const log = new Log(3);
  const size = 2 * MiB;
  log.add(encodeCreateDevice(log.id(), 'a', size));
  log.add(encodeCreateDevice(log.id(), 'b', size));
  const ids = [1, 2];
  for (let i = 0; i < 300; i++) {
    const dev = ids[rnd(2)]!;
    const off = rnd(size / 512 - 16) * 512;
    const kind = rnd(10);
    if (kind < 7) log.add(encodeWrite(log.id(), dev, off, Buffer.alloc(512 * (1 + rnd(8)), rnd(256))));
    else if (kind < 8) log.add(encodeTrim(log.id(), dev, off, 512 * (1 + rnd(16))));
    else if (kind < 9) log.add(encodeWriteZeroes(log.id(), dev, off, 512 * (1 + rnd(16)), rnd(2) === 0));
    else log.add(encodeResizeDevice(log.id(), dev === 1 ? 'a' : 'b', size - 512 * rnd(4)));
  }
  log.add(encodeDeleteDevice(log.id(), 'b'));
  log.add(encodeCreateDevice(log.id(), 'b', size));
  const newB = log.entries.length;
  log.add(encodeWrite(log.id(), newB, 0, Buffer.alloc(512, 9)));

  // Reference: apply everything once.
  const ref = await BlockStore.open(join(dir, 'ref'), logger);
  await ref.applyBatch(log.entries, noConf);
  // Subject: apply up to a cut, checkpoint, apply the rest, then "crash" and replay from the checkpoint.
  const cut = 1 + rnd(log.entries.length - 1);
  let s = await BlockStore.open(join(dir, 's'), logger);
  await s.applyBatch(log.entries.slice(0, cut), noConf);
  await s.checkpoint(s.captureState());
  await s.applyBatch(log.entries.slice(cut), noConf);
  await s.closeFiles();
  s = await BlockStore.open(join(dir, 's'), logger);
  t.equal(s.appliedIndex, cut, 'restarts from the checkpoint');
  // replay everything the WAL would still hold, twice over
  await s.applyBatch(log.entries, noConf);
  t.equal(s.appliedIndex, log.entries.length);
  t.same(s.devices(), ref.devices());
  for (const d of ref.devices()) t.same(await s.read(d.id, 0, d.size), await ref.read(d.id, 0, d.size), `device ${d.name} identical`);
  t.same((await readdir(join(dir, 's', 'devices'))).sort(), ref.devices().map((d) => `dev-${d.id}.img`).sort(), 'no stray files');
  await s.closeFiles();
  await ref.closeFiles();
});

t.test('a damaged checkpoint refuses to load', async (t) => {
  const dir = await tempDir(t, 'xdevice-store-');
  const state = { clusterId: 'c', appliedIndex: 5, appliedTerm: 2, devices: [{ id: 1, name: 'x', size: 10 }], members: { n1: 'h:1' }, dedup: [] };
  const enc = encodeStoreState(state);
  t.same(decodeStoreState(enc), state);
  enc[enc.length - 2] ^= 1;
  t.throws(() => decodeStoreState(enc), CheckpointError);
  await writeFile(join(dir, 'checkpoint'), enc);
  await t.rejects(readCheckpoint(dir), CheckpointError);
});
