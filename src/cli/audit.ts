// `xdevice-cli audit list | verify`: the audit trail read through the admin
// API (GET /audit), and its chain checked offline from a data directory or
// online by each endpoint's node, with the endpoints' cluster trails
// compared.

import { join } from 'node:path';
import type { Argv } from 'yargs';
import { limits } from '../limits.ts';
import { parseSince } from '../parse.ts';
import type { AdminClient } from './admin-client.ts';
import { client, fail, type GlobalArgs, print, usage } from './common.ts';
import { renderTable } from './output.ts';
import type { AuditListing, AuditVerifyReport } from '../audit/query.ts';
import type { TrailRecord } from '../audit/record.ts';
import { AUDIT_DIR } from '../audit/trail.ts';
import { verifyTrail, type TrailReport } from '../audit/verify.ts';

export function auditTable(records: TrailRecord[]): string {
  return renderTable(
    ['time', 'scope', 'seq', 'principal', 'source', 'operation', 'outcome', 'args', 'reason'],
    records.map((r) => [r.time, r.scope, r.seq, r.principal, r.source, r.operation, r.outcome, JSON.stringify(r.args), r.reason]),
  );
}

export async function auditList(c: AdminClient, query: { sinceMs?: number; scope: string; limit: number }): Promise<AuditListing> {
  const params = new URLSearchParams({ scope: query.scope, limit: String(query.limit) });
  if (query.sinceMs !== undefined) params.set('since', new Date(query.sinceMs).toISOString());
  return (await c.read<AuditListing>(`/audit?${params.toString()}`)).body;
}

export interface VerifyOutcome {
  /** Per data directory or endpoint. */
  results: { where: string; trails: TrailReport[]; error?: string }[];
  /** Why the check fails: the first bad record of each trail, unreachable endpoints, cluster trails that disagree. */
  failures: string[];
}

function trailFailures(where: string, trails: TrailReport[]): string[] {
  return trails.filter((t) => t.problem).map((t) => `${where}: ${t.scope} trail: ${t.problem!.file}${t.problem!.line > 0 ? `, line ${t.problem!.line}` : ''}: ${t.problem!.what}`);
}

export async function verifyDataDir(dataDir: string): Promise<VerifyOutcome> {
  const dir = join(dataDir, AUDIT_DIR);
  const trails = [await verifyTrail(dir, 'cluster'), await verifyTrail(dir, 'node')];
  return { results: [{ where: dataDir, trails }], failures: trailFailures(dataDir, trails) };
}

/**
 * Each endpoint's node checks its own files; then the cluster trails are
 * compared: two nodes whose cluster trails end at the same record must end
 * with the same hash (they applied the same log).
 */
export async function verifyEndpoints(c: AdminClient): Promise<VerifyOutcome> {
  const out: VerifyOutcome = { results: [], failures: [] };
  for (const endpoint of c.endpoints) {
    try {
      const res = await c.call<AuditVerifyReport & { error?: { message?: string } }>(endpoint, 'GET', '/audit?verify=true');
      if (res.status !== 200) throw new Error(res.body.error?.message ?? `HTTP ${res.status}`);
      out.results.push({ where: endpoint, trails: res.body.trails });
      out.failures.push(...trailFailures(endpoint, res.body.trails));
    } catch (err) {
      out.results.push({ where: endpoint, trails: [], error: (err as Error).message });
      out.failures.push(`${endpoint}: ${(err as Error).message}`);
    }
  }
  const bySeq = new Map<number, { where: string; hash: string }>();
  for (const r of out.results) {
    const head = r.trails.find((t) => t.scope === 'cluster' && t.ok)?.head;
    if (!head || head.seq === 0) continue;
    const other = bySeq.get(head.seq);
    if (other && other.hash !== head.hash) out.failures.push(`${r.where} and ${other.where}: their cluster trails both end at record ${head.seq} with different hashes: one of them was rewritten`);
    else bySeq.set(head.seq, { where: r.where, hash: head.hash });
  }
  return out;
}

export function auditVerifyTable(v: VerifyOutcome): string {
  const rows = v.results.flatMap((r) =>
    r.error
      ? [[r.where, '', '', '', '', r.error]]
      : r.trails.map((t) => [r.where, t.scope, t.files, t.records, t.ok ? 'ok' : 'BROKEN', t.problem ? `${t.problem.file}${t.problem.line > 0 ? `:${t.problem.line}` : ''}: ${t.problem.what}` : `last record ${t.head.seq}${t.anchors.length > 0 ? `, continues from record ${t.anchors.map((a) => a.seq).join(', ')} (snapshot)` : ''}`]),
  );
  return renderTable(['where', 'trail', 'files', 'records', 'chain', 'detail'], rows);
}

export function auditCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command(
      'list',
      'audit records of one endpoint, oldest first (admin calls, membership and key changes, refused attaches)',
      (y) =>
        y
          .option('since', { type: 'string', describe: 'from this ISO 8601 time, or this long ago (15m, 2h, 7d)' })
          .option('scope', { choices: ['cluster', 'node', 'all'] as const, default: 'all' as const, describe: 'cluster (the same on every node), node (this node only) or both' })
          .option('limit', { type: 'number', default: 1000, describe: `at most this many, the newest (up to ${limits.auditListRecordsMax})` }),
      async (argv) => {
        let sinceMs: number | undefined;
        if (argv.since !== undefined) {
          try {
            sinceMs = parseSince(argv.since, Date.now());
          } catch (err) {
            usage(`--since: ${(err as Error).message}`);
          }
        }
        if (!Number.isSafeInteger(argv.limit) || argv.limit < 1 || argv.limit > limits.auditListRecordsMax) usage(`--limit: 1 to ${limits.auditListRecordsMax}`);
        const listing = await auditList(client(argv), { scope: argv.scope, limit: argv.limit, ...(sinceMs !== undefined ? { sinceMs } : {}) });
        print(argv, listing, () => auditTable(listing.records));
      },
    )
    .command(
      'verify',
      "check the audit trails' hash chains: offline in --data-dir, or by every endpoint's node (and compare their cluster trails)",
      (y) => y.option('data-dir', { type: 'string', describe: "a node's data directory, read directly (the node may be stopped)" }),
      async (argv) => {
        const outcome = argv['data-dir'] !== undefined ? await verifyDataDir(argv['data-dir']) : await verifyEndpoints(client(argv));
        print(argv, outcome, () => auditVerifyTable(outcome));
        if (outcome.failures.length > 0) fail(outcome.failures.join('\n'));
      },
    )
    .demandCommand(1, 'say which: list, verify');
}
