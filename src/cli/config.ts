// The node's configuration: one schema, three sources.
//
// Precedence (highest first): command-line flags, XDEVICE_<KEY> environment
// variables, the --config file, the embedded defaults. Every key has the same
// name in all three places (`--data-dir`, `XDEVICE_DATA_DIR`, `data-dir = …`).
// Unknown keys and bad values are rejected with a message naming the key.

import { readFileSync } from 'node:fs';
import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import { loadPeerAuth } from '../cluster/peer-auth.ts';
import { deviceNameProblem, deviceSizeProblem } from '../device/device-rules.ts';

export class ConfigError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_CONFIG', message);
  }
}

export interface HostPort {
  host: string;
  port: number;
}

export interface DeviceSpec {
  name: string;
  size: number;
}

export type Backend = 'replicated' | 'file' | 'memory';
export type TlsMode = 'off' | 'on' | 'require';
export type LogFormat = 'auto' | 'json' | 'pretty';

export interface NodeConfig {
  dataDir: string;
  nbdListen: HostPort;
  adminListen: HostPort;
  devices: DeviceSpec[];
  backend: Backend;
  nodeId: string;
  peerListen: HostPort;
  peers: Record<string, string>;
  join: boolean;
  clusterSecretFile: string;
  peerTlsCert: string;
  peerTlsKey: string;
  peerTlsCa: string;
  insecurePeers: boolean;
  adminToken: string;
  tls: TlsMode;
  tlsCert: string;
  tlsKey: string;
  tlsCa: string;
  tlsPsk: string;
  logLevel: string;
  logFormat: LogFormat;
  /** Bytes kept free on the data filesystem; writes get ENOSPC below it. */
  spaceReserve: number;
}

type Kind = 'string' | 'hostport' | 'devices' | 'peers' | 'boolean' | 'size' | { oneOf: readonly string[] };

interface KeySpec {
  key: string;
  field: keyof NodeConfig;
  kind: Kind;
  default: string;
  describe: string;
  /** Can be changed by SIGHUP without a restart. */
  reloadable?: boolean;
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal'] as const;

export const CONFIG_KEYS: readonly KeySpec[] = [
  { key: 'data-dir', field: 'dataDir', kind: 'string', default: './data', describe: 'where the WAL, device files and checkpoint live' },
  { key: 'nbd-listen', field: 'nbdListen', kind: 'hostport', default: '127.0.0.1:10809', describe: 'NBD server address' },
  { key: 'admin-listen', field: 'adminListen', kind: 'hostport', default: '127.0.0.1:10819', describe: 'HTTP admin API address' },
  { key: 'device', field: 'devices', kind: 'devices', default: 'default:1GiB', describe: 'NAME:SIZE, repeatable (comma-separated in files and env); created on first start' },
  { key: 'backend', field: 'backend', kind: { oneOf: ['replicated', 'file', 'memory'] }, default: 'replicated', describe: 'replicated (Raft), or file/memory (one node, no Raft: tests the NBD layer alone)' },
  { key: 'node-id', field: 'nodeId', kind: 'string', default: 'node1', describe: 'this node’s id in the cluster' },
  { key: 'peer-listen', field: 'peerListen', kind: 'hostport', default: '127.0.0.1:10829', describe: 'address for Raft traffic from peers' },
  { key: 'peers', field: 'peers', kind: 'peers', default: '', describe: 'ID=HOST:PORT,... of every initial member (may include this node)' },
  { key: 'join', field: 'join', kind: 'boolean', default: 'false', describe: 'start empty and wait to be added to an existing cluster' },
  { key: 'cluster-secret-file', field: 'clusterSecretFile', kind: 'string', default: '', describe: 'file (mode 600) holding the shared peer key: 128+ bits, hex/base64/raw (openssl rand -hex 32)' },
  { key: 'peer-tls-cert', field: 'peerTlsCert', kind: 'string', default: '', describe: 'X.509 certificate (PEM) for peer mutual TLS; its CN or DNS SAN is this node-id' },
  { key: 'peer-tls-key', field: 'peerTlsKey', kind: 'string', default: '', describe: 'private key (PEM) for peer mutual TLS' },
  { key: 'peer-tls-ca', field: 'peerTlsCa', kind: 'string', default: '', describe: 'CA (PEM) that signed every peer certificate' },
  { key: 'insecure-peers', field: 'insecurePeers', kind: 'boolean', default: 'false', describe: 'accept unauthenticated peers (loopback experiments only; warns)' },
  { key: 'admin-token', field: 'adminToken', kind: 'string', default: '', describe: 'bearer token required by the admin API', reloadable: true },
  { key: 'tls', field: 'tls', kind: { oneOf: ['off', 'on', 'require'] }, default: 'off', describe: 'NBD STARTTLS: off, on (offered), require' },
  { key: 'tls-cert', field: 'tlsCert', kind: 'string', default: '', describe: 'X.509 certificate (PEM) for NBD TLS' },
  { key: 'tls-key', field: 'tlsKey', kind: 'string', default: '', describe: 'private key (PEM) for NBD TLS' },
  { key: 'tls-ca', field: 'tlsCa', kind: 'string', default: '', describe: 'CA (PEM) to verify client certificates' },
  { key: 'tls-psk', field: 'tlsPsk', kind: 'string', default: '', describe: 'PSK file (username:hexkey lines) for NBD TLS-PSK' },
  { key: 'log-level', field: 'logLevel', kind: { oneOf: LOG_LEVELS }, default: 'info', describe: 'trace, debug, info, warn, error, fatal', reloadable: true },
  { key: 'space-reserve', field: 'spaceReserve', kind: 'size', default: formatSize(limits.spaceReserveBytes), describe: 'free space kept on the data filesystem: below it writes get ENOSPC before they are proposed' },
  { key: 'log-format', field: 'logFormat', kind: { oneOf: ['auto', 'json', 'pretty'] }, default: 'auto', describe: 'auto: pretty on a terminal, JSON otherwise' },
];

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1024, kb: 1000, kib: 1024,
  m: 1024 ** 2, mb: 1000 ** 2, mib: 1024 ** 2,
  g: 1024 ** 3, gb: 1000 ** 3, gib: 1024 ** 3,
  t: 1024 ** 4, tb: 1000 ** 4, tib: 1024 ** 4,
};

/** "1GiB", "512M", "4096" → bytes. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  const unit = m ? SIZE_UNITS[m[2]!.toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new Error(`not a size: "${text}" (use e.g. 4096, 512MiB, 1GiB)`);
  const bytes = Math.round(Number(m[1]) * unit);
  if (!Number.isSafeInteger(bytes)) throw new Error(`size too large: "${text}"`);
  return bytes;
}

export function formatSize(bytes: number): string {
  for (const [unit, n] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes >= n && bytes % n === 0) return `${bytes / n}${unit}`;
  }
  return `${bytes}`;
}

export function parseHostPort(text: string): HostPort {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text.trim());
  if (!m) throw new Error(`not HOST:PORT: "${text}"`);
  const port = Number(m[3]);
  if (port > 65535) throw new Error(`port out of range: "${text}"`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

export function formatHostPort(hp: HostPort): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

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

export function parsePeers(text: string): Record<string, string> {
  const peers: Record<string, string> = {};
  for (const part of text.split(',').map((s) => s.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0) throw new Error(`not ID=HOST:PORT: "${part}"`);
    const id = part.slice(0, i);
    if (!NAME_RE.test(id)) throw new Error(`bad node id "${id}"`);
    if (peers[id] !== undefined) throw new Error(`node id "${id}" given twice`);
    peers[id] = formatHostPort(parseHostPort(part.slice(i + 1)));
  }
  return peers;
}

function parseValue(spec: KeySpec, raw: string | string[]): unknown {
  const values = Array.isArray(raw) ? raw : [raw];
  const one = values[values.length - 1] ?? '';
  const kind = spec.kind;
  if (typeof kind === 'object') {
    if (!kind.oneOf.includes(one)) throw new Error(`must be one of ${kind.oneOf.join(', ')}, got "${one}"`);
    return one;
  }
  switch (kind) {
    case 'string':
      return one;
    case 'boolean':
      if (/^(true|1|yes|on)$/i.test(one)) return true;
      if (/^(false|0|no|off|)$/i.test(one)) return false;
      throw new Error(`must be true or false, got "${one}"`);
    case 'hostport':
      return parseHostPort(one);
    case 'size':
      return parseSize(one);
    case 'peers':
      return parsePeers(values.join(','));
    case 'devices': {
      const devices = values.flatMap((v) => v.split(',')).map((s) => s.trim()).filter(Boolean).map(parseDevice);
      const seen = new Set<string>();
      for (const d of devices) {
        if (seen.has(d.name)) throw new Error(`device "${d.name}" given twice`);
        seen.add(d.name);
      }
      if (devices.length > limits.devicesMax) throw new Error(`more than ${limits.devicesMax} devices`);
      return devices;
    }
  }
}

/** Parses `key = value` lines; `#` and `;` start comments; a key may repeat (device). */
export function parseConfigFile(text: string, fileName: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  text.split(/\r?\n/).forEach((line, i) => {
    const stripped = line.replace(/^\s+|\s+$/g, '');
    if (stripped === '' || stripped.startsWith('#') || stripped.startsWith(';')) return;
    const m = /^([A-Za-z][A-Za-z0-9_-]*)\s*[=:]\s*(.*)$/.exec(stripped);
    if (!m) throw new ConfigError(`${fileName}:${i + 1}: expected "key = value", got "${stripped}"`);
    const key = m[1]!.toLowerCase().replace(/_/g, '-');
    let value = m[2]!.replace(/\s+#.*$/, '');
    if (/^".*"$/.test(value) || /^'.*'$/.test(value)) value = value.slice(1, -1);
    out.set(key, [...(out.get(key) ?? []), value]);
  });
  return out;
}

export interface ConfigSources {
  /** Values from the command line, by key (already split for repeatable keys). */
  flags: Map<string, string | string[]>;
  env: NodeJS.ProcessEnv;
  /** Path of the config file, if any. */
  configFile?: string;
}

export interface LoadedConfig {
  config: NodeConfig;
  /** Where each key's value came from: flag, env, file or default. */
  origin: Record<string, 'flag' | 'env' | 'file' | 'default'>;
}

export function envName(key: string): string {
  return 'XDEVICE_' + key.toUpperCase().replace(/-/g, '_');
}

/** Keys that no longer exist, and what to use instead (refused with this message). */
export const REFUSED_KEYS: Record<string, string> = {
  'cluster-secret': 'cluster-secret is refused: a secret given as a flag or variable is visible to other users (/proc/PID/cmdline); write it to a file with mode 600 and set cluster-secret-file',
};

export function loadConfig(sources: ConfigSources): LoadedConfig {
  const known = new Map(CONFIG_KEYS.map((k) => [k.key, k]));
  const refuse = (key: string): void => {
    if (REFUSED_KEYS[key]) throw new ConfigError(REFUSED_KEYS[key]);
  };
  for (const key of sources.flags.keys()) refuse(key);
  for (const name of Object.keys(sources.env)) if (name.startsWith('XDEVICE_')) refuse(name.slice('XDEVICE_'.length).toLowerCase().replace(/_/g, '-'));
  let file = new Map<string, string[]>();
  const configPath = sources.configFile ?? sources.env.XDEVICE_CONFIG;
  if (configPath) {
    let text: string;
    try {
      text = readFileSync(configPath, 'utf8');
    } catch (err) {
      throw new ConfigError(`cannot read config file ${configPath}: ${(err as Error).message}`);
    }
    file = parseConfigFile(text, configPath);
    for (const key of file.keys()) {
      refuse(key);
      if (!known.has(key)) throw new ConfigError(`${configPath}: unknown key "${key}"`);
    }
  }
  for (const name of Object.keys(sources.env)) {
    if (!name.startsWith('XDEVICE_') || name === 'XDEVICE_CONFIG') continue;
    const key = name.slice('XDEVICE_'.length).toLowerCase().replace(/_/g, '-');
    if (!known.has(key) && !NON_CONFIG_ENV.has(name)) throw new ConfigError(`environment: unknown key ${name}`);
  }
  for (const key of sources.flags.keys()) {
    if (!known.has(key)) throw new ConfigError(`unknown option --${key}`);
  }

  const config = {} as Record<string, unknown>;
  const origin: LoadedConfig['origin'] = {};
  for (const spec of CONFIG_KEYS) {
    const flag = sources.flags.get(spec.key);
    const env = sources.env[envName(spec.key)];
    const fromFile = file.get(spec.key);
    let raw: string | string[];
    let where: LoadedConfig['origin'][string];
    if (flag !== undefined && !(Array.isArray(flag) && flag.length === 0)) [raw, where] = [flag, 'flag'];
    else if (env !== undefined) [raw, where] = [env, 'env'];
    else if (fromFile !== undefined) [raw, where] = [fromFile, 'file'];
    else [raw, where] = [spec.default, 'default'];
    try {
      config[spec.field] = parseValue(spec, raw);
    } catch (err) {
      const place = where === 'flag' ? `--${spec.key}` : where === 'env' ? envName(spec.key) : where === 'file' ? `${configPath}: ${spec.key}` : spec.key;
      throw new ConfigError(`${place}: ${(err as Error).message}`);
    }
    origin[spec.key] = where;
  }
  const result = config as unknown as NodeConfig;
  crossCheck(result);
  return { config: result, origin };
}

/** Environment variables of ours that are not configuration keys (test hooks, tooling). */
const NON_CONFIG_ENV = new Set(['XDEVICE_SEED', 'XDEVICE_TEST_JOBS', 'XDEVICE_FAULT_FILE', 'XDEVICE_CHECKPOINT_ENTRIES', 'XDEVICE_WAL_RETAIN_ENTRIES', 'XDEVICE_BIN', 'XDEVICE_TEST_BACKEND', 'XDEVICE_TEST_TMP', 'XDEVICE_NEMESIS_SECONDS', 'XDEVICE_PGBENCH_SECONDS', 'XDEVICE_CATCHUP_MIB', 'XDEVICE_FUZZ_FRAMES']);

function crossCheck(c: NodeConfig): void {
  if (!NAME_RE.test(c.nodeId)) throw new ConfigError(`node-id: bad id "${c.nodeId}"`);
  if (c.backend !== 'replicated' && Object.keys(c.peers).some((id) => id !== c.nodeId)) {
    throw new ConfigError(`peers: backend ${c.backend} serves one node without Raft; use --backend replicated for a cluster`);
  }
  if (c.tls !== 'off' && !c.tlsPsk && !(c.tlsCert && c.tlsKey)) {
    throw new ConfigError('tls: needs tls-psk, or tls-cert and tls-key');
  }
  if ((c.tlsCert === '') !== (c.tlsKey === '')) throw new ConfigError('tls-cert and tls-key go together');
  if (c.join && Object.keys(c.peers).length === 0) throw new ConfigError('join: needs peers (the existing members to contact)');
  if (c.devices.length === 0) throw new ConfigError('device: at least one device is needed');
  if (c.backend === 'replicated') {
    try {
      loadPeerAuth(c);
    } catch (err) {
      throw new ConfigError((err as Error).message);
    }
  }
}

/** The effective configuration for the start-up log, secrets masked. */
export function describeConfig(loaded: LoadedConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const spec of CONFIG_KEYS) {
    let value = loaded.config[spec.field] as unknown;
    if (spec.key === 'admin-token' && value) value = '***';
    if (spec.kind === 'hostport') value = formatHostPort(value as HostPort);
    if (spec.kind === 'devices') value = (value as DeviceSpec[]).map((d) => `${d.name}:${formatSize(d.size)}`);
    out[spec.key] = { value, from: loaded.origin[spec.key] };
  }
  return out;
}
