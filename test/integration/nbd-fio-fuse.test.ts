// Heavier real clients: fio (ioengine=nbd) with crc32c verification, also
// with 4 jobs on separate connections; and nbdfuse + losetup giving a real
// block device that carries an ext4 filesystem (mkfs, mount, write, read,
// e2fsck -fn).

import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import path from 'node:path';
import t from 'tap';
import { startNode } from './helpers/launcher.ts';
import { run, tempDir } from './helpers/tools.ts';

async function fio(uri: string, extra: string[]): Promise<{ code: number | null; out: string }> {
  const result = await run('fio', [
    '--name=verify',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=16',
    '--verify=crc32c',
    '--do_verify=1',
    '--verify_fatal=1',
    '--output-format=json',
    ...extra,
  ], { timeoutMs: 180_000 });
  return { code: result.code, out: result.stdout + result.stderr };
}

t.test('fio with crc32c verification, one job and 4 jobs on separate connections', async (t) => {
  for (const backend of ['memory', 'file'] as const) {
    const server = await startNode({ backend, devices: ['f:64MiB'] });
    const single = await fio(server.uri('f'), ['--size=16m']);
    t.equal(single.code, 0, `fio verify (${backend}): ${single.code === 0 ? '' : single.out.slice(-2000)}`);
    // fio's nbd engine opens one connection per job; each job verifies its own region.
    const four = await fio(server.uri('f'), ['--numjobs=4', '--size=8m', '--offset_increment=16m']);
    t.equal(four.code, 0, `fio verify numjobs=4 (${backend}): ${four.code === 0 ? '' : four.out.slice(-2000)}`);
    const json = JSON.parse(four.out.slice(four.out.indexOf('{'))) as {
      jobs: Array<{ error: number; write: { io_bytes: number }; read: { io_bytes: number } }>;
    };
    t.equal(json.jobs.length, 4);
    t.ok(
      json.jobs.every((j) => j.error === 0 && j.write.io_bytes === 8 << 20 && j.read.io_bytes === 8 << 20),
      'each job wrote its 8 MiB and read all of it back verified',
    );
    t.ok(server.alive());
    await server.stop();
  }
});

t.test('nbdfuse + losetup + mkfs.ext4 + mount + write/read + e2fsck -fn', async (t) => {
  const server = await startNode({ backend: 'file', devices: ['fs:64MiB'] });
  t.teardown(() => server.stop());
  const dir = tempDir('nbdfuse');
  const fuseDir = path.join(dir, 'fuse');
  const mountDir = path.join(dir, 'mnt');
  mkdirSync(fuseDir);
  mkdirSync(mountDir);
  const fuse = spawn('nbdfuse', [path.join(fuseDir, 'disk'), server.uri('fs')], { stdio: ['ignore', 'pipe', 'pipe'] });
  let fuseLog = '';
  fuse.stderr.on('data', (c: Buffer) => (fuseLog += c.toString()));
  const fuseExit = new Promise<void>((resolve) => fuse.once('exit', () => resolve()));
  let loop = '';
  let mounted = false;
  t.teardown(async () => {
    if (mounted) await run('umount', [mountDir]);
    if (loop !== '') await run('losetup', ['-d', loop]);
    await run('fusermount3', ['-u', fuseDir]);
    fuse.kill('SIGTERM');
    await fuseExit;
  });
  const disk = path.join(fuseDir, 'disk');
  for (let i = 0; i < 300 && !existsSync(disk); i++) await new Promise((r) => setTimeout(r, 100));
  t.ok(existsSync(disk), `nbdfuse exposes the export as a file ${fuseLog}`);

  const losetup = await run('losetup', ['-f', '--show', disk]);
  t.equal(losetup.code, 0, `losetup: ${losetup.stderr}`);
  loop = losetup.stdout.trim();
  const mkfs = await run('mkfs.ext4', ['-q', '-F', loop]);
  t.equal(mkfs.code, 0, `mkfs.ext4: ${mkfs.stderr}`);
  const mount = await run('mount', [loop, mountDir]);
  t.equal(mount.code, 0, `mount: ${mount.stderr}`);
  mounted = mount.code === 0;

  const payload = randomBytes(5 << 20);
  writeFileSync(path.join(mountDir, 'payload.bin'), payload);
  for (let i = 0; i < 20; i++) writeFileSync(path.join(mountDir, `small-${i}.txt`), `file ${i}\n`.repeat(i + 1));
  await run('sync', []);
  await run('umount', [mountDir]);
  mounted = false;
  // Drop the loop device's page cache so the read below comes over NBD.
  await run('blockdev', ['--flushbufs', loop]);
  const remount = await run('mount', [loop, mountDir]);
  t.equal(remount.code, 0, `remount: ${remount.stderr}`);
  mounted = remount.code === 0;
  t.ok(readFileSync(path.join(mountDir, 'payload.bin')).equals(payload), 'the 5 MiB file reads back');
  t.equal(readFileSync(path.join(mountDir, 'small-7.txt'), 'utf8'), 'file 7\n'.repeat(8));
  await run('umount', [mountDir]);
  mounted = false;

  const fsck = await run('e2fsck', ['-fn', loop]);
  t.equal(fsck.code, 0, `e2fsck -fn is clean: ${fsck.stdout}${fsck.stderr}`);
});
