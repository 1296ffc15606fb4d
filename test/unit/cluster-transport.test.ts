import t, { type Test } from 'tap';
import net from 'node:net';
import { pino } from 'pino';
import { MessageType, message, EntryType, type Message } from '../../src/raft/types.ts';
import { Transport } from '../../src/cluster/transport.ts';
import { FrameDecoder, FrameKind, decodeFrame, encodeHello, encodePing } from '../../src/cluster/codec.ts';
import { FrameOpener, FrameSealer, handshakeMac, sessionKey } from '../../src/cluster/peer-crypto.ts';
import { limits } from '../../src/limits.ts';
import { parseHostPort } from '../../src/parse.ts';

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

/** Another transport 'a' for an existing 'b' (pair() made 'a' too, closed first here). */
async function pairWith(t: Test, _b: Transport, peers: { a: string; b: string }) {
  const a = new Transport({ nodeId: 'a', clusterId: 'c', peers, logger, auth: { secret: Buffer.from('k'.repeat(32)) } });
  t.teardown(() => a.close());
  return { a };
}

/** A raw TCP client of a listener: reads its frames, writes what a test says. */
async function raw(address: string) {
  const { host, port } = parseHostPort(address);
  const s = net.connect(port, host);
  await new Promise((r) => s.once('connect', r));
  const d = new FrameDecoder();
  const frames: Buffer[] = [];
  s.on('data', (c: Buffer) => frames.push(...d.push(c)));
  const closed = new Promise<void>((r) => s.once('close', () => r()));
  s.on('error', () => {});
  const next = async (): Promise<Buffer> => {
    while (frames.length === 0) {
      if (s.destroyed) throw new Error('closed');
      await new Promise((r) => setTimeout(r, 5));
    }
    return frames.shift()!;
  };
  return { s, frames, closed, next };
}

t.test('the listener says nothing that helps an offline guess before the dialer proves the secret', async (t) => {
  const { b, peers } = await pair(t, 'k'.repeat(32), 'k'.repeat(32));
  let delivered = 0;
  b.on('message', () => delivered++);
  const c = await raw(peers.b);
  const first = await c.next();
  const challenge = decodeFrame(first);
  t.equal(challenge.kind, FrameKind.Challenge);
  t.equal(first.length, 1 + 1 + 32, 'the Challenge is a version and a nonce, nothing derived from the secret');
  // A Hello with a wrong MAC: closed, and no Welcome (which would carry the listener's MAC).
  c.s.write(encodeHello({ version: 2, clusterId: 'c', from: 'a', to: 'b', nonce: Buffer.alloc(32, 7), mac: Buffer.alloc(32) }));
  await c.closed;
  t.same(c.frames, [], 'nothing after the Challenge');
  // An empty MAC (the old "no secret" handshake) is refused the same way.
  const e = await raw(peers.b);
  await e.next();
  e.s.write(encodeHello({ version: 2, clusterId: 'c', from: 'a', to: 'b', nonce: Buffer.alloc(32, 7), mac: Buffer.alloc(0) }));
  await e.closed;
  t.same(e.frames, []);
  t.equal(delivered, 0);
});

t.test('with the secret, a raw client is welcomed, and every later frame must carry a MAC', async (t) => {
  const secret = Buffer.from('k'.repeat(32));
  const { b, peers } = await pair(t, 'k'.repeat(32), 'k'.repeat(32));
  const got: number[] = [];
  b.on('message', (m) => got.push(m.commit));
  const hello = async () => {
    const c = await raw(peers.b);
    const ch = decodeFrame(await c.next()) as { nonce: Buffer };
    const nonceD = Buffer.alloc(32, 9);
    c.s.write(encodeHello({ version: 2, clusterId: 'c', from: 'a', to: 'b', nonce: nonceD, mac: handshakeMac(secret, 'dialer', 'c', 'a', 'b', ch.nonce, nonceD) }));
    const w = decodeFrame(await c.next()) as { kind: number; mac: Buffer };
    t.equal(w.kind, FrameKind.Welcome);
    t.same(w.mac, handshakeMac(secret, 'listener', 'c', 'a', 'b', ch.nonce, nonceD), 'the listener proves itself after the dialer did');
    const sealer = new FrameSealer(sessionKey(secret, 'dialer→listener', 'c', 'a', 'b', nonceD, ch.nonce));
    return { c, sealer };
  };
  const { encodeRaftMessage } = await import('../../src/cluster/codec.ts');
  const hb = (commit: number) => encodeRaftMessage(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', commit }));
  const one = await hello();
  for (const buf of one.sealer.seal(hb(5))) one.c.s.write(buf);
  while (!got.includes(5)) await new Promise((r) => setTimeout(r, 5));
  // The same sealed frame again (a replay): the sequence number no longer matches.
  const replay = one.sealer.seal(hb(6));
  for (const buf of replay) one.c.s.write(buf);
  for (const buf of replay) one.c.s.write(buf);
  await one.c.closed;
  t.same(got, [5, 6], 'the replayed frame was refused and closed the link');
  // An unsealed frame after the handshake (no MAC): closed, never delivered.
  await new Promise((r) => setTimeout(r, limits.peerLinkLiveMs));
  const two = await hello();
  for (const buf of hb(7)) two.c.s.write(buf);
  await two.c.closed;
  // A sealed frame with one byte changed.
  await new Promise((r) => setTimeout(r, limits.peerLinkLiveMs));
  const three = await hello();
  const sealed = Buffer.concat(three.sealer.seal(hb(8)));
  sealed[20] ^= 1;
  three.c.s.write(sealed);
  await three.c.closed;
  t.same(got, [5, 6]);
});

t.test('frame MACs: altered, replayed, reordered and reflected frames fail', async (t) => {
  const key = (dir: 'dialer→listener' | 'listener→dialer') => sessionKey(Buffer.alloc(32, 1), dir, 'c', 'a', 'b', Buffer.alloc(32, 2), Buffer.alloc(32, 3));
  const frame = (n: number) => Buffer.concat(new FrameSealer(key('dialer→listener')).seal([encodePing(FrameKind.Ping, n)])).subarray(4);
  const s = new FrameSealer(key('dialer→listener'));
  const f0 = Buffer.concat(s.seal([encodePing(FrameKind.Ping, 1)])).subarray(4);
  const f1 = Buffer.concat(s.seal([encodePing(FrameKind.Ping, 2)])).subarray(4);
  const o = new FrameOpener(key('dialer→listener'));
  t.equal(decodeFrame(o.open(f0)).kind, FrameKind.Ping);
  t.throws(() => o.open(f0), /MAC mismatch/, 'replay');
  t.throws(() => new FrameOpener(key('dialer→listener')).open(f1), /MAC mismatch/, 'reordered (seq 1 first)');
  t.throws(() => new FrameOpener(key('listener→dialer')).open(frame(1)), /MAC mismatch/, 'reflected into the other direction');
  const bad = Buffer.from(frame(1));
  bad[3] ^= 0x80;
  t.throws(() => new FrameOpener(key('dialer→listener')).open(bad), /MAC mismatch/, 'altered');
  t.throws(() => new FrameOpener(key('dialer→listener')).open(Buffer.alloc(10)), /too short/);
});

t.test('before authentication: big frames close the socket, idle ones time out, handshakes are capped', async (t) => {
  const { b, peers } = await pair(t, 'k'.repeat(32), 'k'.repeat(32));
  const big = await raw(peers.b);
  await big.next();
  const header = Buffer.alloc(5);
  header.writeUInt32LE(48 * 1024 * 1024, 0);
  header[4] = FrameKind.Hello;
  big.s.write(header);
  await big.closed;
  t.ok(big.s.destroyed, 'a 48 MiB pre-auth frame closed the socket');
  const many = [];
  for (let i = 0; i < limits.peerHandshakingConnectionsMax + 8; i++) many.push(await raw(peers.b));
  await new Promise((r) => setTimeout(r, 200));
  const open = many.filter((c) => !c.s.destroyed && c.frames.length > 0).length;
  t.equal(open, limits.peerHandshakingConnectionsMax, 'connections beyond the cap are closed at once');
  const started = Date.now();
  await Promise.all(many.map((c) => c.closed));
  const waited = Date.now() - started;
  t.ok(waited < limits.peerHandshakeTimeoutMs + 3000, `idle handshakes closed after the timeout (${waited} ms)`);
  // The link from a real peer still comes up afterwards.
  const { a } = await pairWith(t, b, peers);
  const got = waitFor(b, 'message', (m) => m.commit === 3);
  a.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', commit: 3 }));
  t.equal((await got).commit, 3);
});

t.test('one id, one live link: a second process claiming a connected id is refused', async (t) => {
  const [pa, pb] = [await freePort(), await freePort()];
  const peers = { a: `127.0.0.1:${pa}`, b: `127.0.0.1:${pb}` };
  const auth = { secret: Buffer.alloc(32, 5) };
  const a1 = new Transport({ nodeId: 'a', clusterId: 'c', listen: { host: '127.0.0.1', port: pa }, peers, logger, auth });
  const a2 = new Transport({ nodeId: 'a', clusterId: 'c', peers, logger, auth });
  const b = new Transport({ nodeId: 'b', clusterId: 'c', listen: { host: '127.0.0.1', port: pb }, peers, logger, auth });
  await a1.listen();
  await b.listen();
  t.teardown(async () => {
    for (const x of [a1, a2, b]) await x.close();
  });
  const first = waitFor(b, 'message', (m) => m.commit === 1);
  a1.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', commit: 1 }));
  await first;
  // a1 keeps its link alive (pings); a2 claims the same id.
  let fromSecond = 0;
  b.on('message', (m) => {
    if (m.commit === 2) fromSecond++;
  });
  const timer = setInterval(() => a2.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', commit: 2 })), 50);
  const deadline = Date.now() + 3000;
  while (b.duplicateLinksRefused < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  clearInterval(timer);
  t.ok(b.duplicateLinksRefused >= 2, `the second link was refused (${b.duplicateLinksRefused} times)`);
  t.equal(fromSecond, 0, 'nothing from the second process reached b');
  // Once the first is gone, the id is free again.
  await a1.close();
  const later = waitFor(b, 'message', (m) => m.commit === 9);
  const retry = setInterval(() => a2.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b', commit: 9 })), 50);
  t.equal((await later).commit, 9, 'a2 links once a1 is gone');
  clearInterval(retry);
});

t.test('a transport without any peer authentication refuses every link', async (t) => {
  const [pa, pb] = [await freePort(), await freePort()];
  const peers = { a: `127.0.0.1:${pa}`, b: `127.0.0.1:${pb}` };
  const a = new Transport({ nodeId: 'a', clusterId: 'c', listen: { host: '127.0.0.1', port: pa }, peers, logger, auth: {} });
  const b = new Transport({ nodeId: 'b', clusterId: 'c', listen: { host: '127.0.0.1', port: pb }, peers, logger, auth: {} });
  await a.listen();
  await b.listen();
  t.teardown(async () => {
    await a.close();
    await b.close();
  });
  let delivered = 0;
  b.on('message', () => delivered++);
  a.send(message({ type: MessageType.Heartbeat, from: 'a', to: 'b' }));
  const c = await raw(peers.b);
  await c.closed;
  t.same(c.frames, [], 'the listener closed a raw connection without a word');
  t.equal(delivered, 0);
  t.equal(a.status()[0]!.connected, false);
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

  // A certificate from the right CA binds its holder to the id it names.
  const px = await freePort();
  const x = new Transport({ nodeId: 'x', clusterId: 'x', peers: { ...peers, x: `127.0.0.1:${px}` }, logger, auth: { tls: tlsOf('a') } });
  t.teardown(() => x.close());
  let fromX = 0;
  b.on('message', (m) => {
    if (m.from === 'x') fromX++;
  });
  const xRefused = new Promise<string>((resolve) => x.once('unreachable', resolve));
  x.send(message({ type: MessageType.Heartbeat, from: 'x', to: 'b', commit: 8 }));
  t.equal(await xRefused, 'b', "x, holding a's certificate, is refused by b");
  t.equal(fromX, 0);
  // And a dialer checks that the listener's certificate names the node it dialled:
  // here "b" is at a's address, and a's certificate (from the right CA) names a.
  const lines: string[] = [];
  const capture = pino({ level: 'debug' }, { write: (l: string) => lines.push(l) });
  const dialer = new Transport({ nodeId: 'b', clusterId: 'x', peers: { b: peers.b, a: peers.c, c: peers.a }, logger: capture, auth: { tls: tlsOf('b') } });
  t.teardown(() => dialer.close());
  const wrongRefused = new Promise<string>((resolve) => dialer.once('unreachable', resolve));
  dialer.send(message({ type: MessageType.Heartbeat, from: 'b', to: 'c', commit: 9 }));
  t.equal(await wrongRefused, 'c');
  t.match(lines.join(''), /does not name c/, "the dialer refused a listener whose certificate names another node");
});
