// The real-clock check of a leader's lease (src/replica/lease-clock.ts): a
// lease Raft still counts as valid in ticks ends when the real time since
// the stamp's tick began exceeds the lease, as after a stalled event loop.

import t from 'tap';
import { limits } from '../../src/limits.ts';
import { LEASE_MS, LeaseClock } from '../../src/replica/lease-clock.ts';

t.test('the lease in ms: electionTicks - 1 ticks less the drift bound', async (t) => {
  t.equal(LEASE_MS, ((limits.electionTicks - 1) * limits.tickMs * (100 - limits.leaseClockDriftPercent)) / 100);
  t.ok(LEASE_MS < (limits.electionTicks - 1) * limits.tickMs, 'shorter than the shortest promise');
});

t.test('ticks on time: the lease holds until LEASE_MS after its tick began', async (t) => {
  const c = new LeaseClock(405, 22);
  for (let tick = 1; tick <= 5; tick++) c.note(tick, 1000 + (tick - 1) * 50);
  t.ok(c.holds(3, 1100), 'at the tick itself');
  t.ok(c.holds(3, 1100 + 404));
  t.notOk(c.holds(3, 1100 + 405), 'expired');
  t.notOk(c.holds(9, 1200), 'a tick not recorded never holds');
});

t.test('a stall: Raft counts one tick, the real clock counts a second', async (t) => {
  const c = new LeaseClock(405, 22);
  c.note(1, 0);
  c.note(2, 50);
  // The process was stopped for a second; the next tick is only the third.
  c.note(3, 1050);
  t.notOk(c.holds(2, 1050), 'the lease resting on tick 2 is over, though Raft saw one tick since');
  t.ok(c.holds(3, 1050), 'a heartbeat stamped after the stall starts a new one');
});

t.test('the ring forgets old ticks: a stamp that wrapped around does not match', async (t) => {
  const c = new LeaseClock(405, 4);
  for (let tick = 1; tick <= 6; tick++) c.note(tick, tick * 50);
  t.notOk(c.holds(2, 300), 'tick 2 was overwritten by tick 6');
  t.ok(c.holds(6, 300));
});
