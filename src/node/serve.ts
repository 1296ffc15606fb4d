// Wiring one node from its configuration: the runtime that --backend names
// (replicated, or file/memory without Raft), the NBD server over its devices,
// the admin API with its metrics and status page, and the test-only disk
// fault file. The process around it (signals, systemd, exit codes) is
// ./main.ts.

import type { Logger } from 'pino';
import { validateLimits } from '../limits.ts';
import { setNativeLogger } from '../native.ts';
import { NbdServer } from '../nbd/server.ts';
import { AdminServer } from '../admin/server.ts';
import { createMetrics } from '../admin/metrics.ts';
import { EventLog } from '../admin/status-page.ts';
import { watchFaultFile } from '../wal/fault-file.ts';
import { formatHostPort } from '../parse.ts';
import { NO_AUDIT } from '../audit/event.ts';
import { describeConfig, startupSummary, type LoadedConfig, type NodeConfig } from './config.ts';
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
  };
}

/** Starts everything and listens; on a failure to listen, what was started is stopped again. */
export async function startNode(loaded: LoadedConfig, logger: Logger): Promise<RunningNode> {
  const { config } = loaded;
  validateLimits();
  setNativeLogger(logger.child({ component: 'native' }));
  logger.info(startupSummary(loaded), 'starting');
  logger.debug({ config: describeConfig(loaded) }, 'effective configuration');

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
  const tls = nbdTls(config);
  const audit = runtime.audit ?? NO_AUDIT;
  const nbd = new NbdServer({ devices: runtime.devices, logger: logger.child({ component: 'nbd' }), ...(tls ? { tls } : {}), audit });
  const metrics = createMetrics({ node: runtime.api, nbd, dataDir: config.dataDir });
  const events = new EventLog(runtime.api);
  const admin = new AdminServer({
    node: runtime.api,
    exports: nbd,
    metrics,
    events,
    logger: logger.child({ component: 'admin' }),
    token: config.adminToken,
    audit,
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
