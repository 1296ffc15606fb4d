// The replicated backend of xdevice-node: a ClusterNode behind the Runtime
// interface src/cli expects (devices for the NBD server, the admin API,
// fatal-error hook, stop).

import type { Logger } from 'pino';
import type { NodeConfig as CliConfig } from '../cli/config.ts';
import type { Runtime } from '../runtime.ts';
import { ClusterNode, tuningFromEnv } from './node.ts';
import { loadPeerAuth } from './peer-auth.ts';

export async function startReplicatedRuntime(config: CliConfig, logger: Logger): Promise<Runtime & { node: ClusterNode }> {
  const node = await ClusterNode.start({
    nodeId: config.nodeId,
    dataDir: config.dataDir,
    peerListen: config.peerListen,
    peers: config.peers,
    peerAuth: loadPeerAuth(config),
    devices: config.devices,
    join: config.join,
    spaceReserveBytes: config.spaceReserve,
    logger,
    tuning: tuningFromEnv(),
  });
  return {
    node,
    devices: node.devices,
    api: node.api,
    setAddresses: (a) => node.setAddresses(a),
    onFatal: (listener) => node.onFatal(listener),
    onRemoved: (listener) => node.onRemoved(listener),
    stop: () => node.stop(),
  };
}
