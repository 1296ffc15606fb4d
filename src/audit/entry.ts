// One audit event as it travels and is stored: an AuditEvent with its time
// fixed, its arguments masked and serialised, and every field within the
// bounds of src/limits.ts. The sink builds entries with boundEntry() (which
// cuts instead of refusing: recording must never fail), and the AUDIT_RECORD
// command decoder checks a peer's bytes with entryProblem(), so an entry
// that decodes can always be written to a trail and encoded again.

import { limits } from '../limits.ts';
import { maskSecrets, type AuditEvent, type AuditOutcome } from './event.ts';

export interface AuditEntry {
  /** Milliseconds since the epoch, fixed by whoever recorded the event (the proposer for cluster events). */
  timeMs: number;
  principal: string;
  source: string;
  operation: string;
  /** The masked arguments as JSON text of an object (one serialisation, so every replica stores the same bytes). */
  args: string;
  outcome: AuditOutcome;
  /** '' when there is none. */
  reason: string;
}

export const AUDIT_OUTCOMES: readonly AuditOutcome[] = ['ok', 'refused', 'failed'];

/** The latest time a Date can show (new Date(t).toISOString() throws beyond it). */
export const AUDIT_TIME_MS_MAX = 8.64e15;
/** Principal, source and operation travel as 255-byte strings. */
const NAME_BYTES_MAX = 255;
const OPERATION = /^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$/;

/** Why `e` cannot be recorded as it is, or undefined. */
export function entryProblem(e: AuditEntry): string | undefined {
  if (!Number.isSafeInteger(e.timeMs) || e.timeMs < 0 || e.timeMs > AUDIT_TIME_MS_MAX) return `time ${e.timeMs} out of range`;
  for (const [what, v] of [['principal', e.principal], ['source', e.source], ['operation', e.operation]] as const) {
    const n = Buffer.byteLength(v);
    if (n === 0 || n > NAME_BYTES_MAX) return `${what} must be 1 to ${NAME_BYTES_MAX} bytes, is ${n}`;
  }
  if (!OPERATION.test(e.operation)) return `operation "${e.operation}" is not a dotted lower-case name`;
  if (!AUDIT_OUTCOMES.includes(e.outcome)) return `unknown outcome "${String(e.outcome)}"`;
  if (Buffer.byteLength(e.reason) > limits.auditReasonBytesMax) return `reason longer than ${limits.auditReasonBytesMax} bytes`;
  if (Buffer.byteLength(e.args) > limits.auditArgsBytesMax) return `arguments longer than ${limits.auditArgsBytesMax} bytes`;
  let args: unknown;
  try {
    args = JSON.parse(e.args);
  } catch {
    return 'arguments are not JSON';
  }
  if (args === null || typeof args !== 'object' || Array.isArray(args)) return 'arguments are not a JSON object';
  return undefined;
}

/** The longest prefix of s within `bytes` UTF-8 bytes (never half a character). */
export function cutUtf8(s: string, bytes: number): string {
  if (Buffer.byteLength(s) <= bytes) return s;
  let out = '';
  let n = 0;
  for (const ch of s) {
    const c = Buffer.byteLength(ch);
    if (n + c > bytes) break;
    out += ch;
    n += c;
  }
  return out;
}

function name(s: string, fallback: string): string {
  const cut = cutUtf8(s, NAME_BYTES_MAX);
  return cut === '' ? fallback : cut;
}

function argsJson(args: Record<string, unknown>): string {
  let text: string;
  try {
    text = JSON.stringify(maskSecrets(args), (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : Buffer.isBuffer(v) ? `<${v.length} bytes>` : v)) ?? '{}';
  } catch (err) {
    return JSON.stringify({ unrecordable: (err as Error).message.slice(0, 200) });
  }
  const n = Buffer.byteLength(text);
  return n <= limits.auditArgsBytesMax ? text : JSON.stringify({ truncated: true, bytes: n });
}

/**
 * The entry for `event` at `timeMs`, always recordable: secrets masked,
 * names cut to their bounds (an empty one becomes `unknown`), arguments too
 * large replaced by their size, an operation that is not a dotted name
 * recorded as `invalid.operation` with the given one in the reason.
 */
export function boundEntry(event: AuditEvent, timeMs: number): AuditEntry {
  let operation = name(event.operation, 'unknown');
  let reason = event.reason ?? '';
  if (!OPERATION.test(operation)) {
    reason = `operation given as ${JSON.stringify(operation)}${reason ? `; ${reason}` : ''}`;
    operation = 'invalid.operation';
  }
  return {
    timeMs: Math.min(Math.max(0, Math.floor(timeMs)), AUDIT_TIME_MS_MAX),
    principal: name(event.principal, 'unknown'),
    source: name(event.source, 'unknown'),
    operation,
    args: argsJson(event.args),
    outcome: AUDIT_OUTCOMES.includes(event.outcome) ? event.outcome : 'failed',
    reason: cutUtf8(reason, limits.auditReasonBytesMax),
  };
}
