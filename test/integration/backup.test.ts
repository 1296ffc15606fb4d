// Backup and restore through snapshots, on a real 3-node cluster: a full
// backup and two incrementals (each reading only the blocks the snapshot's
// qemu:dirty-bitmap marks), restored into new devices, each bit-exact to the
// device as of its snapshot (nbdcopy + qemu-img compare); identical blocks
// within the device and across backups are stored once.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { readdir, writeFile } from 'node:fs/promises';
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
  const stored = (await readdir(join(dir, 'blocks'), { recursive: true })).filter((f) => /[0-9a-f]{64}$/.test(String(f)));
  t.equal(stored.length, full.stored + inc1.stored + inc2.stored, 'the directory holds each distinct block once');
  const bad = await cli('backup', 'vol', '--to', tempDir('backup-empty'), '--since', 'b1');
  t.equal(bad.code, 1, 'an incremental without the base backup in the directory is refused');
});
