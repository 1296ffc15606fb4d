// The handshake phase driven by scripted client bytes (no sockets): each test
// feeds what a client would send and reads back the server's replies. The
// allow-list tests play STARTTLS as an upgrade that proves a given identity.

import t from 'tap';
import { MemoryDevice } from '../../src/device/memory.ts';
import { StaticDeviceTable } from '../../src/device/table.ts';
import { limits } from '../../src/limits.ts';
import {
  decodeInfoPayload,
  decodeMetaContextPayload,
  decodeOptionReplyHeader,
  decodeServerPayload,
  encodeClientFlags,
  encodeInfoRequestPayload,
  encodeMetaContextRequestPayload,
  encodeOption,
} from '../../src/nbd/codec.ts';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_TRIM,
  NbdInfo,
  NbdOption,
  NbdReply,
} from '../../src/nbd/constants.ts';
import { NbdProtocolError } from '../../src/nbd/errors.ts';
import { negotiate, type HandshakeIo, type Negotiated } from '../../src/nbd/handshake.ts';
import { InputQueue } from '../../src/nbd/input-queue.ts';
import type { TlsMode } from '../../src/nbd/tls.ts';
import { ANONYMOUS, ExportAccessPolicy, type ClientIdentity } from '../../src/nbd/access.ts';
import { parseExportGrants } from '../../src/parse.ts';
import type { AccessRefusal } from '../../src/nbd/handshake.ts';

const FIXED = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

function table(): StaticDeviceTable {
  return new StaticDeviceTable([
    new MemoryDevice({ name: 'a', size: 1 << 20, description: 'disk a' }),
    new MemoryDevice({ name: 'ro', size: 4096, readOnly: true }),
  ]);
}

interface Reply {
  option: number;
  replyType: number;
  payload: Buffer;
}

interface Outcome {
  result: Negotiated | undefined;
  error: unknown;
  greeting: Buffer;
  replies: Reply[];
  /** Bytes after the option replies (an EXPORT_NAME reply). */
  rest: Buffer;
}

interface RunOptions {
  tlsMode?: TlsMode;
  shuttingDown?: boolean;
  access?: ExportAccessPolicy;
  /** STARTTLS succeeds, proving this identity, and then the client sends `afterTls`. */
  tls?: { identity: ClientIdentity; afterTls: Buffer[] };
  refusals?: AccessRefusal[];
}

async function run(clientBytes: Buffer[], options: RunOptions = {}): Promise<Outcome> {
  const input = new InputQueue();
  for (const b of clientBytes) input.push(b);
  const upgrade = options.tls;
  if (upgrade === undefined) input.close();
  const written: Buffer[] = [];
  const io: HandshakeIo = {
    read: (n) => input.read(n),
    write: (b) => void written.push(b),
    get buffered() {
      return input.length;
    },
    startTls: async () => {
      if (upgrade === undefined) throw new Error('no TLS in this test');
      for (const b of upgrade.afterTls) input.push(b);
      input.close();
      return upgrade.identity;
    },
  };
  let result: Negotiated | undefined;
  let error: unknown;
  try {
    result = await negotiate(io, {
      devices: table(),
      tlsMode: options.tlsMode ?? 'off',
      isShuttingDown: () => options.shuttingDown ?? false,
      access: options.access,
      onRefused: (refusal) => options.refusals?.push(refusal),
    });
  } catch (e) {
    error = e;
  }
  const out = Buffer.concat(written);
  const greeting = out.subarray(0, 18);
  const replies: Reply[] = [];
  let at = 18;
  while (out.length - at >= 20 && out.readUInt32BE(at) === 0x0003e889) {
    const header = decodeOptionReplyHeader(out.subarray(at));
    replies.push({ option: header.option, replyType: header.replyType, payload: out.subarray(at + 20, at + 20 + header.length) });
    at += 20 + header.length;
  }
  return { result, error, greeting, replies, rest: out.subarray(at) };
}

const go = (name: string, infos: number[] = []): Buffer => encodeOption(NbdOption.GO, encodeInfoRequestPayload(name, infos));

t.test('greeting advertises fixed newstyle and NO_ZEROES', async (t) => {
  const o = await run([encodeClientFlags(FIXED), go('a')]);
  t.equal(o.greeting.toString('ascii', 0, 16), 'NBDMAGICIHAVEOPT');
  t.equal(o.greeting.readUInt16BE(16), 3);
  t.equal(o.result?.device.name, 'a');
});

t.test('unknown client flags disconnect', async (t) => {
  const o = await run([encodeClientFlags(FIXED | 4), go('a')]);
  t.type(o.error, NbdProtocolError);
  t.equal(o.replies.length, 0);
});

t.test('client flags 0 (plain newstyle) can only use EXPORT_NAME', async (t) => {
  const ok = await run([encodeClientFlags(0), encodeOption(NbdOption.EXPORT_NAME, Buffer.from('a'))]);
  t.equal(ok.result?.device.name, 'a');
  t.equal(ok.rest.length, 10 + 124, 'zeroes are sent without NO_ZEROES');
  const bad = await run([encodeClientFlags(0), go('a')]);
  t.type(bad.error, NbdProtocolError, 'no way to send an error reply without fixed newstyle');
});

t.test('EXPORT_NAME: default export, NO_ZEROES, unknown export terminates', async (t) => {
  const o = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.EXPORT_NAME)]);
  t.equal(o.result?.device.name, 'a', 'the empty name is the default export');
  t.equal(o.rest.length, 10);
  t.equal(o.rest.readUInt32BE(4), 1 << 20, 'size');
  const unknown = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.EXPORT_NAME, Buffer.from('nope'))]);
  t.type(unknown.error, NbdProtocolError);
});

t.test('ABORT is acknowledged and ends the handshake', async (t) => {
  const o = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.ABORT, Buffer.from('ignored'))]);
  t.equal(o.result, undefined);
  t.equal(o.error, undefined);
  t.same(o.replies.map((r) => r.replyType), [NbdReply.ACK]);
});

t.test('LIST names every export with its description; data is refused', async (t) => {
  const o = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.LIST), encodeOption(NbdOption.LIST, Buffer.from('x')), go('a')]);
  const servers = o.replies.filter((r) => r.replyType === NbdReply.SERVER).map((r) => decodeServerPayload(r.payload));
  t.same(servers, [
    { ok: true, name: 'a', description: 'disk a' },
    { ok: true, name: 'ro', description: '' },
  ]);
  t.equal(o.replies[2]!.replyType, NbdReply.ACK);
  t.equal(o.replies[3]!.replyType, NbdReply.ERR_INVALID);
  t.equal(o.result?.device.name, 'a', 'negotiation goes on after an error');
});

t.test('INFO then GO: same information, INFO_NAME/DESCRIPTION/BLOCK_SIZE', async (t) => {
  const infos = [NbdInfo.NAME, NbdInfo.DESCRIPTION, NbdInfo.BLOCK_SIZE];
  const o = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.INFO, encodeInfoRequestPayload('a', infos)), go('a', infos)]);
  const byOption = (option: number): unknown[] =>
    o.replies.filter((r) => r.option === option && r.replyType === NbdReply.INFO).map((r) => decodeInfoPayload(r.payload));
  const info = byOption(NbdOption.INFO);
  t.same(info, byOption(NbdOption.GO), 'GO repeats what INFO said');
  t.same(info, [
    { ok: true, reply: { info: NbdInfo.EXPORT, size: 1 << 20, transmissionFlags: o.result!.transmissionFlags } },
    { ok: true, reply: { info: NbdInfo.NAME, name: 'a' } },
    { ok: true, reply: { info: NbdInfo.DESCRIPTION, description: 'disk a' } },
    { ok: true, reply: { info: NbdInfo.BLOCK_SIZE, minimum: 1, preferred: 4096, maximum: limits.requestBytesMax } },
  ]);
  t.ok(o.result!.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN, 'memory devices allow multi-conn');
  t.notOk(o.result!.transmissionFlags & NBD_FLAG_SEND_DF, 'no DF without structured replies');
});

t.test('INFO/GO errors: unknown export, malformed payload', async (t) => {
  const bad = encodeInfoRequestPayload('a', []);
  bad.writeUInt32BE(99, 0);
  const o = await run([encodeClientFlags(FIXED), go('nope'), encodeOption(NbdOption.INFO, bad), go('ro')]);
  t.same(o.replies.slice(0, 2).map((r) => r.replyType >>> 0), [NbdReply.ERR_UNKNOWN, NbdReply.ERR_INVALID]);
  t.equal(o.result?.device.name, 'ro');
  t.ok(o.result!.transmissionFlags & NBD_FLAG_READ_ONLY, 'read-only flag');
  t.notOk(o.result!.transmissionFlags & NBD_FLAG_SEND_TRIM, 'no trim on a read-only export');
});

t.test('structured replies and base:allocation', async (t) => {
  const o = await run([
    encodeClientFlags(FIXED),
    encodeOption(NbdOption.SET_META_CONTEXT, encodeMetaContextRequestPayload('a', ['base:allocation'])),
    encodeOption(NbdOption.STRUCTURED_REPLY),
    encodeOption(NbdOption.STRUCTURED_REPLY),
    encodeOption(NbdOption.LIST_META_CONTEXT, encodeMetaContextRequestPayload('a', [])),
    encodeOption(NbdOption.LIST_META_CONTEXT, encodeMetaContextRequestPayload('a', ['base:'])),
    encodeOption(NbdOption.LIST_META_CONTEXT, encodeMetaContextRequestPayload('a', ['qemu:dirty-bitmap:x'])),
    encodeOption(NbdOption.SET_META_CONTEXT, encodeMetaContextRequestPayload('a', ['nocolon'])),
    encodeOption(NbdOption.SET_META_CONTEXT, encodeMetaContextRequestPayload('a', ['base:allocation', 'x-other:thing'])),
    go('a'),
  ]);
  const types = o.replies.map((r) => [r.option, r.replyType >>> 0]);
  t.same(types.slice(0, 3), [
    [NbdOption.SET_META_CONTEXT, NbdReply.ERR_INVALID],
    [NbdOption.STRUCTURED_REPLY, NbdReply.ACK],
    [NbdOption.STRUCTURED_REPLY, NbdReply.ERR_INVALID],
  ], 'meta contexts need structured replies; a second STRUCTURED_REPLY is invalid');
  const contexts = o.replies.filter((r) => r.replyType === NbdReply.META_CONTEXT).map((r) => decodeMetaContextPayload(r.payload));
  t.same(contexts.map((c) => c.ok && c.name), ['base:allocation', 'base:allocation', 'base:allocation'], 'list all, list base:, set');
  t.ok(o.result!.structuredReplies);
  t.ok(o.result!.baseAllocation);
  t.ok(o.result!.transmissionFlags & NBD_FLAG_SEND_DF);
});

t.test('meta context selected for another export does not carry over to GO', async (t) => {
  const o = await run([
    encodeClientFlags(FIXED),
    encodeOption(NbdOption.STRUCTURED_REPLY),
    encodeOption(NbdOption.SET_META_CONTEXT, encodeMetaContextRequestPayload('ro', ['base:allocation'])),
    go('a'),
  ]);
  t.equal(o.result!.baseAllocation, false);
});

t.test('unknown options get ERR_UNSUP and the next option still parses', async (t) => {
  const o = await run([encodeClientFlags(FIXED), encodeOption(4242, Buffer.alloc(100)), encodeOption(NbdOption.EXTENDED_HEADERS), go('a')]);
  t.same(o.replies.slice(0, 2).map((r) => r.replyType >>> 0), [NbdReply.ERR_UNSUP, NbdReply.ERR_UNSUP]);
  t.equal(o.result?.device.name, 'a');
});

t.test('TLS off: STARTTLS is refused by policy; never TLS_REQD', async (t) => {
  const o = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.STARTTLS), go('a')]);
  t.equal(o.replies[0]!.replyType >>> 0, NbdReply.ERR_POLICY);
  t.equal(o.result?.device.name, 'a');
});

t.test('TLS require: every option but STARTTLS/ABORT gets TLS_REQD; EXPORT_NAME terminates', async (t) => {
  const o = await run(
    [encodeClientFlags(FIXED), encodeOption(NbdOption.LIST), go('a'), encodeOption(4242), encodeOption(NbdOption.ABORT)],
    { tlsMode: 'require' },
  );
  t.same(o.replies.map((r) => r.replyType >>> 0), [NbdReply.ERR_TLS_REQD, NbdReply.ERR_TLS_REQD, NbdReply.ERR_TLS_REQD, NbdReply.ACK]);
  t.equal(o.result, undefined);
  const e = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.EXPORT_NAME, Buffer.from('a'))], { tlsMode: 'require' });
  t.type(e.error, NbdProtocolError);
});

t.test('STARTTLS with data queued behind it is a violation', async (t) => {
  const o = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.STARTTLS), go('a')], { tlsMode: 'on' });
  t.type(o.error, NbdProtocolError);
});

t.test('shutting down: options get ERR_SHUTDOWN, ABORT still works', async (t) => {
  const o = await run([encodeClientFlags(FIXED), go('a'), encodeOption(NbdOption.ABORT)], { shuttingDown: true });
  t.same(o.replies.map((r) => r.replyType >>> 0), [NbdReply.ERR_SHUTDOWN, NbdReply.ACK]);
});

t.test('limits: too many options, oversized option, truncated stream', async (t) => {
  const many = Array.from({ length: limits.handshakeOptionsMax + 1 }, () => encodeOption(4242));
  const o = await run([encodeClientFlags(FIXED), ...many, go('a')]);
  t.type(o.error, NbdProtocolError);
  t.equal(o.replies.length, limits.handshakeOptionsMax, 'every option up to the limit was answered');

  const header = encodeOption(NbdOption.LIST);
  header.writeUInt32BE(limits.handshakeOptionBytesMax + 1, 12);
  const big = await run([encodeClientFlags(FIXED), header]);
  t.type(big.error, NbdProtocolError, 'an option larger than the limit is not read');

  const cut = await run([encodeClientFlags(FIXED), go('a').subarray(0, 20)]);
  t.ok(cut.error !== undefined && cut.result === undefined, 'a client that goes away mid-option ends the handshake');
});

t.test('allow lists: listed exports are TLS-only, then only for listed identities; ro grants get a read-only export', async (t) => {
  const access = new ExportAccessPolicy(parseExportGrants('a:ro:psk:alice;a:rw:psk:root'));
  const alice: ClientIdentity = { kind: 'psk', identity: 'alice' };
  const names = (o: Outcome): string[] =>
    o.replies.filter((r) => r.replyType === NbdReply.SERVER).map((r) => (decodeServerPayload(r.payload) as { name: string }).name);

  const refusals: AccessRefusal[] = [];
  const plain = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.LIST), encodeOption(NbdOption.INFO, encodeInfoRequestPayload('a', [])), go(''), encodeOption(NbdOption.ABORT)], { tlsMode: 'on', access, refusals });
  t.same(names(plain), ['ro'], 'LIST without TLS leaves out the listed export');
  t.same(plain.replies.slice(-3).map((r) => r.replyType >>> 0), [NbdReply.ERR_TLS_REQD, NbdReply.ERR_TLS_REQD, NbdReply.ACK], 'INFO and GO (also of the default export) ask for TLS');
  t.same(refusals.map((r) => [r.option, r.exportName, r.identity.kind]), [['NBD_OPT_INFO', 'a', 'anonymous'], ['NBD_OPT_GO', 'a', 'anonymous']]);

  const noTls = await run([encodeClientFlags(FIXED), go('a'), encodeOption(NbdOption.ABORT)], { tlsMode: 'off', access });
  t.equal(noTls.replies[0]!.replyType >>> 0, NbdReply.ERR_POLICY, 'a server without TLS never sends TLS_REQD');

  const exportName = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.EXPORT_NAME, Buffer.from('a'))], { tlsMode: 'on', access });
  t.type(exportName.error, NbdProtocolError, 'EXPORT_NAME of a listed export without TLS ends the session');
  t.match((exportName.error as Error).message, /has an allow list/);

  const ro = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.STARTTLS)], {
    tlsMode: 'on',
    access,
    tls: { identity: alice, afterTls: [encodeOption(NbdOption.LIST), go('a')] },
  });
  t.same(names(ro), ['a', 'ro'], 'LIST after TLS shows what alice may attach');
  t.equal(ro.result?.device.name, 'a');
  t.ok((ro.result!.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0, 'an ro grant attaches read-only');
  t.equal(ro.result!.transmissionFlags & NBD_FLAG_SEND_TRIM, 0, 'and offers no TRIM');

  const rw = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.STARTTLS)], { tlsMode: 'on', access, tls: { identity: { kind: 'psk', identity: 'root' }, afterTls: [go('a')] } });
  t.equal(rw.result!.transmissionFlags & NBD_FLAG_READ_ONLY, 0, 'an rw grant attaches read-write');

  const strangers: AccessRefusal[] = [];
  for (const identity of [{ kind: 'psk', identity: 'mallory' }, ANONYMOUS] as ClientIdentity[]) {
    const o = await run([encodeClientFlags(FIXED), encodeOption(NbdOption.STARTTLS)], {
      tlsMode: 'require',
      access,
      refusals: strangers,
      tls: {
        identity,
        afterTls: [encodeOption(NbdOption.LIST), encodeOption(NbdOption.STRUCTURED_REPLY), encodeOption(NbdOption.SET_META_CONTEXT, encodeMetaContextRequestPayload('a', ['base:allocation'])), go('a'), go('ro')],
      },
    });
    t.same(names(o), ['ro'], `${identity.kind}: LIST leaves out the export it may not attach`);
    const afterList = o.replies.filter((r) => r.option !== NbdOption.LIST && r.option !== NbdOption.STARTTLS && r.option !== NbdOption.STRUCTURED_REPLY);
    t.equal(afterList[0]!.replyType >>> 0, NbdReply.ERR_POLICY, `${identity.kind}: SET_META_CONTEXT of it is refused`);
    t.equal(afterList[1]!.replyType >>> 0, NbdReply.ERR_POLICY, `${identity.kind}: GO after TLS is refused by policy, not TLS_REQD`);
    t.match(afterList[1]!.payload.toString('utf8'), /is not on the allow list of export a/);
    t.equal(o.result?.device.name, 'ro', 'the session goes on to an open export');
  }
  t.same(strangers.map((r) => [r.option, r.identity.kind]), [['NBD_OPT_SET_META_CONTEXT', 'psk'], ['NBD_OPT_GO', 'psk'], ['NBD_OPT_SET_META_CONTEXT', 'anonymous'], ['NBD_OPT_GO', 'anonymous']]);
});
