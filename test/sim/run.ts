// The simulator's command line (test/sim/replica-sim.ts: the real replica
// core on a simulated network, disk and clock).
//
//   npm run sim -- --seeds 100000 --from 2000000   a campaign
//   XDEVICE_SEED=1234 npm run sim                    replay one seed with a full trace
//   npm run sim -- --seeds 100 --plant skipSync      a planted bug (test only)

import { createHash } from 'node:crypto';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { PLANTS, runReplicaSeed, type Plant } from './replica-sim.ts';

const argv = yargs(hideBin(process.argv))
  .option('seeds', { type: 'number', default: 1000, describe: 'number of seeds to run' })
  .option('from', { type: 'number', default: 1, describe: 'first seed' })
  .option('nodes', { type: 'number', describe: 'founding voters (1, 3 or 5); drawn from the seed by default' })
  .option('plant', { type: 'string', choices: PLANTS, describe: 'plant a known bug (test only)' })
  .option('lease-reads', { type: 'boolean', default: false, describe: 'lease reads on every node, timers drifting within the bound' })
  .option('stop-after', { type: 'number', default: 10, describe: 'stop after this many failing seeds' })
  .option('quiet', { type: 'boolean', default: false })
  .option('digests', { type: 'boolean', default: false, describe: "print each seed's digest (what it did; a change to the simulator's speed must not change it)" })
  .strict()
  .parseSync();

const plant = argv.plant as Plant | undefined;
const common = { ...(argv.nodes ? { nodes: argv.nodes } : {}), ...(plant ? { plant } : {}), ...(argv['lease-reads'] ? { leaseReads: true } : {}) };
const replay = (seed: number): string => `XDEVICE_SEED=${seed} npm run sim${plant ? ` -- --plant ${plant}` : ''}`;
const envSeed = process.env.XDEVICE_SEED;

if (envSeed !== undefined) {
  const seed = Number(envSeed);
  const r = await runReplicaSeed({ seed, ...common, trace: (l) => process.stdout.write(`${l}\n`) });
  console.log(JSON.stringify(r.stats));
  console.log(`digest ${r.digest}`);
  console.log(r.ok ? `seed ${seed} ok` : `seed ${seed} FAILED: ${r.error}`);
  process.exit(r.ok ? 0 : 1);
}

const started = process.hrtime.bigint();
const failed: number[] = [];
const totals: Record<string, number> = {};
const digest = createHash('sha256');
for (let seed = argv.from; seed < argv.from + argv.seeds; seed++) {
  const r = await runReplicaSeed({ seed, ...common });
  for (const [k, v] of Object.entries(r.stats)) totals[k] = (totals[k] ?? 0) + v;
  digest.update(`${seed} ${r.digest}\n`);
  if (argv.digests) console.log(`seed ${seed} digest ${r.digest}`);
  if (!r.ok) {
    failed.push(seed);
    console.log(`seed ${seed} FAILED: ${r.error}`);
    console.log(`  replay: ${replay(seed)}`);
    if (failed.length >= argv['stop-after']) break;
  }
  if (!argv.quiet && (seed - argv.from + 1) % 500 === 0) {
    console.log(`${seed - argv.from + 1} seeds, ${failed.length} failed, ${(Number(process.hrtime.bigint() - started) / 1e9).toFixed(0)}s`);
  }
}
const secs = Number(process.hrtime.bigint() - started) / 1e9;
console.log(`seeds ${argv.from}..${argv.from + argv.seeds - 1}: ${failed.length} failed${failed.length ? ` (${failed.join(', ')})` : ''} in ${secs.toFixed(1)}s`);
console.log(`totals: ${JSON.stringify(totals)}`);
console.log(`digest: ${digest.digest('hex').slice(0, 16)} (over every seed's run)`);
process.exit(failed.length > 0 ? 1 : 0);
