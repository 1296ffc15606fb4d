// STARTTLS with real clients: libnbd's nbdinfo and nbdsh with a PSK file and
// with X.509 certificates made here by openssl, our own client with PSK, and
// clients that refuse or lack TLS against --tls require and --tls on.

import { writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import t from 'tap';
import { NbdClient } from '../../src/nbd/client.ts';
import { NbdReply } from '../../src/nbd/constants.ts';
import { NbdRemoteError } from '../../src/nbd/errors.ts';
import { makeCertificates } from './helpers/certs.ts';
import { startNode } from './helpers/launcher.ts';
import { run, tempDir } from './helpers/tools.ts';

const NBDSH_ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

t.test('TLS-PSK: libnbd with a PSK file, our client with the key, and refusals', async (t) => {
  const dir = tempDir('tls-psk');
  const key = randomBytes(32);
  const pskFile = path.join(dir, 'keys.psk');
  writeFileSync(pskFile, `# test keys\nalice:${key.toString('hex')}\n`);
  const wrongFile = path.join(dir, 'wrong.psk');
  writeFileSync(wrongFile, `alice:${randomBytes(32).toString('hex')}\n`);
  const server = await startNode({ backend: 'memory', devices: ['a:16MiB'], extraArgs: ['--tls=require', `--tls-psk=${pskFile}`] });
  t.teardown(() => server.stop());
  const uri = `nbds://alice@127.0.0.1:${server.nbdPort}/a?tls-psk-file=${pskFile}`;

  const info = await run('nbdinfo', ['--json', uri]);
  t.equal(info.code, 0, `nbdinfo over TLS-PSK: ${info.stderr}`);
  const json = JSON.parse(info.stdout) as { TLS: boolean; exports: Array<{ 'export-size': number }> };
  t.equal(json.TLS, true);
  t.equal(json.exports[0]!['export-size'], 16 << 20);

  const script = [
    'h.set_uri_allow_local_file(True)',
    `h.connect_uri(${JSON.stringify(uri)})`,
    'h.pwrite(b"secret" * 100, 4096)',
    'assert h.pread(600, 4096) == b"secret" * 100',
    'assert h.get_tls_negotiated()',
    'h.shutdown()',
  ].join('\n');
  const sh = await run('nbdsh', ['-c', script], { env: NBDSH_ENV });
  t.equal(sh.code, 0, `nbdsh write/read over TLS-PSK: ${sh.stderr}`);

  const wrong = await run('nbdinfo', [`nbds://alice@127.0.0.1:${server.nbdPort}/a?tls-psk-file=${wrongFile}`]);
  t.not(wrong.code, 0, 'a wrong key fails the TLS handshake');
  const plain = await run('nbdinfo', [`nbd://127.0.0.1:${server.nbdPort}/a`]);
  t.not(plain.code, 0, 'nbdinfo without TLS is refused');

  const refusing = await NbdClient.connect({ host: '127.0.0.1', port: server.nbdPort });
  try {
    await refusing.openDevice('a');
    t.fail('GO without TLS must fail');
  } catch (error) {
    t.equal((error as NbdRemoteError).nbdError, NbdReply.ERR_TLS_REQD, 'a client that will not do TLS gets ERR_TLS_REQD');
  }
  refusing.destroy();

  const ours = await NbdClient.connect({ host: '127.0.0.1', port: server.nbdPort, tls: { psk: { identity: 'alice', key } } });
  await ours.openDevice('a');
  t.ok((await ours.read(4096, 600)).equals(Buffer.from('secret'.repeat(100))), 'our client reads over TLS-PSK what libnbd wrote');
  await ours.close();
  t.ok(server.alive());
});

t.test('X.509: libnbd with a certificate directory; TLS on is optional for clients', async (t) => {
  const dir = tempDir('tls-x509');
  await makeCertificates(dir);
  const server = await startNode({
    backend: 'memory',
    devices: ['a:16MiB', 'b:1MiB'],
    extraArgs: ['--tls=on', `--tls-cert=${path.join(dir, 'server-cert.pem')}`, `--tls-key=${path.join(dir, 'server-key.pem')}`, `--tls-ca=${path.join(dir, 'ca-cert.pem')}`, '--tls-verify-peer'],
  });
  t.teardown(() => server.stop());

  const list = await run('nbdinfo', ['--list', '--json', `nbds://127.0.0.1:${server.nbdPort}/?tls-certificates=${dir}`]);
  t.equal(list.code, 0, `nbdinfo --list with certificates: ${list.stderr}`);
  const json = JSON.parse(list.stdout) as { TLS: boolean; exports: Array<{ 'export-name': string }> };
  t.equal(json.TLS, true);
  t.same(json.exports.map((e) => e['export-name']), ['a', 'b']);

  const plain = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${server.nbdPort}/b`]);
  t.equal(plain.code, 0, '--tls on still serves clients without TLS');
  t.equal((JSON.parse(plain.stdout) as { TLS: boolean }).TLS, false);

  const ca = (await import('node:fs')).readFileSync(path.join(dir, 'ca-cert.pem'));
  const cert = (await import('node:fs')).readFileSync(path.join(dir, 'client-cert.pem'));
  const key = (await import('node:fs')).readFileSync(path.join(dir, 'client-key.pem'));
  const ours = await NbdClient.connect({ host: '127.0.0.1', port: server.nbdPort, tls: { ca, cert, key, servername: 'localhost' } });
  await ours.openDevice('b');
  await ours.write(0, Buffer.from('over x509'));
  t.equal((await ours.read(0, 9)).toString(), 'over x509');
  t.ok(ours.tls);
  await ours.close();

  const noClientCert = await NbdClient.connect({ host: '127.0.0.1', port: server.nbdPort, tls: { ca, servername: 'localhost' } }).then(
    async (c) => {
      // TLS 1.3 reports a refused client certificate after the handshake, on first use.
      try {
        await c.openDevice('b');
        return 'accepted';
      } catch {
        return 'refused';
      } finally {
        c.destroy();
      }
    },
    () => 'refused',
  );
  t.equal(noClientCert, 'refused', 'with --tls-verify-peer the server requires a client certificate');
});
