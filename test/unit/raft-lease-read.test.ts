// Lease reads (Raft thesis 6.4.1, etcd's ReadOnlyLeaseBased): the leader
// answers a read index without a heartbeat round while a quorum echoed a
// heartbeat stamp within the lease; followers keep the promise behind it.

import t from 'tap';
import { leaseTicksOf, validateConfig } from '../../src/raft/config.ts';
import { MemoryStorage } from '../../src/raft/memory-storage.ts';
import { MessageType } from '../../src/raft/types.ts';
import { fixedRand, Network, Role } from './helpers/raft-network.ts';

const LEASE = { readOnly: 'lease' as const };

/** A three-voter cluster in lease mode with `a` leading and one heartbeat round answered. */
function leaseCluster(perNode = {}): Network {
  const net = new Network(['a', 'b', 'c'], LEASE, perNode);
  // Everyone holds its start-up promise for an election timeout: a campaigns when it runs out.
  net.tickAll(10);
  net.stabilize();
  t.equal(net.raft('a').role, Role.Leader, 'a leads');
  net.tick('a');
  net.stabilize();
  return net;
}

t.test('config: lease reads need checkQuorum and room for a lease; safe is the default', async (t) => {
  const base = { id: 'a', storage: new MemoryStorage(), rand: fixedRand() };
  t.equal(validateConfig(base).readOnly, 'safe');
  t.equal(validateConfig(base).leaseTicks, 0);
  t.throws(() => validateConfig({ ...base, readOnly: 'lease', checkQuorum: false }), { code: 'XDEVICE_ERR_RAFT_CONFIG', message: /needs checkQuorum/ });
  t.throws(() => validateConfig({ ...base, readOnly: 'lease', electionTicks: 2, heartbeatTicks: 1 }), /leaves no lease/);
  t.throws(() => validateConfig({ ...base, readOnly: 'lease', leaseClockDriftPercent: 100 }), /leaseClockDriftPercent/);
  t.throws(() => validateConfig({ ...base, readOnly: 'fast' as never }), /readOnly must be/);
  t.equal(validateConfig({ ...base, readOnly: 'lease' }).leaseTicks, leaseTicksOf(10, 10));
  t.equal(leaseTicksOf(10, 10), 8, '9 whole ticks of promise, less 10%');
  t.equal(leaseTicksOf(10, 0), 9);
});

t.test('a leader with a valid lease reads at once, without a round', async (t) => {
  const net = leaseCluster();
  const lease = net.get('a').node.leaseRead();
  t.ok(lease, 'the lease holds after one answered heartbeat');
  t.equal(lease!.index, net.raft('a').log.committed, 'its commit index');
  t.equal(lease!.since, net.raft('a').ticks, 'resting on the heartbeat stamped this tick');
  t.equal(net.get('a').node.hasReady(), false, 'nothing to send: no heartbeat round');
  t.equal(net.get('b').node.leaseRead(), undefined, 'a follower has no lease');
});

t.test('safe mode (the default) stamps nothing and never reads on a lease', async (t) => {
  const net = new Network(['a', 'b', 'c']);
  net.campaign('a');
  net.tick('a');
  net.processAll();
  const beats = net.take((m) => m.type === MessageType.Heartbeat);
  t.ok(beats.length === 2 && beats.every((m) => m.index === 0), 'heartbeats carry no stamp');
  for (const m of beats) net.deliver(m);
  net.processAll();
  const acks = net.take((m) => m.type === MessageType.HeartbeatResp);
  t.ok(acks.length === 2 && acks.every((m) => m.index === 0), 'answers echo none');
  for (const m of acks) net.deliver(m);
  t.equal(net.get('a').node.leaseRead(), undefined);
});

t.test('followers without lease mode do not count towards a lease', async (t) => {
  const net = leaseCluster({ b: { readOnly: 'safe' }, c: { readOnly: 'safe' } });
  t.equal(net.get('a').node.leaseRead(), undefined, 'no quorum promised');
  const mixed = leaseCluster({ c: { readOnly: 'safe' } });
  t.ok(mixed.get('a').node.leaseRead(), 'a and b are a quorum of promises');
});

t.test('the lease expires leaseTicks after the stamp a quorum echoed, then reads fall back to ReadIndex', async (t) => {
  const net = leaseCluster();
  const since = net.get('a').node.leaseRead()!.since;
  net.isolate('a');
  for (let k = 1; k < 8; k++) {
    net.tick('a');
    net.stabilize();
    t.ok(net.get('a').node.leaseRead(), `still valid ${k} ticks after the stamp`);
  }
  net.tick('a');
  net.stabilize();
  t.equal(net.raft('a').ticks - since, 8);
  t.equal(net.raft('a').role, Role.Leader, 'still leader (check-quorum has not run yet)');
  t.equal(net.get('a').node.leaseRead(), undefined, 'leadership in doubt: no lease');
  // The fallback: a ReadIndex round, which b and c cannot answer while cut off.
  net.get('a').node.readIndex(Buffer.from('r'));
  net.stabilize();
  t.same(net.get('a').readStates, [], 'no read index without a quorum');
  net.heal();
  net.tick('a');
  net.stabilize();
  t.equal(net.get('a').readStates.length, 1, 'healed: the round completes');
  t.ok(net.get('a').node.leaseRead(), 'and the lease is renewed');
});

t.test('while the old leader’s lease holds, no other leader is elected (promises, across restarts)', async (t) => {
  for (const restartB of [false, true]) {
    const net = leaseCluster();
    net.isolate('a');
    if (restartB) net.restart('b', LEASE);
    // c campaigns at once (as a partitioned node with an early timeout would).
    net.get('c').node.campaign();
    let sawOther = false;
    for (let tick = 0; tick < 40; tick++) {
      net.stabilize();
      const others = net.leaders().filter((id) => id !== 'a');
      if (others.length > 0) sawOther = true;
      if (net.get('a').node.leaseRead() !== undefined) t.same(others, [], `tick ${tick}: a's lease holds, so no other leader${restartB ? ' (b restarted)' : ''}`);
      net.tickAll();
    }
    t.ok(sawOther, 'a new leader once the lease and the promises ran out');
  }
});

t.test('a promise outlives a term change without a leader', async (t) => {
  const net = leaseCluster();
  const b = net.raft('b');
  // A late answer from an old campaign moves b to a higher term, leaderless.
  net.get('b').node.step({ type: MessageType.VoteResp, from: 'c', to: 'b', term: b.term + 1, logTerm: 0, index: 0, entries: [], commit: 0, reject: true, rejectHint: 0 });
  t.equal(b.lead, '', 'b has no leader now');
  const last = net.raft('c').log.lastIndex();
  net.get('b').node.step({ type: MessageType.Vote, from: 'c', to: 'b', term: b.term, logTerm: net.raft('c').log.lastTerm(), index: last, entries: [], commit: 0, reject: false, rejectHint: 0 });
  net.processAll();
  const resp = net.take((m) => m.type === MessageType.VoteResp && m.from === 'b');
  t.equal(resp.length, 1);
  t.equal(resp[0]!.reject, true, 'b refuses a vote in that term while its promise holds');
});

t.test('ForgetLeader is ignored in lease mode', async (t) => {
  const net = leaseCluster();
  net.get('b').node.forgetLeader();
  t.equal(net.raft('b').lead, 'a');
});

t.test('a leadership transfer ends the lease at once', async (t) => {
  const net = leaseCluster();
  t.ok(net.get('a').node.leaseRead());
  net.get('a').node.transferLeader('b');
  t.equal(net.get('a').node.leaseRead(), undefined, 'transfer in progress');
  net.processAll();
  const timeoutNow = net.take((m) => m.type === MessageType.TimeoutNow);
  t.equal(timeoutNow.length, 1, 'TimeoutNow sent (b was caught up)');
  // Hold TimeoutNow back and let the transfer be abandoned: the lease stays revoked for the term.
  for (let i = 0; i < 12; i++) {
    net.tick('a');
    net.stabilize();
  }
  t.equal(net.raft('a').role, Role.Leader);
  t.equal(net.raft('a').leadTransferee, '', 'transfer abandoned');
  t.equal(net.get('a').node.leaseRead(), undefined, 'a TimeoutNow may still arrive: no lease in this term');
  for (const m of timeoutNow) net.deliver(m);
  net.stabilize();
  t.equal(net.raft('b').role, Role.Leader, 'the late TimeoutNow elects b past the promises');
});
