// Replication mechanics and backpressure: Ready/advance contracts, fast
// backtracking, in-flight and message limits, batching, typed refusals.

import t from 'tap';
import { NotLeaderError, TooManyUncommittedBytesError } from '../../src/raft/errors.ts';
import { MessageType } from '../../src/raft/types.ts';
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
