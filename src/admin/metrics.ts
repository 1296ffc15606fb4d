// Prometheus metrics, named in etcd's style (etcd_disk_wal_fsync_duration_seconds
// → xdevice_disk_wal_fsync_duration_seconds); every per-peer series has the
// label `peer`, every per-device one `device`. Counters and histograms are fed
// by events; gauges are read from the node's status when scraped, so the hot
// path pays for nothing it does not already do.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import { statfs } from 'node:fs/promises';
import { allocatedBytes } from '../disk/usage.ts';
import { join } from 'node:path';
import type { NodeApi, NodeStatus, PeerStatus } from './api.ts';
import { VERSION } from '../version.ts';
import type { CompressionStats } from '../device/compression.ts';

/** What src/nbd's server emits per request. */
export interface NbdRequestEvent {
  command: string;
  /** Payload bytes (read or written). */
  bytes?: number;
  durationNs: number | bigint;
  error?: string | number | undefined;
}

export interface MetricSources {
  node: NodeApi;
  /** An EventEmitter emitting 'request' events (NbdServer), and its open connections. */
  nbd?: { on(event: 'request', listener: (e: NbdRequestEvent) => void): unknown; readonly connectionCount?: number };
  /** The node's data directory: WAL bytes on disk and free space are read from it when scraped. */
  dataDir?: string;
}

const LATENCY_BUCKETS = [0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export function createMetrics(sources: MetricSources): Registry {
  const registry = new Registry();
  // Unprefixed, as every `process_*` / `nodejs_*` dashboard expects.
  collectDefaultMetrics({ register: registry });
  const { node } = sources;

  new Gauge({
    name: 'xdevice_build_info',
    help: 'Always 1; the labels say which xdevice and Node.js versions run.',
    labelNames: ['version', 'nodejs_version'],
    registers: [registry],
  }).set({ version: VERSION, nodejs_version: process.versions.node }, 1);

  const walWrite = new Histogram({
    name: 'xdevice_disk_wal_write_duration_seconds',
    help: 'Latency of WAL saves as Raft waits for them: queueing behind the batch in flight, encoding, write and sync.',
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const walBytes = new Counter({
    name: 'xdevice_disk_wal_write_bytes_total',
    help: 'Entry payload bytes written to the WAL.',
    registers: [registry],
  });
  node.on('walSync', (e) => {
    walWrite.observe(e.durationSeconds);
    walBytes.inc(e.bytes);
  });
  const walFsync = new Histogram({
    name: 'xdevice_disk_wal_fsync_duration_seconds',
    help: 'Latency of the call that makes one WAL batch durable: fdatasync, or the O_DSYNC write inside which the kernel syncs.',
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  node.on('walFsync', (e) => walFsync.observe(e.durationSeconds));
  const apply = new Histogram({
    name: 'xdevice_server_apply_duration_seconds',
    help: 'Latency of applying a batch of committed entries to the block store.',
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const applied = new Counter({
    name: 'xdevice_server_applied_entries_total',
    help: 'Committed entries applied to this node’s block store.',
    registers: [registry],
  });
  node.on('apply', (e) => {
    apply.observe(e.durationSeconds);
    applied.inc(e.entries);
  });

  const leaderChanges = new Counter({
    name: 'xdevice_server_leader_changes_seen_total',
    help: 'Leader changes seen by this node.',
    registers: [registry],
  });
  node.on('leaderChange', () => leaderChanges.inc());

  const committed = new Counter({
    name: 'xdevice_server_proposals_committed_total',
    help: 'Proposals from this node committed and applied.',
    registers: [registry],
  });
  const failed = new Counter({
    name: 'xdevice_server_proposals_failed_total',
    help: 'Proposals from this node that failed (no leader, timeout, refused).',
    registers: [registry],
  });
  node.on('proposal', (e) => (e.outcome === 'committed' ? committed.inc() : failed.inc()));

  const rtt = new Histogram({
    name: 'xdevice_network_peer_round_trip_time_seconds',
    help: 'Round trip time of Raft messages to each peer.',
    labelNames: ['peer'],
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  node.on('peerRtt', (e) => rtt.observe({ peer: e.peer }, e.seconds));

  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers: [registry],
      collect() {
        this.set(read());
      },
    });
  gauge('xdevice_server_proposals_pending', 'Proposals from this node not yet applied.', () => node.pendingProposals());
  gauge('xdevice_server_has_leader', '1 if this node knows a leader, 0 otherwise.', () => (node.status().leader ? 1 : 0));
  gauge('xdevice_server_is_leader', '1 if this node is the leader.', () => (node.status().role === 'leader' ? 1 : 0));
  gauge('xdevice_server_is_learner', '1 if this node is a learner (replicates, does not vote).', () => (node.status().role === 'learner' ? 1 : 0));
  gauge('xdevice_server_uptime_seconds', 'Seconds since this node started.', () => node.status().uptimeSeconds);
  gauge('xdevice_raft_term', 'Current Raft term.', () => node.status().term);
  gauge('xdevice_raft_commit_index', 'Highest committed log index known to this node.', () => node.status().commit);
  gauge('xdevice_raft_applied_index', 'Highest log index applied to this node’s block store.', () => node.status().applied);
  // Compaction: the WAL holds entries from its first index on, and may drop those up to the checkpoint
  // (less what lagging followers still need). 0 where there is no WAL (file and memory backends).
  gauge('xdevice_raft_log_first_index', 'First log index the WAL still holds: the entries before it are compacted away.', () => node.status().logFirstIndex ?? 0);
  gauge('xdevice_server_checkpoint_index', 'Applied index of the last checkpoint (device files synced, index recorded).', () => node.status().checkpointIndex ?? 0);
  /** A counter whose value is read at scrape time from a running total the node keeps. */
  const totalCounter = (name: string, help: string, read: () => number) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(read());
      },
    });
  const statusCounter = (name: string, help: string, read: (s: NodeStatus) => number | undefined) => totalCounter(name, help, () => read(node.status()) ?? 0);
  statusCounter('xdevice_server_checkpoints_total', 'Checkpoints this node has written since it started.', (s) => s.checkpoints);
  statusCounter('xdevice_disk_wal_compactions_total', 'WAL compactions (entries dropped up to a checkpoint) since this node started.', (s) => s.compactions);

  const perPeer = (name: string, help: string, read: (p: PeerStatus) => number | undefined) =>
    new Gauge({
      name,
      help,
      labelNames: ['peer'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of node.status().peers) {
          const v = read(p);
          if (v !== undefined) this.set({ peer: p.id }, v);
        }
      },
    });
  perPeer('xdevice_raft_replication_lag_entries', 'How many committed entries each peer trails by (leader only).', (p) => p.lagEntries);
  perPeer('xdevice_network_peer_connected', '1 if the peer link is up (authenticated and ready), 0 otherwise.', (p) => (p.connected ? 1 : 0));
  new Counter({
    name: 'xdevice_network_peer_sent_failures_total',
    help: 'Raft messages to each peer that could not be sent or were lost with a closed link.',
    labelNames: ['peer'],
    registers: [registry],
    collect() {
      this.reset();
      for (const p of node.status().peers) this.inc({ peer: p.id }, p.messagesDropped ?? 0);
    },
  });

  new Counter({
    name: 'xdevice_network_peer_sent_bytes_total',
    help: 'Bytes written to each peer’s link: Raft messages and snapshot streams, as sealed on the wire.',
    labelNames: ['peer'],
    registers: [registry],
    collect() {
      this.reset();
      for (const p of node.status().peers) if (p.bytesSent !== undefined) this.inc({ peer: p.id }, p.bytesSent);
    },
  });

  if (node.compression) {
    const stats = node.compression.bind(node);
    const counter = (name: string, help: string, read: (s: Readonly<CompressionStats>) => number) => totalCounter(name, help, () => read(stats()));
    counter('xdevice_compression_bytes_in_total', 'Payload bytes of plaintext writes proposed by this node while compression is on (before compression).', (s) => s.bytesIn);
    counter('xdevice_compression_bytes_out_total', 'Data bytes those writes carried in their commands (compressed, as written, or none for a hole).', (s) => s.bytesOut);
    counter('xdevice_compression_bytes_saved_total', 'bytes_in less bytes_out: what compression and holes kept out of every WAL and off every peer link.', (s) => s.bytesIn - s.bytesOut);
    counter('xdevice_compression_compressed_writes_total', 'Writes proposed as COMPRESSED_WRITE (LZ4).', (s) => s.compressedWrites);
    counter('xdevice_compression_zero_writes_total', 'All-zero writes proposed as WRITE_ZEROES: a hole instead of data.', (s) => s.zeroWrites);
    counter('xdevice_compression_incompressible_writes_total', 'Writes LZ4 could not shrink by 1/8, proposed as written.', (s) => s.incompressibleWrites);
    counter('xdevice_compression_skipped_writes_total', 'Writes proposed as written without an LZ4 attempt: the device\'s last attempts did not pay (backoff).', (s) => s.skippedWrites);
    counter('xdevice_compression_snapshot_bytes_in_total', 'Device-file bytes this node streamed in Raft snapshots to receivers that decode LZ4 (before compression).', (s) => s.snapshotBytesIn);
    counter('xdevice_compression_snapshot_bytes_out_total', 'Bytes those snapshot chunks took on the peer links.', (s) => s.snapshotBytesOut);
    counter('xdevice_compression_snapshot_bytes_saved_total', 'snapshot bytes_in less bytes_out: what LZ4 kept off the links of snapshot streams.', (s) => s.snapshotBytesIn - s.snapshotBytesOut);
  }

  const snapshotLabels = ['direction', 'peer'] as const;
  const snapshotGauge = (name: string, help: string, read: (s: NonNullable<NodeStatus['snapshot']>) => number) =>
    new Gauge({
      name,
      help,
      labelNames: snapshotLabels,
      registers: [registry],
      collect() {
        this.reset();
        const s = node.status().snapshot;
        if (s) this.set({ direction: s.direction, peer: s.peer }, read(s));
      },
    });
  gauge('xdevice_snapshot_in_progress', '1 while a snapshot is being sent or received.', () => (node.status().snapshot ? 1 : 0));
  snapshotGauge('xdevice_snapshot_done_bytes', 'Bytes of the snapshot in progress sent or received so far.', (s) => s.bytesDone);
  snapshotGauge('xdevice_snapshot_size_bytes', 'Total bytes of the snapshot being sent (0 while receiving: the receiver does not know).', (s) => s.bytesTotal);

  new Gauge({
    name: 'xdevice_health_check',
    help: '1 if the named health check (as /health reports it) passes, 0 if not.',
    labelNames: ['check'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const c of (await node.health()).checks) this.set({ check: c.name }, c.ok ? 1 : 0);
    },
  });

  new Gauge({
    name: 'xdevice_device_disk_used_bytes',
    help: 'Bytes allocated by each device’s data file on this node.',
    labelNames: ['device'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const d of await node.devices()) this.set({ device: d.name }, d.usedBytes);
    },
  });
  new Gauge({
    name: 'xdevice_device_snapshot_bytes',
    help: 'Bytes this node holds for each device’s point-in-time snapshots (blocks preserved by copy-on-write).',
    labelNames: ['device'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const d of await node.devices()) this.set({ device: d.name }, d.snapshotBytes ?? 0);
    },
  });
  new Gauge({
    name: 'xdevice_device_size_bytes',
    help: 'Size of each device.',
    labelNames: ['device'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const d of await node.devices()) this.set({ device: d.name }, d.size);
    },
  });

  new Gauge({
    name: 'xdevice_device_read_only',
    help: '1 if the device refuses writes (the replicated read-only flag), 0 if not.',
    labelNames: ['device'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const d of await node.devices()) this.set({ device: d.name }, d.readOnly ? 1 : 0);
    },
  });
  new Gauge({
    name: 'xdevice_verify_mismatched_ranges',
    help: 'Ranges whose checksums differ between replicas in the latest complete verify of each device (xdevice-cli device verify).',
    labelNames: ['device'],
    registers: [registry],
    collect() {
      this.reset();
      const latest = new Map<string, number>();
      for (const r of node.verifyReports?.() ?? []) if (r.complete && Object.keys(r.unavailable).length === 0) latest.set(r.device, r.mismatches.length);
      for (const [device, n] of latest) this.set({ device }, n);
    },
  });

  const { dataDir } = sources;
  if (dataDir !== undefined) {
    new Gauge({
      name: 'xdevice_disk_wal_size_bytes',
      help: 'Bytes the WAL segment files occupy on disk (allocated blocks).',
      registers: [registry],
      async collect() {
        this.set(await allocatedBytes(join(dataDir, 'wal')));
      },
    });
    const fsGauge = (name: string, help: string, read: (s: { bavail: number; blocks: number; bsize: number }) => number) =>
      new Gauge({
        name,
        help,
        registers: [registry],
        async collect() {
          // a memory-backend node may have no data directory: no sample then, not a failed scrape
          const s = await statfs(dataDir).catch(() => undefined);
          if (s) this.set(read(s));
        },
      });
    fsGauge('xdevice_disk_data_dir_free_bytes', 'Bytes available to this node on the data directory’s file system.', (s) => s.bavail * s.bsize);
    fsGauge('xdevice_disk_data_dir_size_bytes', 'Size of the data directory’s file system.', (s) => s.blocks * s.bsize);
  }

  if (sources.nbd) {
    const nbd = sources.nbd;
    const nbdDuration = new CommandHistogram(
      'xdevice_nbd_request_duration_seconds',
      'Time from reading an NBD request to sending its reply, by command.',
      LATENCY_BUCKETS,
    );
    registry.registerMetric(nbdDuration as unknown as Metric);
    const nbdErrors = new Counter({
      name: 'xdevice_nbd_request_errors_total',
      help: 'NBD requests answered with an error, by command.',
      labelNames: ['command'],
      registers: [registry],
    });
    new Counter({
      name: 'xdevice_nbd_request_bytes_total',
      help: 'Payload bytes of NBD requests (read: sent to clients; write: received), by command.',
      labelNames: ['command'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [command, bytes] of nbdDuration.bytesByCommand()) this.inc({ command }, bytes);
      },
    });
    if (nbd.connectionCount !== undefined) gauge('xdevice_nbd_connections', 'Open NBD client connections.', () => nbd.connectionCount ?? 0);
    nbd.on('request', (e) => {
      nbdDuration.observe(e.command, Number(e.durationNs) / 1e9, e.bytes ?? 0);
      if (e.error !== undefined && e.error !== 0) nbdErrors.inc({ command: e.command });
    });
  }
  return registry;
}


interface HistogramValue {
  metricName: string;
  labels: Record<string, string | number>;
  value: number;
}

/**
 * A histogram with one label, `command`, observed on every NBD request: a
 * per-command array of bucket counts, so an observation is a short scan and
 * two additions. prom-client's Histogram validates and hashes the label set
 * on each call, a visible share of a node's CPU at tens of thousands of
 * requests per second. The exposition is the same (cumulative `_bucket` with
 * `le`, `_sum`, `_count`), built when scraped.
 */
class CommandHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly series = new Map<string, { counts: Float64Array; sum: number; count: number; bytes: number }>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
  ) {}

  observe(command: string, seconds: number, bytes = 0): void {
    let s = this.series.get(command);
    if (!s) this.series.set(command, (s = { counts: new Float64Array(this.bounds.length), sum: 0, count: 0, bytes: 0 }));
    s.bytes += bytes;
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (seconds <= b[i]!) {
        s.counts[i]!++;
        break;
      }
    }
    s.sum += seconds;
    s.count++;
  }

  reset(): void {
    this.series.clear();
  }

  /** Payload bytes per command, counted with the same one map lookup per request. */
  *bytesByCommand(): Iterable<[string, number]> {
    for (const [command, s] of this.series) yield [command, s.bytes];
  }

  /** What prom-client's Registry formats (the shape its own metrics return). */
  get(): Promise<{ name: string; help: string; type: string; aggregator: string; values: HistogramValue[] }> {
    const values: HistogramValue[] = [];
    for (const [command, s] of this.series) {
      let cumulative = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        cumulative += s.counts[i]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { le: this.bounds[i]!, command }, value: cumulative });
      }
      values.push({ metricName: `${this.name}_bucket`, labels: { le: '+Inf', command }, value: s.count });
      values.push({ metricName: `${this.name}_sum`, labels: { command }, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: { command }, value: s.count });
    }
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values });
  }
}
