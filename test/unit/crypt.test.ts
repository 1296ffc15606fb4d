// src/crypt: XTS matches node:crypto's aes-256-xts with the plain64 tweak of
// each 4 KiB block and keeps zero blocks zero; wrapping detects a wrong KEK
// and a wrong key check value; the key file parser refuses every malformed
// file (seeded fuzz), the loader refuses group/other-readable files, and the
// key ring says why it cannot give a key.
import t from 'tap';
import { createCipheriv, randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XtsKey } from '../../src/crypt/xts.ts';
import { keyCheckValue, newDataKey, unwrapDataKey, wrapDataKey } from '../../src/crypt/wrap.ts';
import { KeyFileError, keyFilePath, parseKeyFile, readKeyFile, KEY_CREDENTIAL_NAME } from '../../src/crypt/key-file.ts';
import { KeyRing } from '../../src/crypt/keyring.ts';
import { limits } from '../../src/limits.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';

const SECTOR = limits.cryptSectorBytes;
const seed = seedFromEnv();
console.log(`# XDEVICE_SEED=${seed}`);
const rnd = makeRandom(seed);

function reference(key: Buffer, offset: number, plain: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let at = 0; at < plain.length; at += SECTOR) {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(BigInt(offset / SECTOR + at / SECTOR));
    const c = createCipheriv('aes-256-xts', key, iv);
    out.push(Buffer.concat([c.update(plain.subarray(at, at + SECTOR)), c.final()]));
  }
  return Buffer.concat(out);
}

t.test('XTS: each block is aes-256-xts under its block number; zero blocks stay zero; decrypt inverts', async (t) => {
  const raw = newDataKey();
  const key = new XtsKey(raw);
  const plain = rnd.bytes(4 * SECTOR);
  plain.fill(0, SECTOR, 2 * SECTOR);
  const offset = 7 * SECTOR;
  const parts = key.encrypt(offset, plain);
  t.equal(parts.length, 4);
  const cipher = Buffer.concat(parts);
  const ref = reference(raw, offset, plain);
  t.same(cipher.subarray(0, SECTOR), ref.subarray(0, SECTOR), 'block 7 as node:crypto');
  t.same(cipher.subarray(2 * SECTOR), ref.subarray(2 * SECTOR), 'blocks 9, 10 as node:crypto');
  t.ok(cipher.subarray(SECTOR, 2 * SECTOR).every((b) => b === 0), 'a zero block is stored as zeroes (a hole stays a hole)');
  t.not(cipher.indexOf(plain.subarray(0, 64)), 0, 'ciphertext is not the plaintext');
  t.same(key.decryptInPlace(offset, Buffer.from(cipher)), plain);
  // Large block numbers (beyond 2^32) encode as plain64.
  const far = 2 ** 40 * SECTOR;
  t.same(Buffer.concat(key.encrypt(far, plain.subarray(0, SECTOR))), (() => {
    const iv = Buffer.alloc(16);
    iv.writeBigUInt64LE(2n ** 40n);
    const c = createCipheriv('aes-256-xts', raw, iv);
    return Buffer.concat([c.update(plain.subarray(0, SECTOR)), c.final()]);
  })());
  t.throws(() => key.encrypt(512, plain.subarray(0, SECTOR)), /not sector-aligned/);
});

t.test('wrap: the right KEK unwraps; another KEK or a wrong check value is refused', async (t) => {
  const kek = { id: 'k1', key: randomBytes(32) };
  const other = { id: 'k1', key: randomBytes(32) };
  const dataKey = newDataKey();
  const w = wrapDataKey(kek, dataKey);
  t.same(unwrapDataKey(kek, w), dataKey);
  t.equal(unwrapDataKey(other, w), 'wrong-kek');
  t.equal(unwrapDataKey(kek, { ...w, kekId: 'k2' }), 'wrong-kek', 'the KEK id is authenticated');
  t.equal(unwrapDataKey(kek, { ...w, kcv: keyCheckValue(newDataKey()) }), 'wrong-kcv');
  const flipped = Buffer.from(w.wrapped);
  flipped[20]! ^= 1;
  t.equal(unwrapDataKey(kek, { ...w, wrapped: flipped }), 'wrong-kek');
  t.equal(unwrapDataKey(kek, { ...w, wrapped: w.wrapped.subarray(1) }), 'wrong-kcv');
});

const hex = (): string => randomBytes(32).toString('hex');

t.test('key file: ids and 64 hex digits per line, comments, refusals name the line', async (t) => {
  const a = hex();
  const b = hex();
  const keys = parseKeyFile(`# keys\n\nk1 ${a}\n  k-2.x_y   ${b.toUpperCase()}  \n`, 'f');
  t.same(keys.map((k) => k.id), ['k1', 'k-2.x_y']);
  t.same(keys[1]!.key, Buffer.from(b, 'hex'));
  const bad: [string, RegExp][] = [
    ['', /no key/],
    [`k1 ${a}\nk1 ${b}`, /f:2: key id k1 appears twice/],
    [`k1 ${a}\nk2 ${a}`, /same bytes/],
    [`k1 ${a.slice(2)}`, /64 hex digits/],
    [`k1 ${a} extra`, /f:1: expected/],
    [`k/1 ${a}`, /key id must be/],
    [`k1 ${'00'.repeat(32)}`, /not random/],
    [`k1 ${'zz'.repeat(32)}`, /hex digits/],
  ];
  for (const [text, re] of bad) t.throws(() => parseKeyFile(text, 'f'), re, JSON.stringify(text.slice(0, 30)));
  const many = Array.from({ length: limits.keyEncryptionKeysMax + 1 }, (_, i) => `k${i} ${hex()}`).join('\n');
  t.throws(() => parseKeyFile(many, 'f'), /more than/);
});

t.test('key file: seeded fuzz — any text parses to valid keys or throws KeyFileError', async (t) => {
  const seededHex = (): string => rnd.bytes(32).toString('hex');
  const pieces = ['k1', ' ', '\t', '\n', '#', seededHex(), seededHex().slice(0, 63), 'é', '\r\n', 'x'.repeat(70), '00'.repeat(32), 'ZZ'];
  const idChars = 'ABCXYZabcxyz0189._-';
  const decoration = ['', '\n', '\r\n', '# a comment\n', '   \n', '\t# indented comment\r\n'];
  let parsed = 0;
  let refused = 0;
  let built = 0;
  for (let i = 0; i < 2000; i++) {
    // Every fourth text is a valid file built on purpose (ids, keys, comments, blank lines, CRLF), so
    // both outcomes are exercised whatever the seed; the rest are random mixes of pieces and bytes.
    if (i % 4 === 0) {
      const want: Array<{ id: string; hex: string }> = [];
      let text = '';
      for (let k = rnd.int(1, 3); k > 0; k--) {
        let id = `k${want.length}`;
        for (let c = rnd.int(0, 8); c > 0; c--) id += idChars[rnd.int(0, idChars.length - 1)];
        const key = rnd.int(0, 1) === 0 ? seededHex() : seededHex().toUpperCase();
        want.push({ id, hex: key.toLowerCase() });
        text += decoration[rnd.int(0, decoration.length - 1)]!;
        text += `${rnd.int(0, 1) ? ' ' : ''}${id}${rnd.int(0, 1) ? '\t' : ' '.repeat(rnd.int(1, 3))}${key}${rnd.int(0, 1) ? ' ' : ''}`;
        text += rnd.int(0, 1) ? '\r\n' : '\n';
      }
      const keys = parseKeyFile(text, 'built');
      t.same(keys.map((k) => ({ id: k.id, hex: k.key.toString('hex') })), want, `built file ${JSON.stringify(text.slice(0, 40))} (XDEVICE_SEED=${seed})`);
      built++;
      continue;
    }
    let text = '';
    const n = rnd.int(0, 12);
    for (let j = 0; j < n; j++) text += rnd.int(0, 9) === 0 ? rnd.bytes(rnd.int(1, 8)).toString('latin1') : pieces[rnd.int(0, pieces.length - 1)];
    try {
      const keys = parseKeyFile(text, 'fuzz');
      for (const k of keys) {
        if (k.key.length !== 32 || !/^[A-Za-z0-9._-]{1,64}$/.test(k.id)) t.fail(`bad key parsed from ${JSON.stringify(text)} (XDEVICE_SEED=${seed})`);
      }
      parsed++;
    } catch (err) {
      if (!(err instanceof KeyFileError)) t.fail(`${(err as Error).message} from ${JSON.stringify(text)} (XDEVICE_SEED=${seed})`);
      refused++;
    }
  }
  t.equal(built, 500, 'every fourth text was a file built valid and parsed to exactly its keys');
  t.ok(refused > 0, `of ${2000 - built} random texts ${parsed} parsed to valid keys, ${refused} refused with KeyFileError`);
});

t.test('key file loading: mode 600 only; the systemd credential when the option is unset', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-keys-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'keys');
  writeFileSync(path, `k1 ${hex()}\n`, { mode: 0o644 });
  chmodSync(path, 0o644);
  t.throws(() => readKeyFile(path), /accessible by group or others \(mode 644\); chmod 600/);
  chmodSync(path, 0o600);
  t.equal(readKeyFile(path)[0]!.id, 'k1');
  t.throws(() => readKeyFile(join(dir, 'missing')), /cannot read/);
  t.equal(keyFilePath('/x/y', { CREDENTIALS_DIRECTORY: dir }), '/x/y');
  t.equal(keyFilePath('', {}), undefined);
  t.equal(keyFilePath('', { CREDENTIALS_DIRECTORY: dir }), undefined, 'no credential file there');
  writeFileSync(join(dir, KEY_CREDENTIAL_NAME), `k1 ${hex()}\n`, { mode: 0o400 });
  t.equal(keyFilePath('', { CREDENTIALS_DIRECTORY: dir }), join(dir, KEY_CREDENTIAL_NAME));
});

t.test('key ring: the newest KEK wraps; a missing or wrong KEK is refused with the reason; an appended key is found', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-ring-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'keys');
  const k1 = hex();
  const k2 = hex();
  writeFileSync(path, `k1 ${k1}\n`, { mode: 0o600 });
  let now = 0;
  const ring = new KeyRing(path, undefined, () => now);
  const newest = ring.newest();
  if ('why' in newest) throw new Error(newest.why);
  const w1 = wrapDataKey(newest, newDataKey());
  t.ok('key' in ring.dataKey('d', w1));
  const w2 = wrapDataKey({ id: 'k2', key: Buffer.from(k2, 'hex') }, newDataKey());
  const missing = ring.dataKey('d', w2);
  t.match('why' in missing ? missing.why : '', /wrapped with key-encryption key k2, which .* does not hold/);
  writeFileSync(path, `k1 ${k1}\nk2 ${k2}\n`, { mode: 0o600 });
  now += 2000;
  t.ok('key' in ring.dataKey('d', w2), 'the re-read file holds k2');
  t.same(ring.kekIds(), ['k1', 'k2']);
  const wrong = new KeyRing(path, undefined, () => now);
  const forged = wrapDataKey({ id: 'k1', key: randomBytes(32) }, newDataKey());
  const r = wrong.dataKey('d', forged);
  t.match('why' in r ? r.why : '', /is not the key device d's data key was wrapped with/);
  const none = new KeyRing(undefined);
  const n = none.dataKey('d', w1);
  t.match('why' in n ? n.why : '', /no encryption key file/);
});
