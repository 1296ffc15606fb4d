// WAL benchmark: durable 4 KiB appends at 1, 8, 32 and 128 concurrent
// appenders, beside the raw limit of the same filesystem measured in the same
// run (fio: psync, O_DIRECT, 4 KiB write + fdatasync, one writer, over a
// pre-written file as the WAL's zero-filled segments are), plus the worst
// event-loop delay seen while the WAL ran.
//
//   npm run bench:wal [-- --dir /var/tmp/x --seconds 5 --entry-bytes 4096]
//
// --io threads,uring (the default) runs the WAL rows once per native I/O path
// (XDEVICE_IO, src/native.ts), each in a child process of its own since the
// path is chosen at load, against the same raw row. --sync-mode fdatasync
// makes each batch a plain write then fdatasync (the pair the uring path
// links into one submission) instead of the default O_DSYNC write.
// "cpu µs" is the process's user+system CPU (process.cpuUsage: every thread,
// the kernel's io_uring workers included) per acknowledged append; "MiB/s"
// the payload rate; "enter/op" (uring) io_uring_enter calls per append.
//
// --entry-bytes 1048576 shows the large-write path (segment rolls and their
// preallocation); the raw row stays 4 KiB, so only compare rates there.
// --retain-mib N compacts the log as it goes, keeping about N MiB of entries
// (as the runtime does after its checkpoints), so segments get recycled.
//
// "disk B/B" is the disk bytes the process wrote (/proc/self/io write_bytes,
// background segment preparation included) per acknowledged payload byte.
//
// Use a directory on a real disk: tmpfs would measure memory.

import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { mkdirSync, readFileSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Wal } from '../src/wal/wal.ts';
import * as native from '../src/native.ts';
import { nativeDisk } from '../src/disk/native-disk.ts';

const { values } = parseArgs({
  options: {
    dir: { type: 'string', default: process.env.XDEVICE_BENCH_DIR ?? '/var/tmp' },
    seconds: { type: 'string', default: '5' },
    appenders: { type: 'string', default: '1,8,32,128' },
    'entry-bytes': { type: 'string', default: '4096' },
    'retain-mib': { type: 'string' },
    io: { type: 'string', default: 'threads,uring' },
    'sync-mode': { type: 'string', default: 'dsync' },
    /** Internal: run only the WAL rows on this I/O path and print them as JSON. */
    'child-io': { type: 'string' },
  },
});
const syncMode = values['sync-mode'] as 'dsync' | 'fdatasync';
if (syncMode !== 'dsync' && syncMode !== 'fdatasync') throw new Error(`--sync-mode must be dsync or fdatasync, not ${syncMode}`);
const ioPaths = values.io!.split(',');
for (const io of ioPaths) if (io !== 'threads' && io !== 'uring') throw new Error(`--io takes threads and/or uring, not ${io}`);
const seconds = Number(values.seconds);
const levels = values.appenders!.split(',').map(Number);
const root = join(values.dir!, `xdevice-bench-wal-${process.pid}`);
const childIo = values['child-io'];
const entryBytes = Number(values['entry-bytes']);
const retainEntries = values['retain-mib'] === undefined ? undefined : Math.max(1, Math.ceil((Number(values['retain-mib']) * 1024 * 1024) / entryBytes));
const confState = { voters: ['n1'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };

/** Bytes this process has written to block devices so far (undefined where the kernel does not account them). */
function diskWriteBytes(): number | undefined {
  try {
    const m = /^write_bytes: (\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}
const TMPFS_MAGIC = 0x01021994;

interface Row {
  label: string;
  rate: number;
  p50us: number;
  p99us: number;
  loopP99ms?: number;
  loopMaxms?: number;
  /** Disk bytes written per acknowledged payload byte. */
  diskPerByte?: number;
  /** Process CPU (user + system, all threads) per append. */
  cpuUsPerOp?: number;
  /** io_uring_enter calls per append (uring path). */
  entersPerOp?: number;
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function rawLimit(): Promise<Row> {
  const file = join(root, 'raw.dat');
  const bytes = 256 * 1024 * 1024;
  // Written zeros, as a recycled WAL segment's blocks are written: neither pays for extent conversion.
  const f = await nativeDisk.openFile(file, { direct: true, create: true });
  const zeros = nativeDisk.allocAligned(1024 * 1024);
  zeros.fill(0);
  for (let at = 0; at < bytes; at += zeros.length) await nativeDisk.pwrite(f, zeros, at);
  await nativeDisk.fdatasync(f);
  await nativeDisk.closeFile(f);
  const out = execFileSync(
    'fio',
    [
      '--name=raw',
      `--filename=${file}`,
      `--size=${bytes}`,
      '--ioengine=psync',
      '--direct=1',
      '--fdatasync=1',
      '--bs=4k',
      '--rw=write',
      '--overwrite=1',
      '--fallocate=none',
      `--runtime=${seconds}`,
      '--time_based',
      '--output-format=json',
    ],
    { encoding: 'utf8' },
  );
  const job = JSON.parse(out).jobs[0];
  const pct = (o: { percentile?: Record<string, number> }, k: string) => (o.percentile?.[k] ?? NaN) / 1000;
  const write = job.write.clat_ns;
  const sync = job.sync.lat_ns;
  rmSync(file, { force: true });
  return {
    label: 'raw: fio psync 4k write+fdatasync',
    rate: job.write.iops,
    // one operation = one write then one fdatasync
    p50us: pct(write, '50.000000') + pct(sync, '50.000000'),
    p99us: pct(write, '99.000000') + pct(sync, '99.000000'),
  };
}

async function walRun(appenders: number): Promise<Row> {
  const delay = monitorEventLoopDelay({ resolution: 1 });
  const dir = join(root, `wal-${appenders}`);
  const written0 = diskWriteBytes();
  const wal = await Wal.open(dir, { direct: true, syncMode });
  await wal.nextSegmentPrepared();
  const enters0 = native.ioPath().enters;
  const cpu0 = process.cpuUsage();
  const data = Buffer.alloc(entryBytes, 0x5a);
  const latencies = new Float64Array(4_000_000);
  let count = 0;
  let next = wal.lastIndex() + 1;
  let compacting = false;
  const deadline = performance.now() + seconds * 1000;
  const started = performance.now();
  delay.enable();
  await Promise.all(
    Array.from({ length: appenders }, async () => {
      while (performance.now() < deadline) {
        const index = next++;
        const t0 = performance.now();
        await wal.save({ entries: [{ index, term: 1, type: 0, data }] });
        if (retainEntries !== undefined && !compacting && wal.lastIndex() - wal.firstIndex() + 1 > 2 * retainEntries) {
          compacting = true;
          const to = wal.lastIndex() - retainEntries;
          void wal.compact({ index: to, term: 1, confState }).finally(() => (compacting = false));
        }
        if (count < latencies.length) latencies[count] = (performance.now() - t0) * 1000;
        count++;
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const enters1 = native.ioPath().enters;
  delay.disable();
  await wal.close();
  const written1 = diskWriteBytes();
  rmSync(dir, { recursive: true, force: true });
  const sorted = latencies.subarray(0, Math.min(count, latencies.length)).sort();
  return {
    label: `wal ${native.ioPath().path}: ${appenders} appender${appenders === 1 ? '' : 's'}`,
    rate: count / elapsed,
    p50us: percentile(sorted, 50),
    p99us: percentile(sorted, 99),
    // The histogram records whole timer intervals: the 1 ms resolution itself is not delay.
    loopP99ms: Math.max(0, delay.percentile(99) / 1e6 - 1),
    loopMaxms: Math.max(0, delay.max / 1e6 - 1),
    diskPerByte: written0 === undefined || written1 === undefined ? undefined : (written1 - written0) / (count * entryBytes),
    cpuUsPerOp: (cpu.user + cpu.system) / count,
    entersPerOp: enters0 === undefined || enters1 === undefined ? undefined : (enters1 - enters0) / count,
  };
}

/** The WAL rows on one I/O path, from a child process that loaded the addon with XDEVICE_IO=io. */
function walRowsOn(io: string): Row[] {
  const script = fileURLToPath(import.meta.url);
  const args = ['--import=tsx', script, '--dir', values.dir!, '--seconds', values.seconds!, '--appenders', values.appenders!];
  args.push('--entry-bytes', values['entry-bytes']!, '--sync-mode', syncMode, '--child-io', io);
  if (values['retain-mib'] !== undefined) args.push('--retain-mib', values['retain-mib']);
  const child = spawnSync(process.execPath, args, { env: { ...process.env, XDEVICE_IO: io }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  if (child.status !== 0) throw new Error(`the ${io} run failed (exit ${child.status ?? child.signal})`);
  return JSON.parse(child.stdout.trim().split('\n').pop()!) as Row[];
}

async function childMain(io: string): Promise<void> {
  const actual = native.ioPath();
  if (actual.path !== io) throw new Error(`asked for the ${io} path, got ${actual.path}: ${actual.fallbackReason ?? ''}`);
  mkdirSync(root, { recursive: true });
  try {
    const rows: Row[] = [];
    for (const n of levels) rows.push(await walRun(n));
    console.log(JSON.stringify(rows));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  mkdirSync(root, { recursive: true });
  if (statfsSync(root).type === TMPFS_MAGIC) {
    console.error(`${root} is on tmpfs: pass --dir on a real disk`);
    process.exitCode = 2;
    return;
  }
  try {
    const raw = await rawLimit();
    const rows: Row[] = [];
    for (const io of ioPaths) rows.push(...walRowsOn(io));
    const fmt = (n: number, d = 0) => n.toFixed(d).padStart(10);
    console.log(`WAL benchmark: ${entryBytes}-byte entries, ${syncMode}, ${seconds}s per level, dir ${root}, crc32c ${native.crc32cImplementation()}${retainEntries === undefined ? '' : `, compacting to ${retainEntries} entries`}`);
    console.log(`${'run'.padEnd(36)}${'appends/s'.padStart(10)}${'MiB/s'.padStart(10)}${'p50 µs'.padStart(10)}${'p99 µs'.padStart(10)}${'x raw/s'.padStart(10)}${'p50/raw'.padStart(10)}${'cpu µs'.padStart(10)}${'enter/op'.padStart(10)}${'loop p99 ms'.padStart(13)}${'loop max ms'.padStart(13)}${'disk B/B'.padStart(10)}`);
    for (const r of [raw, ...rows]) {
      const mibs = (r.rate * (r === raw ? 4096 : entryBytes)) / (1024 * 1024);
      const opt = (v: number | undefined, d: number, w = 10) => (v === undefined ? '-'.padStart(w) : v.toFixed(d).padStart(w));
      console.log(`${r.label.padEnd(36)}${fmt(r.rate)}${fmt(mibs, 1)}${fmt(r.p50us)}${fmt(r.p99us)}${fmt(r.rate / raw.rate, 2)}${fmt(r.p50us / raw.p50us, 2)}${opt(r.cpuUsPerOp, 1)}${opt(r.entersPerOp, 2)}${opt(r.loopP99ms, 3, 13)}${opt(r.loopMaxms, 3, 13)}${opt(r.diskPerByte, 3)}`);
    }
    const verdict = (ok: boolean) => (ok ? 'holds' : 'MISSED');
    for (const io of ioPaths) {
      const mine = rows.filter((r) => r.label.startsWith(`wal ${io}:`));
      if (mine.length === 0) continue;
      const delayP99ms = Math.max(...mine.map((r) => r.loopP99ms!));
      const delayMaxMs = Math.max(...mine.map((r) => r.loopMaxms!));
      console.log(`${io}: event-loop delay while the WAL ran: worst p99 ${delayP99ms.toFixed(3)} ms, worst max ${delayMaxMs.toFixed(3)} ms`);
      const one = mine.find((r) => r.label.endsWith(': 1 appender'));
      const thirtyTwo = mine.find((r) => r.label.endsWith(': 32 appenders'));
      if (one) console.log(`${io}: target 1 appender p50 <= 1.3x raw p50: ${(one.p50us / raw.p50us).toFixed(2)}x ${verdict(one.p50us <= 1.3 * raw.p50us)}`);
      if (thirtyTwo) console.log(`${io}: target 32 appenders >= 8x raw rate: ${(thirtyTwo.rate / raw.rate).toFixed(2)}x ${verdict(thirtyTwo.rate >= 8 * raw.rate)}`);
      console.log(`${io}: target event-loop delay p99 < 1 ms: ${delayP99ms.toFixed(3)} ms ${verdict(delayP99ms < 1)}`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

if (childIo !== undefined) await childMain(childIo);
else await main();
