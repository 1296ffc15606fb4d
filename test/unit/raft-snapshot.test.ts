// Log compaction and snapshots (Raft paper section 7): the Snap message carries
// metadata only; the state machine streams the payload and reports back.

import t from 'tap';
import { MessageType } from '../../src/raft/types.ts';
import { ProgressState } from '../../src/raft/progress.ts';
import { Network } from './helpers/raft-network.ts';
import { raftForTesting } from '../../src/raft/rawnode.ts';

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
