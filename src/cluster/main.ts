// A minimal replicated node process: the cluster runtime, the NBD server and
// the admin API, with the command-line contract's cluster flags. The full
// xdevice-node (src/cli) adds configuration files, systemd and signals for
// reloads; this entry exists so the runtime can be driven as real processes
// on its own (integration tests, benchmarks).
//
//   node --import=tsx src/cluster/main.ts --node-id n1 --data-dir DIR
//     --nbd-listen H:P --admin-listen H:P --peer-listen H:P
//     --peers n1=H:P,n2=H:P,... [--device NAME:SIZE]... [--join]
//     --cluster-secret-file F | --peer-tls-cert C --peer-tls-key K --peer-tls-ca A | --insecure-peers
//
// Prints one JSON line {"ready":true,...} on stdout once serving. Exits 0 on
// SIGTERM/SIGINT after a clean stop, 70 if the node fails (e.g. a failed
// fdatasync): it must not keep serving; 2 for a bad configuration (peers
// without authentication, a weak or exposed secret file). XDEVICE_FAULT_FILE arms the native
// addon's fault injection for fault tests.

import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { parseDevice, parseHostPort, parsePeers, parseSize, formatHostPort, REFUSED_KEYS } from '../cli/config.ts';
import { validateLimits } from '../limits.ts';
import { NbdServer } from '../nbd/server.ts';
import { AdminServer } from '../admin/server.ts';
import { createMetrics } from '../admin/metrics.ts';
import { setNativeLogger } from '../native.ts';
import { watchFaultFile } from '../wal/fault-file.ts';
import { ClusterNode, tuningFromEnv } from './node.ts';
import { loadPeerAuth, type PeerAuth } from './peer-auth.ts';
import { EXIT_REMOVED, NODE_EXIT } from '../exit-codes.ts';
import { START_REFUSAL_CODES } from './data-dir.ts';

const EXIT_FATAL = 70;
const EXIT_CONFIG = 2;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'node-id': { type: 'string', default: 'node1' },
      'data-dir': { type: 'string', default: './data' },
      'nbd-listen': { type: 'string', default: '127.0.0.1:10809' },
      'admin-listen': { type: 'string', default: '127.0.0.1:10819' },
      'peer-listen': { type: 'string', default: '127.0.0.1:10829' },
      peers: { type: 'string', default: '' },
      device: { type: 'string', multiple: true },
      join: { type: 'boolean', default: false },
      'cluster-secret-file': { type: 'string', default: '' },
      'peer-tls-cert': { type: 'string', default: '' },
      'peer-tls-key': { type: 'string', default: '' },
      'peer-tls-ca': { type: 'string', default: '' },
      'insecure-peers': { type: 'boolean', default: false },
      // Parsed only to be refused with a reason.
      'cluster-secret': { type: 'string' },
      'log-level': { type: 'string', default: process.env.XDEVICE_LOG_LEVEL ?? 'info' },
      'space-reserve': { type: 'string' },
    },
    strict: true,
  });
  validateLimits();
  if (values['cluster-secret'] !== undefined) {
    process.stderr.write(`xdevice cluster node: ${REFUSED_KEYS['cluster-secret']}\n`);
    process.exit(EXIT_CONFIG);
  }
  const peers = values.peers ? parsePeers(values.peers) : {};
  let peerAuth: PeerAuth;
  try {
    peerAuth = loadPeerAuth({
      nodeId: values['node-id']!,
      peers,
      clusterSecretFile: values['cluster-secret-file']!,
      peerTlsCert: values['peer-tls-cert']!,
      peerTlsKey: values['peer-tls-key']!,
      peerTlsCa: values['peer-tls-ca']!,
      insecurePeers: values['insecure-peers']!,
    });
  } catch (err) {
    process.stderr.write(`xdevice cluster node: ${(err as Error).message}\n`);
    process.exit(EXIT_CONFIG);
  }
  const logger = pino({ level: values['log-level']!, base: { node: values['node-id'] } }, pino.destination(2));
  // A rejected I/O promise nobody observed means state this process can no
  // longer vouch for: fail closed, as a failed fdatasync does.
  process.on('unhandledRejection', (err) => {
    logger.fatal({ err: (err as Error)?.message, code: (err as { code?: string })?.code }, 'unobserved failure; leaving service');
    process.exit(EXIT_FATAL);
  });
  setNativeLogger(logger);
  const faultFile = process.env.XDEVICE_FAULT_FILE;
  if (faultFile) watchFaultFile(faultFile, logger);

  const devices = (values.device ?? ['default:1GiB']).map(parseDevice);
  const node = await ClusterNode.start({
    nodeId: values['node-id']!,
    dataDir: values['data-dir']!,
    peerListen: parseHostPort(values['peer-listen']!),
    peers,
    peerAuth,
    devices,
    join: values.join!,
    ...(values['space-reserve'] ? { spaceReserveBytes: parseSize(values['space-reserve']) } : {}),
    logger,
    tuning: tuningFromEnv(),
  });
  const nbdAt = parseHostPort(values['nbd-listen']!);
  const adminAt = parseHostPort(values['admin-listen']!);
  const nbd = new NbdServer({ devices: node.devices, logger: logger.child({ component: 'nbd' }) });
  const metrics = createMetrics({ node: node.api, nbd });
  const admin = new AdminServer({ node: node.api, exports: nbd, metrics, logger: logger.child({ component: 'admin' }) });
  const nbdBound = await nbd.listen(nbdAt.host, nbdAt.port);
  const adminBound = await admin.listen(adminAt.host, adminAt.port);
  node.setAddresses({ nbd: formatHostPort(nbdBound), admin: formatHostPort(adminBound) });

  let stopping = false;
  node.onFatal((err) => {
    logger.fatal({ err: err.message }, 'leaving service');
    // Close the exports so clients reconnect elsewhere; never serve again.
    void nbd.close().finally(() => process.exit(EXIT_FATAL));
    setTimeout(() => process.exit(EXIT_FATAL), 2000).unref();
  });
  node.onRemoved((why) => {
    logger.warn({ why }, 'removed from the cluster; exiting');
    void node.stop().finally(() => process.exit(EXIT_REMOVED));
    setTimeout(() => process.exit(EXIT_REMOVED), 15_000).unref();
  });
  const stop = async (): Promise<void> => {
    if (stopping) return;
    stopping = true;
    await nbd.close();
    await node.stop();
    await admin.close();
    process.exit(0);
  };
  process.on('SIGTERM', () => void stop());
  process.on('SIGINT', () => void stop());
  process.stdout.write(JSON.stringify({ ready: true, nodeId: values['node-id'], nbd: formatHostPort(nbdBound), admin: formatHostPort(adminBound), peer: node.peerAddress }) + '\n');
}

main().catch((err: Error) => {
  const refused = START_REFUSAL_CODES.has((err as Error & { code?: string }).code ?? '');
  process.stderr.write(`xdevice cluster node: ${refused ? err.message : (err.stack ?? err.message)}\n`);
  process.exit(refused ? NODE_EXIT.refused : NODE_EXIT.failed);
});
