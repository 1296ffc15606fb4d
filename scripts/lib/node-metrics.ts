// Where a request's time goes inside xdevice-node, from its own /metrics
// (Prometheus text): scrape every node before and after a fio job, and the
// differences of the histograms' _sum and _count give the mean NBD request
// time, the mean WAL group commit (and how many commits there were), and the
// mean peer round trip over exactly that job.

import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { adminApi } from '../../test/integration/helpers/launcher.ts';

/** One histogram series (a name and its labels) at one scrape. */
export interface HistogramSample {
  name: string;
  labels: Record<string, string>;
  count: number;
  sum: number;
}

/** One scrape: histograms and plain values (counters, gauges), keyed `name{labels}`. */
export interface Samples {
  histograms: Map<string, HistogramSample>;
  values: Map<string, number>;
}

export function emptySamples(): Samples {
  return { histograms: new Map(), values: new Map() };
}

const seriesKey = (name: string, labels: Record<string, string> = {}): string => {
  const l = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b));
  return l.length === 0 ? name : `${name}{${l.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(',')}}`;
};

/**
 * The xdevice_ series of one node's /metrics. parse-prometheus-text-format
 * (1.1.1) folds a histogram's series into one sample and drops the labels,
 * sums and counts of labelled ones (`{command="write"}`, `{peer="node2"}`),
 * so histograms are handed to it untyped: each `_sum` and `_count` line then
 * comes back as a sample of its own family, with its labels.
 */
export async function scrapeMetrics(adminPort: number): Promise<Samples> {
  const res = await adminApi<string>(adminPort, 'GET', '/metrics', undefined, { timeoutMs: 5000 });
  if (res.status !== 200) throw new Error(`/metrics: HTTP ${res.status}`);
  const histograms = new Set<string>();
  const untyped = res.body
    .split('\n')
    .filter((line) => {
      const [hash, kind, name, type] = line.split(' ');
      if (hash !== '#' || kind !== 'TYPE' || (type !== 'histogram' && type !== 'summary')) return true;
      histograms.add(name!);
      return false;
    })
    .join('\n');
  const samples = emptySamples();
  for (const family of parsePrometheusTextFormat(untyped)) {
    if (!family.name.startsWith('xdevice_')) continue;
    const part = /_(sum|count)$/.exec(family.name);
    const base = part ? family.name.slice(0, -part[0].length) : '';
    for (const m of family.metrics) {
      if (part && histograms.has(base)) {
        const key = seriesKey(base, m.labels);
        const h = samples.histograms.get(key) ?? { name: base, labels: m.labels ?? {}, count: 0, sum: 0 };
        h[part[1] as 'sum' | 'count'] = Number(m.value);
        samples.histograms.set(key, h);
      } else if (!histograms.has(family.name.replace(/_bucket$/, ''))) {
        samples.values.set(seriesKey(family.name, m.labels), Number(m.value));
      }
    }
  }
  return samples;
}

export interface HistogramDelta {
  /** Metric name without _sum/_count, with its labels. */
  series: string;
  count: number;
  meanUs: number;
}

/** Every histogram series that moved between two scrapes: how many observations, and their mean. */
export function histogramDeltas(before: Samples, after: Samples): (HistogramDelta & { name: string; labels: Record<string, string> })[] {
  const out: (HistogramDelta & { name: string; labels: Record<string, string> })[] = [];
  for (const [series, a] of after.histograms) {
    const b = before.histograms.get(series);
    const count = a.count - (b?.count ?? 0);
    if (count <= 0) continue;
    const sum = a.sum - (b?.sum ?? 0);
    out.push({ series, name: a.name, labels: a.labels, count, meanUs: (sum / count) * 1e6 });
  }
  return out;
}

/** What one job cost on one node. */
export interface NodeBreakdown {
  node: string;
  /** Mean NBD request time on this node by command (read, write, flush ...), submission read to reply sent. */
  nbd: Record<string, { count: number; meanUs: number }>;
  /** WAL group commits: how many, their mean duration, and the bytes written. */
  walCommits: number;
  walCommitMeanUs: number;
  walBytes: number;
  /** Mean measured round trip to the peers (pings), over all peers. */
  peerRttMeanUs: number;
}

export function breakdown(node: string, before: Samples, after: Samples): NodeBreakdown {
  const deltas = histogramDeltas(before, after);
  const nbd: NodeBreakdown['nbd'] = {};
  let rttSum = 0;
  let rttCount = 0;
  let walCommits = 0;
  let walCommitMeanUs = NaN;
  for (const d of deltas) {
    if (d.name === 'xdevice_nbd_request_duration_seconds' && d.labels.command) nbd[d.labels.command] = { count: d.count, meanUs: d.meanUs };
    else if (d.name === 'xdevice_disk_wal_write_duration_seconds') {
      walCommits = d.count;
      walCommitMeanUs = d.meanUs;
    } else if (d.name === 'xdevice_network_peer_round_trip_time_seconds') {
      rttSum += d.meanUs * d.count;
      rttCount += d.count;
    }
  }
  const walBytes = (after.values.get('xdevice_disk_wal_write_bytes_total') ?? 0) - (before.values.get('xdevice_disk_wal_write_bytes_total') ?? 0);
  return { node, nbd, walCommits, walCommitMeanUs, walBytes, peerRttMeanUs: rttCount > 0 ? rttSum / rttCount : NaN };
}
