// The simulator's command line.
//
//   npm run sim -- --seeds 100000          a campaign over seeds 1..N (or --from S)
//   XDEVICE_SEED=1234 npm run sim          replay one seed with a verbose trace
//   npm run sim -- --seeds 100 --bug commitPreviousTermEntries   (planted bug)

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import type { TestingBugs } from '../../src/raft/config.ts';
import { runSeed } from './simulator.ts';

const argv = yargs(hideBin(process.argv))
  .option('seeds', { type: 'number', default: 1000, describe: 'number of seeds to run' })
  .option('from', { type: 'number', default: 1, describe: 'first seed' })
  .option('nodes', { type: 'number', describe: 'founding voters (1, 3 or 5); drawn from the seed by default' })
  .option('hostile', { type: 'boolean', default: false, describe: 'hostile peers: out-of-range terms, strangers, a twin id (test/sim/hostile-peers.ts)' })
  .option('bug', { type: 'string', choices: ['commitPreviousTermEntries', 'replyBeforePersist'], describe: 'plant a known bug (test only)' })
  .option('quiet', { type: 'boolean', default: false })
  .strict()
  .parseSync();

const bugs: TestingBugs = argv.bug ? { [argv.bug]: true } : {};
const nodes = argv.nodes;
const hostile = argv.hostile ? { hostile: {} } : {};
const envSeed = process.env.XDEVICE_SEED;

if (envSeed !== undefined) {
  const seed = Number(envSeed);
  const r = runSeed({ seed, testingBugs: bugs, ...hostile, ...(nodes ? { nodes } : {}), trace: (l) => process.stdout.write(`${l}\n`) });
  console.log(JSON.stringify(r.stats));
  if (!r.ok) {
    console.log(`seed ${seed} FAILED: ${r.error}`);
    process.exit(1);
  }
  console.log(`seed ${seed} ok`);
  process.exit(0);
}

const started = process.hrtime.bigint();
let failures = 0;
const totals: Record<string, number> = {};
for (let seed = argv.from; seed < argv.from + argv.seeds; seed++) {
  const r = runSeed({ seed, testingBugs: bugs, ...hostile, ...(nodes ? { nodes } : {}) });
  for (const [k, v] of Object.entries(r.stats)) totals[k] = (totals[k] ?? 0) + v;
  if (!r.ok) {
    failures++;
    console.log(`seed ${seed} FAILED: ${r.error}`);
    console.log(`  replay: XDEVICE_SEED=${seed} npm run sim${argv.bug ? ` -- --bug ${argv.bug}` : ''}`);
    if (failures >= 10) break;
  }
  if (!argv.quiet && (seed - argv.from + 1) % 1000 === 0) {
    console.log(`${seed - argv.from + 1} seeds, ${failures} failed, ${Number(process.hrtime.bigint() - started) / 1e9}s`);
  }
}
const secs = Number(process.hrtime.bigint() - started) / 1e9;
console.log(`seeds ${argv.from}..${argv.from + argv.seeds - 1}: ${failures} failed in ${secs.toFixed(1)}s`);
console.log(`totals: ${JSON.stringify(totals)}`);
process.exit(failures > 0 ? 1 : 0);
