import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig, parseConfigFile, describeConfig, ConfigError, parseFlags, readConfiguration } from '../../src/node/config.ts';

const dir = mkdtempSync(join(tmpdir(), 'xdevice-config-'));
function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

t.test('embedded defaults are the documented ones', async (t) => {
  const { config, origin } = loadConfig({ flags: new Map(), env: {} });
  t.equal(config.dataDir, './data');
  t.same(config.nbdListen, { host: '127.0.0.1', port: 10809 });
  t.same(config.adminListen, { host: '127.0.0.1', port: 10819 });
  t.same(config.devices, [{ name: 'default', size: 1024 ** 3 }]);
  t.equal(config.backend, 'replicated');
  t.equal(origin['data-dir'], 'default');
});

t.test('precedence: flag > environment > file > default', async (t) => {
  const conf = file('p.conf', 'data-dir = /from/file\nnbd-listen = 127.0.0.1:2000\nadmin-listen = 127.0.0.1:3000\nlog-level = warn\n');
  const { config, origin } = loadConfig({
    flags: new Map([['data-dir', '/from/flag']]),
    env: { XDEVICE_DATA_DIR: '/from/env', XDEVICE_NBD_LISTEN: '127.0.0.1:2001' },
    configFile: conf,
  });
  t.equal(config.dataDir, '/from/flag');
  t.equal(origin['data-dir'], 'flag');
  t.same(config.nbdListen, { host: '127.0.0.1', port: 2001 });
  t.equal(origin['nbd-listen'], 'env');
  t.same(config.adminListen, { host: '127.0.0.1', port: 3000 });
  t.equal(origin['admin-listen'], 'file');
  t.equal(config.logLevel, 'warn');
});

t.test('config file: comments, repeated devices, peers', async (t) => {
  const conf = file(
    'c.conf',
    '# a cluster node\nnode-id = node2   # trailing comment\npeers = node1=127.0.0.1:1,node2=127.0.0.1:2\n' + 'device = a:64MiB\ndevice = b:1GiB\ninsecure-peers = true\n',
  );
  const { config } = loadConfig({ flags: new Map(), env: {}, configFile: conf });
  t.equal(config.nodeId, 'node2');
  t.same(config.peers, { node1: '127.0.0.1:1', node2: '127.0.0.1:2' });
  t.same(config.devices.map((d) => d.name), ['a', 'b']);
  t.equal(config.devices[0]!.size, 64 * 1024 * 1024);
});

t.test('unknown keys and bad values are rejected naming the key', async (t) => {
  t.throws(() => loadConfig({ flags: new Map(), env: {}, configFile: file('u.conf', 'data-dri = x\n') }), { message: /unknown key "data-dri"/ });
  t.throws(() => loadConfig({ flags: new Map([['bogus', 'x']]), env: {} }), { message: /unknown option --bogus/ });
  t.throws(() => loadConfig({ flags: new Map(), env: { XDEVICE_BOGUS: '1' } }), { message: /XDEVICE_BOGUS/ });
  t.throws(() => loadConfig({ flags: new Map([['backend', 'raft']]), env: {} }), { message: /--backend: must be one of/ });
  t.throws(() => loadConfig({ flags: new Map([['nbd-listen', 'nope']]), env: {} }), { message: /--nbd-listen: not HOST:PORT/ });
  t.throws(() => loadConfig({ flags: new Map([['device', ['a:12x']]]), env: {} }), { message: /--device: not a size/ });
  t.throws(() => loadConfig({ flags: new Map([['device', ['a:1000']]]), env: {} }), { message: /multiple of 512/ });
  t.throws(() => loadConfig({ flags: new Map([['device', ['a:1MiB', 'a:2MiB']]]), env: {} }), { message: /given twice/ });
  t.throws(() => loadConfig({ flags: new Map(), env: {}, configFile: file('b.conf', 'log-level = loud\n') }), { message: /b\.conf: log-level: must be one of/ });
  t.throws(() => loadConfig({ flags: new Map([['tls', 'require']]), env: {} }), { message: /tls: needs/ });
  t.throws(() => loadConfig({ flags: new Map([['backend', 'memory'], ['peers', 'a=127.0.0.1:1,b=127.0.0.1:2']]), env: {} }), { message: /serves one node/ });
  t.throws(() => loadConfig({ flags: new Map(), env: {}, configFile: join(dir, 'missing.conf') }), ConfigError);
  t.throws(() => parseConfigFile('just words\n', 'x.conf'), { message: /x\.conf:1: expected "key = value"/ });
});

t.test('the effective configuration masks secrets', async (t) => {
  const loaded = loadConfig({ flags: new Map([['admin-token', 'tok']]), env: {} });
  const described = JSON.stringify(describeConfig(loaded));
  t.notMatch(described, /"tok"/);
  t.match(described, /\*\*\*/);
});

t.test('the command line: every key as --KEY; a bad or unknown flag is a ConfigError naming it', async (t) => {
  const { flags, configFile } = parseFlags(['--config=/etc/x.conf', '--device', 'a:1MiB', '--device=b:2MiB', '--join', '--peers=n1=127.0.0.1:1']);
  t.equal(configFile, '/etc/x.conf');
  t.same(flags.get('device'), ['a:1MiB', 'b:2MiB']);
  t.equal(flags.get('join'), 'true');
  t.notOk(flags.has('data-dir'), 'only what was given');
  t.throws(() => parseFlags(['--nbd-lsten=127.0.0.1:1']), ConfigError, 'an unknown flag is refused as configuration (exit 2), not a crash');
  t.throws(() => parseFlags(['--nbd-lsten=127.0.0.1:1']), { message: /nbd-lsten/ });
  const loaded = readConfiguration(['--node-id=n7', '--admin-listen=[::1]:7000', '--backend=memory'], { XDEVICE_DATA_DIR: '/env/dir' });
  t.equal(loaded.config.nodeId, 'n7');
  t.same(loaded.config.adminListen, { host: '::1', port: 7000 });
  t.equal(loaded.config.dataDir, '/env/dir');
  t.equal(loaded.origin['data-dir'], 'env');
  t.throws(() => readConfiguration(['--cluster-secret=abc'], {}), { message: /cluster-secret is refused/ });
  for (const [flag, reason] of [
    ['--space-reserve=12q', /--space-reserve: not a size/],
    ['--peer-listen=[::1]:99999', /--peer-listen: port out of range/],
    ['--peers=n1', /--peers: not ID=HOST:PORT/],
    ['--node-id=-n1', /node-id: bad node id "-n1"/],
    ['--device=bad name:1MiB', /--device: bad device name/],
  ] as const) {
    t.throws(() => readConfiguration([flag, '--backend=memory'], {}), { name: 'ConfigError', message: reason }, flag);
  }
});
