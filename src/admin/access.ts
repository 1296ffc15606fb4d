// Who is calling the admin API: the table of clients (admin-clients-file, plus
// the single admin-token as a client named `token` with role admin), and the
// one function that turns a request's credentials into a principal or a
// refusal. The server asks the route table (./routes.ts) what the principal
// may do; this module only says who it is.
//
// With no credentials configured at all the API is open, as it always was on
// loopback (the node's configuration refuses a non-loopback admin listener
// without credentials). Once any is configured, a caller without credentials
// is anonymous and may read only what admin-anonymous-read opens.

import { timingSafeEqual } from 'node:crypto';
import type { AnonymousRead } from '../parse.ts';
import { ClientsFileError, hashToken, readClientsFile, type ClientEntry } from './clients-file.ts';
import type { Role } from './routes.ts';

export interface Principal {
  /** A client's name, `cert:CN` for a certificate, or `anonymous`. */
  name: string;
  /** What it may do; undefined for an anonymous caller when credentials are required (anonymous reads only). */
  role: Role | undefined;
}

export interface AccessTable {
  /** False when nothing is configured: every caller is an anonymous admin. */
  required: boolean;
  tokens: readonly { name: string; role: Role; hash: Buffer }[];
  /** Certificate subject CN → role. */
  certs: ReadonlyMap<string, Role>;
  anonymousReads: ReadonlySet<AnonymousRead>;
}

export const OPEN_ACCESS: AccessTable = { required: false, tokens: [], certs: new Map(), anonymousReads: new Set() };

export const LEGACY_TOKEN_CLIENT = 'token';

export interface AccessSettings {
  /** admin-clients-file ('' = none). */
  clientsFile: string;
  /** admin-token ('' = none). */
  token: string;
  anonymousReads: readonly AnonymousRead[];
}

/** Builds the table from the configuration, reading the clients file; a ClientsFileError says what is wrong. */
export function loadAccess(s: AccessSettings): AccessTable {
  const entries: ClientEntry[] = s.clientsFile ? readClientsFile(s.clientsFile) : [];
  return accessTable(entries, s);
}

export function accessTable(entries: readonly ClientEntry[], s: AccessSettings): AccessTable {
  const tokens: { name: string; role: Role; hash: Buffer }[] = [];
  const certs = new Map<string, Role>();
  for (const e of entries) {
    if (e.kind === 'cert') certs.set(e.name, e.role);
    else {
      if (s.token && e.name === LEGACY_TOKEN_CLIENT) {
        throw new ClientsFileError(`${s.clientsFile}:${e.line}: the client name "${LEGACY_TOKEN_CLIENT}" is admin-token's; rename this client`);
      }
      tokens.push({ name: e.name, role: e.role, hash: e.hash });
    }
  }
  if (s.token) tokens.push({ name: LEGACY_TOKEN_CLIENT, role: 'admin', hash: hashToken(s.token) });
  return { required: s.clientsFile !== '' || s.token !== '', tokens, certs, anonymousReads: new Set(s.anonymousReads) };
}

/** The credentials a request carries (the server extracts them from headers and the TLS socket). */
export interface Credentials {
  /** The Authorization header, if any. */
  authorization?: string | undefined;
  /** The client certificate, if the caller presented one on the HTTPS listener. */
  certificate?: { verified: boolean; error?: string | undefined; cn: string | undefined } | undefined;
}

export type Authentication = { ok: true; principal: Principal } | { ok: false; principal: string; reason: string };

const ANONYMOUS = 'anonymous';

/**
 * Who the caller is. A bearer token is checked first, then a certificate;
 * presented credentials that do not check out are refused even where an
 * anonymous caller would be let in (a wrong token is a mistake to report).
 */
export function authenticate(table: AccessTable, c: Credentials): Authentication {
  if (c.authorization !== undefined) {
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(c.authorization);
    if (!m) return { ok: false, principal: ANONYMOUS, reason: 'the Authorization header is not "Bearer TOKEN"' };
    const client = findToken(table, m[1]!);
    if (!client) return { ok: false, principal: ANONYMOUS, reason: 'unknown bearer token' };
    return { ok: true, principal: { name: client.name, role: client.role } };
  }
  if (c.certificate) {
    const cn = c.certificate.cn;
    const who = cn === undefined ? 'cert:(no CN)' : `cert:${cn}`;
    if (!c.certificate.verified) return { ok: false, principal: who, reason: `client certificate not verified by admin-tls-ca: ${c.certificate.error ?? 'unknown reason'}` };
    const role = cn === undefined ? undefined : table.certs.get(cn);
    if (!role) return { ok: false, principal: who, reason: `no "cert" line in admin-clients-file for certificate CN "${cn ?? ''}"` };
    return { ok: true, principal: { name: who, role } };
  }
  return { ok: true, principal: { name: ANONYMOUS, role: table.required ? undefined : 'admin' } };
}

/** The client whose token hashes to the given one; every entry is compared, in constant time, whatever matches. */
function findToken(table: AccessTable, token: string): { name: string; role: Role } | undefined {
  const hash = hashToken(token);
  let found: { name: string; role: Role } | undefined;
  for (const client of table.tokens) {
    if (timingSafeEqual(hash, client.hash) && !found) found = client;
  }
  return found;
}
