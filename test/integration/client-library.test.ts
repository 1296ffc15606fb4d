// The client library exported from the package root (`import { openDevice }
// from 'xdevice'`) against real nodes: typed errors, a write whose connection
// is reset mid-flight reported as of unknown outcome, reads retried on another
// member (also after a silent stall), and the three examples under examples/
// run as programs against a 3-node cluster — the database WAL across a SIGKILL
// of the leader it is connected to.
import t from 'tap';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from './helpers/tools.ts';
import { Cluster } from './helpers/launcher.ts';
import { FaultProxy } from './helpers/proxy.ts';
import { freePort } from './helpers/ports.ts';
import {
  openDevice,
  DeviceError,
  DeviceRangeError,
  DeviceUnavailableError,
  DeviceClosedError,
  WriteOutcomeUnknownError,
} from '../../src/index.ts';

interface Example {
  code: number | null;
  lines: string[];
  stderr: string;
}

/** Runs examples/NAME.ts as a user would (tsx), calling onLine for each stdout line. */
function runExample(name: string, args: string[], onLine: (l: string) => void = () => {}): Promise<Example> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import=tsx', join(ROOT, 'examples', `${name}.ts`), ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: string[] = [];
    let buffered = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => {
      buffered += c.toString();
      const parts = buffered.split('\n');
      buffered = parts.pop()!;
      for (const l of parts) {
        lines.push(l);
        onLine(l);
      }
    });
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('exit', (code) => resolve({ code, lines, stderr }));
  });
}

const lastJson = (e: Example) => JSON.parse(e.lines.filter((l) => l.startsWith('{')).at(-1) ?? '{}') as Record<string, unknown>;

t.test('client library and examples against a 3-node cluster', { timeout: 400_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:8MiB', 'wal:16MiB', 'queue:8MiB', 'applog:8MiB'] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();
  const nbd = (i: number) => `127.0.0.1:${cluster.slots[i]!.ports.nbd}`;

  t.test('typed errors', async (t) => {
    const dead = `127.0.0.1:${await freePort()}`;
    await t.rejects(openDevice('default', { endpoints: [dead], reconnectTimeoutMs: 300 }), DeviceUnavailableError, 'nothing listening: unavailable');
    const err = await openDevice('nope', { endpoints: [nbd(0)], reconnectTimeoutMs: 300 }).catch((e: unknown) => e);
    t.ok(err instanceof DeviceUnavailableError && err instanceof DeviceError, 'a device no member serves: unavailable');
    t.equal((err as DeviceError).code, 'XDEVICE_ERR_UNAVAILABLE');
    t.match((err as Error).message, /nope/);
    await t.rejects(openDevice('default', { endpoints: ['not an address'] }), { code: 'XDEVICE_ERR_CONFIG' });

    const dev = await openDevice('default', { endpoints: [dead, nbd(1)] });
    t.equal(dev.size, 8 * 1024 * 1024);
    t.equal(dev.endpoint, nbd(1), 'skips the dead endpoint');
    await t.rejects(dev.write(dev.size - 512, Buffer.alloc(1024)), DeviceRangeError);
    await t.rejects(dev.read(-1, 10), { code: 'XDEVICE_ERR_OUT_OF_RANGE' });
    await dev.write(0, Buffer.alloc(4096, 9));
    await dev.sync();
    t.same(await dev.read(0, 4096), Buffer.alloc(4096, 9));
    await dev.close();
    await t.rejects(dev.read(0, 1), DeviceClosedError);
  });

  t.test('a reset mid-write is of unknown outcome; reads move to another member', async (t) => {
    const proxy = await FaultProxy.start({ host: '127.0.0.1', port: cluster.slots[leader]!.ports.nbd });
    t.teardown(() => proxy.close());
    const dev = await openDevice('default', { endpoints: [proxy.address, nbd((leader + 1) % 3)], requestTimeoutMs: 2000 });
    t.equal(dev.endpoint, proxy.address);
    await dev.write(8192, Buffer.alloc(4096, 1), { fua: true });
    proxy.delayMs = 500;
    const inFlight = dev.write(8192, Buffer.alloc(4096, 2), { fua: true });
    await new Promise((r) => setTimeout(r, 100));
    proxy.set('reset');
    const err = await inFlight.catch((e: unknown) => e);
    t.ok(err instanceof WriteOutcomeUnknownError, `the in-flight write is reported as of unknown outcome (${(err as Error)?.message})`);
    t.match(err, { code: 'XDEVICE_ERR_OUTCOME_UNKNOWN', operation: 'write', offset: 8192, length: 4096 });
    const back = await dev.read(8192, 4096);
    t.equal(dev.endpoint, nbd((leader + 1) % 3), 'reconnected to the next member');
    t.ok(back.equals(Buffer.alloc(4096, 1)) || back.equals(Buffer.alloc(4096, 2)), 'the block is wholly old or wholly new');
    t.equal(dev.reconnects, 1);
    await dev.close();

    // A member that stalls without closing: the request times out and is retried elsewhere.
    const stall = await FaultProxy.start({ host: '127.0.0.1', port: cluster.slots[leader]!.ports.nbd });
    t.teardown(() => stall.close());
    const dev2 = await openDevice('default', { endpoints: [stall.address, nbd((leader + 2) % 3)], requestTimeoutMs: 1000 });
    stall.set('blackhole');
    t.same(await dev2.read(0, 4096), Buffer.alloc(4096, 9), 'a read stalled on a silent member completes on another');
    t.equal(dev2.endpoint, nbd((leader + 2) % 3));
    await dev2.close();
  });

  t.test('examples: message queue and application log', async (t) => {
    const endpoints = `--endpoints=${[0, 1, 2].map(nbd).join(',')}`;
    const queue = await runExample('message-queue', [endpoints, '--messages=60']);
    t.equal(queue.code, 0, queue.stderr);
    t.match(lastJson(queue), { sent: 60, received: 60, inOrder: true });
    const log = await runExample('app-log', [endpoints, '--lines=300']);
    t.equal(log.code, 0, log.stderr);
    t.match(lastJson(log), { written: 300, read: 300, complete: true });
  });

  t.test('example: database WAL across a SIGKILL of its leader', async (t) => {
    const now = await cluster.leaderIndex();
    // The leader first: the log's connection is the one that dies.
    const order = [now, (now + 1) % 3, (now + 2) % 3];
    let killed: Promise<unknown> | undefined;
    const wal = await runExample('database-wal', [`--endpoints=${order.map(nbd).join(',')}`, '--records=400'], (line) => {
      const m = /"committed":(\d+)/.exec(line);
      if (m && Number(m[1]) >= 60 && !killed) killed = cluster.kill(now);
    });
    await killed;
    t.ok(killed, 'the leader was killed mid-run');
    t.equal(wal.code, 0, `${wal.stderr}\n${wal.lines.slice(-5).join('\n')}`);
    const summary = lastJson(wal);
    t.match(summary, { records: 400, recovered: 400 }, 'every committed record is there after recovery');
    t.ok(Number(summary.reconnects) >= 1, `the log reconnected to another member (${summary.reconnects})`);
    const after = wal.lines.filter((l) => l.includes('"committed"')).map((l) => JSON.parse(l) as { endpoint: string });
    t.not(after.at(-1)?.endpoint, nbd(now), 'and finished on a survivor');
  });
});
