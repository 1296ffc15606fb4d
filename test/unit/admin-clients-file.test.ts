// The admin clients file: its parser (each refusal names the line; seeded
// fuzzing of random bytes and of near-valid lines never crashes and always
// gives a table or a ClientsFileError), the file checks the node makes
// (private, bounded), `client add` (token shown once, only its hash stored,
// file 600, duplicates refused), and the access table built from it.
import t from 'tap';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClientsFileError, hashToken, mintToken, parseClientsFile, readClientsFile } from '../../src/admin/clients-file.ts';
import { accessTable, authenticate, loadAccess } from '../../src/admin/access.ts';
import { addClient } from '../../src/cli/client-add.ts';
import { limits } from '../../src/limits.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';

const seed = seedFromEnv();
console.log(`# XDEVICE_SEED=${seed}`);

const HASH = 'a'.repeat(64);

function tmp(t: { teardown(fn: () => unknown): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-clients-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

t.test('a well-formed file gives its token and certificate clients', async (t) => {
  const text = ['# admin API clients', '', `token  alice  operator  sha256:${HASH}`, '\tcert ops.example.com admin  ', `token bob viewer sha256:${'b'.repeat(64)}\r`, '   # indented comment'].join('\n');
  const entries = parseClientsFile(Buffer.from(text), 'clients');
  t.same(
    entries.map((e) => ({ kind: e.kind, name: e.name, role: e.role, line: e.line })),
    [
      { kind: 'token', name: 'alice', role: 'operator', line: 3 },
      { kind: 'cert', name: 'ops.example.com', role: 'admin', line: 4 },
      { kind: 'token', name: 'bob', role: 'viewer', line: 5 },
    ],
  );
  const alice = entries[0]!;
  t.ok(alice.kind === 'token' && alice.hash.equals(Buffer.from(HASH, 'hex')), 'the hash is kept as bytes');
  t.same(parseClientsFile('', 'empty'), [], 'an empty file is an empty table');
});

t.test('each malformed line is refused, naming the file, the line and the problem', async (t) => {
  const cases: [string, RegExp][] = [
    [`token alice operator`, /^f:1: expected "token NAME ROLE sha256:HEX" \(4 fields\), got 3$/],
    [`\n\ntoken alice boss sha256:${HASH}`, /^f:3: unknown role "boss" \(one of viewer, operator, admin\)$/],
    [`token alice viewer md5:${HASH}`, /^f:1: the token hash must be sha256:/],
    [`token alice viewer sha256:${HASH.toUpperCase()}`, /^f:1: the token hash must be sha256: and 64 lowercase hex/],
    [`token alice viewer sha256:${HASH}0`, /^f:1: the token hash/],
    [`token -alice viewer sha256:${HASH}`, /^f:1: bad client name "-alice"/],
    [`token ${'n'.repeat(65)} viewer sha256:${HASH}`, /^f:1: bad client name/],
    [`cert a b admin`, /^f:1: expected "cert CN ROLE" \(3 fields\), got 4$/],
    [`cert ${'c'.repeat(65)} admin`, /^f:1: bad certificate CN/],
    [`user alice admin`, /^f:1: expected "token NAME ROLE sha256:HEX" or "cert CN ROLE", got a line starting "user"$/],
    [`token alice viewer sha256:${HASH}\ntoken alice admin sha256:${'c'.repeat(64)}`, /^f:2: client "alice" is already on line 1$/],
    [`cert ops admin\ncert ops viewer`, /^f:2: certificate CN "ops" is already on line 1$/],
    [`token alice viewer sha256:${HASH}\ntoken bob viewer sha256:${HASH}`, /^f:2: the same token hash as line 1/],
    [`token alicé viewer sha256:${HASH}`, /^f:1: only printable ASCII/],
  ];
  for (const [text, want] of cases) {
    t.throws(() => parseClientsFile(Buffer.from(text), 'f'), { name: 'ClientsFileError', code: 'XDEVICE_ERR_CONFIG', message: want }, JSON.stringify(text));
  }
  t.throws(() => parseClientsFile(Buffer.from([0x74, 0xff, 0x0a]), 'f'), { message: /^f: not UTF-8 text$/ });
  const many = Array.from({ length: limits.adminClientsMax + 1 }, (_, i) => `cert c${i} viewer`).join('\n');
  t.throws(() => parseClientsFile(many, 'f'), { message: new RegExp(`^f:${limits.adminClientsMax + 1}: more than ${limits.adminClientsMax} clients$`) });
  t.equal(parseClientsFile(many.split('\n').slice(0, -1).join('\n'), 'f').length, limits.adminClientsMax, 'exactly the limit is accepted');
});

t.test('seeded fuzz: random bytes and mangled lines give a table or a ClientsFileError naming where', async (t) => {
  const random = makeRandom(seed);
  const pieces = ['token', 'cert', 'alice', 'bob', 'ops.example', 'viewer', 'operator', 'admin', `sha256:${HASH}`, `sha256:${'d'.repeat(64)}`, 'sha256:', '#', ' ', '\t', '\r', '\n', '\0', 'é', '\u202e', '=', 'x'.repeat(70)];
  let tables = 0;
  let refusals = 0;
  for (let i = 0; i < 3000; i++) {
    let data: Buffer;
    if (i % 3 === 0) data = random.bytes(random.int(0, 200));
    else {
      const parts: string[] = [];
      for (let n = random.int(0, 24); n > 0; n--) parts.push(pieces[random.int(0, pieces.length - 1)]!);
      data = Buffer.from(parts.join(random.int(0, 1) ? ' ' : ''));
      // Flip a byte now and then: near-valid input is where parsers go wrong.
      if (data.length > 0 && random.int(0, 3) === 0) data[random.int(0, data.length - 1)] = random.int(0, 255);
    }
    try {
      const entries = parseClientsFile(data, 'fz');
      for (const e of entries) {
        if (!['viewer', 'operator', 'admin'].includes(e.role) || e.name.length === 0 || /\s/.test(e.name) || (e.kind === 'token' && e.hash.length !== 32)) {
          t.fail(`accepted a bad entry ${JSON.stringify(e)} from ${data.toString('hex')} (XDEVICE_SEED=${seed})`);
        }
      }
      tables++;
    } catch (err) {
      if (!(err instanceof ClientsFileError) || !/^fz(:\d+)?: \S/.test(err.message)) {
        t.fail(`${data.toString('hex')}: ${(err as Error).stack} (XDEVICE_SEED=${seed})`);
        return;
      }
      refusals++;
    }
  }
  t.ok(tables > 0 && refusals > 0, `both outcomes seen (${tables} tables, ${refusals} refusals)`);
});

t.test('the node reads the file only when private and bounded', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'clients');
  writeFileSync(file, `cert ops admin\n`, { mode: 0o600 });
  t.equal(readClientsFile(file).length, 1);
  chmodSync(file, 0o640);
  t.throws(() => readClientsFile(file), { message: /accessible by group or others \(mode 640\); chmod 600 it/ });
  chmodSync(file, 0o604);
  t.throws(() => readClientsFile(file), { message: /mode 604/ });
  chmodSync(file, 0o600);
  writeFileSync(file, `# ${'x'.repeat(limits.adminClientsFileBytesMax)}\n`);
  t.throws(() => readClientsFile(file), { message: /larger than/ });
  t.throws(() => readClientsFile(join(dir, 'missing')), { message: /cannot read/ });
  t.throws(() => readClientsFile(dir), { message: /not a regular file/ });
});

t.test('client add: the token is printed once, only its hash is stored, the file is 600, duplicates refused', async (t) => {
  const dir = tmp(t);
  const file = join(dir, 'clients');
  const alice = addClient({ file, name: 'alice', role: 'operator', cert: false });
  t.match(alice.token, /^xdv_[A-Za-z0-9_-]{43}$/, '256 bits, base64url');
  t.equal(statSync(file).mode & 0o777, 0o600);
  const text = readFileSync(file, 'utf8');
  t.notOk(text.includes(alice.token!), 'the token itself is not stored');
  t.equal(text, `token alice operator sha256:${hashToken(alice.token!).toString('hex')}\n`);
  addClient({ file, name: 'ops.example', role: 'admin', cert: true });
  t.throws(() => addClient({ file, name: 'alice', role: 'viewer', cert: false }), { message: /client "alice" is already on line 1/ });
  t.throws(() => addClient({ file, name: 'carol', role: 'root', cert: false }), { message: /unknown role "root"/ });
  t.throws(() => addClient({ file, name: 'has space', role: 'viewer', cert: false }), { message: /bad client name/ });
  t.equal(readFileSync(file, 'utf8').split('\n').length, 3, 'refused adds leave the file alone');
  const table = loadAccess({ clientsFile: file, token: '', anonymousReads: [] });
  t.same(authenticate(table, { authorization: `Bearer ${alice.token}` }), { ok: true, principal: { name: 'alice', role: 'operator' } });
  t.same(authenticate(table, { certificate: { verified: true, cn: 'ops.example' } }), { ok: true, principal: { name: 'cert:ops.example', role: 'admin' } });
  chmodSync(file, 0o644);
  t.throws(() => addClient({ file, name: 'dave', role: 'viewer', cert: false }), { message: /chmod 600/ });
  // A file that does not end in a newline still gets its own line.
  const other = join(dir, 'other');
  writeFileSync(other, 'cert x viewer', { mode: 0o600 });
  addClient({ file: other, name: 'y', role: 'viewer', cert: true });
  t.equal(readFileSync(other, 'utf8'), 'cert x viewer\ncert y viewer\n');
});

t.test('authentication: tokens, certificates, anonymous callers, and admin-token as the client "token"', async (t) => {
  const viewer = mintToken();
  const entries = parseClientsFile(`token v viewer sha256:${hashToken(viewer).toString('hex')}\ncert ops operator`, 'f');
  const table = accessTable(entries, { clientsFile: 'f', token: 'legacy-secret', anonymousReads: ['metrics'] });
  t.same(authenticate(table, { authorization: `Bearer ${viewer}` }), { ok: true, principal: { name: 'v', role: 'viewer' } });
  t.same(authenticate(table, { authorization: 'bearer legacy-secret' }), { ok: true, principal: { name: 'token', role: 'admin' } });
  t.match(authenticate(table, { authorization: `Bearer ${viewer}x` }), { ok: false, reason: 'unknown bearer token' });
  t.match(authenticate(table, { authorization: `Basic dTpw` }), { ok: false, reason: /not "Bearer TOKEN"/ });
  t.match(authenticate(table, { authorization: 'Bearer a b' }), { ok: false });
  t.match(authenticate(table, { certificate: { verified: false, error: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', cn: 'ops' } }), { ok: false, principal: 'cert:ops', reason: /not verified by admin-tls-ca: UNABLE_TO_VERIFY_LEAF_SIGNATURE/ });
  t.match(authenticate(table, { certificate: { verified: true, cn: 'stranger' } }), { ok: false, principal: 'cert:stranger', reason: /no "cert" line in admin-clients-file for certificate CN "stranger"/ });
  t.same(authenticate(table, {}), { ok: true, principal: { name: 'anonymous', role: undefined } }, 'anonymous, with no role, once credentials exist');
  t.same(authenticate(accessTable([], { clientsFile: '', token: '', anonymousReads: [] }), {}), { ok: true, principal: { name: 'anonymous', role: 'admin' } }, 'nothing configured: open');
  t.equal(accessTable([], { clientsFile: 'f', token: '', anonymousReads: [] }).required, true, 'an empty clients file still requires credentials');
  t.throws(() => accessTable(parseClientsFile(`token token viewer sha256:${HASH}`, 'f'), { clientsFile: 'f', token: 'x', anonymousReads: [] }), { message: /f:1: the client name "token" is admin-token's/ });
});
