// Encrypted devices in the block store: the new commands' codec (round trip
// and a seeded fuzz of their decoder), and apply deciding from the device
// record alone — plaintext, unaligned and stale writes refused as recorded
// results; the rekey race (a write into the window between the job's read
// and its step makes the step refused, so the write is never lost); the
// watermark and key generation surviving a checkpoint; rewrap all-or-nothing.
import t from 'tap';
import { pino } from 'pino';
import { BlockStore, type ApplyOutcome } from '../../src/device/block-store.ts';
import { decodeStoreState, encodeStoreState } from '../../src/device/checkpoint.ts';
import {
  CommandDecodeError,
  CommandOp,
  DEVICE_FLAG_ENCRYPTED,
  decodeCommand,
  encodeCommand,
  encodeCreateDevice,
  encodeEncryptedWrite,
  encodeRekeyStart,
  encodeRekeyStep,
  encodeRewrapKeys,
  encodeTrim,
  encodeWrite,
} from '../../src/device/commands.ts';
import { STALE_KEY, wrappedKey } from '../../src/device/encryption.ts';
import { newDataKey, wrapDataKey, type WrappedKey } from '../../src/crypt/wrap.ts';
import { XtsKey } from '../../src/crypt/xts.ts';
import { decryptBlocks, encryptBlocks } from '../../src/replica/device.ts';
import { limits } from '../../src/limits.ts';
import { type Entry } from '../../src/raft/types.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';
import { tempDir, Log } from './helpers/store-log.ts';

const logger = pino({ level: 'silent' });
const B = limits.cryptSectorBytes;
const STEP = limits.rekeyStepBytes;
const seed = seedFromEnv();
console.log(`# XDEVICE_SEED=${seed}`);
const rnd = makeRandom(seed);
const kek1 = { id: 'k1', key: Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 7 + 3) & 255)) };
const kek2 = { id: 'k2', key: Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 11 + 5) & 255)) };

async function apply(store: BlockStore, ...entries: Entry[]): Promise<ApplyOutcome[]> {
  return store.applyBatch(entries, () => {});
}

function key(kek = kek1): { raw: Buffer; wrapped: WrappedKey } {
  const raw = newDataKey();
  return { raw, wrapped: wrapDataKey(kek, raw) };
}

t.test('codec: the encryption commands round-trip', async (t) => {
  const id = { clientId: 5, seq: 3, firstUnacked: 2 };
  const k = key().wrapped;
  const k2 = key(kek2).wrapped;
  const create = decodeCommand(encodeCreateDevice(id, 'secret', 8 * B, DEVICE_FLAG_ENCRYPTED, k));
  t.match(create, { op: CommandOp.CreateDevice, name: 'secret', flags: DEVICE_FLAG_ENCRYPTED, key: { kekId: 'k1' } });
  t.same((create as { key: WrappedKey }).key.wrapped, k.wrapped);
  t.throws(() => encodeCreateDevice(id, 'x', B, DEVICE_FLAG_ENCRYPTED), /needs its wrapped key/);
  const cmds = [
    decodeCommand(encodeRewrapKeys(id, [{ deviceId: 4, generation: 2, key: k }, { deviceId: 9, generation: 1, key: k, rekeyKey: k2 }])),
    decodeCommand(encodeEncryptedWrite(id, 4, B, 3, 2 * B, [Buffer.alloc(B, 1), Buffer.alloc(B, 2)])),
    decodeCommand(encodeRekeyStart(id, 4, 2, k2)),
    decodeCommand(encodeRekeyStep(id, 4, 2, STEP, 77, [Buffer.alloc(B, 3)])),
  ];
  t.match(cmds[0], { op: CommandOp.RewrapKeys, devices: [{ deviceId: 4, generation: 2 }, { deviceId: 9, rekeyKey: { kekId: 'k2' } }] });
  t.match(cmds[1], { op: CommandOp.EncryptedWrite, deviceId: 4, offset: B, generation: 3, watermark: 2 * B });
  t.equal((cmds[1] as { data: Buffer }).data.length, 2 * B);
  t.match(cmds[2], { op: CommandOp.Rekey, kind: 'start', deviceId: 4, generation: 2, key: { kekId: 'k2' } });
  t.match(cmds[3], { op: CommandOp.Rekey, kind: 'step', deviceId: 4, generation: 2, offset: STEP, readAt: 77 });
  for (const c of [create, ...cmds]) t.same(decodeCommand(encodeCommand(c)), c, `op ${c.op} re-encodes to the same bytes`);
});

t.test('codec: seeded fuzz — mutated encryption commands decode to a command or a CommandDecodeError', async (t) => {
  const id = { clientId: 5, seq: 3, firstUnacked: 1 };
  const k = key().wrapped;
  const seeds = [
    encodeCreateDevice(id, 'secret', 8 * B, DEVICE_FLAG_ENCRYPTED, k),
    encodeRewrapKeys(id, [{ deviceId: 4, generation: 2, key: k, rekeyKey: k }]),
    encodeEncryptedWrite(id, 4, B, 3, 2 * B, [Buffer.alloc(B, 1)]),
    encodeRekeyStart(id, 4, 2, k),
    encodeRekeyStep(id, 4, 2, 0, 77, [Buffer.alloc(64, 3)]),
  ];
  let decoded = 0;
  let refused = 0;
  for (let i = 0; i < 5000; i++) {
    const base = Buffer.from(seeds[rnd.int(0, seeds.length - 1)]!);
    let buf: Buffer = base;
    const mode = rnd.int(0, 2);
    if (mode === 0) for (let j = rnd.int(1, 4); j > 0; j--) buf[rnd.int(2, buf.length - 1)] = rnd.int(0, 255);
    else if (mode === 1) buf = base.subarray(0, rnd.int(0, base.length - 1));
    else buf = Buffer.concat([base, rnd.bytes(rnd.int(1, 8))]);
    try {
      const c = decodeCommand(buf);
      // Whatever decodes must encode back (a value accepted can be written again).
      encodeCommand(c);
      decoded++;
    } catch (err) {
      if (!(err instanceof CommandDecodeError)) t.fail(`${(err as Error).message} (XDEVICE_SEED=${seed}, case ${i})`);
      refused++;
    }
  }
  // Both paths ran: a fuzzer whose inputs all fail (or all pass) the first check tests nothing beyond it.
  t.ok(decoded > 0 && refused > 0, `of 5000 mutations ${decoded} decoded and re-encoded, ${refused} refused with CommandDecodeError`);
});

t.test('apply: ciphertext only, refusals recorded, the rekey race loses no write, state survives a checkpoint', async (t) => {
  const dir = await tempDir(t, 'xdevice-enc-');
  const store = await BlockStore.open(dir, logger);
  const log = new Log(9);
  const g1 = key();
  const k1 = new XtsKey(g1.raw);
  const size = 2 * STEP + 4 * B;
  const create = log.propose((id) => encodeCreateDevice(id, 'enc', size, DEVICE_FLAG_ENCRYPTED, g1.wrapped));
  const [created] = await apply(store, create);
  t.notOk(created!.error);
  const devId = create.index;
  t.match(store.deviceById(devId)!.encryption, { generation: 1, key: { kekId: 'k1' } });

  const plain = Buffer.alloc(2 * B, 0x5a);
  const keys1 = { current: k1, generation: 1, watermark: 0 };
  const outs = await apply(
    store,
    log.propose((id) => encodeWrite(id, devId, 0, plain)),
    log.propose((id) => encodeEncryptedWrite(id, devId, 100, 1, 0, [Buffer.alloc(B)])),
    log.propose((id) => encodeEncryptedWrite(id, devId, 0, 1, 0, encryptBlocks(keys1, 0, plain))),
    log.propose((id) => encodeEncryptedWrite(id, devId, 0, 2, 0, encryptBlocks(keys1, 0, plain))),
    log.propose((id) => encodeTrim(id, devId, 10, B)),
  );
  t.match(outs.map((o) => o.error?.code), ['EPERM', 'EINVAL', undefined, STALE_KEY, 'EINVAL'], 'plaintext, unaligned, ok, stale generation, unaligned trim');
  const stored = await store.read(devId, 0, 2 * B);
  t.equal(stored.indexOf(plain.subarray(0, 16)), -1, 'the file holds no plaintext');
  t.same(decryptBlocks(keys1, 0, Buffer.from(stored)), plain);

  // Rekey to generation 2.
  const g2 = key(kek2);
  const k2 = new XtsKey(g2.raw);
  const [start] = await apply(store, log.propose((id) => encodeRekeyStart(id, devId, 2, g2.wrapped)));
  t.notOk(start!.error);
  t.match(store.deviceById(devId)!.encryption!.rekey, { generation: 2, watermark: 0 });

  // The job reads window 0 at readAt...
  const readAt = store.appliedIndex;
  const window = await store.read(devId, 0, STEP);
  const windowPlain = decryptBlocks(keys1, 0, Buffer.from(window));
  // ... a client write (old key: watermark 0) lands in the window first ...
  const newer = Buffer.alloc(B, 0x77);
  const [w] = await apply(store, log.propose((id) => encodeEncryptedWrite(id, devId, B, 1, 0, encryptBlocks(keys1, B, newer))));
  t.notOk(w!.error);
  // ... so the step from the old read is refused: it would have undone that write.
  const keys2 = { current: k2, generation: 2, watermark: 0 };
  const [stale] = await apply(store, log.propose((id) => encodeRekeyStep(id, devId, 2, 0, readAt, encryptBlocks(keys2, 0, windowPlain))));
  t.equal(stale!.error?.code, STALE_KEY);
  t.match(stale!.error?.message, /after the step read it/);
  // Read again: the step goes through and the watermark moves.
  const readAt2 = store.appliedIndex;
  const again = decryptBlocks(keys1, 0, await store.read(devId, 0, STEP));
  t.same(again.subarray(B, 2 * B), newer);
  const [ok] = await apply(store, log.propose((id) => encodeRekeyStep(id, devId, 2, 0, readAt2, encryptBlocks(keys2, 0, again))));
  t.notOk(ok!.error);
  t.equal(store.deviceById(devId)!.encryption!.rekey!.watermark, STEP);
  // A write classified by the old watermark is refused where it straddles the new one; one above it still lands.
  const straddle = Buffer.alloc(2 * B, 0x11);
  const mixed = { current: k1, rekey: k2, generation: 1, watermark: STEP };
  const [refused, above] = await apply(
    store,
    log.propose((id) => encodeEncryptedWrite(id, devId, STEP - B, 1, 0, encryptBlocks(keys1, STEP - B, straddle))),
    log.propose((id) => encodeEncryptedWrite(id, devId, STEP + 2 * STEP - STEP, 1, 0, encryptBlocks(keys1, 2 * STEP, Buffer.alloc(B, 0x22)))),
  );
  t.equal(refused!.error?.code, STALE_KEY);
  t.notOk(above!.error, 'a write wholly above the watermark is under the old key either way');
  const [reproposed] = await apply(store, log.propose((id) => encodeEncryptedWrite(id, devId, STEP - B, 1, STEP, encryptBlocks(mixed, STEP - B, straddle))));
  t.notOk(reproposed!.error, 'encrypted again with the split at the watermark, it applies');
  t.same(decryptBlocks(mixed, STEP - B, await store.read(devId, STEP - B, 2 * B)), straddle);

  // Checkpoint round trip keeps generation, watermark and touched.
  const state = decodeStoreState(encodeStoreState(store.captureState()));
  t.same(state.devices[0]!.encryption, store.deviceById(devId)!.encryption);
  const bad = JSON.parse(JSON.stringify(store.captureState()));
  bad.devices[0].encryption.rekey.watermark = 3;
  t.throws(() => decodeStoreState(encodeStoreState(bad)), /malformed/);

  // Rewrap: the same data key under kek2 applies; a different key (check value) refuses the whole command.
  const enc = store.deviceById(devId)!.encryption!;
  const rewrapped = { deviceId: devId, generation: 1, key: wrapDataKey(kek2, g1.raw), rekeyKey: wrapDataKey(kek2, g2.raw) };
  const [wrongKey, noRekeyKey, rewrap] = await apply(
    store,
    log.propose((id) => encodeRewrapKeys(id, [{ ...rewrapped, key: wrapDataKey(kek2, newDataKey()) }])),
    log.propose((id) => encodeRewrapKeys(id, [{ deviceId: devId, generation: 1, key: rewrapped.key }])),
    log.propose((id) => encodeRewrapKeys(id, [rewrapped])),
  );
  t.equal(wrongKey!.error?.code, 'XDEVICE_ERR_CONFLICT');
  t.equal(noRekeyKey!.error?.code, 'XDEVICE_ERR_CONFLICT');
  t.notOk(rewrap!.error);
  t.equal(store.deviceById(devId)!.encryption!.key.kekId, 'k2');
  t.equal(store.deviceById(devId)!.encryption!.key.kcv, enc.key.kcv, 'the same data key');
  t.same(wrappedKey(store.deviceById(devId)!.encryption!.key).kcv, g1.wrapped.kcv);

  // Finish the rekey: steps over the rest; the device is then at generation 2 with one key.
  for (let guard = 0; guard < 10 && store.deviceById(devId)!.encryption!.rekey; guard++) {
    const e = store.deviceById(devId)!.encryption!;
    const wm = e.rekey!.watermark;
    const len = Math.min(STEP, size - wm);
    const at = store.appliedIndex;
    const p = decryptBlocks(keys1, wm, await store.read(devId, wm, len));
    const [s] = await apply(store, log.propose((id) => encodeRekeyStep(id, devId, 2, wm, at, encryptBlocks(keys2, wm, p))));
    t.notOk(s!.error);
  }
  t.match(store.deviceById(devId)!.encryption, { generation: 2, key: { kekId: 'k2' } });
  t.notOk(store.deviceById(devId)!.encryption!.rekey);
  const all = decryptBlocks(keys2, 0, await store.read(devId, 0, size));
  t.same(all.subarray(0, B), plain.subarray(0, B));
  t.same(all.subarray(B, 2 * B), newer);
  t.same(all.subarray(STEP - B, STEP + B), straddle);
  t.same(all.subarray(2 * STEP, 2 * STEP + B), Buffer.alloc(B, 0x22));
  t.ok(all.subarray(2 * STEP + B).every((b) => b === 0), 'holes stayed zero');
  const extents = store.extents(devId, 2 * STEP + B, 3 * B);
  t.ok(extents.every((x) => x.flags !== 0), 'an untouched range is still a hole after the rekey');
  await store.closeFiles();
});
