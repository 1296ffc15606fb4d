// An SVG chart of latency percentiles: one panel per scenario, in each panel a
// group of bars per target (p50, p90, p99, p99.9) on a logarithmic axis, so a
// 50 µs read and a 20 ms flush fit on the same page. Plain SVG text: it opens
// in a browser and diffs in review.

import type { Percentiles } from './fio.ts';

export interface ChartPoint {
  /** Panel title, e.g. "a 4k randwrite QD1 fsync=1". */
  scenario: string;
  target: string;
  latency: Percentiles;
}

const PERCENTILES: Array<{ key: keyof Percentiles; label: string; colour: string }> = [
  { key: 'p50', label: 'p50', colour: '#4e79a7' },
  { key: 'p90', label: 'p90', colour: '#59a14f' },
  { key: 'p99', label: 'p99', colour: '#f28e2b' },
  { key: 'p999', label: 'p99.9', colour: '#e15759' },
];

const PANEL_W = 420;
const PANEL_H = 260;
const MARGIN = { left: 64, right: 16, top: 34, bottom: 48 };
const COLUMNS = 2;

function escape(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function formatUs(us: number): string {
  if (us >= 1_000_000) return `${+(us / 1_000_000).toPrecision(3)} s`;
  if (us >= 1000) return `${+(us / 1000).toPrecision(3)} ms`;
  return `${+us.toPrecision(3)} µs`;
}

function panel(title: string, points: ChartPoint[], x0: number, y0: number): string {
  const plotW = PANEL_W - MARGIN.left - MARGIN.right;
  const plotH = PANEL_H - MARGIN.top - MARGIN.bottom;
  const values = points.flatMap((p) => PERCENTILES.map((q) => p.latency[q.key])).filter((v) => Number.isFinite(v) && v > 0);
  // Whole decades around the data, so ticks land on 10 µs, 100 µs, 1 ms ...
  const lo = Math.floor(Math.log10(Math.min(...values, 10)));
  const hi = Math.max(lo + 1, Math.ceil(Math.log10(Math.max(...values, 10))));
  const y = (us: number): number => y0 + MARGIN.top + plotH - ((Math.log10(us) - lo) / (hi - lo)) * plotH;
  const out: string[] = [];
  out.push(`<text x="${x0 + PANEL_W / 2}" y="${y0 + 20}" text-anchor="middle" font-weight="bold">${escape(title)}</text>`);
  for (let d = lo; d <= hi; d++) {
    const yy = y(10 ** d);
    out.push(`<line x1="${x0 + MARGIN.left}" x2="${x0 + PANEL_W - MARGIN.right}" y1="${yy}" y2="${yy}" stroke="#ddd"/>`);
    out.push(`<text x="${x0 + MARGIN.left - 6}" y="${yy + 4}" text-anchor="end" font-size="11">${formatUs(10 ** d)}</text>`);
  }
  out.push(`<line x1="${x0 + MARGIN.left}" x2="${x0 + MARGIN.left}" y1="${y0 + MARGIN.top}" y2="${y0 + MARGIN.top + plotH}" stroke="#333"/>`);
  const groupW = plotW / Math.max(points.length, 1);
  const barW = Math.min(22, (groupW * 0.8) / PERCENTILES.length);
  points.forEach((p, g) => {
    const gx = x0 + MARGIN.left + g * groupW + (groupW - barW * PERCENTILES.length) / 2;
    PERCENTILES.forEach((q, k) => {
      const v = p.latency[q.key];
      if (!Number.isFinite(v) || v <= 0) return;
      const top = y(v);
      const bottom = y(10 ** lo);
      out.push(
        `<rect x="${(gx + k * barW).toFixed(1)}" y="${top.toFixed(1)}" width="${(barW - 1).toFixed(1)}" height="${Math.max(0, bottom - top).toFixed(1)}" fill="${q.colour}"><title>${escape(`${p.target} ${q.label}: ${formatUs(v)}`)}</title></rect>`,
      );
    });
    out.push(`<text x="${x0 + MARGIN.left + g * groupW + groupW / 2}" y="${y0 + MARGIN.top + plotH + 16}" text-anchor="middle" font-size="11">${escape(p.target)}</text>`);
    out.push(`<text x="${x0 + MARGIN.left + g * groupW + groupW / 2}" y="${y0 + MARGIN.top + plotH + 30}" text-anchor="middle" font-size="10" fill="#555">p50 ${escape(formatUs(p.latency.p50))}</text>`);
  });
  return out.join('\n');
}

/** Renders the points as a standalone SVG document. */
export function latencyChartSvg(points: readonly ChartPoint[], title: string, footnote = ''): string {
  const scenarios = [...new Set(points.map((p) => p.scenario))];
  const rows = Math.ceil(scenarios.length / COLUMNS);
  const width = PANEL_W * Math.min(COLUMNS, Math.max(scenarios.length, 1));
  const legendH = 30;
  const height = 40 + legendH + rows * PANEL_H + (footnote ? 24 : 0);
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="15" font-weight="bold">${escape(title)}</text>`,
  ];
  PERCENTILES.forEach((q, k) => {
    const lx = 16 + k * 90;
    out.push(`<rect x="${lx}" y="42" width="12" height="12" fill="${q.colour}"/>`, `<text x="${lx + 16}" y="52">${q.label}</text>`);
  });
  scenarios.forEach((s, i) => {
    const col = i % COLUMNS;
    const row = Math.floor(i / COLUMNS);
    out.push(panel(s, points.filter((p) => p.scenario === s), col * PANEL_W, 40 + legendH + row * PANEL_H));
  });
  if (footnote) out.push(`<text x="16" y="${height - 8}" font-size="11" fill="#555">${escape(footnote)}</text>`);
  out.push('</svg>');
  return out.join('\n') + '\n';
}
