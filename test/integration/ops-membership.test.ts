// Membership slips against real processes: add-node to an address where
// nothing listens (a 1-node cluster keeps committing), a joining node that
// stays a learner until its snapshot is installed, an interrupted add-node
// (a learner that `members list` shows and remove-node removes), `members
// promote`, a removed node's exit code, and health after a leader kill.
import t from 'tap';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { startNode, type NodeProcess, adminApi as api, Cluster } from './helpers/launcher.ts';
import { CLI_BIN, waitFor, runCli as cli } from './helpers/tools.ts';
import { freePorts } from './helpers/ports.ts';
import { EXIT_REMOVED } from '../../src/exit-codes.ts';
import type { HealthReport, Member, NodeStatus } from '../../src/admin/api.ts';

const members = async (port: number): Promise<Member[]> => (await api<{ members: Member[] }>(port, 'GET', '/members')).body.members;

/** Writes `count` 4 MiB chunks through nbdsh: few, large entries (the commit index stays small). */
async function fill(nbdPort: number, count: number): Promise<void> {
  const script = [`h.connect_uri("nbd://127.0.0.1:${nbdPort}/default")`, `for i in range(${count}):`, '    h.pwrite(bytes([65 + i]) * (4 << 20), i * (4 << 20))', 'h.shutdown()'].join('\n');
  const code = await new Promise<number | null>((resolve) => spawn('/usr/bin/nbdsh', ['-c', script], { stdio: 'inherit', env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } }).on('exit', resolve));
  if (code !== 0) throw new Error(`nbdsh exited ${code}`);
}

t.test('add-node to an address where nothing listens: refused, and a 1-node cluster keeps committing', { timeout: 120_000 }, async (t) => {
  const node = await startNode({ id: 'node1' });
  t.teardown(() => node.kill());
  const E = `127.0.0.1:${node.adminPort}`;
  const [dead] = await freePorts(1);
  const added = await cli(['--endpoints', E, 'add-node', '--id=node2', `--address=127.0.0.1:${dead}`]);
  t.equal(added.code, 1, 'add-node is refused (exit 1)');
  t.match(added.stderr, /cannot connect to and authenticate node2/, 'saying why');
  t.same((await members(node.adminPort)).map((m) => m.id), ['node1'], 'no member was added');
  const created = await cli(['--endpoints', E, 'device', 'create', 'after', '1MiB']);
  t.equal(created.code, 0, `the cluster still commits: ${created.stderr}`);
});

t.test('joining: a learner until its snapshot is installed; interrupted add-node; promote; remove; exit code', { timeout: 300_000 }, async (t) => {
  const env = { XDEVICE_CHECKPOINT_ENTRIES: '3', XDEVICE_WAL_RETAIN_ENTRIES: '0' };
  const n1 = await startNode({ id: 'node1', env });
  const procs: NodeProcess[] = [n1];
  t.teardown(async () => {
    for (const p of procs) await p.kill();
  });
  const E = `127.0.0.1:${n1.adminPort}`;
  await fill(n1.nbdPort, 6); // 24 MiB in 6 entries: the commit index stays far below 64
  const leaderStatus = (await api<NodeStatus>(n1.adminPort, 'GET', '/status')).body;
  t.ok(leaderStatus.commit < 64, `commit ${leaderStatus.commit} < 64 (where commit - 64 bounds nothing)`);
  t.ok((leaderStatus.logFirstIndex ?? 0) > 1, 'the leader compacted its log: a joiner needs a snapshot');

  // node2's disk is slow, so installing the snapshot takes a while.
  const [nbd2, admin2, peer2] = await freePorts(3);
  const faults2 = `${n1.dataDir}-node2-faults.json`;
  writeFileSync(faults2, JSON.stringify({ delayUs: 60_000 }));
  const n2 = await startNode({
    id: 'node2',
    ports: { nbd: nbd2!, admin: admin2!, peer: peer2! },
    peers: `node1=127.0.0.1:${n1.peerPort},node2=127.0.0.1:${peer2}`,
    extraArgs: ['--join'],
    env: { ...env, XDEVICE_FAULT_FILE: faults2 },
  });
  procs.push(n2);
  const add = await api(n1.adminPort, 'POST', '/members', { id: 'node2', address: `127.0.0.1:${peer2}`, wait: false }, { timeoutMs: 120_000 });
  t.equal(add.status, 200, 'node2 added');
  const samples: { voter: boolean; receiving: boolean; applied: number }[] = [];
  await waitFor(
    'node2 to become a voter',
    async () => {
      // The leader's view first: a joiner seen receiving after that was promoted too early.
      const voter = (await members(n1.adminPort)).find((m) => m.id === 'node2')?.voter ?? false;
      const s = (await api<NodeStatus>(admin2!, 'GET', '/status')).body;
      samples.push({ voter, receiving: s.snapshot?.direction === 'receiving', applied: s.applied });
      return voter;
    },
    120_000,
    25,
  );
  t.ok(samples.some((s) => !s.voter && s.receiving), 'seen as a learner while its snapshot was being received');
  t.notOk(samples.some((s) => s.voter && s.receiving), 'never a voter while receiving its snapshot');
  const firstVoter = samples.find((s) => s.voter)!;
  t.ok(firstVoter.applied >= leaderStatus.commit, `promoted only once caught up (applied ${firstVoter.applied} >= ${leaderStatus.commit})`);
  writeFileSync(faults2, '{}');

  // An interrupted add-node: node3 cannot catch up (its disk is very slow); Ctrl-C the CLI.
  const [nbd3, admin3, peer3] = await freePorts(3);
  const faults3 = `${n1.dataDir}-node3-faults.json`;
  writeFileSync(faults3, '{}');
  const n3 = await startNode({
    id: 'node3',
    ports: { nbd: nbd3!, admin: admin3!, peer: peer3! },
    peers: `node1=127.0.0.1:${n1.peerPort},node2=127.0.0.1:${peer2},node3=127.0.0.1:${peer3}`,
    extraArgs: ['--join'],
    env: { ...env, XDEVICE_FAULT_FILE: faults3 },
  });
  procs.push(n3);
  writeFileSync(faults3, JSON.stringify({ delayUs: 2_000_000 }));
  await new Promise((r) => setTimeout(r, 500)); // the fault file is polled
  const adding = spawn(process.execPath, [CLI_BIN, '--endpoints', E, 'add-node', '--id=node3', `--address=127.0.0.1:${peer3}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let addingErr = '';
  adding.stderr!.on('data', (c: Buffer) => (addingErr += c.toString()));
  await waitFor('node3 to be a learner', async () => (await members(n1.adminPort)).some((m) => m.id === 'node3' && m.learner), 60_000);
  await new Promise((r) => setTimeout(r, 500)); // the CLI is polling by now
  adding.kill('SIGINT');
  const addingExit = await new Promise<number | null>((r) => adding.once('exit', (code) => r(code)));
  t.equal(addingExit, 1, 'the interrupted add-node exits 1');
  t.match(addingErr, /interrupted: node3 stays a learner.*remove-node --id=node3/, 'with a hint');
  const listed = await cli(['--endpoints', E, 'members', 'list']);
  t.match(listed.stdout, /\| node3 +\| 127\.0\.0\.1:\d+ +\| learner/, 'members list shows the learner');
  const early = await cli(['--endpoints', E, 'members', 'promote', 'node3']);
  t.equal(early.code, 1, 'members promote refuses a learner that has not caught up');
  t.match(early.stderr, /cannot vote yet/);
  const removed = await cli(['--endpoints', E, 'remove-node', '--id=node3']);
  t.equal(removed.code, 0, `remove-node removes the learner: ${removed.stderr}`);
  t.notOk((await members(n1.adminPort)).some((m) => m.id === 'node3'), 'gone from the member list');
  t.equal((await cli(['--endpoints', E, 'device', 'create', 'still', '1MiB'])).code, 0, 'the cluster commits');

  // members promote on a caught-up learner added with --no-promote.
  const readd = await api(n1.adminPort, 'DELETE', '/members/node2');
  t.equal(readd.status, 200, 'node2 removed');
  const exit2 = await Promise.race([n2.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 30_000).unref())]);
  t.equal(exit2?.code, EXIT_REMOVED, `a removed node exits with its own code (${EXIT_REMOVED})`);
  t.match(n2.output(), /removed from the cluster; exiting/);
});

t.test('members promote makes a caught-up learner a voter', { timeout: 180_000 }, async (t) => {
  const n1 = await startNode({ id: 'node1' });
  const [nbd2, admin2, peer2] = await freePorts(3);
  const n2 = await startNode({
    id: 'node2',
    ports: { nbd: nbd2!, admin: admin2!, peer: peer2! },
    peers: `node1=127.0.0.1:${n1.peerPort},node2=127.0.0.1:${peer2}`,
    extraArgs: ['--join'],
  });
  t.teardown(async () => {
    await n2.kill();
    await n1.kill();
  });
  const E = `127.0.0.1:${n1.adminPort}`;
  const added = await cli(['--endpoints', E, '-w', 'json', 'add-node', '--id=node2', `--address=127.0.0.1:${peer2}`, '--no-promote']);
  t.equal(added.code, 0, added.stderr);
  t.ok((await members(n1.adminPort)).find((m) => m.id === 'node2')?.learner, 'still a learner');
  const promoted = await cli(['--endpoints', E, 'members', 'promote', 'node2']);
  t.equal(promoted.code, 0, promoted.stderr);
  t.ok((await members(n1.adminPort)).find((m) => m.id === 'node2')?.voter, 'a voter now');
});

t.test('after a leader kill, a follower’s health does not count voters it cannot see', { timeout: 180_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:16MiB'] });
  t.teardown(() => cluster.stop());
  const old = await cluster.leaderIndex();
  await cluster.kill(old);
  const leader = await waitFor('a new leader', async () => {
    for (let i = 0; i < 3; i++) if (i !== old && (await cluster.status(i))?.role === 'leader') return i + 1;
    return undefined;
  }).then((i) => i - 1);
  const follower = [0, 1, 2].find((i) => i !== old && i !== leader)!;
  const health = async (i: number) => (await api<HealthReport>(cluster.slots[i]!.ports.admin, 'GET', '/health')).body;
  const fh = await waitFor('the follower to know the new leader', async () => {
    const h = await health(follower);
    return h.checks.find((c) => c.name === 'leader')?.ok ? h : undefined;
  });
  const fq = fh.checks.find((c) => c.name === 'quorum')!;
  t.ok(fq.ok, `follower: quorum ok (${fq.detail})`);
  t.match(fq.detail, new RegExp(`leader ${cluster.slots[leader]!.id} is reachable`), 'the follower defers to the leader’s view');
  t.notMatch(fq.detail, /\d+ of \d+ voters reachable/, 'and counts nothing it cannot see');
  const lq = (await health(leader)).checks.find((c) => c.name === 'quorum')!;
  t.equal(lq.detail, '2 of 3 voters reachable from the leader', 'the leader counts what it reaches');
  t.ok(lq.ok);
  t.ok(typeof fh.space?.freeBytes === 'number' && fh.space.freeBytes > 0, '/health reports free space');
});
