// The request session and the read gate are driven by explicit clocks here:
// retries, timeouts and settling, without timers.
import t from 'tap';
import { RequestSession } from '../../src/replica/requests.ts';
import { ReadGate } from '../../src/replica/read-gate.ts';
import { decodeCommand, encodeTrim } from '../../src/device/commands.ts';
import { limits } from '../../src/limits.ts';
import type { Clock } from '../../src/replica/env.ts';

// Time is passed explicitly to every call below; deferred work runs on the next turn.
const testClock: Clock = { now: () => 0, after: () => () => undefined, defer: (fn) => void setImmediate(fn) };

t.test('requests carry increasing seqs and the lowest unsettled one; settle only our own', async (t) => {
  const sent: Buffer[] = [];
  const s = new RequestSession((d) => (sent.push(d), true), testClock, (n) => n - 1);
  const p1 = s.propose((id) => encodeTrim(id, 1, 0, 1), 0);
  const p2 = s.propose((id) => encodeTrim(id, 1, 0, 2), 0);
  const c1 = decodeCommand(sent[0]!);
  const c2 = decodeCommand(sent[1]!);
  t.equal(c1.seq, 1);
  t.equal(c2.seq, 2);
  t.equal(c2.firstUnacked, 1, 'seq 1 is still waiting when seq 2 is sent');
  s.settle({ index: 9, request: { clientId: c1.clientId + 1, seq: 1, firstUnacked: 1 } });
  t.equal(s.size, 2, 'another client’s outcome is ignored');
  s.settle({ index: 10, request: c1 });
  await p1;
  s.settle({ index: 11, request: c2, error: { code: 'ENOSPC', message: 'beyond the end' } });
  await t.rejects(p2, { code: 'ENOSPC' });
  const p3 = s.propose((id) => encodeTrim(id, 1, 0, 3), 0);
  t.equal(decodeCommand(sent[2]!).firstUnacked, 3, 'nothing older is waiting');
  s.settle({ index: 12, request: decodeCommand(sent[2]!), duplicate: true, error: { code: 'EIO', message: 'x' } });
  await t.resolves(p3, 'a duplicate counts as done, even with an error attached');
  t.equal(s.size, 0, 'nothing is left waiting');
});

t.test('lost proposals are sent again with the same id; unanswered ones fail with EIO', async (t) => {
  let accept = false;
  const sent: Buffer[] = [];
  const s = new RequestSession(
    (d) => {
      if (!accept) return false;
      sent.push(d);
      return true;
    },
    testClock,
    (n) => n - 1,
  );
  const p = s.propose((id) => encodeTrim(id, 1, 0, 1), 0);
  t.equal(sent.length, 0, 'no leader: nothing sent');
  s.sweep(50);
  t.equal(sent.length, 0);
  accept = true;
  s.sweep(100);
  t.equal(sent.length, 1, 'sent at the first sweep once possible');
  s.sweep(100 + limits.proposalRetryMs - 1);
  t.equal(sent.length, 1);
  s.sweep(100 + limits.proposalRetryMs);
  t.equal(sent.length, 2, 'sent again after proposalRetryMs');
  t.same(sent[1], sent[0], 'with the same request id and bytes');
  s.retryAll(200 + limits.proposalRetryMs);
  t.equal(sent.length, 3, 'and at once on a leader change');
  s.sweep(limits.requestTimeoutMs);
  await t.rejects(p, { code: 'EIO' });
  t.equal(s.size, 0);
  const q = s.propose((id) => encodeTrim(id, 1, 0, 1), 0);
  s.failAll('ESHUTDOWN', 'bye');
  await t.rejects(q, { code: 'ESHUTDOWN' });
});

t.test('reads of one turn share a round; they wait for apply; lost rounds are asked again', async (t) => {
  const asked: Buffer[] = [];
  let applied = 5;
  const g = new ReadGate('n1', (ctx) => (asked.push(ctx), true), () => applied, testClock);
  const r1 = g.wait(0);
  const r2 = g.wait(0);
  await new Promise((r) => setImmediate(r));
  t.equal(asked.length, 1, 'one ReadIndex for both reads');
  let done = 0;
  void r1.then(() => done++);
  void r2.then(() => done++);
  g.onReadState(asked[0]!, 7);
  await new Promise((r) => setImmediate(r));
  t.equal(done, 0, 'not before the node applied the read index');
  applied = 7;
  g.onApplied(7);
  await Promise.all([r1, r2]);
  t.equal(done, 2);

  const t0 = Date.now();
  const r3 = g.wait(t0);
  await new Promise((r) => setImmediate(r));
  t.equal(asked.length, 2);
  g.sweep(Date.now() + limits.readIndexRetryMs);
  t.equal(asked.length, 3, 'asked again with a new context');
  t.not(asked[2]!.toString(), asked[1]!.toString());
  g.onReadState(asked[1]!, 1); // the lost round answers late: ignored
  g.sweep(t0 + limits.requestTimeoutMs);
  await t.rejects(r3, { code: 'EIO' }, 'no answer in time: EIO, never a stale read');
  t.equal(g.pending, 0);
});
