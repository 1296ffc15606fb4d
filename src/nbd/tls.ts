// TLS for NBD_OPT_STARTTLS: X.509 certificates or TLS-PSK, configured the way
// nbdkit and libnbd are (PSK files hold `identity:hexkey` lines, the identity
// being the user name of an nbds:// URI; --tls-verify-peer requires client
// certificates signed by --tls-ca). The socket is upgraded in place after the
// ACK to STARTTLS, so the TLS handshake runs over the same TCP stream. What the
// client proved (a verified certificate subject, a PSK identity, or nothing)
// is its principal for the export allow lists (./access.ts).

import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import * as tls from 'node:tls';
import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import { ANONYMOUS, describeIdentity, type ClientIdentity } from './access.ts';

export type TlsMode = 'off' | 'on' | 'require';

export interface NbdTlsOptions {
  mode: TlsMode;
  certFile?: string;
  keyFile?: string;
  /** The CA that signs client certificates (only with verifyPeer). */
  caFile?: string;
  /** TLS-PSK instead of certificates; the client's PSK identity is its principal. */
  pskFile?: string;
  /** Every TLS client must present a certificate signed by caFile; its subject is the client's principal. */
  verifyPeer?: boolean;
}

export class TlsConfigError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_TLS_CONFIG', message);
  }
}

/** Parses a PSK file: one `identity:hexkey` per line; blank lines and `#` comments ignored. */
export function parsePskFile(text: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const colon = line.lastIndexOf(':');
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^(?:[0-9a-fA-F]{2})+$/.test(hex)) {
      throw new TlsConfigError(`PSK file line ${index + 1}: expected identity:hexkey`);
    }
    keys.set(identity, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) throw new TlsConfigError('PSK file holds no keys');
  return keys;
}

// TLS-PSK needs PSK cipher suites for TLS 1.2; TLS 1.3 suites work with PSK as they are.
const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256';

/** A client refused during STARTTLS: its handshake failed, or it lacks a client certificate that verifies. */
export class TlsPeerRefused extends XDeviceError {
  /** handshake: TLS itself failed (wrong PSK, no common cipher, the client hung up); certificate: it finished, but the client certificate is missing or does not verify. */
  readonly stage: 'handshake' | 'certificate';
  /** The subject the client's certificate claimed (unverified), when it sent one. */
  readonly claimedSubject: string | undefined;

  constructor(stage: 'handshake' | 'certificate', reason: string, claimedSubject?: string) {
    super('XDEVICE_ERR_TLS_PEER', reason);
    this.stage = stage;
    this.claimedSubject = claimedSubject;
  }
}

/** A finished TLS upgrade: the socket and what the client proved (a verified subject, a PSK identity, or nothing). */
export interface SecureClient {
  socket: tls.TLSSocket;
  identity: ClientIdentity;
}

/** Node's subject object (`{CN: 'alice', OU: ['a', 'b']}`) as attribute pairs, in certificate order. */
function subjectAttributes(subject: Record<string, string | string[]>): Array<[string, string]> {
  return Object.entries(subject).flatMap(([type, values]) => (Array.isArray(values) ? values : [values]).map((v): [string, string] => [type, v]));
}

/** Both ends of a TCP connection: unique among the connections open on this host. */
function connectionKey(socket: Socket): string {
  return `${socket.localAddress}|${socket.localPort}|${socket.remoteAddress}|${socket.remotePort}`;
}

interface PendingUpgrade {
  socket: Socket;
  resolve(client: SecureClient): void;
  reject(error: Error): void;
  pskIdentity: string | undefined;
  onClose(): void;
}

/**
 * Server side of STARTTLS, built once from the configuration (files are read
 * at startup). Upgrades go through one tls.Server that never listens (the TCP
 * socket is handed to it as a 'connection'), because only a tls.Server says
 * whether the client certificate verified: a bare TLSSocket accepts any
 * certificate it is shown. The server's events name the TLS socket, not the
 * TCP one, so each upgrade is found again by the connection's addresses.
 */
export class ServerTls {
  readonly mode: TlsMode;
  /** Client certificates are required and their subjects are principals. */
  readonly verifyPeer: boolean;
  private readonly pskKeys: Map<string, Buffer> | undefined;
  private readonly server: tls.Server;
  private readonly pending = new Map<string, PendingUpgrade>();

  constructor(config: NbdTlsOptions) {
    this.mode = config.mode;
    this.verifyPeer = config.verifyPeer === true;
    this.pskKeys = config.mode !== 'off' && config.pskFile !== undefined ? parsePskFile(readFileSync(config.pskFile, 'utf8')) : undefined;
    this.server = tls.createServer({ minVersion: 'TLSv1.2', handshakeTimeout: limits.handshakeTimeoutMs, ...this.credentials(config) });
    this.server.on('secureConnection', (secure: tls.TLSSocket) => this.secured(secure));
    this.server.on('tlsClientError', (error: Error, secure: tls.TLSSocket) => {
      this.settle(connectionKey(secure))?.reject(new TlsPeerRefused('handshake', `TLS handshake failed: ${error.message}`));
    });
  }

  /** The certificates or PSK callback for the configuration, checked (a bad file fails here, at startup). */
  private credentials(config: NbdTlsOptions): tls.TlsOptions {
    if (config.mode === 'off') {
      if (this.verifyPeer) throw new TlsConfigError('--tls-verify-peer needs --tls on or require');
      return {};
    }
    const keys = this.pskKeys;
    if (keys !== undefined) {
      if (this.verifyPeer) {
        throw new TlsConfigError('--tls-verify-peer checks X.509 client certificates; with --tls-psk every client already proves a key from the PSK file: drop --tls-verify-peer');
      }
      return {
        ciphers: `${tls.DEFAULT_CIPHERS}:${PSK_CIPHERS}`,
        pskCallback: (secure: tls.TLSSocket, identity: string) => {
          const upgrade = this.pending.get(connectionKey(secure));
          if (upgrade === undefined) return null;
          upgrade.pskIdentity = identity;
          return keys.get(identity) ?? null;
        },
      };
    }
    if (config.certFile === undefined || config.keyFile === undefined) {
      throw new TlsConfigError(`--tls ${config.mode} needs --tls-cert and --tls-key, or --tls-psk`);
    }
    if (this.verifyPeer !== (config.caFile !== undefined)) {
      throw new TlsConfigError(this.verifyPeer
        ? '--tls-verify-peer needs --tls-ca, the CA that signs client certificates'
        : '--tls-ca is used only to verify client certificates: add --tls-verify-peer (which requires them), or drop --tls-ca');
    }
    return {
      cert: readFileSync(config.certFile),
      key: readFileSync(config.keyFile),
      ...(config.caFile !== undefined ? { ca: readFileSync(config.caFile) } : {}),
      // The verdict is read in secured(), so a refusal can say why and who.
      requestCert: this.verifyPeer,
      rejectUnauthorized: false,
    };
  }

  /** The PSK file holds `identity`. */
  hasPskIdentity(identity: string): boolean {
    return this.pskKeys?.has(identity) ?? false;
  }

  /** Runs the TLS handshake over the TCP socket; resolves once it succeeded and the client is who its certificate says. */
  upgrade(socket: Socket): Promise<SecureClient> {
    const key = connectionKey(socket);
    if (socket.remotePort === undefined || this.pending.has(key)) {
      return Promise.reject(new TlsPeerRefused('handshake', 'the connection closed, or is already in a TLS handshake'));
    }
    return new Promise((resolve, reject) => {
      const onClose = (): void => this.settle(key)?.reject(new TlsPeerRefused('handshake', 'connection closed during the TLS handshake'));
      this.pending.set(key, { socket, resolve, reject, pskIdentity: undefined, onClose });
      socket.once('close', onClose);
      this.server.emit('connection', socket);
    });
  }

  /** The upgrade for `key`, no longer pending. */
  private settle(key: string): PendingUpgrade | undefined {
    const upgrade = this.pending.get(key);
    if (upgrade === undefined) return undefined;
    this.pending.delete(key);
    upgrade.socket.removeListener('close', upgrade.onClose);
    return upgrade;
  }

  private secured(secure: tls.TLSSocket): void {
    const upgrade = this.settle(connectionKey(secure));
    if (upgrade === undefined) {
      secure.destroy();
      return;
    }
    if (upgrade.pskIdentity !== undefined) {
      upgrade.resolve({ socket: secure, identity: { kind: 'psk', identity: upgrade.pskIdentity } });
      return;
    }
    if (!this.verifyPeer) {
      upgrade.resolve({ socket: secure, identity: ANONYMOUS });
      return;
    }
    const certificate = secure.getPeerCertificate();
    const attributes = certificate?.subject !== undefined ? subjectAttributes(certificate.subject as unknown as Record<string, string | string[]>) : undefined;
    if (!secure.authorized || attributes === undefined) {
      const claimed = attributes === undefined ? undefined : describeIdentity({ kind: 'subject', attributes });
      secure.destroy();
      upgrade.reject(new TlsPeerRefused(
        'certificate',
        claimed === undefined
          ? 'no client certificate (tls-verify-peer requires one signed by tls-ca)'
          : `client certificate ${claimed} did not verify against tls-ca: ${String(secure.authorizationError)}`,
        claimed,
      ));
      return;
    }
    upgrade.resolve({ socket: secure, identity: { kind: 'subject', attributes } });
  }
}

export interface ClientTlsOptions {
  /** X.509: CA to verify the server against (PEM), and optional client certificate. */
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
  servername?: string;
  /** TLS-PSK: identity and key. */
  psk?: { identity: string; key: Buffer };
  /** Skip server certificate verification (tests only). */
  insecure?: boolean;
}

/** Client side: wraps the socket after the server acknowledged STARTTLS. */
export function connectTls(socket: Socket, options: ClientTlsOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const connectOptions: tls.ConnectionOptions = { socket, minVersion: 'TLSv1.2' };
    if (options.psk !== undefined) {
      const psk = options.psk;
      connectOptions.ciphers = `${tls.DEFAULT_CIPHERS}:${PSK_CIPHERS}`;
      connectOptions.pskCallback = () => ({ psk: psk.key, identity: psk.identity });
      connectOptions.checkServerIdentity = () => undefined;
    } else {
      if (options.ca !== undefined) connectOptions.ca = options.ca;
      if (options.cert !== undefined) connectOptions.cert = options.cert;
      if (options.key !== undefined) connectOptions.key = options.key;
      if (options.servername !== undefined) connectOptions.servername = options.servername;
      if (options.insecure === true) connectOptions.rejectUnauthorized = false;
    }
    const secure = tls.connect(connectOptions);
    const onError = (error: Error): void => {
      secure.destroy();
      reject(error);
    };
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.removeListener('error', onError);
      resolve(secure);
    });
  });
}
