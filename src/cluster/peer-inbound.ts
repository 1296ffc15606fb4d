// The listening side of the peer transport: each inbound connection runs the
// handshake of src/cluster/peer-crypto.ts (or TLS identity checks), under the
// pre-authentication bounds (frame size, handshakes at once, time), then
// delivers the dialer's frames to the Transport's listeners. One node id has
// one live inbound link.

import type net from 'node:net';
import type tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { limits } from '../limits.ts';
import { certificateNames } from './peer-auth.ts';
import { FrameOpener, FrameSealer, handshakeMac, macEqual, sessionKey } from './peer-crypto.ts';
import { FrameDecoder, FrameKind, NONCE_BYTES, PROTOCOL_VERSION, encodeChallenge, encodePing, encodeWelcome } from './codec.ts';
import type { Logger } from 'pino';
import type { PeerAuth } from './peer-auth.ts';
import { readFrames } from './frame-reader.ts';

interface InboundLink {
  socket: net.Socket;
  lastFrameAt: number;
}

/** What inbound links need of the transport that owns them (Transport in transport.ts). */
export interface InboundHost {
  readonly options: { readonly nodeId: string; readonly auth: PeerAuth; readonly logger: Logger };
  readonly clusterId: string;
  readonly authConfigured: boolean;
  refuseUnauthenticated(): void;
  /** 'message' (a Raft message, a reply writer, a fail) or 'frame' (peer id, frame, fail). */
  emit(event: 'message' | 'frame', ...args: unknown[]): boolean;
}

export class InboundLinks {
  private readonly sockets = new Set<net.Socket>();
  /** The authenticated inbound link of each peer id. */
  private readonly byId = new Map<string, InboundLink>();
  private handshaking = 0;
  /** Connections refused because another live link already claimed their id. */
  duplicateLinksRefused = 0;

  constructor(private readonly t: InboundHost) {}

  accept(socket: net.Socket): void {
    const o = this.t.options;
    const auth = o.auth;
    if (!this.t.authConfigured) {
      this.t.refuseUnauthenticated();
      socket.destroy();
      return;
    }
    if (this.handshaking >= limits.peerHandshakingConnectionsMax) {
      o.logger.warn({ remote: socket.remoteAddress }, 'refused peer connection: too many handshakes in progress');
      socket.destroy();
      return;
    }
    this.handshaking++;
    this.sockets.add(socket);
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 1000);
    // Until the dialer has proved itself, only handshake-sized frames: a larger
    // length closes the socket before anything is allocated for it.
    const decoder = new FrameDecoder(limits.peerHandshakeFrameBytesMax);
    const nonceL = randomBytes(NONCE_BYTES);
    let peer: string | undefined;
    let link: InboundLink | undefined;
    let opener: FrameOpener | undefined;
    let sealer: FrameSealer | undefined;
    let handshakeDone = false;
    const endHandshake = (): void => {
      if (handshakeDone) return;
      handshakeDone = true;
      this.handshaking--;
      clearTimeout(handshakeTimer);
    };
    const fail = (why: string): void => {
      o.logger.warn({ peer, remote: socket.remoteAddress, why }, 'refused peer connection');
      socket.destroy();
    };
    const write = (frame: Buffer): void => {
      if (socket.destroyed) return;
      for (const b of sealer ? sealer.seal([frame]) : [frame]) socket.write(b);
    };
    const handshakeTimer = setTimeout(() => fail('handshake timed out'), limits.peerHandshakeTimeoutMs);
    handshakeTimer.unref();
    socket.write(encodeChallenge({ version: PROTOCOL_VERSION, nonce: nonceL }));
    readFrames(socket, decoder, () => opener, fail, (f) => {
      if (peer === undefined) {
        if (f.kind !== FrameKind.Hello) return fail('expected Hello');
        if (f.version !== PROTOCOL_VERSION) return fail(`protocol version ${f.version}`);
        if (f.to !== o.nodeId) return fail(`dialled ${f.to}, this is ${o.nodeId}`);
        if (f.from === o.nodeId) return fail('a peer claims this node\'s own id');
        if (f.clusterId && this.t.clusterId && f.clusterId !== this.t.clusterId) return fail(`cluster ${f.clusterId}, this is ${this.t.clusterId}`);
        if (auth.tls) {
          const cert = (socket as tls.TLSSocket).getPeerCertificate();
          if (!cert || !certificateNames(cert).includes(f.from)) return fail(`certificate does not name ${f.from}`);
        }
        // Both MACs cover the dialer's cluster id (checked compatible above):
        // a node that joins learns the cluster id only from its first snapshot.
        if (auth.secret) {
          const expect = handshakeMac(auth.secret, 'dialer', f.clusterId, f.from, o.nodeId, nonceL, f.nonce);
          if (!macEqual(expect, f.mac)) return fail(`${f.from} failed authentication`);
        }
        // One id, one live link: a second process claiming a connected id is refused.
        const existing = this.byId.get(f.from);
        if (existing && !existing.socket.destroyed) {
          if (Date.now() - existing.lastFrameAt < limits.peerLinkLiveMs) {
            this.duplicateLinksRefused++;
            o.logger.warn({ peer: f.from, remote: socket.remoteAddress, existing: existing.socket.remoteAddress }, 'refused a second live link claiming a connected node id');
            socket.destroy();
            return;
          }
          // The old link went quiet: its dialer is gone or redialled; the new one wins.
          existing.socket.destroy();
        }
        peer = f.from;
        link = { socket, lastFrameAt: Date.now() };
        this.byId.set(peer, link);
        const mac = auth.secret ? handshakeMac(auth.secret, 'listener', f.clusterId, peer, o.nodeId, nonceL, f.nonce) : Buffer.alloc(0);
        socket.write(encodeWelcome({ from: o.nodeId, mac }));
        if (auth.secret) {
          const ids = [f.clusterId, peer, o.nodeId] as const;
          opener = new FrameOpener(sessionKey(auth.secret, 'dialer→listener', ...ids, f.nonce, nonceL));
          sealer = new FrameSealer(sessionKey(auth.secret, 'listener→dialer', ...ids, f.nonce, nonceL));
        }
        decoder.frameBytesMax = limits.peerFrameBytesMax;
        endHandshake();
        if (auth.insecure) o.logger.warn({ peer }, 'insecure-peers: link from peer is NOT authenticated');
        return;
      }
      link!.lastFrameAt = Date.now();
      switch (f.kind) {
        case FrameKind.Raft:
          // A peer speaks only for itself.
          if (f.message.from !== peer || f.message.to !== o.nodeId) return fail(`message ${f.message.from}→${f.message.to} on ${peer}'s link`);
          this.t.emit('message', f.message, write, fail);
          break;
        case FrameKind.Ping:
          write(encodePing(FrameKind.Pong, f.sentAtNs));
          break;
        case FrameKind.Hello:
        case FrameKind.Challenge:
        case FrameKind.Welcome:
        case FrameKind.Pong:
        case FrameKind.Removed:
          return fail(`unexpected frame ${f.kind}`);
        default:
          this.t.emit('frame', peer, f, fail);
      }
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      endHandshake();
      this.sockets.delete(socket);
      if (peer !== undefined && this.byId.get(peer)?.socket === socket) this.byId.delete(peer);
    });
  }

  closeAll(): void {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    this.byId.clear();
  }
}
