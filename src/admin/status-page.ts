// The status page on the admin port (GET /): one HTML document with a little
// script and no build step. It polls the node's own JSON endpoints (/status,
// /devices, /health, /events) and /metrics, and draws the cluster map as this
// node sees it (members, roles, leader, link up/down, replication lag), device
// size and use, commit latency histograms and the recent events below.
//
// The document holds no data, so it is served without the bearer token; the
// endpoints it reads still ask for it (the page offers a field when they do).

import type { NodeApi, NodeEvents } from './api.ts';
import { limits } from '../limits.ts';

export interface RecentEvent {
  time: string;
  level: NodeEvents['notice']['level'];
  msg: string;
  fields: Record<string, unknown>;
}

/** The last few notices a node emitted (leader changes, lost peers, membership), newest last. */
export class EventLog {
  private readonly events: RecentEvent[] = [];

  constructor(
    node: Pick<NodeApi, 'on'>,
    private readonly max = limits.statusPageEventsMax,
  ) {
    node.on('notice', (e) => this.push({ time: new Date().toISOString(), level: e.level, msg: e.msg, fields: e.fields }));
  }

  push(e: RecentEvent): void {
    this.events.push(e);
    if (this.events.length > this.max) this.events.splice(0, this.events.length - this.max);
  }

  list(): RecentEvent[] {
    return [...this.events];
  }
}

export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>XDevice status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.4em; margin: 0 0 .2em; }
  h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
  .sub { color: #666; }
  table { border-collapse: collapse; background: #fff; }
  th, td { padding: .3em .8em; border-bottom: 1px solid #e4e4e4; text-align: left; }
  th { font-weight: 600; background: #f0f0f0; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .up { color: #1a7f37; font-weight: 600; }
  .down { color: #cf222e; font-weight: 600; }
  .leader { background: #fff8c5; }
  .bar { display: inline-block; height: .9em; background: #54aeff; vertical-align: middle; }
  .hist td { padding: .1em .6em; }
  #error { color: #cf222e; font-weight: 600; }
  .grid { display: flex; flex-wrap: wrap; gap: 2em; }
  .warn { color: #9a6700; } .error { color: #cf222e; }
  #events li { margin: .15em 0; }
  #token-form { display: none; margin: 1em 0; }
</style>
</head>
<body>
<h1 id="title">XDevice</h1>
<div class="sub" id="subtitle">loading…</div>
<div id="error"></div>
<form id="token-form"><label>Admin token <input id="token" type="password" autocomplete="off"></label> <button>Use</button></form>

<h2>Cluster</h2>
<table id="members"><thead><tr><th>member</th><th>role</th><th>link</th><th>match</th><th>lag (entries)</th><th>round trip</th></tr></thead><tbody></tbody></table>

<div class="grid">
<div>
<h2>Devices</h2>
<table id="devices"><thead><tr><th>device</th><th>size</th><th>used here</th><th></th></tr></thead><tbody></tbody></table>
</div>
<div>
<h2>Health</h2>
<table id="health"><thead><tr><th>check</th><th>ok</th><th>detail</th></tr></thead><tbody></tbody></table>
</div>
</div>

<div class="grid">
<div>
<h2>Commit latency (NBD writes)</h2>
<table class="hist" id="hist-write"><tbody></tbody></table>
</div>
<div>
<h2>WAL fsync latency</h2>
<table class="hist" id="hist-fsync"><tbody></tbody></table>
</div>
</div>

<h2>Recent events</h2>
<ul id="events"></ul>

<script>
"use strict";
let token = sessionStorage.getItem('xdevice-token') || '';
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const size = (n) => { const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0; while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; } return (i ? n.toFixed(1) : n) + ' ' + u[i]; };
const dur = (s) => s === '+Inf' ? '∞' : s < 0.001 ? (s * 1e6).toFixed(0) + ' µs' : s < 1 ? (s * 1e3).toFixed(s < 0.01 ? 1 : 0) + ' ms' : s + ' s';

async function get(path, text) {
  const res = await fetch(path, { headers: token ? { Authorization: 'Bearer ' + token } : {}, cache: 'no-store' });
  if (res.status === 401) { $('token-form').style.display = 'block'; throw new Error('the admin API wants a token'); }
  if (!res.ok && res.status !== 503) throw new Error(path + ': HTTP ' + res.status);
  return text ? res.text() : res.json();
}

/** Non-cumulative bucket counts of one histogram series from Prometheus text. */
function histogram(text, name, labels) {
  const rows = [];
  for (const line of text.split('\\n')) {
    if (!line.startsWith(name + '_bucket{')) continue;
    const m = /\\{(.*)\\} (\\S+)$/.exec(line);
    if (!m) continue;
    const ls = Object.fromEntries([...m[1].matchAll(/(\\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).some(([k, v]) => ls[k] !== v)) continue;
    rows.push({ le: ls.le === '+Inf' ? '+Inf' : Number(ls.le), count: Number(m[2]) });
  }
  return rows.map((r, i) => ({ le: r.le, count: r.count - (i ? rows[i - 1].count : 0) }));
}

function drawHistogram(id, rows) {
  const max = Math.max(1, ...rows.map((r) => r.count));
  const total = rows.reduce((a, r) => a + r.count, 0);
  // Only the buckets around the samples: empty ones below the first and above the last say nothing.
  const first = Math.max(0, rows.findIndex((r) => r.count > 0) - 1);
  let last = rows.length - 1;
  while (last > first && rows[last].count === 0) last--;
  $(id).tBodies[0].innerHTML = total === 0 ? '<tr><td>no samples yet</td></tr>' : rows.slice(first, Math.min(rows.length, last + 2)).filter((r) => r.count > 0 || r.le !== '+Inf')
    .map((r) => '<tr><td>≤ ' + dur(r.le) + '</td><td class="num">' + r.count + '</td><td><span class="bar" style="width:' + (200 * r.count / max).toFixed(0) + 'px"></span></td></tr>').join('');
}

async function refresh() {
  try {
    const [status, devices, health, events, metrics] = await Promise.all([get('/status'), get('/devices'), get('/health'), get('/events'), get('/metrics', true)]);
    $('error').textContent = '';
    $('title').textContent = 'XDevice — ' + status.id;
    $('subtitle').textContent = status.role + ', term ' + status.term + ', leader ' + (status.leader || 'none') + ', commit ' + status.commit + ', applied ' + status.applied + ', up ' + status.uptimeSeconds + ' s';
    const self = '<tr data-member="' + esc(status.id) + '" data-state="up" class="' + (status.leader === status.id ? 'leader' : '') + '"><td>' + esc(status.id) + ' (this node)</td><td>' + esc(status.role) + '</td><td class="up">up</td><td class="num">' + status.applied + '</td><td class="num">0</td><td></td></tr>';
    const peers = status.peers.map((p) => {
      const state = p.connected ? 'up' : 'down';
      const role = p.id === status.leader ? 'leader' : p.voter ? 'voter' : 'learner';
      return '<tr data-member="' + esc(p.id) + '" data-state="' + state + '" class="' + (p.id === status.leader ? 'leader' : '') + '"><td>' + esc(p.id) + ' <span class="sub">' + esc(p.address) + '</span></td><td>' + role + '</td><td class="' + state + '">' + state + '</td><td class="num">' + p.match + '</td><td class="num">' + (status.role === 'leader' ? p.lagEntries : '–') + '</td><td class="num">' + (p.rttMs === undefined ? '' : p.rttMs.toFixed(2) + ' ms') + '</td></tr>';
    });
    $('members').tBodies[0].innerHTML = self + peers.join('');
    $('devices').tBodies[0].innerHTML = devices.devices.map((d) => '<tr data-device="' + esc(d.name) + '"><td>' + esc(d.name) + (d.readOnly ? ' <small>(read-only)</small>' : '') + '</td><td class="num">' + size(d.size) + '</td><td class="num">' + size(d.usedBytes) + '</td><td><span class="bar" style="width:' + Math.max(1, 150 * d.usedBytes / d.size).toFixed(0) + 'px"></span></td></tr>').join('');
    $('health').tBodies[0].innerHTML = health.checks.map((c) => '<tr data-check="' + esc(c.name) + '"><td>' + esc(c.name) + '</td><td class="' + (c.ok ? 'up">ok' : 'down">failing') + '</td><td>' + esc(c.detail) + '</td></tr>').join('');
    drawHistogram('hist-write', histogram(metrics, 'xdevice_nbd_request_duration_seconds', { command: 'write' }));
    drawHistogram('hist-fsync', histogram(metrics, 'xdevice_disk_wal_fsync_duration_seconds', {}));
    $('events').innerHTML = events.events.slice().reverse().map((e) => '<li class="' + e.level + '"><span class="sub">' + esc(e.time.slice(11, 19)) + '</span> ' + esc(e.msg) + ' <span class="sub">' + esc(Object.entries(e.fields).map(([k, v]) => k + '=' + (typeof v === 'object' ? JSON.stringify(v) : v)).join(' ')) + '</span></li>').join('') || '<li class="sub">none yet</li>';
    document.body.dataset.loaded = 'true';
  } catch (err) {
    $('error').textContent = 'cannot read this node: ' + err.message;
    document.body.dataset.loaded = 'error';
  }
}

$('token-form').addEventListener('submit', (e) => { e.preventDefault(); token = $('token').value; sessionStorage.setItem('xdevice-token', token); $('token-form').style.display = 'none'; refresh(); });
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
`;
