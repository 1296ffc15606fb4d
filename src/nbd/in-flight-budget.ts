// Payload bytes in flight across every NBD connection of one server. Each
// connection also has its own limit (nbdInFlightBytesMax); without a shared
// one, 1024 connections could hold 64 GiB between them. A connection that
// finds the budget spent stops reading requests until another returns bytes.
// The overshoot is at most one request: the budget is checked before each
// request header, and a header's bytes are taken at once.

import { limits } from '../limits.ts';

export class InFlightBudget {
  private used = 0;
  private readonly waiting = new Set<() => void>();

  constructor(readonly bytesMax: number = limits.nbdInFlightBytesTotalMax) {}

  get bytes(): number {
    return this.used;
  }

  get spent(): boolean {
    return this.used >= this.bytesMax;
  }

  take(bytes: number): void {
    this.used += bytes;
  }

  give(bytes: number): void {
    this.used -= bytes;
    if (this.used < this.bytesMax && this.waiting.size > 0) {
      const wake = [...this.waiting];
      this.waiting.clear();
      for (const w of wake) w();
    }
  }

  /** Calls `wake` (once) when bytes are returned; a connection registers it when it pauses on the budget. */
  onRoom(wake: () => void): void {
    this.waiting.add(wake);
  }

  cancel(wake: () => void): void {
    this.waiting.delete(wake);
  }
}
