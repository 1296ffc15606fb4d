// xdevice-node: one process per host, and the only place that reads a node's
// configuration (flags, XDEVICE_<KEY> environment, --config file: see
// ./config.ts) and wires its pieces (./serve.ts). bin/xdevice-node.js runs
// dist/node/main.js; `node --import=tsx src/node/main.ts FLAGS` runs this file
// as it stands (tests, benchmarks).
//
// Once serving it tells systemd (READY=1, then WATCHDOG=1 pings when asked)
// and, with --ready-line, prints one JSON line on stdout for launchers
// without a notify socket: {"ready":true,"nodeId","nbd","admin","peer"}
// (off by default: the journal and log shippers read stdout as log records).
//
// Signals: SIGTERM/SIGINT stop accepting, finish in-flight requests,
// checkpoint and exit 0; SIGHUP reloads what can change without a restart
// (log-level, admin-token, admin-clients-file, admin-anonymous-read). Exit codes: src/exit-codes.ts (2: refused to
// start, naming why; 1: failed; 10: removed from the cluster).

import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { hideBin } from 'yargs/helpers';
import { createLogger, type Logger } from '../log.ts';
import { sdNotify } from '../native.ts';
import { START_REFUSAL_CODES } from '../cluster/data-dir.ts';
import { NODE_EXIT } from '../exit-codes.ts';
import type { XDeviceError } from '../errors.ts';
import { CONFIG_KEYS, ConfigError, readConfiguration, type LoadedConfig } from './config.ts';
import { adminAccess, startNode, type RunningNode } from './serve.ts';

export async function main(argv = hideBin(process.argv)): Promise<void> {
  let loaded: LoadedConfig & { configFile?: string };
  try {
    loaded = readConfiguration(argv, process.env);
  } catch (err) {
    process.stderr.write(`xdevice-node: ${(err as Error).message}\n`);
    process.exit(err instanceof ConfigError ? NODE_EXIT.refused : NODE_EXIT.failed);
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
  if (node.config.readyLine) process.stdout.write(JSON.stringify({ ready: true, nodeId: node.config.nodeId, nbd: node.nbdAddress, admin: node.adminAddress, peer: node.peerAddress }) + '\n');
  const watchdog = startWatchdog();
  superviseRuntime(node, logger);
  handleSignals(node, logger, argv, watchdog);
}

/** Pings systemd's watchdog at half the interval it asked for, while the event loop is alive. */
function startWatchdog(): NodeJS.Timeout | undefined {
  const watchdogUsec = Number(process.env.WATCHDOG_USEC ?? 0);
  const watchdogPid = Number(process.env.WATCHDOG_PID ?? process.pid);
  if (!(watchdogUsec > 0 && watchdogPid === process.pid)) return undefined;
  const timer = setInterval(() => sdNotify('WATCHDOG=1'), Math.max(100, watchdogUsec / 2000));
  timer.unref();
  return timer;
}

/** A node that failed leaves service (exit 1); one removed from the cluster exits 10 and is not restarted. */
function superviseRuntime(node: RunningNode, logger: Logger): void {
  node.runtime.onFatal((err) => {
    logger.fatal({ err }, 'node failed; leaving service');
    sdNotify(`STATUS=failed: ${err.message}`);
    void node.stop().finally(() => {
      logger.flush();
      process.exit(NODE_EXIT.failed);
    });
    // It must not keep serving: if stopping hangs on what failed, leave anyway.
    setTimeout(() => process.exit(NODE_EXIT.failed), 15_000).unref();
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
}

function handleSignals(node: RunningNode, logger: Logger, argv: string[], watchdog: NodeJS.Timeout | undefined): void {
  const shutdown = (signal: string) => {
    logger.info({ signal }, 'stopping: finishing in-flight requests, then checkpointing');
    sdNotify('STOPPING=1\nSTATUS=stopping');
    if (watchdog) clearInterval(watchdog);
    const force = setTimeout(() => {
      logger.error('shutdown took too long; exiting');
      process.exit(NODE_EXIT.failed);
    }, 30_000);
    force.unref();
    node
      .stop()
      .then(() => {
        logger.info('stopped cleanly');
        logger.flush();
        process.exit(NODE_EXIT.ok);
      })
      .catch((err) => {
        logger.error({ err }, 'error while stopping');
        logger.flush();
        process.exit(NODE_EXIT.failed);
      });
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGHUP', () => {
    try {
      const fresh = readConfiguration(argv, process.env);
      const changed: string[] = [];
      if (fresh.config.logLevel !== logger.level) {
        logger.level = fresh.config.logLevel;
        changed.push('log-level');
      }
      // The clients file is read again even when its name did not change; a bad one keeps the old table.
      try {
        node.admin.setAccess(adminAccess(fresh.config));
        node.config.adminToken = fresh.config.adminToken;
        node.config.adminClientsFile = fresh.config.adminClientsFile;
        node.config.adminAnonymousRead = fresh.config.adminAnonymousRead;
        changed.push('admin access');
      } catch (err) {
        logger.error({ err: (err as Error).message }, 'SIGHUP: admin clients not reloaded; the previous table stays in force');
      }
      const fixed = CONFIG_KEYS.filter((k) => !k.reloadable && JSON.stringify(fresh.config[k.field]) !== JSON.stringify(node.config[k.field])).map((k) => k.key);
      logger.info({ changed, needRestart: fixed }, 'SIGHUP: configuration reloaded');
      sdNotify('RELOADING=0\nREADY=1');
    } catch (err) {
      logger.error({ err }, 'SIGHUP: configuration not reloaded');
    }
  });
}

/** True when this module is the process's entry script (node [--import=tsx] src/node/main.ts), not imported by bin/. */
function isEntryScript(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isEntryScript()) await main();
