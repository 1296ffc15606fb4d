// Power cuts at every step of segment recycling, on the simulated disk
// (test/sim/sim-disk.ts: unsynced sectors and directory changes may be lost).
//
// The pooled files are made as dangerous as they can be: every batch in them
// is rewritten (still valid under the file's old salt) to hold entries at
// indexes just past the live log, and batches of equal size put old batch k
// exactly where the new segment's batch k goes, with the sequence number the
// scan expects there. Then a fixed run of saves rolls into both recycled files
// and a fresh one, and it is cut off after each of its disk events in turn.
// After every cut, recovery must give exactly the log of the saves that
// resolved (plus, at most, the one in flight), never an old entry, and the
// recovered log must take and keep new saves.
//
// Replay: XDEVICE_SEED=<seed> npx tap test/unit/wal-recycle-crash.test.ts

import t from 'tap';
import type { DiskIo } from '../../src/disk/disk-io.ts';
import { crc32c } from '../../src/native.ts';
import type { Entry, HardState } from '../../src/raft/types.ts';
import { decodeRecord, encodeBatchHeader, encodeRecord, RecordKind } from '../../src/wal/record.ts';
import { decodeSegmentHeader } from '../../src/wal/segment.ts';
import { Wal, type WalOptions } from '../../src/wal/wal.ts';
import { Prng } from '../sim/prng.ts';
import { SimDisk } from '../sim/sim-disk.ts';
import { StepScheduler } from '../sim/step-scheduler.ts';
import { entry } from './wal-helpers.ts';

const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
console.log(`# XDEVICE_SEED=${seed}`);

const dir = '/n1/wal';
const confState = { voters: ['n1'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };
const payloadBytes = 1400;
/** Sequential saves after the setup: three rolls at nine saves a segment. */
const phaseSaves = 30;

interface Run {
  disk: SimDisk;
  sched: StepScheduler;
  options: (io: DiskIo) => WalOptions;
  /** The model after each save of the phase: log[i] = entries 1.. of the log after i saves (index from snapshot + 1). */
  saveEntry: (i: number) => Entry;
  hardStateAfter: (i: number) => HardState;
  /** Last index when the phase starts; snapshot index. */
  base: number;
  snapshot: number;
}

/** Rewrites every batch of a pooled file to hold entries past `from` at term 99, valid under the file's own salt. */
async function forgeHigherIndexes(disk: SimDisk, sched: StepScheduler, path: string, from: number): Promise<number> {
  const io = disk.io();
  const buf = await sched.run(io.readFile(path));
  const h = decodeSegmentHeader(buf, crc32c);
  if (!h.ok) throw new Error(`pooled file ${path}: ${h.why}`);
  const { salt, alignment } = h.header;
  let forged = 0;
  let next = from;
  for (let at = alignment; at + 32 <= buf.length; at += alignment) {
    const head = decodeRecord(buf, at, buf.length, salt, crc32c);
    if (head.status !== 'ok' || head.record.kind !== RecordKind.Batch) continue;
    const limit = at + head.record.term;
    let off = head.record.end;
    for (let i = 0; i < head.record.aux; i++) {
      const r = decodeRecord(buf, off, limit, salt, crc32c);
      if (r.status !== 'ok') break;
      const spec = { kind: r.record.kind, type: r.record.type, term: r.record.term, index: r.record.index, payload: Buffer.from(r.record.payload) };
      if (r.record.kind === RecordKind.Entry) {
        spec.index = next++;
        spec.term = 99;
        forged++;
      } else if (r.record.kind === RecordKind.HardState) {
        spec.term = 99;
        spec.index = next - 1;
      }
      off = encodeRecord(buf, off, spec, salt, crc32c);
    }
    encodeBatchHeader(buf, at, head.record.term, head.record.index, head.record.aux, salt, crc32c);
  }
  const f = await sched.run(io.openFile(path));
  await sched.run(io.pwrite(f, buf, 0));
  await sched.run(io.fdatasync(f));
  await sched.run(io.closeFile(f));
  return forged;
}

async function setup(syncMode: 'dsync' | 'fdatasync', diskSeed: number): Promise<Run> {
  const sched = new StepScheduler();
  const disk = new SimDisk({ seed: diskSeed, scheduler: sched });
  const saltPrng = new Prng(diskSeed ^ 0x5a5a);
  // 16 KiB segments, 512-byte blocks: a save of one entry and a hard state is three blocks, nine saves a segment.
  const options = (io: DiskIo): WalOptions => ({
    disk: io,
    defer: (fn) => sched.after(0, fn),
    salt: () => saltPrng.range(1, 0xffff_fffe),
    segmentBytes: 16 * 1024,
    alignmentBytes: 512,
    batchBytesMax: 8 * 1024,
    recycledSegments: 2,
    syncMode,
    direct: true,
  });
  const wal = await sched.run(Wal.open(dir, options(disk.io())));
  const hs = (i: number): HardState => ({ term: 1, vote: 'n1', commit: i });
  for (let i = 1; i <= 45; i++) await sched.run(wal.save({ entries: [entry(i, 1, payloadBytes)], hardState: hs(i) }));
  await sched.run(wal.compact({ index: 30, term: 1, confState }));
  await sched.run(wal.nextSegmentPrepared());
  const counts = wal.recycleCounts();
  if (counts.pooled !== 2) throw new Error(`setup: expected two pooled files, got ${JSON.stringify(counts)}`);
  await sched.run(wal.close());
  const pooled = (await sched.run(disk.io().readdir(dir))).filter((n) => n.startsWith('recycled-')).sort();
  let forged = 0;
  for (const name of pooled) forged += await forgeHigherIndexes(disk, sched, `${dir}/${name}`, 46);
  if (forged === 0) throw new Error('setup: nothing forged');
  return {
    disk,
    sched,
    options,
    saveEntry: (i) => entry(45 + i, 1, payloadBytes),
    hardStateAfter: (i) => hs(45 + i),
    base: 45,
    snapshot: 30,
  };
}

/** Runs the phase, crashing after `cut` scheduler events (Infinity: no crash). Saves resolved, saves submitted, events run. */
async function phase(run: Run, cut: number, onCrash?: (names: string[]) => void): Promise<{ resolved: number; submitted: number; events: number }> {
  const { sched, disk } = run;
  const wal = await sched.run(Wal.open(dir, run.options(disk.io())));
  let events = 0;
  let resolved = 0;
  let submitted = 0;
  for (let i = 1; i <= phaseSaves; i++) {
    let done = false;
    submitted = i;
    wal.save({ entries: [run.saveEntry(i)], hardState: run.hardStateAfter(i) }).then(
      () => ((done = true), (resolved = i)),
      (err: unknown) => {
        throw err;
      },
    );
    while (!done) {
      if (events >= cut) {
        onCrash?.(await namesNow(run));
        disk.crash();
        return { resolved, submitted, events };
      }
      if (!(await sched.step())) throw new Error('phase: hangs');
      events++;
    }
  }
  await sched.run(wal.close());
  return { resolved, submitted, events };
}

async function namesNow(run: Run): Promise<string[]> {
  // readdir shows the names as they are now, synced or not: a hint of which recycling step was cut.
  return (await run.sched.run(run.disk.io().readdir(dir))).sort();
}

/** The recovered log is exactly the setup's plus `saves` saves of the phase. */
function logIs(wal: Wal, run: Run, saves: number): string | undefined {
  const last = run.base + saves;
  if (wal.firstIndex() !== run.snapshot + 1) return `first index ${wal.firstIndex()}`;
  if (wal.lastIndex() !== last) return `last index ${wal.lastIndex()}, expected ${last}`;
  const hs = wal.hardState();
  if (hs.term !== 1 || hs.commit !== last) return `hard state ${JSON.stringify(hs)}`;
  const got = wal.entries(run.snapshot + 1, last + 1, Number.MAX_SAFE_INTEGER);
  for (const e of got) {
    const want = e.index <= run.base ? entry(e.index, 1, payloadBytes) : run.saveEntry(e.index - run.base);
    if (e.term !== want.term || e.type !== want.type || !e.data.equals(want.data)) return `entry ${e.index} is not what was saved (term ${e.term})`;
  }
  return undefined;
}

for (const syncMode of ['dsync', 'fdatasync'] as const) {
  t.test(`${syncMode}: a power cut at every disk event of rolling into recycled files recovers exactly the saved log`, async (t) => {
    const diskSeed = seed + (syncMode === 'dsync' ? 0 : 1);
    const full = await setup(syncMode, diskSeed);
    const whole = await phase(full, Number.POSITIVE_INFINITY);
    t.equal(whole.resolved, phaseSaves, 'without a cut every save resolves');
    const check = await full.sched.run(Wal.open(dir, full.options(full.disk.io())));
    t.equal(logIs(check, full, phaseSaves), undefined, 'and reads back');
    t.equal(check.segmentNames().length >= 3, true, 'over several segments');
    await full.sched.run(check.close());

    const failures: string[] = [];
    const cutAt = { preparing: 0, rolled: 0 };
    const stride = Number(process.env.XDEVICE_CUT_STRIDE ?? 1);
    for (let cut = 0; cut < whole.events; cut += stride) {
      const run = await setup(syncMode, diskSeed);
      const r = await phase(run, cut, (names) => {
        if (names.includes('next-segment.tmp')) cutAt.preparing++;
        if (names.filter((n) => n.startsWith('recycled-')).length < 2) cutAt.rolled++;
      });
      let wal: Wal;
      try {
        wal = await run.sched.run(Wal.open(dir, run.options(run.disk.io())));
      } catch (err) {
        failures.push(`cut ${cut}: recovery threw ${(err as Error).message}`);
        continue;
      }
      const exact = logIs(wal, run, r.resolved);
      const withInFlight = r.submitted > r.resolved ? logIs(wal, run, r.submitted) : exact;
      if (exact !== undefined && withInFlight !== undefined) {
        failures.push(`cut ${cut} (${r.resolved} resolved, ${r.submitted} submitted): ${exact}`);
        continue;
      }
      // The recovered log takes new saves and keeps them across another reopen.
      const have = wal.lastIndex() - run.base;
      for (let i = have + 1; i <= Math.min(phaseSaves, have + 10); i++) {
        await run.sched.run(wal.save({ entries: [run.saveEntry(i)], hardState: run.hardStateAfter(i) }));
      }
      const after = wal.lastIndex() - run.base;
      await run.sched.run(wal.close());
      const again = await run.sched.run(Wal.open(dir, run.options(run.disk.io())));
      const problem = logIs(again, run, after);
      if (problem) failures.push(`cut ${cut}, saves after recovery: ${problem}`);
      await run.sched.run(again.close());
    }
    t.same(failures, [], `${Math.ceil(whole.events / stride)} cuts over ${whole.events} disk events`);
    t.ok(cutAt.preparing > 0 && cutAt.rolled > 0, `cuts fell while a recycled file was being prepared (${cutAt.preparing}) and after one was taken (${cutAt.rolled})`);
  });
}
