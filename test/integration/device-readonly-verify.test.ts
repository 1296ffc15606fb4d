// Read-only exports and verify on a real 3-node cluster, with real clients:
// nbdinfo sees READ_ONLY, nbdsh and qemu-io writes fail with EPERM while
// reads work, a connection opened before the flag was set is refused too,
// read-write again accepts writes, and the flag survives a restart of every
// node. `device verify` reports no mismatch on a clean cluster (while writes
// keep coming) and exactly the range of a byte corrupted on one replica.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Cluster, startNode } from './helpers/launcher.ts';
import { nbdshWrite, run, runCli, waitFor } from './helpers/tools.ts';
import { NbdError } from '../../src/nbd/constants.ts';
import { NbdRemoteError } from '../../src/nbd/errors.ts';

const MiB = 1024 * 1024;
/** The system's python3, which has libnbd's module (a pyenv one on PATH may not). */
const ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

function endpoints(c: Cluster): string {
  return c.slots.map((s) => `127.0.0.1:${s.ports.admin}`).join(',');
}

async function cli(c: Cluster, ...args: string[]) {
  return await runCli(['--endpoints', endpoints(c), ...args]);
}

async function nbdinfoReadOnly(uri: string): Promise<boolean> {
  const r = await run('nbdinfo', ['--json', uri]);
  if (r.code !== 0) throw new Error(`nbdinfo failed: ${r.stderr}`);
  return JSON.parse(r.stdout).exports[0].is_read_only as boolean;
}

t.test('read-only export: every client refused with EPERM, reads work, the flag flips and survives restarts', { timeout: 300_000 }, async (t) => {
  const c = await Cluster.start({ devices: ['default:16MiB'] });
  t.teardown(() => c.stop());
  const created = await cli(c, 'device', 'create', 'ro', '16MiB', '--read-only', '-w', 'json');
  t.equal(created.code, 0, `device create --read-only: ${created.stderr}`);
  const list = await cli(c, 'device', 'list', '-w', 'json');
  t.match(JSON.parse(list.stdout).devices.find((d: { name: string }) => d.name === 'ro'), { name: 'ro', readOnly: true }, 'device list shows it');
  await c.converged();
  for (const s of c.slots) {
    const res = await c.node(s.id).api('GET', '/devices');
    t.equal(res.body.devices.find((d: { name: string }) => d.name === 'ro').readOnly, true, `${s.id}'s admin API says read-only`);
    t.equal(await nbdinfoReadOnly(c.nbdUri(s.id, 'ro')), true, `nbdinfo on ${s.id} shows read-only`);
  }

  // nbdsh (libnbd) on a follower and the leader.
  for (const s of c.slots) {
    const w = await nbdshWrite(c.nbdUri(s.id, 'ro'));
    t.same({ errno: w.errno, readOk: w.readOk, readOnly: w.readOnly }, { errno: 'EPERM', readOk: true, readOnly: true }, `nbdsh on ${s.id}: write EPERM, read works`);
  }
  // qemu-io: a read-write open of a read-only export is refused; reads work.
  const qw = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 4096', c.nbdUri(1, 'ro')]);
  t.not(qw.code, 0, `qemu-io cannot open it for writing: ${(qw.stdout + qw.stderr).trim().slice(0, 200)}`);
  const qr = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0 0 4096', c.nbdUri(1, 'ro')]);
  t.equal(qr.code, 0, 'qemu-io reads');
  t.match(qr.stdout, /read 4096\/4096 bytes/);

  // qemu-io with its connection open while the device turns read-only: the server's EPERM.
  const qemu = spawn('qemu-io', ['-f', 'raw', c.nbdUri(0, 'default')], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...ENV } });
  let qout = '';
  qemu.stdout.on('data', (d: Buffer) => (qout += d.toString()));
  qemu.stderr.on('data', (d: Buffer) => (qout += d.toString()));
  const qemuDo = async (cmd: string, want: RegExp) => {
    const from = qout.length;
    qemu.stdin.write(cmd + '\n');
    await waitFor(`qemu-io to answer ${cmd}`, async () => want.test(qout.slice(from)), 20_000, 20);
  };
  await qemuDo('write -P 0x11 65536 4096', /wrote 4096\/4096|failed/);
  t.match(qout, /wrote 4096\/4096/, 'qemu-io writes while read-write');
  t.equal((await cli(c, 'device', 'set', 'default', '--read-only')).code, 0);
  await c.converged();
  await qemuDo('write -P 0x22 65536 4096', /wrote 4096\/4096|failed/);
  t.match(qout, /write failed: Operation not permitted/, 'then its write fails with EPERM');
  await qemuDo('read -P 0x11 65536 4096', /read 4096\/4096|failed/);
  t.notMatch(qout, /Pattern verification failed/, 'reads work, the data unchanged');
  qemu.stdin.end('quit\n');
  await new Promise((r) => qemu.once('exit', r));
  t.equal((await cli(c, 'device', 'set', 'default', '--read-write')).code, 0);
  await c.converged();

  // The server refuses on its own: a connection negotiated while writable, the device made read-only under it.
  const rwc = await c.client(2, 'default');
  t.teardown(() => rwc.close());
  await rwc.write(0, Buffer.alloc(4096, 1));
  t.equal((await cli(c, 'device', 'set', 'default', '--read-only')).code, 0, 'device set --read-only');
  await c.converged();
  const refused = await rwc.write(0, Buffer.alloc(4096, 2)).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(refused instanceof NbdRemoteError && refused.nbdError === NbdError.EPERM, `a write on the open connection gets EPERM (${String(refused)})`);
  t.same(await rwc.read(0, 4096), Buffer.alloc(4096, 1), 'and changed nothing');
  t.equal((await cli(c, 'device', 'set', 'default', '--read-write')).code, 0);
  await c.converged();
  await rwc.write(0, Buffer.alloc(4096, 3));
  t.same(await rwc.read(0, 4096), Buffer.alloc(4096, 3), 'writable again on the same connection');

  // Read-write again: every client writes.
  t.equal((await cli(c, 'device', 'set', 'ro', '--read-write')).code, 0, 'device set --read-write');
  await c.converged();
  t.equal(await nbdinfoReadOnly(c.nbdUri(2, 'ro')), false, 'nbdinfo: writable');
  const w = await nbdshWrite(c.nbdUri(2, 'ro'));
  t.same({ errno: w.errno, readOnly: w.readOnly }, { errno: '', readOnly: false }, 'nbdsh writes');
  const qw2 = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x6b 8192 4096', '-c', 'read -P 0x6b 8192 4096', c.nbdUri(0, 'ro')]);
  t.equal(qw2.code, 0, `qemu-io writes and reads back: ${qw2.stderr}`);
  t.notMatch(qw2.stdout, /Pattern verification failed/);

  // Read-only again, then every node restarts (and one of them after a crash).
  t.equal((await cli(c, 'device', 'set', 'ro', '--read-only')).code, 0);
  await c.converged();
  await c.kill(2, 'SIGKILL');
  await c.stopAll();
  for (const s of c.slots) await c.startNode(s.id);
  await c.waitForLeader();
  await c.converged();
  for (const s of c.slots) t.equal(await nbdinfoReadOnly(c.nbdUri(s.id, 'ro')), true, `after the restart ${s.id} still serves it read-only`);
  const after = await nbdshWrite(c.nbdUri(2, 'ro'));
  t.equal(after.errno, 'EPERM', 'and refuses writes with EPERM');
  const q3 = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x6b 8192 4096', c.nbdUri(2, 'ro')]);
  t.equal(q3.code, 0, 'the data written while writable is there');
  t.notMatch(q3.stdout, /Pattern verification failed/);
  const bad = await cli(c, 'device', 'set', 'ro');
  t.equal(bad.code, 2, 'device set without a flag is a usage error');
  const missing = await cli(c, 'device', 'set', 'nope', '--read-only');
  t.equal(missing.code, 1, 'an unknown device fails');
});

interface Report {
  id: number;
  verified: string[];
  pending: string[];
  complete: boolean;
  mismatches: { range: number; offset: number; length: number; nodes: string[] }[];
}

t.test('device verify: clean under writes, then exactly the corrupted range of one replica', { timeout: 300_000 }, async (t) => {
  const c = await Cluster.start({ devices: ['v:16MiB'] });
  t.teardown(() => c.stop());
  const client = await c.client(0, 'v');
  t.teardown(() => client.close());
  for (let off = 0; off < 16 * MiB; off += MiB) await client.write(off, randomBytes(MiB));
  await c.converged();

  // Writes keep coming while every node checksums the device as of the verify's index.
  let writing = true;
  let writes = 0;
  const writer = (async () => {
    while (writing) {
      await client.write(Math.floor(Math.random() * 4095) * 4096, randomBytes(4096));
      writes++;
    }
  })();
  const clean = await cli(c, 'device', 'verify', 'v', '-w', 'json');
  writing = false;
  await writer;
  t.equal(clean.code, 0, `a clean cluster verifies (exit 0): ${clean.stderr}`);
  const r1 = JSON.parse(clean.stdout) as Report;
  t.same(r1.verified, ['node1', 'node2', 'node3'], 'all three nodes compared');
  t.same(r1.mismatches, [], 'no mismatch');
  t.ok(writes > 0, `${writes} writes applied during the verify`);
  t.comment(`verify ${r1.id} clean with ${writes} concurrent writes`);

  // One byte of node3's copy changes behind the node's back.
  await c.converged();
  const dir = join(c.slot('node3').dataDir, 'devices');
  const files = (await readdir(dir)).filter((f) => f.endsWith('.img'));
  t.equal(files.length, 1, 'one device file');
  const corruptAt = 5 * MiB + 12345;
  const fh = await open(join(dir, files[0]!), 'r+');
  const b = Buffer.alloc(1);
  await fh.read(b, 0, 1, corruptAt);
  b[0] = b[0]! ^ 0xff;
  await fh.write(b, 0, 1, corruptAt);
  await fh.close();

  const found = await cli(c, 'device', 'verify', 'v', '-w', 'json');
  t.equal(found.code, 1, 'a mismatch exits 1');
  t.match(found.stderr, /1 range\(s\) of v differ/);
  const r2 = JSON.parse(found.stdout) as Report;
  t.ok(r2.id > r1.id, 'a new verify');
  t.same(
    r2.mismatches.map((m) => ({ range: m.range, offset: m.offset, length: m.length, nodes: m.nodes })),
    [{ range: 5, offset: 5 * MiB, length: MiB, nodes: ['node3'] }],
    'exactly the corrupted range, on node3',
  );
  const table = await cli(c, 'device', 'verify', 'v');
  t.equal(table.code, 1);
  t.match(table.stdout, /1 mismatching range/);
  t.match(table.stdout, /node3/);
  // Any node's admin API knows the results (they travelled through Raft).
  const leaderless = await waitFor('node2 to hold every result', async () => {
    const res = await c.node('node2').api('GET', `/verify/${r2.id}`);
    return res.status === 200 && res.body.complete ? res.body : undefined;
  });
  t.same((leaderless as Report).mismatches.map((m) => m.nodes), [['node3']]);
  const metrics = await c.node('node1').api('GET', '/metrics');
  t.match(String(metrics.body), /xdevice_verify_mismatched_ranges\{device="v"\} 1\b/, 'the metric counts the mismatching range');
  t.match(String(metrics.body), /xdevice_device_read_only\{device="v"\} 0\b/);
  const unknown = await cli(c, 'device', 'verify', 'nope');
  t.equal(unknown.code, 1, 'verify of an unknown device fails');
  // A member that is down gives no checksums: the command says who, and fails.
  await c.kill('node3');
  await c.waitForLeader(['node1', 'node2']);
  const partial = await cli(c, 'device', 'verify', 'v', '--wait-timeout', '3', '-w', 'json');
  t.equal(partial.code, 1, 'incomplete: exit 1');
  t.match(partial.stderr, /no checksums from node3/);
  t.match(JSON.parse(partial.stdout), { verified: ['node1', 'node2'], pending: ['node3'], complete: false, mismatches: [] });
});

t.test('the admin API refuses malformed flag and verify requests; a memory backend has neither', { timeout: 120_000 }, async (t) => {
  const node = await startNode({ id: 'node1', devices: ['default:8MiB'] });
  t.teardown(() => node.kill());
  const refused: [string, string, unknown, number][] = [
    ['PATCH', '/devices/default', { readOnly: 'yes' }, 400],
    ['PATCH', '/devices/default', { readOnly: true, size: '16MiB' }, 400],
    ['PATCH', '/devices/nope', { readOnly: true }, 404],
    ['POST', '/devices', { name: 'x', size: '1MiB', readOnly: 1 }, 400],
    ['POST', '/devices/nope/verify', undefined, 404],
    ['POST', '/devices/bad%20name/verify', undefined, 400],
    ['GET', '/verify/abc', undefined, 400],
    ['GET', '/verify/99999', undefined, 404],
  ];
  for (const [method, path, body, want] of refused) {
    const res = await node.api(method, path, body);
    t.equal(res.status, want, `${method} ${path} ${JSON.stringify(body) ?? ''} → ${want}`);
  }
  t.match((await node.api('GET', '/devices')).body.devices, [{ name: 'default', readOnly: false }], 'nothing changed');
  // One node: its own checksums, nothing to disagree with.
  const one = await runCli(['--endpoints', `127.0.0.1:${node.adminPort}`, 'device', 'verify', 'default', '-w', 'json']);
  t.equal(one.code, 0, one.stderr);
  t.match(JSON.parse(one.stdout), { verified: ['node1'], complete: true, mismatches: [] });
  t.match((await node.api('GET', '/verify')).body.verifies, [{ device: 'default', verified: ['node1'] }], 'GET /verify lists it');

  const mem = await startNode({ id: 'm1', backend: 'memory', devices: ['default:8MiB'] });
  t.teardown(() => mem.kill());
  t.equal((await mem.api('PATCH', '/devices/default', { readOnly: true })).status, 501, 'memory backend: no read-only flag');
  t.equal((await mem.api('POST', '/devices', { name: 'r', size: '1MiB', readOnly: true })).status, 501, 'nor a read-only create');
  t.equal((await mem.api('POST', '/devices/default/verify')).status, 501, 'nor verify');
});
