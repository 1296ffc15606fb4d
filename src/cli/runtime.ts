// What xdevice-node runs behind its NBD server and admin API: the replicated
// runtime (src/cluster), or — to test the NBD layer alone — one node's file or
// memory devices without Raft.

import type { Logger } from 'pino';
import type { Runtime } from '../runtime.ts';
import type { NodeConfig } from './config.ts';

export type { Runtime };

export async function startRuntime(config: NodeConfig, logger: Logger): Promise<Runtime> {
  if (config.backend === 'replicated') {
    const { startReplicatedRuntime } = await import('../cluster/runtime.ts');
    return await startReplicatedRuntime(config, logger);
  }
  const { startStandaloneRuntime } = await import('./standalone-runtime.ts');
  return await startStandaloneRuntime(config, logger);
}
