// Prometheus metrics, named in etcd's style (etcd_disk_wal_fsync_duration_seconds
// → xdevice_disk_wal_fsync_duration_seconds). Counters and histograms are fed
// by events; gauges are read from the node's status when scraped, so the hot
// path pays for nothing it does not already do.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import type { NodeApi } from './api.ts';

/** What src/nbd's server emits per request. */
export interface NbdRequestEvent {
  command: string;
  durationNs: number | bigint;
  error?: string | number | undefined;
}

export interface MetricSources {
  node: NodeApi;
  /** An EventEmitter emitting 'request' events (NbdServer). */
  nbd?: { on(event: 'request', listener: (e: NbdRequestEvent) => void): unknown };
}

const LATENCY_BUCKETS = [0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

export function createMetrics(sources: MetricSources): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'xdevice_process_' });
  const { node } = sources;

  const fsync = new Histogram({
    name: 'xdevice_disk_wal_fsync_duration_seconds',
    help: 'Latency of WAL write+fdatasync batches (group commits).',
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const walBytes = new Counter({
    name: 'xdevice_disk_wal_write_bytes_total',
    help: 'Bytes written to the WAL.',
    registers: [registry],
  });
  node.on('walSync', (e) => {
    fsync.observe(e.durationSeconds);
    walBytes.inc(e.bytes);
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
    labelNames: ['to'],
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  node.on('peerRtt', (e) => rtt.observe({ to: e.peer }, e.seconds));

  new Gauge({
    name: 'xdevice_server_proposals_pending',
    help: 'Proposals from this node not yet applied.',
    registers: [registry],
    collect() {
      this.set(node.pendingProposals());
    },
  });
  new Gauge({ name: 'xdevice_disk_data_free_bytes', help: 'Free bytes on the data filesystem (writes get ENOSPC below the reserve).', registers: [registry], collect() { const sp = node.space(); if (sp) this.set(sp.freeBytes); } });
  new Gauge({
    name: 'xdevice_server_has_leader',
    help: '1 if this node knows a leader, 0 otherwise.',
    registers: [registry],
    collect() {
      this.set(node.status().leader ? 1 : 0);
    },
  });
  new Gauge({
    name: 'xdevice_server_is_leader',
    help: '1 if this node is the leader.',
    registers: [registry],
    collect() {
      this.set(node.status().role === 'leader' ? 1 : 0);
    },
  });
  new Gauge({
    name: 'xdevice_raft_term',
    help: 'Current Raft term.',
    registers: [registry],
    collect() {
      this.set(node.status().term);
    },
  });
  new Gauge({
    name: 'xdevice_raft_commit_index',
    help: 'Highest committed log index known to this node.',
    registers: [registry],
    collect() {
      this.set(node.status().commit);
    },
  });
  new Gauge({
    name: 'xdevice_raft_applied_index',
    help: 'Highest log index applied to this node’s block store.',
    registers: [registry],
    collect() {
      this.set(node.status().applied);
    },
  });
  new Gauge({
    name: 'xdevice_raft_replication_lag_entries',
    help: 'How many committed entries each peer trails by (leader only).',
    labelNames: ['peer'],
    registers: [registry],
    collect() {
      this.reset();
      for (const p of node.status().peers) this.set({ peer: p.id }, p.lagEntries);
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
    name: 'xdevice_device_size_bytes',
    help: 'Size of each device.',
    labelNames: ['device'],
    registers: [registry],
    async collect() {
      this.reset();
      for (const d of await node.devices()) this.set({ device: d.name }, d.size);
    },
  });

  if (sources.nbd) {
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
    sources.nbd.on('request', (e) => {
      nbdDuration.observe(e.command, Number(e.durationNs) / 1e9);
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
  private readonly series = new Map<string, { counts: Float64Array; sum: number; count: number }>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly bounds: readonly number[],
  ) {}

  observe(command: string, seconds: number): void {
    let s = this.series.get(command);
    if (!s) this.series.set(command, (s = { counts: new Float64Array(this.bounds.length), sum: 0, count: 0 }));
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
