// Seeded fuzzing of the admin API's parsing (paths, percent-escapes, query
// flags, JSON bodies): whatever arrives, the answer is a status below 500
// with a JSON error, and a refused request never reaches the node.
import t from 'tap';
import { EventEmitter } from 'node:events';
import { request } from 'node:http';
import { pino } from 'pino';
import { AdminServer } from '../../src/admin/server.ts';
import { createMetrics } from '../../src/admin/metrics.ts';
import type { NodeApi } from '../../src/admin/api.ts';
import { makeRandom } from './helpers/nbd-random.ts';

const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
console.log(`# XDEVICE_SEED=${seed}`);

function send(port: number, method: string, path: string, body: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

t.test('random requests never get a 5xx', async (t) => {
  const changes: string[] = [];
  const node = new (class extends EventEmitter {
    status() { return { id: 'n1', role: 'leader', term: 1, leader: 'n1', commit: 1, applied: 1, backend: 'replicated', peers: [], nbdAddress: '', adminAddress: '', uptimeSeconds: 0, version: '0.0.0' }; }
    async diskUsage() { return { walBytes: 0, dataBytes: 0 }; }
    async health() { return { healthy: true, checks: [] }; }
    members() { return [{ id: 'n1', address: '127.0.0.1:1', voter: true, learner: false }]; }
    async devices() { return [{ name: 'default', size: 1 << 20, usedBytes: 0, readOnly: false }]; }
    async addNode(id: string) { changes.push(`add ${id}`); }
    async promoteNode(id: string) { changes.push(`promote ${id}`); }
    async removeNode(id: string) { changes.push(`remove ${id}`); }
    async transferLeader(to: string) { changes.push(`transfer ${to}`); }
    async createDevice(name: string, size: number) { changes.push(`create ${name} ${size}`); }
    async deleteDevice(name: string) { changes.push(`delete ${name}`); }
    async resizeDevice(name: string, size: number) { changes.push(`resize ${name} ${size}`); }
    space() { return undefined; }
    pendingProposals() { return 0; }
  })() as unknown as NodeApi;
  const server = new AdminServer({ node, metrics: createMetrics({ node, nbd: new EventEmitter() as never }), logger: pino({ level: 'silent' }) });
  const { port } = await server.listen('127.0.0.1', 0);
  t.teardown(() => server.close());

  const random = makeRandom(seed);
  const rnd = (n: number): number => random.int(0, n - 1);
  const pick = <T>(a: readonly T[]): T => a[rnd(a.length)]!;
  const segments = ['devices', 'members', 'leader', 'health', 'default', 'n1', '%E0%A4%A', '%2F', '..', 'a%20b', 'x'.repeat(300), '%', 'promote', 'disconnect', ''];
  const values = ['"64MiB"', '1000', '1.5', '-1', '"16TiB"', 'null', 'true', '"a/b"', '"../../x"', '"ok"', '{}', '[]', `"${'y'.repeat(300)}"`, '"127.0.0.1:9"', '"nowhere"'];
  const keys = ['name', 'size', 'id', 'address', 'to', 'allowShrink', 'force', 'promote', 'wait'];
  for (let i = 0; i < 400; i++) {
    const method = pick(['GET', 'POST', 'PATCH', 'DELETE']);
    const path = '/' + Array.from({ length: 1 + rnd(3) }, () => pick(segments)).join('/') + (rnd(4) === 0 ? `?force=${pick(['1', 'yes', '', 'false'])}` : '');
    const body = rnd(5) === 0 ? pick(['{', '[]', '"x"', '{"size":}']) : `{${Array.from({ length: rnd(4) }, () => `"${pick(keys)}":${pick(values)}`).join(',')}}`;
    const before = changes.length;
    const res = await send(port, method, path, body);
    if (res.status >= 500) {
      t.fail(`${method} ${path} ${body} → ${res.status} ${res.text} (XDEVICE_SEED=${seed})`);
      return;
    }
    if (res.status >= 400 && changes.length !== before) {
      t.fail(`${method} ${path} ${body} → ${res.status} yet the node was asked to ${changes.at(-1)} (XDEVICE_SEED=${seed})`);
      return;
    }
    if (res.status >= 400 && !/"error"/.test(res.text)) {
      t.fail(`${method} ${path} → ${res.status} without a JSON error (XDEVICE_SEED=${seed})`);
      return;
    }
  }
  t.ok(changes.every((c) => !/\/|\.\.| /.test(c.split(' ')[1] ?? '')), 'no bad name reached the node');
});
