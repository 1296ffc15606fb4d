// Exactly-once application of client requests (Raft thesis 6.3).
//
// A client (e.g. one NBD connection's forwarding session) numbers its
// requests 1, 2, 3, ... and may retry any of them, on any leader, any number
// of times. The runtime prefixes each proposal with a header
// {clientId, seq, firstUnacked}: firstUnacked is the lowest seq the client
// still waits an answer for, so everything below it is settled and can be
// forgotten. The applier keeps, per client, the seqs applied at or above that
// floor; a seq below the floor or already applied is a duplicate.
//
// This survives reordering that a "last seq per client" rule does not: seq 5
// accepted by a leader that then lost it, and seq 6 committed by the next
// leader, then 5 retried — 5 is applied (once), not dropped.
//
// This file holds the header framing; the table that decides what applies is
// state-machine work and lives in src/device/request-dedup.ts (RequestDedup).

import { assert } from '../errors.ts';

const VERSION = 1;
/** version u8 | idLen u8 | id | seq u48 | firstUnacked u48 */
const FIXED_BYTES = 1 + 1 + 6 + 6;

export interface RequestHeader {
  clientId: string;
  seq: number;
  firstUnacked: number;
}

export function encodeRequest(h: RequestHeader, payload: Buffer): Buffer {
  const id = Buffer.from(h.clientId, 'utf8');
  assert(id.length > 0 && id.length <= 255, 'clientId must be 1..255 bytes');
  assert(Number.isSafeInteger(h.seq) && h.seq >= 1 && h.seq < 2 ** 48, 'seq out of range');
  assert(Number.isSafeInteger(h.firstUnacked) && h.firstUnacked >= 1 && h.firstUnacked <= h.seq, 'firstUnacked must be in [1, seq]');
  const b = Buffer.allocUnsafe(FIXED_BYTES + id.length + payload.length);
  let o = b.writeUInt8(VERSION, 0);
  o = b.writeUInt8(id.length, o);
  o += id.copy(b, o);
  o = b.writeUIntBE(h.seq, o, 6);
  o = b.writeUIntBE(h.firstUnacked, o, 6);
  payload.copy(b, o);
  return b;
}

/** Decodes a header; the payload is a view into data (no copy). Throws on malformed input. */
export function decodeRequest(data: Buffer): { header: RequestHeader; payload: Buffer } {
  if (data.length < FIXED_BYTES || data[0] !== VERSION) throw new Error('not a client request');
  const idLen = data[1]!;
  if (idLen === 0 || data.length < FIXED_BYTES + idLen) throw new Error('truncated client request');
  const clientId = data.toString('utf8', 2, 2 + idLen);
  let o = 2 + idLen;
  const seq = data.readUIntBE(o, 6);
  o += 6;
  const firstUnacked = data.readUIntBE(o, 6);
  o += 6;
  if (seq < 1 || firstUnacked < 1 || firstUnacked > seq) throw new Error('bad client request sequence numbers');
  return { header: { clientId, seq, firstUnacked }, payload: data.subarray(o) };
}

