// Write compression's benchmark (issue 16): with fio's
// buffer_compress_percentage=50 (and a mix with zero_buffers), bytes written
// to the WAL and sent to peers should fall to <= 0.6x of compression off,
// with throughput >= 0.9x, in the same run.
//
// node --import=tsx scripts/bench-compression.ts [--nodes 3] [--runtime 15] [--rounds 1]
//     [--size 256MiB] [--dir /var/tmp] [--workloads c50-4k,c50-1m,mix-4k,mix-1m,rand-4k,rand-1m] [--keep]
//
// Two clusters of --nodes xdevice-node processes run side by side, one with
// `compression = lz4`, one with `compression = off`; each workload runs on
// one, then the other (the order flips every round), fio (ioengine=nbd)
// talking to the leader. Per job, from every node's /metrics before and
// after: bytes acknowledged (the leader's NBD write payload bytes), WAL
// payload bytes written (all nodes) and bytes written to peer links (all
// nodes), so "per acknowledged byte" covers the whole cluster.
//   c50-*  every buffer 50% compressible (buffer_compress_percentage=50,
//          refill_buffers: fresh data per write, in fio's 512-byte chunks)
//   mix-*  two jobs at once on halves of the export: one as c50, one
//          zero_buffers (every write all zeroes)
//   rand-* fresh random data per write: nothing compresses, so the on/off
//          ratio is what trying costs

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { runFio, type FioResult, type Scenario } from './lib/fio.ts';
import { scrapeMetrics, type Samples } from './lib/node-metrics.ts';
import { beginCost } from './lib/proc-cost.ts';
import { Cluster } from '../test/integration/helpers/launcher.ts';
import { parseSize } from '../src/parse.ts';

const ROOT = resolve(import.meta.dirname, '..');

const argv = await yargs(hideBin(process.argv))
  .option('nodes', { type: 'number', default: 3, describe: 'nodes per cluster (1 or 3)' })
  .option('runtime', { type: 'number', default: 15, describe: 'seconds per fio job' })
  .option('rounds', { type: 'number', default: 1, describe: 'repeat every workload; the order of on/off flips each round; figures are summed over rounds' })
  .option('size', { type: 'string', default: '256MiB', describe: 'bytes of the export fio touches' })
  .option('dir', { type: 'string', default: process.env.XDEVICE_BENCH_DIR ?? '/var/tmp', describe: 'where data directories go (a real disk)' })
  .option('workloads', { type: 'string', default: 'c50-4k,c50-1m,mix-4k,mix-1m,rand-4k,rand-1m' })
  .option('build', { type: 'boolean', default: true, describe: 'compile dist/ first (the node binary runs it)' })
  .option('keep', { type: 'boolean', default: false, describe: 'keep the data directories' })
  .strict()
  .parseAsync();

const SIZE_BYTES = parseSize(argv.size);
const MODES = ['lz4', 'off'] as const;
type Mode = (typeof MODES)[number];

interface Workload {
  id: string;
  scenario: Scenario;
  mix: boolean;
  /** Fresh random data per write (nothing compresses): what trying costs. */
  random?: boolean;
}

const WORKLOADS: Workload[] = [
  { id: 'c50-4k', scenario: { id: 'c50-4k', title: '4k randwrite QD32, 50% compressible', rw: 'randwrite', blockSize: '4k', iodepth: 32 }, mix: false },
  { id: 'c50-1m', scenario: { id: 'c50-1m', title: '1M seq write QD8, 50% compressible', rw: 'write', blockSize: '1M', iodepth: 8 }, mix: false },
  { id: 'mix-4k', scenario: { id: 'mix-4k', title: '4k randwrite QD32, half 50% compressible, half zeroes', rw: 'randwrite', blockSize: '4k', iodepth: 32 }, mix: true },
  { id: 'mix-1m', scenario: { id: 'mix-1m', title: '1M seq write QD8, half 50% compressible, half zeroes', rw: 'write', blockSize: '1M', iodepth: 8 }, mix: true },
  { id: 'rand-4k', scenario: { id: 'rand-4k', title: '4k randwrite QD32, incompressible', rw: 'randwrite', blockSize: '4k', iodepth: 32 }, mix: false, random: true },
  { id: 'rand-1m', scenario: { id: 'rand-1m', title: '1M seq write QD8, incompressible', rw: 'write', blockSize: '1M', iodepth: 8 }, mix: false, random: true },
];

interface Measure {
  fio: FioResult;
  ackBytes: number;
  walBytes: number;
  peerBytes: number;
  /** utime+stime of every node process over the job after its ramp, and the bytes acknowledged meanwhile (fio's rate). */
  cpuSeconds: number;
  /** /proc/PID/io write_bytes of every node process over that window (WAL and device files). */
  diskBytes: number;
  windowAckBytes: number;
}

function buildDist(): void {
  const r = spawnSync(join(ROOT, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) process.stderr.write(`warning: tsc -p tsconfig.build.json reported errors; running the dist/ it emitted\n${r.stdout.slice(0, 3000)}\n`);
  if (!existsSync(join(ROOT, 'dist/node/main.js'))) throw new Error('dist/node/main.js is missing after the build');
}

const sum = (samples: Samples, name: string): number => {
  let total = 0;
  for (const [key, v] of samples.values) if (key === name || key.startsWith(`${name}{`)) total += v;
  return total;
};

async function scrapeAll(c: Cluster): Promise<Samples[]> {
  return await Promise.all(c.slots.map((s) => scrapeMetrics(s.ports.admin)));
}

async function runOne(c: Cluster, w: Workload): Promise<Measure> {
  const leader = await c.waitForLeader(undefined, 60_000);
  const uri = c.nbdUri(leader, 'bench');
  const half = Math.floor(SIZE_BYTES / 2 / (1 << 20)) * (1 << 20);
  const compressible = w.random ? ['--refill_buffers'] : ['--buffer_compress_percentage=50', '--refill_buffers'];
  const before = await scrapeAll(c);
  const cost = beginCost(c.slots.map((s) => ({ name: s.id, pids: s.proc?.child.pid === undefined ? [] : [s.proc.child.pid] })), 1000);
  const fio = await runFio({
    uri: w.mix ? [uri, uri] : uri,
    scenario: w.scenario,
    runtimeSeconds: argv.runtime,
    sizeBytes: w.mix ? half : SIZE_BYTES,
    ...(w.mix ? { jobArgs: (i: number) => (i === 0 ? [...compressible, '--offset=0'] : ['--zero_buffers', `--offset=${half}`]) } : { extraArgs: compressible }),
  });
  const window = cost.finish();
  await c.converged(120_000);
  const after = await scrapeAll(c);
  const delta = (name: string, only?: number): number =>
    after.reduce((s, m, i) => (only === undefined || only === i ? s + sum(m, name) - sum(before[i]!, name) : s), 0);
  const li = c.indexOf(leader);
  return {
    fio,
    ackBytes: delta('xdevice_nbd_request_bytes_total{command="write"}', li),
    walBytes: delta('xdevice_disk_wal_write_bytes_total'),
    peerBytes: delta('xdevice_network_peer_sent_bytes_total'),
    cpuSeconds: window.groups.reduce((n, g) => n + g.cpuSeconds, 0),
    diskBytes: window.groups.reduce((n, g) => n + g.writeBytes, 0),
    windowAckBytes: fio.bandwidthBytesPerSecond * window.seconds,
  };
}

function add(a: Measure | undefined, b: Measure): Measure {
  if (!a) return b;
  return {
    fio: { ...b.fio, bandwidthBytesPerSecond: a.fio.bandwidthBytesPerSecond + b.fio.bandwidthBytesPerSecond },
    ackBytes: a.ackBytes + b.ackBytes,
    walBytes: a.walBytes + b.walBytes,
    peerBytes: a.peerBytes + b.peerBytes,
    cpuSeconds: a.cpuSeconds + b.cpuSeconds,
    diskBytes: a.diskBytes + b.diskBytes,
    windowAckBytes: a.windowAckBytes + b.windowAckBytes,
  };
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

if (argv.build) buildDist();
mkdirSync(argv.dir, { recursive: true });
const runDir = mkdtempSync(join(argv.dir, 'xdevice-bench-compression-'));
const clusters = new Map<Mode, Cluster>();
const results = new Map<string, Map<Mode, Measure>>();
const chosen = argv.workloads.split(',').map((id) => {
  const w = WORKLOADS.find((x) => x.id === id);
  if (!w) throw new Error(`unknown workload ${id}: ${WORKLOADS.map((x) => x.id).join(', ')}`);
  return w;
});
try {
  for (const mode of MODES) {
    clusters.set(mode, await Cluster.start({ size: argv.nodes, baseDir: join(runDir, mode), devices: [`bench:${SIZE_BYTES}`], nodeArgs: () => ['--compression', mode] }));
  }
  for (let round = 0; round < argv.rounds; round++) {
    for (const w of chosen) {
      const order = round % 2 === 0 ? MODES : [...MODES].reverse();
      for (const mode of order) {
        process.stderr.write(`round ${round + 1}: ${w.id} compression=${mode} ...\n`);
        const m = await runOne(clusters.get(mode)!, w);
        const byMode = results.get(w.id) ?? new Map<Mode, Measure>();
        byMode.set(mode, add(byMode.get(mode), m));
        results.set(w.id, byMode);
      }
    }
  }
} finally {
  for (const c of clusters.values()) await c.stop();
  if (!argv.keep) rmSync(runDir, { recursive: true, force: true });
}

const f2 = (x: number): string => (Number.isFinite(x) ? x.toFixed(2) : '-');
const f3 = (x: number): string => (Number.isFinite(x) ? x.toFixed(3) : '-');
const rows: string[][] = [];
const verdicts: string[] = [];
for (const w of chosen) {
  const byMode = results.get(w.id)!;
  const on = byMode.get('lz4')!;
  const off = byMode.get('off')!;
  const mbs = (m: Measure) => m.fio.bandwidthBytesPerSecond / argv.rounds / 1e6;
  const wal = (m: Measure) => m.walBytes / m.ackBytes;
  const peer = (m: Measure) => m.peerBytes / m.ackBytes;
  const cpu = (m: Measure) => (m.cpuSeconds * 1000) / (m.windowAckBytes / 2 ** 20);
  const disk = (m: Measure) => m.diskBytes / m.windowAckBytes;
  for (const [mode, m] of [['lz4', on], ['off', off]] as const) {
    rows.push([`${w.id} ${mode}`, f2(mbs(m)), f3(wal(m)), f3(peer(m)), f2(disk(m)), f2(cpu(m)), '', '', '', '']);
  }
  const r = { mbs: mbs(on) / mbs(off), wal: wal(on) / wal(off), peer: peer(on) / peer(off), cpu: cpu(on) / cpu(off) };
  rows.push([`${w.id} lz4/off`, '', '', '', '', '', f3(r.mbs), f3(r.wal), f3(r.peer), f3(r.cpu)]);
  if (w.random) {
    // Nothing compresses: the goal is only that trying costs little.
    const ok = r.mbs >= 0.9;
    verdicts.push(`${w.id} (${w.scenario.title}): MB/s ${f3(r.mbs)}x, CPU ${f3(r.cpu)}x -> ${ok ? 'meets' : 'MISSES'} the goal (>= 0.9x MB/s)`);
    continue;
  }
  const ok = r.wal <= 0.6 && r.peer <= 0.6 && r.mbs >= 0.9;
  verdicts.push(`${w.id} (${w.scenario.title}): WAL ${f3(r.wal)}x, peers ${f3(r.peer)}x, MB/s ${f3(r.mbs)}x -> ${ok ? 'meets' : 'MISSES'} the goal (<= 0.6x bytes, >= 0.9x MB/s)`);
}
process.stdout.write(`\nwrite compression, ${argv.nodes}-node clusters, ${argv.runtime} s per job, ${argv.rounds} round(s), export ${argv.size}\n`);
process.stdout.write('WAL B/ack B: WAL payload bytes written on all nodes per byte acknowledged; peer B/ack B: bytes written to peer links by all nodes per byte acknowledged;\n');
process.stdout.write('disk B/ack B: /proc/PID/io write_bytes of all nodes (WAL + device files) per byte acknowledged; CPU ms/MiB: utime+stime of all nodes per MiB acknowledged (both after the ramp)\n\n');
process.stdout.write(table(['workload', 'MB/s', 'WAL B/ack B', 'peer B/ack B', 'disk B/ack B', 'CPU ms/MiB', 'MB/s on/off', 'WAL on/off', 'peer on/off', 'CPU on/off'], rows) + '\n\n');
for (const v of verdicts) process.stdout.write(v + '\n');
