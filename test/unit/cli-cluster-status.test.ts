// The pieces of `status -w table` that turn numbers into columns: byte and
// duration formats, peer connectivity, lag against the leader's commit.
import t from 'tap';
import { formatBytes, formatDuration } from '../../src/cli/output.ts';
import { peerConnectivity, statusTable, type StatusRow } from '../../src/cli/cluster-status.ts';
import type { NodeStatus, PeerStatus } from '../../src/admin/api.ts';

const peer = (id: string, connected: boolean): PeerStatus => ({ id, address: '', match: 0, next: 0, state: 'replicate', lagEntries: 0, voter: true, connected });
const status = (over: Partial<NodeStatus>): NodeStatus => ({
  id: 'n1', role: 'follower', term: 4, leader: 'n2', commit: 100, applied: 90, backend: 'replicated', peers: [], nbdAddress: '', adminAddress: '',
  uptimeSeconds: 3725, version: '9.9.9', walBytes: 64 << 20, dataBytes: 1536, freeBytes: 3 * 2 ** 30, ...over,
});

t.test('formatBytes and formatDuration', async (t) => {
  t.equal(formatBytes(0), '0 B');
  t.equal(formatBytes(1023), '1023 B');
  t.equal(formatBytes(1536), '1.5 KiB');
  t.equal(formatBytes(64 << 20), '64.0 MiB');
  t.equal(formatBytes(3 * 2 ** 40), '3.0 TiB');
  t.equal(formatDuration(0), '0s');
  t.equal(formatDuration(59.9), '59s');
  t.equal(formatDuration(187), '3m07s');
  t.equal(formatDuration(3725), '1h02m');
  t.equal(formatDuration(4 * 86400 + 3 * 3600 + 5), '4d03h');
});

t.test('peer connectivity names the peers that are down', async (t) => {
  t.equal(peerConnectivity(status({})), '-', 'no peers');
  t.equal(peerConnectivity(status({ peers: [peer('a', true), peer('b', true)] })), '2/2');
  t.equal(peerConnectivity(status({ peers: [peer('a', true), peer('b', false), peer('c', false)] })), '1/3 down: b,c');
});

t.test('the status table: one row per member, an unreachable one says so', async (t) => {
  const rows: StatusRow[] = [
    { endpoint: '127.0.0.1:1', id: 'n1', status: status({ peers: [peer('n2', true), peer('n3', false)] }), lag: 10 },
    { endpoint: '127.0.0.1:2', id: 'n2', error: 'unreachable: connect ECONNREFUSED' },
    { endpoint: '', id: 'n3', error: 'no admin address published yet' },
  ];
  const lines = statusTable(rows).trim().split('\n');
  t.equal(lines.length, 7, 'rule, header, rule, three rows, rule');
  const cells = (line: string) => line.split('|').slice(1, -1).map((c) => c.trim());
  t.same(cells(lines[1]!), ['ENDPOINT', 'ID', 'ROLE', 'TERM', 'LEADER', 'COMMIT/APPLIED', 'LAG', 'VERSION', 'WAL', 'DATA', 'FREE', 'UPTIME', 'PEERS', 'ERROR']);
  t.same(cells(lines[3]!), ['127.0.0.1:1', 'n1', 'follower', '4', 'n2', '100/90', '10', '9.9.9', '64.0 MiB', '1.5 KiB', '3.0 GiB', '1h02m', '1/2 down: n3', '']);
  t.same(cells(lines[4]!).slice(0, 2), ['127.0.0.1:2', 'n2']);
  t.match(cells(lines[4]!)[13], /^unreachable/);
  t.same(cells(lines[5]!).slice(0, 2), ['-', 'n3']);
  // A node that reports no WAL (the file backend) shows '-', not 0.
  const noWal = cells(statusTable([{ endpoint: 'e', status: status({ walBytes: undefined }) }]).trim().split('\n')[3]!);
  t.equal(noWal[8], '-');
});
