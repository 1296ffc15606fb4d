// An in-process NbdServer over memory devices plus helpers to talk to it,
// with a raw socket when a test needs to send what no real client would.

import * as net from 'node:net';
import { MemoryDevice } from '../../../src/device/memory.ts';
import { StaticDeviceTable } from '../../../src/device/table.ts';
import { NbdClient } from '../../../src/nbd/client.ts';
import {
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeInfoRequestPayload,
  encodeOption,
} from '../../../src/nbd/codec.ts';
import { NBD_FLAG_C_FIXED_NEWSTYLE, NBD_FLAG_C_NO_ZEROES, NbdOption, NbdReply } from '../../../src/nbd/constants.ts';
import { InputQueue } from '../../../src/nbd/input-queue.ts';
import { NbdServer, type NbdServerOptions } from '../../../src/nbd/server.ts';

export interface Harness {
  server: NbdServer;
  port: number;
  devices: { a: MemoryDevice; ro: MemoryDevice; small: MemoryDevice };
  client(name?: string, options?: { structuredReplies?: boolean }): Promise<NbdClient>;
  close(): Promise<void>;
}

export async function startHarness(extra: Partial<NbdServerOptions> = {}): Promise<Harness> {
  const devices = {
    a: new MemoryDevice({ name: 'a', size: 64 << 20 }),
    ro: new MemoryDevice({ name: 'ro', size: 1 << 20, readOnly: true }),
    small: new MemoryDevice({ name: 'small', size: 4096 }),
  };
  const server = new NbdServer({ devices: new StaticDeviceTable(Object.values(devices)), ...extra });
  const { port } = await server.listen('127.0.0.1', 0);
  const clients: NbdClient[] = [];
  return {
    server,
    port,
    devices,
    async client(name = 'a', options = {}) {
      const client = await NbdClient.connect({ host: '127.0.0.1', port });
      clients.push(client);
      await client.openDevice(name, options);
      return client;
    },
    async close() {
      for (const c of clients) c.destroy();
      await server.close();
    },
  };
}

/** A raw connection that has done the handshake (GO, optionally structured replies) and now speaks bytes. */
export interface RawConnection {
  socket: net.Socket;
  input: InputQueue;
  /** Resolves when the server closed the connection. */
  closed: Promise<void>;
  isClosed(): boolean;
}

export async function rawConnect(port: number): Promise<RawConnection> {
  const socket = net.connect({ host: '127.0.0.1', port, noDelay: true });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', () => resolve());
    socket.once('error', reject);
  });
  socket.on('error', () => undefined);
  const input = new InputQueue();
  let isClosed = false;
  socket.on('data', (c: Buffer) => input.push(c));
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      isClosed = true;
      input.close();
      resolve();
    }),
  );
  return { socket, input, closed, isClosed: () => isClosed };
}

export async function rawTransmission(port: number, name = 'a', structured = false): Promise<RawConnection> {
  const conn = await rawConnect(port);
  await conn.input.read(18);
  conn.socket.write(encodeClientFlags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES));
  const option = async (code: number, payload?: Buffer): Promise<void> => {
    conn.socket.write(encodeOption(code, payload));
    for (;;) {
      const header = decodeOptionReplyHeader(await conn.input.read(20));
      await conn.input.read(header.length);
      if (header.replyType === NbdReply.ACK) return;
      if (header.replyType & 0x80000000) throw new Error(`option ${code} failed`);
    }
  };
  if (structured) await option(NbdOption.STRUCTURED_REPLY);
  await option(NbdOption.GO, encodeInfoRequestPayload(name, []));
  return conn;
}
