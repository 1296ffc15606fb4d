// xdevice-node: one process per host. Loads the configuration, starts the
// backend (the replicated runtime, or a single file/memory device table for
// testing the NBD layer alone), the NBD server and the admin API, and talks to
// systemd (READY=1, STOPPING=1, WATCHDOG=1).
//
// Signals: SIGTERM/SIGINT stop accepting, finish in-flight requests,
// checkpoint and exit 0; SIGHUP reloads what can change without a restart
// (log-level, admin-token).

import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { CONFIG_KEYS, REFUSED_KEYS, ConfigError, describeConfig, formatHostPort, loadConfig, type LoadedConfig, type NodeConfig } from './config.ts';
import { createLogger, type Logger } from '../log.ts';
import { validateLimits } from '../limits.ts';
import { NbdServer } from '../nbd/server.ts';
import { AdminServer } from '../admin/server.ts';
import { createMetrics } from '../admin/metrics.ts';
import { EventLog } from '../admin/status-page.ts';
import { sdNotify } from '../native.ts';
import { startRuntime, type Runtime } from './runtime.ts';
import { watchFaultFile } from '../wal/fault-file.ts';
import { START_REFUSAL_CODES } from '../cluster/data-dir.ts';
import { NODE_EXIT } from '../exit-codes.ts';
import type { XDeviceError } from '../errors.ts';
import { VERSION } from '../version.ts';

export interface RunningNode {
  config: NodeConfig;
  runtime: Runtime;
  nbd: NbdServer;
  admin: AdminServer;
  nbdAddress: string;
  adminAddress: string;
  stop(): Promise<void>;
}

function parseFlags(argv: string[]): { flags: Map<string, string | string[]>; configFile?: string } {
  let parser = yargs(argv)
    .scriptName('xdevice-node')
    .usage('$0 [--config FILE] [options]\n\nEvery option is also a config-file key of the same name and an XDEVICE_<KEY> environment variable.\nPrecedence: flags > environment > config file > defaults.')
    .option('config', { type: 'string', describe: 'configuration file (key = value lines)' })
    .parserConfiguration({ 'camel-case-expansion': false, 'dot-notation': false, 'boolean-negation': false })
    .strict()
    .help()
    .version(VERSION);
  for (const spec of CONFIG_KEYS) {
    parser = parser.option(spec.key, {
      type: spec.kind === 'boolean' ? 'boolean' : 'string',
      array: spec.kind === 'devices',
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

export async function startNode(loaded: LoadedConfig, logger: Logger): Promise<RunningNode> {
  const { config } = loaded;
  validateLimits();
  logger.info(startupSummary(loaded), 'starting');
  logger.debug({ config: describeConfig(loaded) }, 'effective configuration');

  // Test-only: XDEVICE_FAULT_FILE names a JSON file of disk faults (slow or failing
  // fdatasync/pwrite) that the fault tests change while the node runs.
  const faults = process.env.XDEVICE_FAULT_FILE ? watchFaultFile(process.env.XDEVICE_FAULT_FILE, logger.child({ component: 'faults' })) : undefined;
  const runtime = await startRuntime(config, logger);
  const tls =
    config.tls === 'off'
      ? undefined
      : {
          mode: config.tls,
          ...(config.tlsCert ? { certFile: config.tlsCert } : {}),
          ...(config.tlsKey ? { keyFile: config.tlsKey } : {}),
          ...(config.tlsCa ? { caFile: config.tlsCa } : {}),
          ...(config.tlsPsk ? { pskFile: config.tlsPsk } : {}),
        };
  const nbd = new NbdServer({ devices: runtime.devices, logger: logger.child({ component: 'nbd' }), ...(tls ? { tls } : {}) });
  const metrics = createMetrics({ node: runtime.api, nbd, dataDir: config.dataDir });
  const events = new EventLog(runtime.api);
  const admin = new AdminServer({ node: runtime.api, exports: nbd, metrics, events, logger: logger.child({ component: 'admin' }), token: config.adminToken });

  let nbdAddress = '';
  let adminAddress = '';
  try {
    adminAddress = formatHostPort(await admin.listen(config.adminListen.host, config.adminListen.port));
    nbdAddress = formatHostPort(await nbd.listen(config.nbdListen.host, config.nbdListen.port));
  } catch (err) {
    await admin.close().catch(() => {});
    await runtime.stop().catch(() => {});
    throw err;
  }
  runtime.setAddresses({ nbd: nbdAddress, admin: adminAddress });
  logger.info({ nbd: nbdAddress, admin: adminAddress, backend: config.backend, node: config.nodeId }, 'serving');

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      // Stop taking new work first, let in-flight requests finish, then checkpoint.
      await nbd.close();
      await admin.close();
      await runtime.stop();
      faults?.stop();
    })());
  return { config, runtime, nbd, admin, nbdAddress, adminAddress, stop };
}

export async function main(argv = hideBin(process.argv)): Promise<void> {
  let loaded: LoadedConfig;
  let configFile: string | undefined;
  try {
    const parsed = parseFlags(argv);
    configFile = parsed.configFile;
    loaded = loadConfig({ flags: parsed.flags, env: process.env, ...(configFile ? { configFile } : {}) });
  } catch (err) {
    process.stderr.write(`xdevice-node: ${(err as Error).message}\n`);
    process.exit(err instanceof ConfigError ? 2 : 1);
  }
  const logger = createLogger({ level: loaded.config.logLevel, format: loaded.config.logFormat, name: `xdevice-node/${loaded.config.nodeId}` });
  // A rejected I/O promise nobody observed means state this process can no
  // longer vouch for: fail closed, as a failed fdatasync does.
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err: (err as Error)?.message, code: (err as { code?: string })?.code }, 'unobserved failure; leaving service');
    logger.flush();
    process.exit(NODE_EXIT.failed);
  });

  let node: RunningNode;
  try {
    node = await startNode(loaded, logger);
  } catch (err) {
    const refused = START_REFUSAL_CODES.has((err as XDeviceError).code) || err instanceof ConfigError;
    logger.fatal({ err }, 'cannot start');
    logger.flush();
    process.stderr.write(`xdevice-node: cannot start: ${(err as Error).message}\n`);
    setTimeout(() => process.exit(refused ? NODE_EXIT.refused : NODE_EXIT.failed), 50);
    return;
  }

  sdNotify(`READY=1\nSTATUS=serving NBD on ${node.nbdAddress}, admin on ${node.adminAddress}\nMAINPID=${process.pid}`);
  const watchdogUsec = Number(process.env.WATCHDOG_USEC ?? 0);
  const watchdogPid = Number(process.env.WATCHDOG_PID ?? process.pid);
  let watchdog: NodeJS.Timeout | undefined;
  if (watchdogUsec > 0 && watchdogPid === process.pid) {
    // Ping at half the interval, and only while the node's loop is alive.
    watchdog = setInterval(() => sdNotify('WATCHDOG=1'), Math.max(100, watchdogUsec / 2000));
    watchdog.unref();
  }

  node.runtime.onFatal((err) => {
    logger.fatal({ err }, 'node failed; leaving service');
    sdNotify(`STATUS=failed: ${err.message}`);
    void node.stop().finally(() => {
      logger.flush();
      process.exit(1);
    });
  });

  node.runtime.onRemoved((why) => {
    // Restarting would only make it campaign against a cluster that no longer
    // counts it: exit with a code the unit does not restart on.
    logger.warn({ why, exitCode: NODE_EXIT.removed }, 'removed from the cluster; exiting');
    sdNotify(`STOPPING=1\nSTATUS=removed from the cluster: ${why}`);
    void node
      .stop()
      .catch(() => undefined)
      .finally(() => {
        logger.flush();
        process.exit(NODE_EXIT.removed);
      });
    setTimeout(() => process.exit(NODE_EXIT.removed), 15_000).unref();
  });

  const shutdown = (signal: string) => {
    logger.info({ signal }, 'stopping: finishing in-flight requests, then checkpointing');
    sdNotify('STOPPING=1\nSTATUS=stopping');
    if (watchdog) clearInterval(watchdog);
    const force = setTimeout(() => {
      logger.error('shutdown took too long; exiting');
      process.exit(1);
    }, 30_000);
    force.unref();
    node
      .stop()
      .then(() => {
        logger.info('stopped cleanly');
        logger.flush();
        process.exit(0);
      })
      .catch((err) => {
        logger.error({ err }, 'error while stopping');
        logger.flush();
        process.exit(1);
      });
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGHUP', () => {
    try {
      const fresh = loadConfig({ flags: parseFlags(argv).flags, env: process.env, ...(configFile ? { configFile } : {}) });
      const changed: string[] = [];
      if (fresh.config.logLevel !== logger.level) {
        logger.level = fresh.config.logLevel;
        changed.push('log-level');
      }
      if (fresh.config.adminToken !== node.config.adminToken) {
        node.admin.setToken(fresh.config.adminToken);
        node.config.adminToken = fresh.config.adminToken;
        changed.push('admin-token');
      }
      const fixed = CONFIG_KEYS.filter((k) => !k.reloadable && JSON.stringify(fresh.config[k.field]) !== JSON.stringify(node.config[k.field])).map((k) => k.key);
      logger.info({ changed, needRestart: fixed }, 'SIGHUP: configuration reloaded');
      sdNotify('RELOADING=0\nREADY=1');
    } catch (err) {
      logger.error({ err }, 'SIGHUP: configuration not reloaded');
    }
  });
}
