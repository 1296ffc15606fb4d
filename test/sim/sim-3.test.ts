// Share 3 of 8 of CI's simulator seeds (see sim.test.ts).

import t from 'tap';
import { runCiShare } from './sim-range.ts';

await runCiShare(t, 2);
