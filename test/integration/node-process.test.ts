// xdevice-node as an operator meets it: systemd's notify protocol, signals,
// configuration errors, SIGHUP reloads, and unit files that systemd accepts.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { adminApi, nodeCommand, startNode } from './helpers/launcher.ts';
import { ROOT, tempDir } from './helpers/tools.ts';
import { notifySocket } from './helpers/notify-socket.ts';

const BACKEND = (process.env.XDEVICE_TEST_BACKEND as 'replicated' | 'memory' | undefined) ?? 'memory';

t.test('READY=1 once serving, STOPPING=1 on SIGTERM, then a clean exit', async (t) => {
  const notify = await notifySocket();
  t.teardown(() => notify.close());
  const node = await startNode({ backend: BACKEND, env: { NOTIFY_SOCKET: notify.path } });
  t.teardown(() => node.kill());
  await notify.waitFor('READY=1');
  t.ok(notify.messages.some((m) => m.startsWith('STATUS=serving NBD on 127.0.0.1:')), 'status line names the NBD address');
  t.equal((await adminApi(node.adminPort, 'GET', '/health')).status, 200, 'healthy once ready');
  node.child.kill('SIGTERM');
  const exit = await node.exited;
  t.equal(exit.code, 0, 'exit code 0 after SIGTERM');
  t.ok(notify.messages.includes('STOPPING=1'), 'STOPPING=1 sent');
  t.match(node.output(), /stopped cleanly/);
});

t.test('watchdog pings when systemd asks for them', async (t) => {
  const notify = await notifySocket();
  t.teardown(() => notify.close());
  const node = await startNode({ backend: BACKEND, env: { NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '400000' } });
  t.teardown(() => node.kill());
  await notify.waitFor('WATCHDOG=1', 10_000);
  t.ok(notify.messages.includes('READY=1'));
});

t.test('bad configuration is refused naming the key (exit 2)', async (t) => {
  const dir = tempDir('badconf');
  const conf = join(dir, 'node.conf');
  writeFileSync(conf, 'data-dir = /tmp/x\nnbd-lsten = 127.0.0.1:1\n');
  let run = spawnSync(process.execPath, nodeCommand([`--config=${conf}`]), { encoding: 'utf8' });
  t.equal(run.status, 2);
  t.match(run.stderr, /unknown key "nbd-lsten"/);
  run = spawnSync(process.execPath, nodeCommand(['--backend=raft']), { encoding: 'utf8' });
  t.equal(run.status, 2);
  t.match(run.stderr, /backend/);
  run = spawnSync(process.execPath, nodeCommand(['--backend=memory']), { encoding: 'utf8', env: { ...process.env, XDEVICE_NBD_LISTEN: 'nowhere' } });
  t.equal(run.status, 2);
  t.match(run.stderr, /XDEVICE_NBD_LISTEN: not HOST:PORT/);
  run = spawnSync(process.execPath, nodeCommand(['--device=x:12q']), { encoding: 'utf8' });
  t.equal(run.status, 2);
  t.match(run.stderr, /--device: not a size/);
});

t.test('the config file form works and SIGHUP reloads the admin token', async (t) => {
  const dir = tempDir('conf');
  const conf = join(dir, 'node.conf');
  writeFileSync(conf, `admin-token = first\n`);
  const node = await startNode({ backend: BACKEND, extraArgs: [`--config=${conf}`], waitReady: false });
  t.teardown(() => node.kill());
  const deadline = Date.now() + 30_000;
  while ((await adminApi(node.adminPort, 'GET', '/status', undefined, { token: 'first' }).catch(() => ({ status: 0 }))).status !== 200) {
    if (Date.now() > deadline) throw new Error(`node did not come up:\n${node.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  t.equal((await adminApi(node.adminPort, 'GET', '/status')).status, 401, 'no token: 401');
  writeFileSync(conf, `admin-token = second\n`);
  node.child.kill('SIGHUP');
  const until = Date.now() + 10_000;
  while ((await adminApi(node.adminPort, 'GET', '/status', undefined, { token: 'second' })).status !== 200 && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
  t.equal((await adminApi(node.adminPort, 'GET', '/status', undefined, { token: 'second' })).status, 200, 'new token accepted after SIGHUP');
  t.equal((await adminApi(node.adminPort, 'GET', '/status', undefined, { token: 'first' })).status, 401, 'old token refused');
  t.match(node.output(), /SIGHUP: configuration reloaded/);
});

t.test('systemd accepts the unit files', async (t) => {
  const dir = tempDir('units');
  // verify needs the instance and the binaries the units name; point them at this checkout
  for (const unit of ['xdevice-node@.service', 'xdevice-attach@.service']) {
    copyFileSync(join(ROOT, 'systemd', unit), join(dir, unit));
  }
  mkdirSync(join(dir, 'wants'), { recursive: true });
  const run = spawnSync('systemd-analyze', ['verify', '--man=no', join(dir, 'xdevice-node@.service'), join(dir, 'xdevice-attach@.service')], {
    encoding: 'utf8',
  });
  t.equal(run.status, 0, run.stderr);
  t.notMatch(run.stderr, /Unknown (key|section)|Invalid|Failed to parse/i, run.stderr);
});
