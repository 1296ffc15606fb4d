// The application's client: open a replicated device by name against the
// NBD endpoints of a cluster's members, and read, write, trim and sync it
// (DESIGN: xdevice_open_device / xdevice_write / xdevice_sync). Built on the
// TS NBD client (src/nbd/client.ts).
//
//   import { openDevice, WriteOutcomeUnknownError } from 'xdevice';
//   const dev = await openDevice('wal', { endpoints: ['10.0.0.1:10809', '10.0.0.2:10809', '10.0.0.3:10809'] });
//   await dev.write(0, record, { fua: true });   // resolves once committed on a majority
//   await dev.sync();
//   await dev.close();
//
// Any member serves any request (followers forward writes to the leader;
// reads are linearizable everywhere), so when a member is lost the device
// reconnects to the next endpoint. What it cannot know is whether a write that
// was in flight on the lost connection was committed: such a write rejects
// with WriteOutcomeUnknownError, and the caller decides (a block write is an
// overwrite, so writing the same bytes again is always safe). Reads and syncs
// in flight are retried on the new connection: a sync covers writes already
// acknowledged, and those are committed wherever the client reconnects.

import { XDeviceError } from '../errors.ts';
import { NbdClient } from '../nbd/client.ts';
import { NbdError } from '../nbd/constants.ts';
import { NbdConnectionClosedError, NbdRemoteError, nbdErrorName } from '../nbd/errors.ts';
import type { ClientTlsOptions } from '../nbd/tls.ts';
import { parseHostPort } from '../parse.ts';

export interface OpenDeviceOptions {
  /** NBD addresses (HOST:PORT) of the cluster's members; tried in order, then round robin. */
  endpoints: string[];
  /** How long to keep trying members after losing one before giving up (default 30 s). */
  reconnectTimeoutMs?: number;
  /** One connection attempt (default 5 s). */
  connectTimeoutMs?: number;
  /**
   * A request unanswered this long counts as a lost connection (a member that
   * vanished without closing its sockets). Default 60 s; 0 waits forever.
   */
  requestTimeoutMs?: number;
  tls?: ClientTlsOptions;
}

/** The errors this module throws all have one of these codes. */
export type DeviceErrorCode =
  | 'XDEVICE_ERR_UNAVAILABLE'
  | 'XDEVICE_ERR_OUTCOME_UNKNOWN'
  | 'XDEVICE_ERR_IO'
  | 'XDEVICE_ERR_OUT_OF_RANGE'
  | 'XDEVICE_ERR_CLOSED'
  | 'XDEVICE_ERR_CONFIG';

export class DeviceError extends XDeviceError {
  declare readonly code: DeviceErrorCode;
  constructor(code: DeviceErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** No member could be reached (or none serves the device) within reconnectTimeoutMs. */
export class DeviceUnavailableError extends DeviceError {
  constructor(message: string, cause?: unknown) {
    super('XDEVICE_ERR_UNAVAILABLE', message, { cause });
  }
}

/** A write, trim or zeroing was in flight when its connection was lost: it may or may not have been committed. */
export class WriteOutcomeUnknownError extends DeviceError {
  constructor(
    readonly operation: 'write' | 'trim' | 'writeZeroes',
    readonly offset: number,
    readonly length: number,
    cause: unknown,
  ) {
    super('XDEVICE_ERR_OUTCOME_UNKNOWN', `${operation} of ${length} bytes at ${offset}: the connection was lost before the answer; it may or may not be committed`, { cause });
  }
}

/** The cluster answered with an error (errno: EIO, ENOSPC, EINVAL, EPERM, ...). */
export class DeviceIoError extends DeviceError {
  constructor(
    readonly errno: string,
    message: string,
    cause?: unknown,
  ) {
    super('XDEVICE_ERR_IO', message, { cause });
  }
}

export class DeviceRangeError extends DeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_OUT_OF_RANGE', message);
  }
}

export class DeviceClosedError extends DeviceError {
  constructor() {
    super('XDEVICE_ERR_CLOSED', 'the device is closed');
  }
}

interface Endpoint {
  text: string;
  host: string;
  port: number;
}

/** A lost connection (closed, reset, timed out, or the member shutting down), as opposed to an answer. */
function isConnectionLoss(err: unknown): boolean {
  if (err instanceof NbdConnectionClosedError || err instanceof RequestTimeoutError) return true;
  if (err instanceof NbdRemoteError) return err.nbdError === NbdError.ESHUTDOWN;
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' && ['ECONNRESET', 'EPIPE', 'ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ERR_STREAM_DESTROYED'].includes(code);
}

class RequestTimeoutError extends Error {}

export class Device {
  private client: NbdClient | undefined;
  private connecting: Promise<NbdClient> | undefined;
  private next = 0;
  private closed = false;
  private current = '';
  /** Connections made after the first: a test and a dashboard can see failovers. */
  reconnects = 0;

  private constructor(
    readonly name: string,
    private readonly endpoints: Endpoint[],
    private readonly options: Required<Omit<OpenDeviceOptions, 'tls' | 'endpoints'>> & Pick<OpenDeviceOptions, 'tls'>,
    private sizeBytes: number,
  ) {}

  /** Opens `name` on the first member that serves it. */
  static async open(name: string, options: OpenDeviceOptions): Promise<Device> {
    if (options.endpoints.length === 0) throw new DeviceError('XDEVICE_ERR_CONFIG', 'at least one endpoint is required');
    const endpoints = options.endpoints.map((text) => {
      try {
        return { text, ...parseHostPort(text) };
      } catch (err) {
        throw new DeviceError('XDEVICE_ERR_CONFIG', `endpoint ${text}: ${(err as Error).message}`);
      }
    });
    const device = new Device(
      name,
      endpoints,
      {
        reconnectTimeoutMs: options.reconnectTimeoutMs ?? 30_000,
        connectTimeoutMs: options.connectTimeoutMs ?? 5_000,
        requestTimeoutMs: options.requestTimeoutMs ?? 60_000,
        ...(options.tls ? { tls: options.tls } : {}),
      },
      0,
    );
    await device.connection();
    device.reconnects = 0;
    return device;
  }

  get size(): number {
    return this.sizeBytes;
  }

  /** The member this device is talking to now (HOST:PORT), '' between connections. */
  get endpoint(): string {
    return this.current;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length);
    return this.run(undefined, offset, length, (c) => c.read(offset, length));
  }

  /** Resolves once the write is committed on a majority (with fua, also durable here before the reply). */
  async write(offset: number, data: Buffer, options: { fua?: boolean } = {}): Promise<void> {
    this.check(offset, data.length);
    return this.run('write', offset, data.length, (c) => c.write(offset, data, options));
  }

  async trim(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    return this.run('trim', offset, length, (c) => c.trim(offset, length));
  }

  async writeZeroes(offset: number, length: number): Promise<void> {
    this.check(offset, length);
    return this.run('writeZeroes', offset, length, (c) => c.writeZeroes(offset, length));
  }

  /** Every write acknowledged before this call is durable when it resolves. */
  async sync(): Promise<void> {
    if (this.closed) throw new DeviceClosedError();
    return this.run(undefined, 0, 0, (c) => c.sync());
  }

  async close(): Promise<void> {
    this.closed = true;
    const c = this.client;
    this.client = undefined;
    await c?.close().catch(() => undefined);
  }

  private check(offset: number, length: number): void {
    if (this.closed) throw new DeviceClosedError();
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new DeviceRangeError(`${length} bytes at ${offset} do not fit the ${this.sizeBytes}-byte device ${this.name}`);
    }
  }

  private async run<T>(mutation: WriteOutcomeUnknownError['operation'] | undefined, offset: number, length: number, attempt: (c: NbdClient) => Promise<T>): Promise<T> {
    for (;;) {
      if (this.closed) throw new DeviceClosedError();
      const c = await this.connection();
      try {
        return await this.timed(c, attempt(c));
      } catch (err) {
        if (!isConnectionLoss(err)) {
          if (err instanceof NbdRemoteError) throw new DeviceIoError(nbdErrorName(err.nbdError), `${mutation ?? 'request'} on ${this.name}: ${err.message}`, err);
          throw err;
        }
        this.drop(c);
        if (mutation) throw new WriteOutcomeUnknownError(mutation, offset, length, err);
        // reads and syncs: the same request on another member
      }
    }
  }

  private timed<T>(c: NbdClient, p: Promise<T>): Promise<T> {
    const ms = this.options.requestTimeoutMs;
    if (ms <= 0) return p;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new RequestTimeoutError(`no answer from ${this.current} within ${ms} ms`));
        c.destroy();
      }, ms);
      p.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e) => {
          clearTimeout(timer);
          reject(e);
        },
      );
    });
  }

  private drop(c: NbdClient): void {
    if (this.client !== c) return;
    this.client = undefined;
    this.current = '';
    c.destroy();
  }

  /** The live connection, or a new one to the next member that serves the device. */
  private connection(): Promise<NbdClient> {
    if (this.client) return Promise.resolve(this.client);
    this.connecting ??= this.connect().finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  private async connect(): Promise<NbdClient> {
    const deadline = Date.now() + this.options.reconnectTimeoutMs;
    let delayMs = 50;
    let lastError: unknown;
    for (let tries = 0; ; tries++) {
      if (this.closed) throw new DeviceClosedError();
      const ep = this.endpoints[this.next % this.endpoints.length]!;
      this.next++;
      try {
        const c = await NbdClient.connect({ host: ep.host, port: ep.port, connectTimeoutMs: this.options.connectTimeoutMs, ...(this.options.tls ? { tls: this.options.tls } : {}) });
        try {
          const info = await c.openDevice(this.name);
          // The member's word, also after a resize while we were away.
          this.sizeBytes = info.size;
        } catch (err) {
          c.destroy();
          throw err;
        }
        this.client = c;
        this.current = ep.text;
        this.reconnects++;
        return c;
      } catch (err) {
        lastError = err;
      }
      if (Date.now() >= deadline) {
        throw new DeviceUnavailableError(
          `device ${this.name}: no member of ${this.endpoints.map((e) => e.text).join(', ')} served it within ${this.options.reconnectTimeoutMs} ms (last: ${(lastError as Error)?.message})`,
          lastError,
        );
      }
      // A full round without success: back off before the next one.
      if ((tries + 1) % this.endpoints.length === 0) {
        await new Promise((r) => setTimeout(r, Math.min(delayMs, Math.max(0, deadline - Date.now()))));
        delayMs = Math.min(1000, delayMs * 2);
      }
    }
  }
}

/** Opens a replicated device by name against a list of members' NBD endpoints. */
export function openDevice(name: string, options: OpenDeviceOptions): Promise<Device> {
  return Device.open(name, options);
}
