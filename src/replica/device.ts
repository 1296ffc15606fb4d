// The BlockDevice the NBD server serves on every node of a cluster.
//
// WRITE, TRIM and WRITE_ZEROES are Raft proposals, acknowledged once the
// entry is committed (durable on a majority) and applied on this node; they
// are therefore durable when acknowledged, and FLUSH only has to wait for the
// writes already sent on this export to be answered. FUA needs nothing more.
// Reads are linearizable on any node: ReadIndex (or, with lease-reads, the
// leader's lease), wait for apply, read the local file. Every connection to every node sees the same data, so
// CAN_MULTI_CONN holds. A node without a quorum answers EIO (the request
// timed out) or ESHUTDOWN (it left service), never stale data.
//
// A read-only device (the replicated flag) advertises NBD_FLAG_READ_ONLY to
// connections negotiated while it is set, and refuses WRITE, TRIM and
// WRITE_ZEROES with EPERM before proposing (on connections negotiated before
// the flag was set too); apply refuses any that raced with the flag.
//
// An encrypted device is encrypted and decrypted HERE, at the node that
// serves the NBD request (src/crypt/xts.ts): the command, the WAL, the peers,
// the device files and snapshots carry ciphertext only. Its export
// advertises limits.cryptSectorBytes as its minimum block size and refuses
// unaligned writes with EINVAL, so each accepted write is encrypted alone.
// A node that cannot have the data key (no key file, a missing or wrong
// KEK) refuses the export at the handshake, saying why (unavailable()), and
// any request on a connection made earlier with EACCES. A write encrypted
// under a key the device left while it was in flight (a rekey moved on) is
// refused by apply and encrypted again here (src/device/encryption.ts).
//
// A plaintext write may be proposed smaller (src/device/compression.ts): an
// all-zero payload as WRITE_ZEROES (a hole), a compressible one as
// COMPRESSED_WRITE, once every member decodes it. Ciphertext is not compressed.

import type { BlockDevice, BlockDeviceCapabilities, DeviceTable, Extent, WriteOptions, ZeroOptions } from '../device/block-device.ts';
import type { BlockStore } from '../device/block-store.ts';
import type { DeviceRecord } from '../device/checkpoint.ts';
import { encodeEncryptedWrite, encodeTrim, encodeWrite, encodeWritev, encodeWriteZeroes, type RequestId } from '../device/commands.ts';
import { type DeviceEncryption, STALE_KEY, watermarkOf, wrappedKey } from '../device/encryption.ts';
import type { KeyRing } from '../crypt/keyring.ts';
import { isSectorAligned, type XtsKey } from '../crypt/xts.ts';
import { limits } from '../limits.ts';
import { SnapshotExport } from './snapshot-export.ts';
import { type CompactWrite, CompressionBackoff, type CompressionMode, type CompressionStats, compactWrite } from '../device/compression.ts';

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
  /** This node's key-encryption keys and the data keys unwrapped with them. */
  readonly keys: KeyRing;
  /** How plaintext writes are compacted (src/device/compression.ts); absent: never. */
  compression?(): { mode: CompressionMode; compressed: boolean; stats: CompressionStats };
}

/** The data keys of an encrypted device as of now: blocks below `watermark` are under `rekey`. */
interface DeviceKeys {
  current: XtsKey;
  rekey?: XtsKey;
  generation: number;
  watermark: number;
}

/** The data keys of `enc`, or the sentence saying why this node cannot have them. */
export function deviceKeys(keys: KeyRing, name: string, enc: DeviceEncryption): DeviceKeys | { why: string } {
  const current = keys.dataKey(name, wrappedKey(enc.key));
  if ('why' in current) return current;
  if (!enc.rekey) return { current: current.key, generation: enc.generation, watermark: 0 };
  const rekey = keys.dataKey(name, wrappedKey(enc.rekey.key));
  if ('why' in rekey) return rekey;
  return { current: current.key, rekey: rekey.key, generation: enc.generation, watermark: watermarkOf(enc) };
}

/** Ciphertext of `plain` at `offset`, as one buffer per block: below the watermark under the rekey's key. */
export function encryptBlocks(k: DeviceKeys, offset: number, plain: Buffer): Buffer[] {
  const split = Math.min(Math.max(k.watermark, offset), offset + plain.length) - offset;
  if (split === 0) return k.current.encrypt(offset, plain);
  return [...k.rekey!.encrypt(offset, plain.subarray(0, split)), ...k.current.encrypt(offset + split, plain.subarray(split))];
}

/** Decrypts `stored` (whole blocks read at `offset`) in place. */
export function decryptBlocks(k: DeviceKeys, offset: number, stored: Buffer): Buffer {
  const split = Math.min(Math.max(k.watermark, offset), offset + stored.length) - offset;
  if (split > 0) k.rekey!.decryptInPlace(offset, stored.subarray(0, split));
  k.current.decryptInPlace(offset + split, stored.subarray(split));
  return stored;
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
  /** How often this device's writes are tried for compression. */
  private readonly backoff = new CompressionBackoff();

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

  /** Encrypted devices: writes are whole crypt blocks (NBD_INFO_BLOCK_SIZE minimum). */
  get minimumBlockSize(): number | undefined {
    return this.service.store.deviceById(this.id)?.encryption ? limits.cryptSectorBytes : undefined;
  }

  /** Why this node cannot serve the export (an encrypted device whose data key it cannot have), if it cannot. */
  unavailable(): string | undefined {
    const r = this.service.store.deviceById(this.id);
    if (!r?.encryption) return undefined;
    const k = deviceKeys(this.service.keys, r.name, r.encryption);
    return 'why' in k ? k.why : undefined;
  }

  private keysOf(r: DeviceRecord & { encryption: DeviceEncryption }): DeviceKeys {
    const k = deviceKeys(this.service.keys, r.name, r.encryption);
    if ('why' in k) throw errno('EACCES', k.why);
    return k;
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
    if (!r.encryption) return this.service.store.read(this.id, offset, length);
    // Whole blocks, read with the keys of the same moment: the store queues the
    // read behind every write apply has submitted, and the watermark moves with them.
    const k = this.keysOf(r as DeviceRecord & { encryption: DeviceEncryption });
    const block = limits.cryptSectorBytes;
    const start = offset - (offset % block);
    const end = Math.ceil((offset + length) / block) * block;
    const stored = await this.service.store.read(this.id, start, end - start);
    const plain = decryptBlocks(k, start, stored);
    return start === offset && end === offset + length ? plain : plain.subarray(offset - start, offset - start + length);
  }

  /** `allocates`: bytes the command may add to the device file (checked against the space reserve). */
  private mutate(encode: (id: RequestId) => Buffer, allocates = 0, range?: { offset: number; length: number }): Promise<void> {
    return this.mutateWith(() => this.service.propose(encode), allocates, range);
  }

  private mutateWith(run: () => Promise<void>, allocates: number, range?: { offset: number; length: number }): Promise<void> {
    try {
      this.service.checkServing();
      const r = this.record();
      if (r.readOnly) throw errno('EPERM', `device ${this.name} is read-only`);
      if (r.encryption) {
        this.keysOf(r as DeviceRecord & { encryption: DeviceEncryption });
        if (range && !isSectorAligned(range.offset, range.length)) {
          throw errno('EINVAL', `device ${this.name} is encrypted in ${limits.cryptSectorBytes}-byte blocks: [${range.offset}, +${range.length}) is not aligned to them`);
        }
      }
      this.service.checkSpace(allocates);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.track(run());
  }

  private encrypted(): boolean {
    return this.service.store.deviceById(this.id)?.encryption !== undefined;
  }

  /** Encrypts with the device's keys as they are, and again if a rekey moved on before it applied. */
  private async proposeEncrypted(offset: number, plain: Buffer): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const r = this.record() as DeviceRecord & { encryption: DeviceEncryption };
      if (!r.encryption) throw errno('EIO', `device ${this.name} is no longer encrypted`);
      const k = this.keysOf(r);
      const parts = encryptBlocks(k, offset, plain);
      try {
        await this.service.propose((id) => encodeEncryptedWrite(id, this.id, offset, k.generation, k.watermark, parts));
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== STALE_KEY) throw err;
        if (attempt >= limits.encryptedWriteRetriesMax) throw errno('EIO', `write to ${this.name} refused ${attempt} times: the device's keys kept moving (${(err as Error).message})`);
      }
    }
  }

  write(offset: number, data: Buffer, _options?: WriteOptions): Promise<void> {
    if (this.encrypted()) return this.mutateWith(() => this.proposeEncrypted(offset, data), data.length, { offset, length: data.length });
    return this.proposeWrite(offset, [data], data.length, (id) => encodeWrite(id, this.id, offset, data));
  }

  /** A plaintext write, as the smaller command src/device/compression.ts makes of it if it does, else as `plain`. */
  private proposeWrite(offset: number, parts: readonly Buffer[], length: number, plain: (id: RequestId) => Buffer): Promise<void> {
    const c = this.service.compression?.();
    let compact: CompactWrite | Promise<CompactWrite | undefined> | undefined;
    try {
      compact = c ? compactWrite(c.mode, c.compressed, this.id, offset, parts, c.stats, this.backoff) : undefined;
    } catch (err) {
      return Promise.reject(err);
    }
    // A hole allocates nothing; a compressed write as much as its data.
    if (compact === undefined) return this.mutate(plain, length);
    if (!(compact instanceof Promise)) return this.mutate(compact.encode, compact.hole ? 0 : length);
    const pending = compact;
    return this.mutateWith(async () => this.service.propose((await pending)?.encode ?? plain), length);
  }

  /** The NBD server's large payloads: the pieces are copied once, into the command (no gathering copy first). */
  writev(offset: number, parts: readonly Buffer[], _options?: WriteOptions): Promise<void> {
    let length = 0;
    for (const part of parts) length += part.length;
    if (this.encrypted()) return this.write(offset, parts.length === 1 ? parts[0]! : Buffer.concat(parts, length));
    return this.proposeWrite(offset, parts, length, (id) => encodeWritev(id, this.id, offset, parts));
  }

  trim(offset: number, length: number, _options?: WriteOptions): Promise<void> {
    return this.mutate((id) => encodeTrim(id, this.id, offset, length), 0, { offset, length });
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.mutate((id) => encodeWriteZeroes(id, this.id, offset, length, options?.noHole ?? false), options?.noHole ? length : 0, { offset, length });
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
  private readonly snapshotCache = new Map<string, SnapshotExport>();

  constructor(
    private readonly service: ReplicaService,
    private readonly preferredDefault: string | undefined,
  ) {}

  get defaultName(): string | undefined {
    const devices = this.service.store.devices();
    if (this.preferredDefault !== undefined && devices.some((d) => d.name === this.preferredDefault)) return this.preferredDefault;
    return devices.sort((a, b) => a.id - b.id)[0]?.name;
  }

  /** DEVICE@NAME: the read-only export of a snapshot (src/replica/snapshot-export.ts). */
  private snapshotExport(name: string): SnapshotExport | undefined {
    const at = name.indexOf('@');
    const r = this.service.store.device(name.slice(0, at));
    if (!r) return undefined;
    const s = this.service.store.snapshot(r.id, name.slice(at + 1));
    if (!s) return undefined;
    const key = `${r.id}@${s.id}`;
    let e = this.snapshotCache.get(key);
    if (!e) {
      e = new SnapshotExport(this.service, r.name, r.id, s);
      this.snapshotCache.set(key, e);
      // Forget exports of snapshots that no longer exist.
      for (const [k, x] of this.snapshotCache) if (x.gone()) this.snapshotCache.delete(k);
    }
    return e;
  }

  get(name: string): ReplicatedDevice | SnapshotExport | undefined {
    if (name.includes('@')) return this.snapshotExport(name);
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

  /** Every device, each followed by its snapshots' exports (oldest first). */
  list(): (ReplicatedDevice | SnapshotExport)[] {
    const out: (ReplicatedDevice | SnapshotExport)[] = [];
    for (const r of this.service.store.devices().sort((a, b) => a.id - b.id)) {
      const d = this.get(r.name);
      if (d) out.push(d);
      for (const s of this.service.store.snapshots(r.id)) {
        const e = this.snapshotExport(`${r.name}@${s.name}`);
        if (e) out.push(e);
      }
    }
    return out;
  }
}
