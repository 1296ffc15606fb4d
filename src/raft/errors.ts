// Typed errors of the consensus core. A caller (the cluster runtime, the NBD
// layer behind it) tests `code`, never the message.

import { XDeviceError } from '../errors.ts';
import type { NodeId } from './types.ts';

/** This node cannot accept the request because it is not the leader; `leader` is '' when unknown. */
export class NotLeaderError extends XDeviceError {
  readonly leader: NodeId;
  constructor(leader: NodeId) {
    super('XDEVICE_ERR_NOT_LEADER', leader === '' ? 'not the leader; no leader known' : `not the leader; the leader is ${leader}`);
    this.leader = leader;
  }
}

/** The proposal was refused and is not in the log (e.g. the leader was removed from the configuration). */
export class ProposalDroppedError extends XDeviceError {
  constructor(reason: string) {
    super('XDEVICE_ERR_PROPOSAL_DROPPED', `proposal dropped: ${reason}`);
  }
}

/** The leader holds raftUncommittedBytesMax of uncommitted entries already: back off and retry. */
export class TooManyUncommittedBytesError extends XDeviceError {
  constructor(uncommittedBytes: number, limitBytes: number) {
    super('XDEVICE_ERR_TOO_MANY_UNCOMMITTED_BYTES', `too many uncommitted bytes: ${uncommittedBytes} of ${limitBytes}`);
  }
}

/** Leadership is being handed to `transferee`; proposals are refused until it is done or abandoned. */
export class TransferInProgressError extends XDeviceError {
  readonly transferee: NodeId;
  constructor(transferee: NodeId) {
    super('XDEVICE_ERR_TRANSFER_IN_PROGRESS', `leadership transfer to ${transferee} in progress`);
    this.transferee = transferee;
  }
}

/** Another membership change is proposed but not yet applied: only one may be in flight. */
export class ConfChangeInProgressError extends XDeviceError {
  constructor(pendingIndex: number, applied: number) {
    super('XDEVICE_ERR_CONF_CHANGE_IN_PROGRESS', `membership change at index ${pendingIndex} not yet applied (applied ${applied})`);
  }
}

/** The membership change is not valid against the current configuration. */
export class InvalidConfChangeError extends XDeviceError {
  constructor(reason: string) {
    super('XDEVICE_ERR_INVALID_CONF_CHANGE', `invalid membership change: ${reason}`);
  }
}

/** Too many ReadIndex requests pending (limits.raftReadIndexPendingMax). */
export class ReadIndexDroppedError extends XDeviceError {
  constructor(reason: string) {
    super('XDEVICE_ERR_READ_INDEX_DROPPED', `read index dropped: ${reason}`);
  }
}

/** The Raft configuration is invalid (see Config / validateConfig). */
export class RaftConfigError extends XDeviceError {
  constructor(reason: string) {
    super('XDEVICE_ERR_RAFT_CONFIG', `invalid raft config: ${reason}`);
  }
}
