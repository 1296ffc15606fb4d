// Hostile input against a live server process: garbage, mutated handshakes
// and requests, huge lengths, too many options, bad magic. The process must
// survive, answer or disconnect as the spec says, keep its memory bounded,
// and a reference region written at the start must stay intact.
// Replay with XDEVICE_SEED=<seed>.

import { readFileSync } from 'node:fs';
import * as net from 'node:net';
import t from 'tap';
import { NbdClient } from '../../src/nbd/client.ts';
import {
  encodeClientFlags,
  encodeInfoRequestPayload,
  encodeMetaContextRequestPayload,
  encodeOption,
  encodeRequest,
} from '../../src/nbd/codec.ts';
import { NbdCommand, NbdOption } from '../../src/nbd/constants.ts';
import { makeRandom, seedFromEnv, type Random } from '../unit/helpers/nbd-random.ts';
import { startNode } from './helpers/launcher.ts';

const REFERENCE_OFFSET = 8 << 20;
const REFERENCE_BYTES = 1 << 20;

function reference(): Buffer {
  const buf = Buffer.alloc(REFERENCE_BYTES);
  for (let i = 0; i < buf.length; i++) buf[i] = (i * 131 + 7) & 0xff;
  return buf;
}

/** Sends bytes, then waits until the server closes or goes quiet; resolves with what it sent back. */
function exchange(port: number, chunks: Buffer[], quietMs = 150): Promise<{ received: number; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    let received = 0;
    let closedByServer = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ received, closedByServer });
    };
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(finish, quietMs);
    };
    socket.on('error', () => undefined);
    socket.on('data', (c: Buffer) => {
      received += c.length;
      arm();
    });
    socket.on('close', () => {
      closedByServer = true;
      finish();
    });
    socket.on('connect', () => {
      for (const c of chunks) socket.write(c);
      arm();
    });
  });
}

function handshakePrefix(random: Random): Buffer[] {
  const parts = [encodeClientFlags(3)];
  if (random.int(0, 1) === 1) parts.push(encodeOption(NbdOption.STRUCTURED_REPLY));
  parts.push(encodeOption(NbdOption.GO, encodeInfoRequestPayload(random.int(0, 1) ? 'a' : 'b', [])));
  return parts;
}

function mutate(random: Random, input: Buffer): Buffer {
  const out = Buffer.from(input);
  for (let m = random.int(1, 3); m > 0 && out.length > 0; m--) out[random.int(0, out.length - 1)] = random.int(0, 255);
  return random.int(0, 4) === 0 ? out.subarray(0, random.int(0, out.length)) : out;
}

function randomRequest(random: Random): Buffer {
  const type = random.int(0, 9);
  const flags = random.int(0, 3) === 0 ? random.int(0, 0xffff) : random.int(0, 31);
  const offset = random.int(0, 3) === 0 ? random.int(0, 2 ** 52) : random.int(0, 64 << 20);
  // Lengths stay small for WRITE so the stream stays parseable; other commands may claim anything.
  const length = type === NbdCommand.WRITE ? random.int(0, 4096) : random.int(0, 3) === 0 ? random.int(0, 0xffffffff) : random.int(0, 1 << 20);
  // Never touch the reference region: it must come out intact.
  const safe = !overlapsReference(offset, length);
  const header = encodeRequest(flags, type === NbdCommand.DISC ? NbdCommand.FLUSH : type, random.int(0, 0xffffffff), random.int(0, 0xffffffff), safe ? offset : 0, safe ? length : Math.min(length, 4096));
  return type === NbdCommand.WRITE ? Buffer.concat([header, random.bytes(length)]) : header;
}

/** [offset, offset + length) meets the reference region or the guard band before it (a TRIM claiming 4 GiB from 1 MiB covers it: seed 4194397908). */
function overlapsReference(offset: number, length: number): boolean {
  return offset < REFERENCE_OFFSET + REFERENCE_BYTES && offset + length > REFERENCE_OFFSET - (1 << 21);
}

/** A request that would change the reference region if the server took it: a mutation must not make one. */
function changesReference(request: Buffer): boolean {
  if (request.length < 28 || request.readUInt32BE(0) !== 0x25609513) return false;
  const type = request.readUInt16BE(6);
  if (type !== NbdCommand.WRITE && type !== NbdCommand.TRIM && type !== NbdCommand.WRITE_ZEROES) return false;
  return overlapsReference(Number(request.readBigUInt64BE(16)), request.readUInt32BE(24));
}

t.test('the server survives garbage, mutations and abuse; the reference region is intact', async (t) => {
  const seed = seedFromEnv();
  t.comment(`XDEVICE_SEED=${seed}`);
  const random = makeRandom(seed);
  const server = await startNode({ backend: 'memory', devices: ['a:64MiB', 'b:16MiB'] });
  t.teardown(() => server.stop());

  const writer = await NbdClient.connect({ host: server.host, port: server.nbdPort });
  await writer.openDevice('a');
  await writer.write(REFERENCE_OFFSET, reference(), { fua: true });
  await writer.close();

  // Named abuses first, then a seeded stream of random and mutated inputs.
  const cases: Array<{ name: string; chunks: Buffer[]; expectClose: boolean }> = [
    { name: 'pure garbage', chunks: [Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')], expectClose: true },
    { name: 'unknown client flags', chunks: [encodeClientFlags(0xff)], expectClose: true },
    { name: 'bad option magic', chunks: [encodeClientFlags(3), Buffer.alloc(16, 0x41)], expectClose: true },
    {
      name: 'option claiming 4 GiB of data',
      chunks: [encodeClientFlags(3), (() => { const o = encodeOption(NbdOption.LIST); o.writeUInt32BE(0xffffffff, 12); return o; })()],
      expectClose: true,
    },
    { name: 'too many options', chunks: [encodeClientFlags(3), ...Array.from({ length: 200 }, () => encodeOption(999))], expectClose: true },
    {
      name: 'meta context with 2^32-1 queries',
      chunks: [encodeClientFlags(3), encodeOption(NbdOption.STRUCTURED_REPLY), encodeOption(NbdOption.SET_META_CONTEXT, (() => { const p = encodeMetaContextRequestPayload('a', []); p.writeUInt32BE(0xffffffff, 5); return p; })())],
      expectClose: false,
    },
    { name: 'bad request magic', chunks: [...handshakePrefix(random), Buffer.alloc(28, 0x13)], expectClose: true },
    {
      name: 'WRITE claiming 4 GiB',
      chunks: [...handshakePrefix(random), encodeRequest(0, NbdCommand.WRITE, 0, 1, 0, 0xffffffff)],
      expectClose: true,
    },
    {
      name: 'READ of 4 GiB',
      chunks: [...handshakePrefix(random), encodeRequest(0, NbdCommand.READ, 0, 1, 0, 0xffffffff)],
      expectClose: false,
    },
  ];
  for (const c of cases) {
    const outcome = await exchange(server.nbdPort, c.chunks);
    t.equal(outcome.closedByServer, c.expectClose, `${c.name}: ${c.expectClose ? 'disconnected' : 'answered and kept open'}`);
    t.ok(server.alive(), `${c.name}: server alive`);
  }

  const connections = Number(process.env.XDEVICE_NBD_FUZZ_CONNECTIONS ?? 300);
  let inputs = 0;
  for (let i = 0; i < connections; i++) {
    const kind = random.int(0, 3);
    let chunks: Buffer[];
    if (kind === 0) {
      chunks = [random.bytes(random.int(1, 512))];
    } else if (kind === 1) {
      chunks = handshakePrefix(random).map((c) => (random.int(0, 2) === 0 ? mutate(random, c) : c));
    } else {
      chunks = handshakePrefix(random);
      const n = random.int(1, 200);
      for (let r = 0; r < n; r++) {
        const request = randomRequest(random);
        const mutated = kind === 3 && random.int(0, 20) === 0 ? mutate(random, request) : request;
        chunks.push(changesReference(mutated) ? request : mutated);
      }
    }
    inputs += chunks.length;
    await exchange(server.nbdPort, chunks, 30);
    if (!server.alive()) {
      t.fail(`server died on connection ${i} (XDEVICE_SEED=${seed})\n${server.output().slice(-3000)}`);
      return;
    }
  }
  t.ok(server.alive(), `server alive after ${connections} fuzzed connections (${inputs} inputs)`);

  const checker = await NbdClient.connect({ host: server.host, port: server.nbdPort });
  await checker.openDevice('a');
  t.ok((await checker.read(REFERENCE_OFFSET, REFERENCE_BYTES)).equals(reference()), 'reference region intact');
  await checker.close();
  // Devices (80 MiB at most) plus bounded buffers: a leak or an unbounded allocation would blow past this.
  const peakRssKiB = Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${server.child.pid}/status`, 'utf8'))?.[1]);
  t.ok(peakRssKiB < 768 * 1024, `peak RSS ${Math.round(peakRssKiB / 1024)} MiB stays bounded`);
  t.notMatch(server.output(), /FATAL|Uncaught|heap out of memory/i, 'no crash in the logs');
  t.equal(await server.stop(), 0, 'clean exit on SIGTERM');
});
