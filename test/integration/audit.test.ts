// The audit trail on a real 3-node cluster: membership changes (a node
// added as a learner, promoted by the leader, removed) are cluster events,
// written through Raft by every replica, so the founders' cluster trails are
// byte-identical and `xdevice-cli audit verify` passes on each, offline and
// online. A follower killed with SIGKILL replays its log at restart without
// writing a record twice. A hand-edited line is found, named by file and
// line, and verify exits 1.
import t from 'tap';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Cluster, adminApi } from './helpers/launcher.ts';
import { runCli, waitFor } from './helpers/tools.ts';

const TRAIL = join('audit', 'cluster-000001.jsonl');
const HEAD = join('audit', 'cluster.head');

t.test('cluster audit events go through Raft: identical, verified trails on every node', { timeout: 600_000 }, async (t) => {
  const c = await Cluster.start({ devices: ['default:16MiB'] });
  t.teardown(() => c.stop());
  const leader = await c.waitForLeader();
  const admin = (id: string) => c.slot(id).ports.admin;
  const trail = (id: string) => readFile(join(c.node(id).dataDir, TRAIL), 'utf8').catch(() => '');
  const records = async (id: string) => (await trail(id)).split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as { seq: number; operation: string; args: { changes: { type: string; node: string }[] } });
  const founders = [...c.ids];
  // Each membership change is recorded at apply (member.change); the admin call that asked for it is recorded
  // too, by the admin API (member.add, member.remove): `changes` of the one and `calls` of the other.
  const identical = (changes: number, calls: number) =>
    waitFor(`${changes} membership changes and ${calls} admin calls recorded, the same on ${founders.join(', ')}`, async () => {
      const texts = await Promise.all(founders.map(trail));
      const ops = texts[0]!.split('\n').filter((l) => l !== '').map((l) => (JSON.parse(l) as { operation: string }).operation);
      return ops.filter((o) => o === 'member.change').length === changes && ops.filter((o) => o === 'member.add' || o === 'member.remove').length === calls && texts.every((x) => x === texts[0]);
    }, 60_000);

  // A fourth node joins (a learner, promoted by the leader once caught up) and is removed again: three membership changes.
  const n4 = await c.startNode('n4', { join: true, members: [...c.ids, 'n4'] });
  const added = await adminApi(admin(leader), 'POST', '/members', { id: 'n4', address: `127.0.0.1:${n4.peerPort}` }, { timeoutMs: 120_000 });
  t.equal(added.status, 200, 'n4 added');
  await identical(2, 1);
  const removed = await adminApi(admin(leader), 'DELETE', '/members/n4');
  t.equal(removed.status, 200, 'n4 removed');
  await identical(3, 2);
  const all = await records(founders[0]!);
  t.same(all.filter((r) => r.operation !== 'member.change').map((r) => r.operation), ['member.add', 'member.remove'], 'each admin call recorded once');
  const ops = all.filter((r) => r.operation === 'member.change').map((r) => [r.operation, r.args.changes.map((ch) => `${ch.type} ${ch.node}`).join(',')]);
  t.same(ops, [['member.change', 'AddLearnerNode n4'], ['member.change', 'AddNode n4'], ['member.change', 'RemoveNode n4']], 'each membership change recorded once, in log order');
  const heads = await Promise.all(founders.map((id) => readFile(join(c.node(id).dataDir, HEAD), 'utf8')));
  t.ok(heads.every((h) => h === heads[0]), 'the same head on every node');

  for (const id of founders) {
    const v = await runCli(['audit', 'verify', '--data-dir', c.node(id).dataDir]);
    t.equal(v.code, 0, `audit verify --data-dir passes on ${id}`) || t.comment(v.stdout + v.stderr);
  }
  const endpoints = founders.map((id) => `127.0.0.1:${admin(id)}`).join(',');
  const online = await runCli(['--endpoints', endpoints, 'audit', 'verify']);
  t.equal(online.code, 0, 'audit verify through every endpoint passes') || t.comment(online.stdout + online.stderr);
  const list = await runCli(['--endpoints', endpoints, '-w', 'json', 'audit', 'list', '--scope', 'cluster', '--since', '1h']);
  t.equal(list.code, 0);
  t.same((JSON.parse(list.stdout) as { records: { seq: number }[] }).records.map((r) => r.seq), [1, 2, 3, 4, 5], 'audit list shows them');
  const table = await runCli(['--endpoints', endpoints, 'audit', 'list']);
  t.match(table.stdout, /member\.change/, 'and as a table');

  // SIGKILL a follower and restart it: it replays its log (no checkpoint since it started) and writes nothing twice.
  const follower = founders.find((id) => id !== leader)!;
  await c.kill(follower);
  await c.startNode(follower);
  await c.converged();
  await c.waitForLeader();
  t.equal((await records(follower)).length, 5, `${follower} has no duplicate after the replay`);
  // The chain goes on the same on all three: one more change (n5 added as a learner only).
  const n5 = await c.startNode('n5', { join: true, members: [...founders, 'n5'] });
  const leader2 = await c.waitForLeader(founders);
  const learner = await adminApi(admin(leader2), 'POST', '/members', { id: 'n5', address: `127.0.0.1:${n5.peerPort}`, promote: false }, { timeoutMs: 120_000 });
  t.equal(learner.status, 200, 'n5 added as a learner');
  await identical(4, 3);
  const v = await runCli(['audit', 'verify', '--data-dir', c.node(follower).dataDir]);
  t.equal(v.code, 0, `${follower}'s trail still verifies`) || t.comment(v.stdout + v.stderr);

  // A hand-edited record: verify exits 1 naming the file and the line.
  const victim = founders.find((id) => id !== follower)!;
  const path = join(c.node(victim).dataDir, TRAIL);
  const text = await readFile(path, 'utf8');
  const lines = text.split('\n');
  lines[1] = lines[1]!.replace('"outcome":"ok"', '"outcome":"failed"');
  await writeFile(path, lines.join('\n'));
  const offline = await runCli(['audit', 'verify', '--data-dir', c.node(victim).dataDir]);
  t.equal(offline.code, 1, 'audit verify --data-dir exits 1');
  t.match(offline.stderr, `${path}, line 2: record 2: its hash does not match its content: the record was edited`);
  const broken = await runCli(['--endpoints', endpoints, 'audit', 'verify']);
  t.equal(broken.code, 1, 'audit verify through the endpoints exits 1');
  t.match(broken.stderr, new RegExp(`127\\.0\\.0\\.1:${admin(victim)}: cluster trail: .*line 2: record 2`));
});
