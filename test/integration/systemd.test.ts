// The systemd units as systemd judges them, without booting systemd:
//   - systemd-analyze verify of both units instantiated for node1, with the
//     system's real targets loaded: no errors, no ordering cycle (the node
//     unit with its commented LoadCredential= of the encryption keys in force);
//   - systemd-analyze security scores the node unit under 2.0;
//   - the hardening keeps the node working: a node under strace serves NBD
//     writes/flush/trim/reads, metrics, health, sd_notify and the watchdog, and
//     every system call it makes is allowed by the unit's SystemCallFilter=;
//   - the attach unit wants its node (a restart of the node does not detach: no BindsTo=)
//     and runs xdevice-nbd-attach with a timeout and a dead-connection timeout.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { KEY_CREDENTIAL_NAME } from '../../src/crypt/key-file.ts';
import { join } from 'node:path';
import { nodeCommand, adminApi } from './helpers/launcher.ts';
import { CLI_BIN, ROOT, tempDir, waitFor } from './helpers/tools.ts';
import { freePorts } from './helpers/ports.ts';
import { notifySocket } from './helpers/notify-socket.ts';
import { NbdClient } from '../../src/nbd/client.ts';

const NODE_UNIT = join(ROOT, 'systemd/xdevice-node@.service');
const ATTACH_UNIT = join(ROOT, 'systemd/xdevice-attach@.service');

/** Key=value lines of a unit (every occurrence, in order). */
function unitValues(path: string, key: string): string[] {
  return [...readFileSync(path, 'utf8').matchAll(new RegExp(`^${key}=(.*)$`, 'gm'))].map((m) => m[1]!.trim());
}

/** The system calls a SystemCallFilter= list expands to, as systemd-analyze lists its groups. */
const groupCache = new Map<string, string[]>();
function expand(name: string, seen = new Set<string>()): string[] {
  if (!name.startsWith('@')) return [name];
  if (seen.has(name)) return [];
  seen.add(name);
  let members = groupCache.get(name);
  if (!members) {
    const out = spawnSync('systemd-analyze', ['syscall-filter', name], { encoding: 'utf8' });
    if (out.status !== 0) throw new Error(`systemd-analyze syscall-filter ${name}: ${out.stderr}`);
    members = out.stdout
      .split('\n')
      .slice(1)
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('#'));
    groupCache.set(name, members);
  }
  return members.flatMap((m) => expand(m, seen));
}

/** As systemd reads the lines: in order, an allow list adds, a ~deny list removes. */
function allowedSyscalls(unit: string): Set<string> {
  const allowed = new Set<string>();
  for (const value of unitValues(unit, 'SystemCallFilter')) {
    const deny = value.startsWith('~');
    for (const item of value.replace(/^~/, '').split(/\s+/).filter(Boolean)) {
      for (const sc of expand(item)) {
        if (deny) allowed.delete(sc);
        else allowed.add(sc);
      }
    }
  }
  return allowed;
}

t.test('systemd-analyze verify: both units for node1, real targets, no ordering cycle', async (t) => {
  const dir = tempDir('units');
  // The node unit with its LoadCredential= line (commented as shipped) in force: it verifies too.
  const credentialLine = /^#(LoadCredential=xdevice-encryption-keys:\/etc\/xdevice\/%i\.keys)$/m;
  const shipped = readFileSync(NODE_UNIT, 'utf8');
  t.match(shipped, credentialLine, 'the node unit ships the encryption-key credential, commented');
  writeFileSync(join(dir, 'xdevice-node@.service'), shipped.replace(credentialLine, '$1'));
  t.same(unitValues(join(dir, 'xdevice-node@.service'), 'LoadCredential'), [`${KEY_CREDENTIAL_NAME}:/etc/xdevice/%i.keys`], 'the credential the node reads');
  copyFileSync(ATTACH_UNIT, join(dir, 'xdevice-attach@.service'));
  // The targets go into the same transaction: a Before= on a target nothing else
  // pulls in (local-fs-pre.target) only shows its cycle when that target is started too.
  const targets = ['local-fs-pre.target', 'local-fs.target', 'remote-fs-pre.target', 'remote-fs.target', 'network-online.target', 'multi-user.target'].map((u) =>
    join('/usr/lib/systemd/system', u),
  );
  const run = spawnSync('systemd-analyze', ['verify', '--man=no', join(dir, 'xdevice-node@node1.service'), join(dir, 'xdevice-attach@node1.service'), ...targets], {
    encoding: 'utf8',
    cwd: dir,
  });
  const said = run.stdout + run.stderr;
  t.equal(run.status, 0, said);
  t.notMatch(said, /ordering cycle|Job .* deleted/i, 'no ordering cycle with the system targets');
  t.notMatch(said, /Unknown (key|section)|Invalid|Failed to parse|is not executable/i, said);

  t.match(unitValues(ATTACH_UNIT, 'Wants').join(' '), /xdevice-node@%i\.service/, 'the attach unit wants the node of its instance');
  t.same([...unitValues(ATTACH_UNIT, 'BindsTo'), ...unitValues(ATTACH_UNIT, 'Requires'), ...unitValues(ATTACH_UNIT, 'PartOf')], [], 'a restart of the node is not propagated to the attach unit (it would detach)');
  t.same(unitValues(ATTACH_UNIT, 'Type'), ['forking'], 'the attacher stays running as the main process');
  t.match(unitValues(ATTACH_UNIT, 'After').join(' '), /xdevice-node@%i\.service/);
  t.notOk(readFileSync(ATTACH_UNIT, 'utf8').includes('local-fs-pre.target'), 'not ordered before local-fs-pre.target (a cycle with default dependencies)');
  for (const unit of [NODE_UNIT, ATTACH_UNIT]) {
    const exec = readFileSync(unit, 'utf8');
    t.notMatch(exec, /\/opt\/xdevice|\/usr\/bin\/node\b/, `${unit}: no fixed install paths`);
  }
});

t.test('systemd-analyze security scores the node unit under 2.0', async (t) => {
  const run = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', NODE_UNIT], { encoding: 'utf8' });
  const m = /Overall exposure level for \S+: (\d+\.\d+)/.exec(run.stdout + run.stderr);
  t.ok(m, run.stdout + run.stderr);
  t.ok(Number(m?.[1]) < 2.0, `exposure ${m?.[1]} < 2.0`);
  t.same(unitValues(NODE_UNIT, 'User'), ['xdevice'], 'a dedicated user');
  t.same(unitValues(NODE_UNIT, 'UMask'), ['0077']);
  t.same(unitValues(NODE_UNIT, 'StateDirectoryMode'), ['0700']);
  t.same(unitValues(NODE_UNIT, 'RestartPreventExitStatus'), ['2 10'], 'no restart loop on a configuration error or removal');
  t.ok(unitValues(NODE_UNIT, 'SystemCallFilter').includes('@system-service'));
});

t.test('a node under strace makes only system calls the unit allows', { timeout: 180_000 }, async (t) => {
  const allowed = allowedSyscalls(NODE_UNIT);
  t.ok(allowed.has('fdatasync') && allowed.has('pwrite64') && !allowed.has('reboot'), 'the filter expands');
  const dir = tempDir('strace');
  const trace = join(dir, 'syscalls.txt');
  const [nbdPort, adminPort, peerPort] = await freePorts(3);
  const notify = await notifySocket();
  t.teardown(() => notify.close());
  const child = spawn(
    'strace',
    ['-f', '-qq', '-c', '-o', trace, process.execPath, ...nodeCommand([`--data-dir=${join(dir, 'data')}`, `--nbd-listen=127.0.0.1:${nbdPort}`, `--admin-listen=127.0.0.1:${adminPort}`, `--peer-listen=127.0.0.1:${peerPort}`, '--device=default:16MiB', '--log-format=json'])],
    { env: { ...process.env, NOTIFY_SOCKET: notify.path, WATCHDOG_USEC: '400000' }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  t.teardown(async () => {
    const pid = Number(/"pid":(\d+)/.exec(output)?.[1]);
    if (child.exitCode === null && pid > 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    if (child.exitCode === null) child.kill('SIGKILL');
    await exited;
  });
  await notify.waitFor('READY=1', 120_000);
  await notify.waitFor('WATCHDOG=1', 30_000);
  await waitFor('the device', async () => (await adminApi(adminPort!, 'GET', '/devices')).body.devices.some((d: { name: string }) => d.name === 'default'), 60_000);

  const nbd = await NbdClient.connect({ host: '127.0.0.1', port: nbdPort! });
  await nbd.openDevice('default');
  const data = Buffer.alloc(65536, 7);
  await nbd.write(0, data, { fua: true });
  await nbd.write(1 << 20, data);
  await nbd.sync();
  await nbd.trim(1 << 20, 65536);
  t.same(await nbd.read(0, data.length), data, 'reads back what was written');
  await nbd.close();
  t.equal((await adminApi(adminPort!, 'GET', '/metrics')).status, 200);
  t.equal((await adminApi(adminPort!, 'GET', '/health')).status, 200);
  // SIGTERM to the node itself (strace's child), as systemd's KillMode=mixed sends it to the main process.
  const nodePid = Number(/"pid":(\d+)/.exec(output)?.[1]);
  t.ok(nodePid > 0 && nodePid !== child.pid, 'the node process under strace');
  process.kill(nodePid, 'SIGTERM');
  const code = await exited;
  t.equal(code, 0, `the node stopped cleanly under strace: ${output.slice(-2000)}`);

  const used = readFileSync(trace, 'utf8')
    .split('\n')
    .map((l) => l.trim().split(/\s+/).at(-1)!)
    .filter((name) => /^[a-z_0-9]+$/.test(name) && name !== 'total' && name !== 'syscall');
  t.ok(used.includes('fdatasync') || used.includes('pwrite64'), `strace saw the WAL's calls (${used.length} distinct)`);
  t.same(used.filter((sc) => !allowed.has(sc)), [], 'every system call made is allowed by SystemCallFilter=');
});

t.test('xdevice-cli attach runs xdevice-nbd-attach with the timeouts the unit passes', async (t) => {
  const [nbdPort, adminPort, peerPort] = await freePorts(3);
  const dir = tempDir('attach');
  const child = spawn(process.execPath, nodeCommand([`--data-dir=${dir}`, `--nbd-listen=127.0.0.1:${nbdPort}`, `--admin-listen=127.0.0.1:${adminPort}`, `--peer-listen=127.0.0.1:${peerPort}`, '--device=default:8MiB']), {
    stdio: 'ignore',
  });
  const exited = new Promise((r) => child.once('exit', r));
  t.teardown(async () => {
    child.kill('SIGKILL');
    await exited;
  });
  await waitFor('the node', async () => (await adminApi(adminPort!, 'GET', '/status')).status === 200, 60_000);
  // The arguments the attach unit passes.
  const run = spawnSync(
    process.execPath,
    [CLI_BIN, `--endpoints=127.0.0.1:${adminPort}`, '-w', 'json', 'attach', '--device=/dev/nbd3', '--export=default', '--connections=4', '--persist', '--nbd-timeout=45', '--dead-conn-timeout=300', '--dry-run'],
    { encoding: 'utf8' },
  );
  t.equal(run.status, 0, run.stderr);
  const { command } = JSON.parse(run.stdout) as { command: string[] };
  t.match(command[0], /build\/Release\/xdevice-nbd-attach$/);
  t.same(command.slice(1), ['--device', '/dev/nbd3', '--export', 'default', '--endpoint', `127.0.0.1:${nbdPort}`, '--connections', '4', '--timeout', '45', '--dead-conn-timeout', '300']);
  const unitExec = unitValues(ATTACH_UNIT, 'ExecStart')[0]!;
  t.match(unitExec, /--persist/);
  t.match(unitExec, /--nbd-timeout=\$\{XDEVICE_NBD_TIMEOUT\}/);
  t.match(unitExec, /--dead-conn-timeout=\$\{XDEVICE_NBD_DEAD_CONN_TIMEOUT\}/);
  t.match(readFileSync(ATTACH_UNIT, 'utf8'), /^#\s+XDEVICE_NBD_DEAD_CONN_TIMEOUT=\d+$/m, 'the env file example names its default');
});
