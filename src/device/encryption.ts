// What the device table knows about an encrypted device, and the rules apply
// follows for it. Apply never needs a key: it keeps wrapped keys, key
// generations and the rekey watermark, and decides from those alone (the
// same on every node), so a node without the key still replicates.
//
// Rekey under writes (`xdevice-cli device rekey NAME`), without lost updates:
//
// - The device has a key generation g. A rekey to g+1 (REKEY start) adds a
//   second wrapped key and a watermark w, 0 at first: blocks below w are
//   under g+1's key, blocks at or above w under g's.
// - The serving node encrypts a client write by that rule and writes the
//   (g, w) it used into the ENCRYPTED_WRITE. Apply refuses it — a recorded
//   result, XDEVICE_ERR_STALE_KEY, never a failure — when the device's
//   (g, w) would put any of its blocks under another key; the serving node
//   then encrypts again with the keys as they are now and proposes again.
// - The rekey job (on the leader) reads the window [w, w + rekeyStepBytes)
//   once applied >= readAt, re-encrypts it and proposes a REKEY step
//   {offset: w, readAt}. Apply records, per device, the index of the last
//   data command that touched the window (`touched`); a step whose readAt
//   is below it read bytes a write has replaced since, and is refused (the
//   job reads again). Otherwise the step writes its blocks and moves w on.
//   Zero blocks are skipped: they were zero at readAt and nothing touched
//   them since, so a hole stays a hole.
// - When w reaches the end, g+1's key becomes the device's key.
//
// All of it — generation, watermark, touched — is in the device record,
// so it is in every checkpoint and snapshot: a rekey killed at any point
// resumes from its watermark on whichever node leads next, and replay
// reaches the same decisions as the first apply (none reads the files).

import { limits } from '../limits.ts';
import type { WrappedKey } from '../crypt/wrap.ts';
import { KCV_BYTES, WRAPPED_KEY_BYTES } from '../crypt/wrap.ts';
import { keyIdProblem } from '../crypt/key-file.ts';

/** A wrapped data key as JSON (checkpoint, snapshot header, status). */
export interface StoredKey {
  kekId: string;
  /** base64 of the 92-byte wrapped key. */
  wrapped: string;
  /** base64 of the 16-byte key check value. */
  kcv: string;
}

export interface DeviceRekey {
  generation: number;
  key: StoredKey;
  /** Blocks below it are under this rekey's key. */
  watermark: number;
  /** Index of the last data command that touched [watermark, watermark + rekeyStepBytes). */
  touched: number;
}

export interface DeviceEncryption {
  /** The key generation blocks at or above the rekey watermark (all blocks, without a rekey) are under. */
  generation: number;
  key: StoredKey;
  rekey?: DeviceRekey;
}

export const STALE_KEY = 'XDEVICE_ERR_STALE_KEY';

export function storedKey(k: WrappedKey): StoredKey {
  return { kekId: k.kekId, wrapped: k.wrapped.toString('base64'), kcv: k.kcv.toString('base64') };
}

export function wrappedKey(k: StoredKey): WrappedKey {
  return { kekId: k.kekId, wrapped: Buffer.from(k.wrapped, 'base64'), kcv: Buffer.from(k.kcv, 'base64') };
}

/** The watermark writes are classified by: blocks below it are under the rekey's key. */
export function watermarkOf(e: DeviceEncryption): number {
  return e.rekey?.watermark ?? 0;
}

/** Why an ENCRYPTED_WRITE proposed with (generation, watermark) must not land now, if it must not. */
export function staleWrite(e: DeviceEncryption, offset: number, length: number, generation: number, watermark: number): string | undefined {
  const clamp = (w: number): number => Math.min(Math.max(w, offset), offset + length);
  if (generation === e.generation && clamp(watermark) === clamp(watermarkOf(e))) return undefined;
  return `encrypted under key generation ${generation} up to ${watermark}; the device is at generation ${e.generation} up to ${watermarkOf(e)}`;
}

/** A data command at `index` changed [offset, offset+length): a rekey step that read its window before it must read again. */
export function noteTouched(e: DeviceEncryption, offset: number, length: number, index: number): void {
  const r = e.rekey;
  if (!r || length === 0) return;
  if (offset < r.watermark + limits.rekeyStepBytes && offset + length > r.watermark) r.touched = index;
}

/** The window the next rekey step must cover. */
export function rekeyWindow(e: DeviceEncryption, size: number): { offset: number; length: number } | undefined {
  const r = e.rekey;
  if (!r) return undefined;
  return { offset: r.watermark, length: Math.max(0, Math.min(limits.rekeyStepBytes, size - r.watermark)) };
}

/** Why a rekey step cannot apply, if it cannot. */
export function rekeyStepProblem(e: DeviceEncryption, size: number, s: { generation: number; offset: number; readAt: number; length: number }): string | undefined {
  const r = e.rekey;
  if (!r) return 'no rekey in progress';
  if (s.generation !== r.generation) return `step for generation ${s.generation}, the rekey is to ${r.generation}`;
  const w = rekeyWindow(e, size)!;
  if (s.offset !== w.offset || s.length !== w.length) return `step covers [${s.offset}, +${s.length}), the window is [${w.offset}, +${w.length})`;
  if (s.readAt < r.touched) return `the window was written at index ${r.touched}, after the step read it at ${s.readAt}`;
  return undefined;
}

/** After a step (or a shrink): moves the watermark and finishes the rekey once it passes the end. */
export function advanceRekey(e: DeviceEncryption, size: number, watermark: number, index: number): void {
  const r = e.rekey;
  if (!r) return;
  r.watermark = watermark;
  r.touched = index;
  if (r.watermark >= size) finishRekey(e);
}

export function finishRekey(e: DeviceEncryption): void {
  const r = e.rekey;
  if (!r) return;
  e.generation = r.generation;
  e.key = r.key;
  delete e.rekey;
}

function wellFormedKey(k: unknown): boolean {
  if (typeof k !== 'object' || k === null) return false;
  const s = k as StoredKey;
  return (
    typeof s.kekId === 'string' &&
    keyIdProblem(s.kekId) === undefined &&
    typeof s.wrapped === 'string' &&
    Buffer.from(s.wrapped, 'base64').length === WRAPPED_KEY_BYTES &&
    typeof s.kcv === 'string' &&
    Buffer.from(s.kcv, 'base64').length === KCV_BYTES
  );
}

/** Checkpoint validation of a device record's `encryption`. */
export function wellFormedEncryption(e: unknown): boolean {
  if (e === undefined) return true;
  if (typeof e !== 'object' || e === null) return false;
  const x = e as DeviceEncryption;
  if (!Number.isSafeInteger(x.generation) || x.generation < 1 || x.generation >= 2 ** 32 || !wellFormedKey(x.key)) return false;
  if (x.rekey === undefined) return true;
  const r = x.rekey;
  return (
    typeof r === 'object' &&
    r !== null &&
    r.generation === x.generation + 1 &&
    wellFormedKey(r.key) &&
    Number.isSafeInteger(r.watermark) &&
    r.watermark >= 0 &&
    r.watermark % limits.cryptSectorBytes === 0 &&
    Number.isSafeInteger(r.touched) &&
    r.touched >= 0
  );
}
