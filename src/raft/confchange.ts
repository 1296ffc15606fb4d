// Membership changes and their encoding in Entry.data (EntryType.ConfChange).
//
// One ConfChange holds a list of single changes (etcd's ConfChangeV2):
//   - no changes at all: leave the current joint configuration;
//   - one voter change with transition Auto: a simple change (Raft thesis 4.1),
//     applied directly;
//   - anything else: enter a joint configuration (thesis 4.3), left either
//     automatically once it commits (Auto, Implicit) or by an explicit empty
//     ConfChange (Explicit).
//
// Wire format (big endian), version 1:
//   u8 version | u8 transition | u16 count | count x (u8 type | u16 len | id utf8)
//   | u32 contextLen | context bytes

import { InvalidConfChangeError } from './errors.ts';
import type { NodeId } from './types.ts';

export enum ConfChangeType {
  AddNode = 0,
  AddLearnerNode = 1,
  RemoveNode = 2,
}

export enum ConfChangeTransition {
  /** Simple if possible, otherwise joint with automatic leave. */
  Auto = 0,
  /** Always joint, left automatically. */
  Implicit = 1,
  /** Always joint, left only by an explicit empty ConfChange. */
  Explicit = 2,
}

export interface ConfChangeSingle {
  type: ConfChangeType;
  nodeId: NodeId;
}

export interface ConfChange {
  transition: ConfChangeTransition;
  changes: ConfChangeSingle[];
  /** Opaque to Raft: e.g. the new member's address, for the runtime. */
  context?: Buffer;
}

const VERSION = 1;
const NODE_ID_BYTES_MAX = 255;
const CHANGES_MAX = 0xffff;

/** The empty ConfChange that leaves a joint configuration. */
export function leaveJointChange(): ConfChange {
  return { transition: ConfChangeTransition.Auto, changes: [] };
}

export function isLeaveJoint(cc: ConfChange): boolean {
  return cc.changes.length === 0;
}

/** Whether cc enters a joint configuration, and whether it is left automatically. */
export function enterJoint(cc: ConfChange): { joint: boolean; autoLeave: boolean } {
  if (cc.transition !== ConfChangeTransition.Auto || cc.changes.length > 1) {
    return { joint: true, autoLeave: cc.transition !== ConfChangeTransition.Explicit };
  }
  return { joint: false, autoLeave: false };
}

export function encodeConfChange(cc: ConfChange): Buffer {
  if (cc.changes.length > CHANGES_MAX) throw new InvalidConfChangeError(`too many changes: ${cc.changes.length}`);
  const ids = cc.changes.map((c) => Buffer.from(c.nodeId, 'utf8'));
  const context = cc.context ?? Buffer.alloc(0);
  let size = 4 + 4 + context.length;
  for (const id of ids) {
    if (id.length === 0 || id.length > NODE_ID_BYTES_MAX) throw new InvalidConfChangeError(`node id length ${id.length} outside [1, ${NODE_ID_BYTES_MAX}]`);
    size += 3 + id.length;
  }
  const b = Buffer.allocUnsafe(size);
  let o = 0;
  o = b.writeUInt8(VERSION, o);
  o = b.writeUInt8(cc.transition, o);
  o = b.writeUInt16BE(cc.changes.length, o);
  for (let i = 0; i < ids.length; i++) {
    o = b.writeUInt8(cc.changes[i]!.type, o);
    o = b.writeUInt16BE(ids[i]!.length, o);
    o += ids[i]!.copy(b, o);
  }
  o = b.writeUInt32BE(context.length, o);
  context.copy(b, o);
  return b;
}

export function decodeConfChange(b: Buffer): ConfChange {
  const fail = (why: string): never => {
    throw new InvalidConfChangeError(`cannot decode: ${why}`);
  };
  let o = 0;
  const need = (n: number) => {
    if (o + n > b.length) fail(`truncated at byte ${o}`);
  };
  need(4);
  const version = b.readUInt8(o++);
  if (version !== VERSION) fail(`unknown version ${version}`);
  const transition = b.readUInt8(o++);
  if (!(transition in ConfChangeTransition)) fail(`unknown transition ${transition}`);
  const count = b.readUInt16BE(o);
  o += 2;
  const changes: ConfChangeSingle[] = [];
  for (let i = 0; i < count; i++) {
    need(3);
    const type = b.readUInt8(o++);
    if (!(type in ConfChangeType)) fail(`unknown change type ${type}`);
    const len = b.readUInt16BE(o);
    o += 2;
    if (len === 0 || len > NODE_ID_BYTES_MAX) fail(`node id length ${len}`);
    need(len);
    changes.push({ type, nodeId: b.toString('utf8', o, o + len) });
    o += len;
  }
  need(4);
  const clen = b.readUInt32BE(o);
  o += 4;
  need(clen);
  const cc: ConfChange = { transition, changes };
  if (clen > 0) cc.context = Buffer.from(b.subarray(o, o + clen));
  o += clen;
  if (o !== b.length) fail(`${b.length - o} trailing bytes`);
  return cc;
}

/** Convenience constructors for the common single-step changes. */
export const confChanges = {
  addVoter: (nodeId: NodeId, context?: Buffer): ConfChange => ({ transition: ConfChangeTransition.Auto, changes: [{ type: ConfChangeType.AddNode, nodeId }], ...(context ? { context } : {}) }),
  addLearner: (nodeId: NodeId, context?: Buffer): ConfChange => ({ transition: ConfChangeTransition.Auto, changes: [{ type: ConfChangeType.AddLearnerNode, nodeId }], ...(context ? { context } : {}) }),
  remove: (nodeId: NodeId): ConfChange => ({ transition: ConfChangeTransition.Auto, changes: [{ type: ConfChangeType.RemoveNode, nodeId }] }),
};
