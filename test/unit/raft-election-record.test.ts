// Raft's record of this node's latest campaign (Raft.lastElection), which the
// runtime logs: why it campaigned, and who granted or refused each poll.
import t from 'tap';
import { Network } from './helpers/raft-network.ts';
import { Role } from '../../src/raft/raft.ts';

t.test('an election timeout: pre-vote and vote won, with the granting voters', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: true });
  net.campaign('a');
  net.stabilize();
  t.equal(net.raft('a').role, Role.Leader);
  const e = net.raft('a').lastElection!;
  t.equal(e.cause, 'timeout');
  t.equal(e.term, net.raft('a').term);
  t.equal(e.preVote?.outcome, 'won');
  t.equal(e.vote?.outcome, 'won');
  t.ok(e.vote!.granted.includes('a') && e.vote!.granted.length >= 2, `a majority granted: ${e.vote!.granted}`);
});

t.test('a pre-vote refused by voters with a longer log is recorded as lost', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: true, checkQuorum: false });
  net.campaign('a');
  net.stabilize();
  net.isolate('b');
  net.propose('a', 'x');
  net.stabilize();
  net.heal();
  net.campaign('b');
  net.stabilize();
  t.equal(net.raft('a').role, Role.Leader, 'the leader keeps leading');
  const e = net.raft('b').lastElection!;
  t.equal(e.cause, 'timeout');
  t.equal(e.preVote?.outcome, 'lost');
  t.same(e.preVote?.granted, ['b']);
  t.same(e.preVote?.rejected, ['a', 'c']);
  t.equal(e.vote, undefined, 'no real vote after a lost pre-vote');
});

t.test('a leadership transfer campaigns without pre-vote and says so', async (t) => {
  const net = new Network(['a', 'b', 'c'], { preVote: true });
  net.campaign('a');
  net.stabilize();
  net.get('a').node.transferLeader('c');
  net.stabilize();
  t.equal(net.raft('c').role, Role.Leader);
  const e = net.raft('c').lastElection!;
  t.equal(e.cause, 'transfer');
  t.equal(e.preVote, undefined);
  t.equal(e.vote?.outcome, 'won');
});
