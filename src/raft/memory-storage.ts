// Storage kept in memory: for tests, the simulator and the benchmark. The
// node uses src/wal, which implements the same interface durably.
//
// ents[0] is a dummy entry at the snapshot's index and term, so term() of the
// snapshot index needs no special case.

import { assert } from '../errors.ts';
import { StorageError, type Storage } from './storage.ts';
import { emptyConfState, EntryType, type ConfState, type Entry, type HardState, type SnapshotMetadata } from './types.ts';

const EMPTY = Buffer.alloc(0);

function cloneConfState(cs: ConfState): ConfState {
  return {
    voters: [...cs.voters],
    learners: [...cs.learners],
    votersOutgoing: [...cs.votersOutgoing],
    learnersNext: [...cs.learnersNext],
    autoLeave: cs.autoLeave,
  };
}

export class MemoryStorage implements Storage {
  private hardState: HardState = { term: 0, vote: '', commit: 0 };
  private snapshot: SnapshotMetadata;
  private ents: Entry[];

  /** A fresh log. `confState` is the initial membership (use bootstrap() for a new cluster instead). */
  constructor(confState: ConfState = emptyConfState()) {
    this.snapshot = { index: 0, term: 0, confState: cloneConfState(confState) };
    this.ents = [{ index: 0, term: 0, type: EntryType.Normal, data: EMPTY }];
  }

  initialState(): { hardState: HardState; confState: ConfState } {
    return { hardState: { ...this.hardState }, confState: cloneConfState(this.snapshot.confState) };
  }

  setHardState(hs: HardState): void {
    this.hardState = { ...hs };
  }

  private get offset(): number {
    return this.ents[0]!.index;
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    const offset = this.offset;
    if (lo <= offset) throw new StorageError('XDEVICE_ERR_COMPACTED', `entries(${lo}) at or below snapshot index ${offset}`);
    if (hi > this.lastIndex() + 1) throw new StorageError('XDEVICE_ERR_UNAVAILABLE', `entries(.., ${hi}) beyond last index ${this.lastIndex()}`);
    if (lo >= hi) return [];
    let bytes = this.ents[lo - offset]!.data.length;
    let end = lo - offset + 1;
    const stop = hi - offset;
    for (; end < stop; end++) {
      bytes += this.ents[end]!.data.length;
      if (bytes > maxBytes) break;
    }
    return this.ents.slice(lo - offset, end);
  }

  term(i: number): number {
    const offset = this.offset;
    if (i < offset) throw new StorageError('XDEVICE_ERR_COMPACTED', `term(${i}) below snapshot index ${offset}`);
    if (i - offset >= this.ents.length) throw new StorageError('XDEVICE_ERR_UNAVAILABLE', `term(${i}) beyond last index ${this.lastIndex()}`);
    return this.ents[i - offset]!.term;
  }

  firstIndex(): number {
    return this.offset + 1;
  }

  lastIndex(): number {
    return this.offset + this.ents.length - 1;
  }

  snapshotMetadata(): SnapshotMetadata {
    return this.snapshot;
  }

  /** Install a snapshot received from the leader: the log restarts after it. */
  applySnapshot(meta: SnapshotMetadata): void {
    if (meta.index <= this.snapshot.index) throw new StorageError('XDEVICE_ERR_SNAPSHOT_OUT_OF_DATE', `snapshot ${meta.index} is not newer than ${this.snapshot.index}`);
    this.snapshot = { index: meta.index, term: meta.term, confState: cloneConfState(meta.confState) };
    this.ents = [{ index: meta.index, term: meta.term, type: EntryType.Normal, data: EMPTY }];
    if (this.hardState.commit < meta.index) this.hardState = { ...this.hardState, commit: meta.index };
  }

  /**
   * Drop entries up to and including `index`, which the state machine has
   * applied; `confState` is the membership as of `index`. A follower that
   * needs them from now on gets a snapshot at `index`.
   */
  compact(index: number, confState: ConfState): void {
    const offset = this.offset;
    if (index <= offset) throw new StorageError('XDEVICE_ERR_COMPACTED', `compact(${index}) at or below snapshot index ${offset}`);
    assert(index <= this.lastIndex(), `compact(${index}) beyond last index ${this.lastIndex()}`);
    const term = this.ents[index - offset]!.term;
    this.snapshot = { index, term, confState: cloneConfState(confState) };
    const rest = this.ents.slice(index - offset + 1);
    this.ents = [{ index, term, type: EntryType.Normal, data: EMPTY }];
    for (const e of rest) this.ents.push(e);
  }

  /** Append entries from a Ready, replacing any conflicting suffix. */
  append(entries: Entry[]): void {
    if (entries.length === 0) return;
    const first = this.firstIndex();
    let ents = entries;
    const last = entries[0]!.index + entries.length - 1;
    if (last < first) return;
    // Entries below the snapshot are already applied: skip them.
    if (first > ents[0]!.index) ents = ents.slice(first - ents[0]!.index);
    const at = ents[0]!.index - this.offset;
    assert(at >= 1 && at <= this.ents.length, `append at ${ents[0]!.index} leaves a gap after ${this.lastIndex()}`);
    if (at < this.ents.length) this.ents.length = at;
    for (let i = 0; i < ents.length; i++) this.ents.push(ents[i]!);
  }
}
