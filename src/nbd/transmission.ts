// The transmission phase of one connection: parse requests off the socket,
// validate each before it runs, run them concurrently against the device
// (bounded by nbdInFlightRequestsMax / nbdInFlightBytesMax), and send each
// reply as soon as its request finishes, in whatever order that is.
//
// Hot path notes: payloads inside one received chunk are passed on as slices;
// replies finishing in the same turn of the event loop are corked into one
// writev; nothing allocates per request beyond the request record, the reply
// header and the data itself.
//
// Over 500 lines: parsing, validation, the in-flight bounds and reply
// ordering of one connection share its state; split, each part would reach
// into the others'.

import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { BlockDevice, Extent } from '../device/block-device.ts';
import { limits } from '../limits.ts';
import { InFlightBudget } from './in-flight-budget.ts';
import {
  BASE_ALLOCATION_CONTEXT_ID,
  commandName,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_REPLY_FLAG_DONE,
  NbdCommand,
  NbdError,
  REQUEST_HEADER_BYTES,
} from './constants.ts';
import {
  type BlockDescriptor,
  decodeRequestHeader,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetDataHeader,
  encodeOffsetHoleChunk,
  encodeSimpleReply,
} from './codec.ts';
import { nbdErrorName, nbdErrorOf, NbdProtocolError } from './errors.ts';
import type { Negotiated } from './handshake.ts';
import type { InputQueue } from './input-queue.ts';
import { validateRequest, type ValidationContext } from './validate.ts';

/** What the server reports per request for metrics ('request' event). */
export interface RequestEvent {
  command: string;
  bytes: number;
  durationNs: number;
  error?: string;
}

export interface TransmissionOptions {
  socket: Duplex;
  /** Bytes already received after the handshake. */
  input: InputQueue;
  negotiated: Negotiated;
  logger?: Logger | undefined;
  onRequest?: ((event: RequestEvent) => void) | undefined;
  /** The server-wide budget of payload bytes in flight (one per connection if omitted). */
  budget?: InFlightBudget | undefined;
}

interface Request {
  type: number;
  flags: number;
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
  /** Payload bytes counted against nbdInFlightBytesMax. */
  weight: number;
  startNs: bigint;
}

const NO_ERROR = NbdError.OK;
/** Pieces a WRITE payload may arrive in before they are gathered into one buffer (32 MiB / 64 KiB reads = 512). */
const WRITE_SLICES_MAX = 1024;
/** After shutdown and the last reply, how long a client may take to hang up. */
const SHUTDOWN_GRACE_MS = 5_000;
const UINT32_MAX = 0xffff_ffff;

export class Transmission {
  private readonly socket: Duplex;
  private readonly input: InputQueue;
  private readonly device: BlockDevice;
  private readonly ctx: ValidationContext;
  private readonly structured: boolean;
  private readonly logger: Logger | undefined;
  private readonly onRequest: ((event: RequestEvent) => void) | undefined;

  private inFlightRequests = 0;
  private inFlightBytes = 0;
  private readonly budget: InFlightBudget;
  private readonly wake = (): void => {
    if (this.closed || !this.paused) return;
    // Another connection woken first may have spent the budget again: wait on.
    if (this.budget.spent) this.budget.onRoom(this.wake);
    else if (!this.atLimit()) this.parse();
  };
  /** A WRITE whose payload is still arriving. */
  private pending:
    | { request: Request; payload: Buffer | null; parts: Buffer[] | null; filled: number; error: NbdError }
    | undefined;
  private corked = false;
  private paused = false;
  private waitingForDrain = false;
  /** DISC received or the server is shutting down: no new requests run. */
  private draining = false;
  private shuttingDown = false;
  private closed = false;
  private ended = false;
  private readonly donePromise: Promise<void>;
  private resolveDone!: () => void;

  /** The meta contexts BLOCK_STATUS answers: base:allocation, and the export's others (with their ids). */
  private readonly baseAllocation: boolean;
  private readonly contexts: { id: number; name: string }[];

  constructor(options: TransmissionOptions) {
    this.socket = options.socket;
    this.input = options.input;
    this.device = options.negotiated.device;
    this.structured = options.negotiated.structuredReplies;
    this.ctx = {
      size: this.device.size,
      transmissionFlags: options.negotiated.transmissionFlags,
      structuredReplies: options.negotiated.structuredReplies,
      baseAllocation: options.negotiated.baseAllocation || (options.negotiated.contexts?.length ?? 0) > 0,
    };
    this.baseAllocation = options.negotiated.baseAllocation;
    this.contexts = options.negotiated.contexts ?? [];
    this.logger = options.logger;
    this.onRequest = options.onRequest;
    this.budget = options.budget ?? new InFlightBudget(Number.MAX_SAFE_INTEGER);
    this.donePromise = new Promise((resolve) => {
      this.resolveDone = resolve;
    });
  }

  /** Starts reading requests; resolves when the connection is finished. */
  run(): Promise<void> {
    const socket = this.socket;
    socket.on('data', (chunk: Buffer) => {
      this.input.push(chunk);
      this.parse();
    });
    socket.on('drain', () => {
      this.waitingForDrain = false;
      this.parse();
    });
    socket.on('close', () => this.onClosed());
    socket.on('end', () => {
      if (this.pending !== undefined) {
        // A payload cut short can never complete.
        this.socket.destroy();
        return;
      }
      // The client half-closed: finish what is in flight, then close our side.
      this.draining = true;
      this.maybeEnd();
    });
    this.parse();
    return this.donePromise;
  }

  /** Server shutdown: requests not yet started get ESHUTDOWN; in-flight ones finish; then close. */
  shutdown(): void {
    this.shuttingDown = true;
    this.parse();
    this.maybeEnd();
    // A client that ignores ESHUTDOWN and keeps the socket open is cut off.
    setTimeout(() => this.socket.destroy(), SHUTDOWN_GRACE_MS).unref();
  }

  get requestsInFlight(): number {
    return this.inFlightRequests;
  }

  // ---------------------------------------------------------------- parsing

  private parse(): void {
    try {
      this.parseLoop();
    } catch (error) {
      this.fail(error);
    }
  }

  private parseLoop(): void {
    const input = this.input;
    for (;;) {
      if (this.closed) return;
      const pending = this.pending;
      if (pending !== undefined) {
        const need = pending.request.length - pending.filled;
        if (pending.parts !== null && pending.parts.length > WRITE_SLICES_MAX) {
          // A client trickling tiny segments would make thousands of slices: gather instead.
          pending.payload = Buffer.allocUnsafe(pending.request.length);
          let at = 0;
          for (const part of pending.parts) at += part.copy(pending.payload, at);
          pending.parts = null;
        }
        let got: number;
        if (pending.parts !== null) got = input.takeSlices(need, pending.parts);
        else if (pending.payload !== null) got = input.copyInto(pending.payload, pending.filled, need);
        else got = input.skip(need);
        pending.filled += got;
        if (pending.filled < pending.request.length) {
          // The rest of the payload is still on the wire: keep reading even if
          // we paused at the limit, or this request (and the limit) never clears.
          this.resume();
          return;
        }
        this.pending = undefined;
        this.admitWrite(pending.request, pending.parts ?? pending.payload, pending.error, true);
        continue;
      }
      if (this.draining) return;
      if (this.atLimit()) {
        this.pause();
        // Woken when another connection returns bytes to the server's budget.
        if (this.budget.spent) this.budget.onRoom(this.wake);
        return;
      }
      if (input.length < REQUEST_HEADER_BYTES) {
        this.resume();
        return;
      }
      const { buf, at } = input.peek(REQUEST_HEADER_BYTES);
      const header = decodeRequestHeader(buf, at);
      input.skip(REQUEST_HEADER_BYTES);
      const { type, flags, offset, length } = header;

      if (type === NbdCommand.DISC) {
        // Anything after DISC is ignored: the client promised not to send it.
        this.draining = true;
        this.logger?.debug('nbd disconnect requested');
        this.maybeEnd();
        return;
      }

      const request: Request = {
        type,
        flags,
        cookieHi: header.cookieHi,
        cookieLo: header.cookieLo,
        offset,
        length,
        weight: type === NbdCommand.READ || type === NbdCommand.WRITE ? length : 0,
        startNs: this.onRequest === undefined ? 0n : process.hrtime.bigint(),
      };
      let error = this.shuttingDown ? NbdError.ESHUTDOWN : validateRequest(type, flags, offset, length, this.ctx);

      if (type === NbdCommand.WRITE) {
        if (length > 2 * limits.requestBytesMax) {
          // Like nbdkit: a payload this far past the limit is not worth skipping.
          throw new NbdProtocolError(`write of ${length} bytes exceeds twice the request limit`);
        }
        if (error === NO_ERROR && input.length >= length) {
          // Already here: one slice if it lies in one chunk; else, for a device
          // with writev(), the slices it arrived in (take() would gather a copy).
          this.admitWrite(request, this.device.writev !== undefined && !input.contiguous(length) ? this.takeSlices(length) : input.take(length), NO_ERROR, false);
          continue;
        }
        // The payload is always consumed, even for a request that fails, so framing holds.
        if (error === NO_ERROR && length > limits.requestBytesMax) error = NbdError.EINVAL;
        request.weight = error === NO_ERROR ? length : 0;
        // A device with writev() takes the payload as the slices it arrives in (no gathering copy).
        const sliced = error === NO_ERROR && this.device.writev !== undefined;
        this.pending = {
          request,
          payload: error === NO_ERROR && !sliced ? Buffer.allocUnsafe(length) : null,
          parts: sliced ? [] : null,
          filled: 0,
          error,
        };
        if (error === NO_ERROR) this.addBytes(length);
        continue;
      }

      this.begin(request);
      if (error !== NO_ERROR) {
        this.replyError(request, error, `${commandName(type)} refused: ${nbdErrorName(error)}`);
        continue;
      }
      this.execute(request, null);
    }
  }

  private takeSlices(length: number): Buffer[] {
    const parts: Buffer[] = [];
    this.input.takeSlices(length, parts);
    return parts;
  }

  /** A WRITE whose payload has fully arrived; `bytesCounted` when its bytes were counted at the header. */
  private admitWrite(request: Request, payload: Buffer | Buffer[] | null, error: NbdError, bytesCounted: boolean): void {
    this.inFlightRequests++;
    if (!bytesCounted) this.addBytes(request.weight);
    if (error !== NO_ERROR || payload === null) {
      const nbdError = error === NO_ERROR ? NbdError.EINVAL : error;
      this.replyError(request, nbdError, `write refused: ${nbdErrorName(nbdError)}`);
      return;
    }
    this.execute(request, payload);
  }

  private begin(request: Request): void {
    this.inFlightRequests++;
    this.addBytes(request.weight);
  }

  /** Counts payload bytes against this connection's limit and the server's budget. */
  private addBytes(bytes: number): void {
    this.inFlightBytes += bytes;
    if (bytes > 0) this.budget.take(bytes);
    else if (bytes < 0) this.budget.give(-bytes);
  }

  private atLimit(): boolean {
    return (
      this.inFlightRequests >= limits.nbdInFlightRequestsMax ||
      this.inFlightBytes >= limits.nbdInFlightBytesMax ||
      this.budget.spent ||
      this.waitingForDrain
    );
  }

  private pause(): void {
    if (!this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private resume(): void {
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  // ---------------------------------------------------------------- execution

  private execute(request: Request, payload: Buffer | Buffer[] | null): void {
    let work: Promise<void>;
    try {
      work = this.perform(request, payload);
    } catch (error) {
      work = Promise.reject(error);
    }
    work.then(
      () => this.finish(request, undefined),
      (error: unknown) => {
        const nbdError = nbdErrorOf(error, request.flags);
        if (nbdError === NbdError.EIO) this.logger?.warn({ err: error, command: commandName(request.type) }, 'nbd request failed');
        this.replyError(request, nbdError, error instanceof Error ? error.message : String(error));
      },
    );
  }

  /** Runs a validated request and sends its successful reply. */
  private async perform(request: Request, payload: Buffer | Buffer[] | null): Promise<void> {
    const device = this.device;
    const { offset, length, flags } = request;
    const fua = (flags & NBD_CMD_FLAG_FUA) !== 0;
    switch (request.type) {
      case NbdCommand.READ:
        return this.performRead(request);
      case NbdCommand.WRITE:
        if (Array.isArray(payload)) await device.writev!(offset, payload, fua ? { fua } : undefined);
        else await device.write(offset, payload!, fua ? { fua } : undefined);
        break;
      case NbdCommand.FLUSH:
        await device.flush();
        break;
      case NbdCommand.TRIM:
        if (length !== 0) await device.trim(offset, length, fua ? { fua } : undefined);
        break;
      case NbdCommand.WRITE_ZEROES:
        if (length !== 0) {
          await device.writeZeroes(offset, length, {
            fua,
            noHole: (flags & NBD_CMD_FLAG_NO_HOLE) !== 0,
            fast: (flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
          });
        }
        break;
      case NbdCommand.CACHE:
        if (device.cache !== undefined && length !== 0) await device.cache(offset, length);
        break;
      case NbdCommand.BLOCK_STATUS:
        return this.performBlockStatus(request);
    }
    this.send(encodeSimpleReply(0, request.cookieHi, request.cookieLo));
  }

  private async performRead(request: Request): Promise<void> {
    const { offset, length, cookieHi, cookieLo } = request;
    const device = this.device;
    if (!this.structured) {
      const data = length === 0 ? Buffer.alloc(0) : await device.read(offset, length);
      this.send(encodeSimpleReply(0, cookieHi, cookieLo));
      if (data.length !== 0) this.send(data);
      return;
    }
    if (length === 0) {
      this.send(encodeNoneChunk(cookieHi, cookieLo));
      return;
    }
    if ((request.flags & NBD_CMD_FLAG_DF) !== 0 || device.readSparse === undefined) {
      const data = await device.read(offset, length);
      this.send(encodeOffsetDataHeader(NBD_REPLY_FLAG_DONE, cookieHi, cookieLo, offset, data.length));
      this.send(data);
      return;
    }
    const segments = await device.readSparse(offset, length);
    // Everything is read before the first chunk goes out, so no error can follow a DONE chunk.
    for (let i = 0; i < segments.length; i++) {
      const segment = segments[i]!;
      const flags = i === segments.length - 1 ? NBD_REPLY_FLAG_DONE : 0;
      if (segment.data === null) {
        this.send(encodeOffsetHoleChunk(flags, cookieHi, cookieLo, segment.offset, segment.length));
      } else {
        this.send(encodeOffsetDataHeader(flags, cookieHi, cookieLo, segment.offset, segment.data.length));
        this.send(segment.data);
      }
    }
    if (segments.length === 0) this.send(encodeNoneChunk(cookieHi, cookieLo));
  }

  private async performBlockStatus(request: Request): Promise<void> {
    const { offset, length, cookieHi, cookieLo } = request;
    const device = this.device;
    const reqOne = (request.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
    // Every context is computed before the first chunk goes out, so no error can follow a chunk.
    const chunks: { id: number; descriptors: BlockDescriptor[] }[] = [];
    for (const c of this.contexts) {
      if (device.contextStatus === undefined) throw Object.assign(new Error(`export has no meta context ${c.name}`), { code: 'EINVAL' });
      const descriptors = toDescriptors(await device.contextStatus(c.name, offset, length), length, reqOne);
      if (descriptors.length === 0) throw Object.assign(new Error(`no ${c.name} extents at ${offset}`), { code: 'EIO' });
      chunks.push({ id: c.id, descriptors });
    }
    if (!this.baseAllocation) {
      chunks.forEach((c, i) => this.send(encodeBlockStatusChunk(i === chunks.length - 1 ? NBD_REPLY_FLAG_DONE : 0, cookieHi, cookieLo, c.id, c.descriptors)));
      return;
    }
    for (const c of chunks) this.send(encodeBlockStatusChunk(0, cookieHi, cookieLo, c.id, c.descriptors));
    let extents: Extent[];
    if (device.blockStatus !== undefined && device.capabilities.canExtents) {
      extents = await device.blockStatus(offset, length);
    } else {
      // "Allocated, contents unknown" is always a correct answer.
      extents = [{ length, flags: 0 }];
    }
    const descriptors = toDescriptors(extents, length, (request.flags & NBD_CMD_FLAG_REQ_ONE) !== 0);
    if (descriptors.length === 0) {
      throw Object.assign(new Error(`device returned no extents at ${offset}`), { code: 'EIO' });
    }
    this.send(encodeBlockStatusChunk(NBD_REPLY_FLAG_DONE, cookieHi, cookieLo, BASE_ALLOCATION_CONTEXT_ID, descriptors));
  }

  private replyError(request: Request, error: NbdError, message: string): void {
    if (this.structured) {
      this.send(encodeErrorChunk(NBD_REPLY_FLAG_DONE, request.cookieHi, request.cookieLo, error, message));
    } else {
      // A simple error reply never carries data, even for READ.
      this.send(encodeSimpleReply(error, request.cookieHi, request.cookieLo));
    }
    this.finish(request, nbdErrorName(error));
  }

  private finish(request: Request, error: string | undefined): void {
    this.inFlightRequests--;
    this.addBytes(-request.weight);
    if (this.onRequest !== undefined) {
      const event: RequestEvent = {
        command: commandName(request.type),
        bytes: request.type === NbdCommand.READ || request.type === NbdCommand.WRITE ? request.length : 0,
        durationNs: Number(process.hrtime.bigint() - request.startNs),
      };
      if (error !== undefined) event.error = error;
      this.onRequest(event);
    }
    if (this.draining || this.shuttingDown) this.maybeEnd();
    if (this.paused && !this.atLimit()) this.parse();
  }

  // ---------------------------------------------------------------- output

  private send(buf: Buffer): void {
    if (this.closed) return;
    const socket = this.socket;
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      // Replies finished by the promise jobs of this turn go out in one writev.
      process.nextTick(this.uncork);
    }
    if (!socket.write(buf)) this.waitingForDrain = true;
  }

  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  // ---------------------------------------------------------------- ending

  private maybeEnd(): void {
    if (this.ended || this.closed) return;
    if (!this.draining && !this.shuttingDown) return;
    // While shutting down the socket is still read: requests arriving now are
    // answered ESHUTDOWN by parse() (as the spec asks), and a half-received
    // payload is consumed so framing holds. Close once nothing runs.
    if (this.inFlightRequests > 0 || this.pending !== undefined) return;
    this.ended = true;
    this.draining = true;
    // end() flushes queued replies and, under TLS, sends close_notify first.
    this.socket.end();
  }

  private fail(error: unknown): void {
    if (this.closed) return;
    this.logger?.warn({ err: error }, 'nbd connection dropped (protocol violation)');
    this.socket.destroy();
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    this.budget.cancel(this.wake);
    // A WRITE whose payload never fully arrived never finishes: return its bytes.
    const pending = this.pending;
    this.pending = undefined;
    if (pending !== undefined && pending.error === NO_ERROR) this.addBytes(-pending.request.weight);
    this.input.close();
    this.resolveDone();
  }
}

/** Clips device extents to a reply the spec allows for base:allocation. */
export function toDescriptors(extents: readonly Extent[], length: number, reqOne: boolean): BlockDescriptor[] {
  const descriptors: BlockDescriptor[] = [];
  let covered = 0;
  for (const extent of extents) {
    if (covered >= length) break;
    const extentLength = Math.min(extent.length, length - covered, UINT32_MAX);
    if (extentLength <= 0) continue;
    const flags = extent.flags & 3;
    const last = descriptors[descriptors.length - 1];
    if (last !== undefined && last.flags === flags && last.length + extentLength <= UINT32_MAX) {
      last.length += extentLength;
    } else {
      if (descriptors.length >= limits.blockStatusExtentsMax) break;
      descriptors.push({ length: extentLength, flags });
    }
    covered += extentLength;
    if (reqOne) break;
  }
  if (reqOne && descriptors.length > 1) descriptors.length = 1;
  return descriptors;
}
