// The cryptography of a peer link keyed by the cluster secret.
//
// Handshake (the dialer proves itself first; the listener's first frame is a
// bare nonce, so nothing it says before the dialer has proved the secret helps
// anyone guess the secret offline):
//   listener → dialer   Challenge {version, nonceL}
//   dialer   → listener Hello {version, clusterId, from, to, nonceD, macD}
//   listener → dialer   Welcome {from, macL}        (only if macD was right)
// macD and macL are HMAC-SHA256(secret, role | clusterId | dialer | listener |
// nonceL | nonceD): each covers the other side's fresh nonce, so an old
// transcript proves nothing.
//
// After it, each direction has its own session key,
//   HKDF-SHA256(secret, salt = nonceD | nonceL, info = direction | ids),
// and every frame carries HMAC-SHA256(key, seq | length | kind | body), where
// seq counts that direction's frames from 0. The receiver checks the MAC
// before it decodes anything; a replayed, reordered, reflected (the other
// direction's key) or altered frame fails and closes the link.

import { createHmac, hkdfSync, timingSafeEqual } from 'node:crypto';
import { WireError } from '../device/wire.ts';
import { MAC_BYTES, PROTOCOL_VERSION } from './codec.ts';
const SESSION_KEY_BYTES = 32;

export class FrameMacError extends WireError {}

function label(role: string, clusterId: string, dialer: string, listener: string): string {
  return `xdevice-peer-v${PROTOCOL_VERSION}\0${role}\0${clusterId}\0${dialer}\0${listener}\0`;
}

/** The handshake MAC of one side ('dialer' or 'listener'). */
export function handshakeMac(secret: Buffer, role: 'dialer' | 'listener', clusterId: string, dialer: string, listener: string, nonceL: Buffer, nonceD: Buffer): Buffer {
  const h = createHmac('sha256', secret);
  h.update(label(role, clusterId, dialer, listener));
  h.update(nonceL);
  h.update(nonceD);
  return h.digest();
}

export function macEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** The session key of one direction of a link. */
export function sessionKey(secret: Buffer, direction: 'dialer→listener' | 'listener→dialer', clusterId: string, dialer: string, listener: string, nonceD: Buffer, nonceL: Buffer): Buffer {
  const salt = Buffer.concat([nonceD, nonceL]);
  return Buffer.from(hkdfSync('sha256', secret, salt, label(`session ${direction}`, clusterId, dialer, listener), SESSION_KEY_BYTES));
}

/** Appends a MAC to each frame sent in one direction. */
export class FrameSealer {
  private seq = 0n;
  private readonly seqBuf = Buffer.alloc(8);

  constructor(private readonly key: Buffer) {}

  /**
   * Seals one encoded frame ([u32 length | kind | ...] as buffers): returns a
   * copy of the first buffer with the length grown by MAC_BYTES, the other
   * buffers as they are (not copied), and the MAC.
   */
  seal(buffers: Buffer[]): Buffer[] {
    const head = Buffer.from(buffers[0]!);
    head.writeUInt32LE(head.readUInt32LE(0) + MAC_BYTES, 0);
    this.seqBuf.writeBigUInt64LE(this.seq++);
    const h = createHmac('sha256', this.key);
    h.update(this.seqBuf);
    h.update(head);
    for (let i = 1; i < buffers.length; i++) h.update(buffers[i]!);
    return buffers.length === 1 ? [head, h.digest()] : [head, ...buffers.slice(1), h.digest()];
  }
}

/** Checks and strips the MAC of each frame received in one direction. */
export class FrameOpener {
  private seq = 0n;
  private readonly seqBuf = Buffer.alloc(8);
  private readonly lenBuf = Buffer.alloc(4);

  constructor(private readonly key: Buffer) {}

  /** body = kind | ... | mac (the frame without its length prefix); returns kind | ... or throws FrameMacError. */
  open(body: Buffer): Buffer {
    if (body.length < 1 + MAC_BYTES) throw new FrameMacError('frame too short for its MAC');
    this.seqBuf.writeBigUInt64LE(this.seq++);
    this.lenBuf.writeUInt32LE(body.length, 0);
    const inner = body.subarray(0, body.length - MAC_BYTES);
    const h = createHmac('sha256', this.key);
    h.update(this.seqBuf);
    h.update(this.lenBuf);
    h.update(inner);
    if (!macEqual(h.digest(), body.subarray(body.length - MAC_BYTES))) throw new FrameMacError('frame MAC mismatch (altered, replayed or reordered)');
    return inner;
  }
}
