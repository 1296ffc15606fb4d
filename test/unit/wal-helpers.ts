// Shared by the WAL tests: small segments so rolls and compaction happen
// within a few entries, and entries whose payload encodes their identity.

import type { Test } from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Entry } from '../../src/raft/types.ts';
import { Wal, type WalOptions } from '../../src/wal/wal.ts';

export const smallSegments: WalOptions = { segmentBytes: 64 * 1024, alignmentBytes: 4096, batchBytesMax: 16 * 1024 };

export function walDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-wal-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export function entry(index: number, term: number, size = 100): Entry {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (index * 31 + term * 7 + i) & 0xff;
  return { index, term, type: index % 2, data };
}

export function entries(from: number, to: number, term: number, size = 100): Entry[] {
  const out: Entry[] = [];
  for (let i = from; i <= to; i++) out.push(entry(i, term, size));
  return out;
}

export async function openWal(t: Test, dir: string, opts: WalOptions = smallSegments): Promise<Wal> {
  const wal = await Wal.open(dir, opts);
  t.teardown(() => wal.close());
  return wal;
}

/** Every entry in [first, last] reads back as entry(index, termOf(index)). */
export function checkLog(t: Test, wal: Wal, first: number, last: number, termOf: (i: number) => number, size = 100): void {
  t.equal(wal.firstIndex(), first, 'firstIndex');
  t.equal(wal.lastIndex(), last, 'lastIndex');
  if (last < first) return;
  const got = wal.entries(first, last + 1, Number.MAX_SAFE_INTEGER);
  t.equal(got.length, last - first + 1, 'entry count');
  let bad = 0;
  for (const e of got) {
    const want = entry(e.index, termOf(e.index), size);
    if (e.term !== want.term || e.type !== want.type || !e.data.equals(want.data)) bad++;
  }
  t.equal(bad, 0, `entries ${first}..${last} intact`);
}
