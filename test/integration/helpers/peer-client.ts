// A raw peer-protocol client for attack tests and the peer fuzzer: it speaks
// to a live node's peer port byte by byte — the current handshake with a
// secret it may or may not know, or the old (protocol 1) handshake that
// needed no secret — and sends whatever frames a test builds.
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { FrameDecoder, FrameKind, decodeFrame, encodeHello, PROTOCOL_VERSION, type Frame } from '../../../src/cluster/codec.ts';
import { FrameOpener, FrameSealer, handshakeMac, sessionKey } from '../../../src/cluster/peer-crypto.ts';

export class PeerClient {
  readonly received: Buffer[] = [];
  readonly closed: Promise<void>;
  private sealer: FrameSealer | undefined;
  private opener: FrameOpener | undefined;
  private readonly decoder = new FrameDecoder();
  private waiters: (() => void)[] = [];

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      try {
        for (const f of this.decoder.push(c)) this.received.push(f);
      } catch {
        socket.destroy();
      }
      for (const w of this.waiters.splice(0)) w();
    });
    socket.on('error', () => {});
    this.closed = new Promise((r) =>
      socket.once('close', () => {
        for (const w of this.waiters.splice(0)) w();
        r();
      }),
    );
  }

  static async connect(port: number, host = '127.0.0.1'): Promise<PeerClient> {
    const s = net.connect(port, host);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', () => resolve());
      s.once('error', reject);
    });
    return new PeerClient(s);
  }

  get destroyed(): boolean {
    return this.socket.destroyed;
  }

  /** The next received frame body (kind byte first), or undefined if the socket closed first or timeoutMs passed. */
  async next(timeoutMs = 10_000): Promise<Buffer | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length === 0) {
      if (this.socket.destroyed || Date.now() > deadline) return undefined;
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    return this.received.shift();
  }

  /** What protocol 1 accepted from anyone without a secret: Hello, then an empty Auth. */
  legacyHandshake(from: string, to: string): void {
    const hello = Buffer.alloc(4 + 1 + 1 + 1 + (1 + from.length) + (1 + to.length) + 32);
    let o = hello.writeUInt32LE(hello.length - 4, 0);
    o = hello.writeUInt8(1, o); // Hello
    o = hello.writeUInt8(1, o); // version 1
    o = hello.writeUInt8(0, o); // empty cluster id
    o = hello.writeUInt8(from.length, o);
    o += hello.write(from, o);
    o = hello.writeUInt8(to.length, o);
    o += hello.write(to, o);
    randomBytes(32).copy(hello, o);
    const auth = Buffer.from([2, 0, 0, 0, 3, 0]); // Auth with an empty MAC
    this.socket.write(hello);
    this.socket.write(auth);
  }

  /** The current handshake; resolves true if the listener welcomed us. */
  async handshake(secret: Buffer | undefined, from: string, to: string, clusterId = ''): Promise<boolean> {
    const first = await this.next();
    if (!first) return false;
    const ch = decodeFrame(first);
    if (ch.kind !== FrameKind.Challenge) return false;
    const nonceD = randomBytes(32);
    const mac = secret ? handshakeMac(secret, 'dialer', clusterId, from, to, ch.nonce, nonceD) : Buffer.alloc(0);
    this.socket.write(encodeHello({ version: PROTOCOL_VERSION, clusterId, from, to, nonce: nonceD, mac }));
    const w = await this.next();
    if (!w || decodeFrame(w).kind !== FrameKind.Welcome) return false;
    if (secret) {
      this.sealer = new FrameSealer(sessionKey(secret, 'dialer→listener', clusterId, from, to, nonceD, ch.nonce));
      this.opener = new FrameOpener(sessionKey(secret, 'listener→dialer', clusterId, from, to, nonceD, ch.nonce));
    }
    return true;
  }

  /** Sends one encoded frame (sealed if the handshake set up a session key). */
  send(buffers: Buffer[]): boolean {
    if (this.socket.destroyed) return false;
    for (const b of this.sealer ? this.sealer.seal(buffers) : buffers) this.socket.write(b);
    return true;
  }

  /** Sends raw bytes as they are. */
  write(bytes: Buffer): boolean {
    if (this.socket.destroyed) return false;
    return this.socket.write(bytes);
  }

  /** Decodes a received frame (opening its MAC if there is a session). */
  decode(body: Buffer): Frame {
    return decodeFrame(this.opener ? this.opener.open(body) : body);
  }

  close(): void {
    this.socket.destroy();
  }
}
