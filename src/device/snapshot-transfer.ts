// Device snapshots (src/device/snapshots.ts) travel with a Raft snapshot, so
// that a node that caught up from a streamed one serves the same
// point-in-time snapshots as the others, instead of listing them `lost`.
//
// The stream (src/replica/snapshot-sender.ts, snapshot-receiver.ts):
//   begin   the state S as of index a, captured between two apply batches,
//           with snapshotBlocksOffered;
//   chunk*  the device files, copied while apply continues (fuzzy);
//   end     the chunk count and e, the sender's applied index then;
//   result  the receiver staged the files; `more`: send the snapshots (only
//           in answer to a begin that offered them);
//   blocks* captured between two apply batches at index c, after the copy
//           ended: every snapshot the sender holds whole (not lost, not
//           replaying) with an id <= c: its record and the blocks of its map
//           at c (map.log's first mapBytes bytes), each with its bytes from
//           data.img (empty: zeroes). One snapshot's frames come together,
//           at least one each;
//   end     the blocks frame count and c;
//   result  staged, or why not.
// An older receiver answers the first end with its final result: the files
// are staged alone and its snapshots are lost as before. An older sender
// offers nothing, and a new receiver then stages no snapshots (the same).
//
// Why the shipped snapshots are whole on the receiver. Write M_k(i) for
// snapshot k's map as of index i; maps only grow (preserve and merge append),
// except that a delete drops the snapshot's.
//
// 1. The copies are right. A block in M_k(c) is in k's data.img with its
//    contents as of k (apply writes and syncs the copy before it records the
//    block), and never changes there after (preserve and merge write only
//    blocks their target's map lacks). A delete of k after c unlinks the
//    files; the descriptors opened at c still read them.
// 2. The maps cover the copied device files. The copy ended before c was
//    captured, and c is a batch boundary: every write the copied file D' can
//    hold is from an entry i <= c. Before submitting it, apply preserved its
//    blocks into the newest snapshot T before i (nothing, if T is lost); if T
//    was deleted by c, the merges moved them into a predecessor of T that
//    holds them at c. So for a shipped snapshot j and a block b that no map
//    of j's chain (j and the shipped snapshots after it) holds at c, no entry
//    in (j, c] wrote b: D'[b] is b as of j whenever j <= a, and replaying
//    (a, c] does not touch b. If a < j, the entries in (a, j) that replay make
//    it so by j; until then j is `replaying`.
// 3. Replaying (a, c] here adds nothing to a shipped snapshot. An entry at i
//    preserves into T, the newest snapshot before i here, exactly as on the
//    sender (apply sees only the snapshots that exist at i: listAt). If T was
//    shipped, the sender recorded those blocks in M_T by i, so the map here
//    (M_T(c)) has them and nothing is copied; if T was not shipped it is lost
//    here (see below) and nothing is copied. A delete of a snapshot that was
//    not shipped merges nothing: on the sender its blocks went to the
//    predecessor, whose shipped map holds them.
// 4. From c on, the device files are exact (the fuzzy snapshot's guarantee,
//    c >= e) and every map is the sender's at c, so this node goes on as the
//    sender did. (A map that holds more than M(c) would do too: its extra
//    blocks are right by 1, and 3 only needs M(c).)
//
// Hence, on the receiver: the device files are consistent from c (the read
// floor); a shipped snapshot with id <= a is whole from the install on (its
// reads need no read index, by 2), though refused while its chain holds a
// snapshot that is lost here until the replay deletes it (by 3 reading
// through that one would be right, but a lost snapshot in a chain is refused
// wherever it comes from); one with a < id <= c is `replaying`, as
// after a restart (SnapshotSet.load keeps a directory above the state's
// index), until its SNAPSHOT_CREATE replays, and whole from then on. Lost
// (listed, refused, deletable) are only what was not shipped: the snapshots
// the sender holds lost (their mark, and the sender's lostUpTo, carry over),
// the ones S lists that were deleted by c (until their delete replays), and
// the ones created and deleted within (a, c] (a create replayed at an index
// <= lostUpTo = c makes a lost one: its copies would come from D'). Once the
// receiver has replayed to c it holds exactly the snapshots the sender held
// at c, whole where the sender's were.
//
// On disk (crash-safe like the rest of the staging, src/device/snapshot-staging.ts):
//   <staging>/snapshots/snap-<id>/   meta.json, data.img, map.log as snapshots.ts
//                                    writes them, and `received`
// all durable before the staged checkpoint is written. The install swaps the
// whole snapshots directory (installStagedSnapshots, each step idempotent):
// this node's own directories come back without their `received` marker
// unless a shipped one of the same name replaces them, so SnapshotSet.load
// treats them as it always did (at or below lostUpTo: lost; not in the state:
// quarantined), while the received ones are exempt from lostUpTo.

import { join } from 'node:path';
import { type DiskFile, type DiskIo, pathExists } from '../disk/disk-io.ts';
import { limits } from '../limits.ts';
import { CheckpointError, type StoreState, syncDir } from './checkpoint.ts';
import {
  encodeBlockMap,
  SNAPSHOT_DATA_FILE,
  SNAPSHOT_MAP_FILE,
  SNAPSHOT_META_FILE,
  SNAPSHOT_RECEIVED_FILE,
  type SnapshotRecord,
  SNAPSHOTS_DIR,
  wellFormedSnapshot,
} from './snapshots.ts';

/** Where the staging keeps the directory this node's snapshots directory held before an install, until the install sorts it. */
const REPLACED_DIR = 'snapshots.replaced';

/** One frame's worth of a snapshot: its record, blocks of its map, and each block's bytes (empty: zeroes). */
export interface SnapshotBlocks {
  snapshot: SnapshotRecord;
  blocks: number[];
  data: Buffer[];
}

/** The bytes a snapshot of `size` bytes holds for block `block`. */
export function snapshotBlockLength(size: number, block: number): number {
  return Math.max(0, Math.min(limits.snapshotBlockBytes, size - block * limits.snapshotBlockBytes));
}

function sameRecord(a: SnapshotRecord, b: SnapshotRecord): boolean {
  return a.id === b.id && a.deviceId === b.deviceId && a.name === b.name && a.createdAt === b.createdAt && a.size === b.size;
}

interface OpenSnapshot {
  record: SnapshotRecord;
  dir: string;
  data: DiskFile;
  map: DiskFile;
  mapBytes: number;
  blocks: Set<number>;
}

/** The snapshots of one stream, staged under <staging>/snapshots as they arrive (one open at a time). */
export class StagedSnapshots {
  private current: OpenSnapshot | undefined;
  /** Every snapshot staged so far (ids), and by device name, to refuse repeats. */
  private readonly seen = new Map<number, SnapshotRecord>();
  bytes = 0;

  constructor(
    readonly dir: string,
    private readonly state: StoreState,
    private readonly disk: DiskIo,
  ) {}

  /** Why these blocks cannot be staged (every field came from a peer), or undefined. */
  problem(f: SnapshotBlocks): string | undefined {
    const r = f.snapshot;
    if (!wellFormedSnapshot(r) || r.lost) return 'snapshot blocks with a malformed snapshot record';
    if (r.size > limits.deviceBytesMax || r.deviceId <= 0 || r.deviceId >= r.id) return `snapshot ${r.id}: device ${r.deviceId} or size ${r.size} out of range`;
    const cur = this.current?.record.id === r.id ? this.current : undefined;
    if (cur) {
      if (!sameRecord(cur.record, r)) return `snapshot ${r.id}: its record changed within the stream`;
    } else {
      if (this.seen.has(r.id)) return `snapshot ${r.id} sent twice`;
      if (r.id <= this.state.appliedIndex) {
        // It existed at the state's index: the state lists it, the same.
        const listed = this.state.snapshots?.find((s) => s.id === r.id);
        if (!listed || !sameRecord(listed, r)) return `snapshot ${r.id} is not the one the state lists`;
      }
      const ofDevice = [...this.seen.values()].filter((s) => s.deviceId === r.deviceId);
      if (ofDevice.length >= limits.snapshotsPerDeviceMax) return `more than ${limits.snapshotsPerDeviceMax} snapshots of device ${r.deviceId}`;
      if (ofDevice.some((s) => s.name === r.name)) return `two snapshots of device ${r.deviceId} named ${r.name}`;
    }
    if (f.blocks.length !== f.data.length || f.blocks.length > limits.snapshotStreamBlocksPerFrameMax) return `snapshot ${r.id}: ${f.blocks.length} blocks in one frame`;
    const blocksMax = Math.ceil(r.size / limits.snapshotBlockBytes);
    const inFrame = new Set<number>();
    for (let i = 0; i < f.blocks.length; i++) {
      const b = f.blocks[i]!;
      if (!Number.isSafeInteger(b) || b < 0 || b >= blocksMax) return `snapshot ${r.id}: block ${b} beyond its ${blocksMax}`;
      if (inFrame.has(b) || cur?.blocks.has(b)) return `snapshot ${r.id}: block ${b} sent twice`;
      inFrame.add(b);
      const n = f.data[i]!.length;
      if (n !== 0 && n !== snapshotBlockLength(r.size, b)) return `snapshot ${r.id}: block ${b} with ${n} bytes`;
    }
    return undefined;
  }

  /** Stages one frame (the caller checked problem()); durable only at finish(). */
  async add(f: SnapshotBlocks): Promise<void> {
    const r = f.snapshot;
    if (this.current?.record.id !== r.id) {
      await this.close();
      await this.open(r);
    }
    const s = this.current!;
    const bufs: Buffer[] = [];
    const positions: number[] = [];
    f.blocks.forEach((b, i) => {
      const d = f.data[i]!;
      if (d.length === 0) return; // the sparse file reads zeroes
      bufs.push(d);
      positions.push(b * limits.snapshotBlockBytes);
      this.bytes += d.length;
    });
    if (bufs.length > 0) await this.disk.pwriteBatch(s.data, bufs, positions);
    if (f.blocks.length > 0) {
      const record = encodeBlockMap(f.blocks);
      await this.disk.pwrite(s.map, record, s.mapBytes);
      s.mapBytes += record.length;
      for (const b of f.blocks) s.blocks.add(b);
    }
  }

  private async open(record: SnapshotRecord): Promise<void> {
    const r: SnapshotRecord = { id: record.id, deviceId: record.deviceId, name: record.name, createdAt: record.createdAt, size: record.size };
    this.seen.set(r.id, r);
    const dir = join(this.dir, `snap-${r.id}`);
    await this.disk.mkdir(dir, { recursive: true });
    const data = await this.disk.openFile(join(dir, SNAPSHOT_DATA_FILE), { create: true });
    let map: DiskFile;
    try {
      await this.disk.truncate(data, r.size);
      map = await this.disk.openFile(join(dir, SNAPSHOT_MAP_FILE), { create: true });
    } catch (err) {
      await this.disk.closeFile(data);
      throw err;
    }
    this.current = { record: r, dir, data, map, mapBytes: 0, blocks: new Set() };
  }

  /** Makes the open snapshot's directory complete and durable, and closes it. */
  private async close(): Promise<void> {
    const s = this.current;
    if (!s) return;
    this.current = undefined;
    try {
      await this.disk.fdatasync(s.data);
      await this.disk.fdatasync(s.map);
    } finally {
      await this.disk.closeFile(s.data);
      await this.disk.closeFile(s.map);
    }
    await this.disk.writeFile(join(s.dir, SNAPSHOT_META_FILE), Buffer.from(JSON.stringify(s.record)), { sync: true });
    await this.disk.writeFile(join(s.dir, SNAPSHOT_RECEIVED_FILE), Buffer.alloc(0), { sync: true });
    await syncDir(s.dir, this.disk);
  }

  /** Every snapshot staged durably; `consistentIndex` is c, which no shipped snapshot may be newer than. */
  async finish(consistentIndex: number): Promise<void> {
    await this.close();
    for (const id of this.seen.keys()) if (id > consistentIndex) throw new CheckpointError(`snapshot ${id} shipped with a stream consistent at ${consistentIndex}`);
    await syncDir(this.dir, this.disk);
  }

  /** Closes what is open (the staging directory is removed by the caller). */
  async abort(): Promise<void> {
    const s = this.current;
    this.current = undefined;
    if (!s) return;
    await this.disk.closeFile(s.data).catch(() => undefined);
    await this.disk.closeFile(s.map).catch(() => undefined);
  }
}

/**
 * Install step for the snapshots (after the device files, before the
 * checkpoint): the staged snapshots directory replaces this node's, and this
 * node's own directories go back in without their `received` marker unless a
 * staged one of the same name replaced them (see the header). Safe to repeat
 * after a crash at any point. A staging without a snapshots directory (from
 * before snapshots travelled) changes nothing here.
 */
export async function installStagedSnapshots(dataDir: string, stagingDir: string, disk: DiskIo): Promise<void> {
  const staged = join(stagingDir, SNAPSHOTS_DIR);
  const live = join(dataDir, SNAPSHOTS_DIR);
  const replaced = join(stagingDir, REPLACED_DIR);
  if (await pathExists(disk, staged)) {
    if (await pathExists(disk, live)) {
      // Both can exist only before the first rename: after it, live is gone until the second.
      if (await pathExists(disk, replaced)) throw new CheckpointError(`${replaced} and ${live} both exist: an install was interrupted in a way it cannot be`);
      await disk.rename(live, replaced);
    }
    await disk.rename(staged, live);
    await syncDir(stagingDir, disk);
    await syncDir(dataDir, disk);
  }
  if (!(await pathExists(disk, replaced))) return;
  for (const name of await disk.readdir(replaced)) {
    const from = join(replaced, name);
    if (await pathExists(disk, join(live, name))) {
      // A stale copy of a snapshot the install brought whole.
      await disk.rm(from, { recursive: true, force: true });
      continue;
    }
    if (await pathExists(disk, join(from, SNAPSHOT_RECEIVED_FILE))) {
      // Brought by an earlier install, not by this one: no longer known whole. Gone durably before the directory is visible again.
      await disk.unlink(join(from, SNAPSHOT_RECEIVED_FILE));
      await syncDir(from, disk);
    }
    await disk.rename(from, join(live, name));
  }
  await syncDir(live, disk);
  await disk.rm(replaced, { recursive: true, force: true });
  await syncDir(stagingDir, disk);
}
