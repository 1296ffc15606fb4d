// Compression on and off give identical device content (issue 16): the same
// mix of writes — half-compressible (fio's buffer_compress_percentage=50),
// random, and all-zero over data written before — goes through libnbd
// (nbdsh) into a follower of a 3-node cluster started with compression lz4,
// then of one with compression off. nbdcopy reads the whole device back from
// every node of both: one content, the one written. With lz4 the WAL bytes
// and the bytes sent to peers are smaller, and the node's metrics say why.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { metricSum as metric, run, tempDir, waitFor } from './helpers/tools.ts';

const MiB = 1024 * 1024;
const DEVICE_BYTES = 16 * MiB;
/** The system's python3, which has libnbd's module (a pyenv one on PATH may not). */
const ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

interface Write {
  offset: number;
  length: number;
  /** file: the bytes of the plan's file at offset; ff: 0xff bytes (then zeroes from the file over them). */
  from: 'file' | 'ff';
}

/** The device content to write and the writes that produce it: 4 KiB to 1 MiB, every third kind. */
function plan(dir: string): { file: string; content: Buffer; writes: Write[] } {
  const content = Buffer.alloc(DEVICE_BYTES);
  const writes: Write[] = [];
  const sizes = [4096, 65536, 1 * MiB, 12288];
  let offset = 0;
  for (let i = 0; offset < DEVICE_BYTES - 2 * MiB; i++) {
    const length = sizes[i % sizes.length]!;
    const kind = i % 3;
    if (kind === 0) {
      for (let at = 0; at < length; at += 512) {
        randomBytes(256).copy(content, offset + at);
        content.fill(0x61, offset + at + 256, offset + at + 512);
      }
    } else if (kind === 1) {
      randomBytes(length).copy(content, offset);
    } else {
      writes.push({ offset, length, from: 'ff' });
    }
    writes.push({ offset, length, from: 'file' });
    offset += length + 4096;
  }
  const file = join(dir, 'content.raw');
  writeFileSync(file, content);
  return { file, content, writes };
}

async function nbdshWrites(uri: string, file: string, writes: Write[]): Promise<void> {
  const script = [
    'import json',
    `data = open(${JSON.stringify(file)}, 'rb').read()`,
    `writes = json.loads(${JSON.stringify(JSON.stringify(writes))})`,
    `h.connect_uri(${JSON.stringify(uri)})`,
    'for w in writes:',
    "    o, n = w['offset'], w['length']",
    "    h.pwrite(b'\\xff' * n if w['from'] == 'ff' else data[o:o + n], o)",
    'h.flush()',
    "print('ok', len(writes))",
  ].join('\n');
  const r = await run('nbdsh', ['-c', script], { env: ENV, timeoutMs: 180_000 });
  if (r.code !== 0 || !r.stdout.includes('ok')) throw new Error(`nbdsh failed (${r.code}): ${r.stderr}`);
}

async function metrics(c: Cluster, id: string): Promise<string> {
  const res = await c.node(id).api<string>('GET', '/metrics');
  if (res.status !== 200) throw new Error(`/metrics of ${id}: HTTP ${res.status}`);
  return typeof res.body === 'string' ? res.body : String(res.body);
}

t.test('compression lz4 and off: identical content on every node, fewer WAL and peer bytes with lz4', { timeout: 600_000 }, async (t) => {
  const dir = tempDir('xdevice-compression-');
  const { file, content, writes } = plan(dir);
  const want = createHash('sha256').update(content).digest('hex');
  const result: Record<string, { walBytes: number; peerBytes: number }> = {};
  for (const mode of ['lz4', 'off'] as const) {
    const c = await Cluster.start({ devices: [`default:${DEVICE_BYTES / MiB}MiB`], nodeArgs: () => ['--compression', mode] });
    try {
      const leader = await c.waitForLeader();
      const writer = c.ids.find((id) => id !== leader)!;
      // The writer compresses only once every member's version is in its member table.
      await waitFor(`every member published on ${writer}`, async () => {
        const res = await c.node(writer).api<{ members: { version?: string }[] }>('GET', '/members');
        return res.status === 200 && res.body.members.length === 3 && res.body.members.every((m) => m.version !== undefined);
      });
      const before = await Promise.all(c.ids.map((id) => metrics(c, id)));
      await nbdshWrites(c.nbdUri(writer), file, writes);
      await c.converged();
      const after = await Promise.all(c.ids.map((id) => metrics(c, id)));
      const delta = (name: string) => after.reduce((s, m, i) => s + metric(m, name) - metric(before[i]!, name), 0);
      result[mode] = { walBytes: delta('xdevice_disk_wal_write_bytes_total'), peerBytes: delta('xdevice_network_peer_sent_bytes_total') };
      const compressed = delta('xdevice_compression_compressed_writes_total');
      const holes = delta('xdevice_compression_zero_writes_total');
      if (mode === 'lz4') {
        t.ok(compressed > 0, `${compressed} writes compressed`);
        t.ok(holes > 0, `${holes} all-zero writes turned into holes`);
        t.ok(delta('xdevice_compression_bytes_saved_total') > 0, 'bytes saved counted');
      } else {
        t.equal(compressed + holes, 0, 'off: nothing compressed, no holes');
      }
      for (const id of c.ids) {
        const out = join(dir, `${mode}-${id}.raw`);
        const r = await run('nbdcopy', [c.nbdUri(id), out], { timeoutMs: 120_000 });
        t.equal(r.code, 0, `nbdcopy from ${id} (${r.stderr.trim()})`);
        const got = createHash('sha256').update(readFileSync(out)).digest('hex');
        t.equal(got, want, `${mode}: ${id} holds exactly what was written`);
      }
    } finally {
      await c.stop();
    }
  }
  const on = result.lz4!;
  const off = result.off!;
  t.comment(`WAL bytes lz4/off: ${on.walBytes}/${off.walBytes} = ${(on.walBytes / off.walBytes).toFixed(3)}; peer bytes ${on.peerBytes}/${off.peerBytes} = ${(on.peerBytes / off.peerBytes).toFixed(3)}`);
  t.ok(on.walBytes < 0.8 * off.walBytes, 'fewer WAL bytes with compression');
  t.ok(on.peerBytes < 0.8 * off.peerBytes, 'fewer bytes sent to peers with compression');
});
