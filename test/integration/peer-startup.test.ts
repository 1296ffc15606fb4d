// A node with peers starts only with authenticated peers: the one entry, as
// the installed binary (bin/xdevice-node.js → dist/node/main.js) and as the
// source the tests run (src/node/main.ts under tsx), exits 2 with a message
// naming the keys, refuses a secret on the command line, a weak or exposed
// secret file; --insecure-peers starts and warns; with --ready-line, once
// serving, it prints its {"ready":true,...} line.
import t from 'tap';
import { spawn } from 'node:child_process';
import { chmodSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { adminApi, nodeCommand, type NodeEntry } from './helpers/launcher.ts';
import { ROOT, tempDir, waitFor } from './helpers/tools.ts';
import { freePorts } from './helpers/ports.ts';

async function run(entry: NodeEntry, extra: string[], untilReady = false): Promise<{ code: number | null; out: string }> {
  const [nbd, admin, peer, p2] = await freePorts(4);
  const dir = tempDir('peer-startup');
  const args = nodeCommand([
    '--node-id=n1',
    `--data-dir=${join(dir, 'd')}`,
    `--nbd-listen=127.0.0.1:${nbd}`,
    `--admin-listen=127.0.0.1:${admin}`,
    `--peer-listen=127.0.0.1:${peer}`,
    `--peers=n1=127.0.0.1:${peer},n2=127.0.0.1:${p2}`,
    '--device=default:16MiB',
    ...extra,
  ], { entry });
  const child = spawn(process.execPath, args, { cwd: ROOT, env: { ...process.env, XDEVICE_LOG_FORMAT: 'json' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  if (untilReady) {
    let code: number | null | undefined;
    void exited.then((c) => (code = c));
    await waitFor('the node to answer /status', async () => {
      if (code !== undefined) throw new Error(`exited ${code}: ${out}`);
      return (await adminApi(admin!, 'GET', '/status').catch(() => ({ status: 0 }))).status === 200;
    }, 60_000);
    if (extra.includes('--ready-line')) await waitFor('the ready line on stdout', async () => out.includes('{"ready":true'), 10_000);
    child.kill('SIGKILL');
  }
  const code = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 60_000).unref())]);
  if (code === null && child.exitCode === null) child.kill('SIGKILL');
  return { code, out };
}

function secret(text: string, mode = 0o600): string {
  const p = join(tempDir('secret'), 's');
  writeFileSync(p, text);
  chmodSync(p, mode);
  return p;
}

for (const [name, entry] of [['xdevice-node', 'bin'], ['src/node/main.ts', 'source']] as const) {
  t.test(`${name}: peers without authentication → exit 2 naming the keys`, async (t) => {
    const r = await run(entry, []);
    t.equal(r.code, 2, r.out);
    t.match(r.out, /not authenticated.*cluster-secret-file.*peer-tls-cert.*peer-tls-key.*peer-tls-ca/);
  });
  t.test(`${name}: --cluster-secret on the command line is refused`, async (t) => {
    const r = await run(entry, ['--cluster-secret=hunter2hunter2hunter2']);
    t.equal(r.code, 2, r.out);
    t.match(r.out, /cluster-secret is refused.*cmdline/);
  });
  t.test(`${name}: a weak or exposed secret file is refused`, async (t) => {
    const weak = await run(entry, [`--cluster-secret-file=${secret('password1234567890')}`]);
    t.equal(weak.code, 2, weak.out);
    t.match(weak.out, /at least 128 bits/);
    const exposed = await run(entry, [`--cluster-secret-file=${secret(randomBytes(32).toString('hex'), 0o644)}`]);
    t.equal(exposed.code, 2, exposed.out);
    t.match(exposed.out, /accessible by group or others/);
  });
}

t.test('xdevice-node: a good secret file starts; --insecure-peers starts and warns', async (t) => {
  const ok = await run('bin', [`--cluster-secret-file=${secret(randomBytes(32).toString('hex'))}`, '--ready-line'], true);
  t.notMatch(ok.out, /NOT authenticated/);
  const ready = JSON.parse(ok.out.split('\n').find((l) => l.startsWith('{"ready":true'))!) as Record<string, unknown>;
  t.equal(ready.nodeId, 'n1', 'the ready line names the node');
  t.match(ready.nbd, /^127\.0\.0\.1:\d+$/, 'and where it serves NBD');
  t.match(ready.peer, /^127\.0\.0\.1:\d+$/, 'and its peer address');
  const insecure = await run('bin', ['--insecure-peers'], true);
  t.match(insecure.out, /insecure-peers: peer links are NOT authenticated/);
});
