// The simulator must catch real protocol bugs, or its passing runs prove
// nothing. Each case plants a known bug through Config.testingBugs (a
// test-only switch) and requires a safety violation within a bounded number
// of seeds.

import t from 'tap';
import type { TestingBugs } from '../../src/raft/config.ts';
import { runSeed } from './simulator.ts';

const SEEDS_MAX = 300;

const cases: Array<{ bug: keyof TestingBugs; why: string }> = [
  { bug: 'commitPreviousTermEntries', why: 'counting replicas of an earlier term’s entry (Raft figure 8)' },
  { bug: 'replyBeforePersist', why: 'votes and append acks sent before the state they promise is durable' },
];

for (const { bug, why } of cases) {
  t.test(`planted bug ${bug} (${why}) is caught within ${SEEDS_MAX} seeds`, async (t) => {
    let firstSafety: { seed: number; error: string } | undefined;
    let failures = 0;
    for (let seed = 1; seed <= SEEDS_MAX && !firstSafety; seed++) {
      const r = runSeed({ seed, testingBugs: { [bug]: true } });
      if (r.ok) continue;
      failures++;
      // Liveness failures count as findings too, but require a safety one.
      if (!r.error!.startsWith('liveness')) firstSafety = { seed, error: r.error! };
    }
    t.ok(firstSafety, `a safety violation found (${failures} failing seeds on the way)`);
    if (firstSafety) t.comment(`seed ${firstSafety.seed}: ${firstSafety.error} — replay: XDEVICE_SEED=${firstSafety.seed} npm run sim -- --bug ${bug}`);
  });
}

t.test('without planted bugs the same seeds pass', async (t) => {
  const failed: number[] = [];
  for (let seed = 1; seed <= 60; seed++) if (!runSeed({ seed }).ok) failed.push(seed);
  t.same(failed, []);
});
