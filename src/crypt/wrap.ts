// A device's data key at rest: wrapped (AES-256-GCM) by a key-encryption key
// (KEK) from the nodes' key files, with a key check value, so the device
// table can carry it through Raft and into checkpoints and snapshots without
// any node or disk ever holding the data key in the clear.
//
//   wrapped := nonce (12) | AES-256-GCM(KEK, nonce, aad = "xdevice-dek:" kekId, dataKey) (64) | tag (16)
//   kcv     := first 16 bytes of HMAC-SHA256(dataKey, "xdevice key check value v1")
//
// A KEK that is not the one the key was wrapped with fails GCM's tag; a
// wrapped key that unwraps but whose check value differs (a record mixed up
// or damaged) is refused as well: a wrong key is never used to write.

import { createCipheriv, createDecipheriv, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { DATA_KEY_BYTES } from './xts.ts';

export const KEK_BYTES = 32;
export const WRAPPED_KEY_BYTES = 12 + DATA_KEY_BYTES + 16;
export const KCV_BYTES = 16;

/** A key-encryption key as read from a key file. */
export interface Kek {
  id: string;
  key: Buffer;
}

/** A wrapped data key as the device table holds it. */
export interface WrappedKey {
  kekId: string;
  wrapped: Buffer;
  kcv: Buffer;
}

function aad(kekId: string): Buffer {
  return Buffer.from(`xdevice-dek:${kekId}`);
}

export function keyCheckValue(dataKey: Buffer): Buffer {
  return createHmac('sha256', dataKey).update('xdevice key check value v1').digest().subarray(0, KCV_BYTES);
}

/** A fresh random data key (the halves of an XTS key must differ: random ones do, all but never). */
export function newDataKey(): Buffer {
  for (;;) {
    const key = randomBytes(DATA_KEY_BYTES);
    if (!key.subarray(0, 32).equals(key.subarray(32))) return key;
  }
}

export function wrapDataKey(kek: Kek, dataKey: Buffer, kcv = keyCheckValue(dataKey)): WrappedKey {
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', kek.key, nonce).setAAD(aad(kek.id));
  const body = Buffer.concat([c.update(dataKey), c.final()]);
  return { kekId: kek.id, wrapped: Buffer.concat([nonce, body, c.getAuthTag()]), kcv };
}

/** The data key, or why it cannot be had: `wrong-kek` (GCM tag) or `wrong-kcv` (unwraps to another key). */
export function unwrapDataKey(kek: Kek, w: WrappedKey): Buffer | 'wrong-kek' | 'wrong-kcv' {
  if (w.wrapped.length !== WRAPPED_KEY_BYTES || w.kcv.length !== KCV_BYTES) return 'wrong-kcv';
  const d = createDecipheriv('aes-256-gcm', kek.key, w.wrapped.subarray(0, 12)).setAAD(aad(w.kekId));
  d.setAuthTag(w.wrapped.subarray(12 + DATA_KEY_BYTES));
  let key: Buffer;
  try {
    key = Buffer.concat([d.update(w.wrapped.subarray(12, 12 + DATA_KEY_BYTES)), d.final()]);
  } catch {
    return 'wrong-kek';
  }
  return timingSafeEqual(keyCheckValue(key), w.kcv) ? key : 'wrong-kcv';
}
