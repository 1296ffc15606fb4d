// Online verify (`xdevice-cli device verify`, like `drbdadm verify`): every
// replica checksums its copy of a device as of ONE log index and the
// checksums are compared range by range.
//
// The replicated part is a VerifyRecord in the block store's table: created
// when the VERIFY_DEVICE entry at index i applies (its id is i), and filled
// by one VERIFY_RESULT entry per node. Every node applies the same entries,
// so every node holds the same records; they travel in checkpoints and
// snapshots (the last few only: limits.verifiesKept).
//
// The local part is a VerifyScan: the CRC32C of each range of the device
// file exactly as it was after entry i, computed while later writes keep
// applying. Consistency rests on the device file's one native descriptor
// running its operations in submission order (src/disk/disk-io.ts):
//   - at i, every write up to i has been submitted to the file (the store
//     drains the batch's gathered writes before it starts the scan);
//   - the scan reads each range with a pread on that same descriptor;
//   - before the store submits any change after i to a range (write, trim,
//     write-zeroes), it asks the scan to submit that range's read first
//     (beforeChange), so the read lands before the change on the I/O thread
//     and sees the range as of i;
//   - a range nothing touches is read by the background cursor, at any
//     time: nothing after i has been submitted for it, so it still is as of i.
// Resize and delete change a whole device at once: they abort its scans
// (reported as such), as does a snapshot install replacing the files.

import { assert } from '../errors.ts';
import type { DiskFile, DiskIo } from '../disk/disk-io.ts';
import { limits } from '../limits.ts';
import { crc32c } from '../native.ts';

const MiB = 1024 * 1024;

/** One node's answer: its checksums (base64 of little-endian u32s, one per range), or why it has none. */
export type VerifyNodeResult = { digests: string } | { why: string };

export interface VerifyRecord {
  /** Log index of the VERIFY_DEVICE entry; the content compared is the device after it. */
  id: number;
  device: string;
  deviceId: number;
  size: number;
  rangeBytes: number;
  /** Who asked (the proposer finds its verify id by it). */
  clientId: number;
  seq: number;
  results: Record<string, VerifyNodeResult>;
}

/** Ranges of 1 MiB, or larger for big devices so that one result stays small (limits.verifyRangesMax). */
export function verifyRangeBytes(size: number): number {
  let range = MiB;
  while (Math.ceil(size / range) > limits.verifyRangesMax) range *= 2;
  return range;
}

export function verifyRangeCount(size: number, rangeBytes: number): number {
  return Math.ceil(size / rangeBytes);
}

/** Why a VERIFY_DEVICE range size is not acceptable for `size`, or undefined. */
export function verifyRangeProblem(size: number, rangeBytes: number): string | undefined {
  if (!Number.isSafeInteger(rangeBytes) || rangeBytes < limits.deviceSizeAlignmentBytes || rangeBytes % limits.deviceSizeAlignmentBytes !== 0) {
    return `verify range of ${rangeBytes} bytes is not a positive multiple of ${limits.deviceSizeAlignmentBytes}`;
  }
  if (verifyRangeCount(size, rangeBytes) > limits.verifyRangesMax) return `verify of ${size} bytes in ${rangeBytes}-byte ranges is over ${limits.verifyRangesMax} ranges`;
  return undefined;
}

export function encodeDigests(d: Uint32Array): string {
  const b = Buffer.alloc(d.length * 4);
  for (let i = 0; i < d.length; i++) b.writeUInt32LE(d[i]!, i * 4);
  return b.toString('base64');
}

export function decodeDigests(s: string): Uint32Array {
  const b = Buffer.from(s, 'base64');
  const d = new Uint32Array(Math.floor(b.length / 4));
  for (let i = 0; i < d.length; i++) d[i] = b.readUInt32LE(i * 4);
  return d;
}

export type ScanOutcome = { digests: Uint32Array } | { why: string };

/** The local checksum pass of one verify over one device file (see the top of this file). */
export class VerifyScan {
  readonly ranges: number;
  private readonly digests: Uint32Array;
  /** 1 once a range's read has been submitted. */
  private readonly submitted: Uint8Array;
  private cursor = 0;
  private submittedCount = 0;
  private doneCount = 0;
  /** Bytes read and not yet checksummed (bounded by the store: see outstandingBytes). */
  outstandingBytes = 0;
  private aborted: string | undefined;
  private failed: Error | undefined;
  private resolveDone!: (o: ScanOutcome) => void;
  readonly done: Promise<ScanOutcome>;
  private drained: (() => void)[] = [];

  constructor(
    readonly record: VerifyRecord,
    private readonly disk: DiskIo,
    private readonly file: DiskFile,
  ) {
    this.ranges = verifyRangeCount(record.size, record.rangeBytes);
    this.digests = new Uint32Array(this.ranges);
    this.submitted = new Uint8Array(this.ranges);
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    if (this.ranges === 0) this.resolveDone({ digests: this.digests });
  }

  get active(): boolean {
    return this.aborted === undefined && this.failed === undefined && this.doneCount < this.ranges;
  }

  /** Reads the ranges nothing has touched, one after another, until all are done. */
  async run(): Promise<void> {
    while (this.active) {
      while (this.cursor < this.ranges && this.submitted[this.cursor] === 1) this.cursor++;
      if (this.cursor >= this.ranges) break;
      await this.submit(this.cursor);
    }
  }

  /**
   * Called synchronously before a change to [offset, offset+length) is
   * submitted to the file: ranges not read yet are read first.
   */
  beforeChange(offset: number, length: number): void {
    if (!this.active || length <= 0) return;
    const first = Math.floor(offset / this.record.rangeBytes);
    const last = Math.min(this.ranges - 1, Math.floor((offset + length - 1) / this.record.rangeBytes));
    for (let r = first; r <= last; r++) if (this.submitted[r] === 0) void this.submit(r);
  }

  /** Resolves once fewer than `bytes` are read and waiting to be checksummed. */
  async below(bytes: number): Promise<void> {
    while (this.outstandingBytes >= bytes && this.active) await new Promise<void>((resolve) => this.drained.push(resolve));
  }

  abort(why: string): void {
    if (!this.active) return;
    this.aborted = why;
    this.wake();
    this.resolveDone({ why });
  }

  private wake(): void {
    const w = this.drained;
    this.drained = [];
    for (const f of w) f();
  }

  /** Submits the read of range r NOW (synchronously: its place in the file's queue is fixed here). */
  private submit(r: number): Promise<void> {
    assert(this.submitted[r] === 0, `verify range ${r} read twice`);
    this.submitted[r] = 1;
    this.submittedCount++;
    const offset = r * this.record.rangeBytes;
    const length = Math.min(this.record.rangeBytes, this.record.size - offset);
    const buf = Buffer.allocUnsafe(length);
    this.outstandingBytes += length;
    return this.disk.pread(this.file, buf, offset).then(
      (n) => {
        this.outstandingBytes -= length;
        if (n < length) buf.fill(0, n);
        this.digests[r] = crc32c(buf);
        this.doneCount++;
        this.wake();
        if (this.doneCount === this.ranges && this.aborted === undefined && this.failed === undefined) this.resolveDone({ digests: this.digests });
      },
      (err: Error) => {
        this.outstandingBytes -= length;
        if (this.aborted !== undefined || this.failed !== undefined) return;
        this.failed = err;
        this.wake();
        this.resolveDone({ why: `reading the device file failed: ${err.message}` });
      },
    );
  }
}

/** A range where the nodes' checksums differ. */
export interface VerifyMismatch {
  range: number;
  offset: number;
  length: number;
  /** Nodes whose checksum differs from the majority's (all of them when there is no majority). */
  nodes: string[];
  digests: Record<string, string>;
}

export interface VerifyReport {
  id: number;
  device: string;
  size: number;
  rangeBytes: number;
  ranges: number;
  /** Nodes that reported checksums. */
  verified: string[];
  /** Nodes that could not (why). */
  unavailable: Record<string, string>;
  /** Members with no result yet. */
  pending: string[];
  complete: boolean;
  mismatches: VerifyMismatch[];
}

const hex = (d: number) => d.toString(16).padStart(8, '0');

/** Compares the results of one verify; `members` are the nodes expected to answer. */
export function compareVerify(v: VerifyRecord, members: readonly string[]): VerifyReport {
  const ranges = verifyRangeCount(v.size, v.rangeBytes);
  const verified: string[] = [];
  const unavailable: Record<string, string> = {};
  const digests = new Map<string, Uint32Array>();
  for (const [node, res] of Object.entries(v.results).sort(([a], [b]) => a.localeCompare(b))) {
    if ('digests' in res) {
      const d = decodeDigests(res.digests);
      if (d.length === ranges) {
        verified.push(node);
        digests.set(node, d);
        continue;
      }
      unavailable[node] = `reported ${d.length} ranges, expected ${ranges}`;
    } else {
      unavailable[node] = res.why;
    }
  }
  const pending = members.filter((m) => v.results[m] === undefined).sort();
  const mismatches: VerifyMismatch[] = [];
  if (digests.size >= 2) {
    for (let r = 0; r < ranges; r++) {
      const counts = new Map<number, number>();
      for (const d of digests.values()) counts.set(d[r]!, (counts.get(d[r]!) ?? 0) + 1);
      if (counts.size === 1) continue;
      let majority: number | undefined;
      for (const [value, n] of counts) if (n * 2 > digests.size) majority = value;
      const offset = r * v.rangeBytes;
      const per: Record<string, string> = {};
      const nodes: string[] = [];
      for (const [node, d] of digests) {
        per[node] = hex(d[r]!);
        if (majority === undefined || d[r] !== majority) nodes.push(node);
      }
      mismatches.push({ range: r, offset, length: Math.min(v.rangeBytes, v.size - offset), nodes, digests: per });
    }
  }
  return { id: v.id, device: v.device, size: v.size, rangeBytes: v.rangeBytes, ranges, verified, unavailable, pending, complete: pending.length === 0, mismatches };
}

/** What the replica does with verifies as they apply on this node. */
export interface VerifyListener {
  /** Why the device files here are not exactly as of `index` (replay after a restart, a fuzzy snapshot), or undefined if they are. */
  inexactAt(index: number): string | undefined;
  /** This node's outcome for a verify (once its scan finished, or at once when it cannot scan). */
  result(v: VerifyRecord, outcome: ScanOutcome): void;
}

/**
 * The block store's verify state: the replicated records (the latest
 * limits.verifiesKept) and this node's running scans, per device id.
 */
export class VerifyTable {
  private records: VerifyRecord[] = [];
  private readonly scans = new Map<number, VerifyScan[]>();
  listener: VerifyListener | undefined;

  load(records: readonly VerifyRecord[] | undefined): void {
    this.records = (records ?? []).map(copyRecord);
  }

  export(): VerifyRecord[] {
    return this.records.map(copyRecord);
  }

  get(id: number): VerifyRecord | undefined {
    const v = this.records.find((r) => r.id === id);
    return v && copyRecord(v);
  }

  list(): VerifyRecord[] {
    return this.export();
  }

  /** A VERIFY_DEVICE applied at v.id; every write up to it is already submitted to `file`. */
  add(v: VerifyRecord, disk: DiskIo, file: DiskFile): void {
    this.records.push(copyRecord(v));
    while (this.records.length > limits.verifiesKept) this.records.shift();
    const listener = this.listener;
    if (!listener) return;
    const why = listener.inexactAt(v.id);
    if (why !== undefined) {
      listener.result(copyRecord(v), { why });
      return;
    }
    const scan = new VerifyScan(copyRecord(v), disk, file);
    const list = this.scans.get(v.deviceId) ?? [];
    list.push(scan);
    this.scans.set(v.deviceId, list);
    void scan.run();
    void scan.done.then((outcome) => {
      const l = this.scans.get(v.deviceId);
      if (l) {
        const rest = l.filter((s) => s !== scan);
        if (rest.length === 0) this.scans.delete(v.deviceId);
        else this.scans.set(v.deviceId, rest);
      }
      listener.result(copyRecord(v), outcome);
    });
  }

  /** A VERIFY_RESULT applied: the first result of each node counts. */
  addResult(verifyId: number, nodeId: string, result: VerifyNodeResult): void {
    const v = this.records.find((r) => r.id === verifyId);
    if (!v || v.results[nodeId] !== undefined) return;
    v.results[nodeId] = result;
  }

  scanning(deviceId: number): boolean {
    return this.scans.has(deviceId);
  }

  /** Before a change to [offset, offset+length) of a device is submitted: scans read what it will overwrite first. */
  beforeChange(deviceId: number, offset: number, length: number): void {
    for (const s of this.scans.get(deviceId) ?? []) s.beforeChange(offset, length);
  }

  /** A scan whose read-ahead reached the bound, if any (apply waits for it to drain). */
  overReadAhead(deviceId: number): VerifyScan | undefined {
    return this.scans.get(deviceId)?.find((s) => s.outstandingBytes >= limits.verifyReadAheadBytesMax);
  }

  abortDevice(deviceId: number, why: string): void {
    for (const s of this.scans.get(deviceId) ?? []) s.abort(why);
  }

  abortAll(why: string): void {
    for (const list of this.scans.values()) for (const s of list) s.abort(why);
  }
}

function copyRecord(v: VerifyRecord): VerifyRecord {
  return { ...v, results: { ...v.results } };
}
