// What a peer may hand to Raft, decided before Raft sees it. Pure (no I/O) so
// the simulator applies exactly the rules the node does.
//
//   - A message whose term or index is above raftTermMax / raftIndexMax, or
//     whose type only a node steps itself (Hup, Beat, storage acks, ...), is
//     a protocol error: the link that carried it is closed. Numbers that big
//     only come from a bug or an attacker, and would run JavaScript numbers
//     (and the WAL) past 2^53.
//   - A message from an id outside the current configuration (voters,
//     learners, outgoing voters, next learners) is dropped and counted; so is
//     a stranger's Prop or ConfChange. A node that has no configuration yet
//     (joining) accepts only what a leader sends to bring it up to date.

import { limits } from '../limits.ts';
import { MessageType, type Message } from '../raft/types.ts';

/** Raft message types a node only steps itself: never valid from a peer. */
export const LOCAL_MESSAGE_TYPES: ReadonlySet<MessageType> = new Set([
  MessageType.Hup,
  MessageType.Beat,
  MessageType.Unreachable,
  MessageType.SnapStatus,
  MessageType.CheckQuorum,
  MessageType.StorageAppendResp,
  MessageType.ForgetLeader,
]);

/** What a node without a configuration (joining) accepts from any authenticated peer. */
const JOINING_ACCEPTS: ReadonlySet<MessageType> = new Set([MessageType.App, MessageType.Heartbeat, MessageType.Snap]);

/** Why a message from a peer is a protocol error, or undefined if it is not. */
export function peerMessageProblem(m: Message): string | undefined {
  if (LOCAL_MESSAGE_TYPES.has(m.type)) return `raft message type ${m.type} is local to a node, never sent between nodes`;
  const termMax = limits.raftTermMax;
  const indexMax = limits.raftIndexMax;
  if (!(m.term <= termMax)) return `term ${m.term} above raftTermMax`;
  if (!(m.logTerm <= termMax)) return `logTerm ${m.logTerm} above raftTermMax`;
  if (!(m.index <= indexMax)) return `index ${m.index} above raftIndexMax`;
  if (!(m.commit <= indexMax)) return `commit ${m.commit} above raftIndexMax`;
  if (!(m.rejectHint <= indexMax)) return `rejectHint ${m.rejectHint} above raftIndexMax`;
  for (const e of m.entries) {
    if (!(e.term <= termMax)) return `entry term ${e.term} above raftTermMax`;
    if (!(e.index <= indexMax)) return `entry index ${e.index} above raftIndexMax`;
  }
  if (m.snapshot && !(m.snapshot.index <= indexMax && m.snapshot.term <= termMax)) return 'snapshot index or term above raftIndexMax/raftTermMax';
  return undefined;
}

/**
 * True if Raft may step a message from this peer: `isMember` tells the ids of
 * the current configuration; `configured` is false while the node is joining
 * (it knows no configuration yet).
 */
export function admitPeerMessage(m: Message, isMember: (id: string) => boolean, configured: boolean): boolean {
  if (isMember(m.from)) return true;
  return !configured && JOINING_ACCEPTS.has(m.type);
}
