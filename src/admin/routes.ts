// Who may call what on the admin API: three roles, each allowed what the one
// below it is, and one row per route naming the role it needs and, for a call
// that changes something, the name the audit trail records it under. The
// server answers 404 for a route without a row, so an endpoint exists when
// its row does: adding one is adding a row here and its case in server.ts.

import type { AuditScope } from '../audit/event.ts';
import type { AnonymousRead } from '../parse.ts';

export const ROLES = ['viewer', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/** True if a principal with role `have` may call a route that needs `need`. */
export function roleAllows(have: Role, need: Role): boolean {
  return ROLES.indexOf(have) >= ROLES.indexOf(need);
}

export interface RouteRule {
  /** The least role that may call it; `public`: no credentials needed (the status page holds no data). */
  role: Role | 'public';
  /** Calls that change something: recorded in the audit trail under this operation name and scope. */
  audit?: { operation: string; scope: AuditScope };
  /** The admin-anonymous-read name that opens this route to callers without credentials. */
  anonymous?: AnonymousRead;
}

/**
 * Keys are `METHOD /first[/:arg][/third]`, as the server forms them from a
 * path (`DELETE /devices/:arg`, `POST /members/:arg/promote`). Reads of the
 * node's state are `viewer`; device changes and leadership are `operator`;
 * membership (and, as they come, keys, roles and the audit trail) `admin`.
 */
export const ROUTES: Readonly<Record<string, RouteRule>> = {
  'GET /': { role: 'public' },
  'GET /health': { role: 'viewer', anonymous: 'health' },
  'GET /metrics': { role: 'viewer', anonymous: 'metrics' },
  'GET /status': { role: 'viewer' },
  'GET /events': { role: 'viewer' },
  'GET /members': { role: 'viewer' },
  'GET /devices': { role: 'viewer' },
  'GET /verify': { role: 'viewer' },
  'GET /verify/:arg': { role: 'viewer' },
  'GET /audit': { role: 'admin' },
  'POST /devices': { role: 'operator', audit: { operation: 'device.create', scope: 'cluster' } },
  'PATCH /devices/:arg': { role: 'operator', audit: { operation: 'device.update', scope: 'cluster' } },
  'DELETE /devices/:arg': { role: 'operator', audit: { operation: 'device.delete', scope: 'cluster' } },
  'POST /devices/:arg/verify': { role: 'operator', audit: { operation: 'device.verify', scope: 'cluster' } },
  'GET /devices/:arg/snapshots': { role: 'viewer' },
  'POST /devices/:arg/snapshots': { role: 'operator', audit: { operation: 'snapshot.create', scope: 'cluster' } },
  'DELETE /devices/:arg/snapshots': { role: 'operator', audit: { operation: 'snapshot.delete', scope: 'cluster' } },
  'POST /devices/:arg/disconnect': { role: 'operator', audit: { operation: 'device.disconnect', scope: 'node' } },
  'POST /leader': { role: 'operator', audit: { operation: 'leader.transfer', scope: 'cluster' } },
  'POST /devices/:arg/rekey': { role: 'admin', audit: { operation: 'device.rekey', scope: 'cluster' } },
  'POST /keys/:arg': { role: 'admin', audit: { operation: 'key.rotate', scope: 'cluster' } },
  'POST /members': { role: 'admin', audit: { operation: 'member.add', scope: 'cluster' } },
  'POST /members/:arg/promote': { role: 'admin', audit: { operation: 'member.promote', scope: 'cluster' } },
  'DELETE /members/:arg': { role: 'admin', audit: { operation: 'member.remove', scope: 'cluster' } },
};

/** The route key of a request: `METHOD /first[/:arg][/third]`, from the path's decoded segments (at most three). */
export function routeKey(method: string, parts: readonly string[]): string {
  return `${method} /${parts[0] ?? ''}${parts.length > 1 ? '/:arg' : ''}${parts.length > 2 ? `/${parts[2]}` : ''}`;
}
