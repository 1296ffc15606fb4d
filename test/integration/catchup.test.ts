// Recovery report, part two: a node that was down while 1 GiB was written
// restarts and catches up (log and/or snapshot), then serves the same bytes.
import t from 'tap';
import { createHash } from 'node:crypto';
import { NbdClient } from '../../src/nbd/client.ts';
import { Cluster } from './helpers/launcher.ts';
import { waitFor } from './helpers/tools.ts';

const TOTAL_MIB = Number(process.env.XDEVICE_CATCHUP_MIB ?? 1024);
const CHUNK = 1024 * 1024;

function chunk(i: number): Buffer {
  // cheap, distinct, verifiable content per MiB
  const seed = createHash('sha256').update(`chunk-${i}`).digest();
  const b = Buffer.allocUnsafe(CHUNK);
  for (let off = 0; off < CHUNK; off += seed.length) seed.copy(b, off);
  b.writeUInt32LE(i, 0);
  return b;
}

t.test(`a restarted node catches up ${TOTAL_MIB} MiB of writes`, { timeout: 900_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: [`default:${TOTAL_MIB + 64}MiB`] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();
  const lagging = (leader + 2) % 3;
  await cluster.kill(lagging);

  const client = await NbdClient.connect({ host: '127.0.0.1', port: cluster.slots[leader]!.ports.nbd });
  await client.openDevice('default');
  const started = Date.now();
  const inFlight = new Set<Promise<void>>();
  for (let i = 0; i < TOTAL_MIB; i++) {
    const p: Promise<void> = client.write(i * CHUNK, chunk(i)).then(() => {
      inFlight.delete(p);
    });
    inFlight.add(p);
    if (inFlight.size >= 8) await Promise.race(inFlight);
  }
  await Promise.all(inFlight);
  await client.sync();
  await client.close();
  const writeSeconds = (Date.now() - started) / 1000;
  t.comment(`wrote ${TOTAL_MIB} MiB through the leader with one node down in ${writeSeconds.toFixed(1)} s (${(TOTAL_MIB / writeSeconds).toFixed(0)} MiB/s)`);

  const target = (await cluster.status(leader))!.commit;
  const restartAt = Date.now();
  await cluster.startNode(lagging);
  await waitFor(`node${lagging + 1} to apply index ${target}`, async () => ((await cluster.status(lagging))?.applied ?? 0) >= target, 600_000, 100);
  const catchUpSeconds = (Date.now() - restartAt) / 1000;
  t.comment(`catch-up: node${lagging + 1} applied ${TOTAL_MIB} MiB of writes ${catchUpSeconds.toFixed(1)} s after restart`);

  // It serves the same bytes (a sample of the chunks, read through the caught-up node).
  const reader = await NbdClient.connect({ host: '127.0.0.1', port: cluster.slots[lagging]!.ports.nbd });
  await reader.openDevice('default');
  let same = 0;
  const sample = [0, 1, Math.floor(TOTAL_MIB / 2), TOTAL_MIB - 2, TOTAL_MIB - 1];
  for (const i of sample) if ((await reader.read(i * CHUNK, CHUNK)).equals(chunk(i))) same++;
  await reader.close();
  t.equal(same, sample.length, 'the caught-up node serves the written data');
});
