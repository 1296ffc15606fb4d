// The disk under a benchmark, measured in the same run: what one 4 KiB write
// followed by fdatasync costs (the floor of a durable commit), and O_DIRECT
// 1 MiB sequential write bandwidth at QD8 (the ceiling of large writes).

import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';

export interface RawDisk {
  /** Mean of one 4 KiB write + fdatasync, QD1 (1e6 / IOPS). */
  fdatasyncCycleUs: number;
  fdatasyncIops: number;
  /** O_DIRECT 1 MiB sequential writes, QD8. */
  directSeqBytesPerSecond: number;
}

interface FioSide {
  iops: number;
  bw_bytes: number;
}

async function fioJson(args: string[]): Promise<FioSide> {
  const out = await new Promise<string>((resolve, reject) => {
    const child = spawn('fio', [...args, '--output-format=json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`fio exited with ${code}: ${stderr.slice(-2000)}`))));
  });
  const start = out.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON: ${out.slice(0, 500)}`);
  const json = JSON.parse(out.slice(start)) as { jobs?: Array<{ error: number; write: FioSide }> };
  const job = json.jobs?.[0];
  if (!job || job.error !== 0 || !Number.isFinite(job.write?.iops)) throw new Error('fio: no write results');
  return job.write;
}

/** Runs both jobs on a scratch file in `dir` (a real disk), `seconds` each. */
export async function measureRawDisk(dir: string, seconds: number, sizeBytes: number): Promise<RawDisk> {
  const file = join(dir, 'raw-disk.fio');
  const common = [`--filename=${file}`, '--name=raw', '--rw=write', '--time_based', `--runtime=${Math.max(1, Math.round(seconds))}`, '--ramp_time=1'];
  try {
    const sync = await fioJson([...common, '--ioengine=psync', '--bs=4k', '--fdatasync=1', `--size=${Math.min(sizeBytes, 256 * 1024 ** 2)}`]);
    const direct = await fioJson([...common, '--ioengine=libaio', '--direct=1', '--bs=1M', '--iodepth=8', `--size=${sizeBytes}`]);
    return { fdatasyncCycleUs: 1e6 / sync.iops, fdatasyncIops: sync.iops, directSeqBytesPerSecond: direct.bw_bytes };
  } finally {
    rmSync(file, { force: true });
  }
}
