// The backup directory format (src/cli/backup-store.ts): blocks stored once
// by content hash and checked when read back, manifests composed into a
// chain (full, then incrementals; ZERO clears a block), and the errors for a
// broken chain.
import t from 'tap';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BACKUP_FORMAT, backupChain, BackupDir, type BackupManifest, composeChain, hashBlock, ZERO } from '../../src/cli/backup-store.ts';

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

t.test('blocks are stored once by hash and verified on read', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'xdevice-backup-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const d = new BackupDir(dir);
  await d.init();
  const a = Buffer.alloc(65536, 1);
  const h1 = await d.putBlock(a);
  const h2 = await d.putBlock(Buffer.from(a));
  await d.putBlock(Buffer.alloc(100, 2));
  t.equal(h1, h2);
  t.equal(h1, hashBlock(a));
  t.same([d.stored, d.deduped, d.storedBytes], [2, 1, 65536 + 100], 'the same content is stored once');
  t.same(await d.getBlock(h1), a);
  await writeFile(join(dir, 'blocks', h1.slice(0, 2), h1), Buffer.alloc(65536, 9));
  await t.rejects(d.getBlock(h1), /damaged/, 'a damaged block is refused');
  await d.putManifest(manifest('vol-5', 5, [[0, h1]]));
  await d.putManifest(manifest('vol-9', 9, [[1, h2]], 'vol-5'));
  t.same((await d.manifests()).map((m) => m.id), ['vol-5', 'vol-9'], 'manifests in snapshot order');
  t.same((await readdir(join(dir, 'backups'))).sort(), ['vol-5.json', 'vol-9.json'], 'no temporary files left');
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
