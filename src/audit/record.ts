// One line of an audit trail and its hash chain.
//
//   {"seq":N,"time":ISO,"scope":"cluster"|"node","index":I?,"principal":…,"source":…,
//    "operation":…,"args":{…},"outcome":…,"reason":…?,"prevHash":HEX,"hash":HEX}
//
// `hash` is SHA-256 over the canonical JSON of every other field, in this
// order, with `prevHash` (the previous record's hash; 64 zeroes for the
// first record of a trail): changing, removing or moving any record breaks
// the chain from there on. `index` is the Raft log index of a cluster
// record (the same on every replica); node records have none.

import { createHash } from 'node:crypto';
import type { AuditOutcome, AuditScope } from './event.ts';
import { AUDIT_OUTCOMES, type AuditEntry } from './entry.ts';

export const GENESIS_HASH = '0'.repeat(64);

export interface TrailRecord {
  seq: number;
  time: string;
  scope: AuditScope;
  index?: number;
  principal: string;
  source: string;
  operation: string;
  args: Record<string, unknown>;
  outcome: AuditOutcome;
  reason?: string;
  prevHash: string;
  hash: string;
}

type Unhashed = Omit<TrailRecord, 'hash'>;

const FIELDS = ['seq', 'time', 'scope', 'index', 'principal', 'source', 'operation', 'args', 'outcome', 'reason', 'prevHash', 'hash'];
const HEX64 = /^[0-9a-f]{64}$/;

/** The hashed bytes: the fields in their fixed order (absent optional ones left out). */
function canonical(r: Unhashed): string {
  return JSON.stringify({
    seq: r.seq,
    time: r.time,
    scope: r.scope,
    ...(r.index !== undefined ? { index: r.index } : {}),
    principal: r.principal,
    source: r.source,
    operation: r.operation,
    args: r.args,
    outcome: r.outcome,
    ...(r.reason !== undefined ? { reason: r.reason } : {}),
    prevHash: r.prevHash,
  });
}

export function recordHash(r: Unhashed): string {
  return createHash('sha256').update(canonical(r)).digest('hex');
}

/** The record following `prev` (seq, prevHash) for an entry that passed entryProblem(). */
export function chainRecord(entry: AuditEntry, scope: AuditScope, prev: { seq: number; hash: string }, index?: number): TrailRecord {
  const body: Unhashed = {
    seq: prev.seq + 1,
    time: new Date(entry.timeMs).toISOString(),
    scope,
    ...(index !== undefined ? { index } : {}),
    principal: entry.principal,
    source: entry.source,
    operation: entry.operation,
    args: JSON.parse(entry.args) as Record<string, unknown>,
    outcome: entry.outcome,
    ...(entry.reason !== '' ? { reason: entry.reason } : {}),
    prevHash: prev.hash,
  };
  return { ...body, hash: recordHash(body) };
}

/** The line as stored (canonical order, hash last), with its newline. */
export function recordLine(r: TrailRecord): string {
  const c = canonical(r);
  return `${c.slice(0, -1)},"hash":${JSON.stringify(r.hash)}}\n`;
}

/** A stored line read back, or what is wrong with its form (the chain is checked by the caller). */
export function parseRecordLine(line: string): { record: TrailRecord } | { problem: string } {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return { problem: 'not JSON' };
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return { problem: 'not a JSON object' };
  const o = v as Record<string, unknown>;
  const unknown = Object.keys(o).find((k) => !FIELDS.includes(k));
  if (unknown !== undefined) return { problem: `unexpected field "${unknown}"` };
  const bad = (field: string) => ({ problem: `field "${field}" missing or malformed` });
  if (!Number.isSafeInteger(o.seq) || (o.seq as number) < 1) return bad('seq');
  if (typeof o.time !== 'string' || Number.isNaN(Date.parse(o.time))) return bad('time');
  if (o.scope !== 'cluster' && o.scope !== 'node') return bad('scope');
  if (o.index !== undefined && (!Number.isSafeInteger(o.index) || (o.index as number) < 1)) return bad('index');
  for (const f of ['principal', 'source', 'operation'] as const) if (typeof o[f] !== 'string') return bad(f);
  if (o.args === null || typeof o.args !== 'object' || Array.isArray(o.args)) return bad('args');
  if (!AUDIT_OUTCOMES.includes(o.outcome as AuditOutcome)) return bad('outcome');
  if (o.reason !== undefined && typeof o.reason !== 'string') return bad('reason');
  if (typeof o.prevHash !== 'string' || !HEX64.test(o.prevHash)) return bad('prevHash');
  if (typeof o.hash !== 'string' || !HEX64.test(o.hash)) return bad('hash');
  return { record: o as unknown as TrailRecord };
}

/**
 * Where a cluster trail continues after a snapshot (issue 15): a node caught
 * up by a snapshot never applied the AUDIT_RECORD entries the snapshot
 * covers, so its trail records the cluster trail's head as of the snapshot
 * (carried in the snapshot's state) and chains on from it. Verify accepts
 * the gap an anchor announces and reports where each anchor stands; the
 * records it skips are on the nodes that applied them (compare the hash).
 */
export interface TrailAnchor {
  /** The last cluster record the snapshot covers (0: none yet), its hash and log index. */
  anchor: { seq: number; hash: string; index: number };
  time: string;
}

export function anchorLine(a: TrailAnchor): string {
  return `${JSON.stringify({ anchor: { seq: a.anchor.seq, hash: a.anchor.hash, index: a.anchor.index }, time: a.time })}\n`;
}

/** An anchor line, or undefined if the line is not one (a record, or damage). */
export function parseAnchorLine(line: string): TrailAnchor | undefined {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return undefined;
  const o = v as Record<string, unknown>;
  if (Object.keys(o).some((k) => k !== 'anchor' && k !== 'time') || typeof o.time !== 'string' || Number.isNaN(Date.parse(o.time))) return undefined;
  const a = o.anchor as Record<string, unknown> | null;
  if (a === null || typeof a !== 'object' || Object.keys(a).some((k) => !['seq', 'hash', 'index'].includes(k))) return undefined;
  if (!Number.isSafeInteger(a.seq) || (a.seq as number) < 0 || !Number.isSafeInteger(a.index) || (a.index as number) < 0) return undefined;
  if (typeof a.hash !== 'string' || !HEX64.test(a.hash)) return undefined;
  return { anchor: { seq: a.seq as number, hash: a.hash, index: a.index as number }, time: o.time };
}
