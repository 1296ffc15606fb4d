// Device snapshots (src/device/snapshots.ts) travel with a Raft snapshot, so
// that a node that caught up from a streamed one serves the same
// point-in-time snapshots as the others, instead of listing them `lost`.
//
// The stream (src/replica/snapshot-sender.ts, snapshot-receiver.ts):
//   begin   the state S as of index a, captured between two apply batches,
//           with snapshotBlocksOffered (and snapshotChunksLz4Offered when
//           the sender's compression is lz4);
//   result  `lz4` (only to a begin that offered it): the receiver decodes
//           LZ4 chunks; the sender waits snapshotLz4AnswerMs for it;
//   chunk*  the device files, copied while apply continues (fuzzy); after
//           the lz4 answer, a chunk LZ4 shrinks by 1/8 goes as one block
//           (kind SnapChunkLz4; its claimed length bounded by the codec);
//   end     the chunk count and e, the sender's applied index then;
//   result  the receiver staged the files; `more`: send the snapshots (only
//           in answer to a begin that offered them);
//   blocks* captured between two apply batches at index c, after the copy
//           ended: every snapshot the sender holds that is not lost (a
//           replaying one too): its record and the blocks of its map at c
//           (map.log's first mapBytes bytes), each with its bytes from
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
// 2. The maps cover the copied device files. Every write the copied file D'
//    can hold is from an entry i <= h, where h >= c is the highest index
//    ever applied to the sender's files (c, unless the sender restarted and
//    is replaying: its files may hold writes from before the crash). Before
//    submitting it, apply preserved its blocks into the newest snapshot T
//    before i, durably (nothing, if T is lost); if T was deleted since, the
//    merges moved them into a predecessor of T that holds them. T, or that
//    predecessor, is shipped: whole, or replaying on the sender (a directory
//    above its applied index, kept by the crash-safety argument of
//    snapshots.ts). So for a shipped snapshot j and a block b that no map of
//    j's chain (j and the shipped snapshots after it) holds, no entry after
//    j wrote b in D': D'[b] is b as of j whenever j <= a, and replaying does
//    not touch b before j's chain does. If a < j, the entries in (a, j) that
//    replay make it so by j; until then j is `replaying`.
// 3. Replaying (a, h] here adds nothing to a shipped snapshot. An entry at i
//    preserves into T, the newest snapshot before i here, exactly as on the
//    sender (apply sees only the snapshots that exist at i: listAt). If T was
//    shipped, the sender recorded those blocks in T's map when it applied i
//    (before c, or before its crash), so the map here has them and nothing is
//    copied; if T was not shipped it is lost here (see below) and nothing is
//    copied. A delete of a snapshot that was not shipped merges nothing: on
//    the sender its blocks went to the predecessor, whose shipped map holds
//    them.
// 4. From h on, the device files are exact (the fuzzy snapshot's guarantee:
//    replay is idempotent and every byte of D' is from an index in [a, h])
//    and every map is the sender's, so this node goes on as the sender did.
//    (A map that holds more than needed would do too: its extra blocks are
//    right by 1, and 3 only needs what the sender recorded.)
//
// Hence, on the receiver: the device files serve reads from c on (the read
// floor; a write from beyond c in D' was committed before the stream began,
// so every read index is at or above it and the replay reaches it first); a
// shipped snapshot with id <= a is whole from the install on (its reads need
// no read index, by 2), though refused while its chain holds a snapshot that
// is lost here until the replay deletes it (by 3 reading through that one
// would be right, but a lost snapshot in a chain is refused wherever it
// comes from); one with an id above a is `replaying`, as after a restart
// (SnapshotSet.load keeps a directory above the state's index), until its
// SNAPSHOT_CREATE replays, and whole from then on. Lost (listed, refused,
// deletable) are only what was not shipped: the snapshots the sender holds
// lost (their mark, and the sender's lostUpTo, carry over), the ones S lists
// that were deleted by c (until their delete replays), and the ones created
// and deleted within (a, c] (a create replayed at an index <= lostUpTo = c
// makes a lost one: its copies would come from D'). Once the receiver has
// replayed to h it holds exactly the snapshots the sender held, whole where
// the sender's were.
//
// Not covered (crash recovery in snapshots.ts has the same window): a
// snapshot created and deleted within (c, h] has no directory on the sender;
// the replay here creates it at an index above lostUpTo and preserves into
// it from D', which may be newer, until the replay deletes it. Only a sender
// that restarted and has not replayed to h yet can ship such a stream.
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
      // A sender replaying its log may hold a snapshot its replay has yet to delete next to a later one of the
      // same name (replaying), each at most snapshotsPerDeviceMax: names may repeat, the count has a bound.
      const ofDevice = [...this.seen.values()].filter((s) => s.deviceId === r.deviceId).length;
      if (ofDevice >= 2 * limits.snapshotsPerDeviceMax) return `more than ${2 * limits.snapshotsPerDeviceMax} snapshots of device ${r.deviceId}`;
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

  /** Every snapshot staged durably. */
  async finish(): Promise<void> {
    await this.close();
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
