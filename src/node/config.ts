// A node's configuration: the one type (NodeConfig), one schema, three
// sources, read by xdevice-node's one entry (./main.ts) and nowhere else.
//
// Precedence (highest first): command-line flags, XDEVICE_<KEY> environment
// variables, the --config file, the embedded defaults. Every key has the same
// name in all three places (`--data-dir`, `XDEVICE_DATA_DIR`, `data-dir = …`).
// Unknown keys and bad values are rejected with a ConfigError naming the key
// (exit 2). The values themselves are read by the one parser of their kind
// (src/parse.ts), which the admin API and xdevice-cli share.

import { readFileSync } from 'node:fs';
import yargs from 'yargs';
import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import { VERSION } from '../version.ts';
import { COMPRESSION_MODES, type CompressionMode } from '../device/compression.ts';
import { loadPeerAuth } from '../cluster/peer-auth.ts';
import type { LogFormat } from '../log.ts';
import type { TlsMode } from '../nbd/tls.ts';
import { checkExportGrants, formatExportGrant, formatHostPort, formatSize, parseAnonymousReads, parseDevice, parseExportGrants, parseHostPort, parseNodeId, parsePeers, parseSize, type AnonymousRead, type DeviceSpec, type ExportGrant, type HostPort } from '../parse.ts';

export class ConfigError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_CONFIG', message);
  }
}

export type Backend = 'replicated' | 'file' | 'memory';

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
  adminClientsFile: string;
  adminAnonymousRead: AnonymousRead[];
  adminTlsCert: string;
  adminTlsKey: string;
  adminTlsCa: string;
  tls: TlsMode;
  tlsCert: string;
  tlsKey: string;
  tlsCa: string;
  tlsPsk: string;
  tlsVerifyPeer: boolean;
  /** Per-export allow lists; exports not named are open to every client. */
  exportAllow: ExportGrant[];
  logLevel: string;
  logFormat: LogFormat;
  /** Bytes kept free on the data filesystem; writes get ENOSPC below it. */
  spaceReserve: number;
  /** Print {"ready":true,...} on stdout once serving (off: stdout carries log records only). */
  readyLine: boolean;
  /** Key-encryption keys for encrypted devices (src/crypt/key-file.ts); '' falls back to the systemd credential. */
  encryptionKeyFile: string;
  /** Create the devices of `device` encrypted when the cluster is founded. */
  encryptDevices: boolean;
  /** The leader serves reads without a ReadIndex round while its lease holds (needs bounded clock drift). */
  leaseReads: boolean;
  /** Write compression: lz4 (compress writes that pay, zero writes become holes) or off. */
  compression: CompressionMode;
}

type Kind = 'string' | 'hostport' | 'devices' | 'peers' | 'boolean' | 'size' | 'anonymous-reads' | 'grants' | { oneOf: readonly string[] };

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
  { key: 'admin-token', field: 'adminToken', kind: 'string', default: '', describe: 'bearer token of one admin API client named "token" with role admin', reloadable: true },
  { key: 'admin-clients-file', field: 'adminClientsFile', kind: 'string', default: '', describe: 'file (mode 600) of admin API clients and roles: "token NAME ROLE sha256:HEX" and "cert CN ROLE" lines (xdevice-cli client add)', reloadable: true },
  { key: 'admin-anonymous-read', field: 'adminAnonymousRead', kind: 'anonymous-reads', default: '', describe: 'admin routes open to callers without credentials when credentials are configured: metrics, health (comma-separated)', reloadable: true },
  { key: 'admin-tls-cert', field: 'adminTlsCert', kind: 'string', default: '', describe: 'X.509 certificate (PEM): the admin API speaks HTTPS' },
  { key: 'admin-tls-key', field: 'adminTlsKey', kind: 'string', default: '', describe: 'private key (PEM) for the admin API’s HTTPS' },
  { key: 'admin-tls-ca', field: 'adminTlsCa', kind: 'string', default: '', describe: 'CA (PEM) that signs admin client certificates; their subject CN maps to a role by "cert" lines in admin-clients-file' },
  { key: 'tls', field: 'tls', kind: { oneOf: ['off', 'on', 'require'] }, default: 'off', describe: 'NBD STARTTLS: off, on (offered), require' },
  { key: 'tls-cert', field: 'tlsCert', kind: 'string', default: '', describe: 'X.509 certificate (PEM) for NBD TLS' },
  { key: 'tls-key', field: 'tlsKey', kind: 'string', default: '', describe: 'private key (PEM) for NBD TLS' },
  { key: 'tls-ca', field: 'tlsCa', kind: 'string', default: '', describe: 'CA (PEM) that signs client certificates (with tls-verify-peer)' },
  { key: 'tls-psk', field: 'tlsPsk', kind: 'string', default: '', describe: 'PSK file (username:hexkey lines) for NBD TLS-PSK' },
  { key: 'tls-verify-peer', field: 'tlsVerifyPeer', kind: 'boolean', default: 'false', describe: 'every NBD TLS client must present a certificate signed by tls-ca (X.509 only)' },
  { key: 'export-allow', field: 'exportAllow', kind: 'grants', default: '', describe: 'EXPORT:rw|ro:PRINCIPAL, repeatable (;-separated in env): only listed principals attach EXPORT; PRINCIPAL is a certificate subject (/CN=alice) or psk:NAME' },
  { key: 'log-level', field: 'logLevel', kind: { oneOf: LOG_LEVELS }, default: 'info', describe: 'trace, debug, info, warn, error, fatal', reloadable: true },
  { key: 'space-reserve', field: 'spaceReserve', kind: 'size', default: formatSize(limits.spaceReserveBytes), describe: 'free space kept on the data filesystem: below it writes get ENOSPC before they are proposed' },
  { key: 'log-format', field: 'logFormat', kind: { oneOf: ['auto', 'json', 'pretty'] }, default: 'auto', describe: 'auto: pretty on a terminal, JSON otherwise' },
  { key: 'encryption-key-file', field: 'encryptionKeyFile', kind: 'string', default: '', describe: 'file (mode 600) of key-encryption keys, "ID HEX" lines (openssl rand -hex 32); unset: the systemd credential xdevice-encryption-keys' },
  { key: 'encrypt-devices', field: 'encryptDevices', kind: 'boolean', default: 'false', describe: 'create the devices of `device` (the default device) encrypted when the cluster is founded (needs encryption-key-file)' },
  { key: 'lease-reads', field: 'leaseReads', kind: 'boolean', default: 'false', describe: `the leader serves reads without a ReadIndex round while a quorum answered a heartbeat within the lease (about ${limits.electionTicks - 1} ticks less ${limits.leaseClockDriftPercent}% clock drift); safe only while clocks drift less than that: set it on every member or on none` },
  { key: 'compression', field: 'compression', kind: { oneOf: COMPRESSION_MODES }, default: 'lz4', describe: 'lz4: writes that shrink by 1/8 or more go to the WAL and the peers LZ4-compressed, and all-zero writes become holes (once every member runs a version that reads them); off: every write as written' },
  { key: 'ready-line', field: 'readyLine', kind: 'boolean', default: 'false', describe: 'once serving, print one JSON line {"ready":true,"nodeId","nbd","admin","peer"} on stdout (for launchers without a systemd notify socket)' },
];

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
    case 'anonymous-reads':
      return parseAnonymousReads(one);
    case 'grants': {
      const grants = values.flatMap(parseExportGrants);
      checkExportGrants(grants);
      return grants;
    }
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
// The test runner's and benchmarks' own knobs are here because the test
// launchers start every node with the runner's environment.
const NON_CONFIG_ENV = new Set([
  'XDEVICE_SEED', 'XDEVICE_TEST_JOBS', 'XDEVICE_FAULT_FILE', 'XDEVICE_CHECKPOINT_ENTRIES', 'XDEVICE_CHECKPOINT_BYTES', 'XDEVICE_WAL_RETAIN_ENTRIES', 'XDEVICE_WAL_RETAIN_BYTES', 'XDEVICE_BIN',
  'XDEVICE_TEST_BACKEND', 'XDEVICE_TEST_TMP', 'XDEVICE_TEST_LOG', 'XDEVICE_KEEP_TMP', 'XDEVICE_KEEP_TEST_DIRS', 'XDEVICE_NEMESIS_SECONDS',
  'XDEVICE_PGBENCH_SECONDS', 'XDEVICE_CATCHUP_MIB', 'XDEVICE_FUZZ_FRAMES', 'XDEVICE_SIM_SEEDS', 'XDEVICE_SIM_FROM', 'XDEVICE_SIM_HOSTILE_SEEDS',
  'XDEVICE_WAL_CRASH_CYCLES', 'XDEVICE_WAL_CRASH_SYNC_MODE', 'XDEVICE_NBD_FUZZ_CONNECTIONS', 'XDEVICE_BENCH_DIR',
  // The native addon's I/O path, read when it loads (src/native.ts), and its test hooks.
  'XDEVICE_IO', 'XDEVICE_IO_URING_SETUP_ERRNO', 'XDEVICE_IO_URING_CQE_SKIP',
  // xdevice-cli's client certificate for an HTTPS admin API.
  'XDEVICE_ADMIN_CACERT', 'XDEVICE_ADMIN_CERT', 'XDEVICE_ADMIN_KEY',
]);

function crossCheck(c: NodeConfig): void {
  try {
    parseNodeId(c.nodeId);
  } catch (err) {
    throw new ConfigError(`node-id: ${(err as Error).message}`);
  }
  if (c.backend !== 'replicated' && Object.keys(c.peers).some((id) => id !== c.nodeId)) {
    throw new ConfigError(`peers: backend ${c.backend} serves one node without Raft; use --backend replicated for a cluster`);
  }
  if (c.tls !== 'off' && !c.tlsPsk && !(c.tlsCert && c.tlsKey)) {
    throw new ConfigError('tls: needs tls-psk, or tls-cert and tls-key');
  }
  if ((c.tlsCert === '') !== (c.tlsKey === '')) throw new ConfigError('tls-cert and tls-key go together');
  checkAdminAccess(c);
  checkNbdAccess(c);
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

/**
 * The admin listener's settings hang together, and one reachable from other
 * hosts has credentials: an open admin API there would let anyone delete
 * devices. (The clients file itself is read by the admin wiring, so SIGHUP
 * can reload it and keep the old table when it is bad.)
 */
function checkAdminAccess(c: NodeConfig): void {
  if ((c.adminTlsCert === '') !== (c.adminTlsKey === '')) throw new ConfigError('admin-tls-cert and admin-tls-key go together');
  if (c.adminTlsCa && !c.adminTlsCert) throw new ConfigError('admin-tls-ca: client certificates need the HTTPS listener: set admin-tls-cert and admin-tls-key');
  if (c.adminTlsCa && !c.adminClientsFile) throw new ConfigError('admin-tls-ca: a certificate\'s role comes from a "cert CN ROLE" line in admin-clients-file: set it');
  if (!c.adminClientsFile && !c.adminToken && !isLoopbackHost(c.adminListen.host)) {
    throw new ConfigError(
      `admin-listen ${formatHostPort(c.adminListen)} is reachable from other hosts and the admin API has no credentials: set admin-clients-file (xdevice-cli client add) or admin-token, or listen on 127.0.0.1`,
    );
  }
}

/** 127.0.0.0/8, ::1 and localhost: only this host can connect. */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) || /^::ffff:127\./i.test(host);
}

/** tls-verify-peer and export-allow need the TLS that proves who a client is. */
function checkNbdAccess(c: NodeConfig): void {
  if (c.tlsVerifyPeer) {
    if (c.tls === 'off') throw new ConfigError('tls-verify-peer: needs tls = on or require');
    if (c.tlsPsk) throw new ConfigError('tls-verify-peer: checks X.509 client certificates; with tls-psk every client already proves a key from the PSK file, so drop tls-verify-peer');
    if (!c.tlsCa) throw new ConfigError('tls-verify-peer: needs tls-ca, the CA (PEM) that signs client certificates');
  } else if (c.tls !== 'off' && c.tlsCa) {
    // tls-ca alone once required client certificates; silently accepting clients without one would weaken such a node.
    throw new ConfigError('tls-ca: client certificates are verified only with tls-verify-peer = true; set it (every TLS client then needs a certificate signed by tls-ca), or drop tls-ca');
  }
  for (const grant of c.exportAllow) {
    if (c.tls === 'off') throw new ConfigError(`export-allow: ${formatExportGrant(grant)}: needs tls = on or require, since only TLS proves who a client is`);
    if (grant.principal.kind === 'subject' && !c.tlsVerifyPeer) {
      throw new ConfigError(`export-allow: ${formatExportGrant(grant)} names a certificate subject: needs tls-verify-peer = true and tls-ca`);
    }
    if (grant.principal.kind === 'psk' && !c.tlsPsk) throw new ConfigError(`export-allow: ${formatExportGrant(grant)} names a PSK identity: needs tls-psk`);
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
    if (spec.kind === 'grants') value = (value as ExportGrant[]).map(formatExportGrant);
    out[spec.key] = { value, from: loaded.origin[spec.key] };
  }
  return out;
}

export interface ParsedFlags {
  /** Values by key (repeatable keys as arrays); only the flags that were given. */
  flags: Map<string, string | string[]>;
  configFile?: string;
}

/**
 * xdevice-node's command line: every configuration key as --KEY, plus
 * --config, --help and --version (those two print and exit 0). A flag that
 * is unknown or malformed is a ConfigError (exit 2), as a bad key is.
 */
export function parseFlags(argv: string[]): ParsedFlags {
  let parser = yargs(argv)
    .scriptName('xdevice-node')
    .usage('$0 [--config FILE] [options]\n\nEvery option is also a config-file key of the same name and an XDEVICE_<KEY> environment variable.\nPrecedence: flags > environment > config file > defaults.')
    .option('config', { type: 'string', describe: 'configuration file (key = value lines)' })
    .parserConfiguration({ 'camel-case-expansion': false, 'dot-notation': false, 'boolean-negation': false })
    .strict()
    .fail((message, err) => {
      throw new ConfigError(message ?? err?.message ?? 'bad command line');
    })
    .help()
    .version(VERSION);
  for (const spec of CONFIG_KEYS) {
    parser = parser.option(spec.key, {
      type: spec.kind === 'boolean' ? 'boolean' : 'string',
      array: spec.kind === 'devices' || spec.kind === 'grants',
      describe: `${spec.describe} (default ${spec.default || '""'})`,
    });
  }
  // Refused keys are parsed (hidden) so loadConfig can say why they are refused.
  for (const key of Object.keys(REFUSED_KEYS)) parser = parser.option(key, { type: 'string', hidden: true });
  const parsed = parser.parseSync() as Record<string, unknown>;
  const flags = new Map<string, string | string[]>();
  for (const key of [...CONFIG_KEYS.map((k) => k.key), ...Object.keys(REFUSED_KEYS)]) {
    const v = parsed[key];
    if (v === undefined) continue;
    flags.set(key, Array.isArray(v) ? v.map(String) : String(v));
  }
  const configFile = typeof parsed.config === 'string' ? parsed.config : undefined;
  return configFile === undefined ? { flags } : { flags, configFile };
}

/** Flags, then the environment and the config file they name: the node's whole configuration, or a ConfigError. */
export function readConfiguration(argv: string[], env: NodeJS.ProcessEnv): LoadedConfig & { configFile?: string } {
  const { flags, configFile } = parseFlags(argv);
  const loaded = loadConfig({ flags, env, ...(configFile ? { configFile } : {}) });
  return configFile ? { ...loaded, configFile } : loaded;
}

/**
 * One log record that says what this node is: version, id, where its data
 * lives, what it serves, and which settings were given (and where) rather than
 * defaulted. The whole configuration, one key per line, is at debug level.
 */
export function startupSummary(loaded: LoadedConfig): Record<string, unknown> {
  const { config } = loaded;
  const described = describeConfig(loaded) as Record<string, { value: unknown; from: string }>;
  const given = Object.entries(described)
    .filter(([, d]) => d.from !== 'default')
    .map(([key, d]) => `${key}=${formatValue(d.value)} (${d.from})`);
  return {
    version: VERSION,
    node: config.nodeId,
    backend: config.backend,
    dataDir: config.dataDir,
    peers: Object.keys(config.peers).length,
    given: given.join(', '),
  };
}

function formatValue(value: unknown): string {
  if (Array.isArray(value)) return value.join(',');
  if (typeof value === 'object' && value !== null) return Object.entries(value).map(([k, v]) => `${k}=${String(v)}`).join(',');
  return String(value);
}
