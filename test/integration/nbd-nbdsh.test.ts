// libnbd (nbdsh) driving the edge cases real clients rely on: structured
// replies off, handshake flags 0 (plain newstyle), OPT_INFO then GO, listing
// meta contexts, requests a strict client would never send (out of range,
// unknown flags, read-only export) and several connections with multi-conn.
// Python runs inside nbdsh; an assertion failure there fails the test.

import t from 'tap';
import { MemoryDevice } from '../../src/device/memory.ts';
import { StaticDeviceTable } from '../../src/device/table.ts';
import { NbdServer } from '../../src/nbd/server.ts';
import { startNode } from './helpers/launcher.ts';
import { run } from './helpers/tools.ts';

const ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

async function nbdsh(t: { equal: (...args: any[]) => unknown }, name: string, lines: string[]): Promise<string> {
  const result = await run('nbdsh', ['-c', lines.join('\n')], { env: ENV });
  t.equal(result.code, 0, `${name}${result.code === 0 ? '' : `: ${result.stderr}`}`);
  return result.stdout;
}

t.test('nbdsh edge cases against a server process', async (t) => {
  const server = await startNode({ backend: 'memory', devices: ['a:16MiB', 'b:1MiB'] });
  t.teardown(() => server.stop());
  const uri = server.uri('a');

  await nbdsh(t, 'structured replies off', [
    'h.set_request_structured_replies(False)',
    `h.connect_uri(${JSON.stringify(uri)})`,
    'assert not h.get_structured_replies_negotiated()',
    'assert not h.can_df()',
    'h.pwrite(b"x" * 5000, 1)',
    'assert h.pread(5000, 1) == b"x" * 5000',
    'h.shutdown()',
  ]);

  await nbdsh(t, 'handshake flags 0 (newstyle without fixed, EXPORT_NAME)', [
    'h.set_handshake_flags(0)',
    `h.connect_uri(${JSON.stringify(uri)})`,
    'assert h.get_protocol() == "newstyle"',
    'assert h.get_size() == 16 * 1024 * 1024',
    'assert h.pread(5000, 1) == b"x" * 5000',
    'h.shutdown()',
  ]);

  await nbdsh(t, 'OPT_INFO on one export then GO on another, LIST in opt mode', [
    'h.set_opt_mode(True)',
    `h.connect_uri(${JSON.stringify(server.uri())})`,
    'h.set_export_name("b")',
    'h.opt_info()',
    'assert h.get_size() == 1024 * 1024',
    'names = []',
    'h.opt_list(lambda name, desc: names.append(name))',
    'assert names == ["a", "b"], names',
    'ctx = []',
    'h.set_export_name("a")',
    'h.opt_list_meta_context(lambda name: ctx.append(name))',
    'assert ctx == ["base:allocation"], ctx',
    'h.add_meta_context("base:allocation")',
    'h.opt_go()',
    'assert h.get_size() == 16 * 1024 * 1024',
    'assert h.can_meta_context("base:allocation")',
    'h.shutdown()',
  ]);

  await nbdsh(t, 'unknown export: GO fails, the handshake goes on', [
    'h.set_opt_mode(True)',
    `h.connect_uri(${JSON.stringify(server.uri())})`,
    'h.set_export_name("nope")',
    'try:',
    '    h.opt_go()',
    '    assert False, "GO on a missing export succeeded"',
    'except nbd.Error:',
    '    pass',
    'h.set_export_name("b")',
    'h.opt_go()',
    'assert h.get_size() == 1024 * 1024',
    'h.shutdown()',
  ]);

  await nbdsh(t, 'bad requests get the errors the spec names', [
    'import errno',
    'h.set_strict_mode(0)',
    `h.connect_uri(${JSON.stringify(uri)})`,
    'size = h.get_size()',
    // libnbd reports the errno by name or by number depending on its version.
    'def expect(fn, code):',
    '    try:',
    '        fn()',
    '        assert False, "no error"',
    '    except nbd.Error as e:',
    '        assert e.errno in (code, errno.errorcode[code]), (e.errno, code, e.string)',
    'expect(lambda: h.pread(4096, size - 100), errno.EINVAL)',
    'expect(lambda: h.pwrite(b"z" * 4096, size - 100), errno.ENOSPC)',
    'expect(lambda: h.trim(4096, size), errno.EINVAL)',
    'expect(lambda: h.zero(4096, size - 1), errno.ENOSPC)',
    'expect(lambda: h.pread(512, 0, nbd.CMD_FLAG_REQ_ONE), errno.EINVAL)',
    'expect(lambda: h.block_status(4096, size, lambda *a: 0), errno.EINVAL)',
    'assert h.pread(3, 1) == b"xxx"',
    'h.shutdown()',
  ]);

  await nbdsh(t, 'DF, FUA, fast zero, trim, block status with REQ_ONE, cache', [
    'h.add_meta_context("base:allocation")',
    `h.connect_uri(${JSON.stringify(uri)})`,
    'h.pwrite(b"q" * 65536, 1048576, nbd.CMD_FLAG_FUA)',
    'chunks = []',
    'buf = h.pread_structured(65536, 1048576, lambda sub, off, status, err: chunks.append((off, len(sub))), nbd.CMD_FLAG_DF)',
    'assert buf == b"q" * 65536 and chunks == [(1048576, 65536)], chunks',
    'h.zero(65536, 2 * 1048576, nbd.CMD_FLAG_FAST_ZERO)',
    'h.zero(65536, 3 * 1048576, nbd.CMD_FLAG_NO_HOLE)',
    'h.trim(65536, 1048576)',
    'seen = []',
    'h.block_status(4 * 1048576, 0, lambda ctx, off, ents, err: seen.extend(ents), nbd.CMD_FLAG_REQ_ONE)',
    'assert len(seen) == 2 and seen[0] <= 4 * 1048576, seen',
    'h.cache(65536, 0)',
    'h.flush()',
    'h.shutdown()',
  ]);

  await nbdsh(t, 'multi-conn: a write on one connection is seen on another after flush', [
    `h.connect_uri(${JSON.stringify(uri)})`,
    'assert h.can_multi_conn()',
    'h2 = nbd.NBD()',
    `h2.connect_uri(${JSON.stringify(uri)})`,
    'h.pwrite(b"shared!" * 10, 8 * 1048576)',
    'h.flush()',
    'assert h2.pread(70, 8 * 1048576) == b"shared!" * 10',
    'h.shutdown()',
    'h2.shutdown()',
  ]);

  await nbdsh(t, 'many requests in flight with aio', [
    `h.connect_uri(${JSON.stringify(uri)})`,
    'bufs = [nbd.Buffer.from_bytearray(bytearray([i % 256]) * 4096) for i in range(256)]',
    'cookies = [h.aio_pwrite(bufs[i], i * 4096) for i in range(256)]',
    'while h.aio_in_flight() > 0: h.poll(-1)',
    'for c in cookies: h.aio_command_completed(c)',
    'reads = [nbd.Buffer(4096) for i in range(256)]',
    'cookies = [h.aio_pread(reads[i], i * 4096) for i in range(256)]',
    'while h.aio_in_flight() > 0: h.poll(-1)',
    'assert all(reads[i].to_bytearray() == bytearray([i % 256]) * 4096 for i in range(256))',
    'h.shutdown()',
  ]);
  t.ok(server.alive());
});

t.test('nbdsh against a read-only export: EPERM for every write kind', async (t) => {
  // Read-only exports are a device property; the command line has no flag for
  // them yet, so this one runs the server in-process (the client is still real).
  const ro = new MemoryDevice({ name: 'ro', size: 1 << 20, readOnly: true });
  const server = new NbdServer({ devices: new StaticDeviceTable([ro]) });
  const { port } = await server.listen('127.0.0.1', 0);
  t.teardown(() => server.close());
  await nbdsh(t, 'read-only export', [
    'import errno',
    'h.set_strict_mode(0)',
    `h.connect_uri("nbd://127.0.0.1:${port}/ro")`,
    'assert h.is_read_only()',
    'assert not h.can_trim() and not h.can_zero()',
    'for fn in (lambda: h.pwrite(b"a" * 512, 0), lambda: h.trim(512, 0), lambda: h.zero(512, 0)):',
    '    try:',
    '        fn()',
    '        assert False, "write to a read-only export succeeded"',
    '    except nbd.Error as e:',
    '        assert e.errno in (errno.EPERM, "EPERM"), e.errno',
    'assert h.pread(512, 0) == bytes(512)',
    'h.shutdown()',
  ]);
});
