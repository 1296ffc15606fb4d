// The App messages in flight to one peer, as a ring of (last index, bytes).
// Bounded by count and bytes: a full window pauses replication to that peer
// until acks free it (flow control, etcd's tracker/inflights.go).

import { assert } from '../errors.ts';

export class Inflights {
  private start = 0;
  private countValue = 0;
  private bytesValue = 0;
  private indexes: number[];
  private sizes: number[];
  readonly capacity: number;
  readonly bytesMax: number;

  constructor(capacity: number, bytesMax: number) {
    this.capacity = capacity;
    this.bytesMax = bytesMax;
    // Grown lazily: most peers never need the whole window.
    this.indexes = [];
    this.sizes = [];
  }

  get count(): number {
    return this.countValue;
  }

  get bytes(): number {
    return this.bytesValue;
  }

  add(index: number, bytes: number): void {
    assert(!this.full(), 'inflights: add to a full window');
    let next = this.start + this.countValue;
    if (next >= this.capacity) next -= this.capacity;
    if (next >= this.indexes.length) {
      this.indexes.push(index);
      this.sizes.push(bytes);
    } else {
      this.indexes[next] = index;
      this.sizes[next] = bytes;
    }
    this.countValue++;
    this.bytesValue += bytes;
  }

  /** Free every message whose last index is <= index. */
  freeLE(index: number): void {
    if (this.countValue === 0 || index < this.indexes[this.start]!) return;
    let i = 0;
    let idx = this.start;
    let bytes = 0;
    for (; i < this.countValue; i++) {
      if (index < this.indexes[idx]!) break;
      bytes += this.sizes[idx]!;
      if (++idx >= this.capacity) idx -= this.capacity;
    }
    this.countValue -= i;
    this.bytesValue -= bytes;
    this.start = idx;
    if (this.countValue === 0) this.start = 0;
  }

  full(): boolean {
    return this.countValue >= this.capacity || this.bytesValue >= this.bytesMax;
  }

  reset(): void {
    this.start = 0;
    this.countValue = 0;
    this.bytesValue = 0;
  }
}
