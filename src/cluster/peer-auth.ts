// How peers prove who they are, from the configuration: a cluster secret read
// from a file, mutual TLS with each node's id in its certificate, or — only
// when asked for by name — nothing at all.
//
// A node with peers refuses to start unless one of these is configured. The
// secret never travels on the command line (/proc/PID/cmdline is world
// readable); its file must be private to the node's user and hold at least
// 128 bits: hex, base64, or raw random bytes.

import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import { readPrivateFile } from '../disk/private-file.ts';

export class PeerAuthConfigError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_CONFIG', message);
  }
}

export interface TransportTls {
  cert: string | Buffer;
  key: string | Buffer;
  ca: string | Buffer;
}

/** What Transport needs to authenticate links; at least one of the three. */
export interface PeerAuth {
  /** Key of the HMAC handshake and of every frame's MAC. */
  secret?: Buffer;
  /** Mutual TLS; each peer's certificate names its node id (CN or DNS SAN). */
  tls?: TransportTls;
  /** No authentication at all: anyone who reaches the peer port is a member. */
  insecure?: boolean;
}

export interface PeerAuthSettings {
  nodeId: string;
  peers: Record<string, string>;
  clusterSecretFile: string;
  peerTlsCert: string;
  peerTlsKey: string;
  peerTlsCa: string;
  insecurePeers: boolean;
}

export const PEER_AUTH_KEYS = 'cluster-secret-file, or peer-tls-cert + peer-tls-key + peer-tls-ca (or insecure-peers for loopback experiments)';

/** True if the node has peers other than itself (and so needs peer authentication). */
export function hasOtherPeers(s: Pick<PeerAuthSettings, 'nodeId' | 'peers'>): boolean {
  return Object.keys(s.peers).some((id) => id !== s.nodeId);
}

/**
 * Reads and checks the peer authentication settings. Throws
 * PeerAuthConfigError naming the keys when a node with peers has none, or
 * when a secret file or certificate is unusable.
 */
export function loadPeerAuth(s: PeerAuthSettings): PeerAuth {
  const auth: PeerAuth = {};
  if (s.clusterSecretFile) auth.secret = readClusterSecret(s.clusterSecretFile);
  const tlsGiven = [s.peerTlsCert, s.peerTlsKey, s.peerTlsCa].filter(Boolean).length;
  if (tlsGiven > 0) {
    if (tlsGiven < 3) throw new PeerAuthConfigError('peer-tls-cert, peer-tls-key and peer-tls-ca go together');
    auth.tls = readPeerTls(s.nodeId, s.peerTlsCert, s.peerTlsKey, s.peerTlsCa);
  }
  if (s.insecurePeers) auth.insecure = true;
  if (auth.insecure && (auth.secret || auth.tls)) throw new PeerAuthConfigError('insecure-peers contradicts cluster-secret-file / peer-tls-*: choose one');
  if (!auth.secret && !auth.tls && !auth.insecure && hasOtherPeers(s)) {
    throw new PeerAuthConfigError(`peers are configured but not authenticated: set ${PEER_AUTH_KEYS}`);
  }
  return auth;
}

/** A secret file's bytes as key material, or a PeerAuthConfigError saying why not. */
export function readClusterSecret(path: string): Buffer {
  const raw = readPrivateFile(path, 'cluster-secret-file', limits.clusterSecretFileBytesMax, (m) => new PeerAuthConfigError(m));
  const key = decodeSecret(raw);
  if (!key) {
    throw new PeerAuthConfigError(
      `cluster-secret-file: ${path} must hold at least ${limits.clusterSecretBytesMin * 8} bits of random key: ` +
        `${limits.clusterSecretBytesMin * 2}+ hex digits (openssl rand -hex 32 > FILE), base64, or raw random bytes`,
    );
  }
  return key;
}

/** Decodes hex, base64 or raw random bytes; undefined if shorter than 128 bits or visibly not random. */
export function decodeSecret(raw: Buffer): Buffer | undefined {
  const text = raw.toString('latin1').trim();
  let key: Buffer;
  if (/^[0-9a-fA-F]+$/.test(text) && text.length % 2 === 0) key = Buffer.from(text, 'hex');
  else if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(text)) key = Buffer.from(text, 'base64');
  else if (/[^\x20-\x7e]/.test(text)) key = raw;
  else return undefined; // printable text that is neither hex nor base64: a password, not a key
  if (key.length < limits.clusterSecretBytesMin) return undefined;
  // 16 random bytes have fewer than 8 distinct values with negligible probability.
  if (new Set(key).size < 8) return undefined;
  return key;
}

function readPem(key: string, path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new PeerAuthConfigError(`${key}: cannot read ${path}: ${(err as Error).message}`);
  }
}

/** The names a certificate vouches for: its subject CN and DNS subject alternative names. */
export function certificateNames(cert: X509Certificate | tls.PeerCertificate): string[] {
  const names: string[] = [];
  const subject = cert instanceof X509Certificate ? cert.subject : undefined;
  if (subject !== undefined) {
    for (const line of subject.split('\n')) if (line.startsWith('CN=')) names.push(line.slice(3));
  } else {
    const cn = (cert as tls.PeerCertificate).subject?.CN;
    if (typeof cn === 'string') names.push(cn);
    else if (Array.isArray(cn)) names.push(...(cn as string[]));
  }
  const san = cert instanceof X509Certificate ? cert.subjectAltName : (cert as tls.PeerCertificate).subjectaltname;
  for (const part of (san ?? '').split(',')) {
    const p = part.trim();
    if (p.startsWith('DNS:')) names.push(p.slice(4));
  }
  return names;
}

function readPeerTls(nodeId: string, certPath: string, keyPath: string, caPath: string): TransportTls {
  const cert = readPem('peer-tls-cert', certPath);
  const key = readPem('peer-tls-key', keyPath);
  const ca = readPem('peer-tls-ca', caPath);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
    tls.createSecureContext({ cert, key, ca });
  } catch (err) {
    throw new PeerAuthConfigError(`peer-tls-cert/key/ca: ${(err as Error).message}`);
  }
  if (!certificateNames(x509).includes(nodeId)) {
    throw new PeerAuthConfigError(`peer-tls-cert: ${certPath} does not name this node (${nodeId}) in its CN or DNS subject alternative names`);
  }
  return { cert, key, ca };
}
