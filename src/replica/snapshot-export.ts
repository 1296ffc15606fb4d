// The read-only NBD export DEVICE@NAME of a device snapshot
// (src/device/snapshots.ts): READ_ONLY, writes refused with EPERM, reads and
// base:allocation from the snapshot's view, and the meta context
// qemu:dirty-bitmap:NAME (as `qemu-nbd -B NAME` names it) whose flag 1 marks
// the blocks changed between the previous snapshot and this one.
//
// A snapshot never changes once taken, so a read needs no read index: any
// node that has applied the SNAPSHOT_CREATE serves the same bytes (the chain
// falls through to the live device only for blocks no write has reached
// since, on this node's apply order). A node that caught up from a Raft
// snapshot serves it too: its blocks came with it (src/device/snapshot-transfer.ts
// says why that needs no read index either). A node that cannot serve it (it
// installed a Raft snapshot from an older peer, or is replaying its log up to
// it) refuses the export at the handshake.

import type { BlockDevice, BlockDeviceCapabilities, Extent } from '../device/block-device.ts';
import type { BlockStore } from '../device/block-store.ts';
import type { SnapshotRecord } from '../device/snapshots.ts';

/** A snapshot export's name. */
export function snapshotExportName(device: string, snapshot: string): string {
  return `${device}@${snapshot}`;
}

/** The qemu meta context name of a snapshot's changed-block bitmap. */
export function dirtyBitmapContext(snapshot: string): string {
  return `qemu:dirty-bitmap:${snapshot}`;
}

const SNAPSHOT_CAPABILITIES: BlockDeviceCapabilities = Object.freeze({
  readOnly: true,
  canFlush: true,
  canFua: false,
  canTrim: false,
  canWriteZeroes: false,
  canFastZero: false,
  canMultiConn: true,
  canExtents: true,
  canCache: false,
});

function errno(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

export class SnapshotExport implements BlockDevice {
  readonly capabilities = SNAPSHOT_CAPABILITIES;
  readonly preferredBlockSize = 4096;
  readonly name: string;
  readonly description: string;
  readonly size: number;
  readonly metaContexts: readonly string[];

  constructor(
    private readonly service: { readonly store: BlockStore; checkServing(): void },
    readonly accessName: string,
    private readonly deviceId: number,
    private readonly snapshot: SnapshotRecord,
  ) {
    this.name = snapshotExportName(accessName, snapshot.name);
    this.description = `XDevice snapshot ${snapshot.name} of ${accessName} (log index ${snapshot.id}, read-only)`;
    this.size = snapshot.size;
    this.metaContexts = [dirtyBitmapContext(snapshot.name)];
  }

  unavailable(): string | undefined {
    return this.service.store.snapshotUnavailable(this.deviceId, this.snapshot.id);
  }

  /** The snapshot was deleted (a new one of the same name is a different snapshot). */
  gone(): boolean {
    return this.service.store.deviceById(this.deviceId) === undefined || this.service.store.snapshot(this.deviceId, this.snapshot.name)?.id !== this.snapshot.id;
  }

  private check(): void {
    this.service.checkServing();
    if (this.gone()) throw errno('ESHUTDOWN', `snapshot ${this.name} was deleted`);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check();
    if (offset + length > this.size) throw errno('EINVAL', `read beyond the end of ${this.name}`);
    return this.service.store.readSnapshot(this.deviceId, this.snapshot.id, offset, length);
  }

  write(): Promise<void> {
    return Promise.reject(errno('EPERM', `${this.name} is a snapshot: read-only`));
  }

  trim(): Promise<void> {
    return this.write();
  }

  writeZeroes(): Promise<void> {
    return this.write();
  }

  async flush(): Promise<void> {
    this.service.checkServing();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.check();
    return this.service.store.snapshotExtents(this.deviceId, this.snapshot.id, offset, length);
  }

  async contextStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    this.check();
    if (context !== this.metaContexts[0]) throw errno('EINVAL', `${this.name} has no meta context ${context}`);
    return this.service.store.snapshotDirty(this.deviceId, this.snapshot.id, offset, length);
  }

  async close(): Promise<void> {}
}
