// Start-up refusals for peers without authentication, and the checks on the
// cluster secret file and peer certificates.
import t from 'tap';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig } from '../../src/node/config.ts';
import { decodeSecret, loadPeerAuth, readClusterSecret } from '../../src/cluster/peer-auth.ts';

const dir = mkdtempSync(join(tmpdir(), 'xdevice-peer-auth-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
function secretFile(name: string, text: string | Buffer, mode = 0o600): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  chmodSync(p, mode);
  return p;
}
const PEERS = 'n1=127.0.0.1:1,n2=127.0.0.1:2,n3=127.0.0.1:3';
const base = (extra: [string, string][]) => new Map<string, string>([['node-id', 'n1'], ['peers', PEERS], ...extra]);

t.test('a node with peers and no authentication is refused, naming the keys', async (t) => {
  t.throws(() => loadConfig({ flags: base([]), env: {} }), { code: 'XDEVICE_ERR_CONFIG', message: /cluster-secret-file.*peer-tls-cert.*peer-tls-key.*peer-tls-ca.*insecure-peers/ });
  const e = (() => {
    try {
      loadConfig({ flags: base([]), env: {} });
    } catch (err) {
      return err;
    }
  })();
  t.ok(e instanceof ConfigError, 'a ConfigError (exit 2)');
  // A one-node cluster (peers only itself, or none) needs no peer authentication.
  t.ok(loadConfig({ flags: new Map([['node-id', 'n1'], ['peers', 'n1=127.0.0.1:1']]), env: {} }));
  t.ok(loadConfig({ flags: new Map(), env: {} }));
  // insecure-peers is accepted by name.
  t.equal(loadConfig({ flags: base([['insecure-peers', 'true']]), env: {} }).config.insecurePeers, true);
});

t.test('cluster-secret (flag, variable, file key) is refused: it would be visible in /proc/PID/cmdline', async (t) => {
  t.throws(() => loadConfig({ flags: base([['cluster-secret', 'abc']]), env: {} }), { message: /cluster-secret is refused.*cluster-secret-file/ });
  t.throws(() => loadConfig({ flags: base([]), env: { XDEVICE_CLUSTER_SECRET: 'abc' } }), { message: /cluster-secret is refused/ });
  const conf = join(dir, 'old.conf');
  writeFileSync(conf, 'cluster-secret = abc\n');
  t.throws(() => loadConfig({ flags: new Map(), env: {}, configFile: conf }), { message: /cluster-secret is refused/ });
});

t.test('the secret file: 128+ bits, private to its owner', async (t) => {
  const good = secretFile('good', randomBytes(32).toString('hex') + '\n');
  t.equal(loadConfig({ flags: base([['cluster-secret-file', good]]), env: {} }).config.clusterSecretFile, good);
  t.equal(readClusterSecret(good).length, 32);
  t.equal(readClusterSecret(secretFile('b64', randomBytes(24).toString('base64'))).length, 24);
  t.equal(readClusterSecret(secretFile('raw', randomBytes(32))).length, 32);

  const groupReadable = secretFile('group', randomBytes(32).toString('hex'), 0o640);
  t.throws(() => loadConfig({ flags: base([['cluster-secret-file', groupReadable]]), env: {} }), { message: /accessible by group or others.*chmod 600/ });
  const otherReadable = secretFile('other', randomBytes(32).toString('hex'), 0o604);
  t.throws(() => readClusterSecret(otherReadable), { message: /accessible by group or others/ });

  for (const [name, text] of [
    ['short-hex', randomBytes(15).toString('hex')],
    ['password', 'hunter2 is my password'],
    ['short-b64', randomBytes(8).toString('base64')],
    ['zeros', '0'.repeat(64)],
    ['empty', ''],
  ] as const) {
    const p = secretFile(name, text);
    t.throws(() => loadConfig({ flags: base([['cluster-secret-file', p]]), env: {} }), { message: /at least 128 bits/ }, name);
  }
  t.throws(() => readClusterSecret(join(dir, 'missing')), { message: /cannot read/ });
  t.throws(() => readClusterSecret(dir), { message: /not a regular file/ });
  t.equal(decodeSecret(Buffer.from('ab'.repeat(16))), undefined, 'a repeated pattern is not a key');
});

t.test('peer TLS: all three files, and the certificate names this node', async (t) => {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=test-ca', '-keyout', 'ca.key', '-out', 'ca.crt');
  ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=n1', '-keyout', 'n1.key', '-out', 'n1.csr');
  ssl('x509', '-req', '-in', 'n1.csr', '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', 'n1.crt');
  const settings = (nodeId: string, parts: Partial<Record<'peerTlsCert' | 'peerTlsKey' | 'peerTlsCa', string>>) => ({
    nodeId,
    peers: { n1: 'a:1', n2: 'a:2' },
    clusterSecretFile: '',
    peerTlsCert: '',
    peerTlsKey: '',
    peerTlsCa: '',
    insecurePeers: false,
    ...parts,
  });
  const all = { peerTlsCert: join(dir, 'n1.crt'), peerTlsKey: join(dir, 'n1.key'), peerTlsCa: join(dir, 'ca.crt') };
  t.ok(loadPeerAuth(settings('n1', all)).tls, 'n1 with its own certificate');
  t.throws(() => loadPeerAuth(settings('n2', all)), { message: /does not name this node \(n2\)/ });
  t.throws(() => loadPeerAuth(settings('n1', { peerTlsCert: all.peerTlsCert })), { message: /go together/ });
  t.throws(() => loadPeerAuth(settings('n1', { ...all, peerTlsKey: join(dir, 'ca.key') })), { message: /peer-tls/ }, 'key not matching the certificate');
  t.throws(() => loadPeerAuth({ ...settings('n1', all), insecurePeers: true }), { message: /contradicts/ });
});
