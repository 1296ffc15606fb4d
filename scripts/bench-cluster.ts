// Over 500 lines: one script owns one report (targets, run matrix, goals and
// every table of it); the reusable parts live in scripts/lib/.
//
// npm run bench -- [--runtime 20] [--scenarios a,c,d,e,f,g] [--targets single,cluster,nbdkit]
//                  [--pgbench] [--rounds 1] [--backend replicated|file]
//                  [--size 1GiB] [--dir /var/tmp] [--goal cluster-a-p50=1.5 ...] [--cpu-prof]
//                  [--encrypted]   (just the encryption rows: --targets cluster,cluster-encrypted --scenarios a,c --no-raw-disk)
//
// The replicated device's benchmark (issue 5): fio (ioengine=nbd) against
//   single   one xdevice-node (a one-node Raft cluster),
//   cluster  three xdevice-node processes on loopback (fio talks to the leader;
//            for reads also "spread": one job per node, the queue depth split),
//   nbdkit   nbdkit's file plugin on the same filesystem,
//   cluster-encrypted  three more nodes whose devices are encrypted at rest
//            (AES-256-XTS, issue 15), compared with "cluster" (same run);
// in the same run, all up at once, each scenario visiting the targets back to
// back, every row compared with nbdkit-file. With --pgbench,
// PostgreSQL 15 keeps its WAL (initdb --waldir) on ext4 on each target's
// device, attached through nbdfuse + losetup, and pgbench's tps is compared.
// Prints the tables and the issue's goals, writes JSON and an SVG chart of
// latency percentiles to bench-results/.
//
// Data directories go under --dir, which must be a real disk: tmpfs would
// measure memory, and fdatasync would cost nothing.
//
// --backend file|memory runs "single" on that backend (no Raft, no WAL) and
// skips the cluster: memory measures the NBD layer alone.
// --cpu-prof writes V8 profiles of the xdevice-node processes (stopped with
// SIGTERM so that they are flushed) and prints where their time went.
//
// Cost (issue 13): for every job, CPU µs per operation of each process of a
// target (utime + stime from /proc/PID/stat, descendants included, nbdkit
// too) and summed, and bytes written to storage per byte acknowledged
// (/proc/PID/io write_bytes: WAL and device files), both over the job after
// its ramp. The raw disk under --dir is measured in the same run (fio: 4 KiB
// write + fdatasync at QD1, O_DIRECT 1 MiB sequential at QD8; --no-raw-disk
// skips it).

import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { formatTable, NBD_SCENARIOS, runFio, type FioResult, type ResultRow, type Scenario } from './lib/fio.ts';
import { latencyChartSvg, type ChartPoint } from './lib/latency-chart.ts';
import { startNbdkitFile, type Nbdkit } from './lib/nbdkit.ts';
import { formatProfile, summarizeProfile } from './lib/cpu-profile.ts';
import { breakdown, emptySamples, scrapeMetrics, type NodeBreakdown, type Samples } from './lib/node-metrics.ts';
import { beginCost, costOf, costTable, fixed, type CostWindow, type ProcessGroup } from './lib/proc-cost.ts';
import { measureRawDisk, type RawDisk } from './lib/raw-disk.ts';
import { Cluster, startNode } from '../test/integration/helpers/launcher.ts';
import { freePorts } from '../test/integration/helpers/ports.ts';
import { waitFor } from '../test/integration/helpers/tools.ts';
import { parseSize } from '../src/parse.ts';

const ROOT = resolve(import.meta.dirname, '..');
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

const argv = await yargs(hideBin(process.argv))
  .option('runtime', { type: 'number', default: 20, describe: 'seconds per fio job' })
  .option('scenarios', { type: 'string', default: NBD_SCENARIOS.map((s) => s.id).join(','), describe: 'a,c,d,e,f,g' })
  .option('targets', { type: 'string', default: 'single,cluster,nbdkit,cluster-encrypted', describe: 'single,cluster,nbdkit,cluster-encrypted' })
  .option('encrypted', { type: 'boolean', default: false, describe: 'only the encryption rows: cluster and cluster-encrypted, scenarios a and c, no raw disk' })
  .option('pgbench', { type: 'boolean', default: false, describe: 'also PostgreSQL + pgbench on cluster and nbdkit-file' })
  .option('pgbench-seconds', { type: 'number', describe: 'pgbench duration (default: --runtime, at least 30)' })
  .option('pgbench-clients', { type: 'number', default: 8 })
  .option('pgbench-scale', { type: 'number', default: 10 })
  .option('backend', { choices: ['replicated', 'file', 'memory'] as const, default: 'replicated' as const, describe: 'backend of the xdevice targets (file/memory: "single" only, no Raft)' })
  .option('size', { type: 'string', default: '1GiB', describe: 'bytes of the export fio touches (e.g. 1GiB, 256MiB)' })
  .option('dir', { type: 'string', default: process.env.XDEVICE_BENCH_DIR ?? '/var/tmp', describe: 'where data directories go (a real disk)' })
  .option('rounds', { type: 'number', default: 1, describe: 'repeat the matrix; each row reports its median-IOPS round' })
  .option('goal', { type: 'string', array: true, default: [] as string[], describe: 'override a goal threshold: NAME=VALUE' })
  .option('cpu-prof', { type: 'boolean', default: false, describe: 'profile the xdevice-node processes' })
  .option('build', { type: 'boolean', default: true, describe: 'compile dist/ first (the node binary runs it)' })
  .option('keep', { type: 'boolean', default: false, describe: 'keep the data directories' })
  .option('raw-disk', { type: 'boolean', default: true, describe: 'measure the raw disk under --dir (fio) in the same run' })
  .strict()
  .parseAsync();

if (argv.encrypted) {
  argv.targets = 'cluster,cluster-encrypted';
  argv.scenarios = 'a,c';
  argv['raw-disk'] = false;
}
const SIZE_BYTES = parseSize(argv.size);
const PG_DEVICE_BYTES = 2 * 1024 ** 3;
const RUNTIME = argv.runtime;
const PGBENCH_SECONDS = argv['pgbench-seconds'] ?? Math.max(RUNTIME, 30);

// ---- goals (issue 5's targets; thresholds overridable with --goal NAME=VALUE) ----

interface Goal {
  name: string;
  describe: string;
  /** The measured ratio, or undefined when its rows were not run. */
  measure(results: Results): number | undefined;
  op: '<=' | '>=';
  threshold: number;
}

interface Results {
  rows: ResultRow[];
  pgbench: Map<string, number>;
}

function find(results: Results, target: string, scenario: string): FioResult | undefined {
  return results.rows.find((r) => r.target === target && r.scenario.id === scenario)?.result;
}

function ratioOf(a: number | undefined, b: number | undefined): number | undefined {
  return a !== undefined && b !== undefined && b > 0 ? a / b : undefined;
}

const GOALS: Goal[] = [
  {
    name: 'cluster-a-p50',
    describe: '3 nodes (a) 4k randwrite QD1+flush: p50 vs nbdkit-file',
    measure: (r) => ratioOf(find(r, 'cluster', 'a')?.p50Us, find(r, 'nbdkit-file', 'a')?.p50Us),
    op: '<=',
    threshold: 1.5,
  },
  {
    name: 'cluster-c-iops',
    describe: '3 nodes (c) 4k randwrite QD32 fsync=32: IOPS vs nbdkit-file',
    measure: (r) => ratioOf(find(r, 'cluster', 'c')?.iops, find(r, 'nbdkit-file', 'c')?.iops),
    op: '>=',
    threshold: 1.0,
  },
  {
    name: 'single-a-iops',
    describe: '1 node (a) durable: IOPS vs nbdkit-file',
    measure: (r) => ratioOf(find(r, 'single', 'a')?.iops, find(r, 'nbdkit-file', 'a')?.iops),
    op: '>=',
    threshold: 1.0,
  },
  {
    name: 'single-c-iops',
    describe: '1 node (c) durable: IOPS vs nbdkit-file',
    measure: (r) => ratioOf(find(r, 'single', 'c')?.iops, find(r, 'nbdkit-file', 'c')?.iops),
    op: '>=',
    threshold: 1.0,
  },
  {
    name: 'cluster-f-spread',
    describe: '3 nodes (f) 4k randread QD32 spread over 3 nodes vs one node (the leader)',
    measure: (r) => ratioOf(find(r, 'cluster-spread', 'f')?.iops, find(r, 'cluster', 'f')?.iops),
    op: '>=',
    threshold: 1.5,
  },
  {
    name: 'encrypted-a-iops',
    describe: '3 nodes encrypted (a) 4k randwrite QD1+flush: IOPS vs the same cluster unencrypted',
    measure: (r) => ratioOf(find(r, 'cluster-encrypted', 'a')?.iops, find(r, 'cluster', 'a')?.iops),
    op: '>=',
    threshold: 0.9,
  },
  {
    name: 'encrypted-c-iops',
    describe: '3 nodes encrypted (c) 4k randwrite QD32 fsync=32: IOPS vs the same cluster unencrypted',
    measure: (r) => ratioOf(find(r, 'cluster-encrypted', 'c')?.iops, find(r, 'cluster', 'c')?.iops),
    op: '>=',
    threshold: 0.9,
  },
  {
    name: 'cluster-pgbench',
    describe: 'pgbench tps, 3 nodes vs nbdkit-file',
    measure: (r) => ratioOf(r.pgbench.get('cluster'), r.pgbench.get('nbdkit-file')),
    op: '>=',
    threshold: 0.7,
  },
];

for (const override of argv.goal) {
  const [name, value] = override.split('=');
  const goal = GOALS.find((g) => g.name === name);
  if (!goal || value === undefined || !Number.isFinite(Number(value))) {
    throw new Error(`--goal ${override}: expected NAME=NUMBER with NAME one of ${GOALS.map((g) => g.name).join(', ')}`);
  }
  goal.threshold = Number(value);
}

// ---- the systems under test ----

/** A running target: where fio connects, and how to stop it. */
interface System {
  name: string;
  /** URI of the benchmark export on the node fio talks to. */
  uri: string;
  /** URIs of the benchmark export on every node (more than one: a cluster). */
  allUris: string[];
  /** Admin API of every xdevice node (none for nbdkit): scraped around each job. */
  admin: Array<{ node: string; port: number }>;
  /** Every process of the target, by node: its CPU and disk writes are the job's cost. */
  processes: ProcessGroup[];
  /** host port and export name of the PostgreSQL device. */
  pg: { port: number; exportName: string };
  /** Waits until every node has applied what the leader committed (reads spread over nodes see the data). */
  settle(): Promise<void>;
  stop(): Promise<void>;
}

// The integration helpers put their temp dirs under os.tmpdir() (TMPDIR), and
// the nodes log at XDEVICE_LOG_LEVEL: both must be set before anything starts.
// The node refuses XDEVICE_* variables it does not know, and children inherit
// our environment: drop ours.
const base = resolve(argv.dir);
mkdirSync(base, { recursive: true });
const fsType = statfsSync(base).type;
if (fsType === TMPFS_MAGIC || fsType === RAMFS_MAGIC) {
  throw new Error(`${base} is tmpfs/ramfs: put the data on a real disk (--dir)`);
}
const runDir = mkdtempSync(join(base, 'xdevice-bench-'));
process.env.TMPDIR = runDir;
delete process.env.XDEVICE_TEST_TMP;
delete process.env.XDEVICE_BENCH_DIR;
process.env.XDEVICE_LOG_LEVEL ??= 'warn';

const stamp = new Date().toISOString().replace(/[:.]/g, '-');
const resultsDir = join(ROOT, 'bench-results');
mkdirSync(resultsDir, { recursive: true });
const profileDir = join(resultsDir, `profiles-${stamp}`);

function nodeArgs(system: string): string[] {
  if (!argv['cpu-prof']) return [];
  const dir = join(profileDir, system);
  mkdirSync(dir, { recursive: true });
  return ['--cpu-prof', `--cpu-prof-dir=${dir}`];
}

const devices = [`bench:${SIZE_BYTES}`, `pg:${PG_DEVICE_BYTES}`];

async function startSingle(): Promise<System> {
  const node = await startNode({ id: 'node1', dataDir: join(runDir, 'single'), backend: argv.backend, devices, nodeOptions: nodeArgs('single') });
  try {
    if (argv.backend === 'replicated') await waitFor('the single node to lead', async () => (await node.status()).role === 'leader', 60_000);
  } catch (err) {
    process.stderr.write(node.output().slice(-3000));
    await node.kill();
    throw err;
  }
  const uri = node.uri('bench');
  return {
    name: 'single',
    uri,
    allUris: [uri],
    admin: [{ node: 'node1', port: node.adminPort }],
    processes: [{ name: 'node1', pids: node.child.pid === undefined ? [] : [node.child.pid] }],
    pg: { port: node.nbdPort, exportName: 'pg' },
    async settle() {},
    async stop() {
      const exit = await node.kill(argv['cpu-prof'] ? 'SIGTERM' : 'SIGKILL');
      if (argv['cpu-prof'] && exit.code !== 0) process.stderr.write(`single node exited with ${JSON.stringify(exit)}:\n${node.output().slice(-3000)}\n`);
    },
  };
}

/** Three nodes; encrypted: every device AES-256-XTS under one key-encryption key (encrypt-devices). */
async function startCluster(encrypted = false): Promise<System> {
  const label = encrypted ? 'cluster-encrypted' : 'cluster';
  let nodeExtra = (_id: string): string[] => [];
  if (encrypted) {
    const keyFile = join(runDir, 'bench.keys');
    writeFileSync(keyFile, `k1 ${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    nodeExtra = () => ['--encryption-key-file', keyFile, '--encrypt-devices'];
  }
  const cluster = await Cluster.start({ size: 3, baseDir: join(runDir, label), devices, nodeArgs: nodeExtra, nodeOptions: (id) => nodeArgs(`${label}-${id}`) });
  try {
    const leader = await cluster.leaderIndex(60_000);
    const uris = cluster.slots.map((s) => cluster.nbdUri(s.id, 'bench'));
    const name = (i: number): string => `${cluster.slots[i]!.id}${i === leader ? ' (leader)' : ''}`;
    return {
      name: label,
      uri: uris[leader]!,
      allUris: [uris[leader]!, ...uris.filter((_, i) => i !== leader)],
      admin: cluster.slots.map((s, i) => ({ node: name(i), port: s.ports.admin })),
      processes: cluster.slots.map((s, i) => ({ name: name(i), pids: s.proc?.child.pid === undefined ? [] : [s.proc.child.pid] })),
      pg: { port: cluster.slots[leader]!.ports.nbd, exportName: 'pg' },
      async settle() {
        await cluster.converged(120_000);
      },
      async stop() {
        await cluster.stop(argv['cpu-prof'] ? 'SIGTERM' : 'SIGKILL');
      },
    };
  } catch (err) {
    process.stderr.write(cluster.logs(60));
    await cluster.stop();
    throw err;
  }
}

async function startNbdkitTarget(): Promise<System> {
  const dir = join(runDir, 'nbdkit');
  mkdirSync(dir, { recursive: true });
  const bench = await startNbdkitFile(join(dir, 'bench.img'), SIZE_BYTES);
  let pg: Nbdkit | undefined;
  try {
    pg = await startNbdkitFile(join(dir, 'pg.img'), PG_DEVICE_BYTES);
  } catch (err) {
    await bench.stop();
    throw err;
  }
  return {
    name: 'nbdkit-file',
    uri: bench.uri,
    allUris: [bench.uri],
    admin: [],
    processes: [{ name: 'nbdkit', pids: [bench.child.pid, pg.child.pid].filter((p): p is number => p !== undefined) }],
    pg: { port: pg.port, exportName: '' },
    async settle() {},
    async stop() {
      await bench.stop();
      await pg?.stop();
    },
  };
}

// ---- pgbench ----

async function pgbench(system: System): Promise<number> {
  const { attachExport } = await import('../test/integration/helpers/blockdev.ts');
  const { initPostgres, pgbenchInit, runPgbench } = await import('../test/integration/helpers/postgres.ts');
  const device = await attachExport(system.pg.port, system.pg.exportName);
  try {
    device.mkfsAndMount();
    const [pgPort] = await freePorts(1);
    const db = initPostgres({ walDir: join(device.mountpoint, 'pg_wal'), port: pgPort! });
    db.start();
    try {
      pgbenchInit(db, argv['pgbench-scale']);
      const clients = argv['pgbench-clients'];
      const run = runPgbench(db, ['-c', String(clients), '-j', String(Math.min(clients, 2)), '-T', String(PGBENCH_SECONDS)]);
      const result = await run.done;
      if (result.exitCode !== 0) throw new Error(`pgbench failed (${result.exitCode}): ${result.output.slice(-2000)}`);
      const m = /tps = ([\d.]+) \(without initial connection time\)/.exec(result.output);
      if (!m) throw new Error(`no tps in pgbench output: ${result.output.slice(-2000)}`);
      return Number(m[1]);
    } finally {
      db.stop('fast');
    }
  } finally {
    await device.detach();
  }
}

// ---- the run ----

function buildDist(): void {
  // The node binary runs dist/; an engineer's half-finished file elsewhere may
  // fail the type check while still emitting, so a failure only warns.
  const r = spawnSync(join(ROOT, 'node_modules/.bin/tsc'), ['-p', 'tsconfig.build.json'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) process.stderr.write(`warning: tsc -p tsconfig.build.json reported errors; running the dist/ it emitted\n${r.stdout.slice(0, 3000)}\n`);
  if (!existsSync(join(ROOT, 'dist/node/main.js'))) throw new Error('dist/node/main.js is missing after the build');
}

const wantedScenarios = new Set(argv.scenarios.split(',').map((s) => s.trim()));
const scenarios: Scenario[] = NBD_SCENARIOS.filter((s) => wantedScenarios.has(s.id));
const unknownScenarios = [...wantedScenarios].filter((id) => !NBD_SCENARIOS.some((s) => s.id === id));
if (unknownScenarios.length > 0) throw new Error(`unknown scenarios: ${unknownScenarios.join(',')}`);
const wantedTargets = argv.targets.split(',').map((s) => s.trim());
for (const t of wantedTargets) if (!['single', 'cluster', 'nbdkit', 'cluster-encrypted'].includes(t)) throw new Error(`unknown target ${t}`);
// nbdkit first: its rows are every other row's baseline.
const targetOrder = ['nbdkit', 'single', 'cluster', 'cluster-encrypted'].filter((t) => wantedTargets.includes(t));
for (const clustered of ['cluster', 'cluster-encrypted']) {
  if (argv.backend !== 'replicated' && targetOrder.includes(clustered)) {
    process.stderr.write(`--backend ${argv.backend} has no cluster: skipping the ${clustered} target\n`);
    targetOrder.splice(targetOrder.indexOf(clustered), 1);
  }
}

const log = (line: string): void => void process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);
const results: Results = { rows: [], pgbench: new Map() };
const started: System[] = [];

async function startSystem(kind: string): Promise<System> {
  log(`starting ${kind}`);
  const system =
    kind === 'nbdkit' ? await startNbdkitTarget() : kind === 'single' ? await startSingle() : await startCluster(kind === 'cluster-encrypted');
  started.push(system);
  return system;
}

interface Measured {
  row: ResultRow;
  /** Per xdevice node, from its /metrics around the job (ramp included). */
  nodes: NodeBreakdown[];
  /** Per process group of the target, from /proc over the job after its ramp. */
  cost: CostWindow;
}

/** Every (scenario, target) measured in each round; the reported row is the round with the median IOPS. */
const rounds = new Map<string, Measured[]>();
const breakdowns = new Map<ResultRow, NodeBreakdown[]>();
const costs = new Map<ResultRow, CostWindow>();
let rawDisk: RawDisk | undefined;

async function scrapeAll(system: System): Promise<Samples[]> {
  return await Promise.all(system.admin.map((a) => scrapeMetrics(a.port).catch(() => emptySamples())));
}

async function measure(system: System, scenario: Scenario, target: string, uri: string | string[]): Promise<void> {
  const before = await scrapeAll(system);
  const rampSeconds = 2;
  const window = beginCost(system.processes, rampSeconds * 1000);
  const result = await runFio({ uri, scenario, runtimeSeconds: RUNTIME, sizeBytes: SIZE_BYTES, rampSeconds });
  const cost = window.finish();
  const after = await scrapeAll(system);
  const nodes = system.admin.map((a, i) => breakdown(a.node, before[i]!, after[i]!));
  const key = `${scenario.id}/${target}`;
  rounds.set(key, [...(rounds.get(key) ?? []), { row: { scenario, target, result }, nodes, cost }]);
  const c = costOf({ scenario, target, result }, cost);
  log(`${scenario.id} ${target}: ${result.iops.toFixed(0)} IOPS, p50 ${result.p50Us.toFixed(0)} µs, p99 ${result.p99Us.toFixed(0)} µs, CPU ${fixed(c.cpuUsPerOp, 0)} µs/op`);
}

// All targets run side by side and each scenario visits them back to back:
// on a shared machine the disk and CPUs drift over minutes, and a ratio is only
// fair when both sides of it were measured under the same conditions. An idle
// cluster costs a few heartbeats a second.
async function runAll(): Promise<void> {
  if (argv['raw-disk']) {
    log(`raw disk under ${runDir}: 4 KiB write+fdatasync QD1, O_DIRECT 1 MiB sequential QD8`);
    rawDisk = await measureRawDisk(runDir, Math.max(2, Math.min(RUNTIME, 10)), Math.min(SIZE_BYTES, 1024 ** 3));
    log(`raw disk: ${rawDisk.fdatasyncCycleUs.toFixed(0)} µs per write+fdatasync (${rawDisk.fdatasyncIops.toFixed(0)}/s), ${(rawDisk.directSeqBytesPerSecond / 1e6).toFixed(0)} MB/s O_DIRECT`);
  }
  const systems: System[] = [];
  for (const kind of targetOrder) systems.push(await startSystem(kind));
  if (scenarios.some((s) => s.rw.includes('read'))) {
    // Reads of never-written blocks would measure holes (nbdkit answers them
    // from a sparse file without touching the disk).
    const fill: Scenario = { id: 'fill', title: 'fill', rw: 'write', blockSize: '1M', iodepth: 8 };
    for (const system of systems) {
      log(`${system.name}: filling ${argv.size} for the read scenarios`);
      await runFio({ uri: system.uri, scenario: fill, runtimeSeconds: 0, sizeBytes: SIZE_BYTES, timeBased: false });
      await system.settle();
    }
  }
  for (let round = 1; round <= argv.rounds; round++) {
    if (argv.rounds > 1) log(`round ${round} of ${argv.rounds}`);
    for (const scenario of scenarios) {
      for (const system of systems) {
        await measure(system, scenario, system.name, system.uri);
        if (scenario.rw.includes('read') && system.allUris.length > 1) await measure(system, scenario, `${system.name}-spread`, system.allUris);
      }
    }
  }
  if (argv.pgbench) {
    for (const system of systems) {
      log(`${system.name}: pgbench (${PGBENCH_SECONDS} s, ${argv['pgbench-clients']} clients, scale ${argv['pgbench-scale']})`);
      const tps = await pgbench(system);
      results.pgbench.set(system.name, tps);
      log(`${system.name}: pgbench ${tps.toFixed(1)} tps`);
    }
  }
}

async function stopEverything(): Promise<void> {
  for (const s of started.splice(0)) await s.stop().catch(() => undefined);
}
process.once('SIGINT', () => void stopEverything().finally(() => process.exit(130)));

const targetOrderRows = ['nbdkit-file', 'single', 'cluster', 'cluster-spread', 'cluster-encrypted', 'cluster-encrypted-spread'];
let failed: unknown;
try {
  if (argv.build && targetOrder.some((t) => t !== 'nbdkit')) buildDist();
  await runAll();
} catch (err) {
  failed = err;
  process.stderr.write(`benchmark stopped: ${(err as Error).stack ?? String(err)}\n`);
} finally {
  await stopEverything();
}

for (const measured of rounds.values()) {
  const byIops = [...measured].sort((x, y) => x.row.result.iops - y.row.result.iops);
  const median = byIops[Math.floor((byIops.length - 1) / 2)]!;
  results.rows.push(median.row);
  if (median.nodes.length > 0) breakdowns.set(median.row, median.nodes);
  costs.set(median.row, median.cost);
}
// Baselines and order: each scenario's rows together, nbdkit-file first.
results.rows.sort(
  (x, y) => scenarios.indexOf(x.scenario) - scenarios.indexOf(y.scenario) || targetOrderRows.indexOf(x.target) - targetOrderRows.indexOf(y.target),
);
// The encrypted cluster's baseline is the same cluster unencrypted (issue 15's ratio).
for (const row of results.rows) {
  if (row.target.startsWith('cluster-encrypted')) row.baseline = find(results, row.target.replace('-encrypted', ''), row.scenario.id);
  else if (row.target !== 'nbdkit-file') row.baseline = find(results, 'nbdkit-file', row.scenario.id);
}

const header = [
  `XDevice benchmark ${stamp}: ${RUNTIME} s per job, ${argv.size} export, backend ${argv.backend}, data on ${runDir}`,
  `host: ${spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim()}, ${(await import('node:os')).cpus().length} CPUs, fio ${execFileSync('fio', ['--version'], { encoding: 'utf8' }).trim()}`,
].join('\n');
console.log(header);
console.log();
console.log(formatTable(results.rows, { verdict: false }));
if (results.rows.some((r) => r.target.startsWith('cluster-encrypted'))) console.log('\n(× columns: vs nbdkit-file; cluster-encrypted rows: vs cluster, the same cluster unencrypted)');

if (results.pgbench.size > 0) {
  const base = results.pgbench.get('nbdkit-file');
  console.log('\n| pgbench (TPC-B, synchronous_commit=on, WAL on the device) | tps | × nbdkit-file |\n|---|---|---|');
  for (const [name, tps] of results.pgbench) {
    console.log(`| ${name} | ${tps.toFixed(1)} | ${base ? (tps / base).toFixed(2) : '-'} |`);
  }
}

const goalRows = GOALS.map((g) => {
  const value = g.measure(results);
  const holds = value === undefined ? undefined : g.op === '<=' ? value <= g.threshold : value >= g.threshold;
  return { name: g.name, describe: g.describe, value, op: g.op, threshold: g.threshold, holds };
});
console.log('\n| goal | measured | target | holds |\n|---|---|---|---|');
for (const g of goalRows) {
  console.log(`| ${g.describe} | ${g.value === undefined ? 'not run' : `${g.value.toFixed(2)}x`} | ${g.op} ${g.threshold}x | ${g.holds === undefined ? '-' : g.holds ? 'yes' : 'NO'} |`);
}

if (rawDisk) {
  console.log(
    `\nraw disk (${runDir}): 4 KiB write+fdatasync QD1 ${rawDisk.fdatasyncCycleUs.toFixed(0)} µs (${rawDisk.fdatasyncIops.toFixed(0)}/s); O_DIRECT 1 MiB sequential write QD8 ${(rawDisk.directSeqBytesPerSecond / 1e6).toFixed(0)} MB/s`,
  );
}
console.log(costTable(results.rows, costs));

// Inside the nodes: the NBD server's own time per request (read off the
// socket to reply written), the WAL's group commits, and peer round trips.
// "per commit": data requests of the job per WAL group commit on that node.
if (breakdowns.size > 0) {
  console.log('\n| where the time goes | node | NBD request mean µs | WAL commits/s | requests per commit | WAL commit mean µs | peer RTT mean µs |\n|---|---|---|---|---|---|---|');
  for (const row of results.rows) {
    const nodes = breakdowns.get(row);
    if (!nodes) continue;
    const command = row.scenario.rw.includes('read') ? 'read' : 'write';
    const requests = nodes.reduce((n, b) => n + (b.nbd[command]?.count ?? 0), 0);
    const seconds = RUNTIME + 2;
    for (const b of nodes) {
      const nbd = Object.entries(b.nbd)
        .map(([cmd, v]) => `${cmd} ${v.meanUs.toFixed(0)}`)
        .join(', ');
      const perCommit = b.walCommits > 0 && command === 'write' ? (requests / b.walCommits).toFixed(1) : '-';
      console.log(
        `| ${row.scenario.id} ${row.target} | ${b.node} | ${nbd || '-'} | ${(b.walCommits / seconds).toFixed(0)} | ${perCommit} | ${Number.isFinite(b.walCommitMeanUs) ? b.walCommitMeanUs.toFixed(0) : '-'} | ${Number.isFinite(b.peerRttMeanUs) ? b.peerRttMeanUs.toFixed(0) : '-'} |`,
      );
    }
  }
}

const jsonPath = join(resultsDir, `bench-cluster-${stamp}.json`);

const svgPath = join(resultsDir, `bench-cluster-${stamp}.svg`);
writeFileSync(
  jsonPath,
  JSON.stringify(
    {
      stamp,
      options: { runtimeSeconds: RUNTIME, sizeBytes: SIZE_BYTES, backend: argv.backend, targets: targetOrder, scenarios: scenarios.map((s) => s.id) },
      rawDisk,
      rows: results.rows.map((r) => ({ scenario: r.scenario, target: r.target, result: r.result, nodes: breakdowns.get(r), cost: costs.get(r) && costOf(r, costs.get(r)!) })),
      rounds: Object.fromEntries([...rounds].map(([k, v]) => [k, v.map((m) => ({ result: m.row.result, nodes: m.nodes }))])),
      pgbench: Object.fromEntries(results.pgbench),
      goals: goalRows,
      error: failed === undefined ? undefined : String(failed),
    },
    null,
    2,
  ),
);
const points: ChartPoint[] = results.rows.map((r) => ({ scenario: `${r.scenario.id} ${r.scenario.title}`, target: r.target, latency: r.result.latency }));
writeFileSync(svgPath, latencyChartSvg(points, `XDevice latency percentiles (${stamp})`, 'a: one write plus its flush; others: one request, submission to completion. Log scale.'));
console.log(`\nresults: ${jsonPath}\nchart:   ${svgPath}`);

if (argv['cpu-prof'] && existsSync(profileDir)) {
  for (const system of readdirSync(profileDir)) {
    for (const file of readdirSync(join(profileDir, system))) {
      if (!file.endsWith('.cpuprofile')) continue;
      console.log(`\n== ${system}\n${formatProfile(summarizeProfile(join(profileDir, system, file), ROOT))}`);
    }
  }
}

if (!argv.keep) rmSync(runDir, { recursive: true, force: true });
if (failed !== undefined) process.exitCode = 1;
