// Where a request's time goes inside xdevice-node, from its own /metrics
// (Prometheus text): scrape every node before and after a fio job, and the
// differences of the histograms' _sum and _count give the mean NBD request
// time, the mean WAL group commit (and how many commits there were), and the
// mean peer round trip over exactly that job.

import { request } from 'node:http';

/** `name{labels}` → value, for the _sum and _count samples and counters. */
export type Samples = Map<string, number>;

export async function scrapeMetrics(adminPort: number): Promise<Samples> {
  const text = await new Promise<string>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: adminPort, path: '/metrics', timeout: 5000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(chunks).toString('utf8')) : reject(new Error(`/metrics: HTTP ${res.statusCode}`))));
    });
    req.on('timeout', () => req.destroy(new Error('/metrics timed out')));
    req.on('error', reject);
    req.end();
  });
  const samples: Samples = new Map();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || !m[1]!.startsWith('xdevice_') || /_bucket$/.test(m[1]!)) continue;
    samples.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]));
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
export function histogramDeltas(before: Samples, after: Samples): HistogramDelta[] {
  const out: HistogramDelta[] = [];
  for (const [key, sumAfter] of after) {
    const m = /^(.*)_sum(\{.*\})?$/.exec(key);
    if (!m) continue;
    const series = `${m[1]}${m[2] ?? ''}`;
    const countKey = `${m[1]}_count${m[2] ?? ''}`;
    const count = (after.get(countKey) ?? 0) - (before.get(countKey) ?? 0);
    if (count <= 0) continue;
    const sum = sumAfter - (before.get(key) ?? 0);
    out.push({ series, count, meanUs: (sum / count) * 1e6 });
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
    const cmd = /^xdevice_nbd_request_duration_seconds\{command="([^"]+)"\}$/.exec(d.series);
    if (cmd) nbd[cmd[1]!] = { count: d.count, meanUs: d.meanUs };
    else if (d.series === 'xdevice_disk_wal_write_duration_seconds') {
      walCommits = d.count;
      walCommitMeanUs = d.meanUs;
    } else if (d.series.startsWith('xdevice_network_peer_round_trip_time_seconds')) {
      rttSum += d.meanUs * d.count;
      rttCount += d.count;
    }
  }
  const walBytes = (after.get('xdevice_disk_wal_write_bytes_total') ?? 0) - (before.get('xdevice_disk_wal_write_bytes_total') ?? 0);
  return { node, nbd, walCommits, walCommitMeanUs, walBytes, peerRttMeanUs: rttCount > 0 ? rttSum / rttCount : NaN };
}
