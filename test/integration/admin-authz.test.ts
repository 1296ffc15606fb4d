// Admin API authorization on a real node with the real CLI: clients minted by
// `xdevice-cli client add`, each role refused exactly what it may not do
// (HTTP 401/403, CLI exit 4 naming the role needed), SIGHUP adding and
// removing a client (and keeping the old table when the new file is bad),
// start-up refusals, HTTPS with client certificates (CN → role; a
// certificate from another CA refused), and anonymous /metrics only when
// admin-anonymous-read says so.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { adminApi, nodeCommand, startNode, type NodeProcess } from './helpers/launcher.ts';
import { freePort } from './helpers/ports.ts';
import { run, runCli, tempDir, waitFor } from './helpers/tools.ts';
import { AdminClient, type AdminClientTls } from '../../src/cli/admin-client.ts';

async function mint(file: string, name: string, role: string): Promise<string> {
  const res = await runCli(['client', 'add', '--name', name, '--role', role, '--file', file]);
  if (res.code !== 0) throw new Error(`client add ${name}: ${res.stderr}`);
  return res.stdout.split('\n')[0]!;
}

/** Waits until the node serves its devices to `client` (the launcher's own readiness check has no credentials). */
async function serving(node: NodeProcess, client: AdminClient): Promise<void> {
  await waitFor(`${node.id} to serve its devices`, async () => {
    if (!node.alive()) throw new Error(`${node.id} exited:\n${node.output().slice(-3000)}`);
    const res = await client.call<{ devices?: { name: string }[] }>(client.endpoints[0]!, 'GET', '/devices').catch(() => undefined);
    return res?.status === 200 && res.body.devices?.some((d) => d.name === 'default');
  }, 60_000);
}

t.test('tokens: each role refused exactly what it may not do; SIGHUP adds and removes clients', { timeout: 300_000 }, async (t) => {
  const dir = tempDir('authz');
  const file = join(dir, 'clients');
  const tokens = { viewer: await mint(file, 'ann', 'viewer'), operator: await mint(file, 'oscar', 'operator'), admin: await mint(file, 'ada', 'admin') };
  t.equal((await runCli(['client', 'add', '--name', 'ann', '--role', 'admin', '--file', file])).code, 1, 'a second "ann" is refused');
  const node = await startNode({ extraArgs: [`--admin-clients-file=${file}`], waitReady: false });
  t.teardown(() => node.kill());
  const endpoint = `127.0.0.1:${node.adminPort}`;
  await serving(node, new AdminClient([endpoint], tokens.admin));
  const cli = (token: string, ...args: string[]) => runCli(['--endpoints', endpoint, ...(token ? ['--token', token] : []), ...args]);
  const api = (token: string, method: string, path: string, body?: unknown) => adminApi(node.adminPort, method, path, body, { token });

  // HTTP: what each role gets from each kind of call.
  const calls: [string, string, unknown, 'viewer' | 'operator' | 'admin'][] = [
    ['GET', '/status', undefined, 'viewer'],
    ['GET', '/health', undefined, 'viewer'],
    ['GET', '/members', undefined, 'viewer'],
    ['GET', '/devices', undefined, 'viewer'],
    ['GET', '/metrics', undefined, 'viewer'],
    ['POST', '/devices', { name: 'probe', size: '1MiB' }, 'operator'],
    ['PATCH', '/devices/probe', { size: '2MiB' }, 'operator'],
    ['DELETE', '/devices/probe', undefined, 'operator'],
    ['POST', '/leader', { to: 'node1' }, 'operator'],
    ['POST', '/members', { id: 'node9', address: `127.0.0.1:${await freePort()}`, wait: false }, 'admin'],
    ['POST', '/members/node9/promote', undefined, 'admin'],
    ['DELETE', '/members/node9', undefined, 'admin'],
  ];
  const rank = { viewer: 0, operator: 1, admin: 2 } as const;
  for (const role of ['viewer', 'operator', 'admin'] as const) {
    for (const [method, path, body, needs] of calls) {
      const res = await api(tokens[role], method, path, body);
      if (rank[role] >= rank[needs]) t.ok(res.status !== 401 && res.status !== 403, `${role} ${method} ${path}: ${res.status} ${JSON.stringify(res.body).slice(0, 160)}`);
      else t.match(res, { status: 403, body: { error: { code: 'XDEVICE_ERR_FORBIDDEN', needs } } }, `${role} ${method} ${path} is forbidden`);
    }
  }
  for (const [method, path, body] of calls) t.equal((await api('', method, path, body)).status, 401, `no token: ${method} ${path}`);
  t.equal((await api('xdv_wrong', 'GET', '/status')).status, 401, 'a wrong token');
  t.equal((await api('', 'GET', '/')).status, 200, 'the status page needs none');

  // The CLI: exit 4 and the role needed, for exactly the commands the role may not run.
  const viewerDenied: [string[], string][] = [
    [['device', 'create', 'cli1', '1MiB'], 'operator'],
    [['device', 'resize', 'default', '128MiB'], 'operator'],
    [['device', 'delete', 'default'], 'operator'],
    [['transfer-leader', '--to', 'node1'], 'operator'],
    [['remove-node', '--id', 'node9'], 'admin'],
    [['members', 'promote', 'node9'], 'admin'],
  ];
  for (const args of [['status'], ['health'], ['members', 'list'], ['device', 'list']]) {
    const res = await cli(tokens.viewer, ...args);
    t.equal(res.code, 0, `viewer: ${args.join(' ')} ${res.stderr}`);
  }
  for (const [args, needs] of viewerDenied) {
    const res = await cli(tokens.viewer, ...args);
    t.equal(res.code, 4, `viewer: ${args.join(' ')} exits 4`);
    t.match(res.stderr, `ann has role viewer; `, 'names the client and its role');
    t.match(res.stderr, `needs ${needs}`, `names the role needed (${needs})`);
  }
  const create = await cli(tokens.operator, 'device', 'create', 'cli1', '1MiB');
  t.equal(create.code, 0, `operator: device create ${create.stderr}`);
  t.equal((await cli(tokens.operator, 'device', 'resize', 'cli1', '2MiB')).code, 0, 'operator: device resize');
  t.equal((await cli(tokens.operator, 'device', 'delete', 'cli1')).code, 0, 'operator: device delete');
  for (const args of [['remove-node', '--id', 'node9'], ['members', 'promote', 'node9']]) {
    const res = await cli(tokens.operator, ...args);
    t.equal(res.code, 4, `operator: ${args.join(' ')} exits 4`);
    t.match(res.stderr, /needs admin/);
    t.not((await cli(tokens.admin, ...args)).code, 4, `admin: ${args.join(' ')} is not refused`);
  }
  for (const args of [['status'], ['device', 'list'], ['device', 'create', 'x', '1MiB']]) {
    const res = await cli('', ...args);
    t.equal(res.code, 4, `no token: ${args.join(' ')} exits 4`);
  }
  t.equal((await cli('xdv_wrong', 'device', 'list')).code, 4, 'a wrong token exits 4');
  t.match((await cli('xdv_wrong', 'device', 'list')).stderr, /unknown bearer token/);
  t.equal((await adminApi(node.adminPort, 'GET', '/metrics')).status, 401, 'anonymous /metrics is closed without admin-anonymous-read');
  t.match(node.output(), /"principal":"ann".*"reason":"ann has role viewer; POST \/devices needs operator"/, 'the refusal is logged with the principal');

  // SIGHUP: a client added, one removed.
  const late = await mint(file, 'lena', 'operator');
  t.equal((await api(late, 'GET', '/status')).status, 401, 'not yet loaded');
  writeFileSync(file, readFileSync(file, 'utf8').split('\n').filter((l) => !l.startsWith('token ann ')).join('\n'));
  node.child.kill('SIGHUP');
  await waitFor('the new clients file to be loaded', async () => (await api(late, 'GET', '/status')).status === 200, 10_000);
  t.equal((await api(tokens.viewer, 'GET', '/status')).status, 401, 'the removed client is refused');
  t.equal((await api(late, 'POST', '/devices', { name: 'late', size: '1MiB' })).status, 201, 'the added client has its role');
  t.equal((await api(tokens.admin, 'GET', '/status')).status, 200, 'the others stay');

  // A bad reload keeps the table in force and says why.
  const good = readFileSync(file, 'utf8');
  writeFileSync(file, `${good}\ntoken broken\n`);
  node.child.kill('SIGHUP');
  await waitFor('the refused reload to be logged', async () => /SIGHUP: admin clients not reloaded/.test(node.output()), 10_000);
  t.match(node.output(), /clients:\d+: expected \\"token NAME ROLE sha256:HEX\\" \(4 fields\), got 2/, 'the log names the line');
  t.equal((await api(late, 'GET', '/status')).status, 200, 'the previous table stays in force');
  writeFileSync(file, good);
});

t.test('start-up refuses a readable or malformed clients file and an open admin API on a non-loopback address', { timeout: 120_000 }, async (t) => {
  const dir = tempDir('authz-refuse');
  const file = join(dir, 'clients');
  await mint(file, 'ann', 'viewer');
  const start = (...flags: string[]) => spawnSync(process.execPath, nodeCommand(['--backend=memory', `--data-dir=${join(dir, 'data')}`, '--admin-listen=127.0.0.1:0', '--nbd-listen=127.0.0.1:0', ...flags]), { encoding: 'utf8', timeout: 60_000 });
  chmodSync(file, 0o644);
  let res = start(`--admin-clients-file=${file}`);
  t.equal(res.status, 2, 'a group/other-readable file: exit 2');
  t.match(res.stderr, /admin-clients-file: .*clients is accessible by group or others \(mode 644\); chmod 600 it/);
  chmodSync(file, 0o600);
  writeFileSync(file, `${readFileSync(file, 'utf8')}cert ops root\n`);
  res = start(`--admin-clients-file=${file}`);
  t.equal(res.status, 2, 'a malformed file: exit 2');
  t.match(res.stderr, /clients:2: unknown role "root"/, 'naming the line');
  res = spawnSync(process.execPath, nodeCommand(['--backend=memory', `--data-dir=${join(dir, 'data')}`, `--admin-listen=0.0.0.0:${await freePort()}`]), { encoding: 'utf8', timeout: 60_000 });
  t.equal(res.status, 2, 'non-loopback without credentials: exit 2');
  t.match(res.stderr, /reachable from other hosts and the admin API has no credentials/);
});

async function openssl(dir: string, args: string[]): Promise<void> {
  const res = await run('openssl', args, { cwd: dir });
  if (res.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${res.stderr}`);
}

/** Two CAs; a server certificate for 127.0.0.1 and client certificates (by CN) from the first; one impostor from the second. */
async function certificates(dir: string): Promise<void> {
  for (const ca of ['ca', 'other-ca']) {
    await openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=xdevice ${ca}`, '-keyout', `${ca}-key.pem`, '-out', `${ca}.pem`]);
  }
  const issue = async (who: string, cn: string, ca: string, ext: string) => {
    await openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/O=xdevice/CN=${cn}`, '-keyout', `${who}-key.pem`, '-out', `${who}.csr`]);
    writeFileSync(join(dir, `${who}.ext`), ext);
    await openssl(dir, ['x509', '-req', '-in', `${who}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}-key.pem`, '-CAcreateserial', '-days', '2', '-extfile', `${who}.ext`, '-out', `${who}.pem`]);
  };
  await issue('server', 'node1', 'ca', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  for (const cn of ['ops-admin', 'ops-viewer', 'nobody']) await issue(cn, cn, 'ca', 'extendedKeyUsage=clientAuth\n');
  await issue('impostor', 'ops-admin', 'other-ca', 'extendedKeyUsage=clientAuth\n');
}

t.test('HTTPS: client certificates map CN to a role; another CA is refused; anonymous /metrics by the key', { timeout: 300_000 }, async (t) => {
  const dir = tempDir('authz-tls');
  await certificates(dir);
  const file = join(dir, 'clients');
  for (const [cn, role] of [['ops-admin', 'admin'], ['ops-viewer', 'viewer']]) {
    const res = await runCli(['client', 'add', '--kind', 'cert', '--name', cn!, '--role', role!, '--file', file]);
    t.equal(res.code, 0, res.stderr);
  }
  const operatorToken = await mint(file, 'oscar', 'operator');
  const pem = (name: string) => join(dir, `${name}.pem`);
  const node = await startNode({
    extraArgs: [`--admin-clients-file=${file}`, `--admin-tls-cert=${pem('server')}`, `--admin-tls-key=${pem('server-key')}`, `--admin-tls-ca=${pem('ca')}`, '--admin-anonymous-read=metrics'],
    waitReady: false,
  });
  t.teardown(() => node.kill());
  const endpoint = `https://127.0.0.1:${node.adminPort}`;
  const tlsOf = (who?: string): AdminClientTls => ({ ca: readFileSync(pem('ca')), ...(who ? { cert: readFileSync(pem(who)), key: readFileSync(pem(`${who}-key`)) } : {}) });
  await serving(node, new AdminClient([endpoint], '', 5000, tlsOf('ops-admin')));
  const api = async (who: string | undefined, method: string, path: string, body?: unknown, token = '') => {
    const c = new AdminClient([endpoint], token, 10_000, tlsOf(who));
    return await c.call<any>(endpoint, method, path, body);
  };
  const cli = (who: string | undefined, ...args: string[]) =>
    runCli(['--endpoints', endpoint, '--cacert', pem('ca'), ...(who ? ['--cert', pem(who), '--key', pem(`${who}-key`)] : []), ...args]);

  t.equal((await api('ops-viewer', 'GET', '/status')).status, 200, 'CN ops-viewer reads');
  t.match(await api('ops-viewer', 'POST', '/devices', { name: 'v', size: '1MiB' }), { status: 403, body: { error: { message: 'cert:ops-viewer has role viewer; POST /devices needs operator' } } });
  t.equal((await api('ops-admin', 'POST', '/devices', { name: 'a', size: '1MiB' })).status, 201, 'CN ops-admin changes');
  t.match(await api('impostor', 'GET', '/status'), { status: 401, body: { error: { message: /client certificate not verified by admin-tls-ca/ } } }, 'the same CN from another CA');
  t.match(await api('nobody', 'GET', '/status'), { status: 401, body: { error: { message: /no "cert" line in admin-clients-file for certificate CN "nobody"/ } } });
  t.equal((await api(undefined, 'GET', '/status')).status, 401, 'no certificate, no token');
  t.equal((await api(undefined, 'POST', '/devices', { name: 'o', size: '1MiB' }, operatorToken)).status, 201, 'a token works over HTTPS without a certificate');

  const viewer = await cli('ops-viewer', 'device', 'create', 'cv', '1MiB');
  t.equal(viewer.code, 4, 'CLI with the viewer certificate: exit 4');
  t.match(viewer.stderr, /needs operator/);
  t.equal((await cli('ops-viewer', 'device', 'list')).code, 0, 'and it may list');
  const admin = await cli('ops-admin', 'device', 'create', 'ca1', '1MiB');
  t.equal(admin.code, 0, `CLI with the admin certificate ${admin.stderr}`);
  t.equal((await cli('impostor', 'device', 'list')).code, 4, 'CLI with a certificate from another CA: exit 4');
  const plain = await runCli(['--endpoints', `127.0.0.1:${node.adminPort}`, '--cacert', pem('ca'), '--token', operatorToken, 'device', 'list']);
  t.equal(plain.code, 0, `--cacert alone makes a bare HOST:PORT https ${plain.stderr}`);

  t.equal((await api(undefined, 'GET', '/metrics')).status, 200, 'anonymous /metrics: admin-anonymous-read=metrics');
  t.equal((await api(undefined, 'GET', '/health')).status, 401, 'anonymous /health stays closed');
});
