// The simulated disk's model (test/sim/sim-disk.ts, test/sim/sim-fs.ts):
// what survives a crash, each fault, space accounting, ordering, determinism.

import t from 'tap';
import { SimDisk } from '../sim/sim-disk.ts';
import { StepScheduler } from '../sim/step-scheduler.ts';

const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
console.log(`# XDEVICE_SEED=${seed}`);

function setup(s = seed, opts: { capacityBytes?: number } = {}) {
  const sched = new StepScheduler();
  const disk = new SimDisk({ seed: s, scheduler: sched, ...opts });
  return { sched, disk, run: <T>(p: Promise<T>) => sched.run(p) };
}

const fill = (n: number, byte: number) => Buffer.alloc(n, byte);

t.test('reads see writes; fdatasync and a synced directory survive a crash', async (t) => {
  const { disk, run } = setup();
  await run(disk.mkdir('/n1/wal', { recursive: true }));
  await run(disk.syncDir('/n1'));
  await run(disk.syncDir('/n1/wal'));
  const f = await run(disk.openFile('/n1/wal/a', { create: true }));
  await run(disk.pwrite(f, fill(8192, 7), 0));
  const back = Buffer.alloc(8192);
  t.equal(await run(disk.pread(f, back, 0)), 8192);
  t.ok(back.equals(fill(8192, 7)), 'read back');
  await run(disk.fdatasync(f));
  await run(disk.syncDir('/n1/wal'));
  disk.crash();
  const g = await run(disk.openFile('/n1/wal/a'));
  const after = Buffer.alloc(8192);
  await run(disk.pread(g, after, 0));
  t.ok(after.equals(fill(8192, 7)), 'synced data and name survive');
  await t.rejects(run(disk.pread(f, after, 0)), /never settled/, 'a handle from before the crash is dead (never settles)');
});

t.test('unsynced data keeps, per sector, either its old or its new bytes; both happen', async (t) => {
  let sawOld = 0;
  let sawNew = 0;
  for (let i = 0; i < 40; i++) {
    const { disk, run } = setup(seed + i);
    await run(disk.writeFile('/f', fill(4096, 1), { sync: true }));
    await run(disk.syncDir('/'));
    const f = await run(disk.openFile('/f'));
    await run(disk.pwrite(f, fill(4096, 2), 0));
    disk.crash();
    const back = await run(disk.readFile('/f'));
    t.equal(back.length, 4096);
    for (let s = 0; s < 8; s++) {
      const sector = back.subarray(s * 512, (s + 1) * 512);
      if (sector.equals(fill(512, 1))) sawOld++;
      else if (sector.equals(fill(512, 2))) sawNew++;
      else t.fail(`sector ${s} is neither old nor new`);
    }
  }
  t.ok(sawOld > 0 && sawNew > 0, `both outcomes (old ${sawOld}, new ${sawNew})`);
});

t.test('an O_DSYNC write is durable once it resolves', async (t) => {
  const { disk, run } = setup();
  await run(disk.writeFile('/f', fill(4096, 0), { sync: true }));
  await run(disk.syncDir('/'));
  const f = await run(disk.openFile('/f', { dsync: true, direct: true }));
  await run(disk.pwrite(f, fill(1024, 9), 512));
  disk.crash();
  const back = await run(disk.readFile('/f'));
  t.ok(back.subarray(512, 1536).equals(fill(1024, 9)), 'the dsync range survived');
  await t.rejects(run(disk.openFile('/f', { direct: true }).then((g) => disk.pwrite(g, fill(100, 1), 0))), { code: 'EINVAL' }, 'direct I/O must be sector-aligned');
});

t.test('names: created without a directory fsync may vanish; a rename is atomic', async (t) => {
  let vanished = 0;
  let kept = 0;
  for (let i = 0; i < 40; i++) {
    const { disk, run } = setup(seed * 7 + i);
    await run(disk.writeFile('/old', fill(10, 1), { sync: true }));
    await run(disk.syncDir('/'));
    await run(disk.writeFile('/new.tmp', fill(10, 2), { sync: true }));
    await run(disk.rename('/new.tmp', '/old'));
    disk.crash();
    const names = await run(disk.readdir('/'));
    const content = await run(disk.readFile('/old'));
    t.ok(names.includes('old'), 'the old name is never lost');
    t.ok(content.equals(fill(10, 1)) || content.equals(fill(10, 2)), 'old or new content, whole');
    if (content.equals(fill(10, 1))) vanished++;
    else kept++;
  }
  t.ok(vanished > 0 && kept > 0, `both outcomes without fsync of the directory (old ${vanished}, new ${kept})`);
  const { disk, run } = setup();
  await run(disk.writeFile('/a', fill(10, 3), { sync: true }));
  await run(disk.syncDir('/'));
  disk.crash();
  t.same(await run(disk.readdir('/')), ['a'], 'a synced name survives');
});

t.test('a failed fdatasync loses the unsynced data, even after a later successful one', async (t) => {
  const { disk, run } = setup();
  await run(disk.writeFile('/f', fill(4096, 1), { sync: true }));
  await run(disk.syncDir('/'));
  const f = await run(disk.openFile('/f'));
  await run(disk.pwrite(f, fill(4096, 2), 0));
  disk.arm('syncEio');
  await t.rejects(run(disk.fdatasync(f)), { code: 'EIO', syscall: 'fdatasync' });
  const cached = Buffer.alloc(4096);
  await run(disk.pread(f, cached, 0));
  t.ok(cached.equals(fill(4096, 2)), 'reads still see the new bytes (page cache)');
  await run(disk.fdatasync(f));
  disk.crash();
  t.ok((await run(disk.readFile('/f'))).equals(fill(4096, 1)), 'the crash shows they never reached the disk');
  t.equal(disk.stats.syncErrors, 1, 'counted');
});

t.test('write faults: EIO lands nothing, a torn write lands a sector-aligned prefix', async (t) => {
  const { disk, run } = setup();
  const f = await run(disk.openFile('/f', { create: true }));
  disk.arm('writeEio');
  await t.rejects(run(disk.pwrite(f, fill(4096, 5), 0)), { code: 'EIO', syscall: 'pwrite' });
  t.equal((await run(disk.fstat(f))).size, 0, 'nothing landed');
  let partial = 0;
  for (let i = 0; i < 20; i++) {
    disk.arm('tornWrite');
    await t.rejects(run(disk.pwrite(f, fill(4096, 6 + i), 8192 * i)), { code: 'EIO' });
    const back = Buffer.alloc(4096);
    await run(disk.pread(f, back, 8192 * i));
    let landed = 0;
    while (landed < 4096 && back[landed] === 6 + i) landed++;
    t.equal(landed % 512, 0, 'the landed part is whole sectors');
    t.ok(back.subarray(landed).every((b) => b === 0), 'nothing after it');
    if (landed > 0 && landed < 4096) partial++;
  }
  t.ok(partial > 0, 'some torn writes land part of their bytes');
  t.equal(disk.stats.writeErrors, 1);
  t.equal(disk.stats.tornWrites, 20);
  disk.arm('writeEio', { pathPrefix: '/other' });
  t.equal(await run(disk.pwrite(f, fill(512, 1), 0)), 512, 'an armed fault waits for its path');
  t.equal(disk.stats.writeErrors, 1, 'and fails nothing elsewhere');
});

t.test('a full disk: ENOSPC past capacity, holes and removed files free space', async (t) => {
  const { disk, run } = setup(seed, { capacityBytes: 16 * 4096 });
  const f = await run(disk.openFile('/f', { create: true }));
  await run(disk.pwrite(f, fill(12 * 4096, 1), 0));
  t.equal((await run(disk.fstat(f))).allocatedBytes, 12 * 4096);
  await t.rejects(run(disk.pwrite(f, fill(8 * 4096, 1), 12 * 4096)), { code: 'ENOSPC' });
  await t.rejects(run(disk.fallocate(f, 12 * 4096, 8 * 4096)), { code: 'ENOSPC' });
  t.equal(await run(disk.pwrite(f, fill(4096, 2), 0)), 4096, 'overwriting allocated pages needs no space');
  await run(disk.punchHole(f, 0, 8 * 4096));
  t.equal((await run(disk.fstat(f))).allocatedBytes, 4 * 4096, 'the hole freed its pages');
  t.same(disk.extents(f, 0, 12 * 4096), [
    { length: 8 * 4096, flags: 3 },
    { length: 4 * 4096, flags: 0 },
  ]);
  await run(disk.pwrite(f, fill(8 * 4096, 3), 12 * 4096));
  const g = await run(disk.openFile('/g', { create: true }));
  await t.rejects(run(disk.pwrite(g, fill(8 * 4096, 1), 0)), { code: 'ENOSPC' });
  await run(disk.closeFile(f));
  await run(disk.unlink('/f'));
  await run(disk.pwrite(g, fill(8 * 4096, 1), 0));
  t.ok(disk.stats.noSpace >= 3, 'counted');
  await run(disk.fallocate(g, 8 * 4096, 4096, { keepSize: true }));
  t.same(disk.extents(g, 8 * 4096, 4096), [{ length: 4096, flags: 2 }], 'preallocated reads as zeroes');
});

t.test('a handle runs its operations in order: a sync covers the write before it without awaiting', async (t) => {
  for (let i = 0; i < 20; i++) {
    const { disk, run } = setup(seed + 100 + i);
    await run(disk.writeFile('/f', Buffer.alloc(0), { sync: true }));
    await run(disk.syncDir('/'));
    const f = await run(disk.openFile('/f'));
    const w = disk.pwrite(f, fill(4096, 4), 0);
    await run(disk.fdatasync(f));
    await run(w);
    disk.crash();
    t.ok((await run(disk.readFile('/f'))).equals(fill(4096, 4)), `seed ${seed + 100 + i}: durable`);
  }
});

t.test('a crash tears the write in flight, drops every pending operation and kills the old io()', async (t) => {
  const { disk, run, sched } = setup();
  const io = disk.io();
  await run(io.writeFile('/f', fill(8192, 1), { sync: true }));
  await run(io.syncDir('/'));
  const f = await run(io.openFile('/f'));
  let settled = 0;
  void io.pwrite(f, fill(8192, 2), 0).finally(() => settled++);
  void io.readdir('/').finally(() => settled++);
  // Let the write start (it is the running one on its handle), then pull the plug.
  await new Promise((resolve) => setImmediate(resolve));
  disk.crash();
  void io.stat('/f').finally(() => settled++);
  await sched.drain();
  t.equal(settled, 0, 'nothing issued before the crash, or through the dead view, settles');
  const io2 = disk.io();
  const back = await run(io2.readFile('/f'));
  t.equal(back.length, 8192);
  for (let s = 0; s < 16; s++) {
    const sector = back.subarray(s * 512, (s + 1) * 512);
    t.ok(sector.equals(fill(512, 1)) || sector.equals(fill(512, 2)), 'every sector old or new');
  }
  t.equal(disk.stats.crashes, 1);
});

t.test('the same seed gives the same disk', async (t) => {
  const script = async (s: number) => {
    const { disk, run } = setup(s);
    disk.faults.tornWrite = 0.2;
    await run(disk.mkdir('/d', { recursive: true }));
    const f = await run(disk.openFile('/d/f', { create: true }));
    for (let i = 0; i < 30; i++) {
      await run(disk.pwrite(f, fill(1024, i), i * 700)).catch(() => undefined);
      if (i % 7 === 0) await run(disk.fdatasync(f));
    }
    disk.crash();
    const names = await run(disk.readdir('/'));
    const content = names.includes('d') && (await run(disk.readdir('/d'))).includes('f') ? await run(disk.readFile('/d/f')) : Buffer.alloc(0);
    return { content: content.toString('hex'), stats: { ...disk.stats } };
  };
  const a = await script(seed);
  const b = await script(seed);
  t.same(a, b, 'identical bytes and statistics');
});
