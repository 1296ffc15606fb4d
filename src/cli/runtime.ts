// What xdevice-node runs behind its NBD server and admin API: the replicated
// runtime (src/cluster), or — to test the NBD layer alone — one node's file or
// memory devices without Raft.

import type { Logger } from 'pino';
import type { NodeApi } from '../admin/api.ts';
import type { DeviceTable } from '../device/block-device.ts';
import type { NodeConfig } from './config.ts';

export interface Runtime {
  readonly devices: DeviceTable;
  readonly api: NodeApi;
  /** The addresses the node ended up listening on (status shows them). */
  setAddresses(addresses: { nbd: string; admin: string }): void;
  /** Called once if the node can no longer serve safely (a failed fdatasync). */
  onFatal(listener: (err: Error) => void): void;
  /** Called once if this node was removed from the cluster (it must then exit, NODE_EXIT.removed). */
  onRemoved(listener: (why: string) => void): void;
  /** Finish in-flight work, checkpoint, close files. */
  stop(): Promise<void>;
}

export async function startRuntime(config: NodeConfig, logger: Logger): Promise<Runtime> {
  if (config.backend === 'replicated') {
    const { startReplicatedRuntime } = await import('../cluster/runtime.ts');
    return await startReplicatedRuntime(config, logger);
  }
  const { startStandaloneRuntime } = await import('./standalone-runtime.ts');
  return await startStandaloneRuntime(config, logger);
}
