// The BlockDevice the NBD server serves on every node of a cluster.
//
// WRITE, TRIM and WRITE_ZEROES are Raft proposals, acknowledged once the
// entry is committed (durable on a majority) and applied on this node; they
// are therefore durable when acknowledged, and FLUSH only has to wait for the
// writes already sent on this export to be answered. FUA needs nothing more.
// Reads are linearizable on any node: ReadIndex, wait for apply, read the
// local file. Every connection to every node sees the same data, so
// CAN_MULTI_CONN holds. A node without a quorum answers EIO (the request
// timed out) or ESHUTDOWN (it left service), never stale data.
//
// A read-only device (the replicated flag) advertises NBD_FLAG_READ_ONLY to
// connections negotiated while it is set, and refuses WRITE, TRIM and
// WRITE_ZEROES with EPERM before proposing (on connections negotiated before
// the flag was set too); apply refuses any that raced with the flag.

import type { BlockDevice, BlockDeviceCapabilities, DeviceTable, Extent, WriteOptions, ZeroOptions } from '../device/block-device.ts';
import type { BlockStore } from '../device/block-store.ts';
import type { DeviceRecord } from '../device/checkpoint.ts';
import { encodeTrim, encodeWrite, encodeWritev, encodeWriteZeroes, type RequestId } from '../device/commands.ts';

/** What a replicated device needs from the node runtime. */
export interface ReplicaService {
  readonly store: BlockStore;
  /** Proposes a command; resolves when it is committed and applied on this node. */
  propose(encode: (id: RequestId) => Buffer): Promise<void>;
  /** Resolves when a linearizable read may be served from the local store. */
  readBarrier(): Promise<void>;
  /** Throws an ESHUTDOWN error if the node has left service. */
  checkServing(): void;
  /** Throws an ENOSPC error if `bytes` more would take the data filesystem below its reserve. */
  checkSpace(bytes: number): void;
}

function errno(code: string, message: string): Error & { code: string } {
  return Object.assign(new Error(`${code}: ${message}`), { code });
}

const READ_WRITE: BlockDeviceCapabilities = Object.freeze({
  readOnly: false,
  canFlush: true,
  canFua: true,
  canTrim: true,
  canWriteZeroes: true,
  // Zeroing is a hole punch: always fast.
  canFastZero: true,
  canMultiConn: true,
  canExtents: true,
  canCache: false,
});
const READ_ONLY: BlockDeviceCapabilities = Object.freeze({ ...READ_WRITE, readOnly: true });

export class ReplicatedDevice implements BlockDevice {
  readonly preferredBlockSize = 4096;
  readonly description = 'XDevice replicated block device';
  /** Writes sent on this export and not yet answered (FLUSH waits for them). */
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly service: ReplicaService,
    readonly name: string,
    readonly id: number,
  ) {}

  private record(): DeviceRecord {
    const r = this.service.store.deviceById(this.id);
    if (!r) throw errno('ESHUTDOWN', `device ${this.name} was deleted`);
    return r;
  }

  /** As of now: the handshake reads it when a client opens the export. */
  get capabilities(): BlockDeviceCapabilities {
    return this.service.store.deviceById(this.id)?.readOnly ? READ_ONLY : READ_WRITE;
  }

  get size(): number {
    return this.service.store.deviceById(this.id)?.size ?? 0;
  }

  private track(p: Promise<void>): Promise<void> {
    this.inFlight.add(p);
    const done = (): void => {
      this.inFlight.delete(p);
    };
    p.then(done, done);
    return p;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.service.checkServing();
    this.record();
    await this.service.readBarrier();
    const r = this.record();
    if (offset + length > r.size) throw errno('EINVAL', `read beyond the end of ${this.name}`);
    return this.service.store.read(this.id, offset, length);
  }

  /** `allocates`: bytes the command may add to the device file (checked against the space reserve). */
  private mutate(encode: (id: RequestId) => Buffer, allocates = 0): Promise<void> {
    try {
      this.service.checkServing();
      if (this.record().readOnly) throw errno('EPERM', `device ${this.name} is read-only`);
      this.service.checkSpace(allocates);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.track(this.service.propose(encode));
  }

  write(offset: number, data: Buffer, _options?: WriteOptions): Promise<void> {
    return this.mutate((id) => encodeWrite(id, this.id, offset, data), data.length);
  }

  /** The NBD server's large payloads: the pieces are copied once, into the command (no gathering copy first). */
  writev(offset: number, parts: readonly Buffer[], _options?: WriteOptions): Promise<void> {
    let length = 0;
    for (const part of parts) length += part.length;
    return this.mutate((id) => encodeWritev(id, this.id, offset, parts), length);
  }

  trim(offset: number, length: number, _options?: WriteOptions): Promise<void> {
    return this.mutate((id) => encodeTrim(id, this.id, offset, length));
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.mutate((id) => encodeWriteZeroes(id, this.id, offset, length, options?.noHole ?? false), options?.noHole ? length : 0);
  }

  /** Acknowledged writes are already durable on a majority: wait only for those still in flight. */
  async flush(): Promise<void> {
    this.service.checkServing();
    if (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.service.checkServing();
    await this.service.readBarrier();
    try {
      return this.service.store.extents(this.id, offset, length);
    } catch (err) {
      if ((err as { code?: string }).code === 'ESHUTDOWN') throw err;
      // No FIEMAP here: report everything as data.
      return [{ length, flags: 0 }];
    }
  }

  async close(): Promise<void> {
    if (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }
}

/** The exports of a node: every device of the replicated table, resolved at lookup. */
export class ReplicatedDeviceTable implements DeviceTable {
  private readonly cache = new Map<number, ReplicatedDevice>();

  constructor(
    private readonly service: ReplicaService,
    private readonly preferredDefault: string | undefined,
  ) {}

  get defaultName(): string | undefined {
    const devices = this.service.store.devices();
    if (this.preferredDefault !== undefined && devices.some((d) => d.name === this.preferredDefault)) return this.preferredDefault;
    return devices.sort((a, b) => a.id - b.id)[0]?.name;
  }

  get(name: string): ReplicatedDevice | undefined {
    const r = this.service.store.device(name);
    if (!r) return undefined;
    let d = this.cache.get(r.id);
    if (!d) {
      d = new ReplicatedDevice(this.service, r.name, r.id);
      this.cache.set(r.id, d);
      // Forget devices that no longer exist.
      for (const id of this.cache.keys()) if (!this.service.store.deviceById(id)) this.cache.delete(id);
    }
    return d;
  }

  list(): ReplicatedDevice[] {
    return this.service.store
      .devices()
      .sort((a, b) => a.id - b.id)
      .map((r) => this.get(r.name)!)
      .filter((d) => d !== undefined);
  }
}
