// The peer transport: one outbound TCP (optionally TLS) connection per peer,
// carrying this node's frames to it; the peer's frames to us arrive on the
// connection it dialled. Frames to a peer that is down are queued up to
// peerQueueBytesMax while a connection is being made and dropped beyond it:
// Raft retransmits, so a dropped message costs a retry, never correctness;
// each drop is reported as "unreachable" so Raft probes instead of streaming.
//
// Every link is authenticated before any frame counts (src/cluster/peer-auth.ts
// says how it is configured): with a cluster secret, the handshake and the
// per-frame MACs of src/cluster/peer-crypto.ts; with mutual TLS, each side's
// certificate must name the node id it claims. Until the handshake is done a
// connection may send only frames of peerHandshakeFrameBytesMax, at most
// peerHandshakingConnectionsMax connections handshake at once, and each has
// peerHandshakeTimeoutMs to finish. One id has one live inbound link: a second
// connection claiming an id whose link is alive is refused and logged.

import { EventEmitter } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Message } from '../raft/types.ts';
import { limits } from '../limits.ts';
import { parseHostPort } from '../parse.ts';
import { certificateNames, type PeerAuth } from './peer-auth.ts';
import { FrameOpener, FrameSealer, handshakeMac, macEqual, sessionKey } from './peer-crypto.ts';
import { InboundLinks } from './peer-inbound.ts';
import { readFrames } from './frame-reader.ts';
import {
  type Frame,
  FrameDecoder,
  FrameKind,
  NONCE_BYTES,
  PROTOCOL_VERSION,
  encodeHello,
  encodePing,
  encodeRaftMessage,
} from './codec.ts';

export type { TransportTls, PeerAuth } from './peer-auth.ts';

export interface TransportOptions {
  nodeId: string;
  clusterId: string;
  /** Where peers dial us; omitted for a node that only dials (tests). */
  listen?: { host: string; port: number };
  /** Peer id → host:port. */
  peers: Record<string, string>;
  /** Peer authentication; with none of secret, tls or insecure, every link is refused. */
  auth: PeerAuth;
  logger: Logger;
}

export interface PeerLinkStatus {
  id: string;
  address: string;
  connected: boolean;
  rttMs?: number;
  queuedBytes: number;
  droppedMessages: number;
  sentBytes: number;
}

export interface TransportEvents {
  /**
   * A Raft message from an authenticated peer, a way to answer on its
   * connection, and a way to close that connection (a protocol error).
   */
  message: [Message, (frame: Buffer) => void, (why: string) => void];
  /** Any other frame (snapshot stream) from an authenticated peer, and a way to close its link. */
  frame: [string, Frame, (why: string) => void];
  /** Messages to this peer were dropped (Raft should probe it). */
  unreachable: [string];
  /** A peer told us we were removed from the cluster. */
  removed: [string];
  peerRtt: [{ peer: string; ms: number }];
  connected: [string];
  disconnected: [string];
}

type LinkState = 'idle' | 'connecting' | 'ready' | 'backoff' | 'closed';

/** One outbound link: dial, authenticate, write, reconnect with backoff. */
class PeerLink {
  state: LinkState = 'idle';
  socket: net.Socket | undefined;
  /** Frames (each as buffers) waiting for the link: sealed when written, so MAC sequence numbers follow write order. */
  private queue: Buffer[][] = [];
  private sealer: FrameSealer | undefined;
  queuedBytes = 0;
  droppedMessages = 0;
  /** Bytes handed to this peer's sockets (sealed frames), since start. */
  sentBytes = 0;
  rttMs: number | undefined;
  /** Connections that reached 'ready' so far: names the current one (Transport.connection). */
  connections = 0;
  private attempts = 0;
  private timer: NodeJS.Timeout | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  private lastPongAt = 0;
  private corked = false;

  constructor(
    readonly id: string,
    public address: string,
    private readonly t: Transport,
  ) {}

  /** Queues or writes one frame (as buffers); false if it was dropped. */
  send(buffers: Buffer[]): boolean {
    if (this.state === 'closed') return false;
    let bytes = 0;
    for (const b of buffers) bytes += b.length;
    if (this.state === 'ready' && this.socket) {
      if (this.socket.writableLength + bytes > limits.peerQueueBytesMax) return this.drop();
      if (!this.corked) {
        this.corked = true;
        this.socket.cork();
        // Everything sent during this event-loop turn leaves in one writev.
        setImmediate(() => this.uncork());
      }
      this.write(buffers);
      return true;
    }
    if (this.queuedBytes + bytes > limits.peerQueueBytesMax) return this.drop();
    this.queue.push(buffers);
    this.queuedBytes += bytes;
    if (this.state === 'idle') this.connect();
    return true;
  }

  private write(buffers: Buffer[]): void {
    const s = this.socket!;
    for (const b of this.sealer ? this.sealer.seal(buffers) : buffers) {
      this.sentBytes += b.length;
      s.write(b);
    }
  }

  /** Bytes accepted but not yet handed to the kernel (for snapshot pacing). */
  get pendingBytes(): number {
    return this.queuedBytes + (this.socket?.writableLength ?? 0);
  }

  private drop(): false {
    this.droppedMessages++;
    this.t.emit('unreachable', this.id);
    return false;
  }

  private uncork(): void {
    this.corked = false;
    this.socket?.uncork();
  }

  connect(): void {
    if (this.state === 'closed' || this.state === 'connecting' || this.state === 'ready') return;
    if (!this.t.authConfigured) {
      // Never talk to a peer we cannot authenticate: stay idle, drop what was queued.
      this.t.refuseUnauthenticated();
      this.droppedMessages += this.queue.length;
      this.queue = [];
      this.queuedBytes = 0;
      return;
    }
    this.state = 'connecting';
    const { host, port } = parseHostPort(this.address);
    const o = this.t.options;
    const auth = o.auth;
    const socket: net.Socket = auth.tls
      ? tls.connect({
          host,
          port,
          cert: auth.tls.cert,
          key: auth.tls.key,
          ca: auth.tls.ca,
          // Not a host name: the certificate must name the node we dialled.
          checkServerIdentity: (_host, cert) => (certificateNames(cert).includes(this.id) ? undefined : new Error(`certificate of ${this.address} does not name ${this.id}`)),
        })
      : net.connect({ host, port });
    this.socket = socket;
    this.sealer = undefined;
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 1000);
    const decoder = new FrameDecoder(limits.peerHandshakeFrameBytesMax);
    const nonceD = randomBytes(NONCE_BYTES);
    let nonceL: Buffer | undefined;
    let opener: FrameOpener | undefined;
    let authenticated = false;
    const fail = (why: string): void => {
      this.t.options.logger.debug({ peer: this.id, why }, 'peer link down');
      socket.destroy();
    };
    // A peer behind a black hole accepts nothing and refuses nothing: give up and redial.
    const handshakeTimer = setTimeout(() => {
      if (!authenticated) fail('handshake timed out');
    }, limits.peerHandshakeTimeoutMs);
    handshakeTimer.unref();
    readFrames(socket, decoder, () => opener, fail, (f) => {
      if (!nonceL) {
        if (f.kind !== FrameKind.Challenge) return fail('expected Challenge');
        if (f.version !== PROTOCOL_VERSION) return fail(`peer speaks protocol version ${f.version}, this node ${PROTOCOL_VERSION}`);
        nonceL = Buffer.from(f.nonce);
        const mac = auth.secret ? handshakeMac(auth.secret, 'dialer', this.t.clusterId, o.nodeId, this.id, nonceL, nonceD) : Buffer.alloc(0);
        socket.write(encodeHello({ version: PROTOCOL_VERSION, clusterId: this.t.clusterId, from: o.nodeId, to: this.id, nonce: nonceD, mac }));
      } else if (!authenticated) {
        if (f.kind !== FrameKind.Welcome) return fail('expected Welcome');
        if (f.from !== this.id) return fail(`dialled ${this.id} but ${f.from} answered`);
        if (auth.secret) {
          const expect = handshakeMac(auth.secret, 'listener', this.t.clusterId, o.nodeId, this.id, nonceL, nonceD);
          if (!macEqual(expect, f.mac)) return fail('peer failed authentication');
          const ids = [this.t.clusterId, o.nodeId, this.id] as const;
          this.sealer = new FrameSealer(sessionKey(auth.secret, 'dialer→listener', ...ids, nonceD, nonceL));
          opener = new FrameOpener(sessionKey(auth.secret, 'listener→dialer', ...ids, nonceD, nonceL));
        }
        authenticated = true;
        decoder.frameBytesMax = limits.peerFrameBytesMax;
        clearTimeout(handshakeTimer);
        this.ready();
      } else if (f.kind === FrameKind.Removed) {
        if (f.nodeId === o.nodeId) this.t.emit('removed', this.id);
      } else if (f.kind === FrameKind.Pong) {
        this.lastPongAt = Date.now();
        this.rttMs = Number(process.hrtime.bigint() - BigInt(f.sentAtNs)) / 1e6;
        this.t.emit('peerRtt', { peer: this.id, ms: this.rttMs });
      } else {
        return fail(`unexpected frame ${f.kind} from the listener`);
      }
    });
    socket.on('error', (err) => this.t.options.logger.debug({ peer: this.id, err: err.message }, 'peer socket error'));
    socket.on('close', () => {
      clearTimeout(handshakeTimer);
      if (this.socket === socket) this.onClose();
    });
  }

  private ready(): void {
    this.state = 'ready';
    this.connections++;
    this.attempts = 0;
    this.lastPongAt = Date.now();
    const s = this.socket!;
    if (this.queue.length > 0) {
      s.cork();
      for (const frame of this.queue) this.write(frame);
      s.uncork();
    }
    this.queue = [];
    this.queuedBytes = 0;
    this.sendPing();
    this.pingTimer = setInterval(() => this.sendPing(), limits.peerPingIntervalMs);
    this.pingTimer.unref();
    if (this.t.options.auth.insecure) this.t.options.logger.warn({ peer: this.id }, 'insecure-peers: link to peer is NOT authenticated');
    this.t.emit('connected', this.id);
  }

  private sendPing(): void {
    if (Date.now() - this.lastPongAt > limits.peerIdleTimeoutMs) {
      // The peer (or the path to it) stopped answering without closing: a
      // partition. Drop the connection so queued messages fail fast.
      this.t.options.logger.debug({ peer: this.id }, 'peer idle, reconnecting');
      this.socket?.destroy();
      return;
    }
    this.send([encodePing(FrameKind.Ping, Number(process.hrtime.bigint() % BigInt(Number.MAX_SAFE_INTEGER)))]);
  }

  private onClose(): void {
    const wasReady = this.state === 'ready';
    clearInterval(this.pingTimer);
    this.socket = undefined;
    this.corked = false;
    if (this.queue.length > 0 || wasReady) {
      // Whatever was queued or in the kernel buffer may be lost.
      this.droppedMessages += this.queue.length;
      this.queue = [];
      this.queuedBytes = 0;
      this.t.emit('unreachable', this.id);
    }
    if (wasReady) this.t.emit('disconnected', this.id);
    if (this.state === 'closed') return;
    this.state = 'backoff';
    const base = Math.min(limits.peerReconnectMaxMs, limits.peerReconnectMinMs * 2 ** Math.min(this.attempts, 16));
    this.attempts++;
    // Full jitter in [base/2, base): peers restarted together do not dial in lockstep.
    const delay = base / 2 + Math.random() * (base / 2);
    this.timer = setTimeout(() => {
      this.state = 'idle';
      this.connect();
    }, delay);
    this.timer.unref();
  }

  close(): void {
    this.state = 'closed';
    clearTimeout(this.timer);
    clearInterval(this.pingTimer);
    this.queue = [];
    this.queuedBytes = 0;
    this.socket?.destroy();
    this.socket = undefined;
  }
}

export class Transport extends EventEmitter<TransportEvents> {
  private readonly links = new Map<string, PeerLink>();
  private server: net.Server | undefined;
  private readonly inbound = new InboundLinks(this);
  clusterId: string;

  private refusedLogged = false;

  constructor(readonly options: TransportOptions) {
    super();
    this.clusterId = options.clusterId;
    if (options.auth.insecure) options.logger.warn('insecure-peers: peer links are NOT authenticated; anyone who reaches the peer port can write to and reconfigure this cluster');
    for (const [id, address] of Object.entries(options.peers)) if (id !== options.nodeId) this.addPeer(id, address);
  }

  /** Starts listening; resolves with the bound address (port 0 picks one). */
  async listen(): Promise<{ host: string; port: number } | undefined> {
    const l = this.options.listen;
    if (!l) return undefined;
    const o = this.options;
    const server = o.auth.tls
      ? tls.createServer(
          { cert: o.auth.tls.cert, key: o.auth.tls.key, ca: o.auth.tls.ca, requestCert: true, rejectUnauthorized: true, handshakeTimeout: limits.peerHandshakeTimeoutMs },
          (s) => this.inbound.accept(s),
        )
      : net.createServer((s) => this.inbound.accept(s));
    // TLS handshakes happen before accept() sees the socket: bound them here.
    server.maxConnections = limits.peerInboundConnectionsMax;
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(l.port, l.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const a = server.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  addPeer(id: string, address: string): void {
    const existing = this.links.get(id);
    if (existing) {
      if (existing.address === address) return;
      existing.close();
    }
    this.links.set(id, new PeerLink(id, address, this));
  }

  removePeer(id: string): void {
    this.links.get(id)?.close();
    this.links.delete(id);
  }

  hasPeer(id: string): boolean {
    return this.links.has(id);
  }

  peerAddress(id: string): string | undefined {
    return this.links.get(id)?.address;
  }

  /** Sends a Raft message; false if it was dropped (unknown peer or full queue). */
  send(m: Message): boolean {
    const link = this.links.get(m.to);
    if (!link) {
      this.emit('unreachable', m.to);
      return false;
    }
    return link.send(encodeRaftMessage(m));
  }

  /** Sends an encoded frame (snapshot stream) to a peer. */
  sendFrame(to: string, buffers: Buffer[]): boolean {
    const link = this.links.get(to);
    return link ? link.send(buffers) : false;
  }

  /** Bytes waiting to reach the kernel for this peer (-1 if unknown or down). */
  pendingBytes(to: string): number {
    const link = this.links.get(to);
    return link && link.state === 'ready' ? link.pendingBytes : -1;
  }

  /** The current connection to `to` (a new number after every reconnect), undefined while it is down. */
  connection(to: string): number | undefined {
    const link = this.links.get(to);
    return link && link.state === 'ready' ? link.connections : undefined;
  }

  /** Resolves when the link to `to` has room (or rejects when it goes down). */
  waitDrain(to: string): Promise<void> {
    const link = this.links.get(to);
    const s = link?.socket;
    if (!link || link.state !== 'ready' || !s) return Promise.reject(new Error(`peer ${to} not connected`));
    if (s.writableLength < limits.snapshotChunkBytes * 4) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (err?: Error): void => {
        s.off('drain', onDrain);
        s.off('close', onClose);
        if (err) reject(err);
        else resolve();
      };
      const onDrain = (): void => done();
      const onClose = (): void => done(new Error(`peer ${to} disconnected`));
      s.on('drain', onDrain);
      s.on('close', onClose);
    });
  }

  status(): PeerLinkStatus[] {
    return [...this.links.values()].map((l) => ({
      id: l.id,
      address: l.address,
      connected: l.state === 'ready',
      ...(l.rttMs !== undefined ? { rttMs: l.rttMs } : {}),
      queuedBytes: l.pendingBytes,
      droppedMessages: l.droppedMessages,
      sentBytes: l.sentBytes,
    }));
  }

  /** Dials every peer now instead of on first send (startup: elections go faster). */
  connectAll(): void {
    for (const l of this.links.values()) if (l.state === 'idle') l.connect();
  }

  /** Connections refused because another live link already claimed their id. */
  get duplicateLinksRefused(): number {
    return this.inbound.duplicateLinksRefused;
  }

  /** True if links can be authenticated (or insecure-peers was asked for). */
  get authConfigured(): boolean {
    const a = this.options.auth;
    return a.secret !== undefined || a.tls !== undefined || a.insecure === true;
  }

  /** @internal Logs (once) that peer links are refused for want of authentication. */
  refuseUnauthenticated(): void {
    if (this.refusedLogged) return;
    this.refusedLogged = true;
    this.options.logger.error('peer links refused: no peer authentication configured (cluster-secret-file or peer-tls-*)');
  }

  async close(): Promise<void> {
    for (const l of this.links.values()) l.close();
    this.links.clear();
    this.inbound.closeAll();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
