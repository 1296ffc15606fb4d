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

export interface FioResult {
  iops: number;
  bandwidthBytesPerSecond: number;
  p50Us: number;
  p99Us: number;
}

export interface FioRunOptions {
  uri: string;
  scenario: Scenario;
  runtimeSeconds: number;
  /** Bytes of the export the job touches. */
  sizeBytes: number;
  rampSeconds?: number;
}

function fioArgs(options: FioRunOptions): string[] {
  const { scenario } = options;
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${options.uri}`,
    `--rw=${scenario.rw}`,
    `--bs=${scenario.blockSize}`,
    `--iodepth=${scenario.iodepth}`,
    `--size=${options.sizeBytes}`,
    '--time_based',
    `--runtime=${options.runtimeSeconds}`,
    `--ramp_time=${options.rampSeconds ?? 1}`,
    '--randrepeat=0',
    '--group_reporting',
    '--output-format=json',
  ];
  if (scenario.fsync !== undefined) args.push(`--fsync=${scenario.fsync}`);
  if (scenario.numjobs !== undefined) args.push(`--numjobs=${scenario.numjobs}`);
  return args;
}

interface FioJobSide {
  iops: number;
  bw_bytes: number;
  clat_ns: { percentile?: Record<string, number> };
}

/** Runs one fio job and parses its JSON (fio prints a line or two of chatter before it). */
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
  const json = JSON.parse(output.slice(start)) as { jobs: Array<{ read: FioJobSide; write: FioJobSide; error: number }> };
  const job = json.jobs[0]!;
  if (job.error !== 0) throw new Error(`fio job error ${job.error}`);
  const side = options.scenario.rw.includes('read') ? job.read : job.write;
  const percentile = side.clat_ns.percentile ?? {};
  return {
    iops: side.iops,
    bandwidthBytesPerSecond: side.bw_bytes,
    p50Us: (percentile['50.000000'] ?? 0) / 1000,
    p99Us: (percentile['99.000000'] ?? 0) / 1000,
  };
}

export interface ResultRow {
  scenario: Scenario;
  target: string;
  result: FioResult;
  /** The row this one is compared against (same scenario, reference target). */
  baseline?: FioResult;
}

function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : '-';
}

/** Renders rows as a Markdown table: IOPS, MB/s, p50/p99 and the ratio to the baseline. */
export function formatTable(rows: readonly ResultRow[]): string {
  const header = ['scenario', 'target', 'IOPS', 'MB/s', 'p50 µs', 'p99 µs', 'IOPS ×', 'p99 ×', 'verdict'];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`];
  for (const row of rows) {
    const r = row.result;
    const b = row.baseline;
    const iopsRatio = b !== undefined && b.iops > 0 ? r.iops / b.iops : NaN;
    const p99Ratio = b !== undefined && b.p99Us > 0 ? r.p99Us / b.p99Us : NaN;
    const verdict = b === undefined ? '' : iopsRatio >= 0.8 && p99Ratio <= 2 ? 'ok' : 'MISS';
    lines.push(
      `| ${row.scenario.id} ${row.scenario.title} | ${row.target} | ${fixed(r.iops, 0)} | ${fixed(r.bandwidthBytesPerSecond / 1e6, 1)} | ${fixed(r.p50Us, 0)} | ${fixed(r.p99Us, 0)} | ${fixed(iopsRatio, 2)} | ${fixed(p99Ratio, 2)} | ${verdict} |`,
    );
  }
  return lines.join('\n');
}
