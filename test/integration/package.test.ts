// The package an operator installs: `npm pack`, then `npm install -g` of the
// tarball into an empty prefix, then the installed binaries run from outside
// the checkout (no repo node_modules, no tsx): --version, --help, bash
// completion, a node that serves NBD, and the CLI that talks to it. A second
// install with scripts blocked shows the message that says how to build the addon.
import t from 'tap';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { adminApi, nodeV8Flags } from './helpers/launcher.ts';
import { ROOT, tempDir, waitFor } from './helpers/tools.ts';
import { freePorts } from './helpers/ports.ts';
import { CONFIG_KEYS } from '../../src/node/config.ts';

const VERSION = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
// PATH without the checkout's node_modules/.bin: the installed tools must stand alone.
const SYSTEM_PATH = [join(process.execPath, '..'), '/usr/local/bin', '/usr/bin', '/bin', '/usr/sbin', '/sbin'].join(':');

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd, env: { ...process.env, PATH: SYSTEM_PATH, ...opts.env }, timeout: 300_000 });
}

function npm(args: string[], cwd: string): SpawnSyncReturns<string> {
  // --prefer-offline: dependencies come from npm's cache when it has them (CI time).
  // JOBS: node-gyp compiles the addons with every core (the test's longest part).
  return run('npm', [...args, '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=warn'], { cwd, env: { npm_config_update_notifier: 'false', JOBS: 'max' } });
}

t.test('npm pack → npm install -g gives working xdevice-node and xdevice-cli', { timeout: 600_000 }, async (t) => {
  const work = tempDir('pkg');
  // --ignore-scripts: skip prepack's tsc; scripts/test.sh has just built dist/ (CI time).
  const packed = npm(['pack', '--ignore-scripts', '--pack-destination', work, ROOT], work);
  t.equal(packed.status, 0, `npm pack: ${packed.stderr}`);
  const tarball = readdirSync(work).find((f) => f.endsWith('.tgz'));
  t.ok(tarball, 'a tarball was written');
  const listing = run('tar', ['tzf', join(work, tarball!)]).stdout.split('\n');
  for (const want of ['package/dist/node/main.js', 'package/dist/cli/cli.js', 'package/dist/index.js', 'package/dist/index.d.ts', 'package/examples/database-wal.ts', 'package/monitoring/xdevice-alerts.yml', 'package/monitoring/grafana-dashboard.json', 'package/binding.gyp', 'package/native/addon.cc', 'package/native/attach/xdevice-nbd-attach.c', 'package/systemd/xdevice-node@.service']) {
    t.ok(listing.includes(want), `tarball ships ${want}`);
  }
  t.notOk(listing.some((f) => f.startsWith('package/test/') || f.startsWith('package/src/')), 'tests and sources stay out of the tarball');

  const prefix = join(work, 'prefix');
  const installed = npm(['install', '-g', '--prefix', prefix, join(work, tarball!)], work);
  t.equal(installed.status, 0, `npm install -g: ${installed.stderr}`);
  const bin = join(prefix, 'bin');
  t.ok(existsSync(join(prefix, 'lib/node_modules/xdevice/build/Release/xdevice.node')), 'the addon was built at install');
  t.ok(existsSync(join(prefix, 'lib/node_modules/xdevice/build/Release/xdevice-nbd-attach')), 'so was the NBD attacher');
  const env = { PATH: `${bin}:${SYSTEM_PATH}` };
  const outside = tempDir('pkg-cwd');

  for (const tool of ['xdevice-node', 'xdevice-cli']) {
    const v = run(join(bin, tool), ['--version'], { cwd: outside, env });
    t.equal(v.status, 0, `${tool} --version: ${v.stderr}`);
    t.equal(v.stdout.trim(), VERSION, `${tool} --version prints the package version`);
  }

  const nodeHelp = run(join(bin, 'xdevice-node'), ['--help'], { cwd: outside, env }).stdout;
  for (const spec of CONFIG_KEYS) t.match(nodeHelp, `--${spec.key}`, `xdevice-node --help covers --${spec.key}`);
  t.match(nodeHelp, '--config');
  const cliHelp = run(join(bin, 'xdevice-cli'), ['--help'], { cwd: outside, env }).stdout;
  for (const cmd of ['status', 'health', 'members', 'add-node', 'remove-node', 'transfer-leader', 'device', 'attach', 'detach', 'completion', '--endpoints', '--token', '--timeout', '--write-out']) {
    t.match(cliHelp, cmd, `xdevice-cli --help covers ${cmd}`);
  }
  const addHelp = run(join(bin, 'xdevice-cli'), ['add-node', '--help'], { cwd: outside, env }).stdout;
  for (const opt of ['--id', '--address', '--wait', '--wait-timeout']) t.match(addHelp, opt, `add-node --help covers ${opt}`);

  // The client library from the package root, as an application imports it (JS and TS).
  const app = tempDir('pkg-app');
  mkdirSync(join(app, 'node_modules'));
  symlinkSync(join(prefix, 'lib/node_modules/xdevice'), join(app, 'node_modules/xdevice'));
  writeFileSync(join(app, 'package.json'), '{"type":"module"}\n');
  const imported = run(process.execPath, ['--input-type=module', '-e', "import { openDevice, WriteOutcomeUnknownError, VERSION } from 'xdevice'; console.log(typeof openDevice, typeof WriteOutcomeUnknownError, VERSION)"], { cwd: app });
  t.equal(imported.status, 0, imported.stderr);
  t.equal(imported.stdout.trim(), `function function ${VERSION}`, "import { openDevice } from 'xdevice' works from the installed package");
  symlinkSync(join(ROOT, 'node_modules/@types'), join(app, 'node_modules/@types'));
  writeFileSync(
    join(app, 'app.ts'),
    [
      "import { openDevice, WriteOutcomeUnknownError, type Device, type DeviceErrorCode } from 'xdevice';",
      "const dev: Device = await openDevice('wal', { endpoints: ['127.0.0.1:10809'], reconnectTimeoutMs: 1000 });",
      'const size: number = dev.size;',
      "const code: DeviceErrorCode = new WriteOutcomeUnknownError('write', 0, 4096, undefined).code;",
      '// @ts-expect-error: the declarations are precise enough to catch this',
      'const wrong: string = dev.size;',
      'await dev.write(0, Buffer.alloc(4096), { fua: true });',
      'console.log(size, code, wrong);',
      '',
    ].join('\n'),
  );
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true, noEmit: true, types: ['node'] }, files: ['app.ts'] }));
  const typed = run(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', app], { cwd: app });
  t.equal(typed.status, 0, `an application type-checks against the shipped declarations: ${typed.stdout}${typed.stderr}`);

  // Bash completion as bash runs it: source the script, fill COMP_WORDS, call the function.
  const completion = run(join(bin, 'xdevice-cli'), ['completion'], { cwd: outside, env });
  t.equal(completion.status, 0, completion.stderr);
  const complete = (words: string[]) =>
    run('bash', ['-c', `eval "$(xdevice-cli completion)"; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _xdevice-cli_yargs_completions; printf '%s\\n' "\${COMPREPLY[@]}"`], {
      cwd: outside,
      env,
    }).stdout.trim().split('\n');
  t.same(complete(['xdevice-cli', 'dev']), ['device'], 'completes a command');
  t.same(complete(['xdevice-cli', 'device', 'r']).sort(), ['rekey', 'resize'], 'completes a subcommand');
  t.ok(complete(['xdevice-cli', 'add-node', '--wa']).includes('--wait-timeout'), 'completes an option');

  // The installed node serves a device over NBD and answers the installed CLI.
  const [nbdPort, adminPort, peerPort] = await freePorts(3);
  const dataDir = tempDir('pkg-data');
  const node = spawn(
    join(bin, 'xdevice-node'),
    [`--data-dir=${dataDir}`, `--nbd-listen=127.0.0.1:${nbdPort}`, `--admin-listen=127.0.0.1:${adminPort}`, `--peer-listen=127.0.0.1:${peerPort}`, '--device=default:16MiB', '--log-format=json'],
    { cwd: outside, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let output = '';
  node.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  node.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise((r) => node.once('exit', r));
  t.teardown(async () => {
    if (node.exitCode === null && node.signalCode === null) node.kill('SIGKILL');
    await exited;
  });
  await waitFor('the installed node to serve its device', async () => {
    if (node.exitCode !== null) throw new Error(`xdevice-node exited: ${output}`);
    const res = await adminApi(adminPort!, 'GET', '/devices');
    return res.status === 200 && res.body.devices.some((d: { name: string }) => d.name === 'default');
  }, 60_000);
  // Run through its interpreter line as systemd runs it: with the product's V8 flags.
  const argv = readFileSync(`/proc/${node.pid}/cmdline`, 'utf8').split('\0');
  const flags = nodeV8Flags({});
  t.ok(flags.length > 0, `bin/xdevice-node.js names V8 flags (${flags.join(' ')})`);
  for (const f of flags) t.ok(argv.includes(f), `the installed node runs with ${f} (argv ${argv.slice(0, 3).join(' ')})`);
  const info = run('nbdinfo', ['--size', `nbd://127.0.0.1:${nbdPort}/default`], { cwd: outside });
  t.equal(info.status, 0, info.stderr);
  t.equal(info.stdout.trim(), String(16 * 1024 * 1024), 'nbdinfo sees the 16 MiB device of the installed node');
  const status = run(join(bin, 'xdevice-cli'), ['--endpoints', `127.0.0.1:${adminPort}`, '-w', 'json', 'status'], { cwd: outside, env });
  t.equal(status.status, 0, status.stderr);
  t.equal((JSON.parse(status.stdout) as { status: { role: string } }[])[0]!.status.role, 'leader', 'a standalone node leads its one-node cluster');
  node.kill('SIGTERM');
  await exited;
  t.equal(node.exitCode, 0, `SIGTERM stops the installed node cleanly: ${output.slice(-2000)}`);

  // Scripts blocked: the install succeeds without the addon, and the node says how to build it.
  const blockedPrefix = join(work, 'blocked');
  const blocked = npm(['install', '-g', '--ignore-scripts', '--prefix', blockedPrefix, join(work, tarball!)], work);
  t.equal(blocked.status, 0, blocked.stderr);
  const noAddon = run(join(blockedPrefix, 'bin/xdevice-node'), ['--version'], { cwd: outside });
  t.equal(noAddon.status, 1);
  t.match(noAddon.stderr, /native addon .* is not built.*npm rebuild -g xdevice/, 'names the command that builds the addon');
  t.notMatch(noAddon.stderr, /\n\s+at /, 'one line, not a stack trace');
});
