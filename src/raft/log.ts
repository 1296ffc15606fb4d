// The Raft log as the protocol sees it: the durable part in Storage, the
// rest in Unstable, plus the commit and apply cursors.

import { assert } from '../errors.ts';
import { Unstable } from './log-unstable.ts';
import { StorageError, type Storage } from './storage.ts';
import type { Entry, SnapshotMetadata } from './types.ts';

export function payloadBytes(ents: readonly Entry[]): number {
  let n = 0;
  for (let i = 0; i < ents.length; i++) n += ents[i]!.data.length;
  return n;
}

export class RaftLog {
  readonly storage: Storage;
  readonly unstable: Unstable;
  /** Highest index known committed on a quorum. */
  committed: number;
  /** Highest index handed to the state machine in a Ready (not yet advanced). */
  applying: number;
  /** Highest index the state machine has applied (advanced). */
  applied: number;
  private readonly readyCommittedBytesMax: number;

  constructor(storage: Storage, readyCommittedBytesMax: number) {
    this.storage = storage;
    this.readyCommittedBytesMax = readyCommittedBytesMax;
    const first = storage.firstIndex();
    const last = storage.lastIndex();
    this.unstable = new Unstable(last + 1);
    this.committed = first - 1;
    this.applying = first - 1;
    this.applied = first - 1;
  }

  firstIndex(): number {
    return this.unstable.maybeFirstIndex() ?? this.storage.firstIndex();
  }

  lastIndex(): number {
    return this.unstable.maybeLastIndex() ?? this.storage.lastIndex();
  }

  /** Highest index whose entry is durable in Storage. */
  persistedIndex(): number {
    return Math.min(this.unstable.offset - 1, this.lastIndex());
  }

  lastTerm(): number {
    return this.term(this.lastIndex());
  }

  /** Term of the entry at i; throws StorageError COMPACTED below the first index - 1; 0 beyond the last index. */
  term(i: number): number {
    const u = this.unstable.maybeTerm(i);
    if (u !== undefined) return u;
    if (i > this.lastIndex()) return 0;
    if (i < this.firstIndex() - 1) throw new StorageError('XDEVICE_ERR_COMPACTED', `term(${i}) below first index ${this.firstIndex()}`);
    return this.storage.term(i);
  }

  /** term(), or 0 when i is compacted or beyond the log. */
  zeroTermOnOutOfBounds(i: number): number {
    try {
      return this.term(i);
    } catch (e) {
      if (e instanceof StorageError && e.code === 'XDEVICE_ERR_COMPACTED') return 0;
      throw e;
    }
  }

  matchTerm(i: number, t: number): boolean {
    if (i > this.lastIndex()) return false;
    try {
      return this.term(i) === t;
    } catch (e) {
      if (e instanceof StorageError && e.code === 'XDEVICE_ERR_COMPACTED') return false;
      throw e;
    }
  }

  /** Raft 5.4.1: is a log ending at (lasti, term) at least as up to date as ours? */
  isUpToDate(lasti: number, term: number): boolean {
    const ourTerm = this.lastTerm();
    return term > ourTerm || (term === ourTerm && lasti >= this.lastIndex());
  }

  /**
   * The follower side of AppendEntries: if our entry at `index` has `logTerm`,
   * append `ents` (dropping a conflicting suffix) and return the last new
   * index; otherwise undefined.
   */
  maybeAppend(index: number, logTerm: number, committed: number, ents: Entry[]): number | undefined {
    if (!this.matchTerm(index, logTerm)) return undefined;
    const lastnewi = index + ents.length;
    const ci = this.findConflict(ents);
    if (ci !== 0) {
      assert(ci > this.committed, `entry ${ci} conflicts with committed entry (committed ${this.committed})`);
      const start = ci - index - 1;
      this.append(start === 0 ? ents : ents.slice(start));
    }
    this.commitTo(Math.min(committed, lastnewi));
    return lastnewi;
  }

  append(ents: Entry[]): number {
    if (ents.length === 0) return this.lastIndex();
    const after = ents[0]!.index - 1;
    assert(after >= this.committed, `append after ${after} is below committed ${this.committed}`);
    this.unstable.truncateAndAppend(ents);
    this.onAppend?.(ents);
    return this.lastIndex();
  }

  /** Told of every append, after it (the entries from ents[0].index on replaced what was there). */
  onAppend: ((ents: Entry[]) => void) | undefined;

  /** First index in ents whose term differs from ours (or that we lack); 0 if none. */
  findConflict(ents: Entry[]): number {
    for (let k = 0; k < ents.length; k++) {
      const e = ents[k]!;
      if (!this.matchTerm(e.index, e.term)) return e.index;
    }
    return 0;
  }

  /**
   * Fast backtracking (Raft thesis 5.3 and etcd): the largest index <= index
   * whose term is <= term, with that term. Entries between it and index
   * cannot match a log whose entry at `index` has `term`.
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    for (; index > 0; index--) {
      let t: number;
      try {
        t = this.term(index);
      } catch (e) {
        if (e instanceof StorageError && e.code === 'XDEVICE_ERR_COMPACTED') return { index, term: 0 };
        throw e;
      }
      if (t <= term) return { index, term: t };
    }
    return { index: 0, term: 0 };
  }

  /**
   * Entries in [lo, hi) totalling at most maxBytes (always at least one).
   * Throws StorageError COMPACTED when lo is below the first index.
   */
  slice(lo: number, hi: number, maxBytes: number): Entry[] {
    if (lo >= hi) return [];
    const first = this.firstIndex();
    if (lo < first) throw new StorageError('XDEVICE_ERR_COMPACTED', `slice(${lo}) below first index ${first}`);
    assert(hi <= this.lastIndex() + 1, `slice(${lo}, ${hi}) beyond last index ${this.lastIndex()}`);
    const uoff = this.unstable.offset;
    let out: Entry[];
    if (lo < uoff) {
      out = this.storage.entries(lo, Math.min(hi, uoff), maxBytes);
      if (out.length < Math.min(hi, uoff) - lo || hi <= uoff) return out;
      let bytes = payloadBytes(out);
      for (let i = uoff; i < hi; i++) {
        const e = this.unstable.entries[i - uoff]!;
        bytes += e.data.length;
        if (bytes > maxBytes) break;
        out.push(e);
      }
      return out;
    }
    const ents = this.unstable.entries;
    const base = lo - uoff;
    const end = hi - uoff;
    let bytes = ents[base]!.data.length;
    let i = base + 1;
    for (; i < end; i++) {
      bytes += ents[i]!.data.length;
      if (bytes > maxBytes) break;
    }
    return ents.slice(base, i);
  }

  /** Entries from lo to the end of the log, at most maxBytes. */
  entriesFrom(lo: number, maxBytes: number): Entry[] {
    const last = this.lastIndex();
    if (lo > last) return [];
    return this.slice(lo, last + 1, maxBytes);
  }

  /** Commit up to maxIndex if that entry is from `term` (Raft 5.4.2: never count replicas of older terms). */
  maybeCommit(maxIndex: number, term: number): boolean {
    if (maxIndex > this.committed && this.zeroTermOnOutOfBounds(maxIndex) === term) {
      this.commitTo(maxIndex);
      return true;
    }
    return false;
  }

  commitTo(i: number): void {
    if (i <= this.committed) return;
    assert(i <= this.lastIndex(), `commit ${i} beyond last index ${this.lastIndex()}`);
    this.committed = i;
  }

  /** Highest index that may be handed to the state machine: committed and durable here. */
  private maxAppliableIndex(): number {
    return Math.min(this.committed, this.persistedIndex());
  }

  hasNextCommittedEntries(): boolean {
    if (this.unstable.snapshot) return false;
    return this.applying < this.maxAppliableIndex();
  }

  nextCommittedEntries(): Entry[] {
    if (this.unstable.snapshot) return [];
    const hi = this.maxAppliableIndex();
    if (this.applying >= hi) return [];
    return this.slice(this.applying + 1, hi + 1, this.readyCommittedBytesMax);
  }

  acceptApplying(i: number): void {
    assert(i >= this.applying && i <= this.committed, `applying ${i} outside [${this.applying}, ${this.committed}]`);
    this.applying = i;
  }

  appliedTo(i: number): void {
    assert(i <= this.committed, `applied ${i} beyond committed ${this.committed}`);
    if (i > this.applied) this.applied = i;
    if (i > this.applying) this.applying = i;
  }

  stableTo(i: number, t: number): void {
    this.unstable.stableTo(i, t);
  }

  stableSnapTo(i: number): void {
    this.unstable.stableSnapTo(i);
  }

  snapshotMetadata(): SnapshotMetadata {
    return this.unstable.snapshot ?? this.storage.snapshotMetadata();
  }

  /** Replace the log by a snapshot received from the leader. */
  restore(s: SnapshotMetadata): void {
    this.committed = s.index;
    this.unstable.restore(s);
  }
}
