// The replicated state machine: applies committed commands to one sparse data
// file per device under <data-dir>/devices/, and serves reads from them.
//
// Apply is idempotent (contract 4): a write overwrites, a trim or zeroing
// punches a hole, a create starts from an empty file, so replaying the log
// from any checkpoint at or below the files' real state ends in the same
// bytes. A retried request is applied at most once (RequestDedup).
//
// All I/O goes through a DiskIo (the real disk unless the simulator passes
// its own). Ordering: writes go through the native addon, whose per-descriptor I/O
// thread completes them in submission order — two writes to one block land
// in log order without awaiting each. The applied index moves only once a
// batch's writes have completed, so a read issued when applied >= i sees
// every entry up to i. Reads use a second native descriptor (its own I/O
// thread, so they never queue behind writes; for page-cache hits it is
// several times cheaper than node:fs). Nothing is fdatasync'd on apply: the
// WAL holds the entries durably; a checkpoint syncs the files before the
// WAL may forget.
//
// Read-only devices (SET_DEVICE_FLAGS, CREATE_DEVICE flags) refuse data
// commands at apply with EPERM, the same on every node: the NBD layer
// refuses them before proposing, this catches a write proposed before the
// flag applied. Verify (VERIFY_DEVICE/RESULT) lives in verify.ts, the audit
// trail (AUDIT_RECORD) in src/audit/trail.ts; this file only hooks them into apply. (Over 500 lines: apply and its table commands
// read best in one place.)
//
// Encrypted devices (src/device/encryption.ts) hold ciphertext only: apply
// keeps their wrapped keys and rekey watermark and refuses, as recorded
// results, plaintext writes, unaligned ones and ones encrypted under a key
// the device has left; it never needs a key.
//
// Snapshots (SNAPSHOT_CREATE/DELETE) and their copy-on-write live in
// snapshots.ts: before a data command's write is submitted, the blocks it is
// the first to change since the device's newest snapshot are preserved there,
// durably (apply waits for the earlier writes first).

import { join } from 'node:path';
import type { Logger } from 'pino';
import { type DiskFile, type DiskIo, pathExists } from '../disk/disk-io.ts';
import { nativeDisk } from '../disk/native-disk.ts';
import { assert } from '../errors.ts';
import { limits } from '../limits.ts';
import { EntryType, type Entry } from '../raft/types.ts';
import type { Extent } from './block-device.ts';
import { type DeviceRecord, type StoreState, readCheckpoint, syncDir, writeCheckpoint } from './checkpoint.ts';
import type { AuditEntry } from '../audit/entry.ts';
import { type Command, CommandOp, DEVICE_FLAG_ENCRYPTED, DEVICE_FLAG_READ_ONLY, decodeCommand, type RequestId } from './commands.ts';
import { advanceRekey, finishRekey, noteTouched, rekeyStepProblem, STALE_KEY, staleWrite, storedKey } from './encryption.ts';
import { deviceNameProblem, deviceSizeProblem } from '../parse.ts';
import { MemberTable, type PublishedMember } from './member-table.ts';
import { RequestDedup } from './request-dedup.ts';
import { encodeDigests, verifyRangeProblem, VerifyTable, type VerifyRecord } from './verify.ts';
import { type SnapshotRecord, SnapshotSet, type SnapshotToSend } from './snapshots.ts';

export const DEVICES_DIR = 'devices';
/** Where files found in devices/ but not in the device table are moved (never deleted). */
export const QUARANTINE_DIR = 'quarantine';

/** Why a command did not change the state (the same on every node: it depends only on the log). */
export interface ApplyError {
  /** errno-style for data commands (the NBD layer maps them), XDEVICE_ERR_* for the device table. */
  code: string;
  message: string;
}

export interface ApplyOutcome {
  index: number;
  request?: RequestId;
  /** The request was already applied (a retry): its waiter counts it done. */
  duplicate?: boolean;
  error?: ApplyError;
}

/** Writes of one apply batch bound for one device file, in entry order. */
interface GatheredWrites {
  bufs: Buffer[];
  positions: number[];
}

interface OpenDevice {
  record: DeviceRecord;
  path: string;
  /**
   * Native descriptor for writes, holes AND reads: its I/O thread runs them in
   * submission order, so a read never overlaps the apply of a later write to
   * the same block (a second descriptor with its own thread let a read see a
   * half-copied 4 KiB page — a torn read the nemesis caught).
   */
  file: DiskFile;
}

/** Where AUDIT_RECORD entries go (src/audit/trail.ts); a store without one (the simulator) applies them as no-ops. */
export interface AuditRecordApplier {
  /** Appends the entry at log index `index` unless the trail already holds it (replay); rejects only on I/O errors. */
  applyRecord(index: number, entry: AuditEntry): Promise<void>;
  /** The cluster trail's head as of the applied index (only between batches); a snapshot carries it. */
  clusterHead(): { seq: number; hash: string; index: number };
  /** A snapshot installed here covers the trail up to `head`: the chain continues from it. */
  anchorAt(head: { seq: number; hash: string; index: number }): Promise<void>;
}

export function deviceFileName(id: number): string {
  return `dev-${id}.img`;
}


export class BlockStore {
  /** TEST ONLY, a planted bug for the simulator's self-test: each batch's writes are applied again after the next batch's (an entry applied twice, out of order). */
  testingApplyTwice = false;
  /** Wall-clock ms, for quarantine directory names. */
  private now: () => number = Date.now;
  private testingPrevious: Command[] = [];
  private readonly byId = new Map<number, OpenDevice>();
  private readonly byName = new Map<string, number>();
  private dedup: RequestDedup;
  private members: Record<string, string>;
  private readonly removed = new Set<string>();
  private published: MemberTable;
  private applying = false;
  /** Verify records (replicated) and this node's scans; the replica sets its listener. */
  readonly verifies = new VerifyTable();
  /** Point-in-time snapshots of the devices (src/device/snapshots.ts). */
  private snaps!: SnapshotSet;
  /** The cluster audit trail; set by the runtime before the first apply. */
  auditTrail: AuditRecordApplier | undefined;
  clusterId: string;
  appliedIndex: number;
  appliedTerm: number;
  /** Index of the last checkpoint written (or loaded). */
  checkpointIndex: number;

  private constructor(
    readonly dataDir: string,
    state: StoreState,
    private readonly logger: Logger,
    private readonly disk: DiskIo,
  ) {
    this.clusterId = state.clusterId;
    this.appliedIndex = state.appliedIndex;
    this.appliedTerm = state.appliedTerm;
    this.checkpointIndex = state.appliedIndex;
    this.members = { ...state.members };
    for (const id of state.removed ?? []) this.removed.add(id);
    this.dedup = RequestDedup.from(state.dedup);
    this.published = MemberTable.from(state.published);
    this.verifies.load(state.verifies);
  }

  get devicesDir(): string {
    return join(this.dataDir, DEVICES_DIR);
  }

  /** Opens the store as the checkpoint describes it (an empty store on a fresh data directory). */
  /** `now` names quarantine directories (wall-clock ms; the simulator passes its own clock). */
  static async open(dataDir: string, logger: Logger, opts: { disk?: DiskIo; now?: () => number } = {}): Promise<BlockStore> {
    const disk = opts.disk ?? nativeDisk;
    await disk.mkdir(join(dataDir, DEVICES_DIR), { recursive: true });
    const state = (await readCheckpoint(dataDir, disk)) ?? emptyState();
    const store = new BlockStore(dataDir, state, logger, disk);
    await store.openDevices(state.devices, false);
    if (opts.now) store.now = opts.now;
    store.snaps = await SnapshotSet.load(dataDir, disk, logger, state.snapshots ?? [], state.appliedIndex, state.snapshotsLostUpTo ?? 0, store.now);
    await store.quarantineOrphans();
    return store;
  }

  private async openDevices(records: DeviceRecord[], fresh: boolean): Promise<void> {
    for (const record of records) {
      const path = join(this.devicesDir, deviceFileName(record.id));
      if (!fresh) {
        // A device in the checkpoint whose file is gone was deleted by an
        // entry after the checkpoint (replay deletes it again); recreate it
        // empty so replay has something to write to.
        if (!(await pathExists(this.disk, path))) this.logger.warn({ device: record.name, path }, 'device file missing; recreated empty for replay');
      }
      await this.attach(record, path, !fresh);
    }
  }

  private async attach(record: DeviceRecord, path: string, keepContents: boolean): Promise<OpenDevice> {
    const file = await this.disk.openFile(path, { create: true });
    if (!keepContents) await this.disk.truncate(file, 0);
    await this.disk.truncate(file, record.size);
    const dev: OpenDevice = { record: { ...record }, path, file };
    this.byId.set(record.id, dev);
    this.byName.set(record.name, record.id);
    return dev;
  }

  private async detach(dev: OpenDevice): Promise<void> {
    this.byId.delete(dev.record.id);
    if (this.byName.get(dev.record.name) === dev.record.id) this.byName.delete(dev.record.name);
    await this.disk.closeFile(dev.file);
  }

  /**
   * Files the device table does not know: usually a device created after the
   * checkpoint and before a crash (replay recreates it), but possibly the
   * only copy of data (a checkpoint or WAL lost). Never deleted: moved to
   * <data-dir>/quarantine/<time>/ and logged, for an operator to look at.
   */
  private async quarantineOrphans(): Promise<void> {
    const now = this.now;
    const known = new Set([...this.byId.values()].map((d) => deviceFileName(d.record.id)));
    const orphans = (await this.disk.readdir(this.devicesDir)).filter((name) => !known.has(name));
    if (orphans.length === 0) return;
    const dir = join(this.dataDir, QUARANTINE_DIR, new Date(now()).toISOString().replace(/[:.]/g, '-'));
    await this.disk.mkdir(dir, { recursive: true });
    for (const name of orphans) {
      await this.disk.rename(join(this.devicesDir, name), join(dir, name));
      this.logger.warn({ file: join(this.devicesDir, name), movedTo: join(dir, name) }, 'file not in the device table quarantined (not deleted)');
    }
    await syncDir(dir, this.disk);
    await syncDir(this.devicesDir, this.disk);
  }

  // ---- the device table ------------------------------------------------------

  devices(): DeviceRecord[] {
    return [...this.byId.values()].map((d) => copyRecord(d.record));
  }

  device(name: string): DeviceRecord | undefined {
    const id = this.byName.get(name);
    return id === undefined ? undefined : copyRecord(this.byId.get(id)!.record);
  }

  deviceById(id: number): DeviceRecord | undefined {
    const d = this.byId.get(id);
    return d ? copyRecord(d.record) : undefined;
  }

  memberAddresses(): Record<string, string> {
    return { ...this.members };
  }

  /** Membership is replicated state too: the runtime records it as it applies membership entries. */
  setMember(id: string, address: string | undefined): void {
    if (address === undefined) {
      delete this.members[id];
      this.removed.add(id);
      this.published.forget(id);
    } else {
      this.members[id] = address;
      this.removed.delete(id);
    }
  }

  /** What member `id` published about itself (PUBLISH_MEMBER), if anything. */
  publishedMember(id: string): PublishedMember | undefined {
    return this.published.get(id);
  }

  /** Whether `id` was removed from the cluster (and not added back). */
  wasRemoved(id: string): boolean {
    return this.removed.has(id);
  }

  // ---- apply -------------------------------------------------------------------

  /**
   * Applies committed entries in order. Entries at or below appliedIndex are
   * already in the files (replay after a checkpoint or a snapshot) and are
   * skipped; membership entries go to `onConfChange` at their place in the
   * order.
   *
   * `onOutcome` hears each command's outcome as soon as it is decided: for a
   * write that is when its place in the device file's ordered I/O is fixed
   * (it is queued on the file's I/O thread before this call first yields),
   * before it completes. A caller may acknowledge it then: the entry is
   * committed (durable on a majority), and every read waits for the applied
   * index, which moves only once the batch has completed.
   *
   * Resolves once every write has completed; rejects only on an I/O error,
   * which the caller must treat as fatal.
   */
  async applyBatch(entries: readonly Entry[], onConfChange: (e: Entry) => void, onOutcome: (o: ApplyOutcome) => void = () => {}): Promise<ApplyOutcome[]> {
    assert(!this.applying, 'applyBatch while another batch is applying');
    this.applying = true;
    const outcomes: ApplyOutcome[] = [];
    const decided = (o: ApplyOutcome): void => {
      outcomes.push(o);
      onOutcome(o);
    };
    let pending: Promise<unknown>[] = [];
    // Writes wait here, per file, to go down in one native call each (one
    // I/O-thread wake for the batch instead of one per write). They are
    // submitted before this function yields (so before any waiter settled
    // above can run) and before any other operation on the same file.
    const gathered = new Map<DiskFile, GatheredWrites>();
    const submitGathered = (file?: DiskFile): void => {
      for (const [gfile, g] of gathered) {
        if (file !== undefined && gfile !== file) continue;
        gathered.delete(gfile);
        pending.push(g.bufs.length === 1 ? this.disk.pwrite(gfile, g.bufs[0]!, g.positions[0]!) : this.disk.pwriteBatch(gfile, g.bufs, g.positions));
      }
    };
    const barrier = async (): Promise<void> => {
      submitGathered();
      if (pending.length === 0) return;
      const p = pending;
      pending = [];
      await Promise.all(p);
    };
    const testingCurrent: Command[] = [];
    try {
      let last: Entry | undefined;
      for (const e of entries) {
        if (e.index <= this.appliedIndex) {
          // Already reflected in the files. A waiter for it is done.
          if (e.type === EntryType.ConfChange) onConfChange(e);
          else if (e.data.length > 0) decided(this.alreadyApplied(e));
          continue;
        }
        last = e;
        if (e.type === EntryType.ConfChange) {
          onConfChange(e);
          continue;
        }
        if (e.data.length === 0) continue; // a leader's no-op
        let cmd: Command;
        try {
          cmd = decodeCommand(e.data);
        } catch (err) {
          // Every node decodes the same bytes the same way: skipping is deterministic.
          this.logger.error({ index: e.index, err: (err as Error).message }, 'undecodable command skipped');
          continue;
        }
        const request = { clientId: cmd.clientId, seq: cmd.seq, firstUnacked: cmd.firstUnacked };
        if (!this.dedup.admit(request)) {
          decided({ index: e.index, request, duplicate: true });
          continue;
        }
        const outcome: ApplyOutcome = { index: e.index, request };
        const isTableOp = !isDataCommand(cmd);
        if (cmd.op === CommandOp.PublishMember) {
          // No file is touched: nothing to order against the writes around it.
          const problem = this.published.apply(cmd, e.index, this.removed.has(cmd.nodeId));
          if (problem) outcome.error = { code: 'XDEVICE_ERR_INVALID', message: problem };
        } else if (cmd.op === CommandOp.AuditRecord) {
          // No device file is touched; the trail keeps its appends in order, and a failed one fails the batch (an I/O error).
          if (this.auditTrail) pending.push(this.auditTrail.applyRecord(e.index, cmd.entry));
        } else if (isTableOp) {
          await barrier();
          const error = await this.applyTableCommand(cmd, e.index);
          if (error) outcome.error = error;
        } else {
          // A verify that has read far ahead of its checksumming holds apply back (bounded memory).
          const scan = 'deviceId' in cmd ? this.verifies.overReadAhead(cmd.deviceId) : undefined;
          if (scan) {
            submitGathered();
            await scan.below(limits.verifyReadAheadBytesMax);
          }
          const cow = this.copyOnWrite(cmd, e.index);
          if (cow) {
            // The copy reads the block as of this entry: every earlier write completes first.
            await barrier();
            await this.snaps.preserve(cow.deviceId, e.index, cow.blocks, cow.file);
          }
          const error = this.submitDataCommand(cmd, e.index, pending, gathered, submitGathered);
          if (this.testingApplyTwice && !error) testingCurrent.push(cmd);
          if (error) outcome.error = error;
        }
        decided(outcome);
      }
      if (this.testingApplyTwice) {
        for (const cmd of this.testingPrevious) this.submitDataCommand(cmd, 0, pending, gathered, submitGathered);
        this.testingPrevious = testingCurrent;
      }
      await barrier();
      if (last) {
        this.appliedIndex = last.index;
        this.appliedTerm = last.term;
      }
      return outcomes;
    } finally {
      // Thrown mid-batch (the caller fails the node): writes already
      // acknowledged still go down, and no write's failure goes unobserved
      // (after a normal end both lists are empty).
      submitGathered();
      for (const p of pending) p.catch(() => undefined);
      this.applying = false;
    }
  }

  private alreadyApplied(e: Entry): ApplyOutcome {
    try {
      const c = decodeCommand(e.data);
      return { index: e.index, request: { clientId: c.clientId, seq: c.seq, firstUnacked: c.firstUnacked }, duplicate: true };
    } catch {
      return { index: e.index };
    }
  }

  /** The blocks a data command at `index` must preserve into a snapshot before it writes (it will write: its checks pass). */
  private copyOnWrite(cmd: Command, index: number): { deviceId: number; blocks: number[]; file: DiskFile } | undefined {
    if (cmd.op !== CommandOp.Write && cmd.op !== CommandOp.Trim && cmd.op !== CommandOp.WriteZeroes) return undefined;
    if (!this.snaps.has(cmd.deviceId)) return undefined;
    const length = cmd.op === CommandOp.Write ? cmd.data.length : cmd.length;
    const r = this.checkRange(cmd, length);
    // Snapshots are of plaintext devices only, so these are all the checks a plaintext write meets.
    if ('error' in r || r.dev.record.encryption) return undefined;
    const need = this.snaps.preserveNeeded(cmd.deviceId, index, cmd.offset, length);
    return need ? { deviceId: cmd.deviceId, blocks: need.blocks, file: r.dev.file } : undefined;
  }

  private checkRange(cmd: { deviceId: number; offset: number }, length: number): { dev: OpenDevice } | { error: ApplyError } {
    const dev = this.byId.get(cmd.deviceId);
    if (!dev) return { error: { code: 'ESHUTDOWN', message: `device ${cmd.deviceId} no longer exists` } };
    // Made read-only after the request was validated.
    if (dev.record.readOnly) return { error: { code: 'EPERM', message: `device ${dev.record.name} is read-only` } };
    if (cmd.offset + length > dev.record.size) {
      // The device shrank after the request was validated.
      return { error: { code: 'ENOSPC', message: `[${cmd.offset}, ${cmd.offset + length}) beyond the end (${dev.record.size})` } };
    }
    return { dev };
  }

  private submitDataCommand(
    cmd: Command,
    index: number,
    pending: Promise<unknown>[],
    gathered: Map<DiskFile, GatheredWrites>,
    submitGathered: (file: DiskFile) => void,
  ): ApplyError | undefined {
    const gather = (file: DiskFile, data: Buffer, position: number): void => {
      let g = gathered.get(file);
      if (!g) gathered.set(file, (g = { bufs: [], positions: [] }));
      g.bufs.push(data);
      g.positions.push(position);
    };
    switch (cmd.op) {
      case CommandOp.Write:
      case CommandOp.CompressedWrite: // data: decompressed by decodeCommand
      case CommandOp.EncryptedWrite: {
        const r = this.checkRange(cmd, cmd.data.length);
        if ('error' in r) return r.error;
        const enc = r.dev.record.encryption;
        if (cmd.op !== CommandOp.EncryptedWrite && enc) return { code: 'EPERM', message: `device ${r.dev.record.name} is encrypted: a plaintext write is refused` };
        if (cmd.op === CommandOp.EncryptedWrite) {
          if (!enc) return { code: 'EINVAL', message: `device ${r.dev.record.name} is not encrypted` };
          const problem = unaligned(cmd.offset, cmd.data.length) ?? staleWrite(enc, cmd.offset, cmd.data.length, cmd.generation, cmd.watermark);
          if (problem) return { code: problem.startsWith('encrypted') ? STALE_KEY : 'EINVAL', message: problem };
          noteTouched(enc, cmd.offset, cmd.data.length, index);
        }
        if (cmd.data.length === 0) return undefined;
        this.verifies.beforeChange(cmd.deviceId, cmd.offset, cmd.data.length);
        gather(r.dev.file, cmd.data, cmd.offset);
        return undefined;
      }
      case CommandOp.Rekey: {
        if (cmd.kind !== 'step') throw new Error('a rekey start is a table command');
        const r = this.checkRange(cmd, cmd.data.length);
        if ('error' in r) return r.error;
        const enc = r.dev.record.encryption;
        if (!enc) return { code: 'EINVAL', message: `device ${r.dev.record.name} is not encrypted` };
        const problem = rekeyStepProblem(enc, r.dev.record.size, { generation: cmd.generation, offset: cmd.offset, readAt: cmd.readAt, length: cmd.data.length });
        if (problem) return { code: STALE_KEY, message: problem };
        this.verifies.beforeChange(cmd.deviceId, cmd.offset, cmd.data.length);
        const sector = limits.cryptSectorBytes;
        for (let at = 0; at < cmd.data.length; at += sector) {
          const block = cmd.data.subarray(at, at + sector);
          // Zero at readAt and untouched since: writing it would fill a hole.
          if (!isZero(block)) gather(r.dev.file, block, cmd.offset + at);
        }
        advanceRekey(enc, r.dev.record.size, cmd.offset + cmd.data.length, index);
        return undefined;
      }
      case CommandOp.Trim:
      case CommandOp.WriteZeroes: {
        const r = this.checkRange(cmd, cmd.length);
        if ('error' in r) return r.error;
        const enc = r.dev.record.encryption;
        if (enc) {
          const problem = unaligned(cmd.offset, cmd.length);
          if (problem) return { code: 'EINVAL', message: problem };
          noteTouched(enc, cmd.offset, cmd.length, index);
        }
        if (cmd.length === 0) return undefined;
        this.verifies.beforeChange(cmd.deviceId, cmd.offset, cmd.length);
        if (cmd.op === CommandOp.WriteZeroes && !enc && cmd.length < limits.zeroHoleBytesMin) {
          // Short zeroes are cheaper written than punched (limits.zeroHoleBytesMin); written, they are allocated as NO_HOLE asks.
          gather(r.dev.file, ZEROES.subarray(0, cmd.length), cmd.offset);
          return undefined;
        }
        // Earlier writes to this file go first: the file's I/O thread keeps submission order.
        submitGathered(r.dev.file);
        pending.push(this.disk.punchHole(r.dev.file, cmd.offset, cmd.length));
        // NO_HOLE: the client wants the range allocated; unwritten extents read as zeroes.
        if (cmd.op === CommandOp.WriteZeroes && cmd.noHole) pending.push(this.disk.fallocate(r.dev.file, cmd.offset, cmd.length, { keepSize: true }));
        return undefined;
      }
      default:
        throw new Error(`not a data command: ${cmd.op}`);
    }
  }

  private async applyTableCommand(cmd: Command, index: number): Promise<ApplyError | undefined> {
    switch (cmd.op) {
      case CommandOp.CreateDevice: {
        const existing = this.byName.get(cmd.name);
        if (existing !== undefined) return { code: 'XDEVICE_ERR_EXISTS', message: `device ${cmd.name} exists` };
        const problem = deviceNameProblem(cmd.name) ?? deviceSizeProblem(cmd.size);
        if (problem) return { code: 'XDEVICE_ERR_INVALID', message: problem };
        if (this.byId.size >= limits.devicesMax) return { code: 'XDEVICE_ERR_INVALID', message: `${limits.devicesMax} devices exist` };
        const encrypted = ((cmd.flags ?? 0) & DEVICE_FLAG_ENCRYPTED) !== 0 && cmd.key !== undefined;
        if (encrypted && cmd.size % limits.cryptSectorBytes !== 0) return { code: 'XDEVICE_ERR_INVALID', message: `an encrypted device's size is a multiple of ${limits.cryptSectorBytes} bytes, got ${cmd.size}` };
        // A file from an earlier incarnation of this entry (replay) starts over.
        const path = join(this.devicesDir, deviceFileName(index));
        try {
          const record: DeviceRecord = { id: index, name: cmd.name, size: cmd.size, ...((cmd.flags ?? 0) & DEVICE_FLAG_READ_ONLY ? { readOnly: true as const } : {}) };
          if (encrypted) record.encryption = { generation: 1, key: storedKey(cmd.key!) };
          await this.attach(record, path, false);
        } catch (err) {
          const refused = sizeRefusal(err, cmd.size);
          if (!refused) throw err;
          // Proposals are probed against the filesystem; an entry from before that (or
          // a replica on a smaller filesystem) fails here as a command, not as the node.
          const dev = this.byId.get(index);
          if (dev) await this.detach(dev);
          await this.disk.unlink(path).catch(() => undefined);
          this.logger.error({ index, device: cmd.name, size: cmd.size, err: (err as Error).message }, 'device create refused by the filesystem; recorded as a failed command');
          return refused;
        }
        await syncDir(this.devicesDir, this.disk);
        return undefined;
      }
      case CommandOp.DeleteDevice: {
        const id = this.byName.get(cmd.name);
        if (id === undefined) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `no device ${cmd.name}` };
        const dev = this.byId.get(id)!;
        this.verifies.abortDevice(id, `device ${cmd.name} was deleted during the verify`);
        await this.snaps.deleteDevice(id);
        await this.detach(dev);
        await this.disk.unlink(dev.path).catch(() => undefined);
        return undefined;
      }
      case CommandOp.ResizeDevice: {
        const id = this.byName.get(cmd.name);
        if (id === undefined) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `no device ${cmd.name}` };
        const problem = deviceSizeProblem(cmd.size);
        if (problem) return { code: 'XDEVICE_ERR_INVALID', message: problem };
        const dev = this.byId.get(id)!;
        if (this.snaps.listAt(id, index).length > 0 && cmd.size !== dev.record.size) return { code: 'XDEVICE_ERR_CONFLICT', message: `device ${cmd.name} has snapshots: delete them before resizing it` };
        const enc = dev.record.encryption;
        if (enc && cmd.size % limits.cryptSectorBytes !== 0) return { code: 'XDEVICE_ERR_INVALID', message: `an encrypted device's size is a multiple of ${limits.cryptSectorBytes} bytes, got ${cmd.size}` };
        this.verifies.abortDevice(id, `device ${cmd.name} was resized during the verify`);
        // Shrinking discards the tail, so growing again reads zeroes there, as on replay.
        try {
          await this.disk.truncate(dev.file, cmd.size);
        } catch (err) {
          const refused = sizeRefusal(err, cmd.size);
          if (!refused) throw err;
          this.logger.error({ index, device: cmd.name, size: cmd.size, err: (err as Error).message }, 'device resize refused by the filesystem; recorded as a failed command');
          return refused;
        }
        dev.record.size = cmd.size;
        // Shrunk below the rekey's watermark: every block left is under the new key.
        if (enc?.rekey && enc.rekey.watermark >= cmd.size) finishRekey(enc);
        return undefined;
      }
      case CommandOp.RewrapKeys: {
        // All or nothing: the same data keys under another KEK, checked by their key check values.
        for (const w of cmd.devices) {
          const enc = this.byId.get(w.deviceId)?.record.encryption;
          if (!enc) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `no encrypted device ${w.deviceId}` };
          if (enc.generation !== w.generation) return { code: 'XDEVICE_ERR_CONFLICT', message: `device ${w.deviceId} is at key generation ${enc.generation}, not ${w.generation}` };
          if (storedKey(w.key).kcv !== enc.key.kcv) return { code: 'XDEVICE_ERR_CONFLICT', message: `device ${w.deviceId}: the rewrapped key is not the device's data key (key check values differ)` };
          if ((w.rekeyKey === undefined) !== (enc.rekey === undefined)) return { code: 'XDEVICE_ERR_CONFLICT', message: `device ${w.deviceId}: a rekey started or finished since the rotation read the table` };
          if (w.rekeyKey && enc.rekey && storedKey(w.rekeyKey).kcv !== enc.rekey.key.kcv) return { code: 'XDEVICE_ERR_CONFLICT', message: `device ${w.deviceId}: the rewrapped rekey key is not the rekey's data key` };
        }
        for (const w of cmd.devices) {
          const enc = this.byId.get(w.deviceId)!.record.encryption!;
          enc.key = storedKey(w.key);
          if (w.rekeyKey && enc.rekey) enc.rekey.key = storedKey(w.rekeyKey);
        }
        return undefined;
      }
      case CommandOp.Rekey: {
        if (cmd.kind !== 'start') throw new Error('a rekey step is a data command');
        const dev = this.byId.get(cmd.deviceId);
        const enc = dev?.record.encryption;
        if (!dev || !enc) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `no encrypted device ${cmd.deviceId}` };
        if (enc.rekey) return { code: 'XDEVICE_ERR_CONFLICT', message: `device ${dev.record.name} is already being rekeyed to generation ${enc.rekey.generation}` };
        if (cmd.generation !== enc.generation + 1) return { code: 'XDEVICE_ERR_CONFLICT', message: `device ${dev.record.name} is at key generation ${enc.generation}; a rekey goes to ${enc.generation + 1}, not ${cmd.generation}` };
        enc.rekey = { generation: cmd.generation, key: storedKey(cmd.key), watermark: 0, touched: index };
        if (dev.record.size === 0) finishRekey(enc);
        return undefined;
      }
      case CommandOp.SetDeviceFlags: {
        const id = this.byName.get(cmd.name);
        if (id === undefined) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `no device ${cmd.name}` };
        const record = this.byId.get(id)!.record;
        if (cmd.flags & DEVICE_FLAG_READ_ONLY) record.readOnly = true;
        else delete record.readOnly;
        return undefined;
      }
      case CommandOp.VerifyDevice: {
        const id = this.byName.get(cmd.name);
        if (id === undefined) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `no device ${cmd.name}` };
        const dev = this.byId.get(id)!;
        const problem = verifyRangeProblem(dev.record.size, cmd.rangeBytes);
        if (problem) return { code: 'XDEVICE_ERR_INVALID', message: problem };
        // Every write up to this entry is submitted to dev.file (the barrier before table commands).
        const v: VerifyRecord = { id: index, device: cmd.name, deviceId: id, size: dev.record.size, rangeBytes: cmd.rangeBytes, clientId: cmd.clientId, seq: cmd.seq, results: {} };
        this.verifies.add(v, this.disk, dev.file);
        return undefined;
      }
      case CommandOp.SnapshotCreate: {
        const id = this.byName.get(cmd.device);
        if (id === undefined) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `no device ${cmd.device}` };
        const dev = this.byId.get(id)!;
        // A replay of this very entry (after a restart, or an installed Raft snapshot brought it): the snapshot is there already.
        if (this.snaps.record(id, index)?.name === cmd.name) {
          await this.snaps.create(id, dev.record.size, cmd.name, cmd.createdAt, index);
          return undefined;
        }
        const problem = SnapshotSet.createProblem(dev.record, this.snaps.listAt(id, index), cmd.name);
        if (problem) return problem;
        await this.snaps.create(id, dev.record.size, cmd.name, cmd.createdAt, index);
        return undefined;
      }
      case CommandOp.SnapshotDelete: {
        const id = this.byName.get(cmd.device);
        if (id === undefined) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `no device ${cmd.device}` };
        const snap = this.snaps.listAt(id, index).find((s) => s.name === cmd.name);
        if (!snap) return { code: 'XDEVICE_ERR_NOT_FOUND', message: `device ${cmd.device} has no snapshot ${cmd.name}` };
        await this.snaps.delete(id, snap.id);
        return undefined;
      }
      case CommandOp.VerifyResult: {
        this.verifies.addResult(cmd.verifyId, cmd.nodeId, cmd.digests ? { digests: encodeDigests(cmd.digests) } : { why: cmd.why ?? '' });
        return undefined;
      }
      default:
        throw new Error(`not a table command: ${cmd.op}`);
    }
  }

  // ---- reads ---------------------------------------------------------------------

  /** Reads from the local files; the caller has made sure applied >= its read index. */
  async read(deviceId: number, offset: number, length: number): Promise<Buffer> {
    const dev = this.byId.get(deviceId);
    if (!dev) throw Object.assign(new Error(`device ${deviceId} no longer exists`), { code: 'ESHUTDOWN' });
    const out = Buffer.allocUnsafe(length);
    const n = await this.disk.pread(dev.file, out, offset);
    // Past the end of a file that shrank meanwhile: zeroes.
    if (n < length) out.fill(0, n);
    return out;
  }

  /** Allocation of [offset, offset+length) in this node's file. */
  extents(deviceId: number, offset: number, length: number): Extent[] {
    const dev = this.byId.get(deviceId);
    if (!dev) throw Object.assign(new Error(`device ${deviceId} no longer exists`), { code: 'ESHUTDOWN' });
    return this.disk.extents(dev.file, offset, length);
  }

  // ---- snapshots -----------------------------------------------------------------

  /** A device's snapshots, oldest first. */
  snapshots(deviceId: number): SnapshotRecord[] {
    return this.snaps.list(deviceId);
  }

  snapshot(deviceId: number, name: string): SnapshotRecord | undefined {
    return this.snaps.get(deviceId, name);
  }

  snapshotUnavailable(deviceId: number, id: number): string | undefined {
    return this.snaps.unavailable(deviceId, id);
  }

  /** Snapshot `id` of a device as of its index (immutable: no read barrier needed). */
  async readSnapshot(deviceId: number, id: number, offset: number, length: number): Promise<Buffer> {
    const dev = this.byId.get(deviceId);
    if (!dev) throw Object.assign(new Error(`device ${deviceId} no longer exists`), { code: 'ESHUTDOWN' });
    return this.snaps.read(deviceId, id, offset, length, dev.file);
  }

  snapshotExtents(deviceId: number, id: number, offset: number, length: number): Extent[] {
    const dev = this.byId.get(deviceId);
    if (!dev) throw Object.assign(new Error(`device ${deviceId} no longer exists`), { code: 'ESHUTDOWN' });
    return this.snaps.extents(deviceId, id, offset, length, dev.file);
  }

  /** qemu:dirty-bitmap of snapshot `id` (flag 1: changed since the previous snapshot). */
  snapshotDirty(deviceId: number, id: number, offset: number, length: number): Extent[] {
    return this.snaps.dirty(deviceId, id, offset, length);
  }

  /** The snapshots to ship whole with a Raft snapshot, as of the applied index (only between batches; src/device/snapshot-transfer.ts). */
  snapshotsToSend(): SnapshotToSend[] {
    assert(!this.applying, 'snapshots captured in the middle of a batch');
    return this.snaps.sendable();
  }

  /** Bytes snapshot `id` holds on this node. */
  snapshotHeldBytes(deviceId: number, id: number): Promise<number> {
    return this.snaps.heldBytes(deviceId, id);
  }

  async usedBytes(deviceId: number): Promise<number> {
    const dev = this.byId.get(deviceId);
    if (!dev) return 0;
    const st = await this.disk.fstat(dev.file);
    return st.allocatedBytes;
  }

  // ---- checkpoints and snapshots -----------------------------------------------

  /** The replicated state besides file contents, as of appliedIndex. Only between batches. */
  captureState(): StoreState {
    assert(!this.applying, 'state captured in the middle of a batch');
    return {
      clusterId: this.clusterId,
      appliedIndex: this.appliedIndex,
      appliedTerm: this.appliedTerm,
      devices: this.devices(),
      members: { ...this.members },
      removed: [...this.removed].sort(),
      dedup: this.dedup.export(),
      published: this.published.export(),
      verifies: this.verifies.export(),
      // As of appliedIndex: one still replaying (created later in the log) is not in it yet.
      snapshots: this.snaps
        .all()
        .filter((r) => r.id <= this.appliedIndex)
        .map(({ lost: _lost, ...r }) => r),
      ...(this.snaps.lostUpTo > 0 ? { snapshotsLostUpTo: this.snaps.lostUpTo } : {}),
      ...(this.auditTrail ? { audit: this.auditTrail.clusterHead() } : {}),
    };
  }

  /** Paths of the device files as of the captured state (for snapshot streaming). */
  filePaths(state: StoreState): string[] {
    return state.devices.map((d) => join(this.devicesDir, deviceFileName(d.id)));
  }

  /**
   * Makes the files durable up to the captured state and records it. Apply may
   * continue meanwhile: the sync runs on separate descriptors (a sync queued
   * on the write descriptor would hold up the writes behind it), and covers
   * every write that completed before the capture.
   */
  async checkpoint(state: StoreState): Promise<void> {
    for (const path of this.filePaths(state)) {
      let file: DiskFile;
      try {
        file = await this.disk.openFile(path, {});
      } catch (err) {
        // Deleted after the capture: its entries replay from the log.
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
        throw err;
      }
      try {
        await this.disk.fdatasync(file);
      } finally {
        await this.disk.closeFile(file);
      }
    }
    await writeCheckpoint(this.dataDir, state, this.disk);
    this.checkpointIndex = Math.max(this.checkpointIndex, state.appliedIndex);
  }

  /**
   * Replaces the whole state with an installed snapshot whose files are
   * already in place (see SnapshotStaging.install).
   */
  async reload(state: StoreState): Promise<void> {
    assert(!this.applying, 'reload during apply');
    this.verifies.abortAll('a snapshot replaced the device files during the verify');
    for (const dev of [...this.byId.values()]) await this.detach(dev);
    this.clusterId = state.clusterId;
    this.appliedIndex = state.appliedIndex;
    this.appliedTerm = state.appliedTerm;
    this.checkpointIndex = state.appliedIndex;
    this.members = { ...state.members };
    this.removed.clear();
    for (const id of state.removed ?? []) this.removed.add(id);
    this.dedup = RequestDedup.from(state.dedup);
    this.published = MemberTable.from(state.published);
    this.verifies.load(state.verifies);
    if (state.audit && this.auditTrail) await this.auditTrail.anchorAt(state.audit);
    await this.openDevices(state.devices, false);
    this.snaps = await this.snaps.reload(state.snapshots ?? [], state.appliedIndex, state.snapshotsLostUpTo ?? 0);
    await this.quarantineOrphans();
  }

  /** Closes files held open for the devices (they stay on disk); for stop() and snapshot install. */
  async closeFiles(): Promise<void> {
    this.verifies.abortAll('the node stopped during the verify');
    for (const dev of [...this.byId.values()]) await this.detach(dev);
    await this.snaps.closeAll();
  }
}

function isDataCommand(cmd: Command): boolean {
  switch (cmd.op) {
    case CommandOp.Write:
    case CommandOp.CompressedWrite:
    case CommandOp.EncryptedWrite:
    case CommandOp.Trim:
    case CommandOp.WriteZeroes:
      return true;
    case CommandOp.Rekey:
      return cmd.kind === 'step';
    default:
      return false;
  }
}

const ZERO_SECTOR = Buffer.alloc(limits.cryptSectorBytes);
/** Short zero writes at apply (never written to: pwritev only reads it). */
const ZEROES = Buffer.alloc(limits.zeroHoleBytesMin);

function isZero(block: Buffer): boolean {
  return block.length === ZERO_SECTOR.length ? block.equals(ZERO_SECTOR) : block.every((b) => b === 0);
}

function unaligned(offset: number, length: number): string | undefined {
  const s = limits.cryptSectorBytes;
  if (offset % s === 0 && length % s === 0) return undefined;
  return `[${offset}, +${length}) is not aligned to the encrypted device's ${s}-byte blocks`;
}

/** A record callers may keep: encryption state changes in place as entries apply. */
function copyRecord(r: DeviceRecord): DeviceRecord {
  const c = { ...r };
  if (r.encryption) c.encryption = { ...r.encryption, key: { ...r.encryption.key }, ...(r.encryption.rekey ? { rekey: { ...r.encryption.rekey, key: { ...r.encryption.rekey.key } } } : {}) };
  return c;
}

/** A size the filesystem will not hold (EFBIG, EINVAL from ftruncate): a failed command, the same on every like replica. */
function sizeRefusal(err: unknown, size: number): ApplyError | undefined {
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== 'EFBIG' && code !== 'EINVAL') return undefined;
  return { code: 'XDEVICE_ERR_INVALID', message: `the filesystem refuses a ${size}-byte device file (${code})` };
}

export function emptyState(clusterId = ''): StoreState {
  return { clusterId, appliedIndex: 0, appliedTerm: 0, devices: [], members: {}, dedup: [] };
}
