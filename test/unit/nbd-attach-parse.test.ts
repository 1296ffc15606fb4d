// The parsers of xdevice-nbd-attach (native/attach/nbd_parse.c) under
// AddressSanitizer and UBSan: the harness native/attach/fuzz_parse.c is
// compiled here, fed 200k random and mutated-valid inputs (seeded: the seed is
// printed, XDEVICE_SEED replays it), and must exit 0 with no sanitizer report.
// Then inputs built here byte by byte, independently of the C code, must parse
// to the values they carry, and damaged ones must be rejected.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seedFromEnv } from './helpers/nbd-random.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const SRC = join(ROOT, 'native', 'attach');
const seed = seedFromEnv();
console.log(`# XDEVICE_SEED=${seed}`);

const dir = mkdtempSync(join(tmpdir(), 'xdevice-attach-fuzz-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
const harness = join(dir, 'fuzz_parse');

const SAN_ENV = { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:abort_on_error=0:exitcode=86', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1:exitcode=87' };

function run(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(harness, args, { encoding: 'utf8', env: SAN_ENV, maxBuffer: 16 << 20 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function parse(...args: string[]): string {
  const r = run(['parse', ...args]);
  if (r.status !== 0 || /Sanitizer|runtime error/.test(r.stderr)) throw new Error(`harness failed (${r.status}): ${r.stderr}`);
  return r.stdout.trim();
}

const be = (bytes: number, v: bigint | number): Buffer => {
  const b = Buffer.alloc(bytes);
  if (bytes === 2) b.writeUInt16BE(Number(v));
  else if (bytes === 4) b.writeUInt32BE(Number(v));
  else b.writeBigUInt64BE(BigInt(v));
  return b;
};
const hex = (...parts: Buffer[]) => Buffer.concat(parts).toString('hex');

// Netlink is host-endian (little on x86): attributes and messages built by hand.
function nla(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const b = Buffer.alloc((len + 3) & ~3);
  b.writeUInt16LE(len, 0);
  b.writeUInt16LE(type, 2);
  payload.copy(b, 4);
  return b;
}
const u32le = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
function genlMsg(type: number, cmd: number, attrs: Buffer[]): Buffer {
  const body = Buffer.concat([Buffer.from([cmd, 1, 0, 0]), ...attrs]);
  const h = Buffer.alloc(16);
  h.writeUInt32LE(16 + body.length, 0);
  h.writeUInt16LE(type, 4);
  h.writeUInt32LE(7, 8);
  return Buffer.concat([h, body]);
}
const NESTED = 0x8000;

t.test('the harness compiles with ASan and UBSan', async (t) => {
  const cc = spawnSync(
    'gcc',
    ['-std=gnu11', '-g', '-O1', '-Wall', '-Wextra', '-Werror', '-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer',
      '-o', harness, join(SRC, 'fuzz_parse.c'), join(SRC, 'nbd_parse.c')],
    { encoding: 'utf8' },
  );
  t.equal(cc.status, 0, cc.stderr);
});

t.test(`200k random and mutated inputs to every parser (XDEVICE_SEED=${seed})`, async (t) => {
  const r = run(['fuzz', String(seed >>> 0), '200000']);
  t.equal(r.status, 0, `harness exit (XDEVICE_SEED=${seed}):\n${r.stderr.slice(-4000)}`);
  t.notMatch(r.stderr, /Sanitizer|runtime error/, 'no sanitizer report');
  t.match(r.stdout, /fuzzed 200000 inputs/);
});

t.test('handshake: greeting and option replies', async (t) => {
  const greeting = (flags: number) => hex(Buffer.from('NBDMAGIC'), Buffer.from('IHAVEOPT'), be(2, flags));
  t.equal(parse('greeting', greeting(3)), 'ok flags=3');
  t.equal(parse('greeting', greeting(3).slice(0, -2)), 'err -1', 'one byte short: truncated');
  t.equal(parse('greeting', greeting(3) + '00'), 'err -3', 'one byte long: rejected');
  t.equal(parse('greeting', greeting(2)), 'err -4', 'no FIXED_NEWSTYLE: refused');
  t.equal(parse('greeting', hex(Buffer.from('NBDMAGIC'), be(8, 0x00420281861253n), be(2, 3))), 'err -2', 'oldstyle magic: refused');

  const reply = (opt: number, type: number, len: number) => hex(be(8, 0x3e889045565a9n), be(4, opt), be(4, type), be(4, len));
  t.equal(parse('opt-reply', '7', reply(7, 3, 12)), 'ok type=3 length=12');
  t.equal(parse('opt-reply', '7', reply(7, 1, 0)), 'ok type=1 length=0');
  t.equal(parse('opt-reply', '7', reply(7, 1, 4)), 'err -3', 'an ACK with data');
  t.equal(parse('opt-reply', '7', reply(7, 3, 8193)), 'err -3', 'an oversized payload is refused before it is read');
  t.equal(parse('opt-reply', '7', reply(6, 3, 12)), 'err -4', 'a reply to another option');
  t.equal(parse('opt-reply', '7', reply(7, 3, 12).slice(0, 38)), 'err -1', 'truncated header');
});

t.test('handshake: NBD_REP_INFO payloads give the size, flags and block size', async (t) => {
  const size = 256n << 20n;
  const flags = 0x1 | 0x4 | 0x8 | 0x20 | 0x100; // HAS_FLAGS SEND_FLUSH SEND_FUA SEND_TRIM CAN_MULTI_CONN
  const infoExport = hex(be(2, 0), be(8, size), be(2, flags));
  const blockSize = (min: number, pref: number, max: number) => hex(be(2, 3), be(4, min), be(4, pref), be(4, max));
  t.equal(parse('export', infoExport), `ok size=${size} flags=${flags} block=4096`, 'no block size info: 4096');
  t.equal(parse('export', infoExport, blockSize(512, 4096, 32 << 20)), `ok size=${size} flags=${flags} block=4096`);
  t.equal(parse('export', blockSize(512, 1024, 1 << 20), infoExport), `ok size=${size} flags=${flags} block=1024`, 'the preferred size, in any order');
  t.equal(parse('export', infoExport, blockSize(1, 65536, 1 << 20)), `ok size=${size} flags=${flags} block=4096`, 'a preferred size over a page is capped');
  t.equal(parse('export', hex(be(2, 0), be(8, 3 * 512), be(2, 1))), 'ok size=1536 flags=1 block=512', 'a size that 4096 does not divide: smaller blocks');
  t.equal(parse('export', hex(be(2, 0), be(8, 3 * 1024), be(2, 1)), blockSize(1024, 4096, 1 << 20)), 'ok size=3072 flags=1 block=1024', 'down to the minimum, no further');
  t.equal(parse('export', hex(be(2, 0), be(8, 3 * 512), be(2, 1)), blockSize(1024, 4096, 1 << 20)), 'err -5', 'the minimum does not divide the size');
  t.equal(parse('export', infoExport.slice(0, -2)), 'err -1', 'NBD_INFO_EXPORT one byte short');
  t.equal(parse('export', infoExport + '00'), 'err -3', 'NBD_INFO_EXPORT one byte long');
  t.equal(parse('export', blockSize(512, 4096, 1 << 20).slice(0, -2)), 'err -1', 'NBD_INFO_BLOCK_SIZE one byte short');
  t.equal(parse('export', infoExport, blockSize(3, 4096, 1 << 20)), 'err -5', 'a minimum that is not a power of two');
  t.equal(parse('export', infoExport, blockSize(8192, 8192, 1 << 20)), 'err -5', 'a minimum over a page cannot be a kernel block size');
  t.equal(parse('export', hex(be(2, 1), Buffer.from('default'))), 'err -6', 'no NBD_INFO_EXPORT before the ACK');
  t.equal(parse('export', hex(be(2, 0), be(8, size), be(2, 0))), 'err -4', 'HAS_FLAGS clear');
  t.equal(parse('export', hex(be(2, 0), be(8, 1000), be(2, 1))), 'err -5', 'a size that is not a multiple of 512');
  t.equal(parse('export', hex(be(2, 0), be(8, 0), be(2, 1))), 'err -5', 'an empty export');
});

t.test('netlink: LINK_DEAD, the family reply and STATUS', async (t) => {
  const family = 27;
  const dead = genlMsg(family, 4, [nla(1, u32le(3))]); // NBD_CMD_LINK_DEAD, NBD_ATTR_INDEX=3
  t.equal(parse('link-dead', String(family), dead.toString('hex')), 'ok index=3');
  t.equal(parse('link-dead', String(family + 1), dead.toString('hex')), 'err -6', 'another family');
  t.equal(parse('link-dead', String(family), genlMsg(family, 1, [nla(1, u32le(3))]).toString('hex')), 'err -6', 'another command');
  t.equal(parse('link-dead', String(family), dead.subarray(0, dead.length - 1).toString('hex')), 'err -3', 'truncated: the header length disagrees');
  t.equal(parse('link-dead', String(family), genlMsg(family, 4, [nla(1, Buffer.from([3, 0]))]).toString('hex')), 'err -3', 'a 2-byte index');
  t.equal(parse('link-dead', String(family), genlMsg(family, 4, []).toString('hex')), 'err -6', 'no index');

  const groups = nla(7 | NESTED, Buffer.concat([
    nla(1 | NESTED, Buffer.concat([nla(1, Buffer.from('other\0')), nla(2, u32le(4))])),
    nla(2 | NESTED, Buffer.concat([nla(1, Buffer.from('nbd_mc_group\0')), nla(2, u32le(11))])),
  ]));
  const famId = Buffer.alloc(2);
  famId.writeUInt16LE(family);
  const newFamily = genlMsg(0x10, 1, [nla(2, Buffer.from('nbd\0')), nla(1, famId), groups]);
  t.equal(parse('family', 'nbd_mc_group', newFamily.toString('hex')), `ok family=${family} group=11`);
  t.equal(parse('family', 'nbd_mc_grou', newFamily.toString('hex')), `ok family=${family} group=0`, 'a prefix of a name is not the name');

  const item = (idx: number, connected: number) => nla(1 | NESTED, Buffer.concat([nla(1, u32le(idx)), nla(2, Buffer.from([connected]))]));
  const status = genlMsg(family, 5, [nla(9 | NESTED, Buffer.concat([item(0, 0), item(1, 1)]))]);
  t.equal(parse('status', String(family), '1', status.toString('hex')), 'ok connected=1');
  t.equal(parse('status', String(family), '0', status.toString('hex')), 'ok connected=0');
  t.equal(parse('status', String(family), '2', status.toString('hex')), 'err -6', 'an index not listed');
});
