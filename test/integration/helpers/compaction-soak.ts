// The parts of the online-compaction soak (issue 16) that the script
// (scripts/soak-compaction.ts: minutes to hours, a table and a verdict) and
// the CI-sized test (test/integration/compaction-soak.test.ts: asserts the
// bounds) share:
//   - a mixed write load over a bounded region of one export, through real
//     clients: fio's nbd engine (random 4-64 KiB writes, random 4-64 KiB
//     trims, a sequential 256 KiB rewrite of the region's first quarter) and
//     nbdsh (random 4-64 KiB write-zeroes, a quarter of them NO_HOLE);
//   - samples of every node: WAL and device-file bytes on disk (allocated
//     blocks, st_blocks * 512, not apparent sizes) and the checkpoint and
//     compaction progress its /metrics reports;
//   - the bounds the configuration implies, and the verdict over a run.
// fio is spawned here rather than through scripts/lib/fio.ts: tests do not
// depend on bench code, and this load wants per-job totals, not percentiles.

import { spawn } from 'node:child_process';
import { readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { limits } from '../../../src/limits.ts';
import { recordHeaderBytes } from '../../../src/wal/record.ts';
import { COMMAND_HEADER_BYTES } from '../../../src/device/commands.ts';
import { DEVICES_DIR } from '../../../src/device/block-store.ts';
import { allocatedBytes } from '../../../src/disk/usage.ts';
import type { Cluster } from './launcher.ts';
import { metricSum } from './tools.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
/** The largest request the load sends: the sequential rewrite's (the random writes, trims and zeroes are 4-64 KiB). */
export const LOAD_REQUEST_BYTES_MAX = 256 * KiB;
/** The system's python3, which has libnbd's module (a pyenv one on PATH may not). */
const NBDSH_ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

// ---- configuration and the bounds it implies -------------------------------------

/** The checkpoint and retention limits the nodes run with (src/replica/housekeeping.ts Tuning). */
export interface SoakTuning {
  checkpointEntries: number;
  checkpointBytes: number;
  retainEntries: number;
  retainBytes: number;
}

export const DEFAULT_TUNING: SoakTuning = {
  checkpointEntries: limits.checkpointEntries,
  checkpointBytes: limits.checkpointBytes,
  retainEntries: limits.walRetainEntriesMax,
  retainBytes: limits.walRetainBytesMax,
};

/** The environment that gives a node this tuning (src/cluster/node.ts tuningFromEnv). */
export function tuningEnv(t: SoakTuning): NodeJS.ProcessEnv {
  return {
    XDEVICE_CHECKPOINT_ENTRIES: String(t.checkpointEntries),
    XDEVICE_CHECKPOINT_BYTES: String(t.checkpointBytes),
    XDEVICE_WAL_RETAIN_ENTRIES: String(t.retainEntries),
    XDEVICE_WAL_RETAIN_BYTES: String(t.retainBytes),
  };
}

export interface WalBound {
  /** Allocated bytes the WAL directory may hold: whole preallocated segment files. */
  bytes: number;
  segments: number;
  /** Bytes on disk of the entries between one checkpoint and the next, at most. */
  intervalBytes: number;
  /** Bytes on disk of the entries followers may hold below the checkpoint. */
  retainedBytes: number;
  /** Bytes on disk of the log between the compaction floor and its end, at most. */
  liveBytes: number;
}

/**
 * The WAL's allocated bytes under a load of requests up to `requestBytesMax`:
 *   - An entry is at most COMMAND_HEADER_BYTES + requestBytesMax of payload;
 *     on disk it costs its payload plus, at worst (alone in its batch), a
 *     batch header, its record header and a hard-state record, padded to the
 *     WAL's alignment.
 *   - A checkpoint is due once checkpointEntries entries or checkpointBytes
 *     payload bytes were applied since the last; it is checked after each
 *     applied batch (up to raftReadyCommittedBytesMax), and then the WAL is
 *     compacted up to it.
 *   - While one checkpoint is written the log goes on growing, and the next
 *     cannot start before it ends: between two compactions the log holds at
 *     most two intervals, as long as a checkpoint (a device-file fdatasync)
 *     takes less time than the load needs to fill an interval. That is an
 *     assumption about the disk, not the configuration; the soak checks it.
 *   - A follower within retainEntries (and retainBytes) of the checkpoint
 *     holds compaction back to its match index.
 *   - The log is spread over segment files of walSegmentBytes, preallocated
 *     whole: each holds batches between its header and baseline (3 blocks)
 *     and its seal block, and a batch that does not fit (up to
 *     walBatchBytesMax) leaves the rest of it empty. The head segment goes
 *     only once it lies wholly below the floor; the next segment is prepared
 *     ahead (next-segment.tmp); walRecycledSegments retired files wait.
 */
export function walBound(t: SoakTuning, requestBytesMax: number): WalBound {
  const S = limits.walSegmentBytes;
  const A = limits.walAlignmentBytes;
  const voteBytesMax = 64;
  const entryOverhead = A + 3 * recordHeaderBytes + voteBytesMax;
  const entryPayloadMax = COMMAND_HEADER_BYTES + requestBytesMax;
  const intervalBytes = Math.min(t.checkpointBytes + limits.raftReadyCommittedBytesMax, t.checkpointEntries * entryPayloadMax) + t.checkpointEntries * entryOverhead;
  const retainedBytes = Math.min(t.retainEntries * entryPayloadMax, t.retainBytes) + t.retainEntries * entryOverhead;
  const liveBytes = 2 * intervalBytes + retainedBytes;
  const usable = S - 4 * A - limits.walBatchBytesMax;
  const segments = Math.ceil(liveBytes / usable) + 1 + 1 + limits.walRecycledSegments;
  return { bytes: segments * S, segments, intervalBytes, retainedBytes, liveBytes };
}

/**
 * A device file's allocated bytes when every write, trim and zeroing falls in
 * [0, regionBytes): the region, plus the filesystem's extent-tree blocks that
 * st_blocks counts (one 4 KiB block maps 340 extents, each at least a block).
 */
export function deviceBound(regionBytes: number): number {
  const block = 4096;
  return regionBytes + (Math.ceil(regionBytes / block / 340) + 1) * block;
}

// ---- the load -----------------------------------------------------------------------

export interface LoadOptions {
  uri: string;
  regionBytes: number;
  /** Run this long at most (seconds); stop() ends it sooner. */
  seconds: number;
  seed: number;
  /** Trims per second (fio rate_iops; default 200). */
  trimIops?: number;
  /** Bytes per second of the sequential rewrite (default 8 MiB/s). */
  rewriteBytesPerSecond?: number;
  /** A file whose existence stops the nbdsh zeroing loop (it is created when fio ends). */
  stopFile: string;
}

export interface JobTotals {
  ops: number;
  bytes: number;
}

export interface LoadResult {
  randwrite: JobTotals;
  randtrim: JobTotals;
  seqrewrite: JobTotals;
  zeroes: JobTotals & { noHole: number };
}

export interface RunningLoad {
  done: Promise<LoadResult>;
  /** Ends the load early (fio stops on SIGINT and still reports). */
  stop(): void;
}

function fioArgs(o: LoadOptions): string[] {
  const until = ['--time_based', `--runtime=${o.seconds}`];
  return [
    '--ioengine=nbd',
    `--uri=${o.uri}`,
    `--randseed=${o.seed}`,
    '--output-format=json',
    // A job that fails ends the others.
    '--exitall',
    '--name=randwrite',
    '--rw=randwrite',
    '--bsrange=4k-64k',
    '--blockalign=4k',
    '--offset=0',
    `--size=${o.regionBytes}`,
    '--iodepth=8',
    ...until,
    '--name=randtrim',
    '--rw=randtrim',
    '--bsrange=4k-64k',
    '--blockalign=4k',
    '--offset=0',
    `--size=${o.regionBytes}`,
    '--iodepth=2',
    `--rate_iops=${o.trimIops ?? 200}`,
    ...until,
    '--name=seqrewrite',
    '--rw=write',
    '--bs=256k',
    '--offset=0',
    `--size=${Math.floor(o.regionBytes / 4 / (256 * KiB)) * 256 * KiB}`,
    '--iodepth=2',
    `--rate=${o.rewriteBytesPerSecond ?? 8 * MiB}`,
    ...until,
  ];
}

/** The nbdsh loop: random zeroings in the region until the stop file appears; prints its totals. */
function zeroScript(o: LoadOptions): string {
  return [
    'import os, random, time',
    `rng = random.Random(${o.seed})`,
    `region, stop = ${o.regionBytes}, ${JSON.stringify(o.stopFile)}`,
    `h.connect_uri(${JSON.stringify(o.uri)})`,
    'ops = nbytes = noholes = 0',
    'while not os.path.exists(stop):',
    '    length = rng.randrange(1, 17) * 4096',
    '    offset = rng.randrange(0, (region - length) // 4096 + 1) * 4096',
    '    nohole = rng.random() < 0.25',
    '    h.zero(length, offset, nbd.CMD_FLAG_NO_HOLE if nohole else 0)',
    '    ops += 1; nbytes += length; noholes += nohole',
    '    time.sleep(0.005)',
    'h.flush()',
    "print('zeroes', ops, nbytes, noholes)",
  ].join('\n');
}

function collect(child: ReturnType<typeof spawn>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

interface FioSide {
  total_ios: number;
  io_bytes: number;
}

/** Starts the load on `uri`; `done` resolves with what each client sent, or rejects if a client failed. */
export function startLoad(o: LoadOptions): RunningLoad {
  const fio = spawn('fio', fioArgs(o), { stdio: ['ignore', 'pipe', 'pipe'] });
  const zero = spawn('nbdsh', ['-c', zeroScript(o)], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...NBDSH_ENV } });
  const fioDone = collect(fio).finally(() => writeFile(o.stopFile, ''));
  const zeroDone = collect(zero);
  let stopped = false;
  const done = (async (): Promise<LoadResult> => {
    const [f, z] = await Promise.all([fioDone, zeroDone]);
    // Stopped by SIGINT, fio still reports, and exits with 128.
    if (f.code !== 0 && !(stopped && f.code === 128)) throw new Error(`fio exited with ${f.code}: ${f.stderr.slice(-2000)}`);
    const start = f.stdout.indexOf('{');
    const jobs = (JSON.parse(f.stdout.slice(start)) as { jobs: Array<{ jobname: string; error: number; write: FioSide; trim: FioSide }> }).jobs;
    const totals = (name: string, side: 'write' | 'trim'): JobTotals => {
      const job = jobs.find((j) => j.jobname === name);
      if (!job) throw new Error(`fio reported no job ${name}`);
      if (job.error !== 0) throw new Error(`fio job ${name} failed with error ${job.error}`);
      return { ops: job[side].total_ios, bytes: job[side].io_bytes };
    };
    const m = /^zeroes (\d+) (\d+) (\d+)$/m.exec(z.stdout);
    if (z.code !== 0 || !m) throw new Error(`nbdsh zeroing loop failed (${z.code}): ${z.stderr.slice(-2000)}`);
    return {
      randwrite: totals('randwrite', 'write'),
      randtrim: totals('randtrim', 'trim'),
      seqrewrite: totals('seqrewrite', 'write'),
      zeroes: { ops: Number(m[1]), bytes: Number(m[2]), noHole: Number(m[3]) },
    };
  })();
  return {
    done,
    stop() {
      if (fio.exitCode !== null) return;
      stopped = true;
      fio.kill('SIGINT');
    },
  };
}

// ---- samples ----------------------------------------------------------------------

export interface NodeSample {
  node: string;
  /** Allocated bytes of every file in <data-dir>/wal, and how many of them are segments (*.wal). */
  walBytes: number;
  walSegments: number;
  /** Allocated bytes of the device files (<data-dir>/devices). */
  deviceBytes: number;
  /** Allocated bytes of everything else in the data directory (checkpoint, audit trails, ...). */
  otherBytes: number;
  applied: number;
  checkpointIndex: number;
  /** First index the WAL holds (the compaction floor + 1). */
  firstIndex: number;
  checkpoints: number;
  compactions: number;
  /** Entry payload bytes this node wrote to its WAL since it started. */
  walWrittenBytes: number;
  rssBytes: number;
}

export interface Sample {
  seconds: number;
  nodes: NodeSample[];
}

/** Allocated bytes of every file under `dir`, recursively. */
async function treeAllocatedBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += await treeAllocatedBytes(p);
    else if (e.isFile()) total += await stat(p).then((s) => s.blocks * 512, () => 0);
  }
  return total;
}

export async function sampleNode(c: Cluster, id: string): Promise<NodeSample> {
  const slot = c.slot(id);
  const dir = slot.dataDir;
  const res = await c.node(id).api<string>('GET', '/metrics', undefined, { timeoutMs: 10_000 });
  if (res.status !== 200) throw new Error(`/metrics of ${id}: HTTP ${res.status}`);
  const text = String(res.body);
  const [walBytes, deviceBytes, total, walNames] = await Promise.all([
    allocatedBytes(join(dir, 'wal')),
    treeAllocatedBytes(join(dir, DEVICES_DIR)),
    treeAllocatedBytes(dir),
    readdir(join(dir, 'wal')).catch(() => [] as string[]),
  ]);
  return {
    node: id,
    walBytes,
    walSegments: walNames.filter((n) => n.endsWith('.wal')).length,
    deviceBytes,
    otherBytes: Math.max(0, total - walBytes - deviceBytes),
    applied: metricSum(text, 'xdevice_raft_applied_index'),
    checkpointIndex: metricSum(text, 'xdevice_server_checkpoint_index'),
    firstIndex: metricSum(text, 'xdevice_raft_log_first_index'),
    checkpoints: metricSum(text, 'xdevice_server_checkpoints_total'),
    compactions: metricSum(text, 'xdevice_disk_wal_compactions_total'),
    walWrittenBytes: metricSum(text, 'xdevice_disk_wal_write_bytes_total'),
    rssBytes: metricSum(text, 'process_resident_memory_bytes'),
  };
}

export async function sampleCluster(c: Cluster, seconds: number): Promise<Sample> {
  return { seconds, nodes: await Promise.all(c.slots.map((s) => sampleNode(c, s.id))) };
}

// ---- verdict ----------------------------------------------------------------------

export type Series = 'wal' | 'device' | 'other' | 'rss';

export const seriesOf: Record<Series, (s: NodeSample) => number> = {
  wal: (s) => s.walBytes,
  device: (s) => s.deviceBytes,
  other: (s) => s.otherBytes,
  rss: (s) => s.rssBytes,
};

export interface SeriesVerdict {
  node: string;
  series: Series;
  /** Largest value after the warm-up, and the bound it must stay within (undefined: reported, not judged). */
  maxAfterWarmup: number;
  bound: number | undefined;
  /** Least-squares slope over the samples after the warm-up, bytes per minute. */
  slopeBytesPerMinute: number;
  /** slope times the window: how much the series grew over it, and how much it may. */
  growthBytes: number;
  growthAllowedBytes: number;
  ok: boolean;
}

/** Least-squares slope of (x, y), per unit of x. */
export function slope(points: Array<[number, number]>): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((s, [x]) => s + x, 0) / n;
  const my = points.reduce((s, [, y]) => s + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/**
 * Per node and series, after the warm-up (the first `warmupSeconds`): the
 * maximum within its bound, and the trend over the rest of the run within
 * `growthAllowed` (the WAL saws up and down by whole segments between
 * compactions, so "flat" is judged against the series' own granularity).
 */
export function judge(
  samples: readonly Sample[],
  warmupSeconds: number,
  limitsBySeries: Partial<Record<Series, { bound?: number; growthAllowedBytes: number }>>,
): SeriesVerdict[] {
  const after = samples.filter((s) => s.seconds >= warmupSeconds);
  if (after.length === 0) return [];
  const window = after[after.length - 1]!.seconds - after[0]!.seconds;
  const out: SeriesVerdict[] = [];
  for (const node of after[0]!.nodes.map((n) => n.node)) {
    for (const [series, lim] of Object.entries(limitsBySeries) as Array<[Series, { bound?: number; growthAllowedBytes: number }]>) {
      const points = after.flatMap((s): Array<[number, number]> => {
        const n = s.nodes.find((x) => x.node === node);
        return n ? [[s.seconds, seriesOf[series](n)]] : [];
      });
      const max = Math.max(...points.map(([, y]) => y));
      const perSecond = slope(points);
      const growthBytes = perSecond * window;
      const ok = (lim.bound === undefined || max <= lim.bound) && growthBytes <= lim.growthAllowedBytes;
      out.push({ node, series, maxAfterWarmup: max, bound: lim.bound, slopeBytesPerMinute: perSecond * 60, growthBytes, growthAllowedBytes: lim.growthAllowedBytes, ok });
    }
  }
  return out;
}

// ---- tables -----------------------------------------------------------------------

const mib = (b: number): string => (b / MiB).toFixed(1);

/** One row per sample: per node WAL MiB (segments), device MiB, and checkpoint / compaction floor. */
export function formatSamples(samples: readonly Sample[]): string {
  const nodes = samples[0]?.nodes.map((n) => n.node) ?? [];
  const header = ['t s', ...nodes.flatMap((n) => [`${n} WAL MiB (segs)`, `${n} dev MiB`, `${n} ckpt / floor`]), 'other KiB max', 'RSS MiB max'];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const s of samples) {
    const cells = nodes.flatMap((id) => {
      const n = s.nodes.find((x) => x.node === id);
      return n ? [`${mib(n.walBytes)} (${n.walSegments})`, mib(n.deviceBytes), `${n.checkpointIndex} / ${n.firstIndex - 1}`] : ['-', '-', '-'];
    });
    const other = Math.max(...s.nodes.map((n) => n.otherBytes));
    const rss = Math.max(...s.nodes.map((n) => n.rssBytes));
    lines.push(`| ${s.seconds.toFixed(0)} | ${cells.join(' | ')} | ${(other / KiB).toFixed(0)} | ${mib(rss)} |`);
  }
  return lines.join('\n');
}

export function formatVerdicts(verdicts: readonly SeriesVerdict[]): string {
  const lines = ['| node | series | max after warm-up MiB | bound MiB | slope MiB/min | growth over window MiB | allowed MiB | verdict |', '|---|---|---|---|---|---|---|---|'];
  for (const v of verdicts) {
    lines.push(
      `| ${v.node} | ${v.series} | ${mib(v.maxAfterWarmup)} | ${v.bound === undefined ? '-' : mib(v.bound)} | ${mib(v.slopeBytesPerMinute)} | ${mib(v.growthBytes)} | ${mib(v.growthAllowedBytes)} | ${v.ok ? 'ok' : 'FAIL'} |`,
    );
  }
  return lines.join('\n');
}
