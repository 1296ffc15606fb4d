// Admin API authorization against an in-process node: the route → role
// table (every row called by every role: refused with 403 exactly when the
// role is too low, 401 without credentials), anonymous reads, and the audit
// events a change, a refusal and a failed authentication leave; then the
// configuration rules for the admin listener (non-loopback needs
// credentials, admin-tls-* hang together) and admin-anonymous-read's parser.
import t from 'tap';
import { request } from 'node:http';
import { pino } from 'pino';
import { AdminServer } from '../../src/admin/server.ts';
import { createMetrics } from '../../src/admin/metrics.ts';
import { accessTable } from '../../src/admin/access.ts';
import { hashToken, mintToken, parseClientsFile } from '../../src/admin/clients-file.ts';
import { ROLES, ROUTES, roleAllows, type Role } from '../../src/admin/routes.ts';
import type { AuditEvent, AuditSink } from '../../src/audit/event.ts';
import { AdminClient } from '../../src/cli/admin-client.ts';
import { loadConfig } from '../../src/node/config.ts';
import { parseAnonymousReads, type AnonymousRead } from '../../src/parse.ts';
import { FakeNode } from './helpers/fake-node.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';

const seed = seedFromEnv();
console.log(`# XDEVICE_SEED=${seed}`);

/** The audit trail as a test sees it: every event, in order. */
class MemorySink implements AuditSink {
  readonly events: AuditEvent[] = [];
  record(event: AuditEvent): void {
    this.events.push(event);
  }
}

const tokens: Record<Role, string> = { viewer: mintToken(), operator: mintToken(), admin: mintToken() };

async function start(t: { teardown(fn: () => unknown): void }, anonymousReads: AnonymousRead[] = []) {
  const node = new FakeNode();
  const audit = new MemorySink();
  const lines = ROLES.map((r) => `token ${r.slice(0, 4)} ${r} sha256:${hashToken(tokens[r]).toString('hex')}`).join('\n');
  const access = accessTable(parseClientsFile(lines, 'clients'), { clientsFile: 'clients', token: '', anonymousReads });
  const server = new AdminServer({ node, metrics: createMetrics({ node, nbd: { connectionCount: 0, on() {} } as never }), logger: pino({ level: 'silent' }), access, audit });
  const { port } = await server.listen('127.0.0.1', 0);
  t.teardown(() => server.close());
  const endpoint = `127.0.0.1:${port}`;
  const call = async (token: string, method: string, path: string, body?: unknown) => await new AdminClient([endpoint], token).call<any>(endpoint, method, path, body);
  return { node, audit, port, call };
}

/** One request for each row of the route table; a row without one fails the test, so a new route gets checked. */
const SAMPLES: Record<string, { path: string; body?: unknown }> = {
  'GET /': { path: '/' },
  'GET /health': { path: '/health' },
  'GET /metrics': { path: '/metrics' },
  'GET /status': { path: '/status' },
  'GET /events': { path: '/events' },
  'GET /members': { path: '/members' },
  'GET /devices': { path: '/devices' },
  'GET /verify': { path: '/verify' },
  'GET /verify/:arg': { path: '/verify/1' },
  'GET /audit': { path: '/audit' },
  'POST /devices': { path: '/devices', body: { name: 'new', size: '1MiB' } },
  'PATCH /devices/:arg': { path: '/devices/default', body: { size: '2GiB' } },
  'DELETE /devices/:arg': { path: '/devices/new' },
  'POST /devices/:arg/verify': { path: '/devices/default/verify' },
  'GET /devices/:arg/snapshots': { path: '/devices/default/snapshots' },
  'POST /devices/:arg/snapshots': { path: '/devices/default/snapshots', body: { name: 's1' } },
  'DELETE /devices/:arg/snapshots': { path: '/devices/default/snapshots', body: { name: 's1' } },
  'POST /devices/:arg/disconnect': { path: '/devices/default/disconnect' },
  'POST /leader': { path: '/leader', body: { to: 'node2' } },
  'POST /devices/:arg/rekey': { path: '/devices/default/rekey' },
  'POST /keys/:arg': { path: '/keys/rotate' },
  'POST /members': { path: '/members', body: { id: 'node9', address: '127.0.0.1:9' } },
  'POST /members/:arg/promote': { path: '/members/node9/promote' },
  'DELETE /members/:arg': { path: '/members/node9' },
};

t.test('the route table: reads are viewer, device changes and leadership operator, membership admin; every change is audited', async (t) => {
  for (const [route, rule] of Object.entries(ROUTES)) {
    const method = route.split(' ')[0]!;
    t.equal(rule.audit !== undefined, method !== 'GET', `${route}: audited exactly when it changes something`);
    // The audit trail says who did what from where: only admins read it.
    if (route === 'GET /audit') t.equal(rule.role, 'admin', `${route} is admin`);
    else if (route.startsWith('GET ')) t.ok(rule.role === 'viewer' || rule.role === 'public', `${route} is a read`);
    if (/^(POST|PATCH|DELETE) \/devices|^POST \/leader/.test(route) && !route.endsWith('/rekey')) t.equal(rule.role, 'operator', `${route} is operator`);
    if (/^(POST|DELETE) \/members|^POST \/keys|\/rekey$/.test(route)) t.equal(rule.role, 'admin', `${route} is admin`);
    if (rule.audit) t.match(rule.audit.operation, /^[a-z]+\.[a-z]+$/, `${route}: a dotted operation name`);
  }
  t.equal(ROUTES['GET /']!.role, 'public', 'the status page holds no data');
  t.same(ROLES.filter((r) => roleAllows('operator', r)), ['viewer', 'operator'], 'roles are ordered');
});

t.test('every role is refused exactly what it may not do (403 naming the role needed); no credentials is 401', async (t) => {
  const { call } = await start(t);
  for (const route of Object.keys(ROUTES)) t.ok(SAMPLES[route], `${route} has a sample request in this test`);
  for (const role of ROLES) {
    for (const [route, rule] of Object.entries(ROUTES)) {
      const sample = SAMPLES[route]!;
      const method = route.split(' ')[0]!;
      const res = await call(tokens[role], method, sample.path, sample.body);
      const what = `${role} ${method} ${sample.path} → ${res.status} ${JSON.stringify(res.body).slice(0, 200)}`;
      if (rule.role === 'public' || roleAllows(role, rule.role)) {
        t.ok(res.status !== 401 && res.status !== 403, `allowed: ${what}`);
        t.not(res.body?.error?.code, 'XDEVICE_ERR_INTERNAL', `handled: ${what}`);
      } else {
        t.equal(res.status, 403, `refused: ${what}`);
        t.equal(res.body.error.code, 'XDEVICE_ERR_FORBIDDEN');
        t.equal(res.body.error.needs, rule.role);
        t.match(res.body.error.message, `has role ${role}; ${method} ${sample.path} needs ${rule.role}`);
      }
    }
  }
  for (const [route, rule] of Object.entries(ROUTES)) {
    const res = await call('', route.split(' ')[0]!, SAMPLES[route]!.path, SAMPLES[route]!.body);
    if (rule.role === 'public') t.equal(res.status, 200, `${route} needs no credentials`);
    else t.equal(res.status, 401, `${route} without credentials`);
  }
  const unknown = await call('', 'GET', '/no-such');
  t.equal(unknown.status, 401, 'an unknown route without credentials is 401, not 404: nothing is learned');
  t.equal((await call(tokens.viewer, 'GET', '/no-such')).status, 404);
});

function raw(port: number, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, headers }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

t.test('401 carries WWW-Authenticate; anonymous reads open only what the key names', async (t) => {
  const closed = await start(t);
  const res = await raw(closed.port, '/metrics');
  t.equal(res.status, 401);
  t.equal(res.headers['www-authenticate'], 'Bearer realm="xdevice"');
  t.equal((await raw(closed.port, '/health')).status, 401, 'closed by default once credentials exist');

  const open = await start(t, ['metrics']);
  t.equal((await raw(open.port, '/metrics')).status, 200, 'anonymous /metrics');
  t.equal((await raw(open.port, '/health')).status, 401, '/health stays closed');
  t.equal((await raw(open.port, '/status')).status, 401, 'and so does the rest');
  t.equal((await raw(open.port, '/metrics', { Authorization: 'Bearer wrong' })).status, 401, 'a wrong token is refused even where anonymous callers are let in');
  const both = await start(t, ['metrics', 'health']);
  t.equal((await raw(both.port, '/health')).status, 200);
});

t.test('audit: changes with principal, source, masked arguments and outcome; refusals and failed authentication', async (t) => {
  const { call, audit } = await start(t);
  const at = () => audit.events.length;
  let mark = at();
  t.equal((await call(tokens.operator, 'POST', '/devices', { name: 'wal', size: '64MiB', passphrase: 'hunter2' })).status, 201);
  t.equal(at(), mark + 1, 'one event for one change');
  t.match(audit.events.at(-1), {
    operation: 'device.create', principal: 'oper', source: /^127\.0\.0\.1:\d+$/, scope: 'cluster', outcome: 'ok',
    args: { path: '/devices', body: { name: 'wal', size: '64MiB', passphrase: '***' } },
  });
  t.notOk(JSON.stringify(audit.events).includes('hunter2'), 'the secret is not recorded');

  mark = at();
  t.equal((await call(tokens.operator, 'GET', '/devices')).status, 200);
  t.equal(at(), mark, 'reads are not recorded');

  t.equal((await call(tokens.admin, 'POST', '/members', { id: 'node1', address: '127.0.0.1:1' })).status, 409);
  t.match(audit.events.at(-1), { operation: 'member.add', principal: 'admi', outcome: 'refused', reason: /already a member/, scope: 'cluster' });
  t.equal((await call(tokens.operator, 'POST', '/devices/default/verify')).status, 501);
  t.match(audit.events.at(-1), { operation: 'device.verify', outcome: 'failed', reason: /needs --backend replicated/ });
  t.equal((await call(tokens.operator, 'DELETE', '/devices/wal?force=1')).status, 200);
  t.match(audit.events.at(-1), { operation: 'device.delete', outcome: 'ok', args: { path: '/devices/wal', query: { force: '1' } } });
  t.equal((await call(tokens.operator, 'POST', '/devices/default/disconnect')).status, 200);
  t.match(audit.events.at(-1), { operation: 'device.disconnect', scope: 'node', outcome: 'ok' });

  mark = at();
  t.equal((await call(tokens.viewer, 'POST', '/devices', { name: 'x', size: '1MiB' })).status, 403);
  t.equal(at(), mark + 1, 'a forbidden call is one event, and not a device.create');
  t.match(audit.events.at(-1), { operation: 'auth.forbidden', principal: 'view', scope: 'node', outcome: 'refused', args: { method: 'POST', path: '/devices', needs: 'operator', role: 'viewer' } });
  t.equal((await call('not-a-token', 'GET', '/status')).status, 401);
  t.match(audit.events.at(-1), { operation: 'auth.failure', principal: 'anonymous', scope: 'node', outcome: 'refused', reason: 'unknown bearer token', source: /^127\.0\.0\.1:\d+$/ });
  t.equal((await call('', 'DELETE', '/members/node1')).status, 401);
  t.match(audit.events.at(-1), { operation: 'auth.failure', reason: 'credentials required', args: { method: 'DELETE', path: '/members/node1' } });
});

t.test('with nothing configured the API stays open, and changes are recorded as anonymous', async (t) => {
  const node = new FakeNode();
  const audit = new MemorySink();
  const server = new AdminServer({ node, metrics: createMetrics({ node, nbd: { connectionCount: 0, on() {} } as never }), logger: pino({ level: 'silent' }), audit });
  const { port } = await server.listen('127.0.0.1', 0);
  t.teardown(() => server.close());
  const endpoint = `127.0.0.1:${port}`;
  t.equal((await new AdminClient([endpoint]).call(endpoint, 'POST', '/members', { id: 'node5', address: '127.0.0.1:5' })).status, 200);
  t.match(audit.events, [{ operation: 'member.add', principal: 'anonymous', outcome: 'ok' }]);
});

t.test('configuration: a non-loopback admin listener needs credentials; admin-tls-* hang together', async (t) => {
  const load = (flags: Record<string, string>) => loadConfig({ flags: new Map(Object.entries({ backend: 'memory', ...flags })), env: {} });
  for (const host of ['0.0.0.0:10819', '[::]:10819', '192.0.2.7:10819', 'example.com:1']) {
    t.throws(() => load({ 'admin-listen': host }), { code: 'XDEVICE_ERR_CONFIG', message: /reachable from other hosts and the admin API has no credentials: set admin-clients-file/ }, host);
    t.ok(load({ 'admin-listen': host, 'admin-clients-file': '/etc/xdevice/clients' }), `${host} with a clients file`);
    t.ok(load({ 'admin-listen': host, 'admin-token': 'x' }), `${host} with a token`);
  }
  for (const host of ['127.0.0.1:1', '127.3.4.5:1', '[::1]:1', 'localhost:1', ':1']) t.ok(load({ 'admin-listen': host }), `${host} is loopback: open is fine`);
  t.throws(() => load({ 'admin-tls-cert': 'c.pem' }), { message: 'admin-tls-cert and admin-tls-key go together' });
  t.throws(() => load({ 'admin-tls-ca': 'ca.pem' }), { message: /admin-tls-ca: client certificates need the HTTPS listener/ });
  t.throws(() => load({ 'admin-tls-ca': 'ca.pem', 'admin-tls-cert': 'c', 'admin-tls-key': 'k' }), { message: /"cert CN ROLE" line in admin-clients-file: set it/ });
  t.same(load({ 'admin-anonymous-read': 'metrics, health' }).config.adminAnonymousRead, ['metrics', 'health']);
  t.same(load({}).config.adminAnonymousRead, [], 'closed by default');
  t.throws(() => load({ 'admin-anonymous-read': 'status' }), { message: /--admin-anonymous-read: "status" cannot be opened to anonymous readers \(only metrics, health\)/ });
});

t.test('seeded fuzz: admin-anonymous-read gives a list of known names or says what is wrong', async (t) => {
  const random = makeRandom(seed);
  const pieces = ['metrics', 'health', 'status', ',', ' ', '', 'METRICS', '\t', 'é', ',,'];
  let parsed = 0;
  let refused = 0;
  for (let i = 0; i < 2000; i++) {
    let text = '';
    for (let n = random.int(0, 6); n > 0; n--) text += pieces[random.int(0, pieces.length - 1)];
    if (random.int(0, 4) === 0) text += random.bytes(random.int(1, 8)).toString('latin1');
    try {
      const out = parseAnonymousReads(text);
      if (new Set(out).size !== out.length || out.some((x) => x !== 'metrics' && x !== 'health')) t.fail(`${JSON.stringify(text)} → ${JSON.stringify(out)} (XDEVICE_SEED=${seed})`);
      parsed++;
    } catch (err) {
      if (!/cannot be opened to anonymous readers|given twice/.test((err as Error).message)) t.fail(`${JSON.stringify(text)}: ${(err as Error).message} (XDEVICE_SEED=${seed})`);
      refused++;
    }
  }
  t.ok(parsed > 0 && refused > 0, `of 2000 inputs ${parsed} parsed to known names, ${refused} refused saying why`);
});
