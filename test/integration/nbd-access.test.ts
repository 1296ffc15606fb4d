// NBD export access control with real clients: a node with --tls-verify-peer
// and --export-allow, and libnbd's nbdinfo/nbdsh and qemu-img/qemu-io
// presenting certificates made here by openssl. An allowed rw client reads
// and writes, an allowed ro client reads and its writes get EPERM, an
// unlisted subject and a certificate from another CA are refused, a client
// without a certificate is refused, NBD_OPT_LIST shows only what the client may
// attach. In-process, an NbdServer with an in-memory audit sink shows what
// each refusal records.

import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { AuditEvent, AuditSink } from '../../src/audit/event.ts';
import { MemoryDevice } from '../../src/device/memory.ts';
import { StaticDeviceTable } from '../../src/device/table.ts';
import { NbdClient } from '../../src/nbd/client.ts';
import { NbdError, NbdReply } from '../../src/nbd/constants.ts';
import { NbdRemoteError } from '../../src/nbd/errors.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import { parseExportGrants } from '../../src/parse.ts';
import { issueCertificate, libnbdCertificateDir, makeCa, type TestCertificate } from './helpers/certs.ts';
import { startNode } from './helpers/launcher.ts';
import { freePort } from './helpers/ports.ts';
import { run, tempDir } from './helpers/tools.ts';

const NBDSH_ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

const dir = tempDir('nbd-access');
const ca = await makeCa(dir);
const otherCa = await makeCa(dir, 'other-ca', '/CN=some other CA');
const server = await issueCertificate(ca, dir, 'server', '/CN=server', 'server');
const clients: Record<string, TestCertificate> = {
  alice: await issueCertificate(ca, dir, 'alice', '/CN=alice/O=Dev', 'client'),
  backup: await issueCertificate(ca, dir, 'backup', '/CN=backup/O=Ops', 'client'),
  mallory: await issueCertificate(ca, dir, 'mallory', '/CN=mallory/O=Dev', 'client'),
  // Claims alice's subject, signed by a CA the node does not trust.
  impostor: await issueCertificate(otherCa, dir, 'impostor', '/CN=alice/O=Dev', 'client'),
};
const certDirs: Record<string, string> = { none: libnbdCertificateDir(path.join(dir, 'libnbd-none'), ca) };
for (const [who, cert] of Object.entries(clients)) certDirs[who] = libnbdCertificateDir(path.join(dir, `libnbd-${who}`), ca, cert);

/** The NBD error a refused call got (NBD_E* or NBD_REP_ERR_*), or 'accepted'. */
async function nbdErrorOf(call: Promise<unknown>): Promise<number | string> {
  try {
    await call;
    return 'accepted';
  } catch (error) {
    return error instanceof NbdRemoteError ? error.nbdError : String(error);
  }
}

const tlsArgs = ['--tls=require', `--tls-cert=${server.cert}`, `--tls-key=${server.key}`, `--tls-ca=${ca.cert}`, '--tls-verify-peer'];
const allowArgs = ['--export-allow=vm:rw:/CN=alice', '--export-allow=vm:ro:/CN=backup/O=Ops'];

t.test('a node with tls-verify-peer and an allow list, against libnbd and qemu', async (t) => {
  const node = await startNode({ backend: 'memory', devices: ['vm:16MiB', 'open:1MiB'], extraArgs: [...tlsArgs, ...allowArgs] });
  t.teardown(() => node.stop());
  const uri = (exportName: string, who: string): string => `nbds://127.0.0.1:${node.nbdPort}/${exportName}?tls-certificates=${certDirs[who]}`;
  const nbdsh = (who: string, exportName: string, lines: string[]) =>
    run('nbdsh', ['-c', ['import errno', 'h.set_uri_allow_local_file(True)', `h.connect_uri(${JSON.stringify(uri(exportName, who))})`, ...lines, 'h.shutdown()'].join('\n')], { env: NBDSH_ENV });

  const rw = await nbdsh('alice', 'vm', [
    'assert h.get_tls_negotiated()',
    'assert not h.is_read_only()',
    'h.pwrite(b"alice" * 200, 8192)',
    'assert h.pread(1000, 8192) == b"alice" * 200',
    'h.trim(4096, 0)',
  ]);
  t.equal(rw.code, 0, `alice (rw) writes and reads the listed export: ${rw.stderr}`);

  // Strict mode off: libnbd sends the writes instead of refusing them itself, so the server's EPERM is what is seen.
  const refusedWrite = (call: string) => [
    'try:',
    `    ${call}`,
    '    raise SystemExit("write accepted")',
    'except nbd.Error as e:',
    '    assert e.errnum == errno.EPERM, e',
  ];
  const ro = await nbdsh('backup', 'vm', [
    'assert h.is_read_only()',
    'assert not h.can_trim()',
    'assert h.pread(1000, 8192) == b"alice" * 200',
    'h.set_strict_mode(0)',
    ...refusedWrite('h.pwrite(b"x" * 512, 0)'),
    ...refusedWrite('h.trim(4096, 0)'),
    ...refusedWrite('h.zero(4096, 0)'),
    'assert h.pread(1000, 8192) == b"alice" * 200',
  ]);
  t.equal(ro.code, 0, `backup (ro) reads, and every write, trim and zero gets EPERM: ${ro.stderr}`);

  const unlisted = await run('nbdinfo', [uri('vm', 'mallory')]);
  t.not(unlisted.code, 0, 'an unlisted subject cannot attach the listed export');
  t.match(unlisted.stderr, /server replied with error to opt_go request/, 'the server refused NBD_OPT_GO');
  const open = await run('nbdinfo', ['--json', uri('open', 'mallory')]);
  t.equal(open.code, 0, `an export without a list stays open to any verified client: ${open.stderr}`);

  const list = async (who: string): Promise<string[]> => {
    const r = await run('nbdinfo', ['--list', '--json', uri('', who)]);
    if (r.code !== 0) throw new Error(`nbdinfo --list as ${who}: ${r.stderr}`);
    return (JSON.parse(r.stdout) as { exports: Array<{ 'export-name': string }> }).exports.map((e) => e['export-name']).sort();
  };
  t.same(await list('alice'), ['open', 'vm'], 'LIST shows alice both exports');
  t.same(await list('backup'), ['open', 'vm'], 'and backup both (vm read-only)');
  t.same(await list('mallory'), ['open'], 'and mallory only the open one');

  const impostor = await run('nbdinfo', [uri('open', 'impostor')]);
  t.not(impostor.code, 0, 'a certificate from another CA is refused, even for an open export');
  // Our client sends its certificate whatever CAs the server asks for: the node itself must find it does not verify.
  const ours = await NbdClient.connect({
    host: '127.0.0.1',
    port: node.nbdPort,
    tls: { ca: readFileSync(ca.cert), cert: readFileSync(clients.impostor!.cert), key: readFileSync(clients.impostor!.key), servername: 'localhost' },
  }).then(async (c) => {
    try {
      return await nbdErrorOf(c.openDevice('open'));
    } finally {
      c.destroy();
    }
  }, (error: Error) => error.message);
  t.not(ours, 'accepted', 'a certificate from another CA is refused by the node, not only by a client that will not send it');
  const none = await run('nbdinfo', [uri('open', 'none')]);
  t.not(none.code, 0, 'a client without a certificate is refused under tls-verify-peer');

  // qemu: the same directories serve as tls-creds-x509 (ca-cert.pem, client-cert.pem, client-key.pem).
  const qemuImage = (who: string, exportName: string) => [
    '--object', `tls-creds-x509,id=tls0,dir=${certDirs[who]},endpoint=client`,
    '--image-opts', `driver=nbd,host=127.0.0.1,port=${node.nbdPort},export=${exportName},tls-creds=tls0`,
  ];
  const qemuInfo = await run('qemu-img', ['info', '--output=json', ...qemuImage('backup', 'vm')]);
  t.equal(qemuInfo.code, 0, `qemu-img info as backup: ${qemuInfo.stderr}`);
  t.equal((JSON.parse(qemuInfo.stdout) as { 'virtual-size': number })['virtual-size'], 16 << 20);
  const qemuRead = await run('qemu-io', ['-r', '-c', 'read -P 0x61 8192 1', ...qemuImage('backup', 'vm')]);
  t.equal(qemuRead.code, 0, `qemu-io reads as backup: ${qemuRead.stdout}${qemuRead.stderr}`);
  t.notMatch(qemuRead.stdout, /Pattern verification failed/, 'and sees what alice wrote ("a" of "alice")');
  const qemuWrite = await run('qemu-io', ['-c', 'write -P 0x62 0 4096', ...qemuImage('backup', 'vm')]);
  t.match(`${qemuWrite.stdout}${qemuWrite.stderr}`, /read-only|Permission denied|Operation not permitted/i, 'qemu-io cannot write as backup');
  const qemuAlice = await run('qemu-io', ['-c', 'write -P 0x62 0 4096', '-c', 'read -P 0x62 0 4096', ...qemuImage('alice', 'vm')]);
  t.equal(qemuAlice.code, 0, `qemu-io writes as alice: ${qemuAlice.stdout}${qemuAlice.stderr}`);
  t.notMatch(qemuAlice.stdout, /failed/);
  const qemuMallory = await run('qemu-img', ['info', ...qemuImage('mallory', 'vm')]);
  t.not(qemuMallory.code, 0, 'qemu-img as mallory is refused');

  const logs = node.output();
  t.match(logs, /"principal":"\/CN=mallory\/O=Dev".*"export":"vm".*"nbd attach refused"|"nbd attach refused".*"principal":"\/CN=mallory\/O=Dev"/, 'the refused attach is logged with the subject');
  t.match(logs, /"peer":"127\.0\.0\.1:\d+"[^\n]*nbd attach refused/, 'and the client address');
  // GnuTLS sends no certificate that the CA list of the server's request does not name, so the impostor arrives without one.
  t.ok((logs.match(/no client certificate \(tls-verify-peer requires one signed by tls-ca\)[^\n]*nbd tls client refused/g) ?? []).length >= 2, 'the clients without a certificate are logged');
  t.match(logs, /"claimedSubject":"\/CN=alice\/O=Dev"[^\n]*did not verify against tls-ca[^\n]*nbd tls client refused/, 'the impostor is logged with the subject it claimed');
  t.ok(node.alive());
});

t.test('the node refuses to start on access settings that could not work', async (t) => {
  const cases: Array<[string[], RegExp]> = [
    [['--tls=require', `--tls-cert=${server.cert}`, `--tls-key=${server.key}`, '--tls-verify-peer'], /tls-verify-peer: needs tls-ca/],
    [['--tls=require', `--tls-cert=${server.cert}`, `--tls-key=${server.key}`, `--tls-ca=${ca.cert}`], /tls-ca: client certificates are verified only with tls-verify-peer/],
    [['--tls=off', '--export-allow=vm:rw:/CN=alice'], /export-allow: vm:rw:\/CN=alice: needs tls = on or require/],
    [[...tlsArgs, '--export-allow=vm:rw:CN=alice'], /--export-allow: "vm:rw:CN=alice": the principal must be a certificate subject/],
  ];
  for (const [args, reason] of cases) {
    const node = await startNode({ backend: 'memory', devices: ['vm:1MiB'], extraArgs: args, waitReady: false });
    const exit = await node.exited;
    t.equal(exit.code, 2, `exit 2 for ${args.slice(-1)[0]}`);
    t.match(node.output(), reason);
  }
});

t.test('in-process: what each refusal records in the audit trail', async (t) => {
  const events: AuditEvent[] = [];
  const audit: AuditSink = { record: (event) => void events.push(event) };
  const devices = new StaticDeviceTable([new MemoryDevice({ name: 'vm', size: 1 << 20 }), new MemoryDevice({ name: 'open', size: 1 << 20 })]);
  const nbd = new NbdServer({
    devices,
    tls: { mode: 'require', certFile: server.cert, keyFile: server.key, caFile: ca.cert, verifyPeer: true },
    exportAllow: parseExportGrants('vm:rw:/CN=alice;vm:ro:/CN=backup/O=Ops'),
    audit,
  });
  const port = (await nbd.listen('127.0.0.1', await freePort())).port;
  t.teardown(() => nbd.close());
  const x509 = { mode: 'require', certFile: server.cert, keyFile: server.key } as const;
  t.throws(() => new NbdServer({ devices, tls: { ...x509, verifyPeer: true } }), { message: /--tls-verify-peer needs --tls-ca/ });
  t.throws(() => new NbdServer({ devices, tls: { ...x509, caFile: ca.cert } }), { message: /--tls-ca is used only to verify client certificates/ });
  t.throws(() => new NbdServer({ devices, tls: { ...x509, verifyPeer: false }, exportAllow: parseExportGrants('vm:rw:/CN=alice') }), { message: /needs TLS with tls-verify-peer/ });
  t.throws(() => new NbdServer({ devices, exportAllow: parseExportGrants('vm:rw:/CN=alice') }), { message: /needs TLS with tls-verify-peer/ });
  const tlsAs = (who: string) => ({ ca: readFileSync(ca.cert), cert: readFileSync(clients[who]!.cert), key: readFileSync(clients[who]!.key), servername: 'localhost' });

  const backup = await NbdClient.connect({ host: '127.0.0.1', port, tls: tlsAs('backup') });
  await backup.openDevice('vm');
  t.equal((await backup.read(0, 4)).length, 4, 'backup reads');
  for (const [what, call] of [['write', () => backup.write(0, Buffer.alloc(512, 1))], ['trim', () => backup.trim(0, 4096)], ['write-zeroes', () => backup.writeZeroes(0, 4096)]] as const) {
    t.equal(await nbdErrorOf(call()), NbdError.EPERM, `backup's ${what} gets EPERM`);
  }
  await backup.close();
  t.same(events, [], 'allowed attaches record nothing');

  const mallory = await NbdClient.connect({ host: '127.0.0.1', port, tls: tlsAs('mallory') });
  t.equal(await nbdErrorOf(mallory.openDevice('vm', { structuredReplies: false })), NbdReply.ERR_POLICY, 'an unlisted subject gets NBD_REP_ERR_POLICY');
  mallory.destroy();
  t.equal(events.length, 1);
  t.match(events.shift(), {
    operation: 'nbd.attach',
    principal: '/CN=mallory/O=Dev',
    source: /^127\.0\.0\.1:\d+$/,
    args: { export: 'vm', option: 'NBD_OPT_GO' },
    outcome: 'refused',
    reason: /\/CN=mallory\/O=Dev is not on the allow list of export vm/,
    scope: 'node',
  });

  const impostor = await NbdClient.connect({ host: '127.0.0.1', port, tls: tlsAs('impostor') }).then(
    async (c) => {
      // TLS 1.3 reports a refused client certificate after the handshake, on first use.
      try {
        await c.openDevice('open');
        return 'attached';
      } catch {
        return 'refused';
      } finally {
        c.destroy();
      }
    },
    () => 'refused',
  );
  t.equal(impostor, 'refused');
  await new Promise((r) => setTimeout(r, 100));
  t.match(events.shift(), {
    operation: 'nbd.tls',
    principal: 'anonymous',
    args: { claimedSubject: '/CN=alice/O=Dev' },
    outcome: 'refused',
    reason: /did not verify against tls-ca/,
    scope: 'node',
  }, 'a certificate from another CA is recorded with the subject it claimed');
  t.same(events, []);
});

t.test('in-process: PSK identities are principals too', async (t) => {
  const events: AuditEvent[] = [];
  const pskFile = path.join(dir, 'keys.psk');
  const keys = { alice: Buffer.alloc(32, 1), bob: Buffer.alloc(32, 2) };
  writeFileSync(pskFile, `alice:${keys.alice.toString('hex')}\nbob:${keys.bob.toString('hex')}\n`);
  const devices = new StaticDeviceTable([new MemoryDevice({ name: 'vm', size: 1 << 20 })]);
  t.throws(() => new NbdServer({ devices, tls: { mode: 'require', pskFile, verifyPeer: true } }), { message: /with --tls-psk every client already proves a key/ });
  t.throws(() => new NbdServer({ devices, tls: { mode: 'off', verifyPeer: true } }), { message: /--tls-verify-peer needs --tls on or require/ });
  t.throws(
    () => new NbdServer({ devices, tls: { mode: 'require', pskFile }, exportAllow: parseExportGrants('vm:rw:psk:carol') }),
    { message: /psk:carol: the PSK file has no such identity/ },
  );
  const nbd = new NbdServer({ devices, tls: { mode: 'require', pskFile }, exportAllow: parseExportGrants('vm:ro:psk:alice'), audit: { record: (e) => void events.push(e) } });
  const port = (await nbd.listen('127.0.0.1', await freePort())).port;
  t.teardown(() => nbd.close());
  const alice = await NbdClient.connect({ host: '127.0.0.1', port, tls: { psk: { identity: 'alice', key: keys.alice } } });
  await alice.openDevice('vm');
  t.equal(await nbdErrorOf(alice.write(0, Buffer.alloc(512))), NbdError.EPERM, 'psk:alice has vm read-only');
  await alice.close();
  const bob = await NbdClient.connect({ host: '127.0.0.1', port, tls: { psk: { identity: 'bob', key: keys.bob } } });
  t.same(await bob.list(), [], 'LIST shows bob nothing');
  t.equal(await nbdErrorOf(bob.openDevice('vm')), NbdReply.ERR_POLICY);
  bob.destroy();
  t.match(events, [{ operation: 'nbd.attach', principal: 'psk:bob', args: { export: 'vm', option: 'NBD_OPT_SET_META_CONTEXT' }, outcome: 'refused' }], 'the first refused step of the attach is recorded');
});
