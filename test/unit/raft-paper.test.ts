// Scenario tests named after the section of the Raft paper (Ongaro &
// Ousterhout, "In Search of an Understandable Consensus Algorithm") or of
// Ongaro's thesis they check. Clusters live in memory and are driven message
// by message (test/unit/helpers/raft-network.ts).

import t from 'tap';
import { NotLeaderError } from '../../src/raft/errors.ts';
import { strict as assert } from 'node:assert';
import { MessageType, message, type Message } from '../../src/raft/types.ts';
import { Network, Role } from './helpers/raft-network.ts';
import { raftForTesting } from '../../src/raft/rawnode.ts';

const elect = (net: Network, id: string) => {
  net.campaign(id);
  return net.raft(id);
};

t.test('5.2 leader election: a follower that hears nothing campaigns after an election timeout and wins', async (t) => {
  const net = new Network(['a', 'b', 'c'], { electionTicks: 10 });
  // rand() = 0, so every node's timeout is exactly 10 ticks: tick only a.
  net.tick('a', 9);
  net.stabilize();
  t.equal(net.raft('a').role, Role.Follower, 'no campaign before the timeout');
  net.tick('a', 1);
  net.stabilize();
  t.same(net.leaders(), ['a']);
  t.equal(net.raft('b').lead, 'a');
  t.equal(net.raft('c').lead, 'a');
  t.equal(net.raft('b').term, net.raft('a').term);
});

t.test('5.2 randomised election timeouts lie in [electionTicks, 2*electionTicks)', async (t) => {
  const seen = new Set<number>();
  for (let v = 0; v < 30; v++) {
    const net = new Network(['a'], { electionTicks: 10 }, { a: { rand: (n) => v % n } });
    seen.add(net.raft('a').randomizedElectionTimeout);
  }
  t.same([...seen].sort((x, y) => x - y), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
});

t.test('5.2 election safety: a node votes at most once per term, and only after persisting the vote', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: false });
  net.get('a').node.campaign();
  net.get('c').node.campaign();
  net.process('a');
  net.process('c');
  const votesForB = net.take((m) => m.type === MessageType.Vote && m.to === 'b');
  t.equal(votesForB.length, 2);
  const b = net.get('b').node;
  for (const m of votesForB) b.step(m);
  const rd = b.ready();
  t.ok(rd.hardState && rd.hardState.vote === 'a', 'the vote is in the hard state to persist');
  t.equal(rd.messages.filter((m) => m.type === MessageType.VoteResp).length, 0, 'no vote leaves before persistence');
  const resps = rd.messagesAfterPersist.filter((m) => m.type === MessageType.VoteResp);
  t.same(
    resps.map((m) => [m.to, m.reject]),
    [
      ['a', false],
      ['c', true],
    ],
    'granted to the first candidate, refused to the second',
  );
  net.get('b').storage.setHardState(rd.hardState!);
  b.advance(rd);
  net.queue.push(...rd.messagesAfterPersist);
  net.stabilize();
  const leaders = net.leaders();
  t.equal(leaders.length, 1);
  t.equal(leaders[0], 'a');
});

t.test('5.2 a candidate that learns of a leader of its term steps down', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: false });
  elect(net, 'a');
  const term = net.raft('a').term;
  // c campaigns in isolation, then hears the leader's heartbeat at a higher term after rejoining.
  net.isolate('c');
  net.get('c').node.campaign();
  net.stabilize();
  t.equal(net.raft('c').role, Role.Candidate);
  t.equal(net.raft('c').term, term + 1);
  net.heal();
  // a answers c's stale-term... c has the higher term; a steps down when it hears it.
  net.tick('a', 1);
  net.stabilize();
  t.equal(net.leaders().length <= 1, true);
});

t.test('5.3 log replication: committed entries are applied in the same order on every node', async (t) => {
  const net = new Network(['a', 'b', 'c', 'd', 'e']);
  elect(net, 'a');
  for (let i = 0; i < 20; i++) net.propose('a', `v${i}`);
  net.stabilize();
  const want = Array.from({ length: 20 }, (_, i) => `v${i}`);
  for (const id of ['a', 'b', 'c', 'd', 'e']) t.same(net.appliedData(id), want, `node ${id}`);
});

t.test('5.3 log matching: a follower rejects an App whose previous entry does not match', async (t) => {
  const net = new Network(['a', 'b']);
  elect(net, 'a');
  const term = net.raft('a').term;
  const b = net.get('b').node;
  const last = net.raft('b').log.lastIndex();
  b.step(message({ type: MessageType.App, from: 'a', to: 'b', term, index: last + 5, logTerm: term, entries: [], commit: 0 }));
  const rd = b.ready();
  const resp = rd.messagesAfterPersist.find((m) => m.type === MessageType.AppResp)!;
  t.ok(resp.reject, 'rejected');
  t.equal(resp.rejectHint, last, 'hint: our last index');
  b.advance(rd);
});

t.test('5.3 figure 7: a new leader brings every follower log (a)-(f) in line with its own', async (t) => {
  // Terms of entries after the bootstrap entries (paper indexes 1..12).
  const leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
  const logs: Record<string, number[]> = {
    a: [1, 1, 1, 4, 4, 5, 5, 6, 6],
    b: [1, 1, 1, 4],
    c: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    d: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    e: [1, 1, 1, 4, 4, 4, 4],
    f: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
  };
  const ids = ['L', 'a', 'b', 'c', 'd', 'e', 'f'];
  const net = new Network(ids, { preVote: false });
  net.setLog('L', leader);
  for (const id of Object.keys(logs)) net.setLog(id, logs[id]!);
  // Term 8 as in the figure: make L the leader of a term above every log.
  net.raft('L').term = 7;
  net.raft('L').vote = '';
  // d has term-7 entries: a majority must still elect L (a, b, e, f, c with up-to-date checks).
  elect(net, 'L');
  t.equal(net.raft('L').role, Role.Leader, 'L wins with votes of nodes whose logs are not more up to date');
  net.propose('L', 'x');
  net.stabilize();
  const want = net.logOf('L').map((e) => `${e.index}/${e.term}`);
  for (const id of Object.keys(logs)) t.same(net.logOf(id).map((e) => `${e.index}/${e.term}`), want, `follower ${id} matches the leader`);
});

t.test('5.4.1 election restriction: a candidate with an out-of-date log cannot win', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: false });
  elect(net, 'a');
  net.isolate('c');
  net.propose('a', 'only-on-a-and-b');
  net.stabilize();
  net.heal();
  net.get('c').node.campaign();
  net.stabilize();
  t.not(net.raft('c').role, Role.Leader, 'c lacks a committed entry');
  // Leader completeness: whoever leads now has the committed entry.
  net.run(30);
  const leaders = net.leaders();
  t.equal(leaders.length, 1);
  t.not(leaders[0], 'c');
  t.ok(net.logOf(leaders[0]!).some((e) => e.data.toString() === 'only-on-a-and-b'));
});

/**
 * Figure 8 of the paper, message by message. Returns what s1 applied at the
 * contested index and what the others applied there after s5 overwrote it.
 */
function figure8(commitPreviousTermEntries: boolean) {
  const ids = ['s1', 's2', 's3', 's4', 's5'];
  const net = new Network(ids, { preVote: false, checkQuorum: false, testingBugs: { commitPreviousTermEntries } });
  const deliverAll = (pred: (m: Message) => boolean) => {
    for (let k = 0; k < 50; k++) {
      net.processAll();
      const batch = net.take(() => true);
      if (batch.length === 0) return;
      for (const m of batch) if (pred(m)) net.deliver(m);
    }
  };
  const campaignUntilLeader = (id: string, pred: (m: Message) => boolean) => {
    for (let k = 0; k < 5 && net.raft(id).role !== Role.Leader; k++) {
      net.get(id).node.campaign();
      deliverAll(pred);
    }
  };
  elect(net, 's1');
  const T = net.raft('s1').term;
  // (a) s1 leads term T and replicates X at index i only to s2.
  const { index: i } = net.propose('s1', 'X');
  deliverAll((m) => m.from !== 's1' || m.to === 's2');
  // (b) s1 crashes; s5 is elected in term T+1 by s3, s4, s5 and appends at index i, but s5's Apps are lost.
  net.isolate('s1');
  net.isolate('s2');
  campaignUntilLeader('s5', (m) => !(m.from === 's5' && m.type === MessageType.App));
  assert.equal(net.raft('s5').role, Role.Leader);
  assert.equal(net.raft('s5').log.term(i), T + 1);
  // (c) s5 crashes; s1 restarts and is elected in term T+2 by s2, s3, s4.
  net.heal();
  net.isolate('s5');
  net.restart('s1');
  campaignUntilLeader('s1', (m) => !(m.from === 's1' && m.type === MessageType.App));
  assert.equal(net.raft('s1').role, Role.Leader);
  const s1 = net.raft('s1');
  const xEntry = net.logOf('s1').find((e) => e.index === i)!;
  // s1 replicates index i (term T), and only that, to s2 and s3: a majority holds it.
  for (const to of ['s2', 's3']) {
    net.get(to).node.step(message({ type: MessageType.App, from: 's1', to, term: s1.term, index: i - 1, logTerm: T, entries: [xEntry], commit: s1.log.committed }));
  }
  deliverAll((m) => m.to === 's1');
  const committedInC = s1.log.committed;
  const s1Applied = net.get('s1').applied.find((e) => e.index === i)?.data.toString();
  // (d) s1 crashes; s5 is elected by s2, s3, s4 (its last term T+1 beats their T) and overwrites index i.
  net.heal();
  net.isolate('s1');
  net.restart('s5');
  campaignUntilLeader('s5', () => true);
  net.stabilize();
  const others = ['s2', 's3', 's4', 's5'].map((id) => net.logOf(id).find((e) => e.index === i)!.term);
  return { i, T, committedInC, s1Applied, others };
}

t.test('5.4.2 figure 8: a leader never commits an entry of an earlier term by counting replicas', async (t) => {
  const r = figure8(false);
  t.ok(r.committedInC < r.i, `index ${r.i} (term ${r.T}) on a majority is not committed in term ${r.T + 2}`);
  t.equal(r.s1Applied, undefined, 's1 applied nothing at the contested index');
  t.same(r.others, [r.T + 1, r.T + 1, r.T + 1, r.T + 1], 's5 overwrote it, which is safe because it never committed');
});

t.test('5.4.2 figure 8 with the planted bug: counting old-term replicas loses a committed entry', async (t) => {
  const r = figure8(true);
  t.ok(r.committedInC >= r.i, 'the buggy leader commits the old-term entry');
  t.equal(r.s1Applied, 'X', 'and applies it');
  t.same(r.others, [r.T + 1, r.T + 1, r.T + 1, r.T + 1], 'then a later leader overwrites it everywhere: state machine safety broken');
});

t.test('5.4.3 leader completeness: every committed entry survives a leader change', async (t) => {
  const net = new Network(['a', 'b', 'c', 'd', 'e']);
  elect(net, 'a');
  for (let i = 0; i < 5; i++) net.propose('a', `c${i}`);
  net.stabilize();
  net.isolate('a');
  net.run(40);
  const leaders = net.leaders().filter((id) => id !== 'a');
  t.equal(leaders.length, 1);
  const nl = leaders[0]!;
  const data = net.logOf(nl).map((e) => e.data.toString());
  for (let i = 0; i < 5; i++) t.ok(data.includes(`c${i}`), `c${i} in the new leader's log`);
});

t.test('10.2.1 the leader counts its own entries toward commit only once they are durable', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  const a = net.get('a');
  a.node.propose(Buffer.from('x'));
  const rd = a.node.ready();
  t.equal(rd.entries.length, 1);
  t.ok(rd.messages.some((m) => m.type === MessageType.App && m.to === 'b'), 'App leaves before the leader persists');
  const idx = rd.entries[0]!.index;
  for (const m of rd.messages) if (m.to === 'b') net.get('b').node.step(m);
  net.process('b');
  for (const m of net.take((m) => m.to === 'a')) a.node.step(m);
  t.equal(raftForTesting(a.node).trk.progress.get('b')!.match, idx, 'b acknowledged');
  t.ok(raftForTesting(a.node).log.committed < idx, 'b alone is not a majority while a has not persisted');
  a.storage.append(rd.entries);
  a.node.advance(rd);
  t.equal(raftForTesting(a.node).log.committed, idx, 'a durable + b = majority');
});

t.test('single node: commit after the leader persists', async (t) => {
  const net = new Network(['solo']);
  net.campaign('solo');
  t.same(net.leaders(), ['solo']);
  const { index } = net.propose('solo', 'hello');
  const n = net.get('solo').node;
  const rd = n.ready();
  t.equal(rd.committedEntries.length, 0, 'not committed before durable');
  t.equal(rd.entries[rd.entries.length - 1]!.index, index);
  net.get('solo').storage.append(rd.entries);
  n.advance(rd);
  const rd2 = n.ready();
  t.equal(rd2.committedEntries[rd2.committedEntries.length - 1]!.index, index);
  t.equal(rd2.hardState?.commit, index);
  n.advance(rd2);
});

t.test('9.6 pre-vote: a rejoining node does not disrupt the cluster', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  const term = net.raft('a').term;
  net.isolate('c');
  net.tick('c', 100);
  net.stabilize();
  t.equal(net.raft('c').term, term, 'pre-vote keeps the isolated node from raising its term');
  t.equal(net.raft('c').role, Role.PreCandidate);
  net.heal();
  net.tick('a', 1);
  net.stabilize();
  t.same(net.leaders(), ['a'], 'a keeps leading');
  t.equal(net.raft('a').term, term);
  t.equal(net.raft('c').lead, 'a');
});

t.test('without pre-vote, a rejoining node with a higher term is answered and the stale leader learns the term', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: false });
  elect(net, 'a');
  net.isolate('c');
  net.tick('c', 30);
  net.stabilize();
  t.ok(net.raft('c').term > net.raft('a').term);
  net.heal();
  net.run(40);
  t.equal(net.leaders().length, 1, 'one leader after the disruption');
});

t.test('4.2.3 check-quorum: followers with a live leader ignore a disruptive vote request', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: false });
  elect(net, 'a');
  const term = net.raft('a').term;
  net.get('b').node.step(message({ type: MessageType.Vote, from: 'c', to: 'b', term: term + 5, index: 100, logTerm: term + 4 }));
  net.processAll();
  t.equal(net.raft('b').term, term, 'b did not adopt the higher term');
  t.equal(net.queue.filter((m) => m.type === MessageType.VoteResp).length, 0, 'and did not answer');
});

t.test('check-quorum: a leader that cannot reach a quorum steps down within an election timeout', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  net.isolate('a');
  for (let i = 0; i < 25 && net.raft('a').role === Role.Leader; i++) {
    net.tick('a');
    net.stabilize();
  }
  t.equal(net.raft('a').role, Role.Follower);
  t.throws(() => net.propose('a', 'x'), NotLeaderError);
});

t.test('6.4 ReadIndex: confirmed by a heartbeat quorum, with the context echoed', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  net.propose('a', 'w1');
  net.stabilize();
  const commit = net.raft('a').log.committed;
  net.get('a').node.readIndex(Buffer.from('r1'));
  net.processAll();
  t.equal(net.get('a').readStates.length, 0, 'not answered before the heartbeat round');
  t.ok(net.queue.some((m) => m.type === MessageType.Heartbeat && m.context?.toString() === 'r1'));
  net.stabilize();
  t.same(
    net.get('a').readStates.map((r) => [r.index, r.context.toString()]),
    [[commit, 'r1']],
  );
  // A follower forwards to the leader and gets a ReadIndexResp.
  net.get('c').node.readIndex(Buffer.from('r2'));
  net.stabilize();
  t.same(
    net.get('c').readStates.map((r) => [r.index, r.context.toString()]),
    [[commit, 'r2']],
  );
});

t.test('6.4 ReadIndex is not answered by a partitioned leader', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  net.isolate('a');
  net.get('a').node.readIndex(Buffer.from('lost'));
  net.stabilize();
  t.equal(net.get('a').readStates.length, 0);
});

t.test('6.4 ReadIndex across a leader change: the new leader answers only after committing in its term', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  net.propose('a', 'acked');
  net.stabilize();
  const acked = net.raft('a').log.committed;
  net.isolate('a');
  // c's lease on a expires; b wins an election; hold back b's Apps so its term's entry is not committed yet.
  net.tick('c', 10);
  net.tick('b', 30);
  net.processAll();
  for (let i = 0; i < 10 && net.raft('b').role !== Role.Leader; i++) {
    const votes = net.take((m) => m.type !== MessageType.App);
    for (const m of votes) net.deliver(m);
    net.processAll();
  }
  t.equal(net.raft('b').role, Role.Leader);
  net.take((m) => m.type === MessageType.App);
  net.get('b').node.readIndex(Buffer.from('after-change'));
  net.process('b');
  t.equal(net.get('b').readStates.length, 0, 'held until an entry of the new term commits');
  net.run(3);
  const rs = net.get('b').readStates;
  t.equal(rs.length, 1);
  t.ok(rs[0]!.index >= acked, 'the read index covers every write acknowledged before');
  t.ok(rs[0]!.index >= net.raft('b').log.committed - 1);
});

t.test('3.10 leadership transfer: the target is caught up, gets TimeoutNow, and wins', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  net.isolate('c');
  net.propose('a', 'x');
  net.stabilize();
  net.heal();
  net.get('a').node.transferLeader('c');
  t.equal(net.raft('a').leadTransferee, 'c');
  t.throws(() => net.propose('a', 'refused'), { code: 'XDEVICE_ERR_TRANSFER_IN_PROGRESS' });
  net.stabilize();
  t.same(net.leaders(), ['c']);
  t.equal(net.raft('a').lead, 'c');
  t.ok(net.logOf('c').some((e) => e.data.toString() === 'x'));
});

t.test('3.10 leadership transfer is abandoned after an election timeout', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  net.isolate('c');
  net.get('a').node.transferLeader('c');
  t.equal(net.raft('a').leadTransferee, 'c');
  for (let i = 0; i < 10; i++) {
    net.tick('a');
    net.stabilize();
  }
  t.equal(net.raft('a').leadTransferee, '');
  t.equal(net.raft('a').role, Role.Leader);
  t.doesNotThrow(() => net.propose('a', 'accepted again'));
});

t.test('a follower forwards a transfer request to the leader', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  elect(net, 'a');
  net.get('b').node.transferLeader('b');
  net.stabilize();
  t.same(net.leaders(), ['b']);
});
