// The rules in front of Raft (src/replica/peer-input.ts): bounds and local
// message types are protocol errors; only members (or, for a node without a
// configuration yet, a leader's catch-up messages) reach Raft.
import t from 'tap';
import { admitPeerMessage as admitWith, peerMessageProblem, type ReceiverState } from '../../src/replica/peer-input.ts';
import { limits } from '../../src/limits.ts';
import { EntryType, MessageType, message, type Message } from '../../src/raft/types.ts';

/** The node's check with its configuration as a set of ids (empty: joining). */
const admitPeerMessage = (m: Message, members: Set<string>, receiver?: ReceiverState): boolean => admitWith(m, (id) => members.has(id), members.size > 0, receiver);

t.test('bounds and node-local types are protocol errors', async (t) => {
  t.equal(peerMessageProblem(message({ type: MessageType.App, from: 'a', to: 'b', term: limits.raftTermMax, index: limits.raftIndexMax })), undefined);
  t.match(peerMessageProblem(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', term: Number.MAX_SAFE_INTEGER })), /term/);
  t.match(peerMessageProblem(message({ type: MessageType.App, from: 'a', to: 'b', entries: [{ term: 1, index: limits.raftIndexMax + 1, type: EntryType.Normal, data: Buffer.alloc(0) }] })), /entry index/);
  t.match(peerMessageProblem(message({ type: MessageType.Snap, from: 'a', to: 'b', snapshot: { index: 2 ** 50, term: 1, confState: { voters: [], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } } })), /snapshot/);
  for (const type of [MessageType.Hup, MessageType.Beat, MessageType.Unreachable, MessageType.SnapStatus, MessageType.CheckQuorum, MessageType.StorageAppendResp, MessageType.ForgetLeader]) {
    t.match(peerMessageProblem(message({ type, from: 'a', to: 'b' })), /local to a node/, MessageType[type]);
  }
});

t.test('only members reach Raft; a joining node takes only a leader\'s catch-up', async (t) => {
  const members = new Set(['n1', 'n2', 'n3']);
  t.ok(admitPeerMessage(message({ type: MessageType.Vote, from: 'n2', to: 'n1' }), members));
  for (const type of [MessageType.Prop, MessageType.Vote, MessageType.PreVote, MessageType.App, MessageType.Heartbeat, MessageType.ReadIndex, MessageType.TransferLeader, MessageType.AppResp]) {
    t.notOk(admitPeerMessage(message({ type, from: 'ghost', to: 'n1' }), members), `a stranger's ${MessageType[type]} is dropped`);
  }
  const none = new Set<string>();
  for (const type of [MessageType.App, MessageType.Heartbeat, MessageType.Snap, MessageType.Vote]) t.ok(admitPeerMessage(message({ type, from: 'n1', to: 'n4' }), none), `joining: ${MessageType[type]}`);
  for (const type of [MessageType.Prop, MessageType.TimeoutNow, MessageType.ReadIndex]) t.notOk(admitPeerMessage(message({ type, from: 'n1', to: 'n4' }), none), `joining: no ${MessageType[type]}`);
  // The leader this node follows is heard even if outside its configuration; others only after a long silence.
  const follower = { term: 7, lead: 'n5', leaderlessLong: false };
  t.ok(admitPeerMessage(message({ type: MessageType.ReadIndexResp, from: 'n5', to: 'n1', term: 7 }), members, follower), 'its leader');
  t.ok(admitPeerMessage(message({ type: MessageType.App, from: 'n9', to: 'n1', term: 6 }), members, follower), 'a stale leader, to be told its term is over');
  t.notOk(admitPeerMessage(message({ type: MessageType.Prop, from: 'n9', to: 'n1', term: 0 }), members, follower), 'never a stranger\'s proposal');
  t.notOk(admitPeerMessage(message({ type: MessageType.Heartbeat, from: 'n9', to: 'n1', term: 9 }), members, follower), 'a stranger while the leader is heard');
  t.ok(admitPeerMessage(message({ type: MessageType.Heartbeat, from: 'n9', to: 'n1', term: 9 }), members, { ...follower, leaderlessLong: true }), 'a leader outside the configuration after a long silence');
  t.notOk(admitPeerMessage(message({ type: MessageType.Vote, from: 'n9', to: 'n1', term: 9 }), members, { ...follower, leaderlessLong: true }), 'but never a stranger\'s vote');
  // Found by the simulator on the real replica (seed 11): a stranger's term at
  // raftTermMax spread through the cluster and left no term to elect a leader in.
  const far = follower.term + limits.peerTermJumpMax + 1;
  t.notOk(admitPeerMessage(message({ type: MessageType.Heartbeat, from: 'n9', to: 'n1', term: far }), members, { ...follower, leaderlessLong: true }), 'nor a stranger far ahead in terms');
  t.notOk(admitPeerMessage(message({ type: MessageType.App, from: 'n9', to: 'n1', term: limits.peerTermJumpMax + 1 }), new Set(), { term: 0, lead: '', leaderlessLong: true }), 'a joining node is not led far ahead either');
  t.ok(admitPeerMessage(message({ type: MessageType.App, from: 'n9', to: 'n1', term: 12_345 }), new Set(), { term: 0, lead: '', leaderlessLong: true }), 'a joining node follows a real leader');
});
