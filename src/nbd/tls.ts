// TLS for NBD_OPT_STARTTLS: X.509 certificates or TLS-PSK, configured the way
// nbdkit and libnbd are (PSK files hold `identity:hexkey` lines, the identity
// being the user name of an nbds:// URI). The socket is upgraded in place
// after the ACK to STARTTLS, so the TLS handshake runs over the same TCP stream.

import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import * as tls from 'node:tls';
import { XDeviceError } from '../errors.ts';

export type TlsMode = 'off' | 'on' | 'require';

export interface NbdTlsOptions {
  mode: TlsMode;
  certFile?: string;
  keyFile?: string;
  /** With certificates: client certificates are required and verified against this CA. */
  caFile?: string;
  /** TLS-PSK instead of certificates. */
  pskFile?: string;
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

/** Server side of STARTTLS, built once from the configuration (files are read at startup). */
export class ServerTls {
  readonly mode: TlsMode;
  private readonly options: tls.TLSSocketOptions;

  constructor(config: NbdTlsOptions) {
    this.mode = config.mode;
    if (config.mode === 'off') {
      this.options = {};
      return;
    }
    if (config.pskFile !== undefined) {
      const keys = parsePskFile(readFileSync(config.pskFile, 'utf8'));
      this.options = {
        isServer: true,
        minVersion: 'TLSv1.2',
        ciphers: `${tls.DEFAULT_CIPHERS}:${PSK_CIPHERS}`,
        pskCallback: (_socket: tls.TLSSocket, identity: string) => keys.get(identity) ?? null,
      } as tls.TLSSocketOptions;
      return;
    }
    if (config.certFile === undefined || config.keyFile === undefined) {
      throw new TlsConfigError(`--tls ${config.mode} needs --tls-cert and --tls-key, or --tls-psk`);
    }
    const secureContext = tls.createSecureContext({
      cert: readFileSync(config.certFile),
      key: readFileSync(config.keyFile),
      ...(config.caFile !== undefined ? { ca: readFileSync(config.caFile) } : {}),
      minVersion: 'TLSv1.2',
    });
    this.options = {
      isServer: true,
      secureContext,
      requestCert: config.caFile !== undefined,
      rejectUnauthorized: config.caFile !== undefined,
    };
  }

  /** Wraps the TCP socket; resolves once the TLS handshake succeeded. */
  upgrade(socket: Socket): Promise<tls.TLSSocket> {
    return new Promise((resolve, reject) => {
      const secure = new tls.TLSSocket(socket, this.options);
      const onError = (error: Error): void => {
        secure.destroy();
        reject(error);
      };
      secure.once('error', onError);
      secure.once('close', () => reject(new XDeviceError('XDEVICE_ERR_TLS', 'connection closed during the TLS handshake')));
      secure.once('secure', () => {
        secure.removeListener('error', onError);
        resolve(secure);
      });
    });
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
