// Opening one replica's state from its data directory, on any DiskIo: a
// snapshot install a crash interrupted is finished first, then the WAL, the
// checkpoint and the block store are opened and checked against each other,
// and a founder that has no identity yet writes the founding log. The
// production runtime (src/cluster/node.ts, which also holds the directory
// lock) and the simulator's restarts both come through here.

import { join } from 'node:path';
import type { Logger } from 'pino';
import { XDeviceError } from '../errors.ts';
import type { Entry, ConfState } from '../raft/types.ts';
import type { DiskIo } from '../disk/disk-io.ts';
import { nativeDisk } from '../disk/native-disk.ts';
import { Wal, type WalOptions } from '../wal/wal.ts';
import { BlockStore } from '../device/block-store.ts';
import { readCheckpoint, readNodeIdentity, writeNodeIdentity, type DeviceRecord } from '../device/checkpoint.ts';
import { finishInstall, installStagedFiles, pendingInstall } from '../device/snapshot-staging.ts';
import { foundCluster } from './found.ts';

export const WAL_DIR = 'wal';

export interface OpenOptions {
  dataDir: string;
  nodeId: string;
  /** Founding members id → peer address (this node included); empty: a one-node cluster. */
  peers: Record<string, string>;
  /** Start empty and wait to be added to an existing cluster. */
  join?: boolean;
  logger: Logger;
  wal?: WalOptions;
  disk?: DiskIo;
  /** Wall-clock ms (names quarantine directories; the simulator passes its clock). */
  now?: () => number;
  /** Refuses pieces that do not fit together (src/cluster/data-dir.ts checkStartState). */
  checkStart?: (s: {
    dataDir: string;
    identity: { clusterId: string; nodeId: string } | undefined;
    checkpointIndex: number | undefined;
    wal: { lastIndex: number; snapshotIndex: number; term: number; confState: ConfState };
  }) => void;
  /** Refuses missing device files the checkpoint names (src/cluster/data-dir.ts checkDeviceFiles). */
  checkFiles?: (dataDir: string, devices: readonly DeviceRecord[], laterEntries: readonly Entry[]) => void;
}

export interface OpenedState {
  wal: Wal;
  store: BlockStore;
  /** This open founded the cluster (its devices are to be created). */
  founded: boolean;
}

export class OpenError extends XDeviceError {}

export async function openReplicaState(o: OpenOptions): Promise<OpenedState> {
  const { dataDir, nodeId, logger } = o;
  const disk = o.disk ?? nativeDisk;
  const identity = await readNodeIdentity(dataDir, disk);
  if (identity && identity.nodeId !== nodeId) {
    throw new OpenError('XDEVICE_ERR_CONFIG', `${dataDir} belongs to node ${identity.nodeId}, not ${nodeId}`);
  }
  const interrupted = await pendingInstall(dataDir, disk);
  if (interrupted) {
    logger.warn({ index: interrupted.index }, 'finishing an interrupted snapshot install');
    await installStagedFiles(dataDir, disk);
  }
  const wal = await Wal.open(join(dataDir, WAL_DIR), { logger: logger.child({ component: 'wal' }), ...o.wal, disk });
  try {
    if (interrupted) {
      if (wal.snapshotMetadata().index < interrupted.index) await wal.applySnapshot(interrupted);
      await finishInstall(dataDir, disk);
    }
    const checkpoint = await readCheckpoint(dataDir, disk);
    o.checkStart?.({
      dataDir,
      identity,
      checkpointIndex: checkpoint?.appliedIndex,
      wal: { lastIndex: wal.lastIndex(), snapshotIndex: wal.snapshotMetadata().index, term: wal.hardState().term, confState: wal.snapshotMetadata().confState },
    });
    if (checkpoint && o.checkFiles) {
      const lo = Math.max(checkpoint.appliedIndex + 1, wal.firstIndex());
      o.checkFiles(dataDir, checkpoint.devices, lo <= wal.lastIndex() ? wal.entries(lo, wal.lastIndex() + 1, Number.MAX_SAFE_INTEGER) : []);
    }
    const store = await BlockStore.open(dataDir, logger.child({ component: 'store' }), { disk, ...(o.now ? { now: o.now } : {}) });
    const fresh = wal.lastIndex() === 0 && wal.snapshotMetadata().index === 0 && wal.hardState().term === 0;
    let founded = false;
    // node.id is written last: without it, a founder's bootstrap did not
    // finish (or never began) and is done (again) now.
    if (!identity && !o.join) {
      if (Object.keys(o.peers).length > 0 && !o.peers[nodeId]) throw new OpenError('XDEVICE_ERR_CONFIG', `--peers does not list this node (${nodeId})`);
      const clusterId = await foundCluster(wal, store, o.peers, nodeId);
      await writeNodeIdentity(dataDir, { clusterId, nodeId }, disk);
      founded = true;
      logger.info({ clusterId, voters: Object.keys(o.peers).length > 0 ? Object.keys(o.peers) : [nodeId] }, 'bootstrapped a new cluster');
    } else if (fresh && !identity) {
      await writeNodeIdentity(dataDir, { clusterId: '', nodeId }, disk);
    }
    return { wal, store, founded };
  } catch (err) {
    await wal.close().catch(() => undefined);
    throw err;
  }
}
