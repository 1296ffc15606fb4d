// Device snapshots on a real 3-node cluster, read by real clients: a pattern
// is written, snapshot s1 taken, part overwritten, s2 taken, more written.
// nbdcopy of vol@s1 (from a follower and the leader) equals the pattern
// (qemu-img compare), vol@s2 the pattern with the first overwrite, the live
// device has everything; `nbdinfo --map=qemu:dirty-bitmap:s2` shows exactly
// the blocks written between s1 and s2; nbdinfo lists the exports read-only
// and nbdsh's writes to one get EPERM; the snapshots survive a restart of
// every node; deleting them frees their space.
import t, { type Test } from 'tap';
import { randomBytes } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { nbdshWrite, run, runCli, tempDir, waitFor } from './helpers/tools.ts';
import { limits } from '../../src/limits.ts';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const B = limits.snapshotBlockBytes;

function endpoints(c: Cluster): string {
  return c.slots.map((s) => `127.0.0.1:${s.ports.admin}`).join(',');
}

async function cli(c: Cluster, ...args: string[]) {
  return await runCli(['--endpoints', endpoints(c), ...args]);
}

/** nbdcopy of an export to a file, then qemu-img compare against `expected`; the copy's bytes. */
async function copyAndCompare(t: Test, uri: string, expectedFile: string, what: string): Promise<Buffer> {
  const out = join(tempDir('snapcopy'), 'copy.img');
  const cp = await run('nbdcopy', [uri, out]);
  t.equal(cp.code, 0, `nbdcopy ${uri}: ${cp.stderr}`);
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expectedFile, out]);
  t.equal(cmp.code, 0, `qemu-img compare: ${what} (${cmp.stdout.trim()} ${cmp.stderr.trim()})`);
  return await readFile(out);
}

/** The dirty blocks nbdinfo --map reports for a meta context. */
async function dirtyBlocks(uri: string, context: string): Promise<number[]> {
  const r = await run('nbdinfo', ['--json', `--map=${context}`, uri]);
  if (r.code !== 0) throw new Error(`nbdinfo --map: ${r.stderr}`);
  const extents = JSON.parse(r.stdout) as { offset: number; length: number; type: number }[];
  const blocks: number[] = [];
  for (const e of extents) if (e.type & 1) for (let at = e.offset; at < e.offset + e.length; at += B) blocks.push(Math.floor(at / B));
  return blocks;
}

t.test('snapshots: consistent copies, dirty bitmap, read-only exports, restarts, delete', { timeout: 400_000 }, async (t) => {
  const c = await Cluster.start({ devices: ['vol:8MiB'] });
  t.teardown(() => c.stop());
  const dir = tempDir('snapexp');
  const client = await c.client(0, 'vol');
  t.teardown(() => client.close());

  const pattern = randomBytes(SIZE);
  for (let off = 0; off < SIZE; off += MiB) await client.write(off, pattern.subarray(off, off + MiB));
  await writeFile(join(dir, 's1.img'), pattern);
  const s1 = await cli(c, 'snapshot', 'create', 'vol', 's1', '-w', 'json');
  t.equal(s1.code, 0, `snapshot create s1: ${s1.stderr}`);
  t.match(JSON.parse(s1.stdout), { name: 's1', export: 'vol@s1', size: SIZE });

  // Between s1 and s2: an unaligned write over blocks 16..18, a 4 KiB write in block 80, a trim of block 100.
  const second = Buffer.from(pattern);
  const w1 = randomBytes(2 * B + 1000);
  await client.write(16 * B + 500, w1);
  w1.copy(second, 16 * B + 500);
  const w2 = randomBytes(4096);
  await client.write(80 * B + 8192, w2);
  w2.copy(second, 80 * B + 8192);
  await client.trim(100 * B, B);
  second.fill(0, 100 * B, 101 * B);
  await writeFile(join(dir, 's2.img'), second);
  t.equal((await cli(c, 'snapshot', 'create', 'vol', 's2')).code, 0, 'snapshot create s2');
  const between = [16, 17, 18, 80, 100];

  // After s2: overwrite the start and block 17 again.
  const live = Buffer.from(second);
  const w3 = randomBytes(MiB);
  await client.write(0, w3);
  w3.copy(live, 0);
  const w4 = randomBytes(B);
  await client.write(17 * B, w4);
  w4.copy(live, 17 * B);
  await writeFile(join(dir, 'live.img'), live);
  await c.converged();

  for (const node of [1, 0]) {
    await copyAndCompare(t, c.nbdUri(node, 'vol@s1'), join(dir, 's1.img'), `vol@s1 on node${node + 1} is the pattern`);
    await copyAndCompare(t, c.nbdUri(node, 'vol@s2'), join(dir, 's2.img'), `vol@s2 on node${node + 1} is the pattern with the writes between`);
  }
  await copyAndCompare(t, c.nbdUri(2, 'vol'), join(dir, 'live.img'), 'the live device has every write');

  t.same(await dirtyBlocks(c.nbdUri(1, 'vol@s2'), 'qemu:dirty-bitmap:s2'), between, 'nbdinfo --map=qemu:dirty-bitmap:s2: exactly the blocks written between s1 and s2');
  t.same((await dirtyBlocks(c.nbdUri(2, 'vol@s1'), 'qemu:dirty-bitmap:s1')).length, SIZE / B, 'the first snapshot: every block dirty (a full backup)');
  // qemu's own nbd driver reads the bitmap too (x-dirty-bitmap: dirty shows as "data": false, qemu's convention).
  const qmap = await run('qemu-img', ['map', '--output=json', '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${c.slot(0).ports.nbd},export=vol@s2,x-dirty-bitmap=qemu:dirty-bitmap:s2`]);
  t.equal(qmap.code, 0, `qemu-img map with x-dirty-bitmap: ${qmap.stderr}`);
  const qdirty: number[] = [];
  for (const e of JSON.parse(qmap.stdout) as { start: number; length: number; data: boolean }[]) if (!e.data) for (let at = e.start; at < e.start + e.length; at += B) qdirty.push(Math.floor(at / B));
  t.same(qdirty, between, 'qemu-img map (nbd driver, x-dirty-bitmap) sees the same blocks');
  const alloc = await run('nbdinfo', ['--json', '--map', c.nbdUri(0, 'vol@s2')]);
  t.equal(alloc.code, 0, `nbdinfo --map base:allocation: ${alloc.stderr}`);
  const holes = (JSON.parse(alloc.stdout) as { offset: number; length: number; type: number }[]).filter((e) => e.type & 1);
  t.ok(holes.some((e) => e.offset <= 100 * B && e.offset + e.length >= 101 * B), 'base:allocation of vol@s2 shows the trimmed block as a hole');

  const list = await run('nbdinfo', ['--json', '--list', `nbd://127.0.0.1:${c.slot(1).ports.nbd}`]);
  t.equal(list.code, 0, `nbdinfo --list: ${list.stderr}`);
  const exports = (JSON.parse(list.stdout) as { exports: { 'export-name': string; is_read_only: boolean }[] }).exports;
  t.match(
    exports.filter((e) => e['export-name'].startsWith('vol')).map((e) => [e['export-name'], e.is_read_only]),
    [['vol', false], ['vol@s1', true], ['vol@s2', true]],
    'NBD_OPT_LIST has the snapshot exports, read-only',
  );
  for (const node of [0, 2]) t.match(await nbdshWrite(c.nbdUri(node, 'vol@s1')), { errno: 'EPERM', readOnly: true, readOk: true }, `nbdsh write to vol@s1 on node${node + 1}: EPERM`);

  const listed = await cli(c, 'snapshot', 'list', 'vol', '-w', 'json');
  const snaps = JSON.parse(listed.stdout).snapshots as { name: string; index: number; heldBytes: number; createdAt: string }[];
  t.same(snaps.map((s) => s.name), ['s1', 's2']);
  t.ok(snaps[0]!.index < snaps[1]!.index && snaps.every((s) => !Number.isNaN(Date.parse(s.createdAt))), 'indexes and creation times');
  t.ok(snaps[0]!.heldBytes >= 3 * B && snaps[1]!.heldBytes >= 17 * B, `bytes held: ${snaps.map((s) => s.heldBytes).join(', ')}`);
  const devs = JSON.parse((await cli(c, 'device', 'list', '-w', 'json')).stdout).devices as { name: string; snapshots?: number; snapshotBytes?: number }[];
  t.match(devs.find((d) => d.name === 'vol'), { snapshots: 2 }, 'device list counts them');
  const metrics = await c.node(0).api('GET', '/metrics');
  t.match(String(metrics.body), /xdevice_device_snapshot_bytes\{device="vol"\} [1-9]/, 'the metric shows the bytes held');
  t.equal((await cli(c, 'snapshot', 'create', 'vol', 's1')).code, 1, 'a duplicate name is refused');
  t.equal((await cli(c, 'snapshot', 'create', 'vol', 'bad name')).code, 2, 'a bad name is a usage error');
  t.equal((await cli(c, 'device', 'resize', 'vol', '16MiB')).code, 1, 'resize is refused while snapshots exist');

  // Every node restarts (one after a crash): the snapshots are still there, unchanged.
  await c.kill(1, 'SIGKILL');
  await c.stopAll();
  for (const s of c.slots) await c.startNode(s.id);
  await c.waitForLeader();
  await c.converged();
  await copyAndCompare(t, c.nbdUri(1, 'vol@s1'), join(dir, 's1.img'), 'after restarts vol@s1 is still the pattern (node2 was killed)');
  await copyAndCompare(t, c.nbdUri(2, 'vol@s2'), join(dir, 's2.img'), 'after restarts vol@s2 is unchanged');
  t.same(await dirtyBlocks(c.nbdUri(0, 'vol@s2'), 'qemu:dirty-bitmap:s2'), between, 'and its dirty bitmap');

  // Delete s1, then s2: the space goes, on every node.
  t.equal((await cli(c, 'snapshot', 'delete', 'vol', 's1')).code, 0, 'snapshot delete s1');
  await copyAndCompare(t, c.nbdUri(0, 'vol@s2'), join(dir, 's2.img'), 'vol@s2 unchanged by the delete of s1');
  t.equal((await cli(c, 'snapshot', 'delete', 'vol', 's2')).code, 0, 'snapshot delete s2');
  await c.converged();
  for (const s of c.slots) {
    t.same(await readdir(join(s.dataDir, 'snapshots')), [], `${s.id} holds no snapshot files`);
    const d = (await c.node(s.id).api('GET', '/devices')).body.devices.find((x: { name: string }) => x.name === 'vol');
    t.equal(d.snapshotBytes, undefined, `${s.id}: no snapshot bytes in device list`);
  }
  const gone = await run('nbdinfo', ['--json', c.nbdUri(0, 'vol@s1')]);
  t.not(gone.code, 0, 'the deleted export is gone');
});

t.test('a node that catches up by a Raft snapshot serves the snapshots as the others do (their blocks came with it)', { timeout: 300_000 }, async (t) => {
  // Tiny checkpoints and no retention for laggards: the lagging node can catch up only from a streamed snapshot.
  const c = await Cluster.start({ devices: ['vol:8MiB'], env: { XDEVICE_CHECKPOINT_ENTRIES: '200', XDEVICE_WAL_RETAIN_ENTRIES: '0' } });
  t.teardown(() => c.stop());
  const dir = tempDir('snaplag');
  const leader = await c.waitForLeader();
  const lagging = c.ids.find((id) => id !== leader)!;
  const other = c.ids.find((id) => id !== leader && id !== lagging)!;
  const client = await c.client(leader, 'vol');
  t.teardown(() => client.close());
  const pattern = randomBytes(SIZE);
  for (let off = 0; off < SIZE; off += MiB) await client.write(off, pattern.subarray(off, off + MiB));
  await writeFile(join(dir, 's1.img'), pattern);
  t.equal((await cli(c, 'snapshot', 'create', 'vol', 's1')).code, 0, 'snapshot s1');
  await c.converged();
  await c.kill(lagging);
  // Writes after s1 while the node is down: the others preserve s1's blocks, the lagging node never sees them.
  const before = (await c.status(leader)).applied ?? Number.MAX_SAFE_INTEGER;
  for (let i = 0; i < 600; i += 8) await Promise.all(Array.from({ length: 8 }, (_, k) => client.write(((i + k) % 2048) * 4096, randomBytes(4096))));
  await waitFor('the leader to compact its log', async () => ((await c.status(leader)).logFirstIndex ?? 0) > before, 60_000);
  const node = await c.startNode(lagging);
  await c.converged(120_000);
  t.match(node.output(), /installing snapshot/, `${lagging} caught up from a streamed snapshot`);

  const lagCli = (...args: string[]) => runCli(['--endpoints', `127.0.0.1:${c.slot(lagging).ports.admin}`, ...args]);
  const listed = JSON.parse((await lagCli('snapshot', 'list', 'vol', '-w', 'json')).stdout).snapshots as { name: string; unavailable?: string }[];
  t.match(listed, [{ name: 's1' }], `${lagging} lists s1`);
  t.equal(listed[0]?.unavailable, undefined, `${lagging} can serve s1`);
  const onLagging = await copyAndCompare(t, c.nbdUri(lagging, 'vol@s1'), join(dir, 's1.img'), `${lagging} serves s1 as written`);
  const onLeader = await copyAndCompare(t, c.nbdUri(leader, 'vol@s1'), join(dir, 's1.img'), `${leader} serves s1 as written`);
  t.ok(onLagging.equals(onLeader), `vol@s1 byte for byte the same on ${lagging} and on the leader ${leader}`);
  t.same(await dirtyBlocks(c.nbdUri(lagging, 'vol@s1'), 'qemu:dirty-bitmap:s1'), await dirtyBlocks(c.nbdUri(leader, 'vol@s1'), 'qemu:dirty-bitmap:s1'), 'the same dirty bitmap');

  // A snapshot taken after the catch-up is whole on it too; deleting s1 merges into nothing and leaves s2 alone.
  const live = Buffer.concat(await Promise.all(Array.from({ length: SIZE / MiB }, (_, i) => client.read(i * MiB, MiB))));
  await writeFile(join(dir, 's2.img'), live);
  t.equal((await cli(c, 'snapshot', 'create', 'vol', 's2')).code, 0, 'snapshot s2');
  await client.write(0, randomBytes(2 * MiB));
  await c.converged();
  await copyAndCompare(t, c.nbdUri(lagging, 'vol@s2'), join(dir, 's2.img'), `${lagging} serves s2 as of its index`);
  t.equal((await cli(c, 'snapshot', 'delete', 'vol', 's1')).code, 0, 'snapshot delete s1');
  await copyAndCompare(t, c.nbdUri(other, 'vol@s2'), join(dir, 's2.img'), `${other}: s2 unchanged after s1's delete`);
  await copyAndCompare(t, c.nbdUri(lagging, 'vol@s2'), join(dir, 's2.img'), `${lagging}: s2 unchanged after s1's delete`);
});

t.test('a node added after a snapshot, with writes after it, catches up by a Raft snapshot and serves it byte for byte as the leader', { timeout: 300_000 }, async (t) => {
  const c = await Cluster.start({ devices: ['vol:8MiB'], env: { XDEVICE_CHECKPOINT_ENTRIES: '200', XDEVICE_WAL_RETAIN_ENTRIES: '0' } });
  t.teardown(() => c.stop());
  const dir = tempDir('snapadd');
  const leader = await c.waitForLeader();
  const client = await c.client(leader, 'vol');
  t.teardown(() => client.close());
  const pattern = randomBytes(SIZE);
  for (let off = 0; off < SIZE; off += MiB) await client.write(off, pattern.subarray(off, off + MiB));
  await writeFile(join(dir, 's1.img'), pattern);
  t.equal((await cli(c, 'snapshot', 'create', 'vol', 's1')).code, 0, 'snapshot s1');
  const before = (await c.status(leader)).applied ?? Number.MAX_SAFE_INTEGER;
  for (let i = 0; i < 600; i += 8) await Promise.all(Array.from({ length: 8 }, (_, k) => client.write(((i * 5 + k) % 2048) * 4096, randomBytes(4096))));
  await waitFor('the leader to compact its log', async () => ((await c.status(leader)).logFirstIndex ?? 0) > before, 60_000);

  const n4 = await c.startNode('n4', { join: true, members: [...c.ids, 'n4'] });
  const added = await c.node(leader).api('POST', '/members', { id: 'n4', address: `127.0.0.1:${n4.peerPort}` }, { timeoutMs: 120_000 });
  t.equal(added.status, 200, 'n4 added');
  await c.converged(120_000);
  t.match(n4.output(), /installing snapshot/, 'n4 caught up from a streamed snapshot');
  const onNew = await copyAndCompare(t, c.nbdUri('n4', 'vol@s1'), join(dir, 's1.img'), 'n4 serves s1 as written');
  const onLeader = await copyAndCompare(t, c.nbdUri(leader, 'vol@s1'), join(dir, 's1.img'), `${leader} serves s1 as written`);
  t.ok(onNew.equals(onLeader), 'vol@s1 byte for byte the same on n4 and on the leader');
});
