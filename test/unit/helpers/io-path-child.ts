// A child for native-uring.test.ts: the I/O path is chosen when the addon
// loads, so refusals and resource limits are tried in processes of their own.
//   io-path-child.ts roundtrip DIR   one write + fdatasync + read; prints ioPath() and the outcome
//   io-path-child.ts fsize DIR       run under `ulimit -f 64` (64 KiB): a write across the limit
//                                    comes back short from the kernel, its rest fails EFBIG
import { join } from 'node:path';
import * as native from '../../../src/native.ts';

const [mode, dir] = process.argv.slice(2);
const outcome = (p: Promise<unknown>) =>
  p.then(
    (v) => ({ ok: true, value: v }),
    (e: unknown) => ({ ok: false, code: (e as { code?: string }).code, syscall: (e as { syscall?: string }).syscall }),
  );

if (mode === 'roundtrip') {
  const f = await native.openFile(join(dir!, 'roundtrip'), { create: true });
  const written = await native.pwrite(f.fd, Buffer.from('round trip'), 0);
  await native.fdatasync(f.fd);
  const back = Buffer.alloc(10);
  await native.pread(f.fd, back, 0);
  await native.closeFile(f.fd);
  console.log(JSON.stringify({ info: native.ioPath(), written, back: back.toString() }));
} else if (mode === 'fsize') {
  // Crossing the limit raises SIGXFSZ, whose default action kills: handled, the write gets EFBIG.
  process.on('SIGXFSZ', () => undefined);
  const f = await native.openFile(join(dir!, 'limited'), { create: true });
  await native.pwrite(f.fd, Buffer.alloc(60 * 1024, 1), 0);
  // Issued together: on uring a linked pair, and the write crosses the 64 KiB limit.
  const write = outcome(native.pwrite(f.fd, Buffer.alloc(8 * 1024, 2), 60 * 1024));
  const sync = outcome(native.fdatasync(f.fd));
  const st = await native.fstat(f.fd);
  const tail = Buffer.alloc(8 * 1024);
  const read = await native.pread(f.fd, tail, 60 * 1024);
  await native.closeFile(f.fd);
  console.log(JSON.stringify({ info: native.ioPath(), write: await write, sync: await sync, size: st.size, read, tailByte: tail[0] }));
} else {
  throw new Error(`unknown mode ${mode}`);
}
