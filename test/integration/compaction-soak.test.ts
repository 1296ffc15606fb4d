// Online compaction under a long write load (issue 16), CI-sized: a 3-node
// cluster checkpointing every 16 MiB / 2000 entries takes a mixed load
// through NBD (fio random 4-64 KiB writes and trims, a sequential rewrite;
// nbdsh write-zeroes, some NO_HOLE) over a 64 MiB region until every node has
// written two segments more to its WAL than the WAL bound
// (test/integration/helpers/compaction-soak.ts derives it from the
// configuration), so that a WAL that is not compacted would exceed the bound.
// After the warm-up, no node's WAL holds more
// allocated bytes than the bound and no device file more than the region;
// every node compacted. Then ranges outside the region are written, trimmed
// and zeroed, and FIEMAP on every node's device file shows the trimmed and
// zeroed ranges as holes and the NO_HOLE range allocated.
// No timing asserts: the load is sized in bytes, not seconds.
import t from 'tap';
import { randomInt } from 'node:crypto';
import { closeSync, openSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { run, tempDir } from './helpers/tools.ts';
import { deviceBound, LOAD_REQUEST_BYTES_MAX, sampleCluster, startLoad, tuningEnv, walBound, type Sample, type SoakTuning } from './helpers/compaction-soak.ts';
import { fileExtents } from '../../src/disk/fiemap.ts';
import { DEVICES_DIR } from '../../src/device/block-store.ts';
import { limits } from '../../src/limits.ts';

const MiB = 1024 * 1024;
const REGION = 64 * MiB;
/** Past the region: 12 MiB for the hole checks, written only after the load. */
const HOLES_AT = REGION;
const DEVICE_BYTES = REGION + 16 * MiB;
const HOLE = 3;
const ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };
const TUNING: SoakTuning = { checkpointEntries: 2000, checkpointBytes: 16 * MiB, retainEntries: 200, retainBytes: 16 * MiB };

async function nbdsh(uri: string, lines: string[]): Promise<void> {
  const r = await run('nbdsh', ['-c', [`h.connect_uri(${JSON.stringify(uri)})`, ...lines, 'h.flush()', "print('ok')"].join('\n')], { env: ENV, timeoutMs: 120_000 });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`nbdsh failed (${r.code}): ${r.stderr}`);
}

/** The extents of [offset, offset + length) in a node's one device file. */
function extentsOn(dataDir: string, offset: number, length: number): Array<{ length: number; flags: number }> {
  const dir = join(dataDir, DEVICES_DIR);
  const files = readdirSync(dir).filter((n) => /^dev-\d+\.img$/.test(n));
  if (files.length !== 1) throw new Error(`expected one device file in ${dir}, found ${files.join(', ')}`);
  const fd = openSync(join(dir, files[0]!), 'r');
  try {
    return fileExtents(fd, offset, length);
  } finally {
    closeSync(fd);
  }
}

t.test('WAL and device files stay bounded under a long mixed write load; trims and zeroes leave holes', { timeout: 900_000 }, async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? randomInt(1, 2 ** 31 - 1));
  t.comment(`XDEVICE_SEED=${seed}`);
  const wal = walBound(TUNING, LOAD_REQUEST_BYTES_MAX);
  const device = deviceBound(REGION);
  t.comment(`WAL bound ${wal.segments} segments (${wal.bytes / MiB} MiB), device bound ${(device / MiB).toFixed(2)} MiB`);
  const c = await Cluster.start({ devices: [`soak:${DEVICE_BYTES}`], env: tuningEnv(TUNING) });
  t.teardown(() => c.stop());
  const leader = await c.waitForLeader();

  const started = Date.now();
  // Sized in bytes: the load stops once every node wrote this much to its WAL (the hour is only a backstop).
  const enough = wal.bytes + 2 * limits.walSegmentBytes;
  const load = startLoad({ uri: c.nbdUri(leader, 'soak'), regionBytes: REGION, seconds: 3600, rewriteBytesPerSecond: 16 * MiB, seed, stopFile: join(tempDir('soak'), 'stop') });
  t.teardown(() => load.stop());
  let finished = false;
  const done = load.done.finally(() => (finished = true));
  done.catch(() => undefined);
  const samples: Sample[] = [];
  while (!finished) {
    const s = await sampleCluster(c, (Date.now() - started) / 1000);
    samples.push(s);
    if (s.nodes.every((n) => n.walWrittenBytes >= enough)) load.stop();
    await Promise.race([done.catch(() => undefined), new Promise((r) => setTimeout(r, 2000))]);
  }
  const result = await done;
  await c.converged();
  const last = await sampleCluster(c, (Date.now() - started) / 1000);
  samples.push(last);
  t.comment(`load: ${result.randwrite.ops} writes (${(result.randwrite.bytes / MiB).toFixed(0)} MiB), ${result.randtrim.ops} trims, ${result.zeroes.ops} zeroes (${result.zeroes.noHole} NO_HOLE), rewrite ${(result.seqrewrite.bytes / MiB).toFixed(0)} MiB, ${samples.length} samples`);
  t.ok(result.randtrim.ops > 0 && result.zeroes.ops > 0 && result.seqrewrite.ops > 0, 'every kind of request was sent');

  const warm = samples.filter((s) => s.seconds >= last.seconds / 3);
  t.ok(warm.length >= 3, `samples after the warm-up (${warm.length})`);
  for (const id of c.ids) {
    const series = warm.map((s) => s.nodes.find((n) => n.node === id)!);
    const walMax = Math.max(...series.map((n) => n.walBytes));
    const devMax = Math.max(...series.map((n) => n.deviceBytes));
    t.ok(walMax <= wal.bytes, `${id}: WAL allocated bytes after the warm-up peak at ${(walMax / MiB).toFixed(0)} MiB, within the bound ${wal.bytes / MiB} MiB`);
    t.ok(devMax <= device, `${id}: device file allocated bytes peak at ${(devMax / MiB).toFixed(1)} MiB, within the region and its extent blocks (${(device / MiB).toFixed(1)} MiB)`);
    const n = last.nodes.find((x) => x.node === id)!;
    t.ok(n.compactions >= 2 && n.firstIndex > samples[0]!.nodes.find((x) => x.node === id)!.firstIndex, `${id} compacted its WAL (${n.checkpoints} checkpoints, ${n.compactions} compactions, floor ${n.firstIndex - 1})`);
    t.ok(n.walWrittenBytes > wal.bytes, `${id} wrote more to its WAL (${(n.walWrittenBytes / MiB).toFixed(0)} MiB) than the bound: the bound was tested`);
  }

  // Holes: 12 MiB past the region written, then trimmed, zeroed, and zeroed with NO_HOLE.
  const uri = c.nbdUri(leader, 'soak');
  await nbdsh(uri, ['import os', `h.pwrite(os.urandom(${12 * MiB}), ${HOLES_AT})`]);
  await c.converged();
  for (const s of c.slots) {
    t.notOk(extentsOn(s.dataDir, HOLES_AT, 12 * MiB).some((e) => e.flags === HOLE), `${s.id}: the written range is allocated`);
  }
  await nbdsh(uri, [`h.trim(${4 * MiB}, ${HOLES_AT})`, `h.zero(${4 * MiB}, ${HOLES_AT + 4 * MiB})`, `h.zero(${4 * MiB}, ${HOLES_AT + 8 * MiB}, nbd.CMD_FLAG_NO_HOLE)`]);
  await c.converged();
  for (const s of c.slots) {
    t.same(extentsOn(s.dataDir, HOLES_AT, 4 * MiB), [{ length: 4 * MiB, flags: HOLE }], `${s.id}: the trimmed range is a hole in the device file`);
    t.same(extentsOn(s.dataDir, HOLES_AT + 4 * MiB, 4 * MiB), [{ length: 4 * MiB, flags: HOLE }], `${s.id}: the zeroed range is a hole`);
    t.notOk(extentsOn(s.dataDir, HOLES_AT + 8 * MiB, 4 * MiB).some((e) => e.flags === HOLE), `${s.id}: the range zeroed with NO_HOLE stays allocated`);
  }
});
