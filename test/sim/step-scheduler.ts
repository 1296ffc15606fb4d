// A DiskScheduler for tests that run real async code (the WAL, the block
// store) on a SimDisk without the whole simulator: simulated time advances
// event by event, and after each event every continuation it released runs
// (one turn of the real event loop, in which nothing else is scheduled: pass
// `defer: (fn) => scheduler.after(0, fn)` to the WAL so its group commit is
// an event too).

import { EventQueue, type Timed } from './event-queue.ts';
import type { DiskScheduler } from './sim-disk.ts';

interface Scheduled extends Timed {
  fn: () => void;
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class StepScheduler implements DiskScheduler {
  now = 0;
  events = 0;
  private readonly queue = new EventQueue<Scheduled>();

  after(ms: number, fn: () => void): void {
    this.queue.push({ at: this.now + Math.max(0, ms), fn });
  }

  get pending(): number {
    return this.queue.size;
  }

  /** Runs the next event and what it released; false when nothing is scheduled. */
  async step(): Promise<boolean> {
    await turn();
    const ev = this.queue.pop();
    if (!ev) return false;
    this.now = ev.at;
    this.events++;
    ev.fn();
    await turn();
    return true;
  }

  /** Runs events until `p` settles; its outcome. Rejects if nothing is left to run first (a hang). */
  async run<T>(p: Promise<T>): Promise<T> {
    let settled = false;
    p.then(
      () => (settled = true),
      () => (settled = true),
    );
    await turn();
    while (!settled) {
      if (!(await this.step())) {
        await turn();
        if (!settled) throw new Error('nothing left to run and the operation never settled');
      }
    }
    return p;
  }

  /** Runs every event there is (until the queue is empty). */
  async drain(): Promise<void> {
    while (await this.step());
  }
}
