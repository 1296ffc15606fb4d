// The server through the standard clients: nbdinfo (--list, --json, --map),
// nbd-client -l, nbdcopy checked with qemu-img compare, and qemu-io patterns
// (unaligned writes, write -z, discard), against memory and file backends.

import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { NbdClient } from '../../src/nbd/client.ts';
import { startNode } from './helpers/launcher.ts';
import { run, tempDir } from './helpers/tools.ts';

for (const backend of ['memory', 'file'] as const) {
  t.test(`nbdinfo --list, --json and --map (${backend})`, async (t) => {
    const server = await startNode({ backend, devices: ['a:64MiB', 'b:16MiB'] });
    t.teardown(() => server.stop());

    const list = await run('nbdinfo', ['--list', '--json', server.uri()]);
    t.equal(list.code, 0, list.stderr);
    const listed = JSON.parse(list.stdout) as { exports: Array<{ 'export-name': string; 'export-size': number }> };
    t.same(listed.exports.map((e) => [e['export-name'], e['export-size']]), [['a', 64 << 20], ['b', 16 << 20]]);

    const info = await run('nbdinfo', ['--json', server.uri('b')]);
    t.equal(info.code, 0, info.stderr);
    const json = JSON.parse(info.stdout) as { structured: boolean; exports: Array<Record<string, unknown>> };
    t.equal(json.structured, true);
    t.match(json.exports[0], {
      'export-name': 'b',
      contexts: ['base:allocation'],
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_fast_zero: true,
      can_df: true,
      can_multi_conn: true,
      block_size_minimum: 1,
      block_size_preferred: 4096,
    });

    const defaultExport = await run('nbdinfo', ['--size', server.uri()]);
    t.equal(defaultExport.stdout.trim(), String(64 << 20), 'the empty name is the default export (a)');

    const client = await NbdClient.connect({ host: server.host, port: server.nbdPort });
    await client.openDevice('a');
    await client.write(1 << 20, Buffer.alloc(1 << 20, 0x42), { fua: true });
    await client.close();
    const map = await run('nbdinfo', ['--map', '--json', server.uri('a')]);
    t.equal(map.code, 0, map.stderr);
    const extents = JSON.parse(map.stdout) as Array<{ offset: number; length: number; type: number }>;
    const data = extents.filter((e) => (e.type & 1) === 0);
    t.ok(data.length >= 1, 'some data is mapped');
    t.ok(data.every((e) => e.offset >= 1 << 20 && e.offset + e.length <= 2 << 20), 'data only where it was written');
    t.equal(data.reduce((n, e) => n + e.length, 0), 1 << 20, 'all of the written megabyte is data');
    t.equal(extents.reduce((n, e) => n + e.length, 0), 64 << 20, 'the map covers the export');
  });
}

t.test('nbd-client -l lists the exports', async (t) => {
  const server = await startNode({ backend: 'memory', devices: ['alpha:1MiB', 'beta:2MiB'] });
  t.teardown(() => server.stop());
  const listed = await run('nbd-client', ['-l', '127.0.0.1', '-p', String(server.nbdPort)]);
  t.equal(listed.code, 0, listed.stderr);
  t.match(listed.stdout, /alpha/);
  t.match(listed.stdout, /beta/);
});

t.test('nbdcopy round trip checked with qemu-img compare (file backend)', async (t) => {
  const dir = tempDir('nbdcopy');
  const server = await startNode({ backend: 'file', devices: ['disk:32MiB'] });
  t.teardown(() => server.stop());
  const source = path.join(dir, 'source.img');
  // Data with holes in between, so sparse copying and zeroing are exercised too.
  const image = Buffer.alloc(32 << 20);
  for (let i = 0; i < 32; i += 3) randomBytes(1 << 20).copy(image, i << 20);
  writeFileSync(source, image);
  const up = await run('nbdcopy', [source, server.uri('disk')]);
  t.equal(up.code, 0, `nbdcopy file → nbd: ${up.stderr}`);
  const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, server.uri('disk')]);
  t.equal(compare.code, 0, `qemu-img compare: ${compare.stdout}${compare.stderr}`);
  const back = path.join(dir, 'back.img');
  const down = await run('nbdcopy', [server.uri('disk'), back]);
  t.equal(down.code, 0, `nbdcopy nbd → file: ${down.stderr}`);
  t.ok(readFileSync(back).equals(image), 'copied back byte for byte');
});

t.test('qemu-io patterns: unaligned writes, write -z, discard', async (t) => {
  const server = await startNode({ backend: 'memory', devices: ['q:8MiB'] });
  t.teardown(() => server.stop());
  const io = async (...commands: string[]): Promise<string> => {
    const result = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), server.uri('q')]);
    t.equal(result.code, 0, `qemu-io ${commands.join('; ')}: ${result.stderr}`);
    t.notMatch(result.stdout, /Pattern verification failed|error/i, commands.join('; '));
    return result.stdout;
  };
  await io('write -P 0xab 1 4095', 'write -P 0xcd 4097 8191', 'write -P 0x11 65535 3');
  await io('read -P 0xab 1 4095', 'read -P 0 0 1', 'read -P 0 4096 1', 'read -P 0xcd 4097 8191', 'read -P 0x11 65535 3');
  await io('write -P 0x77 0 1M', 'write -z 4096 65536', 'read -P 0 4096 65536', 'read -P 0x77 0 4096', 'read -P 0x77 69632 4096');
  await io('write -z -u 131072 131072', 'read -P 0 131072 131072');
  await io('discard 262144 262144', 'read -P 0x77 524288 4096');
  const writeThenCheck = await io('write -P 0x55 7M 1M', 'flush', 'read -P 0x55 7M 1M');
  t.match(writeThenCheck, /read 1048576\/1048576 bytes/);
});
