import t, { type Test } from 'tap';
import net from 'node:net';
import { pino } from 'pino';
import { MessageType, message, EntryType, type Message } from '../../src/raft/types.ts';
import { Transport } from '../../src/cluster/transport.ts';
import { encodeHello } from '../../src/cluster/codec.ts';

const logger = pino({ level: 'silent' });

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function waitFor<T>(emitter: Transport, event: 'message', pred: (m: Message) => boolean): Promise<Message> {
  return new Promise((resolve) => {
    const on = (m: Message) => {
      if (pred(m)) {
        emitter.off(event, on);
        resolve(m);
      }
    };
    emitter.on(event, on);
  });
}

async function pair(t: Test, secretA?: string, secretB?: string) {
  const [pa, pb] = [await freePort(), await freePort()];
  const peers = { a: `127.0.0.1:${pa}`, b: `127.0.0.1:${pb}` };
  const a = new Transport({ nodeId: 'a', clusterId: 'c', listen: { host: '127.0.0.1', port: pa }, peers, logger, auth: secretA ? { secret: Buffer.from(secretA) } : { insecure: true } });
  const b = new Transport({ nodeId: 'b', clusterId: 'c', listen: { host: '127.0.0.1', port: pb }, peers, logger, auth: secretB ? { secret: Buffer.from(secretB) } : { insecure: true } });
  await a.listen();
  await b.listen();
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  return { a, b, peers };
}

t.test('messages flow both ways, in order, payloads intact', async (t) => {
  const { a, b } = await pair(t, 's3cret', 's3cret');
  const got: Message[] = [];
  const done = new Promise<void>((resolve) =>
    b.on('message', (m) => {
      got.push(m);
      if (got.length === 100) resolve();
    }),
  );
  for (let i = 0; i < 100; i++) {
    a.send(message({ type: MessageType.App, from: 'a', to: 'b', index: i, entries: [{ term: 1, index: i + 1, type: EntryType.Normal, data: Buffer.alloc(3000, i) }] }));
  }
  await done;
  t.same(got.map((m) => m.index), [...Array(100).keys()]);
  t.ok(got.every((m, i) => m.entries[0]!.data.equals(Buffer.alloc(3000, i))));
  const back = waitFor(a, 'message', (m) => m.type === MessageType.AppResp);
  b.send(message({ type: MessageType.AppResp, from: 'b', to: 'a', index: 99 }));
  t.equal((await back).index, 99);
});

t.test('a peer with the wrong secret is refused and its messages never delivered', async (t) => {
  const { a, b } = await pair(t, 'right', 'wrong');
  let delivered = 0;
  b.on('message', () => delivered++);
  a.on('message', () => delivered++);
  const unreachable = new Promise<string>((resolve) => a.once('unreachable', resolve));
  a.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b' }));
  t.equal(await unreachable, 'b', 'the sender learns the peer is unreachable');
  b.send(message({ type: MessageType.Heartbeat, from: 'b', to: 'a' }));
  await new Promise<void>((resolve) => b.once('unreachable', () => resolve()));
  t.equal(delivered, 0);
});

t.test('a raw client that skips authentication is dropped', async (t) => {
  const { b, peers } = await pair(t, 'k', 'k');
  let delivered = 0;
  b.on('message', () => delivered++);
  const [host, port] = peers.b.split(':');
  const s = net.connect(Number(port), host);
  await new Promise((r) => s.once('connect', r));
  s.resume();
  s.write(encodeHello({ version: 1, clusterId: 'c', from: 'a', to: 'b', nonce: Buffer.alloc(32) }));
  // an Auth with a bad MAC
  const bad = Buffer.alloc(4 + 1 + 1 + 32);
  bad.writeUInt32LE(1 + 1 + 32, 0);
  bad[4] = 3;
  bad[5] = 32;
  s.write(bad);
  await new Promise((r) => s.once('close', r));
  t.equal(delivered, 0);
});

t.test('the link reconnects after the peer restarts', async (t) => {
  const [pa, pb] = [await freePort(), await freePort()];
  const peers = { a: `127.0.0.1:${pa}`, b: `127.0.0.1:${pb}` };
  const a = new Transport({ nodeId: 'a', clusterId: 'c', listen: { host: '127.0.0.1', port: pa }, peers, logger, auth: { insecure: true } });
  await a.listen();
  let b = new Transport({ nodeId: 'b', clusterId: 'c', listen: { host: '127.0.0.1', port: pb }, peers, logger, auth: { insecure: true } });
  await b.listen();
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  const first = waitFor(b, 'message', () => true);
  a.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', commit: 1 }));
  t.equal((await first).commit, 1);
  await b.close();
  b = new Transport({ nodeId: 'b', clusterId: 'c', listen: { host: '127.0.0.1', port: pb }, peers, logger, auth: { insecure: true } });
  await b.listen();
  // Keep sending (as Raft's heartbeats would) until one gets through.
  const got = waitFor(b, 'message', (m) => m.commit === 2);
  const timer = setInterval(() => a.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', commit: 2 })), 20);
  t.equal((await got).commit, 2);
  clearInterval(timer);
  t.ok(a.status().find((p) => p.id === 'b')!.connected);
});

t.test('messages to an unknown peer are reported unreachable', async (t) => {
  const { a } = await pair(t);
  const u = new Promise<string>((resolve) => a.once('unreachable', resolve));
  t.equal(a.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'zz' })), false);
  t.equal(await u, 'zz');
});

t.test('mutual TLS: peers with certificates from the cluster CA talk, others are refused', async (t) => {
  const { execFileSync } = await import('node:child_process');
  const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ca = (name: string) => ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.crt`);
  const leaf = (name: string, caName: string) => {
    ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`);
    ssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${caName}.crt`, '-CAkey', `${caName}.key`, '-CAcreateserial', '-days', '2', '-out', `${name}.crt`);
  };
  ca('ca');
  ca('evil-ca');
  leaf('a', 'ca');
  leaf('b', 'ca');
  leaf('c', 'evil-ca');
  const tlsOf = (name: string, caName = 'ca') => ({ cert: readFileSync(join(dir, `${name}.crt`)), key: readFileSync(join(dir, `${name}.key`)), ca: readFileSync(join(dir, `${caName}.crt`)) });
  const [pa, pb, pc] = [await freePort(), await freePort(), await freePort()];
  const peers = { a: `127.0.0.1:${pa}`, b: `127.0.0.1:${pb}`, c: `127.0.0.1:${pc}` };
  const a = new Transport({ nodeId: 'a', clusterId: 'x', listen: { host: '127.0.0.1', port: pa }, peers, logger, auth: { tls: tlsOf('a'), secret: Buffer.from('s') } });
  const b = new Transport({ nodeId: 'b', clusterId: 'x', listen: { host: '127.0.0.1', port: pb }, peers, logger, auth: { tls: tlsOf('b'), secret: Buffer.from('s') } });
  // c knows the secret but its certificate comes from another CA.
  const c = new Transport({ nodeId: 'c', clusterId: 'x', listen: { host: '127.0.0.1', port: pc }, peers, logger, auth: { tls: tlsOf('c', 'evil-ca'), secret: Buffer.from('s') } });
  for (const x of [a, b, c]) await x.listen();
  t.teardown(async () => {
    for (const x of [a, b, c]) await x.close();
  });
  const got = waitFor(b, 'message', (m) => m.commit === 42);
  a.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', commit: 42 }));
  t.equal((await got).commit, 42, 'a reached b over mutual TLS');
  let fromC = 0;
  b.on('message', (m) => {
    if (m.from === 'c') fromC++;
  });
  const refused = new Promise<string>((resolve) => c.once('unreachable', resolve));
  c.send(message({ type: MessageType.Heartbeat, from: 'c', to: 'b', commit: 7 }));
  t.equal(await refused, 'b', 'c could not establish a link to b');
  t.equal(fromC, 0, 'nothing from c was delivered');
});
