// The uncompacted log held in memory: what the Storage reads are served
// from, and what recovery rebuilds by replaying records. It applies the same
// four operations live (at submission) and at replay, so both agree.

import { StorageError } from '../raft/storage.ts';
import type { ConfState, Entry, HardState, SnapshotMetadata } from '../raft/types.ts';
import { emptyConfState } from '../raft/types.ts';
import { assert } from '../errors.ts';

export function emptySnapshot(): SnapshotMetadata {
  return { index: 0, term: 0, confState: emptyConfState() };
}

export function emptyHardState(): HardState {
  return { term: 0, vote: '', commit: 0 };
}

export class MemoryLog {
  snapshot: SnapshotMetadata = emptySnapshot();
  hardState: HardState = emptyHardState();
  /** entries[i] has index snapshot.index + 1 + i. */
  private log: Entry[] = [];
  /**
   * Recovery only: entries in (snapshot.index, unknownThrough] live in
   * segments that were not read (or are missing). Replay must compact past
   * them, or a segment is missing.
   */
  unknownThrough = 0;

  firstIndex(): number {
    return Math.max(this.snapshot.index, this.unknownThrough) + 1;
  }

  lastIndex(): number {
    return this.firstIndex() - 1 + this.log.length;
  }

  /** Starts from a segment's baseline: the snapshot, the hard state, and a log known only to reach lastIndex. */
  reset(snapshot: SnapshotMetadata, hardState: HardState, lastIndex: number): void {
    assert(lastIndex >= snapshot.index, 'baseline lastIndex below its snapshot');
    this.snapshot = snapshot;
    this.hardState = hardState;
    this.unknownThrough = lastIndex;
    this.log = [];
  }

  /** Appends one entry; an index at or below lastIndex() first drops the conflicting suffix. */
  append(entry: Entry): void {
    const first = this.firstIndex();
    const last = this.lastIndex();
    assert(entry.index <= last + 1, `entry ${entry.index} leaves a gap after ${last}`);
    if (entry.index < first) {
      // Overwriting below what this replay has seen: the entries before it
      // are still in earlier segments (or compacted), only the suffix goes.
      assert(entry.index > this.snapshot.index, `entry ${entry.index} overwrites the snapshot at ${this.snapshot.index}`);
      this.unknownThrough = entry.index - 1;
      this.log = [entry];
      return;
    }
    if (entry.index <= last) this.log.length = entry.index - first;
    this.log.push(entry);
  }

  setHardState(hs: HardState): void {
    this.hardState = hs;
  }

  /** Drops entries up to snapshot.index (which must be held or already be the boundary). */
  compact(snapshot: SnapshotMetadata): void {
    assert(snapshot.index <= this.lastIndex(), `compact ${snapshot.index} beyond lastIndex ${this.lastIndex()}`);
    assert(snapshot.index >= this.snapshot.index, `compact ${snapshot.index} below snapshot ${this.snapshot.index}`);
    const drop = Math.max(0, snapshot.index - this.firstIndex() + 1);
    this.log = drop > 0 ? this.log.slice(drop) : this.log;
    this.snapshot = snapshot;
    if (this.unknownThrough <= snapshot.index) this.unknownThrough = 0;
  }

  /** Replaces the whole log with a snapshot (a follower that installed one). */
  applySnapshot(snapshot: SnapshotMetadata): void {
    this.snapshot = snapshot;
    this.unknownThrough = 0;
    this.log = [];
  }

  // ---- Storage reads ---------------------------------------------------------

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    if (lo <= this.snapshot.index) throw new StorageError('XDEVICE_ERR_COMPACTED', `entries from ${lo}: compacted through ${this.snapshot.index}`);
    if (hi > this.lastIndex() + 1) throw new StorageError('XDEVICE_ERR_UNAVAILABLE', `entries to ${hi}: last index is ${this.lastIndex()}`);
    assert(lo <= hi, `entries: lo ${lo} > hi ${hi}`);
    const first = this.firstIndex();
    const out: Entry[] = [];
    let bytes = 0;
    for (let i = lo; i < hi; i++) {
      const e = this.log[i - first]!;
      bytes += e.data.length;
      if (out.length > 0 && bytes > maxBytes) break;
      out.push(e);
    }
    return out;
  }

  /** Payload bytes of the entries held in (lo, hi] (clamped to what is held). */
  payloadBytesBetween(lo: number, hi: number): number {
    const first = this.firstIndex();
    const from = Math.max(lo + 1, first);
    const to = Math.min(hi, this.lastIndex());
    let bytes = 0;
    for (let i = from; i <= to; i++) bytes += this.log[i - first]!.data.length;
    return bytes;
  }

  term(index: number): number {
    if (index === this.snapshot.index) return this.snapshot.term;
    if (index < this.snapshot.index) throw new StorageError('XDEVICE_ERR_COMPACTED', `term of ${index}: compacted through ${this.snapshot.index}`);
    if (index > this.lastIndex()) throw new StorageError('XDEVICE_ERR_UNAVAILABLE', `term of ${index}: last index is ${this.lastIndex()}`);
    return this.log[index - this.firstIndex()]!.term;
  }

  confState(): ConfState {
    return this.snapshot.confState;
  }
}
