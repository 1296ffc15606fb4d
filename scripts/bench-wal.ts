// WAL benchmark: durable 4 KiB appends at 1, 8, 32 and 128 concurrent
// appenders, beside the raw limit of the same filesystem measured in the same
// run (fio: psync, O_DIRECT, 4 KiB write + fdatasync, one writer, over a
// pre-written file as the WAL's zero-filled segments are), plus the worst
// event-loop delay seen while the WAL ran.
//
//   npm run bench:wal [-- --dir /var/tmp/x --seconds 5 --entry-bytes 4096]
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

import { execFileSync } from 'node:child_process';
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
  },
});
const seconds = Number(values.seconds);
const levels = values.appenders!.split(',').map(Number);
const root = join(values.dir!, `xdevice-bench-wal-${process.pid}`);
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
  const wal = await Wal.open(dir, { direct: true });
  await wal.nextSegmentPrepared();
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
  delay.disable();
  await wal.close();
  const written1 = diskWriteBytes();
  rmSync(dir, { recursive: true, force: true });
  const sorted = latencies.subarray(0, Math.min(count, latencies.length)).sort();
  return {
    label: `wal: ${appenders} appender${appenders === 1 ? '' : 's'}`,
    rate: count / elapsed,
    p50us: percentile(sorted, 50),
    p99us: percentile(sorted, 99),
    // The histogram records whole timer intervals: the 1 ms resolution itself is not delay.
    loopP99ms: Math.max(0, delay.percentile(99) / 1e6 - 1),
    loopMaxms: Math.max(0, delay.max / 1e6 - 1),
    diskPerByte: written0 === undefined || written1 === undefined ? undefined : (written1 - written0) / (count * entryBytes),
  };
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
    for (const n of levels) rows.push(await walRun(n));
    const fmt = (n: number, d = 0) => n.toFixed(d).padStart(10);
    console.log(`WAL benchmark: ${entryBytes}-byte entries, ${seconds}s per level, dir ${root}, crc32c ${native.crc32cImplementation()}${retainEntries === undefined ? '' : `, compacting to ${retainEntries} entries`}`);
    console.log(`${'run'.padEnd(36)}${'appends/s'.padStart(10)}${'p50 µs'.padStart(10)}${'p99 µs'.padStart(10)}${'x raw/s'.padStart(10)}${'p50/raw'.padStart(10)}${'loop p99 ms'.padStart(13)}${'loop max ms'.padStart(13)}${'disk B/B'.padStart(10)}`);
    for (const r of [raw, ...rows]) {
      console.log(`${r.label.padEnd(36)}${fmt(r.rate)}${fmt(r.p50us)}${fmt(r.p99us)}${fmt(r.rate / raw.rate, 2)}${fmt(r.p50us / raw.p50us, 2)}${r.loopP99ms === undefined ? '' : (r.loopP99ms.toFixed(3).padStart(13) + r.loopMaxms!.toFixed(3).padStart(13))}${r.diskPerByte === undefined ? '' : r.diskPerByte.toFixed(3).padStart(10)}`);
    }
    const delayP99ms = Math.max(...rows.map((r) => r.loopP99ms!));
    const delayMaxMs = Math.max(...rows.map((r) => r.loopMaxms!));
    console.log(`event-loop delay while the WAL ran: worst p99 ${delayP99ms.toFixed(3)} ms, worst max ${delayMaxMs.toFixed(3)} ms`);
    const one = rows.find((r) => r.label.startsWith('wal: 1 '));
    const thirtyTwo = rows.find((r) => r.label.startsWith('wal: 32 '));
    const verdict = (ok: boolean) => (ok ? 'holds' : 'MISSED');
    if (one) console.log(`target 1 appender p50 <= 1.3x raw p50: ${(one.p50us / raw.p50us).toFixed(2)}x ${verdict(one.p50us <= 1.3 * raw.p50us)}`);
    if (thirtyTwo) console.log(`target 32 appenders >= 8x raw rate: ${(thirtyTwo.rate / raw.rate).toFixed(2)}x ${verdict(thirtyTwo.rate >= 8 * raw.rate)}`);
    console.log(`target event-loop delay p99 < 1 ms: ${delayP99ms.toFixed(3)} ms ${verdict(delayP99ms < 1)}`);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

await main();
