// Wiring one node from its configuration: the runtime that --backend names
// (replicated, or file/memory without Raft), the NBD server over its devices,
// the admin API with its metrics and status page, and the test-only disk
// fault file. The process around it (signals, systemd, exit codes) is
// ./main.ts.

import { readFileSync } from 'node:fs';
import type { Logger } from 'pino';
import type { AuditSink } from '../audit/event.ts';
import { validateLimits } from '../limits.ts';
import { setNativeLogger } from '../native.ts';
import { NbdServer } from '../nbd/server.ts';
import { AdminServer, type AdminTls } from '../admin/server.ts';
import { loadAccess, type AccessTable } from '../admin/access.ts';
import { createMetrics } from '../admin/metrics.ts';
import { EventLog } from '../admin/status-page.ts';
import { watchFaultFile } from '../wal/fault-file.ts';
import { formatHostPort } from '../parse.ts';
import { NO_AUDIT } from '../audit/event.ts';
import { ConfigError, describeConfig, isLoopbackHost, startupSummary, type LoadedConfig, type NodeConfig } from './config.ts';
import { startReplicatedRuntime, type Runtime } from './runtime.ts';
import { startStandaloneRuntime } from './standalone.ts';

export interface RunningNode {
  config: NodeConfig;
  runtime: Runtime;
  nbd: NbdServer;
  admin: AdminServer;
  nbdAddress: string;
  adminAddress: string;
  /** Where peers reach this node ('' without Raft). */
  peerAddress: string;
  stop(): Promise<void>;
}

export async function startRuntime(config: NodeConfig, logger: Logger): Promise<Runtime> {
  return config.backend === 'replicated' ? await startReplicatedRuntime(config, logger) : await startStandaloneRuntime(config, logger);
}

function nbdTls(config: NodeConfig) {
  if (config.tls === 'off') return undefined;
  return {
    mode: config.tls,
    ...(config.tlsCert ? { certFile: config.tlsCert } : {}),
    ...(config.tlsKey ? { keyFile: config.tlsKey } : {}),
    ...(config.tlsCa ? { caFile: config.tlsCa } : {}),
    ...(config.tlsPsk ? { pskFile: config.tlsPsk } : {}),
    ...(config.tlsVerifyPeer ? { verifyPeer: true } : {}),
  };
}

/** The admin API's clients and roles from the configuration (its clients file read now); a ConfigError says what is wrong. */
export function adminAccess(config: NodeConfig): AccessTable {
  try {
    return loadAccess({ clientsFile: config.adminClientsFile, token: config.adminToken, anonymousReads: config.adminAnonymousRead });
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
}

function adminTls(config: NodeConfig): AdminTls | undefined {
  if (!config.adminTlsCert) return undefined;
  const read = (key: string, path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (err) {
      throw new ConfigError(`${key}: cannot read ${path}: ${(err as Error).message}`);
    }
  };
  return {
    cert: read('admin-tls-cert', config.adminTlsCert),
    key: read('admin-tls-key', config.adminTlsKey),
    ...(config.adminTlsCa ? { ca: read('admin-tls-ca', config.adminTlsCa) } : {}),
  };
}

/** Starts everything and listens; on a failure to listen, what was started is stopped again. */
export async function startNode(loaded: LoadedConfig, logger: Logger, audit?: AuditSink): Promise<RunningNode> {
  const { config } = loaded;
  validateLimits();
  setNativeLogger(logger.child({ component: 'native' }));
  logger.info(startupSummary(loaded), 'starting');
  logger.debug({ config: describeConfig(loaded) }, 'effective configuration');
  // Before the data directory is opened: a bad clients file or certificate refuses at once.
  const access = adminAccess(config);
  const tls = adminTls(config);
  if (access.required && !tls && !isLoopbackHost(config.adminListen.host)) {
    logger.warn({ admin: formatHostPort(config.adminListen) }, 'the admin API is reachable from other hosts over plain HTTP: tokens cross the network in clear; set admin-tls-cert and admin-tls-key');
  }

  // Test-only: XDEVICE_FAULT_FILE names a JSON file of disk faults (slow or failing
  // fdatasync/pwrite) that the fault tests change while the node runs.
  const faults = process.env.XDEVICE_FAULT_FILE ? watchFaultFile(process.env.XDEVICE_FAULT_FILE, logger.child({ component: 'faults' })) : undefined;
  let runtime: Runtime;
  try {
    runtime = await startRuntime(config, logger);
  } catch (err) {
    faults?.stop();
    throw err;
  }
  const nbdTlsOptions = nbdTls(config);
  const sink = audit ?? runtime.audit ?? NO_AUDIT;
  const nbd = new NbdServer({
    devices: runtime.devices,
    logger: logger.child({ component: 'nbd' }),
    exportAllow: config.exportAllow,
    ...(nbdTlsOptions ? { tls: nbdTlsOptions } : {}),
    audit: sink,
  });
  const metrics = createMetrics({ node: runtime.api, nbd, dataDir: config.dataDir });
  const events = new EventLog(runtime.api);
  const admin = new AdminServer({
    node: runtime.api,
    exports: nbd,
    metrics,
    events,
    logger: logger.child({ component: 'admin' }),
    access,
    ...(tls ? { tls } : {}),
    audit: sink,
    ...(runtime.audit ? { auditReader: runtime.audit } : {}),
  });

  let nbdAddress = '';
  let adminAddress = '';
  try {
    adminAddress = formatHostPort(await admin.listen(config.adminListen.host, config.adminListen.port));
    nbdAddress = formatHostPort(await nbd.listen(config.nbdListen.host, config.nbdListen.port));
  } catch (err) {
    await nbd.close().catch(() => {});
    await admin.close().catch(() => {});
    await runtime.stop().catch(() => {});
    faults?.stop();
    throw err;
  }
  runtime.setAddresses({ nbd: nbdAddress, admin: adminAddress });
  const peerAddress = runtime.peerAddress ?? '';
  logger.info({ nbd: nbdAddress, admin: adminAddress, ...(peerAddress ? { peer: peerAddress } : {}), backend: config.backend, node: config.nodeId }, 'serving');

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      // Stop taking new work first, let in-flight requests finish, then checkpoint.
      await nbd.close();
      await admin.close();
      await runtime.stop();
      faults?.stop();
    })());
  return { config, runtime, nbd, admin, nbdAddress, adminAddress, peerAddress, stop };
}
