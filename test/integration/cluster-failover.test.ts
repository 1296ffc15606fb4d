// kill -9 the leader of a three-node cluster while fio (libnbd, crc32c
// verification) writes through a follower and a second client writes through
// the leader itself: a new leader takes over, fio never sees an error and its
// verification passes, the leader's client reconnects to another node and
// every write it had acknowledged is there; the killed node, restarted,
// catches up.
import t from 'tap';
import { randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { Cluster } from './helpers/launcher.ts';
import type { NbdClient } from '../../src/nbd/client.ts';
import { waitFor } from './helpers/tools.ts';

t.test('kill -9 the leader under load', async (t) => {
  const c = await Cluster.start({ devices: ['default:128MiB'] });
  t.teardown(() => c.stop());
  const leader = await c.waitForLeader();
  const followers = c.ids.filter((id) => id !== leader);

  // fio: write 32 MiB at random through a follower, then read it all back and check crc32c.
  let fioOut = '';
  const fio = spawn('fio', ['--name=failover', '--ioengine=nbd', `--uri=${c.nbdUri(followers[0]!)}`, '--offset=64m', '--size=32m', '--bs=4k', '--rw=randwrite', '--iodepth=8', '--verify=crc32c', '--verify_fatal=1', '--randrepeat=1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  fio.stdout.on('data', (d: Buffer) => (fioOut += d.toString()));
  fio.stderr.on('data', (d: Buffer) => (fioOut += d.toString()));
  const fioDone = new Promise<number | null>((resolve) => fio.once('exit', (code) => resolve(code)));

  // A client on the leader itself, writing block after block; on error it reconnects to another live node.
  const acked = new Map<number, Buffer>();
  let acks = 0;
  let reconnects = 0;
  let stopWriting = false;
  const dead = new Set<string>();
  const writer = (async () => {
    let at = leader;
    let client: NbdClient | undefined = await c.client(at);
    for (let i = 0; !stopWriting; i++) {
      const block = i % 4096;
      const data = randomBytes(4096);
      for (;;) {
        try {
          if (!client) {
            at = c.ids.find((id) => !dead.has(id) && id !== at) ?? c.ids.find((id) => !dead.has(id))!;
            client = await c.client(at);
            reconnects++;
          }
          await client.write(block * 4096, data);
          acked.set(block, data);
          acks++;
          break;
        } catch {
          await client?.close().catch(() => undefined);
          client = undefined;
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    }
    await client?.close();
  })();

  await waitFor('writes flowing', async () => acks >= 200, 60_000, 20);
  t.equal(fio.exitCode, null, 'fio is still running when the leader dies');
  const killedAt = Date.now();
  dead.add(leader);
  await c.kill(leader, 'SIGKILL');
  const newLeader = await c.waitForLeader(followers);
  const failoverMs = Date.now() - killedAt;
  t.not(newLeader, leader, `new leader ${newLeader}`);
  t.comment(`failover: a new leader was agreed on ${failoverMs} ms after kill -9`);
  const ackedAtKill = acks;
  await waitFor('writes flowing again after the failover', async () => acks >= ackedAtKill + 200, 60_000, 20);
  t.ok(reconnects >= 1, 'the leader’s client reconnected to another node');

  t.equal(await fioDone, 0, 'fio finished without an I/O error and its crc32c verification passed');
  if (fio.exitCode !== 0) t.comment(fioOut);
  stopWriting = true;
  await writer;

  for (const id of followers) {
    const r = await c.client(id);
    let same = 0;
    for (const [block, data] of acked) if ((await r.read(block * 4096, 4096)).equals(data)) same++;
    t.equal(same, acked.size, `${id} holds every acknowledged write of the reconnecting client`);
    await r.close();
  }

  // The killed node comes back and catches up.
  const restartedAt = Date.now();
  await c.startNode(leader);
  const commit = (await c.status(newLeader)).commit;
  await waitFor(`${leader} to catch up`, async () => (await c.status(leader)).applied >= commit, 120_000);
  t.comment(`catch-up: the restarted node applied the leader's commit index ${Date.now() - restartedAt} ms after its start`);
  const r = await c.client(leader);
  let same = 0;
  for (const [block, data] of acked) if ((await r.read(block * 4096, 4096)).equals(data)) same++;
  t.equal(same, acked.size, `${leader} (restarted) holds every acknowledged write`);
  await r.close();
  const verify = spawn('fio', ['--name=failover', '--ioengine=nbd', `--uri=${c.nbdUri(leader)}`, '--offset=64m', '--size=32m', '--bs=4k', '--rw=randwrite', '--iodepth=8', '--verify=crc32c', '--verify_fatal=1', '--randrepeat=1', '--verify_only'], { stdio: 'ignore' });
  t.equal(await new Promise((resolve) => verify.once('exit', resolve)), 0, 'fio verifies its data through the restarted node');
});
