import t from 'tap';
import { limits, validateLimits } from '../../src/limits.ts';

t.test('the shipped limits are consistent', async (t) => {
  t.doesNotThrow(() => validateLimits());
});

t.test('contradicting limits are rejected at startup', async (t) => {
  t.throws(() => validateLimits({ ...limits, heartbeatTicks: limits.electionTicks }), /heartbeatTicks/);
  t.throws(() => validateLimits({ ...limits, walRecordPayloadBytesMax: 1 }), /walRecordPayloadBytesMax/);
});
