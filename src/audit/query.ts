// What GET /audit answers (src/admin/server.ts routes it here): this node's
// trails read back, or checked.
//
//   GET /audit?since=ISO&scope=cluster|node|all&limit=N   the newest N records at or after since, oldest first
//   GET /audit?verify=true                                 verifyTrail() of both trails (src/audit/verify.ts)

import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import { parseSince } from '../parse.ts';
import type { TrailRecord } from './record.ts';
import type { TrailHead, AuditTrail } from './trail.ts';
import { verifyTrail, type TrailReport } from './verify.ts';

export interface AuditReader {
  readonly cluster: AuditTrail;
  readonly node: AuditTrail;
}

export interface AuditListing {
  records: TrailRecord[];
  heads: { cluster: TrailHead; node: TrailHead };
}

export interface AuditVerifyReport {
  ok: boolean;
  trails: TrailReport[];
}

const LIST_DEFAULT = 1000;

function invalid(message: string): never {
  throw new XDeviceError('XDEVICE_ERR_INVALID', message);
}

export async function auditResponse(log: AuditReader | undefined, params: URLSearchParams, nowMs = Date.now()): Promise<AuditListing | AuditVerifyReport> {
  if (!log) throw new XDeviceError('XDEVICE_ERR_UNSUPPORTED', 'this node keeps no audit trail (it needs --backend replicated)');
  const verify = params.get('verify');
  if (verify !== null && verify !== 'true' && verify !== 'false') invalid(`verify must be true or false, not "${verify}"`);
  if (verify === 'true') {
    const trails = [await verifyTrail(log.cluster.dir, 'cluster'), await verifyTrail(log.node.dir, 'node')];
    return { ok: trails.every((t) => t.ok), trails };
  }
  const scope = params.get('scope') ?? 'all';
  if (scope !== 'cluster' && scope !== 'node' && scope !== 'all') invalid(`scope must be cluster, node or all, not "${scope}"`);
  const limitText = params.get('limit') ?? String(LIST_DEFAULT);
  const limit = /^[0-9]{1,9}$/.test(limitText) ? Number(limitText) : NaN;
  if (!(limit >= 1 && limit <= limits.auditListRecordsMax)) invalid(`limit must be 1 to ${limits.auditListRecordsMax}, not "${limitText}"`);
  const sinceText = params.get('since');
  let sinceMs: number | undefined;
  if (sinceText !== null) {
    try {
      sinceMs = parseSince(sinceText, nowMs);
    } catch (err) {
      invalid(`since: ${(err as Error).message}`);
    }
  }
  const filter = { limit, ...(sinceMs !== undefined ? { sinceMs } : {}) };
  const lists = await Promise.all([scope !== 'node' ? log.cluster.records(filter) : [], scope !== 'cluster' ? log.node.records(filter) : []]);
  // One trail in chain order; both merged by time, the newest `limit`.
  const records = scope === 'all' ? lists.flat().sort((a, b) => Date.parse(a.time) - Date.parse(b.time)) : lists.flat();
  return { records: records.slice(Math.max(0, records.length - limit)), heads: { cluster: log.cluster.head, node: log.node.head } };
}
