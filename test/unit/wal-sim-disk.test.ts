// The real WAL and the real block store on the simulated disk
// (test/sim/sim-disk.ts): saves, overwrites and compactions under latency,
// failed and torn writes, failed fdatasyncs and power cuts at random points
// (mid group commit, mid segment roll, mid recovery), then reopen and check:
//   - recovery never throws on what a crash or a fault left;
//   - the log is exactly what some prefix of the submitted operations made it
//     (no holes, no garbage records), a prefix that holds every operation
//     whose promise resolved.
// Compaction recycles segment files (a pool of 0 to 3), so later segments
// start in files full of older, once-valid batches.
// Then the block store: writes applied and checkpointed survive a crash.
//
// Replay one seed: XDEVICE_SEED=<seed> XDEVICE_SEEDS=1 npx tap ... test/unit/wal-sim-disk.test.ts

import t from 'tap';
import { pino } from 'pino';
import { BlockStore } from '../../src/device/block-store.ts';
import { encodeCreateDevice, encodeWrite, type RequestId } from '../../src/device/commands.ts';
import { readCheckpoint } from '../../src/device/checkpoint.ts';
import type { DiskIo } from '../../src/disk/disk-io.ts';
import { EntryType, type Entry, type HardState } from '../../src/raft/types.ts';
import { Wal, type WalOptions } from '../../src/wal/wal.ts';
import { WalFailedError } from '../../src/wal/errors.ts';
import { Prng } from '../sim/prng.ts';
import { SimDisk } from '../sim/sim-disk.ts';
import { StepScheduler } from '../sim/step-scheduler.ts';
import { entry } from './wal-helpers.ts';
import { decodeRecord, recordHeaderBytes, RecordKind } from '../../src/wal/record.ts';
import { crc32c } from '../../src/native.ts';

const baseSeed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
const seedCount = Number(process.env.XDEVICE_SEEDS ?? 300);
console.log(`# XDEVICE_SEED=${baseSeed} XDEVICE_SEEDS=${seedCount}`);

/** What the log holds: the state a prefix of the operations leaves. */
interface LogModel {
  snapshotIndex: number;
  snapshotTerm: number;
  /** entries[i] has index snapshotIndex + 1 + i. */
  entries: Entry[];
  hardState: HardState;
}

const cloneModel = (m: LogModel): LogModel => ({ ...m, entries: [...m.entries], hardState: { ...m.hardState } });
const lastIndex = (m: LogModel): number => m.snapshotIndex + m.entries.length;
const termAt = (m: LogModel, i: number): number => (i === m.snapshotIndex ? m.snapshotTerm : m.entries[i - m.snapshotIndex - 1]!.term);

function modelOf(wal: Wal): LogModel {
  const snap = wal.snapshotMetadata();
  return {
    snapshotIndex: snap.index,
    snapshotTerm: snap.term,
    entries: wal.lastIndex() > snap.index ? wal.entries(snap.index + 1, wal.lastIndex() + 1, Number.MAX_SAFE_INTEGER) : [],
    hardState: wal.hardState(),
  };
}

function sameModel(a: LogModel, b: LogModel): boolean {
  if (a.snapshotIndex !== b.snapshotIndex || a.snapshotTerm !== b.snapshotTerm || a.entries.length !== b.entries.length) return false;
  if (a.hardState.term !== b.hardState.term || a.hardState.vote !== b.hardState.vote || a.hardState.commit !== b.hardState.commit) return false;
  return a.entries.every((e, i) => {
    const f = b.entries[i]!;
    return e.index === f.index && e.term === f.term && e.type === f.type && e.data.equals(f.data);
  });
}

const describe = (m: LogModel) => `snapshot ${m.snapshotIndex}@${m.snapshotTerm}, last ${lastIndex(m)}, commit ${m.hardState.commit}, term ${m.hardState.term}`;

/** For a trace: every record of every valid batch of every segment. */
async function dumpSegments(disk: SimDisk, sched: StepScheduler, dir: string, trace: (line: string) => void): Promise<void> {
  const io = disk.io();
  for (const name of (await sched.run(io.readdir(dir))).sort()) {
    const buf = await sched.run(io.readFile(`${dir}/${name}`));
    const salt = buf.length >= 64 ? buf.readUInt32LE(32) : 0;
    const alignment = buf.length >= 64 ? buf.readUInt32LE(36) : 512;
    const lines: string[] = [];
    for (let at = alignment; at + recordHeaderBytes <= buf.length; at += alignment) {
      const h = decodeRecord(buf, at, buf.length, salt, crc32c);
      if (h.status !== 'ok' || h.record.kind !== RecordKind.Batch) continue;
      const rs: string[] = [];
      let off = h.record.end;
      for (let i = 0; i < h.record.aux; i++) {
        const r = decodeRecord(buf, off, at + h.record.term, salt, crc32c);
        if (r.status !== 'ok') {
          rs.push('BAD');
          break;
        }
        rs.push(`${RecordKind[r.record.kind]}:${r.record.index}@${r.record.term}`);
        off = r.record.end;
      }
      lines.push(`  @${at} batch ${h.record.index}: ${rs.join(' ')}`);
    }
    trace(`segment ${name} (${buf.length} bytes)\n${lines.join('\n')}`);
  }
}

interface RunStats {
  saves: number;
  resolved: number;
  crashes: number;
  recoveries: number;
  compactions: number;
  /** Segments started in a recycled file (segment recycling, recycle.ts). */
  recycled: number;
}

async function runSeed(seed: number, stats: RunStats): Promise<string | undefined> {
  const prng = new Prng(seed);
  const sched = new StepScheduler();
  const faultRates = {
    writeEio: prng.chance(0.5) ? 0.003 : 0,
    tornWrite: prng.chance(0.5) ? 0.005 : 0,
    syncEio: prng.chance(0.5) ? 0.003 : 0,
  };
  const trace = process.env.XDEVICE_TRACE === '2' ? (line: string) => console.log(`${sched.now} ${line}`) : undefined;
  const disk = new SimDisk({ seed: prng.next(), scheduler: sched, faults: faultRates, trace });
  const saltPrng = prng.fork();
  const alignmentBytes = prng.pick([512, 4096]);
  const config = {
    // A save may take a segment less four alignment blocks: at least 14 KiB here.
    segmentBytes: prng.pick(alignmentBytes === 512 ? [16, 32, 64] : [32, 64]) * 1024,
    alignmentBytes,
    batchBytesMax: 8 * 1024,
    syncMode: prng.pick(['dsync', 'fdatasync'] as const),
    direct: true,
    recycledSegments: prng.pick([0, 1, 2, 3]),
  };
  const options = (io: DiskIo): WalOptions => ({
    disk: io,
    defer: (fn) => sched.after(0, fn),
    salt: () => saltPrng.range(1, 0xffff_fffe),
    ...config,
  });
  const dir = '/n1/wal';
  if (process.env.XDEVICE_TRACE) console.log(`# seed ${seed}: faults ${JSON.stringify(faultRates)} ${JSON.stringify(config)}`);

  // Opens with faults off (recovery writes too, and an EIO there is not what this checks), sometimes crashing mid-way.
  const reopen = async (): Promise<Wal> => {
    for (;;) {
      const saved = { ...disk.faults };
      Object.assign(disk.faults, { writeEio: 0, tornWrite: 0, syncEio: 0 });
      const opening = Wal.open(dir, options(disk.io()));
      let crashAfter = prng.chance(0.2) ? prng.range(1, 40) : Number.POSITIVE_INFINITY;
      let done = false;
      let failure: unknown;
      let wal: Wal | undefined;
      opening.then(
        (w) => ((wal = w), (done = true)),
        (err: unknown) => ((failure = err), (done = true)),
      );
      while (!done && crashAfter-- > 0) if (!(await sched.step())) break;
      Object.assign(disk.faults, saved);
      if (failure !== undefined && trace) await dumpSegments(disk, sched, dir, trace);
      if (failure !== undefined) throw new Error(`recovery threw: ${(failure as Error).stack}`);
      if (wal) return wal;
      if (crashAfter > 0) throw new Error('recovery hangs');
      stats.crashes++;
      disk.crash();
    }
  };

  let wal = await reopen();
  let base = modelOf(wal);
  for (let round = 0; round < 6; round++) {
    // The operations of this incarnation, each with the model after it.
    const after: LogModel[] = [base];
    let lastResolved = 0;
    let model = cloneModel(base);
    let term = Math.max(1, model.hardState.term);
    let misuse: string | undefined;
    const submit = (p: Promise<void>): void => {
      const at = after.length;
      after.push(cloneModel(model));
      p.then(
        () => {
          stats.resolved++;
          lastResolved = Math.max(lastResolved, at);
        },
        (err: unknown) => {
          // Only I/O failures (and what follows them) are expected: anything else means the model and the WAL parted.
          // (compact() passes on a failed directory fsync of its segment deletion as it is.)
          const io = err instanceof WalFailedError || (err as { code?: string }).code === 'EIO';
          if (!io) misuse ??= `operation ${at} refused: ${(err as Error).message}`;
        },
      );
    };
    const actions = prng.range(5, 120);
    for (let a = 0; a < actions; a++) {
      const r = prng.next() / 2 ** 32;
      if (r < 0.45) {
        // Append (sometimes overwriting an uncommitted suffix at a new term), with a hard state.
        const last = lastIndex(model);
        const overwrite = last > model.hardState.commit && prng.chance(0.15);
        const first = overwrite ? prng.range(Math.max(model.hardState.commit, model.snapshotIndex) + 1, last) : last + 1;
        if (overwrite) term++;
        const count = prng.range(0, 6);
        const es: Entry[] = [];
        // At most 6 entries of 1500 bytes: a save fits the smallest segment (16 KiB less 4 alignment blocks).
        for (let i = 0; i < count; i++) es.push(entry(first + i, term, prng.range(0, 1500)));
        if (overwrite && count === 0) es.push(entry(first, term, 10));
        const newLast = es.length > 0 ? first + es.length - 1 : last;
        const hs: HardState = { term, vote: 'n1', commit: prng.range(model.hardState.commit, Math.max(model.hardState.commit, Math.min(newLast, model.hardState.commit + 5))) };
        if (es.length > 0) model.entries = [...model.entries.slice(0, first - model.snapshotIndex - 1), ...es];
        model.hardState = hs;
        stats.saves++;
        trace?.(`save ${after.length}: entries ${es.length > 0 ? `${first}..${newLast}@${term}` : 'none'}, commit ${hs.commit}`);
        submit(wal.save({ entries: es, hardState: hs }));
      } else if (r < 0.5 && model.hardState.commit > model.snapshotIndex) {
        const index = prng.range(model.snapshotIndex + 1, model.hardState.commit);
        const snapshotTerm = termAt(model, index);
        model.entries = model.entries.slice(index - model.snapshotIndex);
        model.snapshotIndex = index;
        model.snapshotTerm = snapshotTerm;
        stats.compactions++;
        trace?.(`compact ${after.length}: to ${index}@${snapshotTerm}`);
        submit(wal.compact({ index, term: snapshotTerm, confState: { voters: ['n1'], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false } }));
      } else {
        for (let s = prng.range(1, 6); s > 0; s--) if (!(await sched.step())) break;
      }
    }
    // Sometimes let everything finish first; otherwise the plug is pulled mid-flight.
    if (prng.chance(0.3)) await sched.drain();
    else for (let s = prng.range(0, 30); s > 0; s--) if (!(await sched.step())) break;
    if (misuse) return `round ${round}: ${misuse}`;
    stats.recycled += wal.recycleCounts().recycled;
    stats.crashes++;
    disk.crash();
    wal = await reopen();
    stats.recoveries++;
    const got = modelOf(wal);
    const k = after.findIndex((m, i) => i >= lastResolved && sameModel(m, got));
    if (k < 0) {
      const near = after.map((m, i) => `  ${i}${i === lastResolved ? ' (last resolved)' : ''}: ${describe(m)}`).join('\n');
      return `round ${round}: recovered ${describe(got)} is no prefix at or after operation ${lastResolved} of\n${near}`;
    }
    if (process.env.XDEVICE_TRACE) console.log(`# seed ${seed} round ${round}: recovered ${describe(got)} = operation ${k} of ${after.length - 1} (last resolved ${lastResolved}); segments ${wal.segmentNames().join(' ')}`);
    base = got;
  }
  await sched.run(wal.close());
  return undefined;
}

t.test('the real WAL on a simulated disk: resolved saves survive, the log is a prefix, recovery never throws', async (t) => {
  const stats: RunStats = { saves: 0, resolved: 0, crashes: 0, recoveries: 0, compactions: 0, recycled: 0 };
  const failures: string[] = [];
  for (let i = 0; i < seedCount; i++) {
    const seed = baseSeed + i;
    let problem: string | undefined;
    try {
      problem = await runSeed(seed, stats);
    } catch (err) {
      problem = (err as Error).message;
    }
    if (problem) failures.push(`XDEVICE_SEED=${seed} XDEVICE_SEEDS=1: ${problem}`);
  }
  t.same(failures, [], `${seedCount} seeds`);
  t.ok(stats.resolved > 0 && stats.recoveries >= seedCount, 'the runs did something');
  t.ok(stats.recycled > 0, `segments were started in recycled files (${stats.recycled})`);
  t.comment(JSON.stringify(stats));
});

t.test('a batch whose fdatasync failed is not trusted by the next process (no power cut between): the log opens after a later power cut', async (t) => {
  // Simulator seed 17004348: the page stays visible in the page cache after
  // the failed sync, recovery took it as durable, appended after it, and the
  // next power cut left "unwritten space, yet a valid batch follows".
  for (const syncMode of ['fdatasync', 'dsync'] as const) {
    const sched = new StepScheduler();
    const disk = new SimDisk({ seed: 17004348, scheduler: sched, ...(process.env.XDEVICE_TRACE ? { trace: (l: string) => console.log(`# ${l}`) } : {}) });
    const run = <T>(p: Promise<T>) => sched.run(p);
    const dir = '/n3/wal';
    await run(disk.mkdir(dir, { recursive: true }));
    await run(disk.syncDir('/n3'));
    await run(disk.syncDir('/'));
    // A DiskIo per process: one from before a power cut never settles again.
    const options = (): WalOptions => ({ disk: disk.io(), defer: (fn) => sched.after(0, fn), segmentBytes: 64 * 1024, alignmentBytes: 4096, batchBytesMax: 8 * 1024, syncMode, direct: true, recycledSegments: 0 });
    const hs = (commit: number): HardState => ({ term: 1, vote: 'n1', commit });
    let wal = await run(Wal.open(dir, options()));
    await run(wal.save({ entries: [entry(1, 1), entry(2, 1)], hardState: hs(1) }));
    // The segment itself (not the prepared next one, which syncs too).
    disk.arm(syncMode === 'fdatasync' ? 'syncEio' : 'writeEio', { pathPrefix: `${dir}/0` });
    const failed = await run(wal.save({ entries: [entry(3, 1)], hardState: hs(2) }).then(() => undefined, (err: unknown) => err));
    t.ok(failed, `${syncMode}: the save whose sync failed rejects`);
    disk.disarm();
    // The process stops and starts again; the machine did not: the page cache stays.
    wal = await run(Wal.open(dir, options()));
    const last = wal.lastIndex();
    await run(wal.save({ entries: [entry(last + 1, 1)], hardState: hs(2) }));
    disk.crash();
    const reopened = await run(Wal.open(dir, options()).then((w) => w, (err: unknown) => err as Error));
    t.notOk(reopened instanceof Error, `${syncMode}: the log opens after the power cut${reopened instanceof Error ? `: ${reopened.message}` : ''}`);
    if (!(reopened instanceof Error)) t.equal(reopened.lastIndex(), last + 1, `${syncMode}: with every entry appended after the restart`);
  }
});

// ---- the block store ---------------------------------------------------------------

const logger = pino({ level: 'silent' });

t.test('the real block store on a simulated disk: what a checkpoint covers survives a crash', async (t) => {
  const seeds = Math.max(1, Math.min(seedCount, 30));
  for (let i = 0; i < seeds; i++) {
    const seed = baseSeed + 7919 * (i + 1);
    const prng = new Prng(seed);
    const sched = new StepScheduler();
    const disk = new SimDisk({ seed: prng.next(), scheduler: sched });
    const run = <T>(p: Promise<T>) => sched.run(p);
    const dataDir = '/n2/data';
    await run(disk.mkdir(dataDir, { recursive: true }));
    await run(disk.syncDir('/n2'));
    await run(disk.syncDir('/'));
    const store = await run(BlockStore.open(dataDir, logger, { disk: disk.io() }));
    let seq = 0;
    const id = (): RequestId => ((seq += 1), { clientId: 3, seq, firstUnacked: seq });
    const log: Entry[] = [];
    const add = (data: Buffer): Entry => {
      const e = { index: log.length + 1, term: 1, type: EntryType.Normal, data };
      log.push(e);
      return e;
    };
    const blocks = 64;
    const size = blocks * 4096;
    const device = add(encodeCreateDevice(id(), 'd0', size)).index;
    const covered = new Map<number, Buffer>();
    // Writes after the checkpoint: applied, not synced, lost or kept at the crash (the WAL would replay them).
    const later = new Map<number, Buffer[]>();
    let checkpointed = false;
    const write = (): void => {
      const block = prng.int(blocks);
      const data = Buffer.alloc(4096, prng.range(1, 255));
      if (checkpointed) later.set(block, [...(later.get(block) ?? []), data]);
      else covered.set(block, data);
      add(encodeWrite(id(), device, block * 4096, data));
    };
    for (let w = prng.range(1, 40); w > 0; w--) write();
    await run(store.applyBatch(log, () => {}));
    const state = store.captureState();
    await run(store.checkpoint(state));
    checkpointed = true;
    const from = log.length;
    for (let w = prng.range(0, 20); w > 0; w--) write();
    const applying = store.applyBatch(log.slice(from), () => {});
    for (let s = prng.range(0, 30); s > 0; s--) if (!(await sched.step())) break;
    void applying.catch(() => undefined);
    disk.crash();
    const checkpoint = await run(readCheckpoint(dataDir, disk.io()));
    t.equal(checkpoint?.appliedIndex, state.appliedIndex, `seed ${seed}: the checkpoint is there`);
    const reopened = await run(BlockStore.open(dataDir, logger, { disk: disk.io() }));
    t.equal(reopened.appliedIndex, state.appliedIndex, `seed ${seed}: applied index from the checkpoint`);
    t.same(reopened.devices(), [{ id: device, name: 'd0', size }], `seed ${seed}: the device table`);
    let bad = 0;
    for (let block = 0; block < blocks; block++) {
      const got = await run(reopened.read(device, block * 4096, 4096));
      const old = covered.get(block) ?? Buffer.alloc(4096);
      const newer = later.get(block) ?? [];
      for (let s = 0; s < 8; s++) {
        const sector = got.subarray(s * 512, (s + 1) * 512);
        const ok = [old, ...newer].some((d) => d.subarray(s * 512, (s + 1) * 512).equals(sector));
        if (!ok) bad++;
      }
      if (newer.length === 0 && !got.equals(old)) bad++;
    }
    t.equal(bad, 0, `seed ${seed}: every block as the checkpoint left it (or a later write the log would replay)`);
    await run(reopened.closeFiles());
  }
});
