// NBD export allow lists: the export-allow parser (src/parse.ts), which reads
// what operators write and refuses the rest with a reason, a seeded fuzz of it
// (random text never throws anything but an Error with a message; every grant
// written by formatExportGrant reads back), and the access decision
// (src/nbd/access.ts) a connection's identity gets for each export.
import { isDeepStrictEqual } from 'node:util';
import t from 'tap';
import { limits } from '../../src/limits.ts';
import { ANONYMOUS, describeIdentity, ExportAccessPolicy, type ClientIdentity } from '../../src/nbd/access.ts';
import { checkExportGrants, formatExportGrant, formatPrincipal, parseExportGrants, type ExportGrant, type GrantPrincipal } from '../../src/parse.ts';
import { makeRandom, seedFromEnv } from './helpers/nbd-random.ts';

const subject = (...attributes: Array<[string, string]>): GrantPrincipal => ({ kind: 'subject', attributes });

t.test('grants: EXPORT:rw|ro:SUBJECT or psk:NAME, ;-separated, backslash escapes', async (t) => {
  t.same(parseExportGrants('vm1:rw:/CN=alice'), [{ exportName: 'vm1', access: 'rw', principal: subject(['CN', 'alice']) }]);
  t.same(parseExportGrants(' vm1 : ro : /CN=backup/O=Ops Team ; db.2:rw:psk:carol ;'), [
    { exportName: 'vm1', access: 'ro', principal: subject(['CN', 'backup'], ['O', 'Ops Team']) },
    { exportName: 'db.2', access: 'rw', principal: { kind: 'psk', identity: 'carol' } },
  ]);
  t.same(parseExportGrants('a:rw:/O=Example\\, Inc.\\/EU/CN=x=y:z\\;w'), [{ exportName: 'a', access: 'rw', principal: subject(['O', 'Example, Inc./EU'], ['CN', 'x=y:z;w']) }]);
  t.same(parseExportGrants('a:rw:/OU=one/OU=two/emailAddress=a@b/2.5.4.3=oid'), [
    { exportName: 'a', access: 'rw', principal: subject(['OU', 'one'], ['OU', 'two'], ['emailAddress', 'a@b'], ['2.5.4.3', 'oid']) },
  ]);
  t.same(parseExportGrants('a:rw:psk:us:er\\\\x'), [{ exportName: 'a', access: 'rw', principal: { kind: 'psk', identity: 'us:er\\x' } }]);
  t.same(parseExportGrants('a:rw:/CN=\\ padded\\ '), [{ exportName: 'a', access: 'rw', principal: subject(['CN', ' padded ']) }]);
  t.same(parseExportGrants(''), []);
  t.same(parseExportGrants(' ; ;'), []);

  const refusals: Array<[string, RegExp]> = [
    ['vm1', /expected EXPORT:rw\|ro:PRINCIPAL/],
    ['vm1:rw', /expected EXPORT:rw\|ro:PRINCIPAL/],
    ['vm1:rx:/CN=a', /access must be rw or ro, got "rx"/],
    ['vm1:RW:/CN=a', /access must be rw or ro/],
    [':rw:/CN=a', /a device name is required/],
    ['-vm:rw:/CN=a', /bad device name/],
    ['v\\m:rw:/CN=a', /bad export name/],
    ['vm1:rw:CN=alice', /must be a certificate subject such as \/CN=alice\/O=Ops, or psk:NAME/],
    ['vm1:rw:', /must be a certificate subject/],
    ['vm1:rw:/', /is not a subject attribute type/],
    ['vm1:rw:/CN', /subject attribute CN needs a value/],
    ['vm1:rw:/CN=', /subject attribute CN needs a value/],
    ['vm1:rw:/CN=a//O=b', /is not a subject attribute type/],
    ['vm1:rw:/C N=a', /"C N" is not a subject attribute type/],
    ['vm1:rw:/1.=a', /is not a subject attribute type/],
    ['vm1:rw:psk:', /psk: needs an identity/],
    ['vm1:rw:\\psk:a', /must be a certificate subject/],
    ['vm1:rw:/CN=a\\', /ends with a lone backslash/],
    ['vm1:rw:/CN=a\tb', /control character at position 13/],
    ['vm1:rw:/CN=a\\\nb', /control character/],
    [`vm1:rw:/CN=${'x'.repeat(limits.nbdPrincipalBytesMax)}`, /principal longer than 1024 bytes/],
  ];
  for (const [bad, reason] of refusals) t.throws(() => parseExportGrants(bad), { message: reason }, JSON.stringify(bad));
});

t.test('an allow list names one principal once per export, and is bounded', async (t) => {
  checkExportGrants(parseExportGrants('a:rw:/CN=alice;b:ro:/CN=alice;a:ro:/CN=alice/O=Ops;a:rw:psk:alice'));
  t.throws(() => checkExportGrants(parseExportGrants('a:rw:/CN=alice;a:ro:/CN=alice')), { message: /\/CN=alice is given twice for export a/ });
  t.throws(() => checkExportGrants(parseExportGrants('a:rw:/O=Ops/CN=alice;a:rw:/cn=alice/O=Ops')), { message: /given twice/ }, 'attribute order and type case do not make a new principal');
  t.throws(() => checkExportGrants(parseExportGrants('a:rw:psk:x;a:ro:psk:x')), { message: /psk:x is given twice/ });
  const many = Array.from({ length: limits.nbdExportGrantsMax + 1 }, (_, i) => `a:rw:/CN=c${i}`).join(';');
  t.throws(() => checkExportGrants(parseExportGrants(many)), { message: new RegExp(`more than ${limits.nbdExportGrantsMax} grants`) });
});

t.test('fuzz: random text is a list of grants or an Error with a reason; written grants read back', async (t) => {
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  const random = makeRandom(seed);
  const pick = <T>(items: readonly T[]): T => items[random.int(0, items.length - 1)]!;
  const alphabet = ['a', 'Z', '0', '.', '-', '_', ':', ';', '/', '=', '\\', ' ', ',', 'é', '\t', 'psk:', 'rw', 'ro', 'CN', 'O', '/CN=', ':rw:', ':ro:/'];
  let parsed = 0;
  for (let i = 0; i < 3000; i++) {
    const text = Array.from({ length: random.int(0, 40) }, () => pick(alphabet)).join('');
    try {
      const grants = parseExportGrants(text);
      parsed++;
      for (const g of grants) if (!isDeepStrictEqual(parseExportGrants(formatExportGrant(g)), [g])) t.fail(`${JSON.stringify(text)} does not read back (XDEVICE_SEED=${seed})`);
    } catch (error) {
      if (!(error instanceof Error) || error.message === '') t.fail(`${JSON.stringify(text)} threw ${String(error)} (XDEVICE_SEED=${seed})`);
    }
  }
  const valueChars = ['a', 'B', '7', ' ', ',', '/', ';', '\\', '=', ':', 'é', '😀', '+', '"'];
  const value = (): string => Array.from({ length: random.int(1, 12) }, () => pick(valueChars)).join('');
  for (let i = 0; i < 2000; i++) {
    const principal: GrantPrincipal = random.int(0, 3) === 0
      ? { kind: 'psk', identity: value() }
      : subject(...Array.from({ length: random.int(1, 4) }, (): [string, string] => [pick(['CN', 'O', 'OU', 'emailAddress', '2.5.4.10']), value()]));
    const grant: ExportGrant = { exportName: pick(['a', 'vm-1', 'db.2', 'X_y']), access: pick(['rw', 'ro'] as const), principal };
    const written = formatExportGrant(grant);
    if (!isDeepStrictEqual(parseExportGrants(`${written};`), [grant])) t.fail(`${JSON.stringify(written)} does not read back (XDEVICE_SEED=${seed})`);
  }
  t.ok(parsed > 0 && parsed < 3000, `random text both parses and is refused (${parsed} of 3000 parsed)`);
});

t.test('access: open without a list; a list admits only matching principals, ro where every match is ro', async (t) => {
  const policy = new ExportAccessPolicy(parseExportGrants('vm1:rw:/CN=alice;vm1:ro:/CN=backup/O=Ops;vm1:ro:/CN=alice/O=Audit;vm1:ro:psk:carol'));
  const alice: ClientIdentity = subject(['C', 'GB'], ['O', 'Dev'], ['CN', 'alice']);
  const aliceAudit: ClientIdentity = subject(['O', 'Audit'], ['CN', 'alice']);
  const backup: ClientIdentity = subject(['O', 'Ops'], ['CN', 'backup']);
  const backupElsewhere: ClientIdentity = subject(['O', 'Dev'], ['CN', 'backup']);
  const twoCns: ClientIdentity = subject(['CN', 'alice'], ['CN', 'mallory']);
  t.ok(policy.restricting);
  t.same(policy.decide('other', ANONYMOUS, false), { allowed: true, readOnly: false }, 'an export without a list is open');
  t.same(policy.decide('vm1', alice, true), { allowed: true, readOnly: false }, 'attributes the grant does not name are not looked at');
  t.same(policy.decide('vm1', aliceAudit, true), { allowed: true, readOnly: false }, 'when an rw and an ro grant both match, rw wins');
  t.same(policy.decide('vm1', backup, true), { allowed: true, readOnly: true });
  t.same(policy.decide('vm1', { kind: 'psk', identity: 'carol' }, true), { allowed: true, readOnly: true });
  for (const [who, identity] of [['backup of another O', backupElsewhere], ['a subject with a second CN', twoCns], ['psk:alice', { kind: 'psk', identity: 'alice' }], ['a PSK identity named like a CN', { kind: 'psk', identity: '/CN=alice' }]] as const) {
    const d = policy.decide('vm1', identity as ClientIdentity, true);
    t.match(d, { allowed: false, tlsRequired: false, reason: /is not on the allow list of export vm1/ }, who);
  }
  t.match(policy.decide('vm1', ANONYMOUS, true), { allowed: false, tlsRequired: false, reason: /a client without a verified certificate or PSK identity/ });
  t.match(policy.decide('vm1', alice, false), { allowed: false, tlsRequired: true }, 'without TLS a listed export asks for TLS');
  t.notOk(new ExportAccessPolicy().restricting);
  t.equal(describeIdentity(alice), '/C=GB/O=Dev/CN=alice');
  t.equal(describeIdentity(ANONYMOUS), 'anonymous');
  t.equal(formatPrincipal({ kind: 'psk', identity: 'a;b' }), 'psk:a\\;b');
});
