// Snapshot staging and the crash-safe install: a complete staging survives a
// crash at any step and is finished at the next start; an incomplete one is
// discarded.
import t from 'tap';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { BlockStore } from '../../src/device/block-store.ts';
import { readCheckpoint } from '../../src/device/checkpoint.ts';
import { SnapshotStaging, beginInstall, finishInstall, installStagedFiles, pendingInstall, STAGING_DIR } from '../../src/device/snapshot-staging.ts';
import { emptyConfState } from '../../src/raft/types.ts';
import { tempDir } from './helpers/store-log.ts';

const logger = pino({ level: 'silent' });
const MiB = 1024 * 1024;

const metadata = { index: 40, term: 3, confState: { ...emptyConfState(), voters: ['a', 'b', 'c'] } };
const state = { clusterId: 'c1', appliedIndex: 47, appliedTerm: 3, devices: [{ id: 5, name: 'disk', size: 4 * MiB }, { id: 9, name: 'other', size: MiB }], members: { a: 'h:1' }, dedup: [] };

t.test('a staged snapshot installs, and the install is idempotent', async (t) => {
  const dir = await tempDir(t, 'xdevice-snap-');
  // An old state that the snapshot replaces.
  const old = await BlockStore.open(dir, logger);
  await old.closeFiles();
  const s = await SnapshotStaging.begin(dir, 1, 'leader', metadata, state);
  const a = randomBytes(8192);
  const b = randomBytes(4096);
  s.chunk(0, MiB, a, 0);
  s.chunk(1, 0, b, 0);
  s.chunk(0, 2 * MiB, Buffer.alloc(0), MiB);
  const staged = await s.finish(3, 50);
  t.equal(staged.consistentIndex, 50);
  t.same(await pendingInstall(dir), undefined, 'complete but not taken by Raft: not pending (and removed: a restart must not roll the devices back to it)');
  const s2 = await SnapshotStaging.begin(dir, 1, 'leader', metadata, state);
  s2.chunk(0, MiB, a, 0);
  s2.chunk(1, 0, b, 0);
  s2.chunk(0, 2 * MiB, Buffer.alloc(0), MiB);
  await s2.finish(3, 50);
  await beginInstall(dir, metadata);
  t.same(await pendingInstall(dir), metadata, 'taken by Raft: pending until finished');
  await installStagedFiles(dir);
  await installStagedFiles(dir); // a crash after the first: redone harmlessly
  t.same(await pendingInstall(dir), metadata, 'still pending until the WAL holds it');
  await finishInstall(dir);
  t.equal(await pendingInstall(dir), undefined);
  t.notOk((await readdir(dir)).includes(STAGING_DIR));
  t.same((await readCheckpoint(dir))?.appliedIndex, 47);
  const store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  t.same(store.devices().sort((x, y) => x.id - y.id), state.devices);
  t.same(await store.read(5, MiB, 8192), a);
  t.same(await store.read(9, 0, 4096), b);
  t.same(await store.read(5, 0, 4096), Buffer.alloc(4096), 'never-written ranges read as zeroes');
});

t.test('a stream that does not finish is discarded, a wrong chunk count fails', async (t) => {
  const dir = await tempDir(t, 'xdevice-snap-');
  const s = await SnapshotStaging.begin(dir, 2, 'leader', metadata, state);
  s.chunk(0, 0, randomBytes(4096), 0);
  t.equal(await pendingInstall(dir), undefined, 'incomplete: not pending');
  t.notOk((await readdir(dir)).includes(STAGING_DIR), 'and removed');
  const s2 = await SnapshotStaging.begin(dir, 3, 'leader', metadata, state);
  s2.chunk(0, 0, randomBytes(4096), 0);
  await t.rejects(s2.finish(2, 47), { code: 'XDEVICE_ERR_CHECKPOINT' });
  await s2.abort();
  const s3 = await SnapshotStaging.begin(dir, 4, 'leader', metadata, state);
  s3.chunk(7, 0, randomBytes(16), 0);
  await t.rejects(s3.finish(1, 47), /file 7/, 'a chunk for a file the header did not announce');
  await s3.abort();
  await s.abort();
});

t.test('a begin that fails releases every descriptor it opened, and the staging directory', async (t) => {
  const { openFileCount } = await import('../../src/native.ts');
  const { existsSync } = await import('node:fs');
  const dir = await tempDir(t, 'xdevice-snap-');
  const before = openFileCount();
  const devices = Array.from({ length: 40 }, (_, i) => ({ id: i, name: `d${i}`, size: 4096 }));
  // A repeated id after 40 good ones, then a size beyond deviceBytesMax.
  for (const bad of [{ id: 3, name: 'again', size: 4096 }, { id: 99, name: 'huge', size: 2 ** 52 }]) {
    await t.rejects(SnapshotStaging.begin(dir, 1, 'a', metadata, { ...state, devices: [...devices, bad] }), { code: 'XDEVICE_ERR_CHECKPOINT' });
    t.equal(openFileCount(), before, 'no descriptor outlives the failed begin');
    t.notOk(existsSync(join(dir, STAGING_DIR)), 'the staging directory is gone');
  }
  // A chunk past the end of its file fails the stream instead of growing the file.
  const s = await SnapshotStaging.begin(dir, 2, 'a', metadata, { ...state, devices: [{ id: 1, name: 'x', size: 4096 }] });
  s.chunk(0, 4000, Buffer.alloc(200), 0);
  await t.rejects(s.finish(1, 47), /runs past the end/);
  await s.abort();
  t.equal(openFileCount(), before);
});
