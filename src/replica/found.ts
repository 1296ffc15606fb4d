// Founding a cluster: every founding member writes the same initial log (the
// voters as membership entries at indexes 1..n, counted as applied) and the
// same first checkpoint, so founders agree without talking.

import { createHash } from 'node:crypto';
import { bootstrap } from '../raft/bootstrap.ts';
import type { BlockStore } from '../device/block-store.ts';
import type { LogStorage } from './env.ts';

/** Writes the founding log and checkpoint (idempotent: a founder that crashed half-way does it again). Returns the cluster id. */
export async function foundCluster(log: LogStorage, store: BlockStore, peers: Record<string, string>, nodeId: string): Promise<string> {
  const voters = Object.keys(peers).length > 0 ? Object.keys(peers) : [nodeId];
  const bs = bootstrap(voters);
  const fresh = log.lastIndex() === 0 && log.snapshotMetadata().index === 0 && log.hardState().term === 0;
  if (fresh) await log.save({ hardState: bs.hardState, entries: bs.entries });
  if (log.snapshotMetadata().index < bs.applied) await log.compact({ index: bs.applied, term: 1, confState: bs.confState });
  const clusterId = createHash('sha256').update([...bs.confState.voters].join('\0')).digest('hex').slice(0, 16);
  store.clusterId = clusterId;
  for (const [id, address] of Object.entries(peers)) store.setMember(id, address);
  store.appliedIndex = bs.applied;
  store.appliedTerm = 1;
  await store.checkpoint(store.captureState());
  return clusterId;
}
