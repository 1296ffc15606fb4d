// Encryption at rest and the audit trail across a snapshot, with real
// processes (issue 15): a node that was down while a known pattern was
// written to an encrypted device, and while audited operations ran, comes
// back after the leader compacted its log, so it can only catch up by a
// streamed snapshot. Every byte on its peer links (a proxy on each records
// them: the snapshot stream and the log after it) is grepped: the encrypted
// device's pattern is in none, while the plaintext device's pattern written
// at the same time is found (the grep can fail). The caught-up node reads
// the pattern back, holds no plaintext on disk, verifies its audit chain
// (continued from an anchor at the snapshot), and holds the same cluster
// records as the others from the anchor on; a key rotation and a refused
// rekey are each in every node's trail once, with their outcome.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { appendFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { filesHolding, runCli, tempDir, waitFor } from './helpers/tools.ts';
import type { TrailRecord } from '../../src/audit/record.ts';
import type { AuditVerifyReport } from '../../src/audit/query.ts';

const SECRET = 'XDEVICE-SNAPSHOT-SECRET-5b19e0';
const PLAIN = 'XDEVICE-SNAPSHOT-PLAIN-c7a2f4';

function pattern(tag: string, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  for (let at = 0; at < bytes; at += 64) out.write(`${tag}:${String(at).padStart(12, '0')}|`.padEnd(64, '.'), at, 'latin1');
  return out;
}

t.test('a snapshot of an encrypted device carries ciphertext only; the caught-up node continues the audit chain', { timeout: 300_000 }, async (t) => {
  const keysDir = tempDir('keys');
  const keyFile = join(keysDir, 'nodes.keys');
  writeFileSync(keyFile, `k1 ${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  // Tiny checkpoints and no retention for laggards: the log is compacted after a few hundred writes.
  const c = await Cluster.start({
    proxied: true,
    devices: ['default:64MiB'],
    env: { XDEVICE_CHECKPOINT_ENTRIES: '200', XDEVICE_WAL_RETAIN_ENTRIES: '0' },
    nodeArgs: () => ['--encryption-key-file', keyFile, '--encrypt-devices'],
  });
  t.teardown(() => c.stop());
  const endpoints = () => c.live().map((n) => `127.0.0.1:${c.slot(n.id).ports.admin}`).join(',');
  const cli = (...args: string[]) => runCli(['--endpoints', endpoints(), ...args]);
  t.equal((await cli('device', 'create', 'plain', '16MiB')).code, 0);
  await waitFor('plain on every node', async () => {
    for (const n of c.live()) if (!(await n.api<{ devices: { name: string }[] }>('GET', '/devices')).body.devices.some((d) => d.name === 'plain')) return false;
    return true;
  });

  const leader = await c.waitForLeader();
  const lagging = c.ids.find((id) => id !== leader)!;
  await c.kill(lagging);

  // While it is down: the patterns, an audited operation, then enough writes to compact the log past them.
  const secret = pattern(SECRET, 1024 * 1024);
  const enc = await c.client(leader);
  await enc.write(4 * 1024 * 1024, secret);
  const plainClient = await c.client(leader, 'plain');
  await plainClient.write(0, pattern(PLAIN, 256 * 1024));
  await plainClient.close();
  const patternsAt = (await c.status(leader)).applied ?? Number.MAX_SAFE_INTEGER;
  t.equal((await cli('device', 'create', 'while-down', '4MiB')).code, 0, 'an audited operation while the node is down');
  for (let i = 0; i < 1200; i += 8) await Promise.all(Array.from({ length: 8 }, (_, k) => enc.write((2048 + ((i + k) % 4096)) * 4096, randomBytes(4096))));
  // Compacted past them: the patterns can reach the node only inside the snapshot stream.
  await waitFor('the leader to compact its log past the patterns', async () => ((await c.status(leader)).logFirstIndex ?? 0) > patternsAt, 60_000);

  // Every byte on the lagging node's links from here on, by connection and direction.
  const streams = new Map<string, Buffer[]>();
  for (const [key, proxy] of c.proxies) {
    if (!key.split('>').includes(lagging)) continue;
    proxy.tap = (conn, dir, chunk) => {
      const k = `${key}#${conn}/${dir}`;
      streams.set(k, [...(streams.get(k) ?? []), Buffer.from(chunk)]);
    };
  }
  const node = await c.startNode(lagging);
  await c.converged(120_000);
  t.match(node.output(), /installing snapshot/, `${lagging} caught up from a streamed snapshot`);
  await enc.write(40 * 1024 * 1024, Buffer.alloc(4096, 0x42));
  await t.resolves(cli('device', 'create', 'after', '4MiB').then((r) => (r.code === 0 ? r : Promise.reject(new Error(r.stderr)))), 'an audited operation after the catch-up');
  // Key operations: each audited once, with its outcome (by the admin route; src/replica/keys.ts records none).
  appendFileSync(keyFile, `k2 ${randomBytes(32).toString('hex')}\n`);
  const rotated = await cli('key', 'rotate');
  t.equal(rotated.code, 0, rotated.stderr);
  const refusedRekey = await cli('device', 'rekey', 'plain');
  t.not(refusedRekey.code, 0, 'a plaintext device has no data key to replace');
  await enc.close();
  await c.converged(120_000);
  for (const proxy of c.proxies.values()) proxy.tap = undefined;

  const joined = [...streams.values()].map((chunks) => Buffer.concat(chunks));
  const total = joined.reduce((n, b) => n + b.length, 0);
  t.ok(total > secret.length, `the links carried ${total} bytes (the snapshot among them)`);
  t.ok(joined.some((b) => b.includes(PLAIN)), "the plaintext device's pattern is on the link (the grep finds what is there)");
  t.notOk(joined.some((b) => b.includes(SECRET)), "the encrypted device's pattern is on no link: the snapshot stream and the log carry ciphertext");
  t.same(filesHolding(c.slot(lagging).dataDir, Buffer.from(SECRET)), [], `${lagging} holds no plaintext on disk`);
  const back = await c.client(lagging);
  t.ok((await back.read(4 * 1024 * 1024, secret.length)).equals(secret), `the pattern reads back through ${lagging}`);
  await back.close();

  // The audit trail: every node verifies; the caught-up one from its anchor, with the same records from there on.
  const verified = (await c.node(lagging).api<AuditVerifyReport>('GET', '/audit?verify=true')).body;
  t.ok(verified.ok, JSON.stringify(verified));
  const anchors = verified.trails.find((tr) => tr.scope === 'cluster')?.anchors ?? [];
  t.equal(anchors.length, 1, `${lagging}'s cluster trail continues from one anchor`);
  const trail = async (id: string): Promise<TrailRecord[]> => (await c.node(id).api<{ records: TrailRecord[] }>('GET', '/audit?scope=cluster')).body.records;
  const ours = await trail(lagging);
  const theirs = await trail(leader);
  const from = anchors[0]?.seq ?? 0;
  t.ok(theirs.some((r) => r.seq <= from && JSON.stringify(r.args).includes('while-down')), 'the operation while it was down is before the anchor');
  t.ok(ours.some((r) => JSON.stringify(r.args).includes('"after"')), 'the operation after the catch-up is in its trail');
  t.same(ours.filter((r) => r.seq > from), theirs.filter((r) => r.seq > from), 'the same records as the leader from the anchor on');
  t.same(theirs.find((r) => r.seq === from)?.hash, anchors[0]?.hash, "the anchor names the leader's record and hash");
  for (const id of c.ids) {
    const records = await trail(id);
    t.match(records.filter((r) => r.operation === 'key.rotate'), [{ outcome: 'ok' }], `${id}: key rotate recorded once, ok`);
    t.equal(records.filter((r) => r.operation === 'key.rotate').length, 1);
    const rekeys = records.filter((r) => r.operation === 'device.rekey');
    t.equal(rekeys.length, 1, `${id}: the refused rekey recorded once`);
    t.match(rekeys[0], { outcome: /failed|refused/, args: {}, reason: /not encrypted/ });
  }
  const all = await cli('audit', 'verify');
  t.equal(all.code, 0, `audit verify across the cluster: ${all.stdout}${all.stderr}`);
});
