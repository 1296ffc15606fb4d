// What xdevice-node runs behind its NBD server and admin API: a Runtime. The
// replicated one is here (a ClusterNode: Raft, the WAL, the peer transport,
// the block store); the file/memory one, which tests the NBD layer alone
// without Raft, is ./standalone.ts. ./serve.ts picks one by --backend and
// wires it without knowing which it has.

import type { Logger } from 'pino';
import type { NodeApi } from '../admin/api.ts';
import type { DeviceTable } from '../device/block-device.ts';
import { ClusterNode, tuningFromEnv } from '../cluster/node.ts';
import { loadPeerAuth } from '../cluster/peer-auth.ts';
import { AuditLog } from '../audit/sink.ts';
import { encodeAuditRecord } from '../device/commands.ts';
import { ConfigError, type NodeConfig } from './config.ts';
import { KeyRing } from '../crypt/keyring.ts';
import { keyFilePath } from '../crypt/key-file.ts';

/** The node's key ring from encryption-key-file or the systemd credential; a bad file refuses the start (exit 2). */
function loadKeyRing(config: NodeConfig, logger: Logger): KeyRing {
  const path = keyFilePath(config.encryptionKeyFile);
  if (config.encryptDevices && path === undefined) throw new ConfigError('encrypt-devices needs encryption-key-file (or the systemd credential xdevice-encryption-keys)');
  try {
    const ring = new KeyRing(path, logger.child({ component: 'keys' }));
    if (path !== undefined) logger.info({ path, kekIds: ring.kekIds() }, 'encryption keys loaded');
    return ring;
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
}

export interface Runtime {
  readonly devices: DeviceTable;
  readonly api: NodeApi;
  /** The audit trail (the replicated backend; the file/memory ones, which test the NBD layer alone, keep none). */
  readonly audit?: AuditLog;
  /** Where peers reach this node (the replicated backend only). */
  readonly peerAddress?: string;
  /** The addresses the node ended up listening on (status shows them). */
  setAddresses(addresses: { nbd: string; admin: string }): void;
  /** Called once if the node can no longer serve safely (a failed fdatasync). */
  onFatal(listener: (err: Error) => void): void;
  /** Called once if this node was removed from the cluster (it must then exit, NODE_EXIT.removed). */
  onRemoved(listener: (why: string) => void): void;
  /** Finish in-flight work, checkpoint, close files. */
  stop(): Promise<void>;
}

export async function startReplicatedRuntime(config: NodeConfig, logger: Logger): Promise<Runtime> {
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
    keys: loadKeyRing(config, logger),
    encryptDevices: config.encryptDevices,
    leaseReads: config.leaseReads,
    compression: config.compression,
  });
  const r = node.replica;
  const audit = new AuditLog(
    node.audit.cluster,
    node.audit.node,
    { leaderKnown: () => r.raw.basicStatus().lead !== '', propose: (entry) => r.propose((id) => encodeAuditRecord(id, entry)) },
    logger.child({ component: 'audit' }),
  );
  // Every membership change, whether an admin call or the leader's own promotion of a caught-up learner, once.
  r.on('membershipChangeProposedHere', (change: Record<string, unknown>) =>
    audit.record({ operation: 'member.change', principal: `node:${config.nodeId}`, source: 'local', args: change, outcome: 'ok', scope: 'cluster' }),
  );
  return {
    devices: node.devices,
    api: node.api,
    audit,
    get peerAddress() {
      return node.peerAddress;
    },
    setAddresses: (a) => node.setAddresses(a),
    onFatal: (listener) => node.onFatal(listener),
    onRemoved: (listener) => node.onRemoved(listener),
    stop: () => node.stop(),
  };
}
