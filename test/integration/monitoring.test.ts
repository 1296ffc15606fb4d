// What an operator's monitoring sees, with the real tools: a 3-node cluster,
// Debian's Prometheus scraping every node with the shipped alert rules, and
// checks that
//   - promtool accepts the rules and their unit tests (synthetic series);
//   - promtool check metrics accepts what live nodes export;
//   - every query in the Grafana dashboard and every alert names a metric the
//     nodes export;
//   - Prometheus' HTTP API shows one leader, commit indexes and fsync counts,
//     and, after a node is SIGKILLed, the node-down and peer-down alerts pending.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { adminApi, Cluster } from './helpers/launcher.ts';
import { ROOT, tempDir, waitFor } from './helpers/tools.ts';
import { freePort } from './helpers/ports.ts';
import { NbdClient } from '../../src/nbd/client.ts';

const MONITORING = join(ROOT, 'monitoring');
const RULES = join(MONITORING, 'xdevice-alerts.yml');
// prom-client's standard gauges that keep their well-known names (see test/unit/admin.test.ts).
const ALLOWED_LINT = /^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/;

/** Sample names a /metrics text can contain: every TYPE'd family (histograms with their series suffixes). */
function exportedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    names.add(m[1]!);
    if (m[2] === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m[1]! + s);
    if (m[2] === 'summary') for (const s of ['_sum', '_count']) names.add(m[1]! + s);
  }
  return names;
}

/** Metric names in a PromQL expression: our families, the standard process/nodejs ones, and up. */
function metricsIn(expr: string): string[] {
  const noStrings = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""');
  return [...noStrings.matchAll(/\b(xdevice_[a-z0-9_]+|process_[a-z0-9_]+|nodejs_[a-z0-9_]+|up)\b/g)].map((m) => m[1]!);
}

/** Prometheus's own HTTP API (not ours): the status and the JSON (or text) it answered. */
async function promGet(port: number, path: string): Promise<{ status: number; body: any }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  return { status: res.status, body: (res.headers.get('content-type') ?? '').includes('json') ? JSON.parse(text) : text };
}

async function promQuery(port: number, query: string): Promise<{ metric: Record<string, string>; value: [number, string] }[]> {
  const body = (await promGet(port, `/api/v1/query?query=${encodeURIComponent(query)}`)).body as { status: string; data?: { result: { metric: Record<string, string>; value: [number, string] }[] }; error?: string };
  if (body.status !== 'success') throw new Error(`${query}: ${body.error}`);
  return body.data!.result;
}

t.test('promtool checks the alert rules and runs their unit tests', async (t) => {
  const check = spawnSync('promtool', ['check', 'rules', RULES], { encoding: 'utf8' });
  t.equal(check.status, 0, check.stdout + check.stderr);
  t.match(check.stdout, /SUCCESS: 8 rules found/);
  const unit = spawnSync('promtool', ['test', 'rules', 'xdevice-alerts.test.yml'], { cwd: MONITORING, encoding: 'utf8' });
  t.equal(unit.status, 0, unit.stdout + unit.stderr);
  t.match(unit.stdout, /SUCCESS/);
  const rules = readFileSync(RULES, 'utf8');
  for (const alert of ['XDeviceNoLeader', 'XDeviceFrequentLeaderChanges', 'XDeviceReplicationLag', 'XDeviceSlowFsync', 'XDeviceDiskNearlyFull', 'XDevicePeerDown', 'XDeviceNodeDown']) {
    t.match(rules, `alert: ${alert}\n`, `the rules file has ${alert}`);
    t.match(readFileSync(join(MONITORING, 'xdevice-alerts.test.yml'), 'utf8'), `alertname: ${alert}\n`, `${alert} has a unit test`);
  }
});

t.test('a real Prometheus scrapes a live 3-node cluster', { timeout: 300_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:16MiB'] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();

  // Some writes, so that the WAL and NBD histograms have samples on every node.
  const nbd = await NbdClient.connect({ host: '127.0.0.1', port: cluster.slots[leader]!.ports.nbd });
  await nbd.openDevice('default');
  for (let i = 0; i < 16; i++) await nbd.write(i * 4096, Buffer.alloc(4096, i + 1), { fua: true });
  await nbd.close();
  await cluster.converged();

  const texts: string[] = [];
  for (const slot of cluster.slots) {
    const res = await adminApi(slot.ports.admin, 'GET', '/metrics');
    t.equal(res.status, 200);
    texts.push(res.body);
    const lint = spawnSync('promtool', ['check', 'metrics'], { input: res.body, encoding: 'utf8' });
    const findings = (lint.stdout + lint.stderr).split('\n').map((l) => l.trim()).filter(Boolean);
    t.same(findings.filter((l) => !ALLOWED_LINT.test(l)), [], `promtool check metrics is clean on ${slot.id}`);
  }
  const exported = exportedNames(texts.join('\n'));
  exported.add('up'); // Prometheus' own per-target series

  // The dashboard and the alerts only query what nodes export.
  const dashboard = JSON.parse(readFileSync(join(MONITORING, 'grafana-dashboard.json'), 'utf8')) as {
    panels: { title: string; targets?: { expr: string }[] }[];
    templating: { list: { query?: unknown }[] };
  };
  const exprs: { where: string; expr: string }[] = [];
  for (const p of dashboard.panels) for (const target of p.targets ?? []) exprs.push({ where: `panel "${p.title}"`, expr: target.expr });
  for (const v of dashboard.templating.list) if (typeof v.query === 'string' && v.query.includes('(')) exprs.push({ where: 'a template variable', expr: v.query });
  for (const m of readFileSync(RULES, 'utf8').matchAll(/^\s+expr: (.+)$/gm)) exprs.push({ where: 'an alert', expr: m[1]! });
  t.ok(exprs.length > 30, `${exprs.length} queries checked`);
  for (const { where, expr } of exprs) {
    const names = metricsIn(expr);
    t.ok(names.length > 0, `${where} names a metric: ${expr}`);
    const unknown = names.filter((n) => !exported.has(n));
    t.same(unknown, [], `${where} queries only exported metrics: ${expr}`);
  }

  // Prometheus itself: free port, temporary storage, 1 s scrapes and rule evaluation.
  const promDir = tempDir('prometheus');
  const promPort = await freePort();
  const config = [
    'global:',
    '  scrape_interval: 1s',
    '  evaluation_interval: 1s',
    'rule_files:',
    `  - ${RULES}`,
    'scrape_configs:',
    '  - job_name: xdevice',
    '    static_configs:',
    `      - targets: [${cluster.slots.map((s) => `'127.0.0.1:${s.ports.admin}'`).join(', ')}]`,
  ].join('\n');
  writeFileSync(join(promDir, 'prometheus.yml'), config + '\n');
  const prom = spawn(
    'prometheus',
    [`--config.file=${join(promDir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(promDir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let promLog = '';
  prom.stdout!.on('data', (c: Buffer) => (promLog += c.toString()));
  prom.stderr!.on('data', (c: Buffer) => (promLog += c.toString()));
  const promExited = new Promise((r) => prom.once('exit', r));
  t.teardown(async () => {
    if (prom.exitCode === null && prom.signalCode === null) prom.kill('SIGTERM');
    await promExited;
  });
  await waitFor('Prometheus to be ready', async () => {
    if (prom.exitCode !== null) throw new Error(`prometheus exited: ${promLog}`);
    return (await promGet(promPort, '/-/ready')).status === 200;
  }, 60_000, 250);

  const up = await waitFor('every node scraped', async () => {
    const r = await promQuery(promPort, 'up{job="xdevice"} == 1');
    return r.length === 3 ? r : undefined;
  }, 60_000, 500);
  t.same(up.map((r) => r.metric.instance).sort(), cluster.slots.map((s) => `127.0.0.1:${s.ports.admin}`).sort(), 'Prometheus scrapes every node');
  const leaders = await promQuery(promPort, 'xdevice_server_is_leader{job="xdevice"} == 1');
  t.equal(leaders.length, 1, 'exactly one node reports itself leader');
  t.equal(leaders[0]!.metric.instance, `127.0.0.1:${cluster.slots[leader]!.ports.admin}`, 'the leader the cluster reports');
  const commits = await promQuery(promPort, 'xdevice_raft_commit_index{job="xdevice"}');
  t.equal(commits.length, 3);
  t.ok(commits.every((r) => Number(r.value[1]) >= 16), 'every node reports a commit index past the 16 writes');
  const fsyncs = await promQuery(promPort, 'xdevice_disk_wal_fsync_duration_seconds_count{job="xdevice"}');
  t.equal(fsyncs.length, 3);
  t.ok(fsyncs.every((r) => Number(r.value[1]) > 0), 'every node reports WAL fsyncs');
  const p99 = await promQuery(promPort, 'histogram_quantile(0.99, sum by (le) (xdevice_disk_wal_fsync_duration_seconds_bucket{job="xdevice"}))');
  t.ok(Number(p99[0]?.value[1]) > 0 && Number(p99[0]?.value[1]) < 5, `fsync p99 is a real duration (${p99[0]?.value[1]} s)`);

  const rules = (await promGet(promPort, '/api/v1/rules')).body as { data: { groups: { rules: { name: string; health: string }[] }[] } };
  const loaded = rules.data.groups.flatMap((g) => g.rules);
  t.equal(loaded.length, 8, 'Prometheus loaded the 8 rules');
  t.ok(loaded.every((r) => r.health !== 'err'), 'no rule fails to evaluate');

  // One node dies: Prometheus sees it down, and the survivors' peer links down.
  const victim = (leader + 1) % 3;
  const victimInstance = `127.0.0.1:${cluster.slots[victim]!.ports.admin}`;
  await cluster.kill(victim);
  const alerts = await waitFor('node-down and peer-down alerts', async () => {
    const body = (await promGet(promPort, '/api/v1/alerts')).body as { data: { alerts: { labels: Record<string, string>; state: string }[] } };
    const a = body.data.alerts;
    const nodeDown = a.find((x) => x.labels.alertname === 'XDeviceNodeDown' && x.labels.instance === victimInstance);
    const peerDown = a.filter((x) => x.labels.alertname === 'XDevicePeerDown' && x.labels.peer === cluster.slots[victim]!.id);
    return nodeDown && peerDown.length === 2 ? a : undefined;
  }, 60_000, 500);
  t.ok(alerts.some((a) => a.labels.alertname === 'XDeviceNodeDown' && ['pending', 'firing'].includes(a.state)), 'XDeviceNodeDown is pending for the killed node');
  t.notOk(alerts.some((a) => a.labels.alertname === 'XDeviceNoLeader'), 'two of three keep a leader: no no-leader alert');
});
