// A cluster whose peers authenticate by mutual TLS alone (peer-tls-cert/key/ca,
// no secret): it elects a leader and replicates; a node whose certificate
// names another id refuses to start.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { Cluster, nodeCommand } from './helpers/launcher.ts';
import { ROOT, tempDir, waitFor } from './helpers/tools.ts';

t.test('peers over mutual TLS: ids bound to certificates', async (t) => {
  const dir = tempDir('peer-tls');
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ssl('req', '-x509', ...ec, '-days', '2', '-subj', '/CN=xdevice-test-ca', '-keyout', 'ca.key', '-out', 'ca.crt');
  for (const id of ['n1', 'n2', 'n3']) {
    ssl('req', ...ec, '-subj', `/CN=${id}`, '-keyout', `${id}.key`, '-out', `${id}.csr`);
    ssl('x509', '-req', '-in', `${id}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', `${id}.crt`);
  }
  const tlsArgs = (id: string, certOf = id) => [`--peer-tls-cert=${join(dir, `${certOf}.crt`)}`, `--peer-tls-key=${join(dir, `${certOf}.key`)}`, `--peer-tls-ca=${join(dir, 'ca.crt')}`];
  const c = await Cluster.start({ ids: ['n1', 'n2', 'n3'], devices: ['default:16MiB'], nodeArgs: (id) => tlsArgs(id) });
  t.teardown(() => c.stop());
  const leader = await c.waitForLeader();
  const data = Buffer.alloc(8192, 0x42);
  const w = await c.client(leader);
  await w.write(4096, data, { fua: true });
  await w.close();
  for (const id of c.ids) {
    await waitFor(`${id} to read the write`, async () => {
      const r = await c.client(id);
      const got = await r.read(4096, data.length);
      await r.close();
      return got.equals(data);
    });
  }
  t.notMatch(c.logs(400), /NOT authenticated/, 'no insecure link');
  // n2's certificate used by a process that says it is n3: refused at start.
  const r = spawnSync(process.execPath, nodeCommand(['--node-id=n3', `--data-dir=${join(dir, 'x')}`, '--peers=n1=127.0.0.1:1,n3=127.0.0.1:2', ...tlsArgs('n3', 'n2')]), { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  t.equal(r.status, 2, r.stderr);
  t.match(r.stderr, /does not name this node \(n3\)/);
});
