// Point-in-time snapshots of devices, copy-on-write at apply.
//
// A snapshot is SNAPSHOT_CREATE at log index s (its id): every replica takes
// it at the same place in the log, and creating it copies nothing. From then
// on the first write (or trim, or zeroing) to a block of
// limits.snapshotBlockBytes after the device's NEWEST snapshot first copies
// the block's old contents into that snapshot:
//
//   <data-dir>/snapshots/snap-<id>/meta.json   SnapshotRecord (JSON)
//   <data-dir>/snapshots/snap-<id>/data.img    sparse, the device's geometry: preserved blocks at their offsets
//   <data-dir>/snapshots/snap-<id>/map.log     u64 LE block numbers, appended as blocks are preserved
//
// Reading snapshot k at block b (the chain rule): the copy in k if k holds b,
// else in the first later snapshot that holds it (b did not change between k
// and that one), else the live device (b has not changed since k).
//
// Crash safety. Apply does not fsync device writes (the WAL holds them), so
// after a crash the log is replayed from the checkpoint. A preserve is made
// durable in this order: the copy (pwrite + fdatasync of data.img), then its
// map record (pwrite + fdatasync of map.log), and only then is the device
// write submitted. Hence, at any crash, "b is not in k's map" means no write
// after k ever reached b, and the device still holds b as of k (replay of the
// entries before k rewrites the same bytes); "b is in the map" means the copy
// is durable, so the replayed write skips it and never preserves data that is
// already new. Snapshot directories are durable before the create applies
// further, and a replayed SNAPSHOT_CREATE of an existing id is a no-op.
//
// Delete of snapshot k merges the blocks k holds and its predecessor k-1 does
// not into k-1 (k-1's chain went through k), durably, then removes meta.json
// and the rest; a replay finishes an interrupted merge.
//
// The changed-block set of snapshot k (qemu:dirty-bitmap:k) is the map of its
// predecessor: the blocks first written after k-1 and before k are exactly
// the ones preserved into k-1 (merges keep this true across deletes). The
// first snapshot has no predecessor: every block counts as changed.
//
// A Raft snapshot carries the snapshots too (src/device/snapshot-transfer.ts
// has the protocol and the argument): the sender ships every snapshot it
// holds whole, with the blocks its map holds, and the receiver stages them as
// directories marked `received` that replace its own at the install. A
// received snapshot is whole at once (or `replaying`, if created after the
// installed state's index, until its SNAPSHOT_CREATE replays). Only what the
// sender cannot ship is `lost` on the receiver: snapshots the sender holds
// lost, and ones created or deleted before the install's consistent index
// that the shipment does not hold. An older peer ships nothing: then every
// snapshot up to that index is lost here, as before (its device file mixes
// states, so neither this node's old copies nor new ones preserved during the
// catch-up replay are a faithful view). A lost snapshot is listed and may be
// deleted, but this node refuses to serve it (another replica serves it);
// snapshots created later are whole again.
//
// Apply decides with the snapshots that exist at the entry's index
// (listAt): during a replay, a snapshot created later (replaying) must not
// change the outcome of an earlier create, delete or resize.
//
// (Just over 500 lines: the on-disk set, copy-on-write and the chain rule
// share one invariant, and read best next to each other.)

import { join } from 'node:path';
import type { Logger } from 'pino';
import { type DiskFile, type DiskIo, type Extent, pathExists } from '../disk/disk-io.ts';
import { limits } from '../limits.ts';
import { syncDir, writeFileAtomic } from './checkpoint.ts';
import { blockSpan, decodeBlockMap, encodeBlockMap, type SnapshotRecord, snapshotNameProblem, wellFormedSnapshot } from './snapshot-record.ts';

export { blockSpan, decodeBlockMap, encodeBlockMap, type SnapshotRecord, snapshotNameProblem, wellFormedSnapshot };

export const SNAPSHOTS_DIR = 'snapshots';
/** As src/device/block-store.ts names it (not imported: that file imports this one). */
const QUARANTINE_DIR = 'quarantine';
const META_FILE = 'meta.json';
const DATA_FILE = 'data.img';
const MAP_FILE = 'map.log';
/** Present in a snapshot directory a Raft snapshot's install brought (whole, though its id is at or below lostUpTo). */
const RECEIVED_FILE = 'received';
export { DATA_FILE as SNAPSHOT_DATA_FILE, MAP_FILE as SNAPSHOT_MAP_FILE, META_FILE as SNAPSHOT_META_FILE, RECEIVED_FILE as SNAPSHOT_RECEIVED_FILE };

/** A whole snapshot as of an applied index, for a Raft snapshot stream: its map is map.log's first mapBytes bytes. */
export interface SnapshotToSend {
  record: SnapshotRecord;
  mapBytes: number;
  dataPath: string;
  mapPath: string;
}

class Snapshot {
  constructor(
    public record: SnapshotRecord,
    readonly dir: string,
    readonly data: DiskFile | undefined,
    readonly map: DiskFile | undefined,
    readonly blocks: Set<number>,
    public mapBytes: number,
  ) {}
  /**
   * Loaded at start-up with an id above the checkpoint's index: until replay
   * re-applies its SNAPSHOT_CREATE, the entries before it rewrite the device
   * file with older data, so the live blocks it falls through to are not its own.
   */
  replaying = false;
  /** Came whole with an installed Raft snapshot (src/device/snapshot-transfer.ts): not lost for being at or below lostUpTo. */
  received = false;
}

/** Every snapshot on this node, by device, oldest first. Used only by the block store, on its apply path. */
export class SnapshotSet {
  private readonly byDevice = new Map<number, Snapshot[]>();
  /** Snapshots with ids up to here are lost on this node (a Raft snapshot was installed). */
  lostUpTo = 0;

  private constructor(
    private readonly dataDir: string,
    private readonly disk: DiskIo,
    private readonly logger: Logger,
    private readonly now: () => number,
  ) {}

  private async quarantine(name: string): Promise<void> {
    const dir = join(this.dataDir, QUARANTINE_DIR, new Date(this.now()).toISOString().replace(/[:.]/g, '-'), SNAPSHOTS_DIR);
    await this.disk.mkdir(dir, { recursive: true });
    await this.disk.rename(join(this.dir, name), join(dir, name));
    await syncDir(dir, this.disk);
    this.logger.warn({ file: join(this.dir, name), movedTo: join(dir, name) }, 'snapshot directory not in the snapshot table quarantined (not deleted)');
  }

  get dir(): string {
    return join(this.dataDir, SNAPSHOTS_DIR);
  }

  /**
   * Loads snapshot directories. `records` are the snapshots the checkpoint
   * (or installed state) lists as of `appliedIndex`: a directory it does not
   * list with an id at or below that index was deleted (removed again); one
   * above it is from an entry replay will reach (kept). A listed snapshot
   * without a directory comes from an installed state (recreated, lost).
   */
  static async load(dataDir: string, disk: DiskIo, logger: Logger, records: readonly SnapshotRecord[], appliedIndex: number, lostUpTo: number, now: () => number = Date.now): Promise<SnapshotSet> {
    const set = new SnapshotSet(dataDir, disk, logger, now);
    set.lostUpTo = lostUpTo;
    await disk.mkdir(set.dir, { recursive: true });
    const listed = new Map(records.map((r) => [r.id, r]));
    for (const name of await disk.readdir(set.dir)) {
      const path = join(set.dir, name);
      const m = /^snap-(\d+)$/.exec(name);
      const id = m ? Number(m[1]) : NaN;
      if (/^snap-\d+\.new$/.test(name) || (m && !(await pathExists(disk, join(path, META_FILE))))) {
        // Our own unfinished create (replay makes it again) or a finished delete's leftovers.
        await disk.rm(path, { recursive: true, force: true });
        continue;
      }
      if (!m || (id <= appliedIndex && !listed.has(id))) {
        // Not ours, or a snapshot the state says is gone (deleted while this node installed a Raft snapshot):
        // moved aside, never removed (DESIGN contract 9).
        await set.quarantine(name);
        continue;
      }
      const record = JSON.parse((await disk.readFile(join(path, META_FILE))).toString('utf8')) as unknown;
      if (!wellFormedSnapshot(record) || record.id !== id) throw new Error(`${join(path, META_FILE)} is not a snapshot record`);
      const s = await set.attach(record, path);
      s.replaying = id > appliedIndex;
      s.received = await pathExists(disk, join(path, RECEIVED_FILE));
      listed.delete(id);
    }
    for (const r of listed.values()) await set.createDir({ ...r, lost: true });
    for (const list of set.byDevice.values()) for (const s of list) if (s.record.id <= lostUpTo && !s.record.lost && !s.received) await set.markLost(s);
    await syncDir(set.dir, disk);
    return set;
  }

  private async attach(record: SnapshotRecord, dir: string): Promise<Snapshot> {
    let s: Snapshot;
    if (record.lost) s = new Snapshot(record, dir, undefined, undefined, new Set(), 0);
    else {
      const data = await this.disk.openFile(join(dir, DATA_FILE), { create: true });
      const map = await this.disk.openFile(join(dir, MAP_FILE), { create: true });
      const blocksMax = Math.ceil(record.size / limits.snapshotBlockBytes);
      const decoded = decodeBlockMap(await this.disk.readFile(join(dir, MAP_FILE)), blocksMax);
      // A torn record is cut off, so the next append starts on a record boundary.
      await this.disk.truncate(map, decoded.bytes);
      s = new Snapshot(record, dir, data, map, decoded.blocks, decoded.bytes);
    }
    const list = this.byDevice.get(record.deviceId) ?? [];
    list.push(s);
    list.sort((a, b) => a.record.id - b.record.id);
    this.byDevice.set(record.deviceId, list);
    return s;
  }

  private async detach(s: Snapshot): Promise<void> {
    const list = this.byDevice.get(s.record.deviceId) ?? [];
    const i = list.indexOf(s);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.byDevice.delete(s.record.deviceId);
    if (s.data) await this.disk.closeFile(s.data);
    if (s.map) await this.disk.closeFile(s.map);
  }

  /** Writes the directory of a new snapshot and attaches it; durable when this resolves. */
  private async createDir(record: SnapshotRecord): Promise<Snapshot> {
    const dir = join(this.dir, `snap-${record.id}`);
    const tmp = `${dir}.new`;
    await this.disk.rm(tmp, { recursive: true, force: true });
    await this.disk.mkdir(tmp, { recursive: true });
    if (!record.lost) {
      const data = await this.disk.openFile(join(tmp, DATA_FILE), { create: true });
      await this.disk.truncate(data, record.size);
      await this.disk.closeFile(data);
      await this.disk.writeFile(join(tmp, MAP_FILE), Buffer.alloc(0), { sync: true });
    }
    await this.disk.writeFile(join(tmp, META_FILE), Buffer.from(JSON.stringify(record)), { sync: true });
    await syncDir(tmp, this.disk);
    await this.disk.rename(tmp, dir);
    await syncDir(this.dir, this.disk);
    return this.attach(record, dir);
  }

  private async markLost(s: Snapshot): Promise<void> {
    const record: SnapshotRecord = { ...s.record, lost: true };
    await writeFileAtomic(s.dir, META_FILE, Buffer.from(JSON.stringify(record)), this.disk);
    await this.detach(s);
    await this.disk.rm(join(s.dir, DATA_FILE), { force: true });
    await this.disk.rm(join(s.dir, MAP_FILE), { force: true });
    await this.attach(record, s.dir);
  }

  /** A device's snapshots, oldest first (copies). */
  list(deviceId: number): SnapshotRecord[] {
    return (this.byDevice.get(deviceId) ?? []).map((s) => ({ ...s.record }));
  }

  all(): SnapshotRecord[] {
    return [...this.byDevice.values()].flat().map((s) => ({ ...s.record }));
  }

  /** A device's snapshots that exist at log index `index` (created before it), oldest first: what apply decides with. */
  listAt(deviceId: number, index: number): SnapshotRecord[] {
    return this.list(deviceId).filter((s) => s.id < index);
  }

  /** The snapshot with this id (the log index of its SNAPSHOT_CREATE), if this node holds it. */
  record(deviceId: number, id: number): SnapshotRecord | undefined {
    const s = this.byId(deviceId, id);
    return s ? { ...s.record } : undefined;
  }

  get(deviceId: number, name: string): SnapshotRecord | undefined {
    const s = this.find(deviceId, name);
    return s ? { ...s.record } : undefined;
  }

  private find(deviceId: number, name: string): Snapshot | undefined {
    return (this.byDevice.get(deviceId) ?? []).find((s) => s.record.name === name);
  }

  private byId(deviceId: number, id: number): Snapshot | undefined {
    return (this.byDevice.get(deviceId) ?? []).find((s) => s.record.id === id);
  }

  has(deviceId: number): boolean {
    return (this.byDevice.get(deviceId)?.length ?? 0) > 0;
  }

  /** Why a snapshot `name` of a device (plaintext, `snapshots` of them) cannot be created; the same check at propose and at apply. */
  static createProblem(device: { name: string; encryption?: unknown }, existing: readonly SnapshotRecord[], name: string): { code: string; message: string } | undefined {
    const problem = snapshotNameProblem(name);
    if (problem) return { code: 'XDEVICE_ERR_INVALID', message: problem };
    if (device.encryption) return { code: 'XDEVICE_ERR_INVALID', message: `device ${device.name} is encrypted: snapshots of encrypted devices are not supported` };
    if (existing.some((s) => s.name === name)) return { code: 'XDEVICE_ERR_EXISTS', message: `device ${device.name} has a snapshot ${name}` };
    if (existing.length >= limits.snapshotsPerDeviceMax) return { code: 'XDEVICE_ERR_INVALID', message: `device ${device.name} has ${existing.length} snapshots, the most allowed (limits.snapshotsPerDeviceMax)` };
    return undefined;
  }

  /** Applies SNAPSHOT_CREATE at `index` (the caller checked createProblem). A replayed one is a no-op. */
  async create(deviceId: number, size: number, name: string, createdAt: number, index: number): Promise<void> {
    const existing = this.byId(deviceId, index);
    if (existing) {
      existing.replaying = false;
      return;
    }
    const record: SnapshotRecord = { id: index, deviceId, name, createdAt, size, ...(index <= this.lostUpTo ? { lost: true as const } : {}) };
    await this.createDir(record);
  }

  /** Applies SNAPSHOT_DELETE of snapshot `id`: merges into the predecessor, then removes the snapshot. */
  async delete(deviceId: number, id: number): Promise<void> {
    const s = this.byId(deviceId, id);
    if (!s) return;
    const list = this.byDevice.get(deviceId)!;
    const prev = list[list.indexOf(s) - 1];
    if (prev && !prev.record.lost && !s.record.lost) {
      const moving = [...s.blocks].filter((b) => !prev.blocks.has(b)).sort((a, b) => a - b);
      for (let i = 0; i < moving.length; i += 64) await this.copyBlocks(prev, moving.slice(i, i + 64), s.data!, s.record.size);
    }
    await this.remove(s);
  }

  private async remove(s: Snapshot): Promise<void> {
    await this.detach(s);
    await this.disk.unlink(join(s.dir, META_FILE)).catch(() => undefined);
    await syncDir(s.dir, this.disk).catch(() => undefined);
    await this.disk.rm(s.dir, { recursive: true, force: true });
    await syncDir(this.dir, this.disk);
  }

  /** A device is deleted: so are its snapshots (before its file). */
  async deleteDevice(deviceId: number): Promise<void> {
    for (const s of [...(this.byDevice.get(deviceId) ?? [])].reverse()) await this.remove(s);
  }

  /** The snapshot a data command at `index` preserves into, and the blocks it must preserve; undefined: nothing to do. */
  preserveNeeded(deviceId: number, index: number, offset: number, length: number): { blocks: number[] } | undefined {
    if (length === 0) return undefined;
    const target = this.target(deviceId, index);
    if (!target) return undefined;
    const { first, last } = blockSpan(offset, length);
    const blocks: number[] = [];
    for (let b = first; b <= last; b++) if (!target.blocks.has(b)) blocks.push(b);
    return blocks.length > 0 ? { blocks } : undefined;
  }

  /** Newest snapshot older than `index` (during replay, newer ones may already exist); lost ones take no copies. */
  private target(deviceId: number, index: number): Snapshot | undefined {
    const list = this.byDevice.get(deviceId);
    if (!list) return undefined;
    for (let i = list.length - 1; i >= 0; i--) {
      const s = list[i]!;
      if (s.record.id < index) return s.record.lost ? undefined : s;
    }
    return undefined;
  }

  /**
   * Copies `blocks` of the device file into the snapshot a command at `index`
   * preserves into, durably, before the caller submits the command's write.
   * Every earlier write to the device file has completed (the caller waited).
   */
  async preserve(deviceId: number, index: number, blocks: readonly number[], deviceFile: DiskFile): Promise<void> {
    const target = this.target(deviceId, index)!;
    await this.copyBlocks(target, blocks, deviceFile, target.record.size);
  }

  /** Copies `blocks` from `from` into `to`'s data file, then records them in its map, each step durable before the next. */
  private async copyBlocks(to: Snapshot, blocks: readonly number[], from: DiskFile, size: number): Promise<void> {
    const B = limits.snapshotBlockBytes;
    const bufs: Buffer[] = [];
    const positions: number[] = [];
    for (const b of blocks) {
      const at = b * B;
      const len = Math.min(B, size - at);
      if (len <= 0) continue;
      const buf = Buffer.alloc(len);
      const n = await this.disk.pread(from, buf, at);
      if (n < len) buf.fill(0, n);
      // All zeroes: the sparse data file already reads so.
      if (!isZero(buf)) {
        bufs.push(buf);
        positions.push(at);
      }
    }
    if (bufs.length > 0) {
      await this.disk.pwriteBatch(to.data!, bufs, positions);
      await this.disk.fdatasync(to.data!);
    }
    const record = encodeBlockMap(blocks as number[]);
    await this.disk.pwrite(to.map!, record, to.mapBytes);
    await this.disk.fdatasync(to.map!);
    to.mapBytes += record.length;
    for (const b of blocks) to.blocks.add(b);
  }

  /** Why this node cannot serve snapshot `id`, if it cannot. */
  unavailable(deviceId: number, id: number): string | undefined {
    const s = this.byId(deviceId, id);
    if (!s) return `snapshot ${id} no longer exists`;
    if (s.record.lost) return 'this node installed a Raft snapshot since: its copy of the snapshot is not kept (another replica serves it)';
    if (s.replaying) return 'this node is replaying its log up to the snapshot (after a restart or a Raft snapshot install)';
    // After an install, a later snapshot that was not shipped (deleted on the sender) stays lost here until its delete replays.
    if (this.chain(deviceId, id, false).some((x) => x.record.lost)) return 'a later snapshot it reads through is not kept on this node (a Raft snapshot install; the log replay deletes it)';
    return undefined;
  }

  /** The snapshots a read of `id` looks in, in order (the chain rule). */
  private chain(deviceId: number, id: number, check = true): Snapshot[] {
    const list = this.byDevice.get(deviceId) ?? [];
    const chain = list.filter((s) => s.record.id >= id);
    if (!check) return chain;
    if (chain[0]?.record.id !== id) throw errno('ESHUTDOWN', `snapshot ${id} no longer exists`);
    if (chain.some((s) => s.record.lost)) throw errno('EIO', `snapshot ${id} is not kept on this node`);
    if (chain[0]!.replaying) throw errno('EIO', `snapshot ${id}: this node is replaying its log up to it`);
    return chain;
  }

  /** Runs of [offset, offset+length) by the file that holds them for snapshot `id` (undefined file: the live device). */
  private runs(deviceId: number, id: number, offset: number, length: number): { file: DiskFile | undefined; offset: number; length: number }[] {
    const chain = this.chain(deviceId, id);
    const B = limits.snapshotBlockBytes;
    const out: { file: DiskFile | undefined; offset: number; length: number }[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const block = Math.floor(at / B);
      const next = Math.min((block + 1) * B, end);
      const file = chain.find((s) => s.blocks.has(block))?.data;
      const last = out[out.length - 1];
      if (last && last.file === file) last.length += next - at;
      else out.push({ file, offset: at, length: next - at });
      at = next;
    }
    return out;
  }

  /**
   * Snapshot `id`'s bytes. The maps are consulted and every read submitted in
   * one turn: a block not yet preserved is read from the device file ahead of
   * any write to it (apply submits that only after the copy is recorded).
   */
  async read(deviceId: number, id: number, offset: number, length: number, deviceFile: DiskFile): Promise<Buffer> {
    const out = Buffer.alloc(length);
    const reads = this.runs(deviceId, id, offset, length).map((r) => this.disk.pread(r.file ?? deviceFile, out.subarray(r.offset - offset, r.offset - offset + r.length), r.offset));
    await Promise.all(reads);
    return out;
  }

  /** base:allocation of snapshot `id`. */
  extents(deviceId: number, id: number, offset: number, length: number, deviceFile: DiskFile): Extent[] {
    const out: Extent[] = [];
    for (const r of this.runs(deviceId, id, offset, length)) {
      let covered = 0;
      for (const e of this.disk.extents(r.file ?? deviceFile, r.offset, r.length)) {
        const len = Math.min(e.length, r.length - covered);
        if (len <= 0) break;
        out.push({ length: len, flags: e.flags });
        covered += len;
      }
      if (covered < r.length) out.push({ length: r.length - covered, flags: 0 });
    }
    return out;
  }

  /** qemu:dirty-bitmap of snapshot `id`: flag 1 on the blocks changed since the previous snapshot (all, for the first). */
  dirty(deviceId: number, id: number, offset: number, length: number): Extent[] {
    const list = this.byDevice.get(deviceId) ?? [];
    const i = list.findIndex((s) => s.record.id === id);
    if (i < 0) throw errno('ESHUTDOWN', `snapshot ${id} no longer exists`);
    const prev = list[i - 1];
    if (!prev || prev.record.lost) return [{ length, flags: 1 }];
    const B = limits.snapshotBlockBytes;
    const out: Extent[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const block = Math.floor(at / B);
      const next = Math.min((block + 1) * B, end);
      const flags = prev.blocks.has(block) ? 1 : 0;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += next - at;
      else out.push({ length: next - at, flags });
      at = next;
    }
    return out;
  }

  /**
   * The snapshots this node can ship with a Raft snapshot (only between
   * batches): every one not lost, a replaying one too (after a restart the
   * device file may hold writes from beyond the applied index, and its map
   * covers the ones after it: the crash-safety argument above). Their maps
   * only grow by appends, and a block's copy in data.img never changes once
   * its map records it, so map.log's first mapBytes bytes and those copies
   * stay this moment's view while apply continues (src/device/snapshot-transfer.ts).
   */
  sendable(): SnapshotToSend[] {
    const out: SnapshotToSend[] = [];
    for (const list of this.byDevice.values()) {
      for (const s of list) {
        if (s.record.lost) continue;
        out.push({ record: { ...s.record }, mapBytes: s.mapBytes, dataPath: join(s.dir, DATA_FILE), mapPath: join(s.dir, MAP_FILE) });
      }
    }
    return out.sort((a, b) => a.record.id - b.record.id);
  }

  /** Bytes the snapshot holds on this node's disk (its preserved copies and map). */
  async heldBytes(deviceId: number, id: number): Promise<number> {
    const s = this.byId(deviceId, id);
    if (!s?.data) return 0;
    return (await this.disk.fstat(s.data)).allocatedBytes + s.mapBytes;
  }

  /** Replaces every snapshot after a Raft snapshot install (see the header). */
  async reload(records: readonly SnapshotRecord[], appliedIndex: number, lostUpTo: number): Promise<SnapshotSet> {
    await this.closeAll();
    return SnapshotSet.load(this.dataDir, this.disk, this.logger, records, appliedIndex, lostUpTo, this.now);
  }

  async closeAll(): Promise<void> {
    for (const list of [...this.byDevice.values()]) for (const s of [...list]) await this.detach(s);
  }
}

function isZero(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

function errno(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}
