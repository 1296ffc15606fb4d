// The backup directory format (src/cli/backup-store.ts): blocks stored once
// by content hash (LZ4-compressed when that pays) and checked when read back,
// version 1 directories still read, unknown formats refused, manifests
// composed into a chain (full, then incrementals; ZERO clears a block), and
// the errors for a broken chain.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKUP_FORMAT, backupChain, BackupDir, type BackupManifest, composeChain, DamagedBlockError, hashBlock, manifestProblem, ZERO } from '../../src/cli/backup-store.ts';
import { compressBlock } from '../../src/device/lz4.ts';

function manifest(id: string, index: number, blocks: [number, string][], parent?: string): BackupManifest {
  return {
    format: BACKUP_FORMAT,
    id,
    device: 'vol',
    size: 1 << 20,
    blockBytes: 65536,
    snapshot: { name: `s${index}`, index, createdAt: new Date(0).toISOString() },
    kind: parent ? 'incremental' : 'full',
    ...(parent ? { parent } : {}),
    blocks,
    createdAt: new Date(0).toISOString(),
  };
}

t.test('blocks are stored once by hash, LZ4-compressed when that pays, and verified on read', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'xdevice-backup-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const d = new BackupDir(dir);
  await d.init();
  const a = Buffer.alloc(65536, 1);
  const r = randomBytes(65536);
  const h1 = await d.putBlock(a);
  const h2 = await d.putBlock(Buffer.from(a));
  const hr = await d.putBlock(r);
  t.equal(h1, h2);
  t.equal(h1, hashBlock(a), 'named by the hash of the uncompressed bytes');
  const packed = await stat(d.blockPath(h1, true));
  t.ok(packed.size < 65536 / 8, `the compressible block is stored LZ4-compressed (${packed.size} bytes)`);
  await t.rejects(stat(d.blockPath(h1)), 'and not raw');
  t.equal((await stat(d.blockPath(hr))).size, 65536, 'an incompressible block is stored raw');
  t.same([d.stored, d.deduped, d.compressed, d.uncompressedBytes, d.storedBytes], [2, 1, 1, 2 * 65536, packed.size + 65536], 'the same content is stored once; the counts say what compression saved');
  t.same(await d.getBlock(h1, 65536), a, 'a compressed block reads back decompressed');
  t.same(await d.getBlock(hr, 65536), r);
  await t.rejects(d.getBlock(h1, 4096), DamagedBlockError, 'a block of another length than the backup says is refused');

  // Damage: garbage in the LZ4 stream, a valid LZ4 block of other content, a damaged raw block, a missing one.
  const good = await readFile(d.blockPath(h1, true));
  const bad = Buffer.from(good);
  bad.fill(0xff, 4, Math.min(bad.length, 40));
  await writeFile(d.blockPath(h1, true), bad);
  await t.rejects(d.getBlock(h1, 65536), /damaged/, 'a corrupted compressed block is refused');
  await writeFile(d.blockPath(h1, true), compressBlock(Buffer.alloc(65536, 2)));
  await t.rejects(d.getBlock(h1, 65536), /damaged \(its content hashes differently\)/, 'the hash is checked after decompressing');
  await writeFile(d.blockPath(hr), Buffer.alloc(65536, 9));
  await t.rejects(d.getBlock(hr, 65536), /damaged/, 'a damaged raw block is refused');
  await t.rejects(d.getBlock(hashBlock(Buffer.from('nope')), 4), /missing/);

  await d.putManifest(manifest('vol-5', 5, [[0, h1]]));
  await d.putManifest(manifest('vol-9', 9, [[1, h2]], 'vol-5'));
  t.same((await d.manifests()).map((m) => m.id), ['vol-5', 'vol-9'], 'manifests in snapshot order');
  t.same((await readdir(join(dir, 'backups'))).sort(), ['vol-5.json', 'vol-9.json'], 'no temporary files left');
});

t.test('an xdevice-backup/1 directory (raw blocks) still reads, and a new backup deduplicates against it', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'xdevice-backup-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // Written as version 1 did: raw blocks named by their hash, a /1 manifest.
  const a = Buffer.alloc(65536, 7);
  const h = hashBlock(a);
  await mkdir(join(dir, 'blocks', h.slice(0, 2)), { recursive: true });
  await mkdir(join(dir, 'backups'));
  await writeFile(join(dir, 'blocks', h.slice(0, 2), h), a);
  await writeFile(join(dir, 'backups', 'vol-3.json'), JSON.stringify({ ...manifest('vol-3', 3, [[0, h]]), format: 'xdevice-backup/1' }));
  const d = new BackupDir(dir);
  await d.init();
  t.same((await d.manifests()).map((m) => [m.id, m.format]), [['vol-3', 'xdevice-backup/1']]);
  t.same(await d.getBlock(h, 65536), a, 'a raw block of version 1 reads back');
  t.equal(await d.putBlock(Buffer.from(a)), h);
  t.same([d.stored, d.deduped], [0, 1], 'the raw block is reused, not stored again compressed');
  await t.rejects(stat(d.blockPath(h, true)));
});

t.test('a manifest of an unknown format is refused, naming the format', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'xdevice-backup-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const d = new BackupDir(dir);
  await d.init();
  await writeFile(join(dir, 'backups', 'vol-1.json'), JSON.stringify({ ...manifest('vol-1', 1, []), format: 'xdevice-backup/3' }));
  await t.rejects(d.manifests(), /vol-1\.json: backup format "xdevice-backup\/3" is not one this xdevice-cli reads \(xdevice-backup\/1, xdevice-backup\/2\)/);
  t.match(manifestProblem({ ...manifest('x', 1, []), blockBytes: 2 ** 40 }), /block size/, 'a block size beyond any request is refused');
});

t.test('chains compose from the full backup on; ZERO clears; broken chains are refused', async (t) => {
  const full = manifest('vol-1', 1, [[0, 'a'], [1, 'b'], [5, 'c']]);
  const inc1 = manifest('vol-2', 2, [[1, ZERO], [2, 'd']], 'vol-1');
  const inc2 = manifest('vol-3', 3, [[0, 'e'], [2, 'f']], 'vol-2');
  const all = [inc2, full, inc1];
  t.same(backupChain(all, inc2).map((m) => m.id), ['vol-1', 'vol-2', 'vol-3']);
  t.same([...composeChain(backupChain(all, inc2))].sort(), [[0, 'e'], [2, 'f'], [5, 'c']]);
  t.same([...composeChain(backupChain(all, inc1))].sort(), [[0, 'a'], [2, 'd'], [5, 'c']]);
  t.throws(() => backupChain([inc2, inc1], inc2), /not in the directory/, 'a missing parent');
  t.throws(() => backupChain([full, { ...inc1, size: 4096 }], { ...inc1, size: 4096 }), /different devices/, 'a parent of another geometry');
  const loopA = manifest('a', 1, [], 'b');
  const loopB = manifest('b', 2, [], 'a');
  t.throws(() => backupChain([loopA, loopB], loopA), /loops/);
});
