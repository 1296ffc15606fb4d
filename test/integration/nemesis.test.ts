// The short nemesis for CI: a real 3-node cluster under random faults while
// clients on every node record a history that must be linearizable.
// `npm run nemesis -- --minutes 30` runs the long one.
import t from 'tap';
import { join } from 'node:path';
import { formatReport, runNemesis } from './nemesis/nemesis.ts';
import { tempDir } from './helpers/tools.ts';

t.test('linearizable under kill -9, pauses, partitions, slow links and slow disks', { timeout: 600_000 }, async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_000);
  t.comment(`XDEVICE_SEED=${seed}`);
  const historyFile = join(tempDir('nemesis'), 'history.jsonl');
  const report = await runNemesis({ seconds: Number(process.env.XDEVICE_NEMESIS_SECONDS ?? 45), seed, historyFile, log: (l) => t.comment(l) });
  t.comment(formatReport(report));
  t.ok(Object.values(report.faults).reduce((a, b) => a + b, 0) >= 5, 'faults were injected');
  t.ok(report.okWrites > 50, `writes succeeded across the faults (${report.okWrites})`);
  t.ok(report.okReads > 50, `reads succeeded across the faults (${report.okReads})`);
  t.equal(report.check.violations.length, 0, `no linearizability violation (seed ${seed}, history ${historyFile})`);
  t.ok(report.check.ok);
});
