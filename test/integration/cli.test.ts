// Every xdevice-cli command against a live 3-node cluster, in table and JSON
// form, with the exit codes scripts rely on.
import t from 'tap';
import { adminApi, startNode, Cluster } from './helpers/launcher.ts';
import { waitFor, runCli as cli } from './helpers/tools.ts';
import { freePorts } from './helpers/ports.ts';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';

t.test('xdevice-cli drives a live cluster', { timeout: 600_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:32MiB'] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();
  const endpoints = cluster.slots.map((s) => `127.0.0.1:${s.ports.admin}`).join(',');
  // A follower first: changes must still find their way to the leader.
  const followerFirst = [(leader + 1) % 3, (leader + 2) % 3, leader].map((i) => `127.0.0.1:${cluster.slots[i]!.ports.admin}`).join(',');

  const status = await cli(['--endpoints', endpoints, 'status']);
  t.equal(status.code, 0, status.stderr);
  t.match(status.stdout, /\| ENDPOINT +\| ID +\| ROLE/);
  t.equal((status.stdout.match(/\| leader +\|/g) ?? []).length, 1, 'exactly one leader in the table');
  const statusJson = await cli(['--endpoints', endpoints, '-w', 'json', 'status']);
  const rows = JSON.parse(statusJson.stdout) as { status: { id: string; role: string } }[];
  t.same(rows.map((r) => r.status.id).sort(), ['node1', 'node2', 'node3']);

  const members = JSON.parse((await cli(['--endpoints', followerFirst, '-w', 'json', 'members', 'list'])).stdout) as { members: { id: string; voter: boolean }[] };
  t.same(members.members.map((m) => m.id).sort(), ['node1', 'node2', 'node3']);
  t.ok(members.members.every((m) => m.voter));
  t.match((await cli(['--endpoints', followerFirst, 'members', 'list'])).stdout, /\| node2 +\| 127\.0\.0\.1:\d+ +\| voter/);

  // devices
  const created = await cli(['--endpoints', followerFirst, '-w', 'json', 'device', 'create', 'wal', '8MiB']);
  t.equal(created.code, 0, created.stderr);
  t.ok((JSON.parse(created.stdout) as { devices: { name: string; size: number }[] }).devices.some((d) => d.name === 'wal' && d.size === 8 * 1024 * 1024));
  const resized = await cli(['--endpoints', followerFirst, 'device', 'resize', 'wal', '16MiB']);
  t.equal(resized.code, 0, resized.stderr);
  t.match(resized.stdout, /\| wal +\| 16MiB/);
  // every node serves the new device
  for (const slot of cluster.slots) {
    await waitFor(`wal on ${slot.id}`, async () => {
      const list = JSON.parse((await cli(['--endpoints', `127.0.0.1:${slot.ports.admin}`, '-w', 'json', 'device', 'list'])).stdout) as { devices: { name: string; size: number }[] };
      return list.devices.some((d) => d.name === 'wal' && d.size === 16 * 1024 * 1024);
    });
  }
  const deleted = await cli(['--endpoints', endpoints, 'device', 'delete', 'wal']);
  t.equal(deleted.code, 0, deleted.stderr);
  t.notMatch(deleted.stdout, /\| wal /);
  const missing = await cli(['--endpoints', endpoints, 'device', 'delete', 'nope']);
  t.equal(missing.code, 1, 'deleting a missing device fails with exit 1');
  t.match(missing.stderr, /nope/);

  // Given only one follower, device changes are forwarded through Raft, and a
  // leader-only call finds the leader at the admin address it published
  // through Raft (PUBLISH_MEMBER).
  const lone = `127.0.0.1:${cluster.slots[(leader + 1) % 3]!.ports.admin}`;
  const viaFollower = await cli(['--endpoints', lone, 'device', 'create', 'aux', '4MiB']);
  t.equal(viaFollower.code, 0, viaFollower.stderr);
  t.match(viaFollower.stdout, /\| aux +\| 4MiB/);
  const leaderOnly = await cli(['--endpoints', lone, 'transfer-leader', '--to', cluster.slots[(leader + 1) % 3]!.id]);
  t.equal(leaderOnly.code, 0, `a leader-only call through a lone follower reaches the leader: ${leaderOnly.stderr}`);
  await waitFor(`${cluster.slots[(leader + 1) % 3]!.id} to lead`, async () => (await cluster.status((leader + 1) % 3))?.role === 'leader', 15_000);

  // transfer leadership
  const target = cluster.slots[(leader + 2) % 3]!.id;
  const moved = await cli(['--endpoints', followerFirst, 'transfer-leader', '--to', target]);
  t.equal(moved.code, 0, moved.stderr);
  await waitFor(`${target} to lead`, async () => (await cluster.status((leader + 2) % 3))?.role === 'leader', 15_000);

  // grow: a fourth node joins as a learner, catches up, votes
  const [nbd, admin, peer] = await freePorts(3);
  const peersWith4 = `${cluster.slots.map((s) => `${s.id}=127.0.0.1:${s.ports.peer}`).join(',')},node4=127.0.0.1:${peer}`;
  const node4 = await startNode({ id: 'node4', ports: { nbd: nbd!, admin: admin!, peer: peer! }, peers: peersWith4, devices: ['default:32MiB'], extraArgs: ['--join'] });
  t.teardown(() => node4.kill());
  const added = await cli(['--endpoints', followerFirst, '-w', 'json', 'add-node', '--id=node4', `--address=127.0.0.1:${peer}`]);
  t.equal(added.code, 0, `${added.stderr}\n${node4.output().slice(-3000)}`);
  t.match(added.stderr, /catching up node4.*caught up/s, 'progress is reported while it catches up');
  const withFour = JSON.parse(added.stdout) as { members: { id: string; voter: boolean }[] };
  t.ok(withFour.members.some((m) => m.id === 'node4'), 'node4 is a member');
  await waitFor('node4 to become a voter', async () => {
    const m = JSON.parse((await cli(['--endpoints', endpoints, '-w', 'json', 'members', 'list'])).stdout) as { members: { id: string; voter: boolean }[] };
    return m.members.find((x) => x.id === 'node4')?.voter === true;
  }, 60_000);
  const node4Status = (await adminApi(admin!, 'GET', '/status')).body as { applied: number };
  t.ok(node4Status.applied > 0, 'node4 applied the log');

  // shrink
  const removed = await cli(['--endpoints', endpoints, '-w', 'json', 'remove-node', '--id=node4']);
  t.equal(removed.code, 0, removed.stderr);
  t.notOk((JSON.parse(removed.stdout) as { members: { id: string }[] }).members.some((m) => m.id === 'node4'));

  // the live leader's metrics parse as Prometheus text, with replication figures
  const scraped = await adminApi(cluster.slots[(leader + 2) % 3]!.ports.admin, 'GET', '/metrics');
  t.equal(scraped.status, 200);
  const families = new Map(parsePrometheusTextFormat(scraped.body).map((f) => [f.name, f]));
  t.equal(families.get('xdevice_server_has_leader')?.metrics[0]?.value, '1');
  t.ok(Number(families.get('xdevice_raft_applied_index')?.metrics[0]?.value) > 0, 'applied index exported');
  t.equal(families.get('xdevice_disk_wal_fsync_duration_seconds')?.type, 'HISTOGRAM');
  t.ok(Number(families.get('xdevice_disk_wal_fsync_duration_seconds')?.metrics[0]?.count) > 0, 'WAL syncs observed');
  t.ok((families.get('xdevice_raft_replication_lag_entries')?.metrics.length ?? 0) >= 2, 'lag per peer on the leader');

  // health, attach on a kernel without nbd, usage and unreachable exit codes
  const health = await cli(['--endpoints', endpoints, 'health']);
  t.equal(health.code, 0, health.stdout + health.stderr);
  const attach = await cli(['--endpoints', endpoints, 'attach', '--device', '/dev/nbd-xdevice-test', '--export', 'default']);
  t.equal(attach.code, 5, 'exit 5 when the kernel cannot attach NBD');
  t.match(attach.stderr, /cannot attach NBD devices.*nbdfuse/s);
  // --persist (the default): our attacher, the node's NBD address first, the other members' as fallbacks.
  const nbdOf = (i: number) => `127.0.0.1:${cluster.slots[i]!.ports.nbd}`;
  const dry = await cli(['--endpoints', `127.0.0.1:${cluster.slots[1]!.ports.admin}`, '-w', 'json', 'attach', '--dry-run', '--export', 'default', '--connections', '4']);
  t.equal(dry.code, 0, dry.stderr);
  const [bin, ...args] = (JSON.parse(dry.stdout) as { command: string[] }).command;
  t.match(bin, /build\/Release\/xdevice-nbd-attach$/);
  t.same(args.slice(0, 6), ['--device', '/dev/nbd0', '--export', 'default', '--endpoint', nbdOf(1)]);
  t.same(new Set(args.slice(6, 10)), new Set(['--endpoint', nbdOf(0), '--endpoint', nbdOf(2)]), 'the other members as fallbacks');
  t.same(args.slice(10), ['--connections', '4', '--timeout', '60', '--dead-conn-timeout', '120']);
  const noFallbacks = await cli(['--endpoints', `127.0.0.1:${cluster.slots[1]!.ports.admin}`, '-w', 'json', 'attach', '--dry-run', '--no-fallbacks', '--dead-conn-timeout', '300']);
  t.same((JSON.parse(noFallbacks.stdout) as { command: string[] }).command.slice(1), ['--device', '/dev/nbd0', '--export', 'default', '--endpoint', nbdOf(1), '--connections', '1', '--timeout', '60', '--dead-conn-timeout', '300']);
  // --no-persist: nbd-client, as before.
  const legacy = await cli(['--endpoints', endpoints, '-w', 'json', 'attach', '--dry-run', '--no-persist', '--export', 'default', '--connections', '4']);
  t.equal(legacy.code, 0, legacy.stderr);
  t.match((JSON.parse(legacy.stdout) as { command: string[] }).command.join(' '), /nbd-client -N default -b 4096 -C 4 -timeout 60 127\.0\.0\.1 \d+ \/dev\/nbd0/);
  const legacyAttach = await cli(['--endpoints', endpoints, 'attach', '--no-persist', '--device', '/dev/nbd-xdevice-test']);
  t.equal(legacyAttach.code, 5, 'nbd-client too: exit 5 when the kernel cannot attach NBD');
  const unbuilt = await cli(['--endpoints', endpoints, 'attach', '--device', '/dev/nbd-xdevice-test'], { XDEVICE_NBD_ATTACH: '/nonexistent/xdevice-nbd-attach' });
  t.equal(unbuilt.code, 1, 'no attacher built: exit 1');
  t.match(unbuilt.stderr, /xdevice-nbd-attach is not built: run `npm install` \(or `npm rebuild`\)/);
  const detach = await cli(['--endpoints', endpoints, 'detach', '--device', '/dev/nbd-xdevice-test']);
  t.equal(detach.code, 5, 'detach: exit 5 when the kernel cannot attach NBD');
  t.match(detach.stderr, /cannot attach NBD devices/);
  t.equal((await cli(['--endpoints', endpoints, 'frobnicate'])).code, 2, 'usage error: exit 2');
  t.equal((await cli(['--endpoints', '127.0.0.1:1', 'members', 'list'])).code, 3, 'nothing reachable: exit 3');
});
