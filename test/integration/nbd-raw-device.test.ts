// RawDevice on a real block device: a loop device over a sparse file
// (losetup -f --show), its size from BLKGETSIZE64, TRIM as BLKDISCARD (the
// loop driver punches holes in the backing file, which we can observe),
// write zeroes, flush; then served over NBD and read with nbdinfo/qemu-io.

import { closeSync, openSync, ftruncateSync, statSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { RawDevice } from '../../src/device/raw.ts';
import { StaticDeviceTable } from '../../src/device/table.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import { run, tempDir } from './helpers/tools.ts';

const SIZE = 32 << 20;

t.test('RawDevice on a loop device, directly and over NBD', async (t) => {
  const dir = tempDir('raw');
  const backing = path.join(dir, 'backing.img');
  const fd = openSync(backing, 'w');
  ftruncateSync(fd, SIZE);
  closeSync(fd);
  const losetup = await run('losetup', ['-f', '--show', backing]);
  t.equal(losetup.code, 0, `losetup: ${losetup.stderr}`);
  const loop = losetup.stdout.trim();
  t.teardown(() => run('losetup', ['-d', loop]).then(() => undefined));

  const device = await RawDevice.open({ name: 'raw', path: loop });
  t.equal(device.size, SIZE, 'BLKGETSIZE64 gives the size');
  t.ok(device.sectorBytes === 512 || device.sectorBytes === 4096, `sector size ${device.sectorBytes}`);

  const data = Buffer.alloc(4 << 20);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
  await device.write(1 << 20, data, { fua: true });
  await device.flush();
  t.ok((await device.read(1 << 20, data.length)).equals(data), 'write then read');
  const allocatedBefore = statSync(backing).blocks;
  t.ok(allocatedBefore * 512 >= data.length, 'the backing file holds the data');

  await device.trim(1 << 20, 2 << 20);
  await device.flush();
  const allocatedAfter = statSync(backing).blocks;
  t.ok(allocatedAfter < allocatedBefore, `BLKDISCARD punched the backing file (${allocatedBefore} → ${allocatedAfter} blocks)`);

  await device.writeZeroes(3 << 20, 1000 + (1 << 20), { noHole: true });
  const zeroed = await device.read(3 << 20, 1000 + (1 << 20));
  t.ok(zeroed.every((b) => b === 0), 'unaligned write zeroes (BLKZEROOUT plus edges)');
  t.equal((await device.read((4 << 20) + 1000, 1))[0], data[(3 << 20) + 1000], 'bytes after the zeroed range are untouched');

  const server = new NbdServer({ devices: new StaticDeviceTable([device]) });
  const { port } = await server.listen('127.0.0.1', 0);
  t.teardown(async () => {
    await server.close();
    await device.close();
  });
  const size = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/raw`]);
  t.equal(size.stdout.trim(), String(SIZE));
  const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x3c 20M 1M', '-c', 'discard 24M 1M', '-c', 'read -P 0x3c 20M 1M', `nbd://127.0.0.1:${port}/raw`]);
  t.equal(io.code, 0, io.stderr);
  t.notMatch(io.stdout, /verification failed/);
});
