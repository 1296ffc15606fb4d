// The read-only flag and verify in the block store: their command codec,
// apply (EPERM for writes to a read-only device, the same on every store),
// the flag in checkpoints (old ones without it still load), and the verify
// scan reading the device exactly as of the VERIFY entry while later writes
// apply in the same and later batches.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { BlockStore } from '../../src/device/block-store.ts';
import { decodeStoreState, encodeStoreState, readCheckpoint } from '../../src/device/checkpoint.ts';
import {
  CommandOp,
  DEVICE_FLAG_READ_ONLY,
  decodeCommand,
  encodeCreateDevice,
  encodeResizeDevice,
  encodeSetDeviceFlags,
  encodeTrim,
  encodeVerifyDevice,
  encodeVerifyResult,
  encodeWrite,
  encodeWriteZeroes,
} from '../../src/device/commands.ts';
import { compareVerify, decodeDigests, encodeDigests, verifyRangeBytes, type ScanOutcome, type VerifyRecord } from '../../src/device/verify.ts';
import { crc32c } from '../../src/native.ts';
import { limits } from '../../src/limits.ts';
import { tempDir, Log } from './helpers/store-log.ts';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;
const noConf = () => {};

t.test('codec: flags, verify and results round-trip; old CREATE_DEVICE entries still decode', async (t) => {
  const id = { clientId: 12345, seq: 4, firstUnacked: 2 };
  const plain = encodeCreateDevice(id, 'd', 4096);
  t.same(decodeCommand(plain), { op: CommandOp.CreateDevice, ...id, name: 'd', size: 4096 }, 'no flags byte: read-write');
  t.equal(plain.length, encodeCreateDevice(id, 'd', 4096, 0).length, 'flags 0 encode as before flags existed');
  t.same(decodeCommand(encodeCreateDevice(id, 'd', 4096, DEVICE_FLAG_READ_ONLY)), { op: CommandOp.CreateDevice, ...id, name: 'd', size: 4096, flags: 1 });
  t.same(decodeCommand(encodeSetDeviceFlags(id, 'dev', 1)), { op: CommandOp.SetDeviceFlags, ...id, name: 'dev', flags: 1 });
  t.same(decodeCommand(encodeSetDeviceFlags(id, 'dev', 0)), { op: CommandOp.SetDeviceFlags, ...id, name: 'dev', flags: 0 });
  t.throws(() => decodeCommand(encodeSetDeviceFlags(id, 'dev', 6)), { code: 'XDEVICE_ERR_BAD_COMMAND' }, 'unknown flags refused');
  t.same(decodeCommand(encodeVerifyDevice(id, 'dev', MiB)), { op: CommandOp.VerifyDevice, ...id, name: 'dev', rangeBytes: MiB });
  const digests = Uint32Array.from([0, 1, 0xffffffff, 0xdeadbeef]);
  t.same(decodeCommand(encodeVerifyResult(id, 77, 'node2', { digests })), { op: CommandOp.VerifyResult, ...id, verifyId: 77, nodeId: 'node2', digests });
  t.same(decodeCommand(encodeVerifyResult(id, 77, 'node2', { why: 'replayed' })), { op: CommandOp.VerifyResult, ...id, verifyId: 77, nodeId: 'node2', why: 'replayed' });
  const long = decodeCommand(encodeVerifyResult(id, 1, 'n', { why: 'é'.repeat(200) }));
  t.ok('why' in long && long.why !== undefined && Buffer.byteLength(long.why) <= 255 && long.why.startsWith('éé'), 'a long reason is cut to 255 bytes');
  const truncated = encodeVerifyResult(id, 77, 'node2', { digests }).subarray(0, -1);
  t.throws(() => decodeCommand(truncated), { code: 'XDEVICE_ERR_BAD_COMMAND' }, 'a digest count that does not match the payload is refused');
  t.same(decodeDigests(encodeDigests(digests)), digests);
  t.equal(verifyRangeBytes(MiB * 3), MiB);
  t.ok(Math.ceil(limits.deviceBytesMax / verifyRangeBytes(limits.deviceBytesMax)) <= limits.verifyRangesMax, 'the largest device fits one result');
});

t.test('a read-only device refuses writes at apply with EPERM; reads still work; the flag survives a checkpoint', async (t) => {
  const dir = await tempDir(t, 'xdevice-rov-');
  let store = await BlockStore.open(dir, logger);
  const log = new Log();
  const dev = log.add(encodeCreateDevice(log.id(), 'ro', MiB, DEVICE_FLAG_READ_ONLY)).index;
  const w1 = log.add(encodeWrite(log.id(), dev, 0, Buffer.alloc(4096, 1))).index;
  const tr = log.add(encodeTrim(log.id(), dev, 0, 4096)).index;
  const wz = log.add(encodeWriteZeroes(log.id(), dev, 0, 4096, false)).index;
  log.add(encodeSetDeviceFlags(log.id(), 'ro', 0));
  const w2 = log.add(encodeWrite(log.id(), dev, 4096, Buffer.alloc(4096, 2))).index;
  log.add(encodeSetDeviceFlags(log.id(), 'ro', DEVICE_FLAG_READ_ONLY));
  const w3 = log.add(encodeWrite(log.id(), dev, 4096, Buffer.alloc(4096, 3))).index;
  const missing = log.add(encodeSetDeviceFlags(log.id(), 'nope', 1)).index;
  const out = await store.applyBatch(log.entries, noConf);
  const err = (i: number) => out.find((o) => o.index === i)?.error?.code;
  t.equal(err(w1), 'EPERM', 'write refused while read-only');
  t.equal(err(tr), 'EPERM', 'trim refused');
  t.equal(err(wz), 'EPERM', 'write-zeroes refused');
  t.equal(err(w2), undefined, 'write accepted once read-write');
  t.equal(err(w3), 'EPERM', 'refused again once read-only');
  t.equal(err(missing), 'XDEVICE_ERR_NOT_FOUND');
  t.same(await store.read(dev, 0, 8192), Buffer.concat([Buffer.alloc(4096), Buffer.alloc(4096, 2)]), 'only the read-write write landed');
  t.same(store.device('ro'), { id: dev, name: 'ro', size: MiB, readOnly: true });
  await store.checkpoint(store.captureState());
  await store.closeFiles();
  store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  t.same(store.device('ro'), { id: dev, name: 'ro', size: MiB, readOnly: true }, 'the flag came back from the checkpoint');
  t.equal((await readCheckpoint(dir))!.devices[0]!.readOnly, true);
});

t.test('an old checkpoint (no readOnly, no verifies) loads; a malformed flag does not', async (t) => {
  const old = { clusterId: 'c', appliedIndex: 5, appliedTerm: 2, devices: [{ id: 1, name: 'x', size: 4096 }], members: { n1: 'h:1' }, dedup: [] };
  const state = decodeStoreState(encodeStoreState(old));
  t.same(state, old);
  t.equal(state.devices[0]!.readOnly, undefined, 'read-write');
  const bad = { ...old, devices: [{ id: 1, name: 'x', size: 4096, readOnly: 'yes' }] };
  t.throws(() => decodeStoreState(encodeStoreState(bad as never)), { code: 'XDEVICE_ERR_CHECKPOINT' });
  const badVerify = { ...old, verifies: [{ id: 'x' }] };
  t.throws(() => decodeStoreState(encodeStoreState(badVerify as never)), { code: 'XDEVICE_ERR_CHECKPOINT' });
});

/** CRC32C of each range of `bytes`. */
function expectedDigests(bytes: Buffer, rangeBytes: number): Uint32Array {
  const n = Math.ceil(bytes.length / rangeBytes);
  return Uint32Array.from({ length: n }, (_, i) => crc32c(bytes.subarray(i * rangeBytes, Math.min(bytes.length, (i + 1) * rangeBytes))));
}

t.test('verify checksums the device exactly as of its entry while later writes apply', async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1e9);
  t.comment(`XDEVICE_SEED=${seed}`);
  let x = seed;
  const rnd = (n: number) => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n);
  const dir = await tempDir(t, 'xdevice-rov-');
  const store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  const outcomes: ScanOutcome[] = [];
  store.verifies.listener = { inexactAt: () => undefined, result: (_v, o) => outcomes.push(o) };
  const size = 8 * MiB;
  const rangeBytes = MiB;
  const shadow = Buffer.alloc(size);
  const log = new Log();
  const dev = log.add(encodeCreateDevice(log.id(), 'v', size)).index;
  const write = (off: number, len: number) => {
    const data = randomBytes(len);
    data.copy(shadow, off);
    log.add(encodeWrite(log.id(), dev, off, data));
  };
  const randomOp = () => {
    const off = rnd(size / 4096 - 64) * 4096;
    const len = 4096 * (1 + rnd(64));
    if (rnd(5) === 0) {
      shadow.fill(0, off, off + len);
      log.add(encodeTrim(log.id(), dev, off, len));
    } else write(off, len);
  };
  for (let i = 0; i < 40; i++) randomOp();
  const verify = log.add(encodeVerifyDevice(log.id(), 'v', rangeBytes)).index;
  const atVerify = Buffer.from(shadow);
  // Later writes in the same batch, every range touched (and some many times).
  for (let i = 0; i < 60; i++) randomOp();
  for (let r = 0; r < size / rangeBytes; r++) write(r * rangeBytes + 512 * rnd(100), 512);
  const firstBatch = log.entries.length;
  // ...and in later batches, while the scan may still be running.
  for (let i = 0; i < 60; i++) randomOp();
  await store.applyBatch(log.entries.slice(0, firstBatch), noConf);
  await store.applyBatch(log.entries.slice(firstBatch), noConf);
  for (let i = 0; i < 100 && outcomes.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  t.equal(outcomes.length, 1, 'the scan finished');
  const got = outcomes[0]!;
  t.ok('digests' in got, 'with checksums');
  if ('digests' in got) t.same([...got.digests], [...expectedDigests(atVerify, rangeBytes)], 'each range as it was right after the VERIFY entry');
  t.same(await store.read(dev, 0, size), shadow, 'and the later writes all landed');
  const v = store.verifies.get(verify)!;
  t.match(v, { id: verify, device: 'v', deviceId: dev, size, rangeBytes, results: {} });

  // Results apply into the record; the comparison names the odd node and range.
  const good = 'digests' in got ? got.digests : new Uint32Array(0);
  const bad = Uint32Array.from(good);
  bad[5] = bad[5]! ^ 1;
  const more = new Log(9);
  more.entries = [...log.entries];
  more.add(encodeVerifyResult(more.id(), verify, 'n1', { digests: good }));
  more.add(encodeVerifyResult(more.id(), verify, 'n2', { digests: good }));
  more.add(encodeVerifyResult(more.id(), verify, 'n3', { digests: bad }));
  more.add(encodeVerifyResult(more.id(), verify, 'n3', { digests: good })); // a later one from n3 does not replace its first
  await store.applyBatch(more.entries.slice(log.entries.length), noConf);
  const report = compareVerify(store.verifies.get(verify)!, ['n1', 'n2', 'n3', 'n4']);
  t.same(report.verified, ['n1', 'n2', 'n3']);
  t.same(report.pending, ['n4']);
  t.equal(report.complete, false);
  t.same(
    report.mismatches.map((m) => ({ range: m.range, offset: m.offset, length: m.length, nodes: m.nodes })),
    [{ range: 5, offset: 5 * MiB, length: MiB, nodes: ['n3'] }],
  );
  // Verify records travel in checkpoints.
  const state = decodeStoreState(encodeStoreState(store.captureState()));
  t.same(state.verifies!.find((r) => r.id === verify)!.results, store.verifies.get(verify)!.results);
});

t.test('verify: a replaying node says so; a resize or delete during the scan aborts it; only the latest are kept', async (t) => {
  const dir = await tempDir(t, 'xdevice-rov-');
  const store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  const results: [VerifyRecord, ScanOutcome][] = [];
  let inexact: string | undefined = 'replayed';
  store.verifies.listener = { inexactAt: () => inexact, result: (v, o) => results.push([v, o]) };
  const log = new Log();
  log.add(encodeCreateDevice(log.id(), 'a', 64 * MiB));
  log.add(encodeVerifyDevice(log.id(), 'a', MiB));
  await store.applyBatch(log.entries, noConf);
  t.same(results.map(([, o]) => o), [{ why: 'replayed' }], 'inexact: no scan, the reason is the result');
  inexact = undefined;
  const start = log.entries.length;
  log.add(encodeVerifyDevice(log.id(), 'a', MiB));
  log.add(encodeVerifyDevice(log.id(), 'a', 1000)); // not a multiple of 512
  const badRange = log.entries.length;
  log.add(encodeResizeDevice(log.id(), 'a', 32 * MiB));
  const out = await store.applyBatch(log.entries.slice(start), noConf);
  t.equal(out.find((o) => o.index === badRange)!.error!.code, 'XDEVICE_ERR_INVALID', 'a bad range size is a failed command');
  for (let i = 0; i < 100 && results.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
  const aborted = results[1]![1];
  t.ok('why' in aborted && /resized/.test(aborted.why), `a resize aborts it (${JSON.stringify(aborted).slice(0, 80)})`);
  const s2 = log.entries.length;
  for (let i = 0; i < limits.verifiesKept + 2; i++) log.add(encodeVerifyDevice(log.id(), 'a', MiB));
  await store.applyBatch(log.entries.slice(s2), noConf);
  const ids = store.verifies.list().map((v) => v.id);
  t.equal(ids.length, limits.verifiesKept, 'the table keeps the latest');
  t.equal(ids.at(-1), log.entries.length);
});
