// The admin HTTP layer against an in-process NodeApi (the real node is driven
// by the integration tests): routing, the bearer token, error mapping, and
// metrics that a Prometheus text-format parser accepts.
import t from 'tap';
import { EventEmitter } from 'node:events';
import { pino } from 'pino';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { AdminServer } from '../../src/admin/server.ts';
import { accessTable } from '../../src/admin/access.ts';
import { FakeNode } from './helpers/fake-node.ts';
import { createMetrics } from '../../src/admin/metrics.ts';
import type { Member, NodeStatus } from '../../src/admin/api.ts';
import { AdminClient } from '../../src/cli/admin-client.ts';
import { VERSION } from '../../src/version.ts';

async function start(t: { teardown(fn: () => unknown): void }, token = '') {
  const node = new FakeNode();
  const nbd = new EventEmitter();
  const logged: string[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => logged.push(s) });
  Object.defineProperty(nbd, 'connectionCount', { get: () => 2 });
  const dataDir = mkdtempSync(join(tmpdir(), 'xdevice-admin-'));
  mkdirSync(join(dataDir, 'wal'));
  writeFileSync(join(dataDir, 'wal', 'seg'), Buffer.alloc(64 * 1024, 1));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const server = new AdminServer({ node, metrics: createMetrics({ node, nbd: nbd as never, dataDir }), logger, access: accessTable([], { clientsFile: '', token, anonymousReads: [] }) });
  const { port } = await server.listen('127.0.0.1', 0);
  t.teardown(() => server.close());
  return { node, nbd, logged, endpoint: `127.0.0.1:${port}` };
}

t.test('routes answer with JSON and map errors to statuses', async (t) => {
  const { endpoint, node } = await start(t);
  const c = new AdminClient([endpoint]);
  const status = (await c.call<NodeStatus>(endpoint, 'GET', '/status')).body;
  t.equal(status.term, 3);
  t.match(status, { version: VERSION, walBytes: 64 << 20, dataBytes: 4096, freeBytes: 5 << 30 }, 'GET /status carries the disk figures');
  t.equal((await c.call(endpoint, 'GET', '/health')).status, 200);
  node.healthy = false;
  t.equal((await c.call(endpoint, 'GET', '/health')).status, 503, 'unhealthy is 503');
  const added = await c.call<{ members: Member[] }>(endpoint, 'POST', '/members', { id: 'node4', address: '127.0.0.1:4' });
  t.equal(added.status, 200);
  t.ok(added.body.members.some((m) => m.id === 'node4' && m.learner));
  t.equal((await c.call(endpoint, 'POST', '/members', { id: 'node4', address: '127.0.0.1:4' })).status, 409);
  t.equal((await c.call(endpoint, 'POST', '/members', { id: 'x' })).status, 400, 'missing address');
  t.equal((await c.call(endpoint, 'DELETE', '/members/nope')).status, 404);
  t.equal((await c.call(endpoint, 'POST', '/leader', { to: 'node2' })).status, 421, 'not leader is 421');
  t.equal((await c.call(endpoint, 'POST', '/devices', { name: 'wal', size: '64MiB' })).status, 201);
  t.equal(node.deviceList.find((d) => d.name === 'wal')?.size, 64 * 1024 * 1024);
  t.equal((await c.call(endpoint, 'POST', '/devices', { name: 'bad', size: 'lots' })).status, 400);
  t.equal((await c.call(endpoint, 'GET', '/nope')).status, 404);
});

t.test('a bearer token is enforced and failures are logged', async (t) => {
  const { endpoint, logged } = await start(t, 's3cret');
  t.equal((await new AdminClient([endpoint]).call(endpoint, 'GET', '/status')).status, 401);
  t.equal((await new AdminClient([endpoint], 'wrong').call(endpoint, 'GET', '/metrics')).status, 401);
  t.equal((await new AdminClient([endpoint], 's3cret').call(endpoint, 'GET', '/status')).status, 200);
  t.ok(logged.some((l) => /bearer token/.test(l)), 'the refusal is logged');
});

t.test('metrics are valid Prometheus text with the etcd-style names', async (t) => {
  const { endpoint, node, nbd } = await start(t);
  node.emit('walSync', { durationSeconds: 0.0002, bytes: 8192 });
  node.emit('walFsync', { durationSeconds: 0.0001, bytes: 12288 });
  node.emit('walFsync', { durationSeconds: 0.0003, bytes: 4096 });
  node.emit('apply', { durationSeconds: 0.00002, entries: 4 });
  node.emit('leaderChange', { leader: 'node1', term: 3 });
  node.emit('proposal', { outcome: 'committed' });
  node.emit('proposal', { outcome: 'failed' });
  node.emit('peerRtt', { peer: 'node2', seconds: 0.0001 });
  nbd.emit('request', { command: 'write', bytes: 4096, durationNs: 250_000n });
  nbd.emit('request', { command: 'write', bytes: 512, durationNs: 250_000n });
  nbd.emit('request', { command: 'read', bytes: 4096, durationNs: 50_000, error: 'EIO' });
  const res = await new AdminClient([endpoint]).call<string>(endpoint, 'GET', '/metrics');
  t.equal(res.status, 200);
  const families = new Map(parsePrometheusTextFormat(res.body).map((f) => [f.name, f]));
  const fsync = families.get('xdevice_disk_wal_fsync_duration_seconds');
  t.equal(fsync?.type, 'HISTOGRAM');
  t.equal(fsync?.metrics[0]?.count, '2', 'the fsync histogram counts sync calls');
  t.equal(families.get('xdevice_disk_wal_write_duration_seconds')?.metrics[0]?.count, '1', 'the write histogram counts saves, apart');
  t.equal(families.get('xdevice_server_apply_duration_seconds')?.metrics[0]?.count, '1');
  t.equal(families.get('xdevice_server_applied_entries_total')?.metrics[0]?.value, '4');
  // standard names, unprefixed
  for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'process_start_time_seconds', 'nodejs_eventloop_lag_seconds', 'nodejs_heap_size_used_bytes']) {
    t.ok(families.has(name), `${name} is exported under its standard name`);
  }
  t.notOk([...families.keys()].some((n) => n.startsWith('xdevice_process_')), 'no prefixed process metrics');
  t.same(families.get('xdevice_build_info')?.metrics[0]?.labels, { version: VERSION, nodejs_version: process.versions.node });
  t.equal(families.get('xdevice_server_is_learner')?.metrics[0]?.value, '0');
  t.same(families.get('xdevice_network_peer_connected')?.metrics[0], { labels: { peer: 'node2' }, value: '1' });
  t.same(families.get('xdevice_network_peer_sent_failures_total')?.metrics[0], { labels: { peer: 'node2' }, value: '5' });
  t.same(families.get('xdevice_network_peer_sent_bytes_total')?.metrics[0], { labels: { peer: 'node2' }, value: '123456' });
  t.equal(families.get('xdevice_compression_bytes_in_total')?.metrics[0]?.value, '10000');
  t.equal(families.get('xdevice_compression_bytes_out_total')?.metrics[0]?.value, '3000');
  t.equal(families.get('xdevice_compression_bytes_saved_total')?.metrics[0]?.value, '7000');
  t.equal(families.get('xdevice_compression_snapshot_bytes_saved_total')?.metrics[0]?.value, '3072');
  t.equal(families.get('xdevice_compression_zero_writes_total')?.metrics[0]?.value, '1', 'zero writes turned into holes are counted');
  t.same(families.get('xdevice_health_check')?.metrics[0], { labels: { check: 'leader' }, value: '1' });
  t.equal(families.get('xdevice_nbd_connections')?.metrics[0]?.value, '2');
  t.match(res.body, /^xdevice_nbd_request_bytes_total\{command="write"\} 4608$/m);
  t.match(res.body, /^xdevice_nbd_request_bytes_total\{command="read"\} 4096$/m);
  t.ok(Number(families.get('xdevice_disk_wal_size_bytes')?.metrics[0]?.value) >= 64 * 1024, 'WAL bytes on disk');
  t.ok(Number(families.get('xdevice_disk_data_dir_free_bytes')?.metrics[0]?.value) > 0, 'free space in the data dir');
  t.equal(families.get('xdevice_snapshot_in_progress')?.metrics[0]?.value, '0');
  node.snapshot = { direction: 'sending', peer: 'node2', bytesDone: 100, bytesTotal: 400 };
  const during = (await new AdminClient([endpoint]).call<string>(endpoint, 'GET', '/metrics')).body;
  t.match(during, /^xdevice_snapshot_done_bytes\{direction="sending",peer="node2"\} 100$/m);
  t.match(during, /^xdevice_snapshot_size_bytes\{direction="sending",peer="node2"\} 400$/m);
  node.healthy = false;
  t.match((await new AdminClient([endpoint]).call<string>(endpoint, 'GET', '/metrics')).body, /^xdevice_health_check\{check="leader"\} 0$/m, 'a failing check is 0');

  // promtool's linter (naming, units, counters ending _total, HELP on every family)
  const lint = spawnSync('promtool', ['check', 'metrics'], { input: res.body, encoding: 'utf8' });
  t.equal(lint.error, undefined, 'promtool runs (scripts/setup-test-host.sh installs prometheus)');
  // prom-client's standard nodejs_active_*_total gauges keep the names every Node.js
  // dashboard queries; promtool's "_total on a gauge" about those three is the one
  // finding allowed. Anything else it says fails the test.
  const findings = (lint.stdout + lint.stderr).split('\n').map((l) => l.trim()).filter(Boolean);
  const allowed = /^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/;
  t.same(findings.filter((l) => !allowed.test(l)), [], 'promtool check metrics finds nothing in our own metrics');
  t.equal(families.get('xdevice_disk_wal_write_bytes_total')?.metrics[0]?.value, '8192');
  t.equal(families.get('xdevice_server_has_leader')?.metrics[0]?.value, '1');
  t.equal(families.get('xdevice_raft_log_first_index')?.metrics[0]?.value, '6', 'the compaction floor');
  t.equal(families.get('xdevice_server_checkpoint_index')?.metrics[0]?.value, '8');
  t.equal(families.get('xdevice_server_checkpoints_total')?.metrics[0]?.value, '2');
  t.equal(families.get('xdevice_disk_wal_compactions_total')?.metrics[0]?.value, '1');
  t.equal(families.get('xdevice_server_leader_changes_seen_total')?.metrics[0]?.value, '1');
  t.equal(families.get('xdevice_server_proposals_committed_total')?.metrics[0]?.value, '1');
  t.equal(families.get('xdevice_server_proposals_failed_total')?.metrics[0]?.value, '1');
  t.equal(families.get('xdevice_server_proposals_pending')?.metrics[0]?.value, '2');
  t.same(families.get('xdevice_raft_replication_lag_entries')?.metrics[0], { labels: { peer: 'node2' }, value: '3' });
  t.same(families.get('xdevice_device_disk_used_bytes')?.metrics[0], { labels: { device: 'default' }, value: '4096' });
  const nbdHist = families.get('xdevice_nbd_request_duration_seconds');
  // this parser merges the label sets of a histogram and drops their labels: check those in the text
  t.equal(nbdHist?.type, 'HISTOGRAM');
  t.match(res.body, /^xdevice_nbd_request_duration_seconds_count\{command="write"\} 2$/m);
  t.match(res.body, /^xdevice_nbd_request_duration_seconds_count\{command="read"\} 1$/m);
  t.equal(families.get('xdevice_nbd_request_errors_total')?.metrics[0]?.labels?.command, 'read');
  t.equal(families.get('xdevice_network_peer_round_trip_time_seconds')?.type, 'HISTOGRAM');
  t.match(res.body, /^xdevice_network_peer_round_trip_time_seconds_count\{peer="node2"\} 1$/m, 'per-peer series use the label peer');
});
