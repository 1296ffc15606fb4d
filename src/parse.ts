// The one parser for each kind of value a person types: sizes ("1GiB"),
// addresses (HOST:PORT, IPv6 in brackets), node ids, peer lists
// (ID=HOST:PORT,...) and device specs (NAME:SIZE). xdevice-node's
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
