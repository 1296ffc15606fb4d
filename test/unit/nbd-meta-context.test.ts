// An export's own meta contexts besides base:allocation (a snapshot's
// qemu:dirty-bitmap:NAME, src/replica/snapshot-export.ts): LIST by exact
// name, namespace or leaf prefix, or everything; SET by exact name only;
// BLOCK_STATUS answers each selected context with its own id (and
// base:allocation too when both are selected); an export that does not offer
// a context never gets it.
import t from 'tap';
import type { Extent } from '../../src/device/block-device.ts';
import { MemoryDevice } from '../../src/device/memory.ts';
import { StaticDeviceTable } from '../../src/device/table.ts';
import { NbdClient } from '../../src/nbd/client.ts';
import { decodeMetaContextPayload, decodeOptionReplyHeader, encodeClientFlags, encodeMetaContextRequestPayload, encodeOption } from '../../src/nbd/codec.ts';
import { NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NbdOption, NbdReply } from '../../src/nbd/constants.ts';
import { negotiate, type HandshakeIo } from '../../src/nbd/handshake.ts';
import { InputQueue } from '../../src/nbd/input-queue.ts';
import { NbdServer } from '../../src/nbd/server.ts';

const BITMAP = 'qemu:dirty-bitmap:s1';

class BitmapDevice extends MemoryDevice {
  readonly metaContexts = [BITMAP];
  async contextStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    if (context !== BITMAP) throw Object.assign(new Error('no such context'), { code: 'EINVAL' });
    // Dirty: the second 64 KiB of every 256 KiB.
    const out: Extent[] = [];
    for (let at = offset; at < offset + length; ) {
      const inUnit = at % 262144;
      const end = Math.min(offset + length, at - inUnit + (inUnit < 65536 ? 65536 : inUnit < 131072 ? 131072 : 262144));
      out.push({ length: end - at, flags: inUnit >= 65536 && inUnit < 131072 ? 1 : 0 });
      at = end;
    }
    return out;
  }
}

function devices(): StaticDeviceTable {
  return new StaticDeviceTable([new BitmapDevice({ name: 'snap', size: 1 << 20, readOnly: true }), new MemoryDevice({ name: 'plain', size: 1 << 20 })]);
}

async function metaReplies(options: Buffer[]): Promise<{ option: number; type: number; id?: number; name?: string }[]> {
  const input = new InputQueue();
  input.push(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
  input.push(encodeOption(NbdOption.STRUCTURED_REPLY));
  for (const o of options) input.push(o);
  input.close();
  const written: Buffer[] = [];
  const io: HandshakeIo = { read: (n) => input.read(n), write: (b) => void written.push(b), buffered: 0, startTls: async () => Promise.reject(new Error('no TLS')) };
  await negotiate(io, { devices: devices(), tlsMode: 'off', isShuttingDown: () => false }).catch(() => undefined);
  const out = Buffer.concat(written);
  const replies: { option: number; type: number; id?: number; name?: string }[] = [];
  for (let at = 18; out.length - at >= 20; ) {
    const h = decodeOptionReplyHeader(out.subarray(at));
    const payload = out.subarray(at + 20, at + 20 + h.length);
    const r: { option: number; type: number; id?: number; name?: string } = { option: h.option, type: h.replyType >>> 0 };
    if (h.replyType === NbdReply.META_CONTEXT) {
      const d = decodeMetaContextPayload(payload);
      if (d.ok) Object.assign(r, { id: d.contextId, name: d.name });
    }
    if (h.option !== NbdOption.STRUCTURED_REPLY) replies.push(r);
    at += 20 + h.length;
  }
  return replies;
}

t.test('LIST and SET of an export’s own contexts', async (t) => {
  const list = (name: string, queries: string[]) => encodeOption(NbdOption.LIST_META_CONTEXT, encodeMetaContextRequestPayload(name, queries));
  const set = (name: string, queries: string[]) => encodeOption(NbdOption.SET_META_CONTEXT, encodeMetaContextRequestPayload(name, queries));
  const names = (rs: { name?: string }[]) => rs.filter((r) => r.name !== undefined).map((r) => r.name);
  t.same(names(await metaReplies([list('snap', [])])), ['base:allocation', BITMAP], 'no query: every context');
  t.same(names(await metaReplies([list('snap', ['qemu:'])])), [BITMAP], 'a namespace');
  t.same(names(await metaReplies([list('snap', ['qemu:dirty-bitmap:'])])), [BITMAP], 'a leaf prefix');
  t.same(names(await metaReplies([list('snap', ['qemu:dirty-bitmap:s2'])])), [], 'another bitmap: nothing');
  t.same(names(await metaReplies([list('plain', ['qemu:'])])), [], 'an export without it');
  t.same(names(await metaReplies([set('snap', ['qemu:'])])), [], 'SET takes exact names only');
  const both = (await metaReplies([set('snap', ['base:allocation', BITMAP])])).filter((r) => r.name !== undefined);
  t.same(both.map((r) => [r.name, r.id]), [['base:allocation', 1], [BITMAP, 2]], 'SET of both: distinct ids');
});

t.test('BLOCK_STATUS over a real connection reports the selected context', async (t) => {
  const server = new NbdServer({ devices: devices() });
  const { port } = await server.listen('127.0.0.1', 0);
  t.teardown(() => server.close());
  const c = await NbdClient.connect({ host: '127.0.0.1', port });
  await c.openDevice('snap', { metaContext: BITMAP });
  t.same(await c.blockStatus(0, 524288), [
    { length: 65536, flags: 0 },
    { length: 65536, flags: 1 },
    { length: 131072, flags: 0 },
    { length: 65536, flags: 0 },
    { length: 65536, flags: 1 },
    { length: 131072, flags: 0 },
  ].reduce<{ length: number; flags: number }[]>((acc, e) => {
    const last = acc[acc.length - 1];
    if (last && last.flags === e.flags) last.length += e.length;
    else acc.push({ ...e });
    return acc;
  }, []), 'the bitmap, runs merged');
  await c.close();
  const base = await NbdClient.connect({ host: '127.0.0.1', port });
  await base.openDevice('snap');
  t.same(await base.blockStatus(0, 4096), [{ length: 4096, flags: 3 }], 'base:allocation still answers');
  await base.close();
  const none = await NbdClient.connect({ host: '127.0.0.1', port });
  await t.rejects(none.openDevice('plain', { metaContext: BITMAP }), /does not offer/, 'an export without the context refuses it');
  none.destroy();
});
