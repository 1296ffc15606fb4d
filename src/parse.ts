// The one parser for each kind of value a person types: sizes ("1GiB"),
// addresses (HOST:PORT, IPv6 in brackets), node ids, peer lists
// (ID=HOST:PORT,...), device specs (NAME:SIZE) and NBD export grants
// (EXPORT:rw|ro:PRINCIPAL). xdevice-node's
// configuration (src/node/config.ts), xdevice-cli's flags, the admin API's
// request bodies, the client library's endpoints, the peer transport and the
// scripts all use these, so a value means the same thing everywhere.
//
// It lives at the root of src/, beside limits.ts, and not in src/node/ (the
// composition root that owns the configuration type): the admin API, the CLI
// and the cluster transport need these parsers too, and nothing may import
// src/node/. Each parser throws a plain Error whose message is the reason;
// the caller adds where the value came from (a flag, a key, a request field)
// and turns it into its own refusal (exit 2, HTTP 400, a usage error).
import { limits } from './limits.ts';


export interface HostPort {
  host: string;
  port: number;
}

export interface DeviceSpec {
  name: string;
  size: number;
}

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

/** "1GiB", "512M", "1.5MiB", "4096" → bytes (K/M/G/T and KiB… are powers of 1024, KB… of 1000). */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new Error(`not a size: "${text}" (use e.g. 4096, 512MiB, 1GiB)`);
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new Error(`size too large: "${text}"`);
  return bytes;
}

/** Bytes in the largest binary unit that divides them: 1073741824 → "1GiB", 1000 → "1000". */
export function formatSize(bytes: number): string {
  for (const [unit, n] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= n && bytes % n === 0) return `${bytes / n}${unit}`;
  }
  return `${bytes}`;
}

/** "127.0.0.1:10809", "[::1]:10809", "localhost:1", ":10809" (host 127.0.0.1); port 0 to 65535. */
export function parseHostPort(text: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  if (!m) throw new Error(`not HOST:PORT: "${text}"`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port out of range: "${text}"`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/** The inverse of parseHostPort: an IPv6 host goes in brackets. */
export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

/** A node id: letters, digits, '.', '_', '-', starting with a letter or digit (the device name rule). */
export function parseNodeId(id: string): string {
  if (!DEVICE_NAME_RE.test(id)) throw new Error(`bad node id "${id}"`);
  return id;
}

/** "n1=127.0.0.1:1,n2=[::1]:2" → { n1: '127.0.0.1:1', n2: '[::1]:2' }: ids checked, addresses normalised, no id twice. */
export function parsePeers(text: string): Record<string, string> {
  const peers: Record<string, string> = {};
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0) throw new Error(`not ID=HOST:PORT: "${part}"`);
    const id = parseNodeId(part.slice(0, i));
    if (peers[id] !== undefined) throw new Error(`node id "${id}" given twice`);
    peers[id] = formatHostPort(parseHostPort(part.slice(i + 1)));
  }
  return peers;
}

/** "NAME:SIZE" (the last ':' splits) → a device name and size that the device rules accept. */
export function parseDevice(text: string): DeviceSpec {
  const i = text.lastIndexOf(':');
  if (i <= 0) throw new Error(`not NAME:SIZE: "${text}"`);
  const name = parseDeviceName(text.slice(0, i).trim());
  const size = parseDeviceSize(text.slice(i + 1));
  return { name, size };
}

/** A device name as the configuration, the admin API and xdevice-cli accept it. */
export function parseDeviceName(name: string): string {
  const problem = deviceNameProblem(name);
  if (problem) throw new Error(problem);
  return name;
}

/** A device size: text ("64MiB", "4096") or a number of bytes, whole, in range and block-aligned. */
export function parseDeviceSize(value: string | number): number {
  const size = typeof value === 'number' ? value : parseSize(value);
  const problem = deviceSizeProblem(size);
  if (problem) throw new Error(typeof value === 'string' ? `${problem} ("${value}")` : problem);
  return size;
}

// ---- what makes a device name and size acceptable: one definition, used by the
// configuration parser (--device), the admin API, the proposing node and the
// apply of a replicated table command (so apply checks nothing a proposal
// was not checked against).

/** Letters, digits, '.', '_', '-'; not starting with a separator: safe as an export name, a path part, a URL segment. */
export const DEVICE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Why `name` is not a device name, or undefined if it is one. */
export function deviceNameProblem(name: string): string | undefined {
  if (typeof name !== 'string' || name === '') return 'a device name is required';
  if (Buffer.byteLength(name) > limits.deviceNameBytesMax) return `device name longer than ${limits.deviceNameBytesMax} bytes`;
  if (!DEVICE_NAME_RE.test(name)) return `bad device name "${name}" (letters, digits, '.', '_', '-'; starting with a letter or digit)`;
  return undefined;
}

/** Why `size` (bytes) is not a device size, or undefined if it is one. */
export function deviceSizeProblem(size: number): string | undefined {
  if (!Number.isSafeInteger(size) || size <= 0) return `device size must be a positive whole number of bytes, got ${size}`;
  if (size > limits.deviceBytesMax) return `device size ${size} is over the limit of ${limits.deviceBytesMax} bytes`;
  if (size % limits.deviceSizeAlignmentBytes !== 0) return `device size must be a multiple of ${limits.deviceSizeAlignmentBytes} bytes, got ${size}`;
  return undefined;
}

/** The admin routes `admin-anonymous-read` can open to callers without credentials. */
export const ANONYMOUS_READS = ['metrics', 'health'] as const;
export type AnonymousRead = (typeof ANONYMOUS_READS)[number];

/** "metrics,health", "metrics", "" → the routes opened to anonymous viewers (each named once). */
export function parseAnonymousReads(text: string): AnonymousRead[] {
  const out: AnonymousRead[] = [];
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    if (!(ANONYMOUS_READS as readonly string[]).includes(part)) throw new Error(`"${part}" cannot be opened to anonymous readers (only ${ANONYMOUS_READS.join(', ')})`);
    if (out.includes(part as AnonymousRead)) throw new Error(`"${part}" given twice`);
    out.push(part as AnonymousRead);
  }
  return out;
}

// ---- NBD export grants (export-allow): who may attach an export, and how.

/** Whom a grant names: attributes of a verified client certificate's subject, or a TLS-PSK identity. */
export type GrantPrincipal =
  | { kind: 'subject'; attributes: Array<[type: string, value: string]> }
  | { kind: 'psk'; identity: string };

export interface ExportGrant {
  exportName: string;
  /** rw: read and write; ro: the export is read-only on this principal's connections. */
  access: 'rw' | 'ro';
  principal: GrantPrincipal;
}

/** A subject attribute type: an OpenSSL short or long name (CN, O, emailAddress) or a dotted OID. */
const ATTRIBUTE_TYPE_RE = /^(?:[A-Za-z][A-Za-z0-9]*|\d+(?:\.\d+)+)$/;

interface Char {
  c: string;
  escaped: boolean;
}

function text(chars: readonly Char[]): string {
  return chars.map((ch) => ch.c).join('');
}

/** Splits at every unescaped `sep`. */
function splitChars(chars: readonly Char[], sep: string, limit = Infinity): Char[][] {
  const parts: Char[][] = [[]];
  for (const ch of chars) {
    if (!ch.escaped && ch.c === sep && parts.length < limit) parts.push([]);
    else parts[parts.length - 1]!.push(ch);
  }
  return parts;
}

/** Drops unescaped white space at both ends (an escaped space, `\ `, stays). */
function trimChars(chars: Char[]): Char[] {
  let start = 0;
  let end = chars.length;
  while (start < end && !chars[start]!.escaped && /\s/.test(chars[start]!.c)) start++;
  while (end > start && !chars[end - 1]!.escaped && /\s/.test(chars[end - 1]!.c)) end--;
  return chars.slice(start, end);
}

function parsePrincipal(chars: Char[], where: string): GrantPrincipal {
  const raw = text(chars);
  if (Buffer.byteLength(raw) > limits.nbdPrincipalBytesMax) throw new Error(`${where}: principal longer than ${limits.nbdPrincipalBytesMax} bytes`);
  const head = chars.slice(0, 4);
  if (head.length === 4 && head.every((ch) => !ch.escaped) && text(head) === 'psk:') {
    const identity = text(chars.slice(4));
    if (identity === '') throw new Error(`${where}: psk: needs an identity (psk:NAME, the user name in the PSK file)`);
    return { kind: 'psk', identity };
  }
  if (chars.length === 0 || chars[0]!.escaped || chars[0]!.c !== '/') {
    throw new Error(`${where}: the principal must be a certificate subject such as /CN=alice/O=Ops, or psk:NAME`);
  }
  const attributes: Array<[string, string]> = [];
  for (const part of splitChars(chars.slice(1), '/')) {
    const [typeChars, valueChars] = splitChars(part, '=', 2);
    const type = text(typeChars!);
    if (!ATTRIBUTE_TYPE_RE.test(type) || typeChars!.some((ch) => ch.escaped)) {
      throw new Error(`${where}: "${type}" is not a subject attribute type (CN, O, OU, emailAddress, or a dotted OID)`);
    }
    if (valueChars === undefined || valueChars.length === 0) throw new Error(`${where}: subject attribute ${type} needs a value (${type}=VALUE)`);
    attributes.push([type, text(valueChars)]);
  }
  return { kind: 'subject', attributes };
}

/**
 * An export-allow value: grants `EXPORT:rw|ro:PRINCIPAL` separated by `;`.
 * PRINCIPAL is a certificate subject in openssl's -subj form (`/CN=alice/O=Ops`:
 * every attribute named must be in the certificate with that value, others are
 * not looked at) or `psk:IDENTITY`. A backslash makes the next character
 * literal (`\/`, `\;`, `\\`). Empty grants are skipped.
 */
export function parseExportGrants(value: string): ExportGrant[] {
  const chars: Char[] = [];
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (/[\u0000-\u001f\u007f]/.test(c)) throw new Error(`control character at position ${i + 1} of "${value}"`);
    if (c !== '\\') {
      chars.push({ c, escaped: false });
      continue;
    }
    const next = value[i + 1];
    if (next === undefined) throw new Error(`"${value}" ends with a lone backslash`);
    if (/[\u0000-\u001f\u007f]/.test(next)) throw new Error(`control character at position ${i + 2} of "${value}"`);
    chars.push({ c: next, escaped: true });
    i++;
  }
  const grants: ExportGrant[] = [];
  for (const grantChars of splitChars(chars, ';')) {
    const trimmed = trimChars(grantChars);
    if (trimmed.length === 0) continue;
    const where = `"${text(trimmed)}"`;
    const fields = splitChars(trimmed, ':', 3);
    if (fields.length !== 3) throw new Error(`${where}: expected EXPORT:rw|ro:PRINCIPAL (e.g. vm1:rw:/CN=alice)`);
    const [nameChars, accessChars, principalChars] = fields.map(trimChars) as [Char[], Char[], Char[]];
    const exportName = text(nameChars);
    const problem = deviceNameProblem(exportName);
    if (problem !== undefined || nameChars.some((ch) => ch.escaped)) throw new Error(`${where}: ${problem ?? `bad export name "${exportName}"`}`);
    const access = text(accessChars);
    if ((access !== 'rw' && access !== 'ro') || accessChars.some((ch) => ch.escaped)) throw new Error(`${where}: access must be rw or ro, got "${access}"`);
    grants.push({ exportName, access, principal: parsePrincipal(principalChars, where) });
  }
  return grants;
}

/** One identity per principal however it is written: the attribute order and the case of types do not matter. */
export function principalKey(principal: GrantPrincipal): string {
  if (principal.kind === 'psk') return `psk:${principal.identity}`;
  return JSON.stringify(principal.attributes.map(([type, value]) => [type.toLowerCase(), value]).sort());
}

/** Checks a whole allow list: no export and principal twice, not more than the limit. */
export function checkExportGrants(grants: readonly ExportGrant[]): void {
  if (grants.length > limits.nbdExportGrantsMax) throw new Error(`more than ${limits.nbdExportGrantsMax} grants`);
  const seen = new Set<string>();
  for (const grant of grants) {
    const key = `${grant.exportName}\u0000${principalKey(grant.principal)}`;
    if (seen.has(key)) throw new Error(`${formatExportGrant(grant)}: ${formatPrincipal(grant.principal)} is given twice for export ${grant.exportName}`);
    seen.add(key);
  }
}

function escapeValue(value: string, specials: RegExp): string {
  const chars = [...value];
  // White space at either end is escaped so the trimming of grants keeps it.
  const escape = (c: string, i: number): boolean => specials.test(c) || (/\s/.test(c) && (i === 0 || i === chars.length - 1));
  return chars.map((c, i) => (escape(c, i) ? `\\${c}` : c)).join('');
}

/** The written form of a principal, which parses back to it: `/CN=alice/O=Ops`, `psk:alice`. */
export function formatPrincipal(principal: GrantPrincipal): string {
  if (principal.kind === 'psk') return `psk:${escapeValue(principal.identity, /[\\;]/)}`;
  return principal.attributes.map(([type, value]) => `/${type}=${escapeValue(value, /[\\/;]/)}`).join('');
}

/** The written form of a grant, which parses back to it. */
export function formatExportGrant(grant: ExportGrant): string {
  return `${grant.exportName}:${grant.access}:${formatPrincipal(grant.principal)}`;
}

const DURATION_UNITS_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * A point in time as ms since the epoch: an ISO 8601 time ("2026-12-02T08:00:00Z",
 * "2026-12-02") or a duration back from `nowMs` ("90s", "15m", "2h", "7d").
 */
export function parseSince(text: string, nowMs: number): number {
  const t = text.trim();
  const d = /^(\d{1,9})([smhd])$/.exec(t);
  if (d) return Math.max(0, nowMs - Number(d[1]) * DURATION_UNITS_MS[d[2]!]!);
  const ms = /^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(t) ? Date.parse(t) : NaN;
  if (Number.isNaN(ms) || ms < 0) throw new Error(`not a time: "${text}" (use an ISO 8601 time such as 2026-12-02T08:00:00Z, or a duration back from now such as 15m, 2h, 7d)`);
  return ms;
}
