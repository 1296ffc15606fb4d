// One client connection: the handshake (with a deadline and bounded input),
// an in-place TLS upgrade on STARTTLS, then the transmission phase on the
// same input queue so no byte is lost between the phases. A TLS client that
// fails verification and an attach the allow lists refuse are logged and
// recorded in the audit trail with the principal and the client's address.

import type { InFlightBudget } from './in-flight-budget.ts';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { AuditSink } from '../audit/event.ts';
import type { DeviceTable } from '../device/block-device.ts';
import { limits } from '../limits.ts';
import { formatHostPort } from '../parse.ts';
import { ANONYMOUS, describeIdentity, type ClientIdentity, type ExportAccessPolicy } from './access.ts';
import { NbdProtocolError } from './errors.ts';
import { negotiate, type AccessRefusal, type HandshakeIo } from './handshake.ts';
import { InputQueue } from './input-queue.ts';
import { TlsPeerRefused, type ServerTls, type TlsMode } from './tls.ts';
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
  access: ExportAccessPolicy;
  audit: AuditSink;
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
  /** `ip:port` of the client. */
  private readonly peer: string;
  /** What the client proved in its TLS handshake. */
  private identity: ClientIdentity = ANONYMOUS;
  /** The export this connection negotiated (undefined while in the handshake). */
  exportName: string | undefined;

  constructor(socket: Socket, context: ConnectionContext) {
    this.socket = socket;
    this.transport = socket;
    this.context = context;
    this.peer = formatHostPort({ host: socket.remoteAddress ?? 'unknown', port: socket.remotePort ?? 0 });
    this.logger = context.logger?.child({ peer: this.peer });
  }

  private refusedAttach(refusal: AccessRefusal): void {
    const principal = describeIdentity(refusal.identity);
    this.logger?.warn({ principal, export: refusal.exportName, option: refusal.option, reason: refusal.reason }, 'nbd attach refused');
    this.context.audit.record({
      // Every option refused by an allow list is a step of attaching that export.
      operation: 'nbd.attach',
      principal,
      source: this.peer,
      args: { export: refusal.exportName, option: refusal.option },
      outcome: 'refused',
      reason: refusal.reason,
      scope: 'node',
    });
  }

  private refusedTls(error: TlsPeerRefused): void {
    this.logger?.warn({ claimedSubject: error.claimedSubject, stage: error.stage, reason: error.message }, 'nbd tls client refused');
    this.context.audit.record({
      operation: 'nbd.tls',
      principal: 'anonymous',
      source: this.peer,
      args: error.claimedSubject !== undefined ? { claimedSubject: error.claimedSubject } : {},
      outcome: error.stage === 'certificate' ? 'refused' : 'failed',
      reason: error.message,
      scope: 'node',
    });
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
        let upgraded;
        try {
          upgraded = await tls.upgrade(socket);
        } catch (error) {
          if (error instanceof TlsPeerRefused) this.refusedTls(error);
          throw error;
        }
        const secure = upgraded.socket;
        secure.on('error', (error) => this.logger?.debug({ err: error }, 'nbd tls error'));
        secure.on('data', onData);
        secure.on('close', onClose);
        this.transport = secure;
        this.identity = upgraded.identity;
        return upgraded.identity;
      },
    };

    try {
      const negotiated = await negotiate(io, {
        devices: this.context.devices,
        tlsMode: this.context.tlsMode,
        isShuttingDown: this.context.isShuttingDown,
        logger: this.logger,
        access: this.context.access,
        onRefused: (refusal) => this.refusedAttach(refusal),
      });
      clearTimeout(deadline);
      this.transport.removeListener('data', onData);
      if (negotiated === undefined) {
        this.transport.end();
        return;
      }
      this.logger?.debug({ export: negotiated.device.name, tls: negotiated.tls, principal: describeIdentity(this.identity) }, 'nbd transmission');
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
