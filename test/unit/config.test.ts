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
  t.equal(config.leaseReads, false, 'lease reads are off unless asked for');
  t.equal(origin['data-dir'], 'default');
  t.equal(loadConfig({ flags: new Map(), env: { XDEVICE_LEASE_READS: 'true' } }).config.leaseReads, true);
  t.equal(config.compression, 'lz4', 'compression is on by default');
  t.equal(loadConfig({ flags: new Map(), env: { XDEVICE_COMPRESSION: 'off' } }).config.compression, 'off');
  t.equal(loadConfig({ flags: new Map([['compression', 'off']]), env: { XDEVICE_COMPRESSION: 'lz4' } }).config.compression, 'off', 'the flag wins');
  t.throws(() => loadConfig({ flags: new Map(), env: { XDEVICE_COMPRESSION: 'zstd' } }), { message: /XDEVICE_COMPRESSION: must be one of lz4, off/ });
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

t.test('NBD access: tls-verify-peer and export-allow need the TLS that proves who a client is', async (t) => {
  const x509 = [['backend', 'memory'], ['tls', 'require'], ['tls-cert', '/c.pem'], ['tls-key', '/k.pem']] as Array<[string, string]>;
  const load = (flags: Array<[string, string | string[]]>, env: NodeJS.ProcessEnv = {}, configFile?: string) =>
    loadConfig({ flags: new Map(flags), env, ...(configFile ? { configFile } : {}) });

  const { config } = load([...x509, ['tls-ca', '/ca.pem'], ['tls-verify-peer', 'true'], ['export-allow', ['vm1:rw:/CN=alice', 'vm1:ro:/CN=backup/O=Ops;db:ro:/CN=alice']]]);
  t.equal(config.tlsVerifyPeer, true);
  t.same(config.exportAllow.map((g) => [g.exportName, g.access, g.principal]), [
    ['vm1', 'rw', { kind: 'subject', attributes: [['CN', 'alice']] }],
    ['vm1', 'ro', { kind: 'subject', attributes: [['CN', 'backup'], ['O', 'Ops']] }],
    ['db', 'ro', { kind: 'subject', attributes: [['CN', 'alice']] }],
  ]);
  const fromEnv = load([...x509, ['tls-ca', '/ca.pem']], { XDEVICE_TLS_VERIFY_PEER: '1', XDEVICE_EXPORT_ALLOW: 'a:rw:/CN=x;b:ro:/CN=y' });
  t.same(fromEnv.config.exportAllow.map((g) => g.exportName), ['a', 'b'], 'the environment separates grants with ;');
  const conf = file('acl.conf', 'tls-verify-peer = true\nexport-allow = a:rw:/CN=x\nexport-allow = "b:ro:/O=Example, Inc./CN=y"\n');
  const fromFile = load([...x509, ['tls-ca', '/ca.pem']], {}, conf);
  t.same(fromFile.config.exportAllow.map((g) => g.principal), [{ kind: 'subject', attributes: [['CN', 'x']] }, { kind: 'subject', attributes: [['O', 'Example, Inc.'], ['CN', 'y']] }]);
  t.same((describeConfig(fromFile)['export-allow'] as { value: string[] }).value, ['a:rw:/CN=x', 'b:ro:/O=Example, Inc./CN=y']);
  t.same(load([]).config.exportAllow, [], 'no allow list by default');
  t.equal(load([]).config.tlsVerifyPeer, false);

  const psk = [['backend', 'memory'], ['tls', 'on'], ['tls-psk', '/keys.psk']] as Array<[string, string]>;
  t.same(load([...psk, ['export-allow', ['a:ro:psk:alice']]]).config.exportAllow[0]!.principal, { kind: 'psk', identity: 'alice' });

  const refusals: Array<[Array<[string, string | string[]]>, RegExp]> = [
    [[['backend', 'memory'], ['tls-verify-peer', 'true']], /tls-verify-peer: needs tls = on or require/],
    [[...x509, ['tls-verify-peer', 'true']], /tls-verify-peer: needs tls-ca/],
    [[...psk, ['tls-verify-peer', 'true'], ['tls-ca', '/ca.pem']], /tls-verify-peer: checks X\.509 client certificates; with tls-psk/],
    [[...x509, ['tls-ca', '/ca.pem']], /tls-ca: client certificates are verified only with tls-verify-peer = true/],
    [[['backend', 'memory'], ['export-allow', ['a:rw:/CN=x']]], /export-allow: a:rw:\/CN=x: needs tls = on or require/],
    [[...x509, ['export-allow', ['a:rw:/CN=x']]], /names a certificate subject: needs tls-verify-peer = true and tls-ca/],
    [[...psk, ['export-allow', ['a:rw:/CN=x']]], /names a certificate subject/],
    [[...x509, ['tls-ca', '/ca.pem'], ['tls-verify-peer', 'true'], ['export-allow', ['a:rw:psk:x']]], /names a PSK identity: needs tls-psk/],
    [[...psk, ['export-allow', ['a:rw:psk:x', 'a:ro:psk:x']]], /--export-allow: .*psk:x is given twice for export a/],
    [[...psk, ['export-allow', ['a:rx:psk:x']]], /--export-allow: "a:rx:psk:x": access must be rw or ro/],
    [[...psk, ['tls-verify-peer', 'maybe']], /--tls-verify-peer: must be true or false/],
  ];
  for (const [flags, reason] of refusals) t.throws(() => load(flags), { name: 'ConfigError', message: reason }, flags.map(([k, v]) => `--${k}=${String(v)}`).join(' '));
});
