// A node's keys: the key-encryption keys of its key file, and the data keys
// of encrypted devices unwrapped with them (cached by wrapped key, never
// written anywhere). Only the node's NBD edge and the key operations
// (create, rotate, rekey) ask for keys; apply never does, so a node without
// them still replicates and stores ciphertext — it only cannot serve.
//
// A device whose data key is wrapped with a KEK missing from the file makes
// the ring read the file again (once per miss, at most every
// keyFileRereadMs): appending the new key on a node after a rotation brings
// its encrypted exports back without a restart.

import type { Logger } from 'pino';
import { readKeyFile } from './key-file.ts';
import { type Kek, type WrappedKey, unwrapDataKey } from './wrap.ts';
import { XtsKey } from './xts.ts';

const REREAD_MS = 1_000;

/** A data key, or the sentence saying why this node cannot have it. */
export type DataKeyResult = { key: XtsKey } | { why: string };

export class KeyRing {
  private keks: Kek[];
  private readonly cache = new Map<string, XtsKey>();
  private lastReadMs = 0;

  /** `path` undefined: a node without a key file (it serves no encrypted export). */
  constructor(
    readonly path: string | undefined,
    private readonly logger?: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.keks = path === undefined ? [] : readKeyFile(path);
    this.lastReadMs = this.now();
  }

  /** Ids of the KEKs held, in file order (never their bytes). */
  kekIds(): string[] {
    return this.keks.map((k) => k.id);
  }

  /** The KEK new data keys are wrapped with (the file's last), or why there is none. */
  newest(): Kek | { why: string } {
    this.reread(true);
    const k = this.keks[this.keks.length - 1];
    return k ?? { why: 'this node has no encryption key file: set encryption-key-file (or the systemd credential xdevice-encryption-keys)' };
  }

  kek(id: string): Kek | undefined {
    let k = this.keks.find((x) => x.id === id);
    if (!k && this.reread(false)) k = this.keks.find((x) => x.id === id);
    return k;
  }

  /** The data key `w` wraps, for device `device` (named in the reason if there is none). */
  dataKey(device: string, w: WrappedKey): DataKeyResult {
    const cacheKey = `${w.kekId}/${w.wrapped.toString('base64')}`;
    const cached = this.cache.get(cacheKey);
    if (cached) return { key: cached };
    if (this.path === undefined) return { why: `device ${device} is encrypted and this node has no encryption key file: set encryption-key-file (or the systemd credential xdevice-encryption-keys)` };
    const kek = this.kek(w.kekId);
    if (!kek) return { why: `device ${device}'s data key is wrapped with key-encryption key ${w.kekId}, which ${this.path} does not hold: add that key to the file on this node` };
    const key = unwrapDataKey(kek, w);
    if (key === 'wrong-kek') return { why: `key-encryption key ${w.kekId} in ${this.path} is not the key device ${device}'s data key was wrapped with (authentication failed): this node has a wrong key file` };
    if (key === 'wrong-kcv') return { why: `device ${device}'s data key does not match its key check value: refusing to use it` };
    const xts = new XtsKey(key);
    key.fill(0);
    if (this.cache.size >= 1024) this.cache.clear();
    this.cache.set(cacheKey, xts);
    return { key: xts };
  }

  /** Reads the key file again (rate-limited unless `force`); true if it was read. A bad file keeps the keys held. */
  private reread(force: boolean): boolean {
    if (this.path === undefined) return false;
    const now = this.now();
    if (!force && now - this.lastReadMs < REREAD_MS) return false;
    this.lastReadMs = now;
    try {
      this.keks = readKeyFile(this.path);
      return true;
    } catch (err) {
      this.logger?.error({ err: (err as Error).message }, 'encryption key file not re-read; keeping the keys held');
      return false;
    }
  }
}
