// The key operations of a replica: a new device's data key (create),
// `key rotate` (every data key rewrapped with the newest KEK, no data
// rewritten) and `device rekey` (a new data key, the device re-encrypted
// in the background under writes; the design is in src/device/encryption.ts).
//
// Rotation runs on the leader: it holds the old and the new KEK, unwraps
// every device's data key, wraps it again and proposes one REWRAP_KEYS for
// all of them; apply checks each by its key check value. A node lacking the
// new KEK then refuses its encrypted exports, saying so, until the key is
// added to its file.
//
// The rekey job runs on whichever node leads (checked every tick): for each
// device with a rekey in progress it reads the window at the watermark,
// re-encrypts it under the new key and proposes the step; a refused step
// (a write landed in the window) is read again. Progress is the replicated
// watermark, so a kill -9 anywhere resumes from it.

import { encodeRekeyStart, encodeRekeyStep, encodeRewrapKeys, type Rewrap } from '../device/commands.ts';
import type { DeviceRecord } from '../device/checkpoint.ts';
import { type DeviceEncryption, rekeyWindow, STALE_KEY, wrappedKey } from '../device/encryption.ts';
import { NotLeaderError } from '../raft/errors.ts';
import { Role } from '../raft/rawnode.ts';
import { keyCheckValue, newDataKey, unwrapDataKey, wrapDataKey, type Kek, type WrappedKey } from '../crypt/wrap.ts';
import type { KeyRing } from '../crypt/keyring.ts';
import { limits } from '../limits.ts';
import { ReplicaError } from './errors.ts';
import type { ReplicaCore } from './core.ts';
import { decryptBlocks, deviceKeys, encryptBlocks } from './device.ts';

export interface RotateResult {
  kekId: string;
  devices: string[];
}

export interface RekeyProgress {
  device: string;
  generation: number;
  watermark: number;
  size: number;
}

export class KeyOps {
  private readonly jobs = new Set<number>();

  constructor(
    private readonly r: ReplicaCore & { readonly keys: KeyRing; readBarrier(): Promise<void> },
  ) {}

  private newest(): Kek {
    const kek = this.r.keys.newest();
    if ('why' in kek) throw new ReplicaError('XDEVICE_ERR_NO_KEY', kek.why);
    return kek;
  }

  /** A new device's data key, wrapped with the newest KEK of this node's key file. */
  newDeviceKey(): WrappedKey {
    return wrapDataKey(this.newest(), newDataKey());
  }

  private unwrap(device: string, w: WrappedKey): Buffer {
    const kek = this.r.keys.kek(w.kekId);
    if (!kek) throw new ReplicaError('XDEVICE_ERR_NO_KEY', `device ${device}'s data key is wrapped with key-encryption key ${w.kekId}, which this node's key file does not hold: rotate on a node that holds the old and the new key`);
    const key = unwrapDataKey(kek, w);
    if (typeof key === 'string') throw new ReplicaError('XDEVICE_ERR_NO_KEY', `device ${device}: key-encryption key ${w.kekId} of this node does not unwrap its data key (${key}): this node has a wrong key file`);
    return key;
  }

  private rewrap(device: string, kek: Kek, w: WrappedKey): WrappedKey {
    if (w.kekId === kek.id) return w;
    const key = this.unwrap(device, w);
    try {
      return wrapDataKey(kek, key, keyCheckValue(key));
    } finally {
      key.fill(0);
    }
  }

  /**
   * Rewraps every encrypted device's data keys with the newest KEK (leader
   * only). Audited once, with its principal and outcome, by the admin route
   * that calls it (src/admin/routes.ts), as rekey() is.
   */
  async rotate(): Promise<RotateResult> {
    const b = this.r.raw.basicStatus();
    if (b.role !== Role.Leader) throw new NotLeaderError(b.lead);
    const kek = this.newest();
    const devices = this.r.store.devices().filter((d): d is DeviceRecord & { encryption: DeviceEncryption } => d.encryption !== undefined);
    const rewraps: Rewrap[] = devices.map((d) => {
      const enc = d.encryption;
      const key = this.rewrap(d.name, kek, wrappedKey(enc.key));
      return enc.rekey ? { deviceId: d.id, generation: enc.generation, key, rekeyKey: this.rewrap(d.name, kek, wrappedKey(enc.rekey.key)) } : { deviceId: d.id, generation: enc.generation, key };
    });
    const result = { kekId: kek.id, devices: devices.map((d) => d.name) };
    if (rewraps.length > 0) await this.r.propose((id) => encodeRewrapKeys(id, rewraps));
    this.r.logger.info(result, 'key-encryption key rotated: every data key rewrapped');
    return result;
  }

  /** Starts replacing `name`'s data key; the leader's job re-encrypts it in the background. */
  async rekey(name: string): Promise<RekeyProgress> {
    this.r.checkServing();
    const d = this.r.store.device(name);
    if (!d) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    if (!d.encryption) throw new ReplicaError('XDEVICE_ERR_INVALID', `device ${name} is not encrypted (encryption is chosen at create: device create --encrypt)`);
    if (d.encryption.rekey) throw new ReplicaError('XDEVICE_ERR_CONFLICT', `device ${name} is already being rekeyed (${d.encryption.rekey.watermark} of ${d.size} bytes done)`);
    const generation = d.encryption.generation + 1;
    const key = this.newDeviceKey();
    await this.r.propose((id) => encodeRekeyStart(id, d.id, generation, key));
    this.r.schedule();
    return this.progress(name)!;
  }

  progress(name: string): RekeyProgress | undefined {
    const d = this.r.store.device(name);
    const rk = d?.encryption?.rekey;
    return d && rk ? { device: name, generation: rk.generation, watermark: rk.watermark, size: d.size } : undefined;
  }

  /** Every tick: the leader runs a job for each device being rekeyed that has none. */
  tick(): void {
    if (this.r.stopped || this.r.stopping || this.r.fatalError) return;
    if (this.r.raw.basicStatus().role !== Role.Leader) return;
    for (const d of this.r.store.devices()) {
      if (!d.encryption?.rekey || this.jobs.has(d.id)) continue;
      this.jobs.add(d.id);
      this.runJob(d.id)
        .catch((err: Error) => this.r.logger.warn({ device: d.name, err: err.message }, 'rekey job stopped; the next leader tick resumes it'))
        .finally(() => this.jobs.delete(d.id));
    }
  }

  private async runJob(id: number): Promise<void> {
    for (;;) {
      if (this.r.stopped || this.r.stopping || this.r.raw.basicStatus().role !== Role.Leader) return;
      await this.r.readBarrier();
      const d = this.r.store.deviceById(id);
      const enc = d?.encryption;
      if (!d || !enc?.rekey) return;
      const k = deviceKeys(this.r.keys, d.name, enc);
      if ('why' in k) {
        this.r.logger.warn({ device: d.name, why: k.why }, 'rekey waits: this leader cannot have the keys');
        await this.r.sleep(limits.proposalRetryMs);
        continue;
      }
      const w = rekeyWindow(enc, d.size)!;
      // readAt: every entry up to it is in what the read returns (the store
      // queues the read behind all writes apply submitted).
      const readAt = this.r.store.appliedIndex;
      const stored = await this.r.store.read(id, w.offset, w.length);
      const plain = decryptBlocks({ current: k.current, generation: k.generation, watermark: 0 }, w.offset, stored);
      const parts = encryptBlocks({ current: k.rekey!, generation: enc.rekey.generation, watermark: 0 }, w.offset, plain);
      plain.fill(0);
      try {
        await this.r.propose((rid) => encodeRekeyStep(rid, id, enc.rekey!.generation, w.offset, readAt, parts));
      } catch (err) {
        if ((err as { code?: string }).code !== STALE_KEY) throw err;
        this.r.logger.debug({ device: d.name, offset: w.offset, why: (err as Error).message }, 'rekey step refused; reading the window again');
      }
      const after = this.r.store.deviceById(id)?.encryption;
      if (after && !after.rekey) this.r.notice('info', { device: d.name, generation: after.generation }, 'device rekeyed: every block is under its new data key');
    }
  }
}
