// Replication mechanics and backpressure: Ready/advance contracts, fast
// backtracking, in-flight and message limits, batching, typed refusals.

import t, { type Test } from 'tap';
import { NotLeaderError, TooManyUncommittedBytesError } from '../../src/raft/errors.ts';
import { MessageType, type Message } from '../../src/raft/types.ts';
import { Network, Role } from './helpers/raft-network.ts';

t.test('Ready: acks go out only after persistence, the leader’s App at once', async (t) => {
  const net = new Network(['a', 'b']);
  net.campaign('a');
  net.propose('a', 'x');
  const rdA = net.get('a').node.ready();
  t.ok(rdA.mustSync);
  t.ok(rdA.messages.some((m) => m.type === MessageType.App));
  for (const m of rdA.messages) net.get('b').node.step(m);
  const rdB = net.get('b').node.ready();
  t.equal(rdB.messages.filter((m) => m.type === MessageType.AppResp).length, 0);
  t.equal(rdB.messagesAfterPersist.filter((m) => m.type === MessageType.AppResp).length, 1);
  t.ok(rdB.entries.length > 0);
  t.throws(() => net.get('b').node.advance(rdA), 'advance of a foreign Ready is refused');
});

t.test('Ready: several may be outstanding, advanced in order', async (t) => {
  const net = new Network(['a']);
  net.campaign('a');
  const n = net.get('a');
  n.node.propose(Buffer.from('1'));
  const r1 = n.node.ready();
  n.node.propose(Buffer.from('2'));
  t.ok(n.node.hasReady());
  const r2 = n.node.ready();
  t.equal(r2.entries[0]!.index, r1.entries.at(-1)!.index + 1, 'the second Ready carries only the new entry');
  t.throws(() => n.node.advance(r2), 'out of order');
  n.storage.append(r1.entries);
  n.node.advance(r1);
  n.storage.append(r2.entries);
  n.node.advance(r2);
  net.process('a');
  t.same(net.appliedData('a'), ['1', '2']);
});

t.test('fast backtracking: a divergent follower is repaired in a few round trips', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: false });
  // b has a long tail of entries from a term that never committed.
  net.setLog('b', Array.from({ length: 200 }, () => 2));
  net.setLog('a', Array.from({ length: 50 }, () => 1));
  net.setLog('c', Array.from({ length: 50 }, () => 1));
  net.raft('a').term = 3;
  net.campaign('a');
  let rejects = 0;
  for (let i = 0; i < 50 && net.logOf('b').length !== net.logOf('a').length; i++) {
    net.processAll();
    for (const m of net.take(() => true)) {
      if (m.type === MessageType.AppResp && m.reject) rejects++;
      net.deliver(m);
    }
  }
  t.same(net.logOf('b').map((e) => e.term), net.logOf('a').map((e) => e.term));
  t.ok(rejects <= 3, `${rejects} rejections for a 200-entry divergence`);
});

t.test('flow control: at most inFlightMessagesMax Apps in flight, each within messageBytesMax', async (t) => {
  const net = new Network(['a', 'b'], { inFlightMessagesMax: 3, messageBytesMax: 100, inFlightBytesMax: 1000 });
  net.campaign('a');
  net.cutLink('b', 'a'); // acks are lost: the window never frees
  for (let i = 0; i < 50; i++) net.propose('a', Buffer.alloc(40, i));
  net.processAll();
  const apps = net.take((m) => m.type === MessageType.App && m.to === 'b' && m.entries.length > 0);
  t.equal(apps.length, 3, 'three messages in flight, no more');
  for (const m of apps) t.ok(m.entries.reduce((s, e) => s + e.data.length, 0) <= 100, 'message within the byte limit');
  t.equal(apps.reduce((s, m) => s + m.entries.length, 0), 6, 'two 40-byte entries per 100-byte message');
  const pr = net.raft('a').trk.progress.get('b')!;
  t.equal(pr.inflights.count, 3);
  // A heartbeat answer lets an empty App through, whose ack unblocks everything.
  net.heal();
  for (const m of apps) net.deliver(m);
  net.run(3);
  t.equal(net.raft('b').log.lastIndex(), net.raft('a').log.lastIndex());
});

t.test('batching: proposals of one turn leave in one App per follower', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  for (let i = 0; i < 64; i++) net.propose('a', `p${i}`);
  const rd = net.get('a').node.ready();
  const apps = rd.messages.filter((m) => m.type === MessageType.App);
  t.equal(apps.length, 2);
  t.same(apps.map((m) => m.entries.length), [64, 64]);
  t.equal(rd.entries.length, 64);
});

t.test('backpressure: typed refusals', async (t) => {
  const net = new Network(['a', 'b', 'c'], { uncommittedBytesMax: 1000 });
  net.campaign('a');
  const e = t.throws(() => net.propose('b', 'x')) as NotLeaderError;
  t.equal(e.code, 'XDEVICE_ERR_NOT_LEADER');
  t.equal(e.leader, 'a', 'the error names the leader');
  net.isolate('a');
  net.propose('a', Buffer.alloc(600));
  net.propose('a', Buffer.alloc(300));
  const big = t.throws(() => net.propose('a', Buffer.alloc(200)));
  t.ok(big instanceof TooManyUncommittedBytesError);
  t.equal((big as TooManyUncommittedBytesError).code, 'XDEVICE_ERR_TOO_MANY_UNCOMMITTED_BYTES');
  net.heal();
  net.run(3);
  t.doesNotThrow(() => net.propose('a', Buffer.alloc(200)), 'accepted again once applied');
  // No leader known at all.
  const lone = new Network(['x', 'y', 'z']);
  const nl = t.throws(() => lone.propose('x', 'p')) as NotLeaderError;
  t.equal(nl.leader, '');
  t.throws(() => lone.get('x').node.readIndex(Buffer.from('r')), { code: 'XDEVICE_ERR_NOT_LEADER' });
});

t.test('status(): role, term, commit and per-peer progress for the admin API', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.propose('a', 'x');
  net.stabilize();
  const st = net.get('a').node.status();
  t.equal(st.role, Role.Leader);
  t.equal(st.lead, 'a');
  t.equal(st.commit, st.lastIndex);
  t.equal(st.applied, st.commit);
  t.same(Object.keys(st.progress).sort(), ['a', 'b', 'c']);
  t.equal(st.progress.b!.match, st.lastIndex);
  t.equal(st.progress.b!.state, 'replicate');
  t.same(net.get('b').node.status().progress, {}, 'followers report no progress');
});

// Simulator seed 705595: after the faults stopped, learners caught up one
// entry per round trip amid rejections, because under reordering every App
// that overtook its predecessor was refused, thrown away, and knocked the
// leader back to probing. These drive a lagging follower message by
// message, each round's messages delivered in reverse (the worst order).
function catchUpRounds(t: Test, lose: (m: Message, round: number) => boolean, onNetwork?: (net: Network) => void): number {
  const net = new Network(['a', 'b'], { messageBytesMax: 1, inFlightMessagesMax: 8, inFlightBytesMax: 1 << 20 });
  onNetwork?.(net);
  net.campaign('a');
  net.isolate('b');
  for (let i = 0; i < 64; i++) {
    net.propose('a', `e${i}`);
    net.processAll();
    net.take(() => true);
  }
  net.heal();
  const target = net.raft('a').log.lastIndex();
  t.ok(target - net.raft('b').log.lastIndex() >= 64, 'b lags 64 entries');
  let round = 0;
  for (; round < 200 && net.raft('b').log.lastIndex() < target; round++) {
    net.tick('a');
    net.processAll();
    const batch = net.take(() => true).reverse();
    for (const m of batch) if (!lose(m, round)) net.deliver(m);
  }
  t.equal(net.raft('b').log.lastIndex(), target, `b caught up in ${round} rounds`);
  t.same(net.logOf('b').map((e) => e.term), net.logOf('a').map((e) => e.term), 'same log');
  return round;
}

t.test('catch-up under reordering: a lagging follower gets a whole window per round trip', async (t) => {
  const rounds = catchUpRounds(t, () => false);
  // A round trip is two rounds; 64 entries, 8 one-entry Apps in flight: 16
  // rounds at full speed. Refusing and resending what overtook took 132.
  t.ok(rounds <= 24, `${rounds} rounds for 64 entries with a window of 8`);
});

t.test('catch-up under reordering: a lost App in the window is still repaired', async (t) => {
  let lost = 0;
  const rounds = catchUpRounds(t, (m, round) => {
    // Every third round loses the first App of the window (delivered last after reversal).
    const drop = round % 3 === 0 && lost < 5 && m.type === MessageType.App && m.entries.length > 0;
    if (drop) lost++;
    return drop;
  });
  t.ok(lost > 0, `${lost} Apps lost`);
  t.ok(rounds <= 40, `${rounds} rounds for 64 entries with losses`);
});

t.test('catch-up under reordering: the App that fills the gap is lost again and again, and still repaired', async (t) => {
  // While rejections of held Apps keep arriving, only a window that stopped
  // moving for a heartbeat may resend (a stream of answers is not progress).
  let lost = 0;
  let net: Network | undefined;
  const rounds = catchUpRounds(t, (m) => {
    const drop = lost < 6 && m.type === MessageType.App && m.entries.length > 0 && m.index === net!.raft('b').log.lastIndex();
    if (drop) lost++;
    return drop;
  }, (n) => (net = n));
  t.equal(lost, 6, 'six gap-filling Apps lost');
  t.ok(rounds <= 60, `${rounds} rounds for 64 entries`);
});

t.test('a rejection for a gap is an acknowledgement up to the hint; the leader keeps replicating', async (t) => {
  const net = new Network(['a', 'b'], { messageBytesMax: 1, inFlightMessagesMax: 4 });
  net.campaign('a');
  const leader = net.raft('a');
  const pr = leader.trk.progress.get('b')!;
  t.equal(pr.state, 'replicate');
  const before = pr.match;
  for (let i = 0; i < 4; i++) net.propose('a', `x${i}`);
  net.processAll();
  const apps = net.take((m) => m.type === MessageType.App && m.to === 'b' && m.entries.length > 0);
  t.equal(apps.length, 4);
  // The last App overtakes the others: b refuses it with a hint at its last index.
  net.deliver(apps[3]!);
  net.process('b');
  const [rej] = net.take((m) => m.type === MessageType.AppResp && m.from === 'b');
  t.ok(rej?.reject, 'b refuses the App that overtook its predecessors');
  t.equal(rej!.rejectHint, before, 'hinting its last index');
  net.deliver(rej!);
  t.equal(pr.state, 'replicate', 'still replicating: a gap is not a divergence');
  t.equal(pr.match, before, 'match stays at the hint');
  // The rest arrive; b appends the held App without another round trip.
  for (const m of apps.slice(0, 3)) net.deliver(m);
  net.process('b');
  const acks = net.take((m) => m.type === MessageType.AppResp && m.from === 'b' && !m.reject);
  t.equal(Math.max(...acks.map((m) => m.index)), leader.log.lastIndex(), 'b acknowledges everything, the held App included');
});
