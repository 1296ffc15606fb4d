// The nemesis: a real 3-node cluster, clients on every node, and for a bounded
// time random faults — kill -9 and restart, SIGSTOP/SIGCONT pauses, partitions
// on the peer links, slow links. Then the faults stop, the cluster must
// converge and serve again, and the recorded history must be linearizable.

import { writeFileSync } from 'node:fs';
import { Cluster } from '../helpers/launcher.ts';
import { checkHistory, toJsonLines, type CheckResult } from './checker.ts';
import { rng, sleep, Workload } from './workload.ts';

export interface NemesisOptions {
  seconds: number;
  seed: number;
  nodes?: number;
  clients?: number;
  blocks?: number;
  historyFile?: string;
  log?: (line: string) => void;
}

export interface NemesisReport {
  seed: number;
  seconds: number;
  faults: Record<string, number>;
  operations: number;
  okWrites: number;
  okReads: number;
  unknown: number;
  check: CheckResult;
  /** Milliseconds from each leader kill to the first successful write issued after it. */
  failoverMs: number[];
  convergedAfterHealMs: number;
  historyFile: string | undefined;
}

type Fault = 'kill-leader' | 'kill-follower' | 'pause' | 'partition-one' | 'partition-leader' | 'slow-links' | 'slow-disk';
const FAULTS: Fault[] = ['kill-leader', 'kill-follower', 'pause', 'partition-one', 'partition-leader', 'slow-links', 'slow-disk'];

export async function runNemesis(options: NemesisOptions): Promise<NemesisReport> {
  const log = options.log ?? (() => {});
  const rand = rng(options.seed ^ 0x5eed);
  const cluster = await Cluster.start({ size: options.nodes ?? 3, proxied: true, devices: ['default:16MiB'] });
  const faults: Record<string, number> = {};
  const failoverMs: number[] = [];
  const workload = new Workload({
    clients: options.clients ?? 6,
    blocks: options.blocks ?? 8,
    nbdPorts: () => cluster.slots.map((s) => s.ports.nbd),
    exportName: 'default',
    opTimeoutMs: 5_000,
    seed: options.seed,
  });
  try {
    await cluster.leaderIndex();
    workload.start();
    const end = Date.now() + options.seconds * 1000;
    while (Date.now() < end) {
      await sleep(500 + rand.int(1500));
      const fault = FAULTS[rand.int(FAULTS.length)]!;
      const leader = await cluster.leaderIndex(15_000).catch(() => -1);
      const pick = (exclude: number) => {
        const others = cluster.slots.map((_, i) => i).filter((i) => i !== exclude);
        return others[rand.int(others.length)]!;
      };
      faults[fault] = (faults[fault] ?? 0) + 1;
      const holdMs = 800 + rand.int(2500);
      log(`fault ${fault} (leader node${leader + 1}) for ${holdMs} ms`);
      switch (fault) {
        case 'kill-leader':
        case 'kill-follower': {
          const victim = fault === 'kill-leader' && leader >= 0 ? leader : pick(leader);
          const t0 = Number(process.hrtime.bigint());
          await cluster.kill(victim);
          if (victim === leader) {
            void measureFailover(workload, t0).then((ms) => ms !== undefined && failoverMs.push(ms));
          }
          await sleep(holdMs);
          await cluster.startNode(victim);
          break;
        }
        case 'pause': {
          const victim = rand.int(cluster.size);
          cluster.pause(victim);
          await sleep(holdMs);
          cluster.resume(victim);
          break;
        }
        case 'partition-one':
        case 'partition-leader': {
          const victim = fault === 'partition-leader' && leader >= 0 ? leader : rand.int(cluster.size);
          const rest = cluster.slots.map((_, i) => i).filter((i) => i !== victim);
          cluster.partition([[victim], rest]);
          await sleep(holdMs);
          cluster.heal();
          break;
        }
        case 'slow-disk': {
          // every WAL write and fdatasync of one node waits 2-30 ms
          const victim = rand.int(cluster.size);
          cluster.setDiskFault(victim, { delayUs: 2_000 + rand.int(28_000) });
          await sleep(holdMs);
          cluster.setDiskFault(victim, {});
          break;
        }
        case 'slow-links':
          cluster.slowLinks(5 + rand.int(30));
          await sleep(holdMs);
          cluster.heal();
          break;
      }
    }
    // Faults stop: everything heals, restarts, and must converge and serve.
    cluster.heal();
    for (let i = 0; i < cluster.size; i++) {
      cluster.setDiskFault(i, {});
      cluster.resume(i);
      if (!cluster.isUp(i)) await cluster.startNode(i);
    }
    const healedAt = Date.now();
    await cluster.leaderIndex(30_000);
    await sleep(1000);
    await workload.stop();
    await cluster.converged(60_000);
    const convergedAfterHealMs = Date.now() - healedAt;
    await workload.finalReads(cluster.slots.map((s) => s.ports.nbd));
    const check = checkHistory(workload.history);
    const historyFile = options.historyFile;
    if (historyFile) writeFileSync(historyFile, toJsonLines(workload.history));
    const h = workload.history;
    return {
      seed: options.seed,
      seconds: options.seconds,
      faults,
      operations: h.length,
      okWrites: h.filter((o) => o.op === 'write' && o.status === 'ok').length,
      okReads: h.filter((o) => o.op === 'read' && o.status === 'ok').length,
      unknown: h.filter((o) => o.status === 'unknown').length,
      check,
      failoverMs,
      convergedAfterHealMs,
      historyFile,
    };
  } catch (err) {
    throw new Error(`${(err as Error).message}\nXDEVICE_SEED=${options.seed}\n${cluster.logs()}`);
  } finally {
    await workload.stop().catch(() => {});
    await cluster.stop();
  }
}

/** Time from t0 (ns) to the first successful write that was issued after t0. */
async function measureFailover(workload: Workload, t0: number): Promise<number | undefined> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const first = workload.history.find((o) => o.op === 'write' && o.status === 'ok' && o.call > t0);
    if (first) return (first.return - t0) / 1e6;
    await sleep(20);
  }
  return undefined;
}

export function formatReport(r: NemesisReport): string {
  const sorted = [...r.failoverMs].sort((a, b) => a - b);
  const pct = (p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * (sorted.length - 1)))]!.toFixed(0) : '-');
  return [
    `nemesis: seed ${r.seed}, ${r.seconds} s of faults (XDEVICE_SEED=${r.seed} to replay the fault schedule)`,
    `faults injected: ${Object.entries(r.faults).map(([k, v]) => `${k}=${v}`).join(' ')} (total ${Object.values(r.faults).reduce((a, b) => a + b, 0)})`,
    `operations: ${r.operations} (ok writes ${r.okWrites}, ok reads ${r.okReads}, unknown ${r.unknown}); checked ${r.check.opsChecked} over ${r.check.blocks} blocks`,
    `violations: ${r.check.violations.length}${r.check.violations.map((v) => `\n  ${v.kind}: ${v.message}`).join('')}`,
    `recovery: leader kill -> first successful write: n=${sorted.length} [${sorted.map((x) => x.toFixed(0)).join(', ')}] ms, median ${pct(0.5)} ms`,
    `converged and serving ${r.convergedAfterHealMs} ms after the faults stopped`,
    r.historyFile ? `history (JSON lines): ${r.historyFile}` : '',
  ]
    .filter(Boolean)
    .join('\n');
}
