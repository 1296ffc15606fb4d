// Entries and a snapshot not yet durable. `entries[i]` has index `offset + i`.
// A Ready hands out what lies beyond `offsetInProgress`; advance() makes it
// stable, after which it is read from Storage instead.

import { assert } from '../errors.ts';
import type { Entry, SnapshotMetadata } from './types.ts';

export class Unstable {
  snapshot: SnapshotMetadata | undefined = undefined;
  entries: Entry[] = [];
  /** Index of entries[0]; everything below is in Storage. */
  offset: number;
  /** Entries below this index were handed out in a Ready and are being written. */
  offsetInProgress: number;
  snapshotInProgress = false;

  constructor(offset: number) {
    this.offset = offset;
    this.offsetInProgress = offset;
  }

  maybeFirstIndex(): number | undefined {
    return this.snapshot ? this.snapshot.index + 1 : undefined;
  }

  maybeLastIndex(): number | undefined {
    if (this.entries.length > 0) return this.offset + this.entries.length - 1;
    return this.snapshot ? this.snapshot.index : undefined;
  }

  maybeTerm(i: number): number | undefined {
    if (i < this.offset) {
      if (this.snapshot && this.snapshot.index === i) return this.snapshot.term;
      return undefined;
    }
    const last = this.maybeLastIndex();
    if (last === undefined || i > last) return undefined;
    return this.entries[i - this.offset]!.term;
  }

  /** Entries not yet handed out in a Ready. */
  nextEntries(): Entry[] {
    const start = this.offsetInProgress - this.offset;
    if (start >= this.entries.length) return [];
    return this.entries.slice(start);
  }

  nextSnapshot(): SnapshotMetadata | undefined {
    return this.snapshot && !this.snapshotInProgress ? this.snapshot : undefined;
  }

  acceptInProgress(): void {
    if (this.entries.length > 0) this.offsetInProgress = this.offset + this.entries.length;
    if (this.snapshot) this.snapshotInProgress = true;
  }

  /**
   * Entries up to (i, t) are durable. Ignored if the entry at i was replaced
   * meanwhile (a newer leader truncated it): the replacement is still unstable.
   */
  stableTo(i: number, t: number): void {
    const gt = this.maybeTerm(i);
    if (gt === undefined || gt !== t || i < this.offset) return;
    const n = i + 1 - this.offset;
    this.entries = n >= this.entries.length ? [] : this.entries.slice(n);
    this.offset = i + 1;
    if (this.offsetInProgress < this.offset) this.offsetInProgress = this.offset;
  }

  stableSnapTo(i: number): void {
    if (this.snapshot && this.snapshot.index === i) {
      this.snapshot = undefined;
      this.snapshotInProgress = false;
    }
  }

  restore(s: SnapshotMetadata): void {
    this.offset = s.index + 1;
    this.offsetInProgress = this.offset;
    this.entries = [];
    this.snapshot = s;
    this.snapshotInProgress = false;
  }

  truncateAndAppend(ents: Entry[]): void {
    if (ents.length === 0) return;
    const from = ents[0]!.index;
    const end = this.offset + this.entries.length;
    if (from === end) {
      // The common case: extend. push() in a loop avoids copying the existing array.
      for (let k = 0; k < ents.length; k++) this.entries.push(ents[k]!);
    } else if (from <= this.offset) {
      // Replace everything, including entries that may be durable already:
      // the next Ready rewrites them (storage truncates on append).
      this.offset = from;
      this.entries = ents.slice();
    } else {
      this.entries = this.entries.slice(0, from - this.offset);
      for (let k = 0; k < ents.length; k++) this.entries.push(ents[k]!);
    }
    if (this.offsetInProgress > from) this.offsetInProgress = from;
    assert(this.offsetInProgress >= this.offset, 'unstable: offsetInProgress below offset');
  }

  /** Entries in [lo, hi); the caller checked the bounds. */
  slice(lo: number, hi: number): Entry[] {
    assert(lo >= this.offset && hi <= this.offset + this.entries.length && lo <= hi, `unstable.slice(${lo}, ${hi}) out of [${this.offset}, ${this.offset + this.entries.length})`);
    return this.entries.slice(lo - this.offset, hi - this.offset);
  }
}
