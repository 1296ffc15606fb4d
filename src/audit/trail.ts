// One audit trail on disk: hash-chained JSON lines (record.ts) in
// DATA/audit/<scope>-NNNNNN.jsonl, rotated to the next number before a file
// would pass limits.auditFileBytesMax, and DATA/audit/<scope>.head, the last
// record's seq and hash, replaced atomically after every batch of appends.
//
// The head is what makes a removed tail visible: the chain alone cannot tell
// a trail whose last records were cut off from one that ended there. At
// start-up a head ahead of the files (or disagreeing with the record it
// names) means records were removed or edited: the node refuses to start,
// naming the files (DESIGN contract 9), and changes nothing. A head behind
// the files is a crash between an append and the head's replacement, and a
// last line without its newline a torn append: both are repaired, as the
// WAL repairs its torn tail.
//
// Appends are queued and written in order, a batch at a time with one
// fdatasync per file. The cluster trail is written by apply (AUDIT_RECORD
// entries, applyRecord): every record carries its log index, and an entry
// at or below the last index in the trail is a replay after a crash and is
// not written again. A failed write leaves the trail failed: every later
// append rejects (for the cluster trail, apply fails the node: a local disk
// failure).

import { mkdir, open, readdir, readFile, rename, truncate, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import type { AuditScope } from './event.ts';
import type { AuditEntry } from './entry.ts';
import { anchorLine, chainRecord, GENESIS_HASH, parseAnchorLine, parseRecordLine, recordLine, type TrailRecord } from './record.ts';

export const AUDIT_DIR = 'audit';

export interface TrailHead {
  seq: number;
  hash: string;
  /** Log index of the last cluster record (0: none, and always 0 for a node trail). */
  index: number;
}

export class AuditTrailError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_AUDIT', message);
  }
}

export function trailFileName(scope: AuditScope, n: number): string {
  return `${scope}-${String(n).padStart(6, '0')}.jsonl`;
}

export function headFileName(scope: AuditScope): string {
  return `${scope}.head`;
}

/** The trail's files in chain order (by number). */
export async function trailFiles(dir: string, scope: AuditScope): Promise<{ n: number; name: string }[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const re = new RegExp(`^${scope}-([0-9]{6,15})\\.jsonl$`);
  return names
    .map((name) => ({ name, m: re.exec(name) }))
    .filter((x) => x.m !== null)
    .map((x) => ({ n: Number(x.m![1]), name: x.name }))
    .sort((a, b) => a.n - b.n);
}

/** The stored head, or undefined if there is none; a malformed one is reported as such. */
export async function readHead(dir: string, scope: AuditScope): Promise<TrailHead | undefined | 'malformed'> {
  let text: string;
  try {
    text = await readFile(join(dir, headFileName(scope)), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const h = JSON.parse(text) as TrailHead;
    if (Number.isSafeInteger(h.seq) && h.seq >= 0 && typeof h.hash === 'string' && /^[0-9a-f]{64}$/.test(h.hash) && Number.isSafeInteger(h.index) && h.index >= 0) return h;
  } catch {
    // reported below
  }
  return 'malformed';
}

async function syncDir(dir: string): Promise<void> {
  const fd = await open(dir, 'r');
  try {
    await fd.sync();
  } finally {
    await fd.close();
  }
}

interface Pending {
  /** A record to chain, or (undefined) the anchor `anchor`. */
  entry: AuditEntry | undefined;
  anchor?: TrailHead;
  index: number | undefined;
  resolve(r: TrailRecord | undefined): void;
  reject(err: Error): void;
}

export class AuditTrail {
  private queue: Pending[] = [];
  private writing = false;
  private drained: Promise<void> = Promise.resolve();
  private failed: Error | undefined;
  private closed = false;

  private constructor(
    readonly dir: string,
    readonly scope: AuditScope,
    private head_: TrailHead,
    private fd: FileHandle,
    private fileNumber: number,
    private fileBytes: number,
    private readonly logger: Logger,
  ) {}

  get head(): TrailHead {
    return { ...this.head_ };
  }

  /** Opens (or starts) the trail of `scope` in `dir`; refuses, changing nothing, if records were removed or edited at its end. */
  static async open(dir: string, scope: AuditScope, logger: Logger): Promise<AuditTrail> {
    await mkdir(dir, { recursive: true, mode: 0o750 });
    const files = await trailFiles(dir, scope);
    let head: TrailHead = { seq: 0, hash: GENESIS_HASH, index: 0 };
    let lastFileBytes = 0;
    // The last record: in the newest file holding one (a rotation may have left the newest one empty).
    for (let i = files.length - 1; i >= 0; i--) {
      const path = join(dir, files[i]!.name);
      let text = await readFile(path, 'utf8');
      if (text.length > 0 && !text.endsWith('\n')) {
        const keep = text.lastIndexOf('\n') + 1;
        logger.warn({ file: path, bytes: Buffer.byteLength(text) - Buffer.byteLength(text.slice(0, keep)) }, 'audit trail: torn last line (an append cut short by a crash) truncated');
        text = text.slice(0, keep);
        await truncate(path, Buffer.byteLength(text));
      }
      if (i === files.length - 1) lastFileBytes = Buffer.byteLength(text);
      const lines = text.split('\n').filter((l) => l !== '');
      if (lines.length === 0) continue;
      const anchored = parseAnchorLine(lines[lines.length - 1]!);
      if (anchored) {
        head = { ...anchored.anchor };
        break;
      }
      const parsed = parseRecordLine(lines[lines.length - 1]!);
      if ('problem' in parsed) throw new AuditTrailError(`${path}, line ${lines.length}: ${parsed.problem}; the audit trail is damaged. Keep the files, check them with xdevice-cli audit verify --data-dir, then move ${dir} aside to start`);
      head = { seq: parsed.record.seq, hash: parsed.record.hash, index: parsed.record.index ?? 0 };
      break;
    }
    const stored = await readHead(dir, scope);
    const headPath = join(dir, headFileName(scope));
    const refuse = (what: string) =>
      new AuditTrailError(`${what}: records of the ${scope} audit trail in ${dir} were removed or edited. Keep the files for investigation (xdevice-cli audit verify --data-dir shows where), then move ${dir} aside to start`);
    if (stored === 'malformed') throw refuse(`${headPath} is malformed`);
    if (stored === undefined && head.seq > 0) throw refuse(`${headPath} is missing while the trail holds ${head.seq} records`);
    if (stored && stored.seq > head.seq) throw refuse(`${headPath} says the trail ends at record ${stored.seq}, the files end at ${head.seq}`);
    if (stored && stored.seq === head.seq && stored.hash !== head.hash) throw refuse(`the last record (${head.seq}) does not have the hash ${headPath} names`);
    const fileNumber = files.length > 0 ? files[files.length - 1]!.n : 1;
    const fd = await open(join(dir, trailFileName(scope, fileNumber)), 'a', 0o640);
    const trail = new AuditTrail(dir, scope, head, fd, fileNumber, lastFileBytes, logger);
    if (!stored || stored.seq !== head.seq) {
      await syncDir(dir);
      await trail.writeHead();
    }
    return trail;
  }

  /**
   * Appends `entry` (cluster records with their log index). Resolves with the
   * record written, or undefined when `index` is at or below the trail's last
   * index (a replayed entry, already written).
   */
  append(entry: AuditEntry, index?: number): Promise<TrailRecord | undefined> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new AuditTrailError(`the ${this.scope} audit trail is closed`));
    return new Promise((resolve, reject) => {
      this.queue.push({ entry, index, resolve, reject });
      if (!this.writing) this.drained = this.drain();
    });
  }

  /**
   * AuditRecordApplier: a snapshot installed here covers the cluster trail up
   * to `head` (its state's audit head). If this trail is behind it, an anchor
   * line continues the chain from there (record.ts, TrailAnchor); a trail
   * already there or past it is left alone.
   */
  anchorAt(head: TrailHead): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    if (this.closed) return Promise.reject(new AuditTrailError(`the ${this.scope} audit trail is closed`));
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ entry: undefined, anchor: { ...head }, index: head.index, resolve: () => resolve(), reject });
      if (!this.writing) this.drained = this.drain();
    });
  }

  /** AuditRecordApplier: the head as of everything applied (between apply batches every append has drained). */
  clusterHead(): TrailHead {
    return this.head;
  }

  /** AuditRecordApplier (src/device/block-store.ts): an AUDIT_RECORD entry applying. */
  async applyRecord(index: number, entry: AuditEntry): Promise<void> {
    await this.append(entry, index);
  }

  private async drain(): Promise<void> {
    this.writing = true;
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0);
        if (this.failed) {
          for (const p of batch) p.reject(this.failed);
          continue;
        }
        let head = this.head_;
        const written: { p: Pending; record: TrailRecord | undefined; line: string }[] = [];
        for (const p of batch) {
          if (p.index !== undefined && p.index <= head.index) {
            written.push({ p, record: undefined, line: '' });
            continue;
          }
          if (p.entry === undefined) {
            const anchor = p.anchor!;
            this.logger.info({ seq: anchor.seq, index: anchor.index, after: head.seq }, 'audit: the cluster trail continues from a snapshot (anchor)');
            head = { ...anchor };
            written.push({ p, record: undefined, line: anchorLine({ anchor, time: new Date().toISOString() }) });
            continue;
          }
          const record = chainRecord(p.entry, this.scope, head, p.index);
          head = { seq: record.seq, hash: record.hash, index: p.index ?? head.index };
          written.push({ p, record, line: recordLine(record) });
        }
        try {
          await this.writeLines(written.map((w) => w.line).filter((l) => l !== ''));
          this.head_ = head;
          await this.writeHead();
        } catch (err) {
          this.failed = new AuditTrailError(`writing the ${this.scope} audit trail in ${this.dir} failed: ${(err as Error).message}`);
          this.logger.error({ err: (err as Error).message, dir: this.dir }, `audit: the ${this.scope} trail can no longer be written`);
          for (const w of written) w.p.reject(this.failed);
          continue;
        }
        for (const w of written) w.p.resolve(w.record);
      }
    } finally {
      this.writing = false;
    }
  }

  private async writeLines(lines: string[]): Promise<void> {
    if (lines.length === 0) return;
    let chunk = '';
    let chunkBytes = 0;
    for (const line of lines) {
      const n = Buffer.byteLength(line);
      if (this.fileBytes + chunkBytes + n > limits.auditFileBytesMax && this.fileBytes + chunkBytes > 0) {
        await this.flush(chunk, chunkBytes);
        await this.rotate();
        chunk = '';
        chunkBytes = 0;
      }
      chunk += line;
      chunkBytes += n;
    }
    await this.flush(chunk, chunkBytes);
  }

  private async flush(chunk: string, bytes: number): Promise<void> {
    if (bytes === 0) return;
    await this.fd.write(chunk);
    await this.fd.datasync();
    this.fileBytes += bytes;
  }

  private async rotate(): Promise<void> {
    await this.fd.close();
    this.fileNumber++;
    this.fd = await open(join(this.dir, trailFileName(this.scope, this.fileNumber)), 'a', 0o640);
    this.fileBytes = 0;
    await syncDir(this.dir);
    this.logger.info({ file: trailFileName(this.scope, this.fileNumber) }, `audit: ${this.scope} trail rotated`);
  }

  private async writeHead(): Promise<void> {
    const name = headFileName(this.scope);
    const tmp = join(this.dir, `${name}.tmp`);
    await writeFile(tmp, JSON.stringify(this.head_) + '\n', { mode: 0o640, flush: true });
    await rename(tmp, join(this.dir, name));
    await syncDir(this.dir);
  }

  /**
   * Records at or after `sinceMs` (by their time), the newest `limit` of
   * them, oldest first. Files are read newest first and reading stops at a
   * file whose records are all older (times follow the chain closely, not
   * exactly: cluster records carry their proposers' clocks).
   */
  async records(filter: { sinceMs?: number; limit: number }): Promise<TrailRecord[]> {
    const since = filter.sinceMs ?? 0;
    const out: TrailRecord[][] = [];
    let count = 0;
    const files = await trailFiles(this.dir, this.scope);
    for (let i = files.length - 1; i >= 0 && count < filter.limit; i--) {
      const text = await readFile(join(this.dir, files[i]!.name), 'utf8');
      const records: TrailRecord[] = [];
      let older = 0;
      for (const line of text.split('\n')) {
        if (line === '' || parseAnchorLine(line)) continue;
        const p = parseRecordLine(line);
        if ('problem' in p) continue; // a line being appended, or damage that verify reports
        if (Date.parse(p.record.time) >= since) records.push(p.record);
        else older++;
      }
      const take = records.slice(Math.max(0, records.length - (filter.limit - count)));
      out.unshift(take);
      count += take.length;
      if (older > 0 && records.length === 0) break;
    }
    return out.flat();
  }

  /** Waits for queued appends, then closes the file (later appends reject). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.drained;
    await this.fd.close();
  }
}

/** Both trails of a node's data directory (under the data directory's lock). */
export async function openTrails(dataDir: string, logger: Logger): Promise<{ cluster: AuditTrail; node: AuditTrail }> {
  const dir = join(dataDir, AUDIT_DIR);
  const cluster = await AuditTrail.open(dir, 'cluster', logger);
  try {
    return { cluster, node: await AuditTrail.open(dir, 'node', logger) };
  } catch (err) {
    await cluster.close();
    throw err;
  }
}
