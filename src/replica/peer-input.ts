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
//   - One exception keeps a member that is behind on configuration changes
//     live: if, not leading, it has heard no leader for peerLeaderlessGraceMs, it accepts a
//     leader's messages (App, Heartbeat, Snap) at its own term or later from an
//     authenticated peer it does not know yet — the leader may have been added
//     by a change it has not applied. A healthy cluster never waits that long,
//     so a stranger's leader messages are dropped there. Once followed, that
//     leader is heard until a newer term replaces it.
//   - Neither exception lets a peer outside the configuration raise this
//     node's term by more than peerTermJumpMax: a stranger's term near
//     raftTermMax would spread through the cluster and leave no term to
//     elect a leader in.

import { limits } from '../limits.ts';
import { LOCAL_MESSAGE_TYPES, MessageType, type Message } from '../raft/types.ts';

/** Messages only a leader sends to bring a follower up to date. */
const LEADER_MESSAGES: ReadonlySet<MessageType> = new Set([MessageType.App, MessageType.Heartbeat, MessageType.Snap]);

/**
 * What a node without a configuration (joining) accepts from any
 * authenticated peer: a leader's catch-up, and vote requests (it may already
 * be a voter in the others' configuration; a vote it gives a stranger counts
 * for nothing).
 */
const JOINING_ACCEPTS: ReadonlySet<MessageType> = new Set([...LEADER_MESSAGES, MessageType.Vote, MessageType.PreVote]);

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

/** What the receiving node knows of its own state, for the leaderless exception. */
export interface ReceiverState {
  term: number;
  /** The leader this node follows ('' if none). */
  lead: string;
  /** Not the leader, and no leader's message admitted for at least peerLeaderlessGraceMs. */
  leaderlessLong: boolean;
}

/** Messages only a leader sends (a node that steps one has heard from a leader). */
export function isLeaderMessage(m: Message): boolean {
  return LEADER_MESSAGES.has(m.type);
}

/**
 * True if Raft may step a message from this peer: `isMember` tells the ids of
 * the current configuration; `configured` is false while the node is joining
 * (it knows no configuration yet).
 */
export function admitPeerMessage(m: Message, isMember: (id: string) => boolean, configured: boolean, receiver?: ReceiverState): boolean {
  if (isMember(m.from)) return true;
  if (receiver !== undefined && m.term > receiver.term + limits.peerTermJumpMax) return false;
  // The leader this node already follows, at its term or later: it may be
  // outside the configuration (added by a change not applied here yet, or
  // leading on after removing itself).
  if (receiver !== undefined && m.from !== '' && m.from === receiver.lead && m.term >= receiver.term) return true;
  if (!configured) return JOINING_ACCEPTS.has(m.type);
  if (!LEADER_MESSAGES.has(m.type) || receiver === undefined) return false;
  // A leader's message from an older term changes nothing in Raft but its
  // answer, which tells a stale leader (say, one that removed itself) to step down.
  if (m.term > 0 && m.term < receiver.term) return true;
  if (m.term < receiver.term) return false;
  // After a long silence, any leader.
  return receiver.leaderlessLong;
}
