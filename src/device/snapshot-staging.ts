// The receiving end of a snapshot: device files are streamed into a staging
// directory, made durable, and only then swapped in.
//
//   <data-dir>/snapshot.staging/devices/dev-<id>.img   streamed contents
//   <data-dir>/snapshot.staging/snapshots/snap-<id>/   device snapshots shipped whole (src/device/snapshot-transfer.ts)
//   <data-dir>/snapshot.staging/checkpoint             the sender's state (applied index a)
//   <data-dir>/snapshot.staging/INSTALL                written when Raft takes the snapshot
//
// A staging that is complete but that Raft has not taken (its Snap message
// lost or outdated, the node caught up from the log instead) is worthless
// after a restart and is removed then: installing it would roll the devices
// back to an older state (found by the simulator on the real core, seed 24).
//
// Install (idempotent, so a crash at any step is finished at the next start):
//   0. write INSTALL (beginInstall), once Raft hands the snapshot back;
//   1. replace <data-dir>/devices by the staged devices, <data-dir>/snapshots
//      by the staged snapshots (installStagedSnapshots), and the checkpoint;
//   2. the runtime resets the WAL to the snapshot (Wal.applySnapshot);
//   3. the staging directory goes.
// While INSTALL exists, startup redoes 1 and 2 before anything else.

import { join } from 'node:path';
import { type DiskFile, type DiskIo, pathExists } from '../disk/disk-io.ts';
import { nativeDisk } from '../disk/native-disk.ts';
import { assert } from '../errors.ts';
import { limits } from '../limits.ts';
import type { SnapshotMetadata } from '../raft/types.ts';
import { DEVICES_DIR, deviceFileName } from './block-store.ts';
import { CHECKPOINT_FILE, type StoreState, encodeStoreState, syncDir, writeFileAtomic, CheckpointError } from './checkpoint.ts';
import { installStagedSnapshots, type SnapshotBlocks, StagedSnapshots } from './snapshot-transfer.ts';
import { SNAPSHOTS_DIR } from './snapshots.ts';

export const STAGING_DIR = 'snapshot.staging';
const INSTALL_MARKER = 'INSTALL';

export interface StagedSnapshot {
  metadata: SnapshotMetadata;
  state: StoreState;
  /** The files may mix states up to this index: consistent once replay reaches it. */
  consistentIndex: number;
}

export class SnapshotStaging {
  private readonly files: DiskFile[] = [];
  private readonly sizes: number[] = [];
  private writes: Promise<unknown> = Promise.resolve();
  private failed: Error | undefined;
  private readonly snaps: StagedSnapshots;
  /** 'snapshots' once the device files ended and the sender was asked for the snapshots' blocks. */
  phase: 'devices' | 'snapshots' = 'devices';
  /** The sender's applied index when the device files ended (in the 'snapshots' phase). */
  private devicesEnd = 0;
  chunks = 0;
  /** Blocks frames of the 'snapshots' phase. */
  blockFrames = 0;
  private deviceBytes = 0;

  private constructor(
    readonly dir: string,
    readonly snapshotId: number,
    readonly from: string,
    readonly metadata: SnapshotMetadata,
    readonly state: StoreState,
    private readonly disk: DiskIo,
  ) {
    this.snaps = new StagedSnapshots(join(dir, SNAPSHOTS_DIR), state, disk);
  }

  get bytes(): number {
    return this.deviceBytes + this.snaps.bytes;
  }

  /** Starts a fresh staging area (any earlier, unfinished one is discarded). */
  static async begin(
    dataDir: string,
    snapshotId: number,
    from: string,
    metadata: SnapshotMetadata,
    state: StoreState,
    disk: DiskIo = nativeDisk,
  ): Promise<SnapshotStaging> {
    const dir = join(dataDir, STAGING_DIR);
    await disk.rm(dir, { recursive: true, force: true });
    await disk.mkdir(join(dir, DEVICES_DIR), { recursive: true });
    // Always there, empty if nothing is shipped: the install replaces this node's snapshots by it.
    await disk.mkdir(join(dir, SNAPSHOTS_DIR), { recursive: true });
    const s = new SnapshotStaging(dir, snapshotId, from, metadata, state, disk);
    try {
      const ids = new Set<number>();
      for (const d of state.devices) {
        // The id names a file: a repeated one would open it twice.
        if (ids.has(d.id)) throw new CheckpointError(`snapshot lists device id ${d.id} twice`);
        ids.add(d.id);
        if (d.size > limits.deviceBytesMax) throw new CheckpointError(`snapshot device ${d.id} of ${d.size} bytes exceeds deviceBytesMax`);
        const file = await disk.openFile(join(dir, DEVICES_DIR, deviceFileName(d.id)), { create: true });
        s.files.push(file);
        s.sizes.push(d.size);
        await disk.truncate(file, d.size);
      }
    } catch (err) {
      // Nothing opened for a failed begin may outlive it (descriptors, I/O threads, files).
      await s.abort().catch(() => undefined);
      throw err;
    }
    return s;
  }

  /** Queues one chunk; writes to a file complete in order, errors surface in finish(). */
  chunk(file: number, offset: number, data: Buffer, zeroBytes: number): void {
    this.chunks++;
    if (this.failed) return;
    if (this.phase !== 'devices') {
      this.failed = new CheckpointError('snapshot chunk after the device files ended');
      return;
    }
    if (file >= this.files.length) {
      this.failed = new CheckpointError(`snapshot chunk for file ${file} of ${this.files.length}`);
      return;
    }
    if (offset + Math.max(data.length, zeroBytes) > this.sizes[file]!) {
      this.failed = new CheckpointError(`snapshot chunk at ${offset} runs past the end of file ${file} (${this.sizes[file]} bytes)`);
      return;
    }
    // Zero runs need nothing: the staged file is sparse.
    if (zeroBytes > 0 || data.length === 0) return;
    this.deviceBytes += data.length;
    const w = this.disk.pwrite(this.files[file]!, data, offset).catch((err: Error) => {
      this.failed ??= err;
    });
    this.writes = Promise.all([this.writes, w]);
  }

  /** A chunk arrived that does not decode: the stream fails with this (finish() and endDevices() throw it). */
  fail(err: Error): void {
    this.chunks++;
    this.failed ??= err;
  }

  /** Queues one frame of a snapshot's blocks (the 'snapshots' phase); errors surface in finish(). */
  blocks(f: SnapshotBlocks): void {
    this.blockFrames++;
    if (this.failed) return;
    if (this.phase !== 'snapshots') {
      this.failed = new CheckpointError('snapshot blocks before the device files ended');
      return;
    }
    // One after another, each checked against what the frames before it staged (a frame may open the next snapshot's files).
    this.writes = this.writes
      .then(async () => {
        if (this.failed) return;
        const problem = this.snaps.problem(f);
        if (problem) throw new CheckpointError(problem);
        await this.snaps.add(f);
      })
      .catch((err: Error) => {
        this.failed ??= err;
      });
  }

  /**
   * The device files are all here (`chunks` of them; the sender's applied
   * index was `appliedEnd`): the snapshots' blocks come next, then finish().
   */
  async endDevices(chunks: number, appliedEnd: number): Promise<void> {
    await this.writes;
    if (this.failed) throw this.failed;
    if (this.phase !== 'devices') throw new CheckpointError('the device files ended twice');
    if (chunks !== this.chunks) throw new CheckpointError(`snapshot stream had ${this.chunks} chunks, sender says ${chunks}`);
    this.phase = 'snapshots';
    this.devicesEnd = appliedEnd;
  }

  /** Waits for queued writes (back-pressure for the receive loop). */
  settled(): Promise<unknown> {
    return this.writes;
  }

  /**
   * Makes the staging complete and durable; after this, install() may run
   * even across a crash. `expected`: the chunks (or, after endDevices(), the
   * blocks frames) the sender sent; `consistentIndex`: its applied index at
   * the end (in the 'snapshots' phase, c of src/device/snapshot-transfer.ts).
   */
  async finish(expected: number, consistentIndex: number): Promise<StagedSnapshot> {
    await this.writes;
    if (this.failed) throw this.failed;
    const got = this.phase === 'devices' ? this.chunks : this.blockFrames;
    if (expected !== got) throw new CheckpointError(`snapshot stream had ${got} ${this.phase === 'devices' ? 'chunks' : 'blocks frames'}, sender says ${expected}`);
    for (const f of this.files) await this.disk.fdatasync(f);
    await this.closeFiles();
    await syncDir(join(this.dir, DEVICES_DIR), this.disk);
    const consistent = Math.max(consistentIndex, this.devicesEnd, this.state.appliedIndex);
    if (this.phase === 'snapshots') await this.snaps.finish();
    else await syncDir(join(this.dir, SNAPSHOTS_DIR), this.disk);
    // Snapshots up to the consistent index that did not come whole cannot be served here: the staged files mix states (src/device/snapshot-transfer.ts).
    const { snapshotBlocksOffered: _offered, snapshotChunksLz4Offered: _lz4, ...header } = this.state;
    const state: StoreState = { ...header, snapshotsLostUpTo: Math.max(this.state.snapshotsLostUpTo ?? 0, consistent) };
    await writeFileAtomic(this.dir, CHECKPOINT_FILE, encodeStoreState(state), this.disk);
    return { metadata: this.metadata, state, consistentIndex: consistent };
  }

  async abort(): Promise<void> {
    await this.writes.catch(() => undefined);
    await this.closeFiles();
    await this.snaps.abort();
    await this.disk.rm(this.dir, { recursive: true, force: true });
  }

  private async closeFiles(): Promise<void> {
    this.sizes.splice(0);
    const files = this.files.splice(0);
    for (const f of files) await this.disk.closeFile(f);
  }
}

/** Metadata of a complete staging that is not fully installed yet (crash recovery), if any. */
export async function pendingInstall(dataDir: string, disk: DiskIo = nativeDisk): Promise<SnapshotMetadata | undefined> {
  const marker = join(dataDir, STAGING_DIR, INSTALL_MARKER);
  if (!(await pathExists(disk, marker))) {
    // An incomplete staging is worthless: the leader sends a new snapshot.
    await disk.rm(join(dataDir, STAGING_DIR), { recursive: true, force: true });
    return undefined;
  }
  return JSON.parse((await disk.readFile(marker)).toString('utf8')) as SnapshotMetadata;
}

/**
 * Step 1: moves the staged device files and checkpoint into place. The
 * caller has closed the current device files. Safe to repeat.
 */
/** Raft took the staged snapshot: from here a crash finishes the install at the next start. */
export async function beginInstall(dataDir: string, metadata: SnapshotMetadata, disk: DiskIo = nativeDisk): Promise<void> {
  const staging = join(dataDir, STAGING_DIR);
  assert(await pathExists(disk, join(staging, CHECKPOINT_FILE)), 'install of an incomplete snapshot staging');
  await writeFileAtomic(staging, INSTALL_MARKER, Buffer.from(JSON.stringify(metadata)), disk);
}

export async function installStagedFiles(dataDir: string, disk: DiskIo = nativeDisk): Promise<void> {
  const staging = join(dataDir, STAGING_DIR);
  assert(await pathExists(disk, join(staging, INSTALL_MARKER)), 'install of an incomplete snapshot staging');
  const stagedDevices = join(staging, DEVICES_DIR);
  if (await pathExists(disk, stagedDevices)) {
    await disk.rm(join(dataDir, DEVICES_DIR), { recursive: true, force: true });
    await disk.rename(stagedDevices, join(dataDir, DEVICES_DIR));
  }
  await installStagedSnapshots(dataDir, staging, disk);
  const stagedCheckpoint = join(staging, CHECKPOINT_FILE);
  if (await pathExists(disk, stagedCheckpoint)) await disk.rename(stagedCheckpoint, join(dataDir, CHECKPOINT_FILE));
  await syncDir(dataDir, disk);
}

/** Step 3: the WAL holds the snapshot; the staging can go. */
export async function finishInstall(dataDir: string, disk: DiskIo = nativeDisk): Promise<void> {
  await disk.rm(join(dataDir, STAGING_DIR), { recursive: true, force: true });
  await syncDir(dataDir, disk);
}
