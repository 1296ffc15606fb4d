// Runs fio jobs against an NBD URI and prints comparison tables. Shared by the
// NBD benchmark and the replicated-device benchmark: a Scenario describes the
// I/O pattern, a Target names a URI, and results come back as numbers.

import { spawn } from 'node:child_process';

export interface Scenario {
  /** Short id used on the command line (--scenarios a,c). */
  id: string;
  title: string;
  rw: 'randwrite' | 'randread' | 'write' | 'read' | 'randrw';
  blockSize: string;
  iodepth: number;
  /** fio's fsync=N: a flush after every N writes. */
  fsync?: number;
  numjobs?: number;
}

/** The scenarios of issue 3 (b is the replicated benchmark's; its absence here is deliberate). */
export const NBD_SCENARIOS: Scenario[] = [
  { id: 'a', title: '4k randwrite QD1 fsync=1', rw: 'randwrite', blockSize: '4k', iodepth: 1, fsync: 1 },
  { id: 'c', title: '4k randwrite QD32 fsync=32', rw: 'randwrite', blockSize: '4k', iodepth: 32, fsync: 32 },
  { id: 'd', title: '4k randwrite QD32', rw: 'randwrite', blockSize: '4k', iodepth: 32 },
  { id: 'e', title: '1M seq write QD8', rw: 'write', blockSize: '1M', iodepth: 8 },
  { id: 'f', title: '4k randread QD32', rw: 'randread', blockSize: '4k', iodepth: 32 },
  { id: 'g', title: '1M seq read QD8', rw: 'read', blockSize: '1M', iodepth: 8 },
];

/** Latency percentiles in microseconds. */
export interface Percentiles {
  p50: number;
  p90: number;
  p99: number;
  p999: number;
}

export interface FioResult {
  iops: number;
  bandwidthBytesPerSecond: number;
  /** Same as latency.p50 / latency.p99 (kept for the NBD benchmark's table). */
  p50Us: number;
  p99Us: number;
  /**
   * What an application waits for, from submission to completion. For QD1 with
   * a flush after every write (fsync=1) that is one write plus its flush, so the
   * two measured distributions are combined (see combinedLatency).
   */
  latency: Percentiles;
  latencyKind: 'request' | 'write+flush';
  /** The data requests alone (reads or writes). */
  requestLatency: Percentiles;
  /** Flushes, when the scenario sends them. */
  flushLatency?: Percentiles;
}

export interface FioRunOptions {
  /** One URI, or several: then one job per URI (the iodepth split between them) and the results summed. */
  uri: string | readonly string[];
  scenario: Scenario;
  runtimeSeconds: number;
  /** Bytes of the export the job touches. */
  sizeBytes: number;
  rampSeconds?: number;
  /** Default true: run for runtimeSeconds. False: one pass over sizeBytes (to fill an export before reading it). */
  timeBased?: boolean;
  /** fio options for every job (e.g. --buffer_compress_percentage=50 --refill_buffers). */
  extraArgs?: readonly string[];
  /** fio options of job i alone (one job per URI): e.g. --zero_buffers on one of them. */
  jobArgs?: (i: number) => readonly string[];
}

function fioArgs(options: FioRunOptions): string[] {
  const { scenario } = options;
  const uris = typeof options.uri === 'string' ? [options.uri] : [...options.uri];
  // Global options first; each --name starts a job that inherits them.
  const args = [
    '--ioengine=nbd',
    `--rw=${scenario.rw}`,
    `--bs=${scenario.blockSize}`,
    `--size=${options.sizeBytes}`,
    ...(options.timeBased === false ? [] : ['--time_based', `--runtime=${options.runtimeSeconds}`, `--ramp_time=${options.rampSeconds ?? 1}`]),
    '--randrepeat=0',
    // Percentiles of submission-to-completion time, with full histograms (json+) so
    // that any percentile, and write+flush combinations, can be computed here.
    '--lat_percentiles=1',
    '--group_reporting',
    '--output-format=json+',
  ];
  if (scenario.fsync !== undefined) args.push(`--fsync=${scenario.fsync}`);
  if (scenario.numjobs !== undefined) args.push(`--numjobs=${scenario.numjobs}`);
  args.push(...(options.extraArgs ?? []));
  uris.forEach((uri, i) => {
    const depth = Math.floor(scenario.iodepth / uris.length) + (i < scenario.iodepth % uris.length ? 1 : 0);
    args.push(`--name=bench${i}`, `--uri=${uri}`, `--iodepth=${Math.max(1, depth)}`, ...(options.jobArgs?.(i) ?? []));
  });
  return args;
}

interface FioLatency {
  N?: number;
  percentile?: Record<string, number>;
  /** json+: nanoseconds (bin value) to count. */
  bins?: Record<string, number>;
}

interface FioJobSide {
  iops: number;
  bw_bytes: number;
  lat_ns: FioLatency;
  clat_ns: FioLatency;
}

type Histogram = Array<[ns: number, count: number]>;

function histogram(lat: FioLatency): Histogram {
  return Object.entries(lat.bins ?? {})
    .map(([ns, count]): [number, number] => [Number(ns), count])
    .sort((a, b) => a[0] - b[0]);
}

/** The smallest value with at least fraction q of the samples at or below it, in µs. */
function quantileUs(h: Histogram, q: number): number {
  const total = h.reduce((sum, [, c]) => sum + c, 0);
  if (total === 0) return NaN;
  const want = q * total;
  let seen = 0;
  for (const [ns, count] of h) {
    seen += count;
    if (seen >= want) return ns / 1000;
  }
  return h[h.length - 1]![0] / 1000;
}

function percentilesOf(h: Histogram): Percentiles {
  return { p50: quantileUs(h, 0.5), p90: quantileUs(h, 0.9), p99: quantileUs(h, 0.99), p999: quantileUs(h, 0.999) };
}

/**
 * fio reports a write's latency and its flush's latency separately, and logs
 * neither per cycle. At QD1 one write and then one flush run back to back, and
 * successive requests are close to independent, so the distribution of a
 * durable write is the convolution of the two histograms. (Summing percentiles
 * instead would overstate a bimodal flush distribution's median.)
 */
export function combinedLatency(a: Histogram, b: Histogram): Percentiles {
  // Coarsen to log-spaced buckets (1% wide) to keep the product small.
  const bucket = (ns: number): number => Math.round(Math.log(Math.max(ns, 1)) * 100);
  const coarse = (h: Histogram): Map<number, [ns: number, count: number]> => {
    const m = new Map<number, [number, number]>();
    for (const [ns, c] of h) {
      const k = bucket(ns);
      const cur = m.get(k);
      if (cur) cur[1] += c;
      else m.set(k, [ns, c]);
    }
    return m;
  };
  const sums = new Map<number, [number, number]>();
  for (const [, [na, ca]] of coarse(a)) {
    for (const [, [nb, cb]] of coarse(b)) {
      const ns = na + nb;
      const k = bucket(ns);
      const cur = sums.get(k);
      if (cur) cur[1] += ca * cb;
      else sums.set(k, [ns, ca * cb]);
    }
  }
  return percentilesOf([...sums.values()].sort((x, y) => x[0] - y[0]));
}

interface FioJson {
  jobs: Array<{ read: FioJobSide; write: FioJobSide; sync?: { total_ios: number; lat_ns: FioLatency }; error: number }>;
}

/** Runs one fio invocation and parses its JSON (fio prints a line or two of chatter before it). */
export async function runFio(options: FioRunOptions): Promise<FioResult> {
  const output = await new Promise<string>((resolve, reject) => {
    const child = spawn('fio', fioArgs(options), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`fio exited with ${code}: ${stderr.slice(-2000)}${stdout.slice(-2000)}`));
    });
  });
  const start = output.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON: ${output.slice(0, 2000)}`);
  const json = JSON.parse(output.slice(start)) as FioJson;
  // With group_reporting the first entry is every job together.
  const job = json.jobs[0]!;
  if (job.error !== 0) throw new Error(`fio job error ${job.error}`);
  const { scenario } = options;
  const side = scenario.rw.includes('read') ? job.read : job.write;
  const requests = histogram(side.lat_ns);
  const requestLatency = percentilesOf(requests);
  const flushes = job.sync && job.sync.total_ios > 0 ? histogram(job.sync.lat_ns) : undefined;
  const flushLatency = flushes ? percentilesOf(flushes) : undefined;
  const cycle = flushes !== undefined && scenario.fsync === 1 && scenario.iodepth === 1 && scenario.numjobs === undefined;
  const latency = cycle ? combinedLatency(requests, flushes) : requestLatency;
  return {
    iops: side.iops,
    bandwidthBytesPerSecond: side.bw_bytes,
    p50Us: latency.p50,
    p99Us: latency.p99,
    latency,
    latencyKind: cycle ? 'write+flush' : 'request',
    requestLatency,
    ...(flushLatency ? { flushLatency } : {}),
  };
}

export interface ResultRow {
  scenario: Scenario;
  target: string;
  result: FioResult;
  /** The row this one is compared against (same scenario, reference target). */
  baseline?: FioResult;
}

export interface TableOptions {
  /** Last column; default: the NBD benchmark's rule (IOPS >= 0.8x and p99 <= 2x the baseline); false: no column. */
  verdict?: ((row: ResultRow) => string) | false;
}

function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : '-';
}

function ratio(a: number | undefined, b: number | undefined): number {
  return a !== undefined && b !== undefined && b > 0 ? a / b : NaN;
}

function nbdVerdict(row: ResultRow): string {
  if (row.baseline === undefined) return '';
  return ratio(row.result.iops, row.baseline.iops) >= 0.8 && ratio(row.result.p99Us, row.baseline.p99Us) <= 2 ? 'ok' : 'MISS';
}

/**
 * Renders rows as a Markdown table: IOPS, MB/s, p50/p99 and the ratios to the
 * baseline. A latency marked * is one write plus its flush (see FioResult.latency).
 */
export function formatTable(rows: readonly ResultRow[], options: TableOptions = {}): string {
  const verdict = options.verdict ?? nbdVerdict;
  const header = ['scenario', 'target', 'IOPS', 'MB/s', 'p50 µs', 'p99 µs', 'IOPS ×', 'p50 ×', 'p99 ×', ...(verdict ? ['verdict'] : [])];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const row of rows) {
    const r = row.result;
    const b = row.baseline;
    const star = r.latencyKind === 'write+flush' ? '*' : '';
    lines.push(
      `| ${row.scenario.id} ${row.scenario.title} | ${row.target} | ${fixed(r.iops, 0)} | ${fixed(r.bandwidthBytesPerSecond / 1e6, 1)} | ${fixed(r.p50Us, 0)}${star} | ${fixed(r.p99Us, 0)}${star} | ${fixed(ratio(r.iops, b?.iops), 2)} | ${fixed(ratio(r.p50Us, b?.p50Us), 2)} | ${fixed(ratio(r.p99Us, b?.p99Us), 2)} |${verdict ? ` ${verdict(row)} |` : ''}`,
    );
  }
  if (rows.some((r) => r.result.latencyKind === 'write+flush')) lines.push('', '(*) one write plus its flush (QD1, fsync=1)');
  return lines.join('\n');
}
