// The second half of CI's simulator seeds (see sim.test.ts).

import t from 'tap';
import { runSeedRange } from './sim-range.ts';

const n = Number(process.env.XDEVICE_SIM_SEEDS ?? 150);
await runSeedRange(t, 1 + n, n);
