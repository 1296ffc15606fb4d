// A TypeScript NBD client: fixed newstyle handshake (optionally over TLS),
// NBD_OPT_GO with structured replies and base:allocation, then pipelined
// requests — any number in flight, replies matched by cookie in any order.
// Our tests, the nemesis tester and the tools use it.
//
//   const client = await NbdClient.connect({ host, port });
//   await client.openDevice('a');
//   await client.write(0, data, { fua: true });
//   const back = await client.read(0, data.length);
//   await client.sync();
//   await client.close();
//
// About 500 lines: the handshake and the pipelined transmission phase of one
// client connection, the mirror of src/nbd/handshake.ts + transmission.ts.

import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import type { Extent } from '../device/block-device.ts';
import {
  BASE_ALLOCATION,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_REP_FLAG_ERROR,
  NBD_REPLY_FLAG_DONE,
  NbdCommand,
  NbdInfo,
  NbdOption,
  NbdReply,
  NbdReplyType,
  optionName,
  GREETING_BYTES,
  OPTION_REPLY_HEADER_BYTES,
} from './constants.ts';
import {
  decodeChunkPayload,
  decodeGreeting,
  decodeInfoPayload,
  decodeMetaContextPayload,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  decodeServerPayload,
  encodeClientFlags,
  encodeInfoRequestPayload,
  encodeMetaContextRequestPayload,
  encodeOption,
  encodeRequest,
  replyHeaderBytes,
} from './codec.ts';
import { NbdConnectionClosedError, NbdProtocolError, NbdRemoteError, nbdErrorName } from './errors.ts';
import { InputQueue } from './input-queue.ts';
import { connectTls, type ClientTlsOptions } from './tls.ts';

export interface NbdClientOptions {
  host: string;
  port: number;
  /** Upgrade with NBD_OPT_STARTTLS before anything else; refuse to go on without TLS. */
  tls?: ClientTlsOptions;
  /** Give up connecting after this long (default 30 s). */
  connectTimeoutMs?: number;
}

export interface ExportInfo {
  name: string;
  size: number;
  transmissionFlags: number;
  description?: string;
  blockSize?: { minimum: number; preferred: number; maximum: number };
}

export interface OpenOptions {
  /** Negotiate structured replies (default true). */
  structuredReplies?: boolean;
  /** Select base:allocation for blockStatus() (default true; needs structured replies). */
  blockStatus?: boolean;
  /** The meta context blockStatus() reports instead of base:allocation (e.g. qemu:dirty-bitmap:NAME); the export must offer it. */
  metaContext?: string;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
  /** READ: the result, filled by data chunks (holes are zeroed). */
  data: Buffer | undefined;
  extents: Extent[] | undefined;
  error: NbdRemoteError | undefined;
}

const UINT32 = 0x1_0000_0000;

export class NbdClient {
  private socket: Duplex;
  private readonly tcp: net.Socket;
  private readonly input: InputQueue;
  private idleWaiters: Array<() => void> = [];
  private hooks: { afterData: (() => void) | undefined } = { afterData: undefined };
  private phase: 'handshake' | 'transmission' | 'closed' = 'handshake';
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private corked = false;
  private closeError: Error | undefined;
  private opened: ExportInfo | undefined;
  private structured = false;
  private baseAllocationId: number | undefined;
  /** A simple READ reply whose data is still arriving. */
  private simpleRead: Pending | undefined;
  /** A structured chunk header whose payload is still arriving. */
  private chunk: { header: { flags: number; type: number; cookieLo: number; length: number } } | undefined;
  private readonly closed: Promise<void>;
  readonly tls: boolean;

  private constructor(tcp: net.Socket, socket: Duplex, input: InputQueue, tls: boolean) {
    this.tcp = tcp;
    this.socket = socket;
    this.input = input;
    this.tls = tls;
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static async connect(options: NbdClientOptions): Promise<NbdClient> {
    const tcp = await new Promise<net.Socket>((resolve, reject) => {
      const socket = net.connect({ host: options.host, port: options.port, noDelay: true });
      const timer = setTimeout(() => socket.destroy(new Error('NBD connect timed out')), options.connectTimeoutMs ?? 30_000);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeListener('error', reject);
        resolve(socket);
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    const input = new InputQueue();
    let transport: Duplex = tcp;
    // One listener feeds the queue for the client's whole life; transmission adds a parse step.
    const hooks: { afterData: (() => void) | undefined } = { afterData: undefined };
    const onData = (chunk: Buffer): void => {
      input.push(chunk);
      hooks.afterData?.();
    };
    const onClose = (): void => input.close();
    tcp.on('data', onData);
    tcp.on('close', onClose);
    tcp.on('error', () => undefined);
    try {
      const { handshakeFlags } = decodeGreeting(await input.read(GREETING_BYTES));
      if ((handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new NbdProtocolError('server does not speak fixed newstyle');
      const clientFlags = NBD_FLAG_C_FIXED_NEWSTYLE | (handshakeFlags & NBD_FLAG_NO_ZEROES ? NBD_FLAG_C_NO_ZEROES : 0);
      tcp.write(encodeClientFlags(clientFlags));
      if (options.tls !== undefined) {
        tcp.write(encodeOption(NbdOption.STARTTLS));
        const header = decodeOptionReplyHeader(await input.read(OPTION_REPLY_HEADER_BYTES));
        const payload = await input.read(header.length);
        if (header.replyType !== NbdReply.ACK) {
          throw new NbdRemoteError(header.replyType, `server refused STARTTLS: ${payload.toString('utf8')}`);
        }
        tcp.removeListener('data', onData);
        const secure = await connectTls(tcp, options.tls);
        secure.on('data', onData);
        secure.on('error', () => undefined);
        transport = secure;
      }
    } catch (error) {
      tcp.destroy();
      throw error;
    }
    const client = new NbdClient(tcp, transport, input, options.tls !== undefined);
    client.hooks = hooks;
    transport.once('close', () => client.onClose());
    return client;
  }

  /** The export opened by openDevice(). */
  get export(): ExportInfo {
    if (this.opened === undefined) throw new Error('no export is open');
    return this.opened;
  }

  get size(): number {
    return this.export.size;
  }

  get transmissionFlags(): number {
    return this.export.transmissionFlags;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  // ---------------------------------------------------------------- handshake

  private async option(option: number, payload?: Buffer): Promise<Array<{ replyType: number; payload: Buffer }>> {
    if (this.phase !== 'handshake') throw new Error('options are only possible during the handshake');
    this.socket.write(encodeOption(option, payload));
    const replies: Array<{ replyType: number; payload: Buffer }> = [];
    for (;;) {
      const header = decodeOptionReplyHeader(await this.input.read(OPTION_REPLY_HEADER_BYTES));
      if (header.option !== option) throw new NbdProtocolError(`reply to option ${header.option} while waiting for ${optionName(option)}`);
      if (header.length > 16 * 1024 * 1024) throw new NbdProtocolError('option reply too large');
      const body = await this.input.read(header.length);
      if ((header.replyType & NBD_REP_FLAG_ERROR) !== 0) {
        throw new NbdRemoteError(header.replyType >>> 0, `${optionName(option)} failed (0x${(header.replyType >>> 0).toString(16)}): ${body.toString('utf8')}`);
      }
      if (header.replyType === NbdReply.ACK) return replies;
      replies.push({ replyType: header.replyType, payload: body });
    }
  }

  /** NBD_OPT_LIST: the exports the server offers. */
  async list(): Promise<Array<{ name: string; description: string }>> {
    const replies = await this.option(NbdOption.LIST);
    return replies.map((r) => {
      const decoded = decodeServerPayload(r.payload);
      if (!decoded.ok) throw new NbdProtocolError(decoded.reason);
      return { name: decoded.name, description: decoded.description };
    });
  }

  /** NBD_OPT_INFO: details of one export without entering transmission. */
  async info(name: string): Promise<ExportInfo> {
    return this.infoOrGo(NbdOption.INFO, name);
  }

  /** Negotiates structured replies and base:allocation, then NBD_OPT_GO into transmission. */
  async openDevice(name: string, options: OpenOptions = {}): Promise<ExportInfo> {
    if (options.structuredReplies ?? true) {
      await this.option(NbdOption.STRUCTURED_REPLY);
      this.structured = true;
      if (options.blockStatus ?? true) {
        const context = options.metaContext ?? BASE_ALLOCATION;
        const replies = await this.option(NbdOption.SET_META_CONTEXT, encodeMetaContextRequestPayload(name, [context]));
        for (const r of replies) {
          const decoded = decodeMetaContextPayload(r.payload);
          if (decoded.ok && decoded.name === context) this.baseAllocationId = decoded.contextId;
        }
        if (options.metaContext !== undefined && this.baseAllocationId === undefined) throw new NbdProtocolError(`export ${name} does not offer the meta context ${context}`);
      }
    }
    const info = await this.infoOrGo(NbdOption.GO, name);
    this.opened = info;
    this.phase = 'transmission';
    this.hooks.afterData = () => this.parseReplies();
    this.parseReplies();
    return info;
  }

  private async infoOrGo(option: NbdOption.INFO | NbdOption.GO, name: string): Promise<ExportInfo> {
    const replies = await this.option(
      option,
      encodeInfoRequestPayload(name, [NbdInfo.NAME, NbdInfo.DESCRIPTION, NbdInfo.BLOCK_SIZE]),
    );
    const info: Partial<ExportInfo> = { name };
    for (const r of replies) {
      if (r.replyType !== NbdReply.INFO) continue;
      const decoded = decodeInfoPayload(r.payload);
      if (!decoded.ok) throw new NbdProtocolError(decoded.reason);
      const reply = decoded.reply;
      if ('unknown' in reply) continue;
      switch (reply.info) {
        case NbdInfo.EXPORT:
          info.size = reply.size;
          info.transmissionFlags = reply.transmissionFlags;
          break;
        case NbdInfo.NAME:
          info.name = reply.name;
          break;
        case NbdInfo.DESCRIPTION:
          info.description = reply.description;
          break;
        case NbdInfo.BLOCK_SIZE:
          info.blockSize = { minimum: reply.minimum, preferred: reply.preferred, maximum: reply.maximum };
          break;
      }
    }
    if (info.size === undefined || info.transmissionFlags === undefined) {
      throw new NbdProtocolError(`${optionName(option)} succeeded without NBD_INFO_EXPORT`);
    }
    return info as ExportInfo;
  }

  // ---------------------------------------------------------------- transmission

  read(offset: number, length: number, options: { df?: boolean } = {}): Promise<Buffer> {
    return this.request(NbdCommand.READ, options.df ? NBD_CMD_FLAG_DF : 0, offset, length) as Promise<Buffer>;
  }

  write(offset: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    return this.request(NbdCommand.WRITE, options.fua ? NBD_CMD_FLAG_FUA : 0, offset, data.length, data) as Promise<void>;
  }

  /** NBD_CMD_FLUSH: every write already acknowledged is durable when this resolves. */
  sync(): Promise<void> {
    return this.request(NbdCommand.FLUSH, 0, 0, 0) as Promise<void>;
  }

  trim(offset: number, length: number, options: { fua?: boolean } = {}): Promise<void> {
    return this.request(NbdCommand.TRIM, options.fua ? NBD_CMD_FLAG_FUA : 0, offset, length) as Promise<void>;
  }

  writeZeroes(offset: number, length: number, options: { fua?: boolean; noHole?: boolean; fast?: boolean } = {}): Promise<void> {
    const flags =
      (options.fua ? NBD_CMD_FLAG_FUA : 0) | (options.noHole ? NBD_CMD_FLAG_NO_HOLE : 0) | (options.fast ? NBD_CMD_FLAG_FAST_ZERO : 0);
    return this.request(NbdCommand.WRITE_ZEROES, flags, offset, length) as Promise<void>;
  }

  cache(offset: number, length: number): Promise<void> {
    return this.request(NbdCommand.CACHE, 0, offset, length) as Promise<void>;
  }

  /** base:allocation extents from `offset` (NBD_STATE_HOLE = 1, NBD_STATE_ZERO = 2). */
  blockStatus(offset: number, length: number, options: { reqOne?: boolean } = {}): Promise<Extent[]> {
    return this.request(NbdCommand.BLOCK_STATUS, options.reqOne ? NBD_CMD_FLAG_REQ_ONE : 0, offset, length) as Promise<Extent[]>;
  }

  /**
   * Any request, exactly as given (tests use it to send what a well-behaved
   * client would not). Resolves with the data (READ), extents (BLOCK_STATUS) or undefined.
   */
  request(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<unknown> {
    if (this.phase !== 'transmission') {
      return Promise.reject(this.closeError ?? new Error('openDevice() first'));
    }
    let cookie = this.nextCookie;
    while (this.pending.has(cookie)) cookie = (cookie + 1) % UINT32;
    this.nextCookie = (cookie + 1) % UINT32;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, {
        type,
        offset,
        length,
        resolve,
        reject,
        data: undefined,
        extents: undefined,
        error: undefined,
      });
      this.send(encodeRequest(flags, type, 0, cookie, offset, length));
      if (payload !== undefined && payload.length > 0) this.send(payload);
    });
  }

  /** NBD_CMD_DISC after in-flight requests finish (or NBD_OPT_ABORT during the handshake), then close. */
  async close(): Promise<void> {
    if (this.phase === 'handshake') {
      try {
        this.socket.write(encodeOption(NbdOption.ABORT));
        const header = decodeOptionReplyHeader(await this.input.read(OPTION_REPLY_HEADER_BYTES));
        await this.input.read(header.length);
      } catch {
        // The spec lets a server close without replying to ABORT.
      }
      this.phase = 'closed';
      this.socket.end();
    } else if (this.phase === 'transmission') {
      if (this.pending.size > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
      if (this.phase === 'transmission') {
        this.send(encodeRequest(0, NbdCommand.DISC, 0, 0, 0, 0));
        this.phase = 'closed';
        this.socket.end();
      }
    }
    const timer = setTimeout(() => this.destroy(), 10_000);
    await this.closed;
    clearTimeout(timer);
  }

  /** Hard disconnect. */
  destroy(): void {
    this.socket.destroy();
    this.tcp.destroy();
  }

  private send(buf: Buffer): void {
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(buf);
  }

  private onClose(): void {
    this.phase = 'closed';
    const error = this.closeError ?? new NbdConnectionClosedError();
    this.closeError = error;
    this.input.close(error);
    for (const p of this.pending.values()) p.reject(error);
    this.pending.clear();
    if (this.simpleRead !== undefined) this.simpleRead.reject(error);
    this.simpleRead = undefined;
    this.wakeIfIdle();
  }

  private fail(error: Error): void {
    this.closeError = error;
    this.destroy();
  }

  private parseReplies(): void {
    try {
      this.parseLoop();
    } catch (error) {
      this.fail(error as Error);
    }
    this.wakeIfIdle();
  }

  private parseLoop(): void {
    const input = this.input;
    for (;;) {
      if (this.simpleRead !== undefined) {
        const p = this.simpleRead;
        if (input.length < p.length) return;
        this.simpleRead = undefined;
        this.settle(p, input.take(p.length));
        continue;
      }
      if (this.chunk !== undefined) {
        const { header } = this.chunk;
        if (input.length < header.length) return;
        this.chunk = undefined;
        this.onChunk(header, input.take(header.length));
        continue;
      }
      if (input.length < 4) return;
      const { buf, at } = input.peek(4);
      const need = replyHeaderBytes(buf, at);
      if (input.length < need) return;
      const view = input.peek(need);
      const header = decodeReplyHeader(view.buf, view.at);
      input.skip(need);
      const p = this.pending.get(header.cookieLo);
      if (p === undefined || header.cookieHi !== 0) throw new NbdProtocolError(`reply for unknown cookie ${header.cookieHi}:${header.cookieLo}`);
      if (header.kind === 'simple') {
        if (header.error !== 0) {
          this.pending.delete(header.cookieLo);
          p.reject(new NbdRemoteError(header.error, `${nbdErrorName(header.error)}`));
        } else if (p.type === NbdCommand.READ && p.length > 0) {
          if (this.structured) throw new NbdProtocolError('simple reply to READ with structured replies');
          this.pending.delete(header.cookieLo);
          this.simpleRead = p;
        } else {
          this.pending.delete(header.cookieLo);
          this.settle(p, undefined);
        }
        continue;
      }
      if (!this.structured) throw new NbdProtocolError('structured reply that was not negotiated');
      this.chunk = { header: { flags: header.flags, type: header.type, cookieLo: header.cookieLo, length: header.length } };
    }
  }

  private onChunk(header: { flags: number; type: number; cookieLo: number; length: number }, payload: Buffer): void {
    const p = this.pending.get(header.cookieLo)!;
    const chunk = decodeChunkPayload(header.type, payload);
    switch (chunk.type) {
      case NbdReplyType.NONE:
        break;
      case NbdReplyType.OFFSET_DATA:
      case NbdReplyType.OFFSET_HOLE: {
        if (p.type !== NbdCommand.READ) throw new NbdProtocolError('content chunk for a request that is not READ');
        const length = chunk.type === NbdReplyType.OFFSET_DATA ? chunk.data.length : chunk.length;
        const start = chunk.offset - p.offset;
        if (start < 0 || start + length > p.length || length === 0) throw new NbdProtocolError('content chunk outside the request');
        p.data ??= Buffer.alloc(p.length);
        if (chunk.type === NbdReplyType.OFFSET_DATA) chunk.data.copy(p.data, start);
        else p.data.fill(0, start, start + length);
        break;
      }
      case NbdReplyType.BLOCK_STATUS:
        if (p.type !== NbdCommand.BLOCK_STATUS) throw new NbdProtocolError('block status chunk for another request');
        if (chunk.contextId === this.baseAllocationId) {
          p.extents = chunk.descriptors.map((d) => ({ length: d.length, flags: d.flags }));
        }
        break;
      default:
        p.error ??= new NbdRemoteError(chunk.error, `${nbdErrorName(chunk.error)}: ${chunk.message}`);
        break;
    }
    if ((header.flags & NBD_REPLY_FLAG_DONE) !== 0) {
      this.pending.delete(header.cookieLo);
      if (p.error !== undefined) p.reject(p.error);
      else if (p.type === NbdCommand.READ) this.settle(p, p.data ?? Buffer.alloc(p.length));
      else if (p.type === NbdCommand.BLOCK_STATUS) {
        if (p.extents === undefined) p.reject(new NbdProtocolError('block status reply without base:allocation'));
        else p.resolve(p.extents);
      } else this.settle(p, undefined);
    }
  }

  private settle(p: Pending, value: unknown): void {
    if (p.type === NbdCommand.READ) p.resolve(value ?? Buffer.alloc(0));
    else p.resolve(undefined);
  }

  private wakeIfIdle(): void {
    if (this.pending.size > 0 || this.simpleRead !== undefined) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const wake of waiters) wake();
  }
}

