// Membership changes (Raft thesis chapter 4): learners, promotion, one voter
// at a time, joint consensus, one change in flight, a removed leader.

import t from 'tap';
import { ConfChangeTransition, ConfChangeType, confChanges, decodeConfChange, encodeConfChange, type ConfChange } from '../../src/raft/confchange.ts';
import { message, MessageType } from '../../src/raft/types.ts';
import { Network, Role } from './helpers/raft-network.ts';

const commitChange = (net: Network, leader: string, cc: ConfChange) => {
  const r = net.get(leader).node.proposeConfChange(cc);
  net.stabilize();
  return r;
};

t.test('ConfChange encoding round-trips and rejects malformed input', async (t) => {
  const cc: ConfChange = {
    transition: ConfChangeTransition.Explicit,
    changes: [
      { type: ConfChangeType.AddNode, nodeId: 'n1' },
      { type: ConfChangeType.AddLearnerNode, nodeId: 'ñ2' },
      { type: ConfChangeType.RemoveNode, nodeId: 'n3' },
    ],
    context: Buffer.from('127.0.0.1:7000'),
  };
  const b = encodeConfChange(cc);
  t.same(decodeConfChange(b), cc);
  t.same(decodeConfChange(encodeConfChange({ transition: ConfChangeTransition.Auto, changes: [] })), { transition: 0, changes: [] });
  for (let cut = 0; cut < b.length; cut++) t.throws(() => decodeConfChange(b.subarray(0, cut)), { code: 'XDEVICE_ERR_INVALID_CONF_CHANGE' }, `truncated at ${cut}`);
  t.throws(() => decodeConfChange(Buffer.concat([b, Buffer.from([0])])), { code: 'XDEVICE_ERR_INVALID_CONF_CHANGE' }, 'trailing byte');
  const bad = Buffer.from(b);
  bad[0] = 9;
  t.throws(() => decodeConfChange(bad), { code: 'XDEVICE_ERR_INVALID_CONF_CHANGE' }, 'unknown version');
  t.throws(() => encodeConfChange({ transition: 0, changes: [{ type: 0, nodeId: '' }] }), { code: 'XDEVICE_ERR_INVALID_CONF_CHANGE' });
});

t.test('4.2.1 a new node joins as a learner, catches up without voting, then is promoted', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  for (let i = 0; i < 5; i++) net.propose('a', `before-${i}`);
  net.stabilize();
  net.addNode('d');
  commitChange(net, 'a', confChanges.addLearner('d'));
  t.same(net.get('a').confState.learners, ['d']);
  t.same(net.get('a').confState.voters, ['a', 'b', 'c']);
  net.run(3);
  t.same(net.appliedData('d'), net.appliedData('a'), 'the learner replayed the whole log (including the bootstrap membership)');
  t.same(net.get('d').confState.learners, ['d'], 'and knows it is a learner');
  t.equal(net.raft('d').promotable(), false, 'a learner never campaigns');
  net.tick('d', 50);
  net.stabilize();
  t.equal(net.raft('d').role, Role.Follower);
  // A learner does not count for commit: with b and c down, a + d is no majority.
  net.isolate('b');
  net.isolate('c');
  const { index } = net.propose('a', 'needs-a-voter');
  net.stabilize();
  t.ok(net.raft('a').log.committed < index, 'a learner’s ack does not commit');
  net.heal();
  net.run(3);
  t.ok(net.raft('a').log.committed >= index);
  commitChange(net, 'a', confChanges.addVoter('d'));
  t.same(net.get('a').confState.voters, ['a', 'b', 'c', 'd']);
  t.same(net.get('d').confState.voters, ['a', 'b', 'c', 'd']);
  t.equal(net.raft('d').promotable(), true);
});

t.test('4.1 remove a voter: the quorum shrinks', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  commitChange(net, 'a', confChanges.remove('c'));
  t.same(net.get('a').confState.voters, ['a', 'b']);
  net.isolate('c');
  net.propose('a', 'two-voters');
  net.stabilize();
  t.ok(net.appliedData('b').includes('two-voters'));
  // Now a and b are the whole cluster: with b isolated, a cannot commit.
  net.heal();
  net.isolate('b');
  const { index } = net.propose('a', 'needs-b');
  net.stabilize();
  t.ok(net.raft('a').log.committed < index);
});

t.test('4.1 only one membership change in flight', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.get('a').node.proposeConfChange(confChanges.addLearner('d'));
  t.throws(() => net.get('a').node.proposeConfChange(confChanges.addLearner('e')), { code: 'XDEVICE_ERR_CONF_CHANGE_IN_PROGRESS' });
  net.stabilize();
  t.doesNotThrow(() => net.get('a').node.proposeConfChange(confChanges.addLearner('e')), 'accepted once the first is applied');
});

t.test('4.1 a simple change of two voters at once is refused', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  const two: ConfChange = {
    transition: ConfChangeTransition.Auto,
    changes: [
      { type: ConfChangeType.AddNode, nodeId: 'd' },
      { type: ConfChangeType.RemoveNode, nodeId: 'c' },
    ],
  };
  // Auto with two changes means joint: allowed. Explicitly simple is not possible through the API,
  // so check the changer refuses a two-voter simple change via the tracker.
  const { index } = net.get('a').node.proposeConfChange(two);
  t.ok(index > 0, 'Auto with two voter changes goes through joint consensus');
  t.throws(() => net.get('a').node.proposeConfChange(confChanges.addVoter('e')), { code: 'XDEVICE_ERR_CONF_CHANGE_IN_PROGRESS' });
  t.throws(() => net.get('a').node.proposeConfChange(confChanges.remove('a')), { code: 'XDEVICE_ERR_CONF_CHANGE_IN_PROGRESS' });
});

t.test('4.3 joint consensus with automatic leave: replace two voters', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.addNode('d');
  net.addNode('e');
  commitChange(net, 'a', {
    transition: ConfChangeTransition.Auto,
    changes: [
      { type: ConfChangeType.AddNode, nodeId: 'd' },
      { type: ConfChangeType.AddNode, nodeId: 'e' },
      { type: ConfChangeType.RemoveNode, nodeId: 'b' },
      { type: ConfChangeType.RemoveNode, nodeId: 'c' },
    ],
  });
  net.stabilize();
  const cs = net.get('a').confState;
  t.same(cs.voters, ['a', 'd', 'e'], 'the incoming configuration');
  t.same(cs.votersOutgoing, [], 'left the joint configuration automatically');
  t.same(net.get('d').confState.voters, ['a', 'd', 'e']);
  net.isolate('b');
  net.isolate('c');
  net.propose('a', 'new-config');
  net.stabilize();
  t.ok(net.appliedData('e').includes('new-config'));
});

t.test('4.3 explicit joint consensus: both majorities are needed until the leave', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.addNode('d');
  commitChange(net, 'a', {
    transition: ConfChangeTransition.Explicit,
    changes: [
      { type: ConfChangeType.AddNode, nodeId: 'd' },
      { type: ConfChangeType.RemoveNode, nodeId: 'b' },
      { type: ConfChangeType.RemoveNode, nodeId: 'c' },
    ],
  });
  const cs = net.get('a').confState;
  t.same(cs.voters, ['a', 'd']);
  t.same(cs.votersOutgoing, ['a', 'b', 'c']);
  t.throws(() => net.get('a').node.proposeConfChange(confChanges.addVoter('e')), { code: 'XDEVICE_ERR_INVALID_CONF_CHANGE' }, 'no new change before leaving');
  // In the joint configuration the old majority is still needed.
  net.isolate('b');
  net.isolate('c');
  const { index } = net.propose('a', 'joint');
  net.stabilize();
  t.ok(net.raft('a').log.committed < index, 'a + d is a majority of {a,d} but not of {a,b,c}');
  net.heal();
  net.stabilize();
  commitChange(net, 'a', { transition: ConfChangeTransition.Auto, changes: [] });
  t.same(net.get('a').confState.votersOutgoing, []);
  net.isolate('b');
  net.isolate('c');
  const r = net.propose('a', 'after-leave');
  net.stabilize();
  t.ok(net.raft('a').log.committed >= r.index, 'now {a, d} suffices');
});

t.test('4.2.2 a removed leader steps down and hands over', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.propose('a', 'x');
  net.stabilize();
  commitChange(net, 'a', confChanges.remove('a'));
  t.equal(net.raft('a').leadTransferee !== '', true, 'a hands over once a remaining voter is caught up');
  t.throws(() => net.propose('a', 'refused'), { code: 'XDEVICE_ERR_PROPOSAL_DROPPED' }, 'a removed leader takes no proposals');
  net.run(30);
  t.not(net.raft('a').role, Role.Leader, 'a stepped down');
  const leaders = net.leaders();
  t.equal(leaders.length, 1);
  t.not(leaders[0], 'a');
  t.same(net.get(leaders[0]!).confState.voters, ['b', 'c']);
  net.propose(leaders[0]!, 'y');
  net.stabilize();
  t.ok(net.appliedData('b').includes('y') && net.appliedData('c').includes('y'));
  t.equal(net.raft('a').promotable(), false, 'the removed node never campaigns');
});

t.test('demote a voter to learner through joint consensus', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  commitChange(net, 'a', { transition: ConfChangeTransition.Implicit, changes: [{ type: ConfChangeType.AddLearnerNode, nodeId: 'c' }] });
  net.stabilize();
  const cs = net.get('a').confState;
  t.same(cs.voters, ['a', 'b']);
  t.same(cs.learners, ['c']);
  t.same(cs.learnersNext, []);
});

t.test('localReadIndex: only the sole voter leading answers at once, never a demoted leader handing over', async (t) => {
  const solo = new Network(['a']);
  solo.get('a').node.campaign();
  t.equal(solo.get('a').node.localReadIndex(), undefined, 'a fresh leader has not committed an entry of its term');
  solo.stabilize();
  t.equal(solo.get('a').node.localReadIndex(), solo.raft('a').log.committed, 'the sole voter: its commit index');

  const net = new Network(['a', 'b']);
  net.campaign('a');
  t.equal(net.get('a').node.localReadIndex(), undefined, 'two voters: a round is needed');
  // Demote the leader; hold back the TimeoutNow so it is still leading, as a learner, after the change.
  net.get('a').node.proposeConfChange(confChanges.addLearner('a'));
  for (let i = 0; i < 20; i++) {
    net.processAll();
    for (const m of net.take(() => true)) if (m.type !== MessageType.TimeoutNow) net.deliver(m);
  }
  t.same(net.get('a').confState.voters, ['b']);
  t.same(net.get('a').confState.learners, ['a']);
  t.equal(net.raft('a').role, Role.Leader, 'still leading while it hands over');
  // The runtime's old shortcut (one voter, and this node tracked) would have read locally here.
  t.ok(net.raft('a').trk.isSingleton() && net.raft('a').trk.progress.has('a'), 'the old shortcut’s condition holds');
  t.equal(net.get('a').node.localReadIndex(), undefined, 'but a demoted leader must confirm with b');
  net.isolate('b');
  net.get('a').node.readIndex(Buffer.from('r1'));
  net.stabilize();
  t.same(net.get('a').readStates, [], 'with b cut off, no read index is granted');
});

t.test('4.1 a node whose applied configuration lags the changes in its log cannot win with a removed voter (sim seed 327)', async (t) => {
  // b acked the promotion of d and the removal of c, then restarted with its
  // commit index from before both (commit is persisted lazily), so it applies
  // only {a, b, c} + learner d. c, cut off before either change, still thinks
  // b's log is newer than its own. Voting by the applied configuration alone,
  // b + c would make a leader without the entries a and d committed since.
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.addNode('d');
  const learner = commitChange(net, 'a', confChanges.addLearner('d'));
  net.run(2);
  net.isolate('c');
  commitChange(net, 'a', confChanges.addVoter('d'));
  commitChange(net, 'a', confChanges.remove('c'));
  t.same(net.get('a').confState.voters, ['a', 'b', 'd']);
  t.same(net.get('b').confState.voters, ['a', 'b', 'd']);
  net.heal();
  net.isolate('b');
  net.isolate('c');
  const { index: lateIndex } = net.propose('a', 'committed-by-a-and-d');
  net.stabilize();
  t.ok(net.raft('a').log.committed >= lateIndex, 'a and d commit without b');

  const hs = net.get('b').storage.initialState().hardState;
  net.get('b').storage.setHardState({ ...hs, commit: learner.index });
  net.restart('b');
  t.same(net.get('b').confState.voters, ['a', 'b', 'c'], 'b restarted with the older configuration applied');
  t.ok(net.raft('b').log.lastIndex() > learner.index + 1, 'and both later changes in its log');

  net.heal();
  net.isolate('a');
  net.isolate('d');
  net.cut.delete('b->c');
  net.cut.delete('c->b');
  for (let i = 0; i < 40; i++) {
    net.tick('b');
    net.tick('c');
    net.stabilize();
  }
  t.not(net.raft('b').role, Role.Leader, 'b does not lead: the configuration its log ends with needs a or d');
  t.not(net.raft('c').role, Role.Leader, 'nor does c');

  net.heal();
  net.run(30);
  t.equal(net.leaders().length, 1, 'one leader once healed');
  for (const id of ['a', 'b', 'd']) t.ok(net.appliedData(id).includes('committed-by-a-and-d'), `${id} has the entry a and d committed`);
});

t.test('4.1 a node outside its applied configuration but a voter of the one its log leads to votes by its whole log (sim seed 12002237)', async (t) => {
  // d was added and promoted, took entry x, then restarted with its commit
  // index from before it was added: its applied configuration does not name
  // it. It is not a removed node (those may vote by their commit index): the
  // configuration its log ends with counts it, and x may be committed by it.
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.addNode('d');
  const learner = commitChange(net, 'a', confChanges.addLearner('d'));
  net.run(2);
  commitChange(net, 'a', confChanges.addVoter('d'));
  const x = net.propose('a', 'x');
  net.stabilize();
  t.ok(net.raft('d').log.lastIndex() >= x.index, 'd holds x');
  const hs = net.get('d').storage.initialState().hardState;
  net.get('d').storage.setHardState({ ...hs, commit: learner.index - 1 });
  net.restart('d');
  net.process('d');
  t.same(net.get('d').node.status().confState.voters, ['a', 'b', 'c'], 'd restarted with a configuration that does not name it');
  t.same(net.get('d').node.status().confState.learners, [], 'not even as a learner');
  const term = net.raft('d').term + 1;
  net.queue = [];
  net.deliver(message({ type: MessageType.Vote, from: 'c', to: 'd', term, index: x.index - 1, logTerm: net.raft('d').log.term(x.index - 1) }));
  net.process('d');
  const resp = net.queue.find((m) => m.type === MessageType.VoteResp && m.from === 'd');
  t.ok(resp, 'd answers');
  t.equal(resp?.reject, true, 'd refuses a candidate whose log lacks x');
});
