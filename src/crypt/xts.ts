// The data path of an encrypted device: AES-256-XTS over its blocks, as
// dm-crypt's `aes-xts-plain64` with `sector_size:4096 iv_large_sectors` —
// each limits.cryptSectorBytes block is one XTS data unit, its tweak the
// block number as a little-endian 128-bit integer (plain64). node:crypto's
// 'aes-256-xts' does the work (64-byte key: two AES-256 keys).
//
// A hole stays a hole: a block of plaintext zeroes is stored as zeroes, and
// a stored block of zeroes reads back as zeroes without decrypting. So
// trim, write-zeroes and holes remain metadata operations and block status
// stays true. The price, as with any sparse encrypted disk that keeps
// discards: which blocks are zero is visible on disk.

import { createCipheriv, createDecipheriv } from 'node:crypto';
import { assert } from '../errors.ts';
import { limits } from '../limits.ts';

export const XTS_CIPHER = 'aes-256-xts';
export const DATA_KEY_BYTES = 64;
const SECTOR = limits.cryptSectorBytes;
const ZERO_SECTOR = Buffer.alloc(SECTOR);

function tweak(sector: number): Buffer {
  const iv = Buffer.alloc(16);
  iv.writeUIntLE(sector, 0, 6);
  iv.writeUInt16LE(Math.floor(sector / 2 ** 48), 6);
  return iv;
}

export function isSectorAligned(offset: number, length: number): boolean {
  return offset % SECTOR === 0 && length % SECTOR === 0;
}

/** One device key generation's data key. */
export class XtsKey {
  private readonly key: Buffer;

  /** Copies `key`: the caller may wipe its own buffer. */
  constructor(key: Buffer) {
    assert(key.length === DATA_KEY_BYTES, `an XTS data key is ${DATA_KEY_BYTES} bytes`);
    // OpenSSL refuses XTS keys whose halves are equal; say it here, once.
    assert(!key.subarray(0, 32).equals(key.subarray(32)), 'the halves of an XTS key must differ');
    this.key = Buffer.from(key);
  }

  /**
   * The ciphertext of `plain` (whole sectors) at device offset `offset`, as
   * one buffer per sector (they go straight into the command, no gathering
   * copy). A zero sector stays the shared zero buffer.
   */
  encrypt(offset: number, plain: Buffer): Buffer[] {
    assert(isSectorAligned(offset, plain.length), `encrypt of [${offset}, +${plain.length}) is not sector-aligned`);
    const first = offset / SECTOR;
    const out: Buffer[] = [];
    for (let at = 0; at < plain.length; at += SECTOR) {
      const sector = plain.subarray(at, at + SECTOR);
      if (sector.equals(ZERO_SECTOR)) {
        out.push(ZERO_SECTOR);
        continue;
      }
      const c = createCipheriv(XTS_CIPHER, this.key, tweak(first + at / SECTOR));
      out.push(c.update(sector));
      c.final();
    }
    return out;
  }

  /** Decrypts `stored` (whole sectors read at `offset`) in place; zero sectors stay zero. */
  decryptInPlace(offset: number, stored: Buffer): Buffer {
    assert(isSectorAligned(offset, stored.length), `decrypt of [${offset}, +${stored.length}) is not sector-aligned`);
    const first = offset / SECTOR;
    for (let at = 0; at < stored.length; at += SECTOR) {
      const sector = stored.subarray(at, at + SECTOR);
      if (sector.equals(ZERO_SECTOR)) continue;
      const d = createDecipheriv(XTS_CIPHER, this.key, tweak(first + at / SECTOR));
      sector.set(d.update(sector));
      d.final();
    }
    return stored;
  }
}
