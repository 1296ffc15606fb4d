// MemoryDevice and FileDevice against the same model: a seeded random
// sequence of writes, trims and zeroings must read back exactly as a plain
// Buffer says, holes must be reported where nothing was written, and bounds
// and read-only are enforced with errno codes. Replay with XDEVICE_SEED.

import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import t from 'tap';
import type { BlockDevice } from '../../src/device/block-device.ts';
import { FileDevice } from '../../src/device/file.ts';
import { MemoryDevice } from '../../src/device/memory.ts';
import { StaticDeviceTable } from '../../src/device/table.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';

const SIZE = 4 << 20;

async function makeDevices(dir: string): Promise<Array<[string, BlockDevice]>> {
  return [
    ['memory', new MemoryDevice({ name: 'm', size: SIZE })],
    ['file', await FileDevice.open({ name: 'f', path: path.join(dir, 'f.img'), size: SIZE })],
  ];
}

async function codeOf(promise: Promise<unknown>): Promise<string | undefined> {
  try {
    await promise;
    return undefined;
  } catch (error) {
    return (error as { code?: string }).code;
  }
}

t.test('random writes, trims and zeroes read back like the model', async (t) => {
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  const dir = mkdtempSync(path.join(tmpdir(), 'xdevice-dev-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [kind, device] of await makeDevices(dir)) {
    const random = makeRandom(seed);
    const model = Buffer.alloc(SIZE);
    for (let step = 0; step < 300; step++) {
      const offset = random.int(0, SIZE - 1);
      const length = Math.min(random.int(0, 200_000), SIZE - offset);
      const op = random.int(0, 9);
      if (op < 6) {
        const data = random.bytes(length);
        if (op === 5 && device.writev !== undefined) {
          // The same bytes as a payload that arrived in pieces.
          const cut = random.int(0, length);
          await device.writev(offset, [data.subarray(0, cut), data.subarray(cut)]);
        } else {
          await device.write(offset, data, { fua: op === 0 });
        }
        data.copy(model, offset);
      } else if (op < 8) {
        await device.trim(offset, length);
        // TRIM leaves the contents unspecified; both devices zero them, and the model follows.
        model.fill(0, offset, offset + length);
      } else {
        await device.writeZeroes(offset, length, { noHole: op === 9 });
        model.fill(0, offset, offset + length);
      }
      if (step % 50 === 49) {
        await device.flush();
        t.ok((await device.read(0, SIZE)).equals(model), `${kind}: contents after ${step + 1} steps (XDEVICE_SEED=${seed})`);
      }
    }
    const extents = await device.blockStatus!(0, SIZE);
    t.equal(extents.reduce((n, e) => n + e.length, 0), SIZE, `${kind}: extents cover the device`);
    let at = 0;
    for (const extent of extents) {
      if (extent.flags & 2) t.ok(model.subarray(at, at + extent.length).every((b) => b === 0), `${kind}: a ZERO extent reads as zeroes at ${at}`);
      at += extent.length;
    }
    await device.close();
  }
});

t.test('holes: fresh devices are holes, writes allocate, trim frees', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'xdevice-dev-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [kind, device] of await makeDevices(dir)) {
    t.same(await device.blockStatus!(0, SIZE), [{ length: SIZE, flags: 3 }], `${kind}: all hole`);
    await device.write(1 << 20, Buffer.alloc(1 << 20, 1));
    const extents = await device.blockStatus!(0, SIZE);
    t.same(extents, [{ length: 1 << 20, flags: 3 }, { length: 1 << 20, flags: 0 }, { length: 2 << 20, flags: 3 }], `${kind}: one data extent`);
    await device.trim(1 << 20, 1 << 20);
    t.same(await device.blockStatus!(0, SIZE), [{ length: SIZE, flags: 3 }], `${kind}: trim made it a hole again`);
    if (device instanceof FileDevice) t.equal(statSync(device.path).blocks, 0, 'file: no blocks allocated after the hole punch');
    if (device instanceof MemoryDevice) t.equal(device.allocatedBytes, 0, 'memory: chunks freed');
    await device.close();
  }
});

t.test('sparse reads split data and holes', async (t) => {
  const device = new MemoryDevice({ name: 'm', size: SIZE });
  await device.write(100_000, Buffer.alloc(10, 7));
  const segments = await device.readSparse(0, 300_000);
  t.same(segments.map((s) => [s.offset, s.length, s.data === null ? 'hole' : 'data']), [
    [0, 65536, 'hole'],
    [65536, 65536, 'data'],
    [131072, 168928, 'hole'],
  ]);
  t.equal(segments[1]!.data![100_000 - 65536], 7);
});

t.test('bounds, read-only, fast zero and closed devices answer with errno codes', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'xdevice-dev-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const [kind, device] of await makeDevices(dir)) {
    t.equal(await codeOf(device.read(SIZE - 1, 2)), 'EINVAL', `${kind}: read past the end`);
    t.equal(await codeOf(device.write(SIZE - 1, Buffer.alloc(2))), 'ENOSPC', `${kind}: write past the end`);
    await device.close();
    t.equal(await codeOf(device.read(0, 1)), 'ESHUTDOWN', `${kind}: closed`);
  }
  const ro = new MemoryDevice({ name: 'ro', size: 4096, readOnly: true });
  t.equal(await codeOf(ro.write(0, Buffer.alloc(1))), 'EPERM');
  const file = await FileDevice.open({ name: 'f', path: path.join(dir, 'z.img'), size: SIZE });
  t.equal(await codeOf(file.writeZeroes(0, 4096, { noHole: true, fast: true })), 'ENOTSUP', 'allocated zeroes are not fast on a file');
  t.equal(await codeOf(file.writeZeroes(0, 4096, { fast: true })), undefined, 'hole punching is fast');
  await file.close();
  const reopened = await FileDevice.open({ name: 'f', path: path.join(dir, 'z.img'), size: SIZE });
  await reopened.close();
  t.equal(await codeOf(FileDevice.open({ name: 'f', path: path.join(dir, 'z.img'), size: SIZE / 2 })), 'EINVAL', 'a file larger than the device is refused');
});

t.test('file contents survive close and reopen', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'xdevice-dev-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'p.img');
  const a = await FileDevice.open({ name: 'p', path: file, size: SIZE });
  await a.write(12345, Buffer.from('persisted'), { fua: true });
  await a.close();
  const b = await FileDevice.open({ name: 'p', path: file, size: SIZE });
  t.equal((await b.read(12345, 9)).toString(), 'persisted');
  await b.close();
});

t.test('StaticDeviceTable: lookup, default export, duplicates', async (t) => {
  const a = new MemoryDevice({ name: 'a', size: 1 });
  const b = new MemoryDevice({ name: 'b', size: 1 });
  const table = new StaticDeviceTable([a, b]);
  t.equal(table.defaultName, 'a');
  t.equal(table.get('b'), b);
  t.equal(table.get('c'), undefined);
  t.same(table.list().map((d) => d.name), ['a', 'b']);
  t.equal(new StaticDeviceTable([a, b], 'b').defaultName, 'b');
  t.throws(() => new StaticDeviceTable([a, a]), /duplicate/);
  t.throws(() => new StaticDeviceTable([a], 'zz'), /default/);
  t.equal(new StaticDeviceTable([]).defaultName, undefined);
});
