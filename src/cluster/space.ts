// Free space on the data directory's filesystem, measured with statfs every
// spaceCheckIntervalMs and, between measurements, lowered by what this node
// has admitted since (sparse device files grow as writes land). Writes that
// would take it below the reserve are refused with ENOSPC before they are
// proposed: a full disk becomes a client error instead of a failed apply on
// every replica at once.

import { statfs } from 'node:fs/promises';
import { limits } from '../limits.ts';

export interface SpaceReport {
  /** Free bytes an unprivileged writer may use, as last measured minus writes admitted since. */
  freeBytes: number;
  totalBytes: number;
  reserveBytes: number;
}

export class SpaceMonitor {
  private measuredFree = Number.POSITIVE_INFINITY;
  private total = 0;
  private admittedSince = 0;
  private timer: NodeJS.Timeout | undefined;
  private measuring = false;

  constructor(
    private readonly dir: string,
    readonly reserveBytes: number,
  ) {}

  async start(): Promise<void> {
    await this.measure();
    this.timer = setInterval(() => void this.measure(), limits.spaceCheckIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async measure(): Promise<void> {
    if (this.measuring) return;
    this.measuring = true;
    const admitted = this.admittedSince;
    try {
      const s = await statfs(this.dir);
      this.measuredFree = Number(s.bavail) * Number(s.bsize);
      this.total = Number(s.blocks) * Number(s.bsize);
      // What was admitted while statfs ran may not be in its answer yet: keep counting it.
      this.admittedSince -= admitted;
    } catch {
      // An unreadable filesystem shows up in the WAL and apply paths; keep the last value.
    } finally {
      this.measuring = false;
    }
  }

  get freeBytes(): number {
    return Math.max(0, this.measuredFree - this.admittedSince);
  }

  report(): SpaceReport {
    return { freeBytes: Number.isFinite(this.freeBytes) ? this.freeBytes : 0, totalBytes: this.total, reserveBytes: this.reserveBytes };
  }

  /** Would `bytes` more take free space below the reserve? */
  wouldBreachReserve(bytes: number): boolean {
    return this.freeBytes - bytes < this.reserveBytes;
  }

  /** Counts `bytes` admitted (they will land in a device file). */
  admit(bytes: number): void {
    this.admittedSince += bytes;
  }
}
