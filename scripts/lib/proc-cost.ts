// What a benchmark target costs, read from /proc: CPU time (utime + stime of
// every thread, /proc/PID/stat) and bytes sent to the storage layer
// (/proc/PID/io write_bytes less cancelled_write_bytes: dirty pages truncated
// before writeback never reach the disk), for every process of a target and
// their descendants. Sampled around a fio job after its ramp, so the window
// matches the seconds fio counted operations in.

import { readdirSync, readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import type { ResultRow } from './fio.ts';

export class ProcParseError extends Error {
  override readonly name = 'ProcParseError';
  readonly code = 'XDEVICE_ERR_PROC_PARSE';
}

export interface StatFields {
  pid: number;
  ppid: number;
  /** utime + stime, in clock ticks. */
  cpuTicks: number;
}

const PROC_FIELDS_AFTER_COMM_MIN = 13; // state .. stime

function count(text: string, what: string): number {
  if (!/^\d{1,20}$/.test(text)) throw new ProcParseError(`${what}: not a count: ${JSON.stringify(text.slice(0, 40))}`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new ProcParseError(`${what}: ${text} is out of range`);
  return n;
}

/**
 * /proc/PID/stat: "pid (comm) state ppid ... utime stime ...". comm may hold
 * spaces and parentheses, so the fields are counted from the last ')'.
 */
export function parseStat(text: string): StatFields {
  const open = text.indexOf(' (');
  const close = text.lastIndexOf(')');
  if (open <= 0 || close < open) throw new ProcParseError('stat: no "(comm)"');
  const pid = count(text.slice(0, open), 'stat pid');
  const rest = text.slice(close + 1).trim().split(/\s+/);
  if (rest.length < PROC_FIELDS_AFTER_COMM_MIN) throw new ProcParseError(`stat: ${rest.length} fields after comm`);
  // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
  return { pid, ppid: count(rest[1]!, 'stat ppid'), cpuTicks: count(rest[11]!, 'stat utime') + count(rest[12]!, 'stat stime') };
}

/** /proc/PID/io: the bytes this process caused to be written to storage, less those cancelled. */
export function parseIo(text: string): number {
  const fields = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const m = /^([a-z_]{1,32}): (.*)$/.exec(line);
    if (!m) throw new ProcParseError(`io: bad line ${JSON.stringify(line.slice(0, 60))}`);
    fields.set(m[1]!, count(m[2]!, `io ${m[1]}`));
  }
  const written = fields.get('write_bytes');
  const cancelled = fields.get('cancelled_write_bytes');
  if (written === undefined || cancelled === undefined) throw new ProcParseError('io: write_bytes or cancelled_write_bytes missing');
  return Math.max(0, written - cancelled);
}

let ticksPerSecond: number | undefined;
function clockTicksPerSecond(): number {
  if (ticksPerSecond === undefined) {
    const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim();
    const n = Number(out);
    ticksPerSecond = Number.isSafeInteger(n) && n > 0 ? n : 100;
  }
  return ticksPerSecond;
}

function readStat(pid: number): StatFields | undefined {
  try {
    return parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch (e) {
    if (e instanceof ProcParseError) throw e;
    return undefined; // gone
  }
}

/** The given processes and all their descendants that are alive now. */
export function withDescendants(roots: readonly number[]): number[] {
  const children = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = readStat(Number(name));
    if (!st) continue;
    let list = children.get(st.ppid);
    if (!list) children.set(st.ppid, (list = []));
    list.push(st.pid);
  }
  const out = new Set<number>();
  const stack = [...roots];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    if (out.has(pid)) continue;
    out.add(pid);
    stack.push(...(children.get(pid) ?? []));
  }
  return [...out];
}

export interface ProcessGroup {
  /** A node of the target ("node1 (leader)", "nbdkit"). */
  name: string;
  /** Its root processes; descendants are found at every sample. */
  pids: readonly number[];
}

interface Sample {
  at: number;
  /** per group: pid -> [cpu ticks, write bytes] */
  groups: Map<number, [number, number]>[];
}

function sample(groups: readonly ProcessGroup[]): Sample {
  const at = performance.now();
  return {
    at,
    groups: groups.map((g) => {
      const m = new Map<number, [number, number]>();
      for (const pid of withDescendants(g.pids)) {
        const st = readStat(pid);
        if (!st) continue;
        let io = 0;
        try {
          io = parseIo(readFileSync(`/proc/${pid}/io`, 'utf8'));
        } catch (e) {
          if (e instanceof ProcParseError) throw e;
        }
        m.set(pid, [st.cpuTicks, io]);
      }
      return m;
    }),
  };
}

export interface GroupCost {
  name: string;
  cpuSeconds: number;
  writeBytes: number;
}

export interface CostWindow {
  seconds: number;
  groups: GroupCost[];
}

/**
 * Starts measuring now and restarts after delayMs (the fio ramp); finish()
 * closes the window. A process that appears inside the window counts from 0;
 * one that exits inside it is lost (benchmark targets live throughout).
 */
export function beginCost(groups: readonly ProcessGroup[], delayMs: number): { finish(): CostWindow } {
  let start = sample(groups);
  const timer = setTimeout(() => (start = sample(groups)), delayMs);
  return {
    finish(): CostWindow {
      clearTimeout(timer);
      const end = sample(groups);
      const hz = clockTicksPerSecond();
      return {
        seconds: (end.at - start.at) / 1000,
        groups: groups.map((g, i) => {
          let ticks = 0;
          let bytes = 0;
          for (const [pid, [cpu, io]] of end.groups[i]!) {
            const [cpu0, io0] = start.groups[i]!.get(pid) ?? [0, 0];
            ticks += cpu - cpu0;
            bytes += io - io0;
          }
          return { name: g.name, cpuSeconds: ticks / hz, writeBytes: bytes };
        }),
      };
    },
  };
}

// ---- per-row figures for the benchmark's cost table ----

export function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : '-';
}

export interface RowCost {
  seconds: number;
  /** Operations fio completed in the window (its IOPS over the window). */
  ops: number;
  /** Bytes acknowledged to fio in the window (writes only). */
  ackedBytes: number;
  cpuUsPerOp: number;
  perNode: Array<{ name: string; cpuUsPerOp: number; writeBytesPerAckedByte: number }>;
  writeBytesPerAckedByte: number;
}

/** CPU per operation and disk bytes per acknowledged byte, per node and summed. */
export function costOf(row: ResultRow, cost: CostWindow): RowCost {
  const ops = row.result.iops * cost.seconds;
  const writes = row.scenario.rw.includes('write');
  const ackedBytes = writes ? row.result.bandwidthBytesPerSecond * cost.seconds : 0;
  const perNode = cost.groups.map((g) => ({
    name: g.name,
    cpuUsPerOp: ops > 0 ? (g.cpuSeconds * 1e6) / ops : NaN,
    writeBytesPerAckedByte: ackedBytes > 0 ? g.writeBytes / ackedBytes : NaN,
  }));
  const cpuSeconds = cost.groups.reduce((n, g) => n + g.cpuSeconds, 0);
  const writeBytes = cost.groups.reduce((n, g) => n + g.writeBytes, 0);
  return {
    seconds: cost.seconds,
    ops,
    ackedBytes,
    cpuUsPerOp: ops > 0 ? (cpuSeconds * 1e6) / ops : NaN,
    perNode,
    writeBytesPerAckedByte: ackedBytes > 0 ? writeBytes / ackedBytes : NaN,
  };
}

export function costTable(rows: readonly ResultRow[], costs: ReadonlyMap<ResultRow, CostWindow>): string {
  const lines = [
    '\n| cost | target | IOPS | CPU µs/op (sum) | CPU µs/op per process group | disk B per acked B (sum) | disk B per acked B per group | window s |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const row of rows) {
    const cost = costs.get(row);
    if (!cost) continue;
    const c = costOf(row, cost);
    const per = (f: (n: RowCost['perNode'][number]) => number, digits: number) => c.perNode.map((n) => `${n.name} ${fixed(f(n), digits)}`).join(', ');
    lines.push(
      `| ${row.scenario.id} ${row.scenario.title} | ${row.target} | ${fixed(row.result.iops, 0)} | ${fixed(c.cpuUsPerOp, 0)} | ${per((n) => n.cpuUsPerOp, 0)} | ${fixed(c.writeBytesPerAckedByte, 2)} | ${per((n) => n.writeBytesPerAckedByte, 2)} | ${c.seconds.toFixed(1)} |`,
    );
  }
  lines.push(
    '',
    'CPU: utime+stime of every process of the target (/proc/PID/stat, 10 ms ticks); disk: write_bytes - cancelled_write_bytes (/proc/PID/io),',
    'both over the job after its ramp; an op of e is 1 MiB. A buffered writer is charged when a page first becomes dirty: rewriting a',
    'page that is still dirty costs nothing there, so the figure of a page-cache writer (nbdkit, device files) is a lower bound, except',
    'that the whole folio a write first dirties is charged: a 4 KiB write into a large folio left by a sequential write (the fill, e)',
    'counts up to the folio (seen here: 3-node 4k rows after the fill at ~100 per node while /proc/diskstats showed a small fraction).',
  );
  return lines.join('\n');
}

