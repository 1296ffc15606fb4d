// npm run bench:nbd -- [--runtime 10] [--scenarios a,c,d,e,f,g] [--targets memory,file]
//
// fio (ioengine=nbd) against our NBD server over MemoryDevice and FileDevice,
// and in the same run against nbdkit's memory and file plugins, each on a
// 1 GiB export. Prints IOPS, MB/s, p50/p99 and the ratio to nbdkit.
// Targets: every row >= 0.8x nbdkit's IOPS, p99 <= 2x nbdkit's.

import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { formatTable, NBD_SCENARIOS, runFio, type ResultRow } from './lib/fio.ts';
import { startNbdkit, startNbdkitFile } from './lib/nbdkit.ts';
import { startNode } from '../test/integration/helpers/launcher.ts';
import { parseSize } from '../src/parse.ts';


const argv = await yargs(hideBin(process.argv))
  .option('runtime', { type: 'number', default: 10, describe: 'seconds per fio job' })
  .option('scenarios', { type: 'string', default: NBD_SCENARIOS.map((s) => s.id).join(',') })
  .option('targets', { type: 'string', default: 'memory,file' })
  .option('size', { type: 'string', default: '1GiB', describe: 'export size (e.g. 1GiB, 256MiB)' })
  .option('json', { type: 'boolean', default: false, describe: 'also print the rows as JSON' })
  .strict()
  .parseAsync();

const SIZE_BYTES = parseSize(argv.size);

const children: ChildProcess[] = [];
function stopAll(): void {
  for (const child of children) if (child.exitCode === null) child.kill('SIGTERM');
}
process.on('exit', stopAll);

async function startOurs(backend: 'memory' | 'file', dataDir: string): Promise<string> {
  const server = await startNode({ backend, devices: [`bench:${SIZE_BYTES}`], dataDir });
  children.push(server.child);
  return server.uri('bench');
}

async function startTheirs(plugin: 'memory' | 'file', dataDir: string): Promise<string> {
  const nbdkit = plugin === 'memory' ? await startNbdkit(['memory', `${SIZE_BYTES}`]) : await startNbdkitFile(path.join(dataDir, 'nbdkit.img'), SIZE_BYTES);
  children.push(nbdkit.child);
  return nbdkit.uri;
}

const wanted = new Set(argv.scenarios.split(','));
const scenarios = NBD_SCENARIOS.filter((s) => wanted.has(s.id));
const targets = argv.targets.split(',') as Array<'memory' | 'file'>;
const dataDir = mkdtempSync(path.join(tmpdir(), 'xdevice-bench-nbd-'));
const rows: ResultRow[] = [];
try {
  for (const backend of targets) {
    const ours = await startOurs(backend, dataDir);
    const theirs = await startTheirs(backend, dataDir);
    for (const scenario of scenarios) {
      const common = { scenario, runtimeSeconds: argv.runtime, sizeBytes: SIZE_BYTES };
      const baseline = await runFio({ ...common, uri: theirs });
      const result = await runFio({ ...common, uri: ours });
      rows.push({ scenario, target: `nbdkit ${backend}`, result: baseline });
      rows.push({ scenario, target: `xdevice ${backend}`, result, baseline });
      process.stderr.write(`${scenario.id} ${backend}: ours ${result.iops.toFixed(0)} IOPS, nbdkit ${baseline.iops.toFixed(0)} IOPS\n`);
    }
    stopAll();
    children.length = 0;
  }
  console.log(formatTable(rows));
  if (argv.json) console.log(JSON.stringify(rows, null, 2));
} finally {
  stopAll();
  rmSync(dataDir, { recursive: true, force: true });
}
