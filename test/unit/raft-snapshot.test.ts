// Log compaction and snapshots (Raft paper section 7): the Snap message carries
// metadata only; the state machine streams the payload and reports back.

import t from 'tap';
import { ConfChangeTransition, ConfChangeType, confChanges, decodeConfChange, leaveJointChange } from '../../src/raft/confchange.ts';
import { EntryType, message, MessageType } from '../../src/raft/types.ts';
import { ProgressState } from '../../src/raft/progress.ts';
import { Network } from './helpers/raft-network.ts';
import { raftForTesting, type RawNode, type Ready } from '../../src/raft/rawnode.ts';

t.test('7 a follower behind the compacted log gets a snapshot and continues from it', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.isolate('c');
  for (let i = 0; i < 20; i++) net.propose('a', `e${i}`);
  net.stabilize();
  const a = net.get('a');
  const applied = raftForTesting(a.node).log.applied;
  a.storage.compact(applied, a.confState);
  net.get('b').storage.compact(applied, net.get('b').confState);
  net.heal();
  const pr = raftForTesting(a.node).trk.progress.get('c')!;
  let snap;
  // Deliver round by round, stopping as soon as the Snap is on the wire.
  for (let i = 0; i < 30 && !snap; i++) {
    net.processAll();
    if (net.queue.length === 0) net.tickAll();
    net.processAll();
    snap = net.queue.find((m) => m.type === MessageType.Snap);
    if (!snap) for (const m of net.take(() => true)) net.deliver(m);
  }
  t.ok(snap, 'the leader sent a snapshot');
  t.same(snap!.snapshot!.index, applied, 'at the compaction point');
  t.same(snap!.snapshot!.confState.voters, ['a', 'b', 'c'], 'carrying the membership');
  t.equal(snap!.entries.length, 0, 'and no payload: the state machine streams it');
  t.equal(pr.state, ProgressState.Snapshot, 'c is waiting for a snapshot');
  t.equal(pr.pendingSnapshot, applied);
  t.ok(pr.isPaused(), 'no Apps to c meanwhile');
  net.stabilize();
  const cNode = net.get('c');
  t.equal(cNode.storage.snapshotMetadata().index, applied, 'c installed the snapshot metadata');
  t.equal(raftForTesting(cNode.node).log.committed, applied);
  t.equal(pr.state, ProgressState.Replicate, 'c acknowledged the snapshot index: replication resumes');
  // The runtime's report arrives after that: harmless.
  a.node.reportSnapshot('c', true);
  t.equal(pr.state, ProgressState.Replicate);
  net.propose('a', 'after-snapshot');
  net.stabilize();
  t.same(net.appliedData('c'), ['after-snapshot'], 'c applies only what follows the snapshot');
  t.equal(net.logOf('c').at(-1)!.index, net.logOf('a').at(-1)!.index);
});

t.test('7 a failed snapshot is retried', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.isolate('c');
  for (let i = 0; i < 5; i++) net.propose('a', `e${i}`);
  net.stabilize();
  const a = net.get('a');
  a.storage.compact(raftForTesting(a.node).log.applied, a.confState);
  net.heal();
  // The Snap message is lost on the way (e.g. the stream broke).
  let lost;
  for (let i = 0; i < 30 && !lost; i++) {
    net.processAll();
    if (net.queue.length === 0) net.tickAll();
    net.processAll();
    lost = net.take((m) => m.type === MessageType.Snap)[0];
    for (const m of net.take(() => true)) net.deliver(m);
  }
  t.ok(lost, 'a snapshot was sent (and lost)');
  const pr = raftForTesting(a.node).trk.progress.get('c')!;
  t.equal(pr.state, ProgressState.Snapshot);
  a.node.reportSnapshot('c', false);
  t.equal(pr.state, ProgressState.Probe);
  t.equal(pr.pendingSnapshot, 0);
  net.run(3);
  t.equal(pr.state, ProgressState.Replicate);
  t.equal(net.raft('c').log.committed, raftForTesting(a.node).log.committed);
});

t.test('7 a restarted node resumes from its snapshot', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  for (let i = 0; i < 5; i++) net.propose('a', `e${i}`);
  net.stabilize();
  const b = net.get('b');
  const idx = raftForTesting(b.node).log.applied;
  b.storage.compact(idx, b.confState);
  net.restart('b');
  net.propose('a', 'later');
  net.stabilize();
  t.same(net.appliedData('b'), ['later']);
  t.equal(net.raft('b').log.firstIndex(), idx + 1);
});

// Simulator seed 925927: a follower had handed out a Ready whose committed
// entries held a membership change (leave joint) and, before the runtime
// applied it, took a snapshot: the tracker became the snapshot's
// configuration, and applying the change threw "not in a joint
// configuration" — a crash on input a peer can send.
t.test('7 a snapshot waits while committed entries (membership changes among them) are being applied', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.addNode('d');
  const commit = (cc: Parameters<RawNode['proposeConfChange']>[0]) => {
    net.get('a').node.proposeConfChange(cc);
    net.stabilize();
  };
  commit(confChanges.addLearner('d'));
  commit({ transition: ConfChangeTransition.Explicit, changes: [{ type: ConfChangeType.AddNode, nodeId: 'd' }] });
  t.same(net.get('c').confState.votersOutgoing, ['a', 'b', 'c'], 'everyone is in the joint configuration');
  // c misses the leave; then gets it, committed, in a Ready its runtime has not applied yet.
  net.isolate('c');
  const leave = net.get('a').node.proposeConfChange(leaveJointChange());
  net.stabilize();
  net.heal();
  const c = net.get('c');
  let pending: Ready | undefined;
  for (let i = 0; i < 20 && !pending; i++) {
    net.tick('a');
    for (const id of ['a', 'b', 'd']) net.process(id);
    for (const m of net.take(() => true)) {
      if (m.to !== 'c') {
        net.deliver(m);
        continue;
      }
      c.node.step(m);
      while (c.node.hasReady() && !pending) {
        const rd = c.node.ready();
        c.storage.append(rd.entries);
        if (rd.hardState) c.storage.setHardState(rd.hardState);
        net.queue.push(...rd.messages, ...rd.messagesAfterPersist);
        if (rd.committedEntries.some((e) => e.index === leave.index)) pending = rd;
        else {
          for (const e of rd.committedEntries) if (e.type === EntryType.ConfChange) c.confState = c.node.applyConfChange(decodeConfChange(e.data));
          c.node.advance(rd);
        }
      }
    }
  }
  t.ok(pending, 'c holds a Ready with the committed leave');
  // The leader moves on and compacts past the leave: c is offered a snapshot.
  // (c is left out: its runtime is busy with the Ready it holds.)
  for (let i = 0; i < 3; i++) net.propose('a', `after-${i}`);
  for (let round = 0; round < 20; round++) {
    for (const id of ['a', 'b', 'd']) net.process(id);
    for (const m of net.take(() => true)) if (m.to !== 'c') net.deliver(m);
  }
  const a = net.get('a');
  a.storage.compact(raftForTesting(a.node).log.applied, a.confState);
  const snapshot = a.storage.snapshotMetadata();
  t.same(snapshot.confState.votersOutgoing, [], 'the snapshot is past the joint configuration');
  const snap = message({ type: MessageType.Snap, from: 'a', to: 'c', term: raftForTesting(a.node).term, snapshot });
  c.node.step(snap);
  const next = c.node.ready();
  t.equal(next.snapshot, undefined, 'c does not take the snapshot while it is applying');
  // The runtime applies what it was handed: the leave meets the joint configuration it leaves.
  for (const e of pending!.committedEntries) {
    if (e.type === EntryType.ConfChange) t.doesNotThrow(() => (c.confState = c.node.applyConfChange(decodeConfChange(e.data))), `apply the change at ${e.index}`);
  }
  c.node.advance(pending!);
  c.storage.append(next.entries);
  c.node.advance(next);
  t.same(c.confState.votersOutgoing, [], 'c left the joint configuration');
  c.node.step(snap);
  const later = c.node.ready();
  t.equal(later.snapshot?.index, snapshot.index, 'once applied, the snapshot is taken');
});
