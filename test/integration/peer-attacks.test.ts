// Issue 10's attacks, replayed with raw sockets against a live 3-node cluster
// (each node a real process; the cluster authenticates peers with a secret
// file the attacker may or may not know). After every attack: no byte on the
// device changed, the member list is unchanged, every node is up and keeps
// committing, memory stays bounded, descriptors and threads return to their
// baseline, and the nodes restart cleanly.
import t from 'tap';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster, adminApi, clusterSecretFile, nodeCommand } from './helpers/launcher.ts';
import { PeerClient } from './helpers/peer-client.ts';
import { ROOT, waitFor } from './helpers/tools.ts';
import { freePorts } from './helpers/ports.ts';
import { readClusterSecret } from '../../src/cluster/peer-auth.ts';
import { encodeRaftMessage, encodeSnapBegin, encodeChallenge } from '../../src/cluster/codec.ts';
import { encodeWrite } from '../../src/device/commands.ts';
import { encodeStoreState } from '../../src/device/checkpoint.ts';
import { ConfChangeTransition, ConfChangeType, encodeConfChange } from '../../src/raft/confchange.ts';
import { EntryType, MessageType, message } from '../../src/raft/types.ts';
import { STAGING_DIR } from '../../src/device/snapshot-staging.ts';

const KiB = 1024;
const MiB = 1024 * KiB;

function proc(pid: number): { rssBytes: number; threads: number; fds: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)![1]);
  return { rssBytes: field('VmRSS') * KiB, threads: field('Threads'), fds: readdirSync(`/proc/${pid}/fd`).length };
}

const writeProp = (from: string, to: string, byte: number) =>
  encodeRaftMessage(
    message({ type: MessageType.Prop, from, to, entries: Array.from({ length: 16 }, (_, i) => ({ term: 0, index: 0, type: EntryType.Normal, data: encodeWrite({ clientId: 77 + i, seq: 1, firstUnacked: 1 }, i + 1, 0, Buffer.alloc(4096, byte)) })) }),
  );
const ghostProp = (from: string, to: string) =>
  encodeRaftMessage(
    message({
      type: MessageType.Prop,
      from,
      to,
      entries: [{ term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange({ transition: ConfChangeTransition.Auto, changes: [{ type: ConfChangeType.AddNode, nodeId: 'ghost' }], context: Buffer.from('127.0.0.1:1') }) }],
    }),
  );
const hugeTermHeartbeat = (from: string, to: string) => encodeRaftMessage(message({ type: MessageType.Heartbeat, from, to, term: Number.MAX_SAFE_INTEGER, commit: 0 }));

t.test('a stranger and a bad frame can neither write, reconfigure nor stop the cluster', async (t) => {
  const c = await Cluster.start({ devices: ['default:16MiB'] });
  t.teardown(() => c.stop());
  const secret = readClusterSecret(clusterSecretFile());
  const leader = await c.waitForLeader();
  const ids = c.ids;
  const followers = ids.filter((id) => id !== leader);
  const peerPort = (id: string) => c.node(id).peerPort;
  const pid = (id: string) => c.node(id).child.pid!;

  // Known contents, read back through every node.
  const pattern = Buffer.alloc(64 * KiB, 0x5a);
  const lc = await c.client(leader);
  await lc.write(0, pattern, { fua: true });
  await lc.close();
  const deviceUnchanged = async (what: string) => {
    for (const id of ids) {
      if (!c.live().some((n) => n.id === id)) continue;
      const cl = await c.client(id);
      const got = await cl.read(0, pattern.length);
      await cl.close();
      t.ok(got.equals(pattern), `${what}: ${id} still holds the pattern`);
    }
  };
  const membersOf = async (id: string) => ((await adminApi<{ members: { id: string }[] }>(c.node(id).adminPort, 'GET', '/members')).body.members.map((m) => m.id).sort());
  const members = await membersOf(leader);
  t.same(members, [...ids].sort());
  await new Promise((r) => setTimeout(r, 1000));
  const baseline = new Map(ids.map((id) => [id, proc(pid(id))]));
  const termBefore = (await c.status(leader)).term;

  await t.test('offline guess: the listener speaks first with a bare nonce, and nothing more to a dialer without the secret', async (t) => {
    const p = await PeerClient.connect(peerPort(leader));
    const first = await p.next(5000);
    t.ok(first, 'the listener sends its challenge before the dialer says anything');
    t.same(first?.length, encodeChallenge({ version: 2, nonce: Buffer.alloc(32) }).length - 4, 'a Challenge: version and nonce only');
    p.legacyHandshake('ghost', leader);
    await p.closed;
    t.same(p.received, [], 'no HelloAck/Welcome or MAC came back');
  });

  await t.test('unauthenticated write and ghost ConfChange (old handshake, guessed secret, no secret)', async (t) => {
    for (const id of ids) {
      const legacy = await PeerClient.connect(peerPort(id));
      legacy.legacyHandshake('ghost', id);
      legacy.send(writeProp('ghost', id, 0xee));
      legacy.send(ghostProp('ghost', id));
      await legacy.closed;
      for (const guess of [Buffer.from('secret'), Buffer.alloc(32), undefined]) {
        const p = await PeerClient.connect(peerPort(id));
        t.equal(await p.handshake(guess, 'ghost', id), false, `${id} refused a dialer with a guessed secret`);
        p.send(writeProp('ghost', id, 0xee));
        p.send(ghostProp('ghost', id));
        await p.closed;
      }
    }
    await new Promise((r) => setTimeout(r, 1500));
    await deviceUnchanged('after unauthenticated writes');
    t.same(await membersOf(leader), members, 'no ghost member');
  });

  await t.test('an authenticated non-member: its proposals and votes are dropped before Raft', async (t) => {
    for (const id of ids) {
      const p = await PeerClient.connect(peerPort(id));
      t.equal(await p.handshake(secret, 'ghost', id), true);
      p.send(writeProp('ghost', id, 0xee));
      p.send(ghostProp('ghost', id));
      p.send(encodeRaftMessage(message({ type: MessageType.Vote, from: 'ghost', to: id, term: termBefore + 5, logTerm: 1_000, index: 1_000_000 })));
      await new Promise((r) => setTimeout(r, 300));
      p.close();
    }
    await new Promise((r) => setTimeout(r, 1500));
    await deviceUnchanged('after proposals from a non-member');
    t.same(await membersOf(leader), members, 'no ghost member');
    t.equal(await c.waitForLeader(), leader, 'the leader stayed');
  });

  await t.test('a heartbeat with term 2^53-1 closes the link and stops nothing', async (t) => {
    for (const id of ids) {
      const legacy = await PeerClient.connect(peerPort(id));
      legacy.legacyHandshake('ghost', id);
      legacy.send(hugeTermHeartbeat('ghost', id));
      const p = await PeerClient.connect(peerPort(id));
      t.equal(await p.handshake(secret, 'ghost', id), true);
      p.send(hugeTermHeartbeat('ghost', id));
      await p.closed;
      t.ok(p.destroyed, `${id} closed the link of the out-of-range term`);
    }
    await new Promise((r) => setTimeout(r, 2000));
    t.equal(c.live().length, 3, 'every node is up');
    for (const id of ids) t.ok((await c.status(id)).term < 2 ** 48, `${id}'s term stayed sane`);
  });

  await t.test('48 MiB pre-auth frames on many connections: memory stays bounded', async (t) => {
    const before = proc(pid(leader)).rssBytes;
    const junk = Buffer.alloc(8 * MiB, 0x41);
    const conns = await Promise.all(Array.from({ length: 40 }, () => PeerClient.connect(peerPort(leader)).catch(() => undefined)));
    for (const p of conns) {
      if (!p) continue;
      const header = Buffer.alloc(5);
      header.writeUInt32LE(48 * MiB, 0);
      header[4] = 1;
      p.write(header);
      p.write(junk);
    }
    await Promise.all(conns.map((p) => p && Promise.race([p.closed, new Promise((r) => setTimeout(r, 10_000))])));
    t.ok(conns.every((p) => !p || p.destroyed), 'every connection was closed');
    const after = proc(pid(leader)).rssBytes;
    t.ok(after - before < 64 * MiB, `RSS grew by ${((after - before) / MiB).toFixed(1)} MiB (< 64 MiB)`);
  });

  await t.test('a member that is not the leader (its id taken while it is down) cannot stream a snapshot, nor leak with a bad device list', async (t) => {
    const victim = followers[0]!;
    const impersonated = followers[1]!;
    await c.kill(impersonated);
    await new Promise((r) => setTimeout(r, 500));
    const before = proc(pid(victim));
    const meta = { index: 1_000_000, term: 1, confState: { voters: ids, learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } };
    const state = (devices: number) =>
      encodeStoreState({
        clusterId: '',
        appliedIndex: 1_000_000,
        appliedTerm: 1,
        devices: Array.from({ length: devices }, (_, i) => ({ id: i % 3, name: `d${i}`, size: 4096 })),
        members: {},
        removed: [],
        dedup: [],
      } as unknown as Parameters<typeof encodeStoreState>[0]);
    const p = await PeerClient.connect(peerPort(victim));
    t.equal(await p.handshake(secret, impersonated, victim), true, 'authenticated as the dead member');
    p.send(encodeSnapBegin({ snapshotId: 1, metadata: meta, state: state(3) }));
    p.send(encodeSnapBegin({ snapshotId: 2, metadata: meta, state: state(300) }));
    p.send(encodeSnapBegin({ snapshotId: 3, metadata: meta, state: state(200) }));
    p.send(hugeTermHeartbeat(impersonated, victim));
    await p.closed;
    await new Promise((r) => setTimeout(r, 1000));
    t.notOk(existsSync(join(c.node(victim).dataDir, STAGING_DIR)), 'no staging area was created');
    const after = proc(pid(victim));
    t.ok(after.fds <= before.fds + 2, `descriptors back to baseline (${before.fds} → ${after.fds})`);
    t.ok(after.threads <= before.threads + 2, `threads back to baseline (${before.threads} → ${after.threads})`);
    await c.startNode(impersonated);
    await waitFor(`${impersonated} back in the cluster`, async () => (await c.status(impersonated)).leader !== '', 60_000);
  });

  await t.test('two processes with one id: the second is refused, no term changes', async (t) => {
    const twin = followers[0]!;
    const [nbd, adm, peer] = await freePorts(3);
    const peers = ids.map((id) => `${id}=127.0.0.1:${id === twin ? peer : peerPort(id)}`).join(',');
    const term0 = (await c.status(leader)).term;
    const child = spawn(
      process.execPath,
      nodeCommand(['--node-id', twin, '--data-dir', join(c.baseDir, 'twin'), '--nbd-listen', `127.0.0.1:${nbd}`, '--admin-listen', `127.0.0.1:${adm}`,
        '--peer-listen', `127.0.0.1:${peer}`, '--peers', peers, '--device', 'default:16MiB', `--cluster-secret-file=${clusterSecretFile()}`]),
      { cwd: ROOT, stdio: ['ignore', 'ignore', 'ignore'] },
    );
    t.teardown(() => {
      child.kill('SIGKILL');
    });
    await waitFor('the twin to try its links', async () => c.node(leader).output().includes('refused a second live link'), 60_000);
    await new Promise((r) => setTimeout(r, 3000));
    child.kill('SIGKILL');
    t.equal((await c.status(leader)).term, term0, 'the twin\'s campaigns never reached the cluster');
    t.equal(await c.waitForLeader(), leader);
  });

  // Every node up, committing, same members, the data intact, restarts clean.
  t.equal(c.live().length, 3, 'every node is up');
  t.same(await membersOf(leader), members);
  await deviceUnchanged('after every attack');
  const now = await c.waitForLeader();
  const more = Buffer.alloc(4096, 0x33);
  const cl = await c.client(now);
  await cl.write(1 * MiB, more, { fua: true });
  await cl.close();
  for (const id of ids) {
    await waitFor(`${id} to read the new write`, async () => {
      const r = await c.client(id);
      const got = await r.read(1 * MiB, 4096);
      await r.close();
      return got.equals(more);
    });
  }
  for (const id of ids) {
    const b = baseline.get(id)!;
    const a = proc(pid(id));
    t.ok(a.rssBytes < b.rssBytes + 128 * MiB, `${id} RSS ${(b.rssBytes / MiB).toFixed(0)} → ${(a.rssBytes / MiB).toFixed(0)} MiB`);
  }
  await c.kill(leader, 'SIGTERM');
  await c.startNode(leader);
  await c.waitForLeader();
  t.equal(c.live().length, 3, 'the old leader restarted cleanly');
  await deviceUnchanged('after a restart');
});
