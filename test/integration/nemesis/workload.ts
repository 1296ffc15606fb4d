// Clients for the nemesis: each is bound to one node, reads and writes unique
// values to a small set of 4 KiB blocks over real NBD connections, and records
// every operation with call and return times and an outcome.
//
// A block holds its value in the first bytes and a fill derived from it in the
// rest, so a torn or mixed block reads back as a value nobody wrote.

import { createHash } from 'node:crypto';
import { NbdClient } from '../../../src/nbd/client.ts';
import type { HistoryOp } from './checker.ts';

export const BLOCK_BYTES = 4096;
const VALUE_BYTES = 64;

export function encodeBlock(value: string): Buffer {
  const block = Buffer.alloc(BLOCK_BYTES);
  block.write(value.padEnd(VALUE_BYTES, ' '), 0, 'ascii');
  const fill = createHash('sha256').update(value).digest();
  for (let off = VALUE_BYTES; off < BLOCK_BYTES; off += fill.length) fill.copy(block, off);
  return block;
}

/** The value a block holds; null for never-written (all zero); a marker for torn content. */
export function decodeBlock(block: Buffer): string | null {
  if (block.every((b) => b === 0)) return null;
  const value = block.toString('ascii', 0, VALUE_BYTES).trimEnd();
  return encodeBlock(value).equals(block) ? value : `torn:${createHash('sha256').update(block).digest('hex').slice(0, 12)}`;
}

export interface Rng {
  next(): number; // [0, 1)
  int(n: number): number;
}

/** sfc32: small, fast, seeded. */
export function rng(seed: number): Rng {
  let a = 0x9e3779b9, b = 0x243f6a88, c = 0xb7e15162, d = seed >>> 0;
  const next = () => {
    a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
    const t = (a + b) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    d = (d + 1) | 0;
    const r = (t + d) | 0;
    c = (c + r) | 0;
    return (r >>> 0) / 4294967296;
  };
  for (let i = 0; i < 15; i++) next();
  return { next, int: (n) => Math.floor(next() * n) };
}

const now = () => Number(process.hrtime.bigint());

export interface WorkloadOptions {
  clients: number;
  blocks: number;
  /** Client k talks to node ports[k % ports.length]. */
  nbdPorts: () => number[];
  exportName: string;
  opTimeoutMs: number;
  seed: number;
  readFraction?: number;
}

export class Workload {
  readonly history: HistoryOp[] = [];
  private running = false;
  private loops: Promise<void>[] = [];
  private readonly rand: Rng;
  private writeCounter = 0;
  /** Successful writes, by return time, for the recovery report. */
  readonly okWriteTimes: number[] = [];

  constructor(private readonly options: WorkloadOptions) {
    this.rand = rng(options.seed);
  }

  start(): void {
    this.running = true;
    for (let k = 0; k < this.options.clients; k++) this.loops.push(this.clientLoop(k));
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }

  private async connect(k: number, attempt: number): Promise<NbdClient | undefined> {
    const ports = this.options.nbdPorts();
    const port = ports[(k + attempt) % ports.length]!;
    try {
      const client = await NbdClient.connect({ host: '127.0.0.1', port, connectTimeoutMs: 2_000 });
      try {
        await withTimeout(client.openDevice(this.options.exportName), 5_000);
      } catch (err) {
        client.destroy();
        throw err;
      }
      return client;
    } catch {
      return undefined;
    }
  }

  private async clientLoop(k: number): Promise<void> {
    let client: NbdClient | undefined;
    let attempt = 0;
    while (this.running) {
      if (!client) {
        client = await this.connect(k, attempt++);
        if (!client) {
          await sleep(100);
          continue;
        }
      }
      const block = this.rand.int(this.options.blocks);
      const isRead = this.rand.next() < (this.options.readFraction ?? 0.5);
      const call = now();
      if (isRead) {
        try {
          const data = await withTimeout(client.read(block * BLOCK_BYTES, BLOCK_BYTES), this.options.opTimeoutMs);
          this.history.push({ client: k, op: 'read', block, value: decodeBlock(data), call, return: now(), status: 'ok' });
        } catch (err) {
          this.history.push({ client: k, op: 'read', block, value: null, call, return: now(), status: 'unknown' });
          client = this.dropIfBroken(client, err);
        }
      } else {
        const value = `c${k}-${++this.writeCounter}`;
        try {
          await withTimeout(client.write(block * BLOCK_BYTES, encodeBlock(value)), this.options.opTimeoutMs);
          const ret = now();
          this.history.push({ client: k, op: 'write', block, value, call, return: ret, status: 'ok' });
          this.okWriteTimes.push(ret);
        } catch (err) {
          // An error reply or a timeout does not prove the write did not commit.
          this.history.push({ client: k, op: 'write', block, value, call, return: now(), status: 'unknown' });
          client = this.dropIfBroken(client, err);
        }
      }
    }
    client?.destroy();
  }

  /** Any failure: reconnect (maybe to another node) rather than trust the connection. */
  private dropIfBroken(client: NbdClient, _err: unknown): undefined {
    client.destroy();
    return undefined;
  }

  /** Reads every block through every given node after the faults: the final state. */
  async finalReads(ports: number[]): Promise<void> {
    for (const port of ports) {
      const client = await NbdClient.connect({ host: '127.0.0.1', port });
      await client.openDevice(this.options.exportName);
      for (let block = 0; block < this.options.blocks; block++) {
        const call = now();
        const data = await client.read(block * BLOCK_BYTES, BLOCK_BYTES);
        this.history.push({ client: `final@${port}`, op: 'read', block, value: decodeBlock(data), call, return: now(), status: 'ok' });
      }
      await client.close();
    }
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
