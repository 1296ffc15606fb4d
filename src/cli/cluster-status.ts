// `status` and `health` across the cluster, the way `etcdctl endpoint status
// --cluster` works: ask one endpoint for the member list (every member
// published its admin address through Raft), then ask every member itself.
// A member that does not answer is a row saying so, not a failed command.

import type { AdminClient } from './admin-client.ts';
import { AdminClientError } from './admin-client.ts';
import type { HealthCheck, HealthReport, Member, NodeStatus } from '../admin/api.ts';
import { formatBytes, formatDuration, renderTable } from './output.ts';

export interface StatusRow {
  /** The admin address asked ('' if the member published none). */
  endpoint: string;
  /** The member id (--cluster: from the member list; otherwise from its status). */
  id?: string;
  status?: NodeStatus;
  /** Entries this member's applied index trails the leader's commit (as seen in this round of answers). */
  lag?: number;
  error?: string;
}

export interface HealthRow {
  endpoint: string;
  id?: string;
  healthy: boolean;
  checks?: HealthCheck[];
  error?: string;
}

/** Every member and the admin address it published, from the first endpoint that answers. */
export async function clusterEndpoints(c: AdminClient): Promise<{ id: string; endpoint: string }[]> {
  const { body } = await c.read<{ members: Member[] }>('/members');
  return body.members.map((m) => ({ id: m.id, endpoint: m.adminAddress ?? '' }));
}

function describeError(err: unknown): string {
  if (err instanceof AdminClientError && (err.code === 'XDEVICE_ERR_UNREACHABLE' || err.code === 'XDEVICE_ERR_TIMEOUT')) return `unreachable: ${err.message}`;
  return (err as Error).message;
}

async function statusOf(c: AdminClient, endpoint: string, id?: string): Promise<StatusRow> {
  if (!endpoint) return { endpoint, ...(id ? { id } : {}), error: 'no admin address published yet' };
  try {
    const res = await c.call<NodeStatus>(endpoint, 'GET', '/status');
    if (res.status !== 200) {
      const e = (res.body as { error?: { message?: string } })?.error;
      return { endpoint, ...(id ? { id } : {}), error: res.status === 401 ? 'unauthorised' : `HTTP ${res.status}${e?.message ? `: ${e.message}` : ''}` };
    }
    return { endpoint, id: id ?? res.body.id, status: res.body };
  } catch (err) {
    return { endpoint, ...(id ? { id } : {}), error: describeError(err) };
  }
}

/** Lag against the leader's commit (the highest commit answered, if no leader answered). */
function withLag(rows: StatusRow[]): StatusRow[] {
  const answered = rows.flatMap((r) => (r.status ? [r.status] : []));
  const leader = answered.find((s) => s.role === 'leader' || s.role === 'standalone');
  const commit = leader?.commit ?? Math.max(0, ...answered.map((s) => s.commit));
  return rows.map((r) => (r.status ? { ...r, lag: Math.max(0, commit - r.status.applied) } : r));
}

/** Status of each given endpoint. */
export async function endpointStatus(c: AdminClient): Promise<StatusRow[]> {
  return withLag(await Promise.all(c.endpoints.map((e) => statusOf(c, e))));
}

/** Status of every member, each asked at its own published admin address. */
export async function clusterStatus(c: AdminClient): Promise<StatusRow[]> {
  const members = await clusterEndpoints(c);
  return withLag(await Promise.all(members.map((m) => statusOf(c, m.endpoint, m.id))));
}

async function healthOf(c: AdminClient, endpoint: string, id?: string): Promise<HealthRow> {
  const who = id ? { id } : {};
  if (!endpoint) return { endpoint, ...who, healthy: false, error: 'no admin address published yet' };
  try {
    const res = await c.call<HealthReport>(endpoint, 'GET', '/health');
    if (res.status === 401) return { endpoint, ...who, healthy: false, error: 'unauthorised' };
    return { endpoint, ...who, healthy: res.body.healthy, checks: res.body.checks };
  } catch (err) {
    return { endpoint, ...who, healthy: false, error: describeError(err) };
  }
}

export async function endpointHealth(c: AdminClient): Promise<HealthRow[]> {
  return await Promise.all(c.endpoints.map((e) => healthOf(c, e)));
}

export async function clusterHealth(c: AdminClient): Promise<HealthRow[]> {
  const members = await clusterEndpoints(c);
  return await Promise.all(members.map((m) => healthOf(c, m.endpoint, m.id)));
}

/** Connected links of all peers, and which are down: "2/2", "1/2 down: node3". */
export function peerConnectivity(s: NodeStatus): string {
  if (s.peers.length === 0) return '-';
  const down = s.peers.filter((p) => !p.connected).map((p) => p.id);
  return `${s.peers.length - down.length}/${s.peers.length}${down.length > 0 ? ` down: ${down.join(',')}` : ''}`;
}

export function statusTable(rows: StatusRow[]): string {
  return renderTable(
    ['endpoint', 'id', 'role', 'term', 'leader', 'commit/applied', 'lag', 'version', 'wal', 'data', 'free', 'uptime', 'peers', 'error'],
    rows.map((r) => {
      const s = r.status;
      return [
        r.endpoint || '-',
        r.id ?? s?.id,
        s?.role,
        s?.term,
        s?.leader,
        s ? `${s.commit}/${s.applied}` : undefined,
        r.lag,
        s?.version,
        s?.walBytes === undefined ? (s ? '-' : undefined) : formatBytes(s.walBytes),
        s?.dataBytes === undefined ? (s ? '-' : undefined) : formatBytes(s.dataBytes),
        s?.freeBytes === undefined ? (s ? '-' : undefined) : formatBytes(s.freeBytes),
        s ? formatDuration(s.uptimeSeconds) : undefined,
        s ? peerConnectivity(s) : undefined,
        r.error,
      ];
    }),
  );
}

export function healthTable(rows: HealthRow[]): string {
  const withId = rows.some((r) => r.id !== undefined);
  return renderTable(
    [...(withId ? ['id'] : []), 'endpoint', 'healthy', 'detail'],
    rows.map((r) => [
      ...(withId ? [r.id] : []),
      r.endpoint || '-',
      r.healthy,
      r.error ?? r.checks?.filter((c) => !c.ok).map((c) => `${c.name}: ${c.detail}`).join('; '),
    ]),
  );
}
