// The public surface of the consensus core, for the node runtime.

export { bootstrap, type BootstrapState } from './bootstrap.ts';
export { validateConfig, type Config, type ResolvedConfig, type TestingBugs } from './config.ts';
export {
  confChanges,
  ConfChangeTransition,
  ConfChangeType,
  decodeConfChange,
  encodeConfChange,
  leaveJointChange,
  type ConfChange,
  type ConfChangeSingle,
} from './confchange.ts';
export {
  ConfChangeInProgressError,
  InvalidConfChangeError,
  NotLeaderError,
  ProposalDroppedError,
  RaftConfigError,
  ReadIndexDroppedError,
  TooManyUncommittedBytesError,
  TransferInProgressError,
} from './errors.ts';
export { MemoryStorage } from './memory-storage.ts';
export { ProgressState } from './progress.ts';
export { CAMPAIGN_TRANSFER_CONTEXT, Role, type ElectionRecord, type VoteTally } from './raft.ts';
export { RawNode, type PeerStatus, type Ready, type SoftState, type Status } from './rawnode.ts';
export type { ReadState } from './read-only.ts';
export { StorageError, type Storage } from './storage.ts';
export * from './types.ts';
