// bench:raft — how fast the consensus core itself commits, with nothing else
// in the way: a 3-node cluster in one process, a zero-latency in-memory
// network, storage that does no I/O (MemoryStorage, compacted as it goes).
// Proposers each keep one 4 KiB proposal outstanding and propose the next
// when the leader applies theirs; all proposals of one "turn" go into one
// Ready, as the node runtime batches one event-loop turn.
//
//   npm run bench:raft [-- --seconds 3]

import { bootstrap } from '../src/raft/bootstrap.ts';
import { MemoryStorage } from '../src/raft/memory-storage.ts';
import { RawNode } from '../src/raft/rawnode.ts';
import { Role } from '../src/raft/raft.ts';
import type { Message } from '../src/raft/types.ts';

const secondsArg = process.argv.indexOf('--seconds');
const SECONDS = secondsArg > 0 ? Number(process.argv[secondsArg + 1]) : 3;
const PAYLOAD = Buffer.alloc(4096, 7);
const COMPACT_EVERY = 20_000;

interface BenchNode {
  id: string;
  storage: MemoryStorage;
  raw: RawNode;
  applied: number;
}

function cluster(): BenchNode[] {
  const ids = ['a', 'b', 'c'];
  const bs = bootstrap(ids);
  let seed = 1;
  return ids.map((id) => {
    const storage = new MemoryStorage(bs.confState);
    storage.append(bs.entries);
    storage.setHardState(bs.hardState);
    const raw = new RawNode({ id, storage, applied: bs.applied, rand: (n) => (seed = (seed * 1103515245 + 12345) >>> 0) % n });
    return { id, storage, raw, applied: bs.applied };
  });
}

function run(proposers: number): { entries: number; seconds: number; readys: number; messages: number } {
  const nodes = cluster();
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const leader = nodes[0]!;
  let queue: Message[] = [];
  let readys = 0;
  let messages = 0;
  // index -> proposer waiting for it
  const waiting = new Map<number, number>();
  let idle = proposers;
  let committed = 0;

  const drain = () => {
    for (;;) {
      let progress = false;
      for (const n of nodes) {
        while (n.raw.hasReady()) {
          progress = true;
          const rd = n.raw.ready();
          readys++;
          for (const m of rd.messages) queue.push(m);
          if (rd.entries.length > 0) n.storage.append(rd.entries);
          if (rd.hardState) n.storage.setHardState(rd.hardState);
          for (const m of rd.messagesAfterPersist) queue.push(m);
          for (const e of rd.committedEntries) {
            n.applied = e.index;
            if (n === leader) {
              const p = waiting.get(e.index);
              if (p !== undefined) {
                waiting.delete(e.index);
                idle++;
                committed++;
              }
            }
          }
          n.raw.advance(rd);
          if (n.applied - n.storage.firstIndex() > COMPACT_EVERY) n.storage.compact(n.applied - 1000, n.raw.status().confState);
        }
      }
      if (queue.length > 0) {
        progress = true;
        const batch = queue;
        queue = [];
        messages += batch.length;
        for (const m of batch) byId.get(m.to)!.raw.step(m);
      }
      if (!progress) return;
    }
  };

  leader.raw.campaign();
  drain();
  if (leader.raw.basicStatus().role !== Role.Leader) throw new Error('no leader');
  const start = process.hrtime.bigint();
  const deadline = start + BigInt(Math.round(SECONDS * 1e9));
  let turns = 0;
  for (;;) {
    // One event-loop turn: every idle proposer proposes.
    while (idle > 0) {
      const { index } = leader.raw.propose(PAYLOAD);
      waiting.set(index, 1);
      idle--;
    }
    drain();
    if ((++turns & 63) === 0 && process.hrtime.bigint() > deadline) break;
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  return { entries: committed, seconds, readys, messages };
}

const rows: string[][] = [['proposers', 'entries', 'seconds', 'entries/s', 'MiB/s', 'readys/entry', 'msgs/entry']];
for (const p of [1, 64]) {
  run(p); // warm up the JIT
  const r = run(p);
  rows.push([
    String(p),
    String(r.entries),
    r.seconds.toFixed(2),
    Math.round(r.entries / r.seconds).toLocaleString('en-US'),
    ((r.entries * PAYLOAD.length) / r.seconds / 1048576).toFixed(0),
    (r.readys / r.entries).toFixed(2),
    (r.messages / r.entries).toFixed(2),
  ]);
}
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
for (const r of rows) console.log(r.map((v, c) => v.padStart(widths[c]!)).join('  '));
console.log('3 nodes in one process, zero-latency network, MemoryStorage (no I/O), 4 KiB proposals; target >= 200,000 entries/s with 64 proposers');
