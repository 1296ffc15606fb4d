// The vocabulary of the consensus core, shared with the WAL (which stores
// entries and hard state) and the cluster runtime (which encodes messages on
// the wire). Modelled on etcd-io/raft's raftpb, in TypeScript.
//
// Node ids are strings chosen by the operator ("node1"); the empty string
// means "none".

export type NodeId = string;
export const None: NodeId = '';

export enum EntryType {
  /** Application data (an empty payload is the leader's no-op at election). */
  Normal = 0,
  /** A membership change: data is an encoded ConfChange (see confchange.ts). */
  ConfChange = 1,
}

export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  data: Buffer;
}

/** What must be durable before a node answers anyone (Raft figure 2, "persistent state"). */
export interface HardState {
  term: number;
  vote: NodeId;
  commit: number;
}

export interface ConfState {
  voters: NodeId[];
  learners: NodeId[];
  /** Voters of the outgoing configuration while in a joint configuration. */
  votersOutgoing: NodeId[];
  /** Voters that become learners when the joint configuration is left. */
  learnersNext: NodeId[];
  /** Leave the joint configuration automatically once it commits. */
  autoLeave: boolean;
}

export interface SnapshotMetadata {
  index: number;
  term: number;
  confState: ConfState;
}

export enum MessageType {
  // local messages (never sent on the wire)
  Hup = 0,
  Beat = 1,
  Prop = 2,
  // replication
  App = 3,
  AppResp = 4,
  // elections
  Vote = 5,
  VoteResp = 6,
  PreVote = 7,
  PreVoteResp = 8,
  // snapshots: the payload is streamed by the state machine, not carried here
  Snap = 9,
  SnapStatus = 10,
  Heartbeat = 11,
  HeartbeatResp = 12,
  Unreachable = 13,
  CheckQuorum = 14,
  TransferLeader = 15,
  TimeoutNow = 16,
  ReadIndex = 17,
  ReadIndexResp = 18,
  /** Local: storage reports entries/hard state durable up to `index` at `logTerm`. */
  StorageAppendResp = 19,
  /** Local: a follower forwards a client proposal (Prop) — same as Prop on the wire. */
  ForgetLeader = 20,
}

export interface Message {
  type: MessageType;
  from: NodeId;
  to: NodeId;
  term: number;
  /** Term of the entry at `index` (App: the previous entry; votes: the last entry). */
  logTerm: number;
  index: number;
  entries: Entry[];
  commit: number;
  reject: boolean;
  /** For rejected App: the follower's hint for fast backtracking (Raft thesis 5.3). */
  rejectHint: number;
  /** ReadIndex request context; TimeoutNow/campaign reason; opaque bytes. */
  context?: Buffer;
  snapshot?: SnapshotMetadata;
}

/** A fresh message with every numeric field zeroed. */
export function message(fields: Partial<Message> & Pick<Message, 'type'>): Message {
  return {
    from: None,
    to: None,
    term: 0,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
    ...fields,
  };
}

export function emptyConfState(): ConfState {
  return { voters: [], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };
}

export function isEmptyHardState(hs: HardState): boolean {
  return hs.term === 0 && hs.vote === None && hs.commit === 0;
}

/** Message types only the local node steps (ticks, storage acks, reports): never valid from the network. */
export const LOCAL_MESSAGE_TYPES: ReadonlySet<MessageType> = new Set([
  MessageType.Hup,
  MessageType.Beat,
  MessageType.Unreachable,
  MessageType.SnapStatus,
  MessageType.CheckQuorum,
  MessageType.StorageAppendResp,
  MessageType.ForgetLeader,
]);
