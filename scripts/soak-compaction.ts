// npm run soak -- [--minutes 4] [--region 256MiB] [--sample-seconds 5] [--warmup-seconds N] [--dir /var/tmp]
//                 [--checkpoint-bytes 64MiB] [--checkpoint-entries 10000]
//                 [--retain-entries 1000] [--retain-bytes 256MiB] [--product-defaults]
//                 [--trim-iops 200] [--rewrite-rate 8MiB] [--seed N] [--keep]
//
// Online compaction soak (issue 16): WAL retention and device-file holes stay
// bounded under a long write load. Three xdevice-node processes on loopback
// (the shared launcher), one device; a mixed load through NBD on the leader
// over a bounded region (test/integration/helpers/compaction-soak.ts: fio
// random 4-64 KiB writes and trims and a sequential 256 KiB rewrite, nbdsh
// write-zeroes); every few seconds, on every node, the WAL's and the device
// file's allocated bytes (st_blocks, not apparent sizes), the rest of the
// data directory, RSS, and the checkpoint index and compaction floor from
// /metrics. Prints the samples, the bounds the configuration implies and a
// verdict: after the warm-up (the first third) each series' maximum within
// its bound and its least-squares slope over the last two thirds about zero
// (growth over that window within one WAL segment, or 1/16 of the region for
// the device file). Exit 1 when a series fails. JSON in bench-results/.
//
// The nodes checkpoint every --checkpoint-bytes / --checkpoint-entries
// (XDEVICE_CHECKPOINT_BYTES, ...): at the product's defaults (1 GiB, 200,000
// entries; --product-defaults) a few minutes see one or two compactions, too
// few to tell a trend from a saw tooth.

import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { join, resolve } from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { Cluster } from '../test/integration/helpers/launcher.ts';
import {
  DEFAULT_TUNING,
  deviceBound,
  formatSamples,
  formatVerdicts,
  judge,
  LOAD_REQUEST_BYTES_MAX,
  sampleCluster,
  startLoad,
  tuningEnv,
  walBound,
  type LoadResult,
  type Sample,
  type SoakTuning,
} from '../test/integration/helpers/compaction-soak.ts';
import { limits } from '../src/limits.ts';
import { formatSize, parseSize } from '../src/parse.ts';

const ROOT = resolve(import.meta.dirname, '..');
const TMPFS_MAGIC = 0x01021994;
const MiB = 1024 * 1024;

const argv = await yargs(hideBin(process.argv))
  .option('minutes', { type: 'number', default: 4, describe: 'length of the load' })
  .option('region', { type: 'string', default: '256MiB', describe: 'bytes of the device the load writes, trims and zeroes' })
  .option('sample-seconds', { type: 'number', default: 5 })
  .option('warmup-seconds', { type: 'number', describe: 'samples before this are not judged (default: the first third of the load)' })
  .option('dir', { type: 'string', default: process.env.XDEVICE_BENCH_DIR ?? '/var/tmp', describe: 'where data directories go (a real disk)' })
  .option('checkpoint-bytes', { type: 'string', default: '64MiB' })
  .option('checkpoint-entries', { type: 'number', default: 10_000 })
  .option('retain-entries', { type: 'number', default: 1000 })
  .option('retain-bytes', { type: 'string', default: formatSize(limits.walRetainBytesMax) })
  .option('product-defaults', { type: 'boolean', default: false, describe: 'checkpoint and retain at the product’s limits (ignores the four options above)' })
  .option('trim-iops', { type: 'number', default: 200 })
  .option('rewrite-rate', { type: 'string', default: '8MiB', describe: 'bytes per second of the sequential rewrite' })
  .option('seed', { type: 'number', describe: 'fio and nbdsh random seed (default: random, printed)' })
  .option('entry', { choices: ['source', 'bin'] as const, default: 'source' as const, describe: 'run the nodes from src/ (tsx) or dist/' })
  .option('keep', { type: 'boolean', default: false, describe: 'keep the data directories' })
  .strict()
  .parseAsync();

const regionBytes = parseSize(argv.region);
const tuning: SoakTuning = argv['product-defaults']
  ? DEFAULT_TUNING
  : { checkpointBytes: parseSize(argv['checkpoint-bytes']), checkpointEntries: argv['checkpoint-entries'], retainEntries: argv['retain-entries'], retainBytes: parseSize(argv['retain-bytes']) };
const seed = argv.seed ?? randomInt(1, 2 ** 31 - 1);
const seconds = Math.round(argv.minutes * 60);
const wal = walBound(tuning, LOAD_REQUEST_BYTES_MAX);
const device = deviceBound(regionBytes);

const base = resolve(argv.dir);
mkdirSync(base, { recursive: true });
if (statfsSync(base).type === TMPFS_MAGIC) throw new Error(`${base} is tmpfs: put the data on a real disk (--dir)`);
const runDir = mkdtempSync(join(base, 'xdevice-soak-'));
// The launcher's temp dirs (the cluster secret) go under TMPDIR; the nodes refuse XDEVICE_* they do not know.
process.env.TMPDIR = runDir;
delete process.env.XDEVICE_TEST_TMP;
delete process.env.XDEVICE_BENCH_DIR;
process.env.XDEVICE_LOG_LEVEL ??= 'warn';

const log = (line: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);
const mib = (b: number): string => `${(b / MiB).toFixed(1)} MiB`;

log(`soak: ${argv.minutes} min, region ${formatSize(regionBytes)}, seed ${seed}, data in ${runDir}`);
const cluster = await Cluster.start({ size: 3, baseDir: join(runDir, 'cluster'), devices: [`soak:${regionBytes}`], env: tuningEnv(tuning), entry: argv.entry });
let stopping = false;
const stopAll = async (): Promise<void> => {
  stopping = true;
  await cluster.stop();
};
process.once('SIGINT', () => void stopAll().finally(() => process.exit(130)));

const samples: Sample[] = [];
let result: LoadResult | undefined;
let failure: unknown;
try {
  const leader = await cluster.waitForLeader();
  log(`leader ${leader}; load for ${seconds} s`);
  const started = Date.now();
  const load = startLoad({ uri: cluster.nbdUri(leader, 'soak'), regionBytes, seconds, seed, trimIops: argv['trim-iops'], rewriteBytesPerSecond: parseSize(argv['rewrite-rate']), stopFile: join(runDir, 'stop') });
  let finished = false;
  const done = load.done.finally(() => (finished = true));
  done.catch(() => undefined);
  while (!finished && !stopping) {
    const s = await sampleCluster(cluster, (Date.now() - started) / 1000);
    samples.push(s);
    const l = s.nodes.find((n) => n.node === leader)!;
    log(`t=${s.seconds.toFixed(0)} s  WAL ${s.nodes.map((n) => mib(n.walBytes)).join(' / ')}  dev ${s.nodes.map((n) => mib(n.deviceBytes)).join(' / ')}  leader ckpt ${l.checkpointIndex} floor ${l.firstIndex - 1} applied ${l.applied}`);
    const next = started + samples.length * argv['sample-seconds'] * 1000;
    await Promise.race([done.catch(() => undefined), new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())))]);
  }
  result = await done;
  await cluster.converged(120_000);
  samples.push(await sampleCluster(cluster, (Date.now() - started) / 1000));
} catch (err) {
  failure = err;
  log(`soak stopped: ${(err as Error).stack ?? String(err)}`);
  process.stderr.write(cluster.logs(30));
} finally {
  await cluster.stop();
}

// The device file fills towards its balance of writes and holes over a few passes of random writes over the region: a slow run needs a longer warm-up.
const warmup = argv['warmup-seconds'] ?? seconds / 3;
const verdicts = judge(samples, warmup, {
  wal: { bound: wal.bytes, growthAllowedBytes: limits.walSegmentBytes },
  device: { bound: device, growthAllowedBytes: regionBytes / 16 },
  other: { growthAllowedBytes: 1 * MiB },
});
const memory = judge(samples, warmup, { rss: { growthAllowedBytes: 64 * MiB } });

console.log(`XDevice compaction soak: 3 nodes, ${argv.minutes} min of load, region ${formatSize(regionBytes)}, seed ${seed}`);
console.log(
  `tuning: checkpoint every ${formatSize(tuning.checkpointBytes)} or ${tuning.checkpointEntries} entries; followers retained up to ${tuning.retainEntries} entries / ${formatSize(tuning.retainBytes)}; ` +
    `WAL segments ${formatSize(limits.walSegmentBytes)}, ${limits.walRecycledSegments} recycled`,
);
console.log(
  `WAL bound: ${wal.segments} segments = ${mib(wal.bytes)} (checkpoint interval <= ${mib(wal.intervalBytes)} on disk, retained <= ${mib(wal.retainedBytes)}, ` +
    `live log <= 2 intervals + retained = ${mib(wal.liveBytes)}, + head segment, prepared segment, pool); device bound: region + extent blocks = ${mib(device)}`,
);
if (result) {
  const rate = (b: number): string => `${(b / seconds / 1e6).toFixed(1)} MB/s`;
  console.log(
    `load: random writes ${result.randwrite.ops} (${rate(result.randwrite.bytes)}), trims ${result.randtrim.ops} (${rate(result.randtrim.bytes)}), ` +
      `sequential rewrite ${rate(result.seqrewrite.bytes)}, write-zeroes ${result.zeroes.ops} (${result.zeroes.noHole} NO_HOLE, ${rate(result.zeroes.bytes)})`,
  );
}
const last = samples.at(-1);
if (last) {
  console.log(
    `checkpoints / compactions per node: ${last.nodes.map((n) => `${n.node} ${n.checkpoints}/${n.compactions}`).join(', ')}; WAL payload written: ${last.nodes.map((n) => mib(n.walWrittenBytes)).join(' / ')}`,
  );
}
console.log();
// At most about 60 rows (every sample is in the JSON).
const every = Math.max(1, Math.ceil(samples.length / 60));
console.log(formatSamples(samples.filter((_, i) => i % every === 0 || i === samples.length - 1)));
console.log(`\nafter the warm-up (t >= ${warmup.toFixed(0)} s):\n`);
console.log(formatVerdicts(verdicts));
console.log('\nmemory (reported, not judged):\n');
console.log(formatVerdicts(memory));
const ok = failure === undefined && verdicts.length > 0 && verdicts.every((v) => v.ok);
console.log(`\nVERDICT: ${ok ? 'bounded and flat' : failure ? `run failed: ${String(failure)}` : 'GROWTH or bound exceeded (see FAIL rows)'}`);

const resultsDir = join(ROOT, 'bench-results');
mkdirSync(resultsDir, { recursive: true });
const jsonPath = join(resultsDir, `soak-compaction-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
writeFileSync(jsonPath, JSON.stringify({ options: { minutes: argv.minutes, regionBytes, seed, tuning }, bounds: { wal, deviceBytes: device }, load: result, samples, verdicts, memory, ok, error: failure === undefined ? undefined : String(failure) }, null, 1));
console.log(`results: ${jsonPath}`);
if (!argv.keep) rmSync(runDir, { recursive: true, force: true });
if (!ok) process.exitCode = 1;
