// A real cluster in one process: real WALs, block stores and TCP transport on
// loopback; only the processes are shared. Waits for conditions, never sleeps
// fixed times.
import t, { type Test } from 'tap';
import net from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { ClusterNode, type NodeConfig } from '../../src/cluster/node.ts';
import { parseHostPort } from '../../src/parse.ts';

const logger = pino({ level: process.env.XDEVICE_TEST_LOG ?? 'silent' });
const MiB = 1024 * 1024;

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function until(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Harness {
  dir: string;
  peers: Record<string, string>;
  nodes: Map<string, ClusterNode>;
  config(id: string, extra?: Partial<NodeConfig>): NodeConfig;
  start(id: string, extra?: Partial<NodeConfig>): Promise<ClusterNode>;
  leader(): ClusterNode | undefined;
}

async function harness(t: Test, ids: string[], tuning?: NodeConfig['tuning']): Promise<Harness> {
  const dir = await mkdtemp(join(tmpdir(), 'xdevice-cluster-'));
  const peers: Record<string, string> = {};
  for (const id of ids) peers[id] = `127.0.0.1:${await freePort()}`;
  const nodes = new Map<string, ClusterNode>();
  const secret = randomBytes(32);
  const h: Harness = {
    dir,
    peers,
    nodes,
    config: (id, extra) => {
      const peerListen = parseHostPort((extra?.peers?.[id] ?? peers[id])!);
      return {
        nodeId: id,
        dataDir: join(dir, id),
        peerListen,
        peers,
        peerAuth: { secret },
        devices: [{ name: 'default', size: 16 * MiB }],
        logger: logger.child({ node: id }),
        wal: { segmentBytes: 4 * MiB, direct: false },
        ...(tuning ? { tuning } : {}),
        ...extra,
      };
    },
    start: async (id, extra) => {
      const n = await ClusterNode.start(h.config(id, extra));
      nodes.set(id, n);
      return n;
    },
    leader: () => [...nodes.values()].find((n) => n.api.status().role === 'leader'),
  };
  t.teardown(async () => {
    for (const n of nodes.values()) await n.stop().catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
  });
  return h;
}

async function startCluster(t: Test, tuning?: NodeConfig['tuning']) {
  const h = await harness(t, ['n1', 'n2', 'n3'], tuning);
  await Promise.all(['n1', 'n2', 'n3'].map((id) => h.start(id)));
  await until('a leader and the default device everywhere', () => h.leader() !== undefined && [...h.nodes.values()].every((n) => n.devices.get('default') !== undefined));
  return h;
}

t.test('writes through the leader read back identically on every follower, and through a follower too', async (t) => {
  const h = await startCluster(t);
  const leader = h.leader()!;
  const followers = [...h.nodes.values()].filter((n) => n !== leader);
  const a = randomBytes(64 * 1024);
  await leader.devices.get('default')!.write(8192, a);
  for (const f of followers) t.same(await f.devices.get('default')!.read(8192, a.length), a, `read on ${f.api.status().id}`);
  const b = randomBytes(4096);
  await followers[0]!.devices.get('default')!.write(0, b);
  t.same(await leader.devices.get('default')!.read(0, 4096), b, 'a follower forwarded the write');
  t.same(await followers[1]!.devices.get('default')!.read(0, 4096), b, 'and the other follower sees it');
  // Trim and zeroes are replicated as holes.
  await followers[1]!.devices.get('default')!.trim(8192, 4096);
  await leader.devices.get('default')!.writeZeroes(12288, 4096);
  const expect = Buffer.from(a);
  expect.fill(0, 0, 8192);
  for (const n of h.nodes.values()) t.same(await n.devices.get('default')!.read(8192, a.length), expect, `holes on ${n.api.status().id}`);
  // The device table is replicated too.
  await followers[0]!.api.createDevice('second', 2 * MiB);
  await until('second device everywhere', () => [...h.nodes.values()].every((n) => n.devices.get('second')?.size === 2 * MiB));
  await t.rejects(leader.api.createDevice('second', MiB), { code: 'XDEVICE_ERR_EXISTS' });
  await leader.api.resizeDevice('second', 3 * MiB);
  t.equal(followers[1]!.devices.get('second')!.size === 3 * MiB || (await until('resize', () => followers[1]!.devices.get('second')?.size === 3 * MiB), true), true);
  await leader.api.deleteDevice('second');
  await until('second device gone', () => [...h.nodes.values()].every((n) => n.devices.get('second') === undefined));
  const st = leader.api.status();
  t.equal(st.peers.length, 2);
  t.ok(st.peers.every((p) => p.voter && p.match > 0));
});

t.test('the leader stops: a new one is elected, writes continue, the old one catches up on restart', async (t) => {
  const h = await startCluster(t);
  const old = h.leader()!;
  const oldId = old.api.status().id;
  const survivor = [...h.nodes.values()].find((n) => n !== old)!;
  const dev = () => survivor.devices.get('default')!;
  const written = new Map<number, Buffer>();
  for (let i = 0; i < 20; i++) {
    const data = randomBytes(4096);
    await dev().write(i * 4096, data);
    written.set(i, data);
  }
  await old.stop();
  h.nodes.delete(oldId);
  await until('a new leader', () => h.leader() !== undefined && h.leader() !== old);
  for (let i = 20; i < 40; i++) {
    const data = randomBytes(4096);
    await dev().write(i * 4096, data);
    written.set(i, data);
  }
  const back = await h.start(oldId);
  const commit = h.leader()!.api.status().commit;
  await until('the restarted node catches up', () => back.api.status().applied >= commit);
  for (const [i, data] of written) t.same(await back.devices.get('default')!.read(i * 4096, 4096), data, `block ${i} on the restarted node`);
});

t.test('a new node joins as a learner, catches up by snapshot, votes; then a node is removed', async (t) => {
  const h = await startCluster(t, { checkpointEntries: 50, walRetainEntriesMax: 0 });
  const leader = h.leader()!;
  const dev = leader.devices.get('default')!;
  const written = new Map<number, Buffer>();
  for (let i = 0; i < 200; i++) {
    const data = randomBytes(4096);
    await dev.write((i % 64) * 4096 * 4, data);
    written.set(i % 64, data);
  }
  await until('the leader compacted its log', () => (leader.api.status().logFirstIndex ?? 0) > 10);
  const n4addr = `127.0.0.1:${await freePort()}`;
  const n4 = await h.start('n4', { join: true, peers: { ...h.peers, n4: n4addr } });
  // Writes keep flowing while the node joins.
  let stop = false;
  const background = (async () => {
    let i = 0;
    while (!stop) {
      const data = randomBytes(4096);
      const slot = 64 + (i++ % 64);
      await leader.devices.get('default')!.write(slot * 4096 * 4, data);
      written.set(slot, data);
    }
  })();
  await leader.api.addNode('n4', n4addr);
  stop = true;
  await background;
  t.ok(leader.api.members().find((m) => m.id === 'n4')?.voter, 'n4 is a voter');
  const commit = leader.api.status().commit;
  await until('n4 catches up', () => n4.api.status().applied >= commit);
  for (const [slot, data] of written) t.same(await n4.devices.get('default')!.read(slot * 4096 * 4, 4096), data, `slot ${slot} on n4`);
  // Remove one of the founders (not the leader).
  const victim = [...h.nodes.values()].find((n) => n !== leader && n !== n4)!;
  const victimId = victim.api.status().id;
  await leader.api.removeNode(victimId);
  t.notOk(leader.api.members().some((m) => m.id === victimId), 'removed from the membership');
  await t.rejects(victim.devices.get('default')!.write(0, Buffer.alloc(512)), { code: 'ESHUTDOWN' }, 'the removed node refuses writes');
  const x = randomBytes(512);
  await n4.devices.get('default')!.write(0, x);
  t.same(await leader.devices.get('default')!.read(0, 512), x, 'the three remaining nodes still commit');
});

t.test('retention for a lagging follower is bounded in bytes: past it, the follower gets a snapshot', async (t) => {
  const h = await startCluster(t, { checkpointEntries: 20, walRetainEntriesMax: 1_000_000, walRetainBytesMax: 64 * 1024 });
  const leader = h.leader()!;
  const lagger = [...h.nodes.values()].find((n) => n !== leader)!;
  const laggerId = lagger.api.status().id;
  const matchBefore = leader.api.status().peers.find((p) => p.id === laggerId)!.match;
  await lagger.stop();
  h.nodes.delete(laggerId);
  const written = new Map<number, Buffer>();
  for (let i = 0; i < 100; i++) {
    const data = randomBytes(4096);
    await leader.devices.get('default')!.write((i % 32) * 4096, data);
    written.set(i % 32, data);
  }
  // 400 KiB behind is more than 64 KiB: the leader compacts past the follower.
  await until('the leader compacted past the stopped follower', () => (leader.api.status().logFirstIndex ?? 0) > matchBefore + 1);
  const back = await h.start(laggerId);
  const commit = leader.api.status().commit;
  await until('the follower catches up (by snapshot)', () => back.api.status().applied >= commit, 60_000);
  for (const [slot, data] of written) t.same(await back.devices.get('default')!.read(slot * 4096, 4096), data, `block ${slot}`);
});
