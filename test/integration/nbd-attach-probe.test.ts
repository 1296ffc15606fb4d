// xdevice-nbd-attach on this host (its kernel has no nbd module, so nothing is
// attached here; test/integration/reality-kernel.test.ts attaches in a VM):
//   - --probe runs the real handshake against a node: size, flags, block size,
//     several connections only with CAN_MULTI_CONN, an unknown export refused
//     with the server's message;
//   - against hostile servers (wrong magic, no FIXED_NEWSTYLE, an oversized or
//     truncated reply, a reply to another option, a closed connection) it
//     fails cleanly with a reason, never hangs or crashes;
//   - attaching or --status on a kernel without the nbd family says so (exit 5);
//   - usage errors exit 2.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { startNode } from './helpers/launcher.ts';
import { ROOT } from './helpers/tools.ts';

const BIN = join(ROOT, 'build/Release/xdevice-nbd-attach');

/** Runs the attacher without blocking the event loop (the hostile servers live in this process). */
function attach(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; signal: NodeJS.Signals | null }> {
  return new Promise((resolve) => {
    const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code, signal) => resolve({ code, stdout, stderr, signal }));
  });
}

t.test('--probe against a real node', async (t) => {
  const node = await startNode({ devices: ['default:8MiB'] });
  t.teardown(() => node.stop());
  const ep = `127.0.0.1:${node.nbdPort}`;
  const ok = await attach(['--probe', '--export', 'default', '--endpoint', ep, '--connections', '4']);
  t.equal(ok.code, 0, ok.stderr);
  const m = /export "default" size (\d+) block (\d+) flags 0x([0-9a-f]+) connections (\d+)/.exec(ok.stdout);
  t.ok(m, ok.stdout);
  t.equal(Number(m?.[1]), 8 << 20, 'the size from NBD_INFO_EXPORT');
  t.equal(Number(m?.[2]), 4096, 'the block size the kernel would get');
  const flags = parseInt(m?.[3] ?? '0', 16);
  t.ok(flags & 0x1 && flags & 0x4 && flags & 0x100, 'HAS_FLAGS, SEND_FLUSH, CAN_MULTI_CONN');
  t.equal(Number(m?.[4]), 4, 'CAN_MULTI_CONN: four connections');

  const missing = await attach(['--probe', '--export', 'nope', '--endpoint', ep]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /server refused export "nope" \(error 0x80000006: .*nope/);

  const refused = await attach(['--probe', '--export', 'default', '--endpoint', '127.0.0.1:1']);
  t.equal(refused.code, 1);
  t.match(refused.stderr, /connect 127\.0\.0\.1:1: Connection refused/);
});

/** A server that answers every connection with `reply(socket, clientBytes)`. */
async function hostile(t: Test, reply: (s: Socket, got: Buffer) => void): Promise<string> {
  const server = createServer((s) => {
    let got = Buffer.alloc(0);
    s.on('error', () => {});
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      reply(s, got);
    });
    reply(s, got);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  const addr = server.address();
  if (!addr || typeof addr === 'string') throw new Error('no address');
  return `127.0.0.1:${addr.port}`;
}

const be16 = (v: number) => Buffer.from([v >> 8, v & 0xff]);
const be32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
const greeting = (flags = 3) => Buffer.concat([Buffer.from('NBDMAGIC'), Buffer.from('IHAVEOPT'), be16(flags)]);
const optReply = (opt: number, type: number, payload: Buffer, len = payload.length) =>
  Buffer.concat([Buffer.from('0003e889045565a9', 'hex'), be32(opt), be32(type), be32(len), payload]);

t.test('hostile servers: clean failures with a reason', async (t) => {
  // Each server sends its greeting at once, then its answer once the client has sent
  // its flags and NBD_OPT_GO (4 + 16 + 4 + name + 2 + 4 bytes for "default").
  const afterGo = (answer: Buffer) => (s: Socket, got: Buffer) => {
    if (got.length === 0) s.write(greeting());
    else if (got.length >= 4 + 16 + 4 + 7 + 6 && !s.writableEnded) s.end(answer);
  };
  const exportInfo = Buffer.concat([be16(0), Buffer.from('0000000000800000', 'hex'), be16(0x101)]);
  const cases: Array<[string, (s: Socket, got: Buffer) => void, RegExp]> = [
    ['wrong magic', (s, got) => got.length === 0 && s.end(Buffer.concat([Buffer.from('NBDMAGIX'), Buffer.from('IHAVEOPT'), be16(3)])), /greeting: bad magic/],
    ['oldstyle-less newstyle (no FIXED_NEWSTYLE)', (s, got) => got.length === 0 && s.end(greeting(0)), /greeting: protocol violation/],
    ['closes after the greeting', (s, got) => (got.length === 0 ? s.write(greeting()) : s.destroy()), /reading an option reply: Connection reset/],
    ['an oversized reply', afterGo(optReply(7, 3, Buffer.alloc(0), 0x7fffffff)), /option reply: bad length/],
    ['a reply to another option', afterGo(optReply(1, 1, Buffer.alloc(0))), /option reply: protocol violation/],
    ['a truncated NBD_INFO_EXPORT', afterGo(optReply(7, 3, exportInfo.subarray(0, 11))), /NBD_REP_INFO: truncated/],
    ['a payload cut short', afterGo(optReply(7, 3, exportInfo.subarray(0, 6), 12)), /reading an option reply payload/],
    ['an ACK without NBD_INFO_EXPORT', afterGo(optReply(7, 1, Buffer.alloc(0))), /not found/],
    ['an export without HAS_FLAGS', afterGo(Buffer.concat([optReply(7, 3, Buffer.concat([exportInfo.subarray(0, 10), be16(0)])), optReply(7, 1, Buffer.alloc(0))])), /protocol violation/],
    ['an error reply with unprintable text', afterGo(optReply(7, 0x80000001, Buffer.from('bad\x00\x1b[31m'))), /server refused export "default" \(error 0x80000001: bad\?\?\[31m\)/],
  ];
  for (const [name, reply, want] of cases) {
    const ep = await hostile(t, reply);
    const r = await attach(['--probe', '--export', 'default', '--endpoint', ep]);
    t.equal(r.code, 1, `${name}: exit 1 (${r.signal ?? ''} ${r.stderr})`);
    t.match(r.stderr, want, `${name}: ${r.stderr.trim()}`);
  }
  // A server that accepts and says nothing: the handshake gives up (10 s) and says why.
  const silent = await hostile(t, () => {});
  const quiet = await attach(['--probe', '--export', 'default', '--endpoint', silent]);
  t.equal(quiet.code, 1);
  t.match(quiet.stderr, /reading the greeting: Connection timed out/);
  // A valid one, for contrast: the same server code path succeeds.
  const good = await hostile(t, afterGo(Buffer.concat([optReply(7, 3, exportInfo), optReply(7, 1, Buffer.alloc(0))])));
  const r = await attach(['--probe', '--export', 'default', '--endpoint', good]);
  t.equal(r.code, 0, r.stderr);
  t.match(r.stdout, /size 8388608 block 4096 flags 0x101 connections 1/);
  const multi = await attach(['--probe', '--export', 'default', '--endpoint', good, '--connections', '3']);
  t.match(multi.stdout, /flags 0x101 connections 3/, 'CAN_MULTI_CONN: three');
  // Without CAN_MULTI_CONN one connection only, whatever was asked.
  const single = await hostile(t, afterGo(Buffer.concat([optReply(7, 3, Buffer.concat([exportInfo.subarray(0, 10), be16(0x1)])), optReply(7, 1, Buffer.alloc(0))])));
  const one = await attach(['--probe', '--export', 'default', '--endpoint', single, '--connections', '3']);
  t.equal(one.code, 0, one.stderr);
  t.match(one.stdout, /flags 0x1 connections 1/);
  t.match(one.stderr, /does not set NBD_FLAG_CAN_MULTI_CONN: using 1 connection/);
});

t.test('no nbd in this kernel, and usage errors', async (t) => {
  const a = await attach(['--device', '/dev/nbd0', '--export', 'default', '--endpoint', '127.0.0.1:1']);
  t.equal(a.code, 5, a.stderr);
  t.match(a.stderr, /no "nbd" generic-netlink family: load the nbd module/);
  t.equal((await attach(['--status', '/dev/nbd0'])).code, 5);
  t.equal((await attach(['--disconnect', '/dev/nbd0'])).code, 5);
  for (const bad of [[], ['--device', '/dev/sda', '--export', 'x', '--endpoint', '127.0.0.1:1'], ['--device', '0', '--export', 'x', '--endpoint', 'localhost:1'], ['--device', '0', '--export', 'x', '--endpoint', '127.0.0.1:99999'], ['--device', '0', '--export', 'x', '--endpoint', '127.0.0.1:1', '--connections', '17'], ['--device', '0', '--export', 'x']]) {
    const r = await attach(bad);
    t.equal(r.code, 2, `usage error: ${bad.join(' ')}`);
  }
  t.match((await attach(['--help'])).stdout, /dead-conn-timeout/);
});
