// Members publish their admin and NBD addresses through Raft (PUBLISH_MEMBER),
// so every member lists every member's addresses; a restart on other ports is
// republished everywhere; `status --cluster` asks every member at its
// published address, one row each, and shows a dead member as unreachable
// without failing.
import t from 'tap';
import { Cluster } from './helpers/launcher.ts';
import { freePorts } from './helpers/ports.ts';
import { runCli as cli, waitFor } from './helpers/tools.ts';
import { VERSION } from '../../src/version.ts';
import type { Member, NodeStatus } from '../../src/admin/api.ts';

interface Row {
  endpoint: string;
  id?: string;
  status?: NodeStatus;
  lag?: number;
  error?: string;
}

t.test('member addresses through Raft, status --cluster', { timeout: 600_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:16MiB'] });
  t.teardown(() => cluster.stop());
  const adminOf = (i: number) => `127.0.0.1:${cluster.slots[i]!.ports.admin}`;
  const nbdOf = (i: number) => `127.0.0.1:${cluster.slots[i]!.ports.nbd}`;
  const expected = () => cluster.slots.map((s, i) => ({ id: s.id, adminAddress: adminOf(i), nbdAddress: nbdOf(i) }));

  /** Every running member's `members list` shows every member's current addresses. */
  const everyoneAgrees = async (what: string, among: number[]) =>
    await waitFor(
      what,
      async () => {
        for (const i of among) {
          const run = await cli(['--endpoints', adminOf(i), '-w', 'json', 'members', 'list']);
          if (run.code !== 0) return false;
          const members = (JSON.parse(run.stdout) as { members: Member[] }).members;
          const seen = members.map((m) => ({ id: m.id, adminAddress: m.adminAddress, nbdAddress: m.nbdAddress })).sort((a, b) => a.id.localeCompare(b.id));
          if (JSON.stringify(seen) !== JSON.stringify(expected())) return false;
        }
        return true;
      },
      30_000,
      200,
    );

  await t.resolves(everyoneAgrees('every member to list all three admin and NBD addresses', [0, 1, 2]), 'every member lists all three admin and NBD addresses');
  const table = await cli(['--endpoints', adminOf(1), 'members', 'list']);
  t.equal(table.code, 0, table.stderr);
  for (let i = 0; i < 3; i++) {
    t.match(table.stdout, new RegExp(`\\| ${cluster.slots[i]!.id} +\\| 127\\.0\\.0\\.1:\\d+ +\\| voter +\\| ${adminOf(i).replace(/\./g, '\\.')} +\\| ${nbdOf(i).replace(/\./g, '\\.')} +\\| ${VERSION.replace(/\./g, '\\.')}`), `table row of ${cluster.slots[i]!.id}`);
  }

  // Some data, so every member's device file holds bytes.
  const nbd0 = await cluster.client(0);
  await nbd0.write(0, Buffer.alloc(1 << 20, 0x5a));
  await nbd0.close();
  await cluster.converged();

  // status --cluster: one endpoint given, every member asked.
  const json = await cli(['--endpoints', adminOf(0), '-w', 'json', 'status', '--cluster']);
  t.equal(json.code, 0, json.stderr);
  const rows = JSON.parse(json.stdout) as Row[];
  t.same(rows.map((r) => r.id).sort(), ['node1', 'node2', 'node3']);
  for (const r of rows) {
    const i = cluster.indexOf(r.id!);
    t.equal(r.endpoint, adminOf(i), `${r.id} asked at its published admin address`);
    t.equal(r.status?.id, r.id);
    t.equal(r.status?.version, VERSION);
    t.ok((r.status?.walBytes ?? 0) > 0, `${r.id}: WAL bytes on disk (${r.status?.walBytes})`);
    t.ok((r.status?.dataBytes ?? 0) >= 1 << 20, `${r.id}: data bytes (${r.status?.dataBytes}) cover the 1 MiB written`);
    t.ok((r.status?.freeBytes ?? 0) > 0, `${r.id}: free space (${r.status?.freeBytes})`);
    t.ok(r.lag !== undefined && r.lag >= 0, `${r.id}: lag ${r.lag}`);
  }
  t.equal(rows.filter((r) => r.status?.role === 'leader').length, 1, 'one leader');

  const wide = await cli(['--endpoints', adminOf(0), '-w', 'table', 'status', '--cluster']);
  t.equal(wide.code, 0, wide.stderr);
  t.comment(`status --cluster -w table:\n${wide.stdout}`);
  const lines = wide.stdout.trim().split('\n');
  t.match(lines[1], /\| ENDPOINT +\| ID +\| ROLE +\| TERM +\| LEADER +\| COMMIT\/APPLIED +\| LAG +\| VERSION +\| WAL +\| DATA +\| FREE +\| UPTIME +\| PEERS +\| ERROR +\|/);
  const body = lines.filter((l) => /^\| 127\.0\.0\.1/.test(l));
  t.equal(body.length, 3, `one row per member:\n${wide.stdout}`);
  for (const line of body) {
    const cells = line.split('|').slice(1, -1).map((c) => c.trim());
    t.match(cells[1], /^node[123]$/);
    t.match(cells[2], /^(leader|follower)$/);
    t.match(cells[5], /^\d+\/\d+$/, 'commit/applied');
    t.match(cells[6], /^\d+$/, 'lag');
    t.equal(cells[7], VERSION);
    t.match(cells[8], /^\d+(\.\d)? (B|KiB|MiB|GiB)$/, 'WAL bytes');
    t.match(cells[9], /^\d+(\.\d)? (B|KiB|MiB|GiB)$/, 'data bytes');
    t.match(cells[10], /^\d+(\.\d)? (B|KiB|MiB|GiB|TiB)$/, 'free');
    t.match(cells[11], /^\d+[smhd]/, 'uptime');
    t.equal(cells[12], '2/2', 'both peers connected');
    t.equal(cells[13], '', 'no error');
  }

  // Restart node3 on other NBD and admin ports: the new addresses reach every member.
  await cluster.kill(2, 'SIGTERM');
  const [nbd, admin] = await freePorts(2);
  const slot = cluster.slot(2);
  slot.ports = { ...slot.ports, nbd: nbd!, admin: admin! };
  await cluster.startNode(2);
  await t.resolves(everyoneAgrees('the new addresses of node3 on every member', [0, 1, 2]), 'node3 restarted on new ports: every member lists its new addresses');

  // A killed member is a row saying so; the command still succeeds.
  await cluster.kill(1);
  const down = await cli(['--endpoints', adminOf(0), '-w', 'json', 'status', '--cluster']);
  t.equal(down.code, 0, `a dead member does not fail status --cluster: ${down.stderr}`);
  const downRows = JSON.parse(down.stdout) as Row[];
  t.equal(downRows.length, 3);
  t.match(downRows.find((r) => r.id === 'node2'), { endpoint: adminOf(1), error: /unreachable/ });
  t.ok(downRows.filter((r) => r.id !== 'node2').every((r) => r.status), 'the others answer');
  const downTable = await cli(['--endpoints', adminOf(2), 'status', '--cluster']);
  t.equal(downTable.code, 0, downTable.stderr);
  t.comment(`with node2 killed:\n${downTable.stdout}`);
  t.match(downTable.stdout, new RegExp(`\\| ${adminOf(1).replace(/\./g, '\\.')} +\\| node2 +\\|.*unreachable`));
  // health --cluster reports it unhealthy (exit 1), naming it.
  const health = await cli(['--endpoints', adminOf(0), 'health', '--cluster']);
  t.equal(health.code, 1, 'health --cluster: exit 1 with a member down');
  t.match(health.stdout, /\| node2 +\|.*\| false +\| unreachable/);
});
