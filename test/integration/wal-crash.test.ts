// Crash safety of group commit: a child appends with many concurrent
// appenders and reports every index whose save resolved; we SIGKILL it at a
// random moment, reopen the WAL, and require every reported index to be
// there, intact, with the term of the incarnation that reported it.
// Seeded: XDEVICE_SEED replays the same kill schedule.

import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Entry } from '../../src/raft/types.ts';
import { Wal } from '../../src/wal/wal.ts';
import { crashEntry, crashWalOptions } from './wal-crash-shared.ts';

const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
console.log(`# XDEVICE_SEED=${seed}`);
const cycles = Number(process.env.XDEVICE_WAL_CRASH_CYCLES ?? 50);
const child = fileURLToPath(new URL('./wal-crash-child.ts', import.meta.url));

let state = seed >>> 0 || 1;
function random(n: number): number {
  state ^= state << 13;
  state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5;
  state >>>= 0;
  return state % n;
}

interface CycleResult {
  reported: number[];
  ready: boolean;
}

function runChild(dir: string, term: number, appenders: number, killAfterMs: number, killBeforeReady: boolean): Promise<CycleResult> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['--import=tsx', child, dir, String(term), String(appenders)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const reported: number[] = [];
    let ready = false;
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    const kill = () => proc.kill('SIGKILL');
    if (killBeforeReady) timer = setTimeout(kill, killAfterMs);
    proc.stderr.on('data', (d) => (stderr += String(d)));
    createInterface({ input: proc.stdout }).on('line', (line) => {
      if (line.startsWith('ready')) {
        ready = true;
        if (!killBeforeReady) timer = setTimeout(kill, killAfterMs);
        return;
      }
      reported.push(Number(line));
    });
    const watchdog = setTimeout(kill, 60_000);
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(watchdog);
      // give readline the last buffered lines
      setImmediate(() => {
        if (signal !== 'SIGKILL') reject(new Error(`child exited with ${code} ${signal}: ${stderr}`));
        else resolve({ reported, ready });
      });
    });
  });
}

t.test(`${cycles} SIGKILLs during concurrent appends lose nothing acknowledged`, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-wal-crash-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const acknowledged = new Map<number, number>(); // index -> term that reported it
  let kills = 0;
  let totalReported = 0;
  let verified = 0;
  let checkedThrough = 0;
  const cache = new Map<string, Entry>();
  const expected = (index: number, term: number): Entry => {
    const key = `${index}:${term}`;
    let e = cache.get(key);
    if (!e) cache.set(key, (e = crashEntry(index, term)));
    return e;
  };
  for (let term = 1; term <= cycles; term++) {
    const appenders = [1, 8, 32, 128][random(4)]!;
    const killBeforeReady = random(10) === 0;
    const killAfterMs = killBeforeReady ? random(400) : 5 + random(250);
    const { reported } = await runChild(dir, term, appenders, killAfterMs, killBeforeReady);
    kills++;
    totalReported += reported.length;
    for (const index of reported) acknowledged.set(index, term);

    const wal = await Wal.open(dir, crashWalOptions);
    let missing = 0;
    let damaged = 0;
    for (const [index, reportedTerm] of acknowledged) {
      if (index > wal.lastIndex() || index < wal.firstIndex()) {
        missing++;
        continue;
      }
      const [e] = wal.entries(index, index + 1, Number.MAX_SAFE_INTEGER);
      const want = expected(index, reportedTerm);
      if (!e || e.term !== want.term || e.type !== want.type || !e.data.equals(want.data)) damaged++;
    }
    // Every entry this incarnation left, reported or not, must be one it wrote.
    let foreign = 0;
    const from = Math.max(wal.firstIndex(), checkedThrough + 1);
    for (const e of wal.entries(from, wal.lastIndex() + 1, Number.MAX_SAFE_INTEGER)) {
      if (e.term < 1 || e.term > term || !e.data.equals(expected(e.index, e.term).data)) foreign++;
    }
    const hs = wal.hardState();
    const lastIndex = wal.lastIndex();
    if (missing + damaged + foreign > 0 || hs.commit > lastIndex) {
      await wal.close();
      t.fail(`cycle ${term} (XDEVICE_SEED=${seed}): missing ${missing}, damaged ${damaged}, foreign ${foreign}, commit ${hs.commit} last ${lastIndex}`);
      return;
    }
    checkedThrough = lastIndex;
    verified += acknowledged.size;
    // Keep the log (and the work of each check) bounded: compact what was
    // verified, as a checkpoint would. Crashes then also hit deleted segments.
    if (lastIndex - wal.firstIndex() > 2000) {
      const through = lastIndex - 500;
      await wal.compact({ index: through, term: wal.term(through), confState: { voters: ['a'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } });
      for (const index of acknowledged.keys()) if (index <= through) acknowledged.delete(index);
      for (const key of cache.keys()) if (Number(key.split(':')[0]) <= through) cache.delete(key);
    }
    await wal.close();
  }
  t.equal(kills, cycles, 'every cycle ended in SIGKILL');
  t.ok(totalReported > cycles, `${totalReported} acknowledged appends checked after every crash`);
  t.ok(verified >= totalReported, `${verified} index checks`);
});
