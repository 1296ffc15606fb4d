// Encryption at rest on a real three-node cluster (issue 15): a known pattern
// written through NBD (nbdsh, qemu-io) to an encrypted device never appears in
// any file of any node's data directory (device files, WAL segments,
// checkpoints), while the same test's plaintext device shows its pattern (the
// grep works); the data reads back through every node, across a leader
// kill -9 and a restart; a hole stays a hole; unaligned writes are refused;
// a node with a wrong key file or none refuses the export and says why, yet
// replicates; `key rotate` under fio verify rewraps every key, a node
// without the new KEK says so until the key is added to its file.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { appendFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { filesHolding, run, runCli, tempDir, waitFor } from './helpers/tools.ts';

const ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };
const MiB = 1024 * 1024;
const SECRET = 'XDEVICE-ENCRYPTED-PATTERN-7f3a9c';
const PLAIN = 'XDEVICE-PLAINTEXT-CONTROL-41d2e8';

function patternBlocks(tag: string, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let at = 0; at < bytes; at += 64) out.write(`${tag}:${String(at).padStart(12, '0')}|`.padEnd(64, '.'), at, 'latin1');
  return out;
}

/** The same bytes as patternBlocks(), built inside nbdsh (a megabyte does not fit on a command line). */
function pyPattern(tag: string, bytes: number): string {
  return `b"".join(f"${tag}:{at:012d}|".ljust(64, ".").encode() for at in range(0, ${bytes}, 64))`;
}

async function nbdsh(lines: string[]): Promise<{ code: number | null; out: string }> {
  const r = await run('nbdsh', ['-c', lines.join('\n')], { env: ENV });
  return { code: r.code, out: r.stdout + r.stderr };
}

const hex = (): string => randomBytes(32).toString('hex');

t.test('encrypted device on three nodes: ciphertext everywhere, plaintext through every node, refusals with reasons, rotation', async (t) => {
  const keysDir = tempDir('keys');
  const k1 = hex();
  const keyFile = (id: string): string => join(keysDir, `${id}.keys`);
  for (const id of ['node1', 'node2', 'node3']) writeFileSync(keyFile(id), `# test keys\nk1 ${k1}\n`, { mode: 0o600 });
  const c = await Cluster.start({ devices: ['default:64MiB'], nodeArgs: (id) => ['--encryption-key-file', keyFile(id), '--encrypt-devices'] });
  t.teardown(() => c.stop());
  const endpoints = c.ids.map((id) => `127.0.0.1:${c.slot(id).ports.admin}`).join(',');
  const cli = (...args: string[]) => runCli(['--endpoints', endpoints, ...args]);

  const created = await cli('device', 'create', 'plain', '16MiB');
  t.equal(created.code, 0, created.stderr);
  const createdEnc = await cli('-w', 'json', 'device', 'create', 'vault', '16MiB', '--encrypt');
  t.equal(createdEnc.code, 0, createdEnc.stderr);
  const list = JSON.parse(createdEnc.stdout) as { devices: { name: string; encryption?: { generation: number; kekId: string } }[] };
  t.match(list.devices.find((d) => d.name === 'default')?.encryption, { generation: 1, kekId: 'k1' }, 'the initial device is encrypted (encrypt-devices)');
  t.match(list.devices.find((d) => d.name === 'vault')?.encryption, { generation: 1, kekId: 'k1' });
  t.notOk(list.devices.find((d) => d.name === 'plain')?.encryption);
  await c.devicesReady();
  await waitFor('vault and plain on every node', async () => {
    for (const n of c.live()) {
      const r = await n.api<{ devices: { name: string }[] }>('GET', '/devices');
      if (!['vault', 'plain'].every((w) => r.body.devices.some((d) => d.name === w))) return false;
    }
    return true;
  });

  const leader = await c.waitForLeader();
  const follower = c.ids.find((id) => id !== leader)!;
  const secret = patternBlocks(SECRET, 1 * MiB);
  const plain = patternBlocks(PLAIN, 256 * 1024);
  t.same(Buffer.from(secret.subarray(0, 128)).toString('latin1').slice(0, 40), `${SECRET}:000000000000|`.padEnd(64, '.').slice(0, 40));

  // Through nbdsh on a follower: the pattern, then checks the block size, an unaligned write, and a hole.
  const wrote = await nbdsh([
    `h.add_meta_context("base:allocation")`,
    `h.connect_uri(${JSON.stringify(c.nbdUri(follower))})`,
    'assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096, h.get_block_size(nbd.SIZE_MINIMUM)',
    `h.pwrite(${pyPattern(SECRET, secret.length)}, ${4 * MiB})`,
    'h.set_strict_mode(0)',
    'try:',
    '    h.pwrite(b"x" * 100, 10)',
    '    raise SystemExit("an unaligned write was accepted")',
    'except nbd.Error as e:',
    '    assert e.errno == "EINVAL" or "Invalid" in str(e), e',
    'ents = []',
    'h.block_status(1048576, 40 * 1048576, lambda ctx, off, e, err: ents.extend(e))',
    'assert ents[1] & 1, ("hole expected", ents)',
    'h.shutdown()',
  ]);
  t.equal(wrote.code, 0, `nbdsh write: ${wrote.out}`);
  const qemu = await run('qemu-io', ['-f', 'raw', '-c', `write -P 0xc5 ${8 * MiB} ${1 * MiB}`, c.nbdUri(leader)], { env: ENV });
  t.equal(qemu.code, 0, `qemu-io write: ${qemu.stdout}${qemu.stderr}`);
  const plainWrote = await nbdsh([
    `h.connect_uri(${JSON.stringify(c.nbdUri(follower, 'plain'))})`,
    `h.pwrite(${pyPattern(PLAIN, plain.length)}, 0)`,
    'h.shutdown()',
  ]);
  t.equal(plainWrote.code, 0, plainWrote.out);
  await c.converged();

  const readBack = async (id: string, what: string): Promise<void> => {
    const r = await nbdsh([
      `h.connect_uri(${JSON.stringify(c.nbdUri(id))})`,
      `want = ${pyPattern(SECRET, secret.length)}`,
      `got = h.pread(${secret.length}, ${4 * MiB})`,
      'assert got == want, "pattern differs"',
      `assert h.pread(4096, ${8 * MiB + 4096}) == b"\\xc5" * 4096, "qemu-io data differs"`,
      'h.set_strict_mode(0)',
      `assert h.pread(100, ${4 * MiB + 10}) == want[10:110], "unaligned read"`,
      'h.shutdown()',
    ]);
    t.equal(r.code, 0, `${what}: read back through ${id}: ${r.out}`);
    const q = await run('qemu-io', ['-f', 'raw', '-c', `read -P 0xc5 ${8 * MiB} ${1 * MiB}`, c.nbdUri(id)], { env: ENV });
    t.equal(q.code, 0, `${what}: qemu-io read -P through ${id}: ${q.stdout}${q.stderr}`);
  };
  const grepAll = (what: string): void => {
    for (const id of c.ids) {
      const dir = c.slot(id).dataDir;
      t.same(filesHolding(dir, Buffer.from(SECRET)), [], `${what}: ${id} holds no plaintext of the encrypted device`);
      t.same(filesHolding(dir, Buffer.alloc(4096, 0xc5)), [], `${what}: ${id} holds no qemu-io plaintext`);
      t.ok(filesHolding(dir, Buffer.from(PLAIN)).length > 0, `${what}: ${id}'s plaintext device shows its pattern (the grep finds what is there)`);
    }
  };
  for (const id of c.ids) await readBack(id, 'first write');
  grepAll('first write');

  // kill -9 the leader: a new one takes over, the data reads back through the survivors, and after a restart through all.
  await c.kill(leader);
  const survivors = c.ids.filter((id) => id !== leader);
  await c.waitForLeader(survivors);
  for (const id of survivors) await readBack(id, 'after the leader kill');
  const more = await nbdsh([
    `h.connect_uri(${JSON.stringify(c.nbdUri(survivors[0]!))})`,
    `h.pwrite(b"${SECRET}" * 128, ${20 * MiB})`,
    'h.shutdown()',
  ]);
  t.equal(more.code, 0, more.out);
  await c.startNode(leader);
  await c.converged();
  for (const id of c.ids) await readBack(id, 'after the restart');
  grepAll('after the restart');

  // A node with a wrong key file refuses the export and says why (qemu prints the server's reason); it keeps replicating.
  const current = await c.waitForLeader();
  const victim = c.ids.find((id) => id !== current)!;
  const restartedWith = async (extraArgs: string[]): Promise<void> => {
    await c.kill(victim);
    await c.startNode(victim, { extraArgs });
    await waitFor(`${victim} to have replayed its device table`, async () => {
      const r = await c.node(victim).api<{ devices: { name: string }[] }>('GET', '/devices');
      return ['default', 'vault', 'plain'].every((w) => r.body.devices.some((d) => d.name === w));
    });
  };
  const refusedRead = (id: string) => run('qemu-io', ['-f', 'raw', '-c', 'read 0 4096', c.nbdUri(id)], { env: ENV });
  const wrongFile = join(keysDir, 'wrong.keys');
  writeFileSync(wrongFile, `k1 ${hex()}\n`, { mode: 0o600 });
  await restartedWith(['--encryption-key-file', wrongFile]);
  const refused = await refusedRead(victim);
  t.not(refused.code, 0, 'the wrong key is never used');
  t.match(refused.stdout + refused.stderr, /not the key device default's data key was wrapped with/, `the refusal says why: ${refused.stdout}${refused.stderr}`);
  const devs = await c.node(victim).api<{ devices: { name: string; encryption?: { unavailable?: string } }[] }>('GET', '/devices');
  t.match(devs.body.devices.find((d) => d.name === 'default')?.encryption?.unavailable, /wrong key file/);
  const plainStill = await nbdsh([`h.connect_uri(${JSON.stringify(c.nbdUri(victim, 'plain'))})`, 'h.pread(4096, 0)', 'h.shutdown()']);
  t.equal(plainStill.code, 0, `the plaintext device is still served: ${plainStill.out}`);
  const whileWrong = await nbdsh([`h.connect_uri(${JSON.stringify(c.nbdUri(current))})`, `h.pwrite(b"\\x42" * 65536, ${30 * MiB})`, 'h.shutdown()']);
  t.equal(whileWrong.code, 0, whileWrong.out);
  await c.converged();
  // Without any key file: refused, saying so.
  await restartedWith([]);
  const noKey = await refusedRead(victim);
  t.not(noKey.code, 0);
  t.match(noKey.stdout + noKey.stderr, /no encryption key file/, noKey.stdout + noKey.stderr);
  // With the right key again: what was written meanwhile (replicated as ciphertext) reads back.
  await restartedWith(['--encryption-key-file', keyFile(victim)]);
  await c.converged();
  const caught = await nbdsh([`h.connect_uri(${JSON.stringify(c.nbdUri(victim))})`, `assert h.pread(65536, ${30 * MiB}) == b"\\x42" * 65536`, 'h.shutdown()']);
  t.equal(caught.code, 0, `replicated while the key was wrong, readable with the right one: ${caught.out}`);

  // key rotate under fio verify: k2 on two nodes, rotation by the leader; the third says it lacks k2 until it gets it.
  const k2 = hex();
  const rotator = await c.waitForLeader();
  const lacking = c.ids.find((id) => id !== rotator)!;
  for (const id of c.ids) if (id !== lacking) appendFileSync(keyFile(id), `k2 ${k2}\n`);
  let fioOut = '';
  const fio = spawn('fio', ['--name=rotate', '--ioengine=nbd', `--uri=${c.nbdUri(rotator)}`, `--offset=${40 * MiB}`, '--size=16m', '--bs=4k', '--rw=randwrite', '--iodepth=8', '--verify=crc32c', '--verify_fatal=1', '--randrepeat=1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  fio.stdout.on('data', (d: Buffer) => (fioOut += d.toString()));
  fio.stderr.on('data', (d: Buffer) => (fioOut += d.toString()));
  const fioDone = new Promise<number | null>((resolve) => fio.once('exit', (code) => resolve(code)));
  await new Promise((r) => setTimeout(r, 1000));
  const rotated = await cli('-w', 'json', 'key', 'rotate');
  t.equal(rotated.code, 0, rotated.stderr);
  t.match(JSON.parse(rotated.stdout || '{}'), { kekId: 'k2' });
  t.same((JSON.parse(rotated.stdout || '{}') as { devices: string[] }).devices.sort(), ['default', 'vault']);
  t.equal(await fioDone, 0, `fio verify passed across the rotation: ${fioOut.slice(-2000)}`);
  await c.converged();
  const listed = await cli('-w', 'json', 'device', 'list');
  t.match((JSON.parse(listed.stdout) as { devices: { name: string; encryption?: { kekId: string } }[] }).devices.find((d) => d.name === 'vault')?.encryption, { kekId: 'k2' });
  const withoutK2 = await refusedRead(lacking);
  t.not(withoutK2.code, 0);
  t.match(withoutK2.stdout + withoutK2.stderr, /wrapped with key-encryption key k2, which .* does not hold/, withoutK2.stdout + withoutK2.stderr);
  appendFileSync(keyFile(lacking), `k2 ${k2}\n`);
  await new Promise((r) => setTimeout(r, 1200));
  for (const id of c.ids) await readBack(id, 'after the rotation');
  grepAll('after the rotation');
});
