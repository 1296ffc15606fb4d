// What the audit trail records, and the one call every part makes to record
// it. The admin API (mutating calls, authentication failures), membership
// and key operations, and the NBD server (refused attaches) each hold an
// AuditSink; src/audit/ writes the trail (cluster-wide events through Raft,
// node-local ones to this node's file), hash-chained, as JSON lines.

export type AuditOutcome = 'ok' | 'refused' | 'failed';

/** Where an event belongs: `cluster` events go through Raft, so every node holds them; `node` events stay on the node that saw them. */
export type AuditScope = 'cluster' | 'node';

export interface AuditEvent {
  /** Dotted name: `device.create`, `member.add`, `key.rotate`, `auth.failure`, `nbd.attach`… */
  operation: string;
  /** Who: a named admin client, a certificate subject, `anonymous`. */
  principal: string;
  /** The remote address the request came from (`ip:port`), or `local`. */
  source: string;
  /** The call's arguments; any secret value is masked by maskSecrets() before it is stored. */
  args: Record<string, unknown>;
  outcome: AuditOutcome;
  /** Why it was refused or failed. */
  reason?: string;
  scope: AuditScope;
}

export interface AuditSink {
  /** Records an event; never throws (a failure to record is logged by the sink). */
  record(event: AuditEvent): void;
}

/** For parts built without an audit trail (unit tests, the NBD-only backends). */
export const NO_AUDIT: AuditSink = { record() {} };

const SECRET_KEY = /token|secret|password|passphrase|key|psk|credential/i;

/** A copy of `args` with every value under a secret-sounding key replaced by `***`. */
export function maskSecrets(args: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(args)) {
    if (SECRET_KEY.test(k)) out[k] = '***';
    else if (v !== null && typeof v === 'object' && !Array.isArray(v) && !Buffer.isBuffer(v)) out[k] = maskSecrets(v as Record<string, unknown>);
    else out[k] = v;
  }
  return out;
}
