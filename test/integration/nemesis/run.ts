// npm run nemesis -- [--minutes N] [--seconds N] [--seed N] [--history FILE]
import { parseArgs } from 'node:util';
import { formatReport, runNemesis } from './nemesis.ts';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string' },
    seconds: { type: 'string' },
    seed: { type: 'string' },
    history: { type: 'string' },
    quiet: { type: 'boolean', default: false },
  },
});
const seconds = values.seconds ? Number(values.seconds) : values.minutes ? Number(values.minutes) * 60 : 120;
const seed = Number(values.seed ?? process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_000);
const historyFile = values.history ?? `nemesis-history-${seed}.jsonl`;
console.log(`nemesis: XDEVICE_SEED=${seed}, ${seconds} s`);
const report = await runNemesis({ seconds, seed, historyFile, log: values.quiet ? undefined : (l) => console.log(`[${new Date().toISOString()}] ${l}`) });
console.log(formatReport(report));
process.exitCode = report.check.ok ? 0 : 1;
