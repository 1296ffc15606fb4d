// One client connection: the handshake (with a deadline and bounded input),
// an in-place TLS upgrade on STARTTLS, then the transmission phase on the
// same input queue so no byte is lost between the phases.

import type { InFlightBudget } from './in-flight-budget.ts';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { DeviceTable } from '../device/block-device.ts';
import { limits } from '../limits.ts';
import { NbdProtocolError } from './errors.ts';
import { negotiate, type HandshakeIo } from './handshake.ts';
import { InputQueue } from './input-queue.ts';
import type { ServerTls, TlsMode } from './tls.ts';
import { Transmission, type RequestEvent } from './transmission.ts';

export interface ConnectionContext {
  devices: DeviceTable;
  tls: ServerTls | undefined;
  tlsMode: TlsMode;
  isShuttingDown(): boolean;
  logger: Logger | undefined;
  onRequest: ((event: RequestEvent) => void) | undefined;
  /** Payload bytes in flight across the server's connections. */
  budget?: InFlightBudget | undefined;
}

/** More than one option's worth of unread bytes during the handshake means the client is not waiting for replies. */
const HANDSHAKE_BUFFERED_BYTES_MAX = limits.handshakeOptionBytesMax + 64 * 1024;

export class NbdConnection {
  private readonly socket: Socket;
  private readonly context: ConnectionContext;
  private readonly logger: Logger | undefined;
  private transport: Duplex;
  private transmission: Transmission | undefined;
  private closed = false;
  /** The export this connection negotiated (undefined while in the handshake). */
  exportName: string | undefined;

  constructor(socket: Socket, context: ConnectionContext) {
    this.socket = socket;
    this.transport = socket;
    this.context = context;
    this.logger = context.logger?.child({ peer: `${socket.remoteAddress}:${socket.remotePort}` });
  }

  /** Serves the connection until it closes; never rejects. */
  async run(): Promise<void> {
    const socket = this.socket;
    socket.setNoDelay(true);
    socket.on('error', (error) => this.logger?.debug({ err: error }, 'nbd socket error'));
    socket.once('close', () => {
      this.closed = true;
    });
    const input = new InputQueue();
    const onData = (chunk: Buffer): void => {
      input.push(chunk);
      if (input.length > HANDSHAKE_BUFFERED_BYTES_MAX) {
        this.logger?.warn('nbd client flooded the handshake');
        this.destroy();
      }
    };
    const onClose = (): void => input.close();
    socket.on('data', onData);
    socket.on('close', onClose);
    const deadline = setTimeout(() => {
      this.logger?.warn('nbd handshake timed out');
      this.destroy();
    }, limits.handshakeTimeoutMs);

    const io: HandshakeIo = {
      read: (n) => input.read(n),
      write: (buf) => {
        if (!this.closed) this.transport.write(buf);
      },
      get buffered() {
        return input.length;
      },
      startTls: async () => {
        const tls = this.context.tls;
        if (tls === undefined) throw new NbdProtocolError('STARTTLS accepted without TLS configured');
        socket.removeListener('data', onData);
        const secure = await tls.upgrade(socket);
        secure.on('error', (error) => this.logger?.debug({ err: error }, 'nbd tls error'));
        secure.on('data', onData);
        secure.on('close', onClose);
        this.transport = secure;
      },
    };

    try {
      const negotiated = await negotiate(io, {
        devices: this.context.devices,
        tlsMode: this.context.tlsMode,
        isShuttingDown: this.context.isShuttingDown,
        logger: this.logger,
      });
      clearTimeout(deadline);
      this.transport.removeListener('data', onData);
      if (negotiated === undefined) {
        this.transport.end();
        return;
      }
      this.logger?.debug({ export: negotiated.device.name, tls: negotiated.tls }, 'nbd transmission');
      this.exportName = negotiated.device.name;
      if (this.closed) return;
      const transmission = new Transmission({
        socket: this.transport,
        input,
        negotiated,
        logger: this.logger,
        onRequest: this.context.onRequest,
        budget: this.context.budget,
      });
      this.transmission = transmission;
      if (this.context.isShuttingDown()) transmission.shutdown();
      await transmission.run();
    } catch (error) {
      clearTimeout(deadline);
      if (!this.closed) {
        if (error instanceof NbdProtocolError) this.logger?.info({ reason: error.message }, 'nbd client dropped');
        else this.logger?.debug({ err: error }, 'nbd handshake ended');
      }
      this.destroy();
    }
    if (!this.closed) await new Promise<void>((resolve) => this.socket.once('close', resolve));
  }

  /** Server shutdown: finish in-flight requests, then close; connections still negotiating are dropped. */
  shutdown(): void {
    if (this.transmission !== undefined) this.transmission.shutdown();
    else this.destroy();
  }

  destroy(): void {
    this.transport.destroy();
    this.socket.destroy();
  }
}
