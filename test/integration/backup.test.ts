// Backup and restore through snapshots, on a real 3-node cluster: a full
// backup and two incrementals (each reading only the blocks the snapshot's
// qemu:dirty-bitmap marks), restored into new devices, each bit-exact to the
// device as of its snapshot (nbdcopy + qemu-img compare); identical blocks
// within the device and across backups are stored once. Compressible blocks
// are stored LZ4-compressed (smaller than the data, restored bit-exact), a
// backup in the old format (xdevice-backup/1) still restores, and a damaged
// block or an unknown format is reported.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { run, runCli, tempDir } from './helpers/tools.ts';
import { limits } from '../../src/limits.ts';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const B = limits.snapshotBlockBytes;

t.test('full + two incrementals restore bit-exact; blocks deduplicated', { timeout: 300_000 }, async (t) => {
  const c = await Cluster.start({ devices: ['vol:8MiB'] });
  t.teardown(() => c.stop());
  const eps = c.slots.map((s) => `127.0.0.1:${s.ports.admin}`).join(',');
  const cli = (...args: string[]) => runCli(['--endpoints', eps, ...args]);
  const dir = tempDir('backup');
  const out = tempDir('backup-cmp');
  const client = await c.client(0, 'vol');
  t.teardown(() => client.close());

  // The same 64 KiB block 40 times, and 2 MiB of random data: within-device duplicates.
  const same = randomBytes(B);
  const state = Buffer.alloc(SIZE);
  for (let i = 0; i < 40; i++) same.copy(state, (64 + i) * B);
  randomBytes(2 * MiB).copy(state, 0);
  for (let off = 0; off < SIZE; off += MiB) await client.write(off, state.subarray(off, off + MiB));
  const images: Record<string, Buffer> = {};
  const backup = async (name: string, since?: string) => {
    t.equal((await cli('snapshot', 'create', 'vol', name)).code, 0, `snapshot ${name}`);
    images[name] = Buffer.from(state);
    const r = await cli('backup', 'vol', '--to', dir, '--snapshot', name, ...(since ? ['--since', since] : []), '-w', 'json');
    t.equal(r.code, 0, `backup of ${name}${since ? ` since ${since}` : ''}: ${r.stderr}`);
    return JSON.parse(r.stdout) as { id: string; kind: string; blocks: number; stored: number; deduplicated: number };
  };
  const full = await backup('b1');
  t.match(full, { kind: 'full' });
  t.equal(full.stored, 32 + 1, `full: 32 random blocks and the repeated block stored once (${full.stored})`);
  t.ok(full.deduplicated >= 39, 'the repeated block deduplicated');

  // Incremental 1: 3 blocks rewritten, one zeroed.
  const w1 = randomBytes(3 * B);
  await client.write(10 * B, w1);
  w1.copy(state, 10 * B);
  await client.writeZeroes(64 * B, B);
  state.fill(0, 64 * B, 65 * B);
  const inc1 = await backup('b2', 'b1');
  t.match(inc1, { kind: 'incremental', blocks: 4, stored: 3 }, 'incremental 1: only the 4 changed blocks read, 3 stored');

  // Incremental 2 (across a snapshot that is not backed up): one block gets content seen before.
  await client.write(120 * B, same);
  same.copy(state, 120 * B);
  t.equal((await cli('snapshot', 'create', 'vol', 'between')).code, 0);
  const w2 = randomBytes(4096);
  await client.write(5 * B + 100, w2);
  w2.copy(state, 5 * B + 100);
  const inc2 = await backup('b3', 'b2');
  t.match(inc2, { kind: 'incremental', blocks: 2, stored: 1, deduplicated: 1 }, 'incremental 2: the dirty bitmaps of both later snapshots, a known block not stored again');

  for (const [i, m] of [full, inc1, inc2].entries()) {
    const name = `r${i + 1}`;
    const r = await cli('restore', dir, '--device', name, '--backup', m.id, '-w', 'json');
    t.equal(r.code, 0, `restore ${m.id}: ${r.stderr}`);
    await c.converged();
    const copy = join(out, `${name}.img`);
    const cp = await run('nbdcopy', [c.nbdUri(1, name), copy]);
    t.equal(cp.code, 0, `nbdcopy ${name}: ${cp.stderr}`);
    const want = join(out, `${name}.want`);
    await writeFile(want, images[`b${i + 1}`]!);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', want, copy]);
    t.equal(cmp.code, 0, `restored ${m.id} is bit-exact to the device at its snapshot (${cmp.stdout.trim()})`);
  }
  const stored = (await readdir(join(dir, 'blocks'), { recursive: true })).filter((f) => /[0-9a-f]{64}(\.lz4)?$/.test(String(f)));
  t.equal(stored.length, full.stored + inc1.stored + inc2.stored, 'the directory holds each distinct block once');
  const bad = await cli('backup', 'vol', '--to', tempDir('backup-empty'), '--since', 'b1');
  t.equal(bad.code, 1, 'an incremental without the base backup in the directory is refused');
});

/** A backup directory as xdevice-backup/1 wrote it: raw blocks named by their hash, one manifest. */
async function writeVersion1Backup(dir: string, device: string, image: Buffer, index: number): Promise<void> {
  const blocks: [number, string][] = [];
  for (let b = 0; b * B < image.length; b++) {
    const data = image.subarray(b * B, (b + 1) * B);
    if (data.every((x) => x === 0)) continue;
    const hash = createHash('sha256').update(data).digest('hex');
    await mkdir(join(dir, 'blocks', hash.slice(0, 2)), { recursive: true });
    await writeFile(join(dir, 'blocks', hash.slice(0, 2), hash), data);
    blocks.push([b, hash]);
  }
  await mkdir(join(dir, 'backups'), { recursive: true });
  const createdAt = new Date(0).toISOString();
  const manifest = { format: 'xdevice-backup/1', id: `${device}-${index}`, device, size: image.length, blockBytes: B, snapshot: { name: 'old', index, createdAt }, kind: 'full', blocks, createdAt };
  await writeFile(join(dir, 'backups', `${manifest.id}.json`), JSON.stringify(manifest));
}

t.test('compressible blocks are stored LZ4-compressed; restores are bit-exact; version 1 still restores; damage and unknown formats are reported', { timeout: 300_000 }, async (t) => {
  const c = await Cluster.start({ devices: ['vol:8MiB'] });
  t.teardown(() => c.stop());
  const eps = c.slots.map((s) => `127.0.0.1:${s.ports.admin}`).join(',');
  const cli = (...args: string[]) => runCli(['--endpoints', eps, ...args]);
  const client = await c.client(0, 'vol');
  t.teardown(() => client.close());
  const out = tempDir('backup-cmp');

  // 4 MiB that LZ4 halves (each 512 bytes: 256 random, 256 of one letter), 1 MiB of random data, zeroes.
  const state = Buffer.alloc(SIZE);
  for (let at = 0; at < 4 * MiB; at += 512) {
    randomBytes(256).copy(state, at);
    state.fill(0x61, at + 256, at + 512);
  }
  randomBytes(MiB).copy(state, 4 * MiB);
  for (let off = 0; off < SIZE; off += MiB) await client.write(off, state.subarray(off, off + MiB));
  const want = join(out, 'want.img');
  await writeFile(want, state);
  const sameAsWritten = async (name: string): Promise<void> => {
    await c.converged();
    const copy = join(out, `${name}.img`);
    const cp = await run('nbdcopy', [c.nbdUri(1, name), copy]);
    t.equal(cp.code, 0, `nbdcopy ${name}: ${cp.stderr}`);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', want, copy]);
    t.equal(cmp.code, 0, `${name} is bit-exact to the device backed up (${cmp.stdout.trim()})`);
  };

  const dir = tempDir('backup-lz4');
  const r = await cli('backup', 'vol', '--to', dir, '-w', 'json');
  t.equal(r.code, 0, `backup: ${r.stderr}`);
  const summary = JSON.parse(r.stdout) as { id: string; snapshot: string; format: string; stored: number; compressed: number; uncompressedBytes: number; storedBytes: number; savedBytes: number };
  t.match(summary, { format: 'xdevice-backup/2', stored: 80, compressed: 64, uncompressedBytes: 5 * MiB }, 'the 64 compressible blocks stored compressed, the 16 random ones raw');
  t.equal(summary.savedBytes, summary.uncompressedBytes - summary.storedBytes);
  t.ok(summary.storedBytes < 3.5 * MiB, `the backup stores ${summary.storedBytes} bytes for 5 MiB of data`);
  const files = (await readdir(join(dir, 'blocks'), { recursive: true })).map(String).filter((f) => /[0-9a-f]{64}(\.lz4)?$/.test(f));
  let onDisk = 0;
  for (const f of files) onDisk += (await stat(join(dir, 'blocks', f))).size;
  t.equal(onDisk, summary.storedBytes, 'the directory holds what the summary says');
  t.equal(files.filter((f) => f.endsWith('.lz4')).length, 64, 'compressed blocks are marked by their suffix');
  const text = await cli('backup', 'vol', '--to', dir, '--snapshot', summary.snapshot);
  t.match(text.stdout, /80 block\(s\), 0 stored \(0 B in 0 B; 0 LZ4-compressed, 0 B saved\), 80 already there/, 'a second backup stores nothing new, and says so');

  t.equal((await cli('restore', dir, '--device', 'r1', '--backup', summary.id)).code, 0, 'restore of the compressed backup');
  await sameAsWritten('r1');

  const v1 = tempDir('backup-v1');
  await writeVersion1Backup(v1, 'vol', state, 7);
  const old = await cli('restore', v1, '--device', 'r2', '-w', 'json');
  t.equal(old.code, 0, `a version 1 backup restores: ${old.stderr}`);
  await sameAsWritten('r2');

  // One compressed block damaged: the restore fails and names it.
  const victim = files.find((f) => f.endsWith('.lz4'))!;
  const packed = await readFile(join(dir, 'blocks', victim));
  packed.fill(0x5a, 8, 200);
  await writeFile(join(dir, 'blocks', victim), packed);
  const damaged = await cli('restore', dir, '--device', 'r3', '--backup', summary.id);
  t.equal(damaged.code, 1, 'a restore meeting a damaged block fails');
  t.match(damaged.stderr, new RegExp(`${victim.split('/').pop()!.replace('.lz4', '')}.*damaged`), `the damaged block is named: ${damaged.stderr.trim()}`);

  const future = tempDir('backup-future');
  await writeVersion1Backup(future, 'vol', state.subarray(0, MiB), 8);
  const [manifestFile] = await readdir(join(future, 'backups'));
  const m = JSON.parse(await readFile(join(future, 'backups', manifestFile!), 'utf8')) as { format: string };
  await writeFile(join(future, 'backups', manifestFile!), JSON.stringify({ ...m, format: 'xdevice-backup/9' }));
  const unknown = await cli('restore', future, '--device', 'r4');
  t.equal(unknown.code, 1, 'an unknown format is refused');
  t.match(unknown.stderr, /backup format "xdevice-backup\/9" is not one this xdevice-cli reads \(xdevice-backup\/1, xdevice-backup\/2\)/);
});
