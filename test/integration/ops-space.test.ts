// A full data filesystem is a client error, not a cluster stop: three real
// nodes, each with its data directory on its own small loop-mounted ext4,
// are filled through NBD. Writes get ENOSPC from the node before they are
// proposed; every node stays up and serves reads; /health and /metrics show
// the free space.
import t, { type Test } from 'tap';
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { adminApi, startNode, type NodeProcess } from './helpers/launcher.ts';
import { tempDir } from './helpers/tools.ts';
import { freePorts } from './helpers/ports.ts';
import type { HealthReport } from '../../src/admin/api.ts';

const ENV = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` };
const MiB = 1024 * 1024;

function nbdsh(script: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('/usr/bin/nbdsh', ['-c', script], { env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/** A fresh ext4 of `mib` MiB mounted at <dir>/mnt through a loop device. */
function smallExt4(t: Test, name: string, mib: number): string {
  const dir = tempDir(`space-${name}`);
  const image = join(dir, 'fs.img');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  execFileSync('truncate', ['-s', `${mib}M`, image]);
  execFileSync('mkfs.ext4', ['-q', '-F', '-m', '0', image]);
  execFileSync('mount', ['-o', 'loop', image, mnt]);
  t.teardown(() => {
    execFileSync('umount', [mnt]);
  });
  return join(mnt, 'data');
}

t.test('a filled data filesystem: ENOSPC for clients, every node up and serving reads', { timeout: 300_000 }, async (t) => {
  const ports = await freePorts(9);
  const ids = ['node1', 'node2', 'node3'];
  const peers = ids.map((id, i) => `${id}=127.0.0.1:${ports[3 * i + 2]}`).join(',');
  const dirs = ids.map((id) => smallExt4(t, id, 400));
  const nodes: NodeProcess[] = [];
  t.teardown(async () => {
    for (const n of nodes) await n.kill();
  });
  nodes.push(
    ...(await Promise.all(
      ids.map((id, i) =>
        startNode({
          id,
          dataDir: dirs[i]!,
          ports: { nbd: ports[3 * i]!, admin: ports[3 * i + 1]!, peer: ports[3 * i + 2]! },
          peers,
          devices: ['default:512MiB'],
          extraArgs: ['--space-reserve=150MiB'],
        }),
      ),
    )),
  );
  const leader = await (async () => {
    for (let k = 0; k < 300; k++) {
      for (const n of nodes) {
        const s = await adminApi(n.adminPort, 'GET', '/status');
        if (s.status === 200 && s.body.role === 'leader') {
          const d = await adminApi(n.adminPort, 'GET', '/devices');
          if (d.body.devices.length > 0) return n;
        }
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('no leader with the device');
  })();

  // Fill through the leader in 4 MiB writes until the node refuses.
  const fill = await nbdsh(
    [
      'import errno, os',
      `h.connect_uri("nbd://127.0.0.1:${leader.nbdPort}/default")`,
      'first = os.urandom(4 << 20)',
      'h.pwrite(first, 0)',
      'print("first-written", flush=True)',
      'chunk = os.urandom(4 << 20)',
      'n = 1',
      'while n < 128:',
      '    try:',
      '        h.pwrite(chunk, n * (4 << 20))',
      '    except nbd.Error as e:',
      '        print("refused", errno.errorcode.get(e.errno, e.errno), n, flush=True)',
      '        break',
      '    n += 1',
      'else:',
      '    print("never-refused", flush=True)',
      'assert h.pread(4 << 20, 0) == first',
      'print("reads-ok", flush=True)',
    ].join('\n'),
  );
  t.equal(fill.code, 0, fill.stderr);
  t.match(fill.stdout, /refused ENOSPC \d+/, `the client got ENOSPC (${fill.stdout.trim().replace(/\n/g, ' | ')})`);
  const writtenChunks = Number(/refused ENOSPC (\d+)/.exec(fill.stdout)?.[1] ?? 0);
  t.ok(writtenChunks > 2 && writtenChunks < 100, `${writtenChunks} chunks of 4 MiB went in before the reserve`);

  // Every node stays up and serves reads of what was acknowledged.
  for (const n of nodes) {
    t.equal(n.child.exitCode, null, `${n.id} is running`);
    const read = await nbdsh(
      [`h.connect_uri("nbd://127.0.0.1:${n.nbdPort}/default")`, `d = h.pread(4 << 20, ${(writtenChunks - 1) * 4 * MiB})`, 'assert len(d) == 4 << 20', 'assert d != bytes(4 << 20)', 'print("read-ok")'].join('\n'),
    );
    t.equal(read.code, 0, `${n.id} serves reads: ${read.stderr}`);
    t.match(read.stdout, /read-ok/);
  }
  // A second client is refused the same way, and the node says why.
  const again = await nbdsh(
    ['import errno', `h.connect_uri("nbd://127.0.0.1:${leader.nbdPort}/default")`, 'try:', '    h.pwrite(b"x" * 65536, 0)', '    print("accepted")', 'except nbd.Error as e:', '    print("refused", errno.errorcode.get(e.errno, e.errno))'].join('\n'),
  );
  t.match(again.stdout, /refused ENOSPC/, 'later writes: ENOSPC as well');
  const health = (await adminApi(leader.adminPort, 'GET', '/health')).body as HealthReport;
  const space = health.checks.find((c) => c.name === 'space')!;
  t.notOk(space.ok, `/health: ${space.detail}`);
  t.ok(health.space && health.space.freeBytes < health.space.reserveBytes, '/health reports free space below the reserve');
  const metrics = (await adminApi(leader.adminPort, 'GET', '/metrics')).body;
  t.match(metrics, /^xdevice_disk_data_dir_free_bytes \d+/m, 'the free-space metric');
  for (const n of nodes) t.equal(n.child.exitCode, null, `${n.id} is still running`);
  t.notMatch(nodes.map((n) => n.output()).join('\n'), /node failed; leaving service/, 'no node left service');
});
