// Reads V8 .cpuprofile files (node --cpu-prof) and says where the time went:
// self time per function and per source file, and the share spent in GC,
// idle and native code. Enough to point at a hot path without a GUI.

import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileLine {
  name: string;
  selfMs: number;
  /** Share of the non-idle time. */
  share: number;
}

export interface ProfileSummary {
  file: string;
  wallMs: number;
  idleMs: number;
  busyMs: number;
  gcMs: number;
  functions: ProfileLine[];
  files: ProfileLine[];
}

function where(url: string, root: string): string {
  if (url === '') return '(native)';
  const path = url.startsWith('file://') ? new URL(url).pathname : url;
  if (path.startsWith('node:')) return path;
  const rel = relative(root, path);
  return rel.startsWith('..') ? path : rel;
}

/** Self time per function and per file of one profile, busiest first. */
export function summarizeProfile(file: string, root: string, top = 25): ProfileSummary {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  // timeDeltas[i] is the time since sample i-1; it belongs to sample i.
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + Math.max(0, profile.timeDeltas[i] ?? 0));
  }
  const perFunction = new Map<string, number>();
  const perFile = new Map<string, number>();
  let idle = 0;
  let gc = 0;
  let total = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const { functionName, url, lineNumber } = node.callFrame;
    total += us;
    if (functionName === '(idle)') {
      idle += us;
      continue;
    }
    if (functionName === '(garbage collector)') gc += us;
    const file = functionName.startsWith('(') ? functionName : where(url, root);
    const name = functionName.startsWith('(') ? functionName : `${functionName || '(anonymous)'} ${file}:${lineNumber + 1}`;
    perFunction.set(name, (perFunction.get(name) ?? 0) + us);
    perFile.set(file, (perFile.get(file) ?? 0) + us);
  }
  const busy = total - idle;
  const lines = (m: Map<string, number>): ProfileLine[] =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, selfMs: us / 1000, share: busy > 0 ? us / busy : 0 }));
  return {
    file,
    wallMs: (profile.endTime - profile.startTime) / 1000,
    idleMs: idle / 1000,
    busyMs: busy / 1000,
    gcMs: gc / 1000,
    functions: lines(perFunction),
    files: lines(perFile),
  };
}

export function formatProfile(s: ProfileSummary): string {
  const pct = (x: number): string => `${(x * 100).toFixed(1)}%`;
  const out = [
    `${s.file}: wall ${s.wallMs.toFixed(0)} ms, busy ${s.busyMs.toFixed(0)} ms (${pct(s.busyMs / Math.max(s.wallMs, 1))}), GC ${s.gcMs.toFixed(0)} ms`,
    '  by file (self time):',
    ...s.files.slice(0, 12).map((l) => `    ${pct(l.share).padStart(6)}  ${l.selfMs.toFixed(0).padStart(7)} ms  ${l.name}`),
    '  by function (self time):',
    ...s.functions.map((l) => `    ${pct(l.share).padStart(6)}  ${l.selfMs.toFixed(0).padStart(7)} ms  ${l.name}`),
  ];
  return out.join('\n');
}
