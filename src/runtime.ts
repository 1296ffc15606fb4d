// What xdevice-node runs behind its NBD server and admin API, whichever
// backend provides it (src/cluster/runtime.ts: replicated; src/cli/
// standalone-runtime.ts: one node's file or memory devices). Its own file so
// both backends and the entry point can name it without importing each other.

import type { NodeApi } from './admin/api.ts';
import type { DeviceTable } from './device/block-device.ts';

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
