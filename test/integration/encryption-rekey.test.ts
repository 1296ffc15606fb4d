// `device rekey` on a real three-node cluster (issue 15): the data key is
// replaced while two clients write (one at random, one just ahead of the
// rekey's watermark, where writes race the re-encryption), the leader
// running the job is killed with kill -9 half-way, the next leader resumes
// from the replicated watermark, and at the end every acknowledged write
// reads back through every node, the device is at key generation 2, and no
// node's files hold the plaintext.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import type { NbdClient } from '../../src/nbd/client.ts';
import { filesHolding, runCli, tempDir, waitFor } from './helpers/tools.ts';

const MiB = 1024 * 1024;
const BLOCK = 4096;
const SIZE = 64 * MiB;
const TAG = Buffer.from('XDEVICE-REKEY-PLAINTEXT-9b1c');

interface Enc {
  generation: number;
  kekId: string;
  rekey?: { generation: number; doneBytes: number };
}

t.test('rekey under writes survives kill -9 of the leader running it', async (t) => {
  const keys = join(tempDir('rekey-keys'), 'keys');
  writeFileSync(keys, `k1 ${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const c = await Cluster.start({ devices: [`default:${SIZE / MiB}MiB`], nodeArgs: () => ['--encryption-key-file', keys, '--encrypt-devices'] });
  t.teardown(() => c.stop());
  const endpoints = c.ids.map((id) => `127.0.0.1:${c.slot(id).ports.admin}`).join(',');
  const cli = (...args: string[]) => runCli(['--endpoints', endpoints, ...args]);
  const encryption = async (): Promise<Enc | undefined> => {
    for (const n of c.live()) {
      const r = await n.api<{ devices: { name: string; encryption?: Enc }[] }>('GET', '/devices').catch(() => undefined);
      if (r?.status === 200) return r.body.devices.find((d) => d.name === 'default')?.encryption;
    }
    return undefined;
  };

  // Fill every other MiB, so the rekey has data (and holes) to walk over.
  const filler = await c.client(0);
  const block = (n: number): Buffer => {
    const b = randomBytes(BLOCK);
    TAG.copy(b, 0);
    b.writeUInt32LE(n, TAG.length);
    return b;
  };
  const acked = new Map<number, Buffer>();
  for (let mib = 0; mib < SIZE / MiB; mib += 2) {
    const data = Buffer.concat(Array.from({ length: 64 }, (_, i) => block(mib * 256 + i)));
    await filler.write(mib * MiB, data);
    for (let i = 0; i < 64; i++) acked.set(mib * 256 + i, data.subarray(i * BLOCK, (i + 1) * BLOCK));
  }
  await filler.close();

  const dead = new Set<string>();
  let stop = false;
  let watermark = 0;
  let writes = 0;
  const writer = async (pick: () => number): Promise<void> => {
    let client: NbdClient | undefined;
    let at = c.ids[0]!;
    while (!stop) {
      const n = pick();
      const data = block(n);
      for (;;) {
        try {
          if (!client) {
            at = c.ids.find((id) => !dead.has(id) && id !== at) ?? c.ids.find((id) => !dead.has(id))!;
            client = await c.client(at);
          }
          await client.write(n * BLOCK, data);
          acked.set(n, data);
          writes++;
          break;
        } catch {
          await client?.close().catch(() => undefined);
          client = undefined;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
    await client?.close();
  };
  const blocks = SIZE / BLOCK;
  const writers = [
    writer(() => Math.floor(Math.random() * blocks)),
    // Just ahead of the watermark: inside the window the job is re-encrypting.
    writer(() => Math.min(blocks - 1, Math.floor(watermark / BLOCK) + Math.floor(Math.random() * 512))),
  ];
  const poll = (async () => {
    while (!stop) {
      watermark = (await encryption())?.rekey?.doneBytes ?? watermark;
      await new Promise((r) => setTimeout(r, 50));
    }
  })();

  const started = await cli('-w', 'json', 'device', 'rekey', 'default');
  t.equal(started.code, 0, started.stderr);
  t.match(JSON.parse(started.stdout || '{}'), { device: 'default', generation: 2 });
  const again = await cli('device', 'rekey', 'default');
  t.not(again.code, 0, 'a second rekey while one runs is refused');
  t.match(again.stderr, /already being rekeyed/);

  // Half-way: kill -9 the leader (it runs the job).
  const before = await waitFor('the rekey to pass a quarter of the device', async () => {
    const e = await encryption();
    return e?.rekey && e.rekey.doneBytes >= SIZE / 4 ? e.rekey.doneBytes : false;
  }, 120_000, 20);
  const leader = await c.waitForLeader();
  dead.add(leader);
  await c.kill(leader);
  t.comment(`killed ${leader} with the watermark at ${before} of ${SIZE}`);
  await c.waitForLeader(c.ids.filter((id) => id !== leader));
  const resumed = await encryption();
  t.ok(resumed?.rekey === undefined || resumed.rekey.doneBytes >= before, `the next leader resumes from the replicated watermark (${resumed?.rekey?.doneBytes ?? 'done'} >= ${before})`);
  const done = await waitFor('the rekey to finish', async () => {
    const e = await encryption();
    return e && !e.rekey && e.generation === 2 ? e : false;
  }, 240_000, 100);
  t.match(done, { generation: 2, kekId: 'k1' });
  const writesAtEnd = writes;
  await waitFor('writes still flowing', async () => writes > writesAtEnd + 50, 60_000, 20);
  stop = true;
  await Promise.all([...writers, poll]);
  t.ok(writes > 100, `${writes} writes during the rekey`);

  await c.startNode(leader);
  dead.delete(leader);
  await c.converged();
  for (const id of c.ids) {
    const r = await c.client(id);
    let same = 0;
    const wrong: number[] = [];
    for (const [n, data] of acked) {
      if ((await r.read(n * BLOCK, BLOCK)).equals(data)) same++;
      else if (wrong.length < 5) wrong.push(n);
    }
    t.equal(same, acked.size, `${id} reads every acknowledged write after the rekey (first wrong blocks: ${wrong.join(', ')})`);
    await r.close();
    t.same(filesHolding(c.slot(id).dataDir, TAG), [], `${id}'s files hold no plaintext`);
  }
});
