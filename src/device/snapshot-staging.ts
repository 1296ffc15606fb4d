// The receiving end of a snapshot: device files are streamed into a staging
// directory, made durable, and only then swapped in.
//
//   <data-dir>/snapshot.staging/devices/dev-<id>.img   streamed contents
//   <data-dir>/snapshot.staging/checkpoint             the sender's state (applied index a)
//   <data-dir>/snapshot.staging/INSTALL                written last: the staging is complete
//
// Install (idempotent, so a crash at any step is finished at the next start):
//   1. replace <data-dir>/devices by the staged devices, and the checkpoint;
//   2. the runtime resets the WAL to the snapshot (Wal.applySnapshot);
//   3. the staging directory goes.
// While INSTALL exists, startup redoes 1 and 2 before anything else.

import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ftruncate as ftruncateCb } from 'node:fs';
import { promisify } from 'node:util';
import { assert } from '../errors.ts';
import { limits } from '../limits.ts';
import * as native from '../native.ts';
import type { SnapshotMetadata } from '../raft/types.ts';
import { DEVICES_DIR, deviceFileName } from './block-store.ts';
import { CHECKPOINT_FILE, type StoreState, encodeStoreState, syncDir, writeFileAtomic, CheckpointError } from './checkpoint.ts';

const ftruncate = promisify(ftruncateCb);

export const STAGING_DIR = 'snapshot.staging';
const INSTALL_MARKER = 'INSTALL';

export interface StagedSnapshot {
  metadata: SnapshotMetadata;
  state: StoreState;
  /** The files may mix states up to this index: consistent once replay reaches it. */
  consistentIndex: number;
}

export class SnapshotStaging {
  private readonly fds: number[] = [];
  private readonly sizes: number[] = [];
  private writes: Promise<unknown> = Promise.resolve();
  private failed: Error | undefined;
  chunks = 0;
  bytes = 0;

  private constructor(
    readonly dir: string,
    readonly snapshotId: number,
    readonly from: string,
    readonly metadata: SnapshotMetadata,
    readonly state: StoreState,
  ) {}

  /** Starts a fresh staging area (any earlier, unfinished one is discarded). */
  static async begin(dataDir: string, snapshotId: number, from: string, metadata: SnapshotMetadata, state: StoreState): Promise<SnapshotStaging> {
    const dir = join(dataDir, STAGING_DIR);
    await rm(dir, { recursive: true, force: true });
    await mkdir(join(dir, DEVICES_DIR), { recursive: true });
    const s = new SnapshotStaging(dir, snapshotId, from, metadata, state);
    try {
      const ids = new Set<number>();
      for (const d of state.devices) {
        // The id names a file: a repeated one would open it twice.
        if (ids.has(d.id)) throw new CheckpointError(`snapshot lists device id ${d.id} twice`);
        ids.add(d.id);
        if (d.size > limits.deviceBytesMax) throw new CheckpointError(`snapshot device ${d.id} of ${d.size} bytes exceeds deviceBytesMax`);
        const { fd } = await native.openFile(join(dir, DEVICES_DIR, deviceFileName(d.id)), { create: true });
        s.fds.push(fd);
        s.sizes.push(d.size);
        await ftruncate(fd, d.size);
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
    if (file >= this.fds.length) {
      this.failed = new CheckpointError(`snapshot chunk for file ${file} of ${this.fds.length}`);
      return;
    }
    if (offset + Math.max(data.length, zeroBytes) > this.sizes[file]!) {
      this.failed = new CheckpointError(`snapshot chunk at ${offset} runs past the end of file ${file} (${this.sizes[file]} bytes)`);
      return;
    }
    // Zero runs need nothing: the staged file is sparse.
    if (zeroBytes > 0 || data.length === 0) return;
    this.bytes += data.length;
    const w = native.pwrite(this.fds[file]!, data, offset).catch((err: Error) => {
      this.failed ??= err;
    });
    this.writes = Promise.all([this.writes, w]);
  }

  /** Waits for queued writes (back-pressure for the receive loop). */
  settled(): Promise<unknown> {
    return this.writes;
  }

  /** Makes the staging complete and durable; after this, install() may run even across a crash. */
  async finish(expectedChunks: number, consistentIndex: number): Promise<StagedSnapshot> {
    await this.writes;
    if (this.failed) throw this.failed;
    if (expectedChunks !== this.chunks) throw new CheckpointError(`snapshot stream had ${this.chunks} chunks, sender says ${expectedChunks}`);
    for (const fd of this.fds) await native.fdatasync(fd);
    await this.closeFiles();
    await syncDir(join(this.dir, DEVICES_DIR));
    await writeFileAtomic(this.dir, CHECKPOINT_FILE, encodeStoreState(this.state));
    await writeFileAtomic(this.dir, INSTALL_MARKER, Buffer.from(JSON.stringify(this.metadata)));
    return { metadata: this.metadata, state: this.state, consistentIndex: Math.max(consistentIndex, this.state.appliedIndex) };
  }

  async abort(): Promise<void> {
    await this.writes.catch(() => undefined);
    await this.closeFiles();
    await rm(this.dir, { recursive: true, force: true });
  }

  private async closeFiles(): Promise<void> {
    this.sizes.splice(0);
    const fds = this.fds.splice(0);
    for (const fd of fds) await native.closeFile(fd);
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

/** Metadata of a complete staging that is not fully installed yet (crash recovery), if any. */
export async function pendingInstall(dataDir: string): Promise<SnapshotMetadata | undefined> {
  const marker = join(dataDir, STAGING_DIR, INSTALL_MARKER);
  if (!(await exists(marker))) {
    // An incomplete staging is worthless: the leader sends a new snapshot.
    await rm(join(dataDir, STAGING_DIR), { recursive: true, force: true });
    return undefined;
  }
  return JSON.parse(await readFile(marker, 'utf8')) as SnapshotMetadata;
}

/**
 * Step 1: moves the staged device files and checkpoint into place. The
 * caller has closed the current device files. Safe to repeat.
 */
export async function installStagedFiles(dataDir: string): Promise<void> {
  const staging = join(dataDir, STAGING_DIR);
  assert(await exists(join(staging, INSTALL_MARKER)), 'install of an incomplete snapshot staging');
  const stagedDevices = join(staging, DEVICES_DIR);
  if (await exists(stagedDevices)) {
    await rm(join(dataDir, DEVICES_DIR), { recursive: true, force: true });
    await rename(stagedDevices, join(dataDir, DEVICES_DIR));
  }
  const stagedCheckpoint = join(staging, CHECKPOINT_FILE);
  if (await exists(stagedCheckpoint)) await rename(stagedCheckpoint, join(dataDir, CHECKPOINT_FILE));
  await syncDir(dataDir);
}

/** Step 3: the WAL holds the snapshot; the staging can go. */
export async function finishInstall(dataDir: string): Promise<void> {
  await rm(join(dataDir, STAGING_DIR), { recursive: true, force: true });
  await syncDir(dataDir);
}
