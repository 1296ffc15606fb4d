// What the parts of a replica (housekeeping, membership, inbound, leadership,
// verify, view, publish) see of the Replica that holds them: an interface, so
// that they depend on it and not on replica.ts (which imports them).

import type { Logger } from 'pino';
import type { RawNode } from '../raft/rawnode.ts';
import type { ConfState } from '../raft/types.ts';
import type { BlockStore } from '../device/block-store.ts';
import type { RequestId } from '../device/commands.ts';
import type { WrappedKey } from '../crypt/wrap.ts';
import type { Clock, Host, LogStorage, PeerTransport } from './env.ts';
import type { PlantedBugs } from './planted.ts';
import type { ReadGate } from './read-gate.ts';
import type { RequestSession } from './requests.ts';
import type { SnapshotReceiver } from './snapshot-receiver.ts';
import type { SnapshotSender } from './snapshot-sender.ts';

export interface ReplicaCore {
  readonly nodeId: string;
  readonly raw: RawNode;
  readonly clock: Clock;
  readonly log: LogStorage;
  readonly store: BlockStore;
  readonly transport: PeerTransport;
  readonly host: Host;
  readonly logger: Logger;
  readonly session: RequestSession;
  readonly reads: ReadGate;
  readonly sender: SnapshotSender;
  readonly receiver: SnapshotReceiver;
  readonly housekeeping: {
    noteConf(index: number, confState: ConfState): void;
    /** Checkpoints written and WAL compactions done since start (statistics). */
    readonly checkpoints: number;
    readonly compactions: number;
  };
  /** The learner whose promotion to voter is proposed and not yet applied: compaction keeps its log. */
  readonly membership: { readonly promotingLearner: string | undefined };
  /** A new encrypted device's data key, wrapped with this node's newest KEK (src/replica/keys.ts). */
  readonly keyOps: { newDeviceKey(): WrappedKey };
  /** Bytes this node holds for a device's snapshots (src/replica/snapshot-ops.ts). */
  readonly snapshotOps: { heldBytes(deviceId: number): Promise<number> };
  /** The exports (an encrypted one says why this node cannot serve it). */
  readonly devices: { get(name: string): { unavailable(): string | undefined } | undefined };
  readonly bugs: PlantedBugs;
  readonly startedAt: number;
  readonly walLastIndexAtStart: number;
  peerMessagesDropped: number;
  processedIndex: number;
  raftAppliedIndex: number;
  readFloor: number;
  installing: boolean;
  fatalError: Error | undefined;
  removed: boolean;
  stopping: boolean;
  stopped: boolean;
  schedule(): void;
  processReady(): void;
  checkServing(): void;
  propose(encode: (id: RequestId) => Buffer): Promise<void>;
  waitFor(cond: () => boolean, timeoutMs: number, what: string): Promise<void>;
  sleep(ms: number): Promise<void>;
  notice(level: 'info' | 'warn', fields: Record<string, unknown>, msg: string): void;
  leaveRemoved(why: string): void;
  fail(err: Error): void;
  emit(event: string, ...args: unknown[]): boolean;
}
