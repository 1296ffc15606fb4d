// The NBD server: accepts TCP connections, runs each through the handshake
// and the transmission phase against a DeviceTable, and reports every request
// as a 'request' event ({command, bytes, durationNs, error?}) for metrics.

import { InFlightBudget } from './in-flight-budget.ts';
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import type { Logger } from 'pino';
import type { DeviceTable } from '../device/block-device.ts';
import { limits } from '../limits.ts';
import { NbdConnection } from './connection.ts';
import { ServerTls, type NbdTlsOptions } from './tls.ts';
import type { RequestEvent } from './transmission.ts';
import type { AuditSink } from '../audit/event.ts';

export type { RequestEvent } from './transmission.ts';

export interface NbdServerOptions {
  devices: DeviceTable;
  tls?: NbdTlsOptions;
  logger?: Logger;
  /** Overrides limits.nbdInFlightBytesTotalMax (tests). */
  inFlightBytesTotalMax?: number;
  audit?: AuditSink;
}

export class NbdServer extends EventEmitter {
  /** Payload bytes in flight across every connection (limits.nbdInFlightBytesTotalMax). */
  readonly budget: InFlightBudget;
  private readonly devices: DeviceTable;
  private readonly tls: ServerTls | undefined;
  private readonly logger: Logger | undefined;
  private readonly connections = new Set<NbdConnection>();
  private readonly running = new Set<Promise<void>>();
  private server: net.Server | undefined;
  private shuttingDown = false;

  constructor(options: NbdServerOptions) {
    super();
    this.budget = new InFlightBudget(options.inFlightBytesTotalMax);
    this.devices = options.devices;
    this.logger = options.logger;
    // Certificate and key files are read here so a bad path fails at startup, not at the first STARTTLS.
    this.tls = options.tls !== undefined && options.tls.mode !== 'off' ? new ServerTls(options.tls) : undefined;
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Connections in the transmission phase on export `name`. */
  clients(name: string): number {
    let n = 0;
    for (const c of this.connections) if (c.exportName === name) n++;
    return n;
  }

  /**
   * Closes every connection on export `name` (in-flight requests finish,
   * later ones get ESHUTDOWN): before an operator-forced delete or shrink.
   * Resolves with how many there were once they are closed.
   */
  async disconnect(name: string): Promise<number> {
    const doomed = [...this.connections].filter((c) => c.exportName === name);
    for (const c of doomed) c.shutdown();
    const deadline = Date.now() + 5_000;
    while (doomed.some((c) => this.connections.has(c)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const c of doomed) if (this.connections.has(c)) c.destroy();
    return doomed.length;
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    server.maxConnections = limits.nbdConnectionsMax;
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.removeListener('error', reject);
        server.on('error', (error) => this.logger?.error({ err: error }, 'nbd listener error'));
        const address = server.address() as net.AddressInfo;
        this.logger?.info({ host: address.address, port: address.port }, 'nbd listening');
        resolve({ host: address.address, port: address.port });
      });
    });
  }

  /** Stops accepting, lets in-flight requests finish, and closes every connection. */
  async close(): Promise<void> {
    this.shuttingDown = true;
    const server = this.server;
    const listening = server !== undefined && server.listening
      ? new Promise<void>((resolve) => server.close(() => resolve()))
      : Promise.resolve();
    for (const connection of this.connections) connection.shutdown();
    await Promise.all([listening, ...this.running]);
  }

  private accept(socket: net.Socket): void {
    if (this.shuttingDown) {
      socket.destroy();
      return;
    }
    const onRequest = (event: RequestEvent): void => {
      this.emit('request', event);
    };
    const connection = new NbdConnection(socket, {
      devices: this.devices,
      tls: this.tls,
      tlsMode: this.tls?.mode ?? 'off',
      isShuttingDown: () => this.shuttingDown,
      logger: this.logger,
      // Timing every request costs a clock read; only pay for it when someone listens.
      onRequest: this.listenerCount('request') > 0 ? onRequest : undefined,
      budget: this.budget,
    });
    this.connections.add(connection);
    const done = connection.run().finally(() => {
      this.connections.delete(connection);
      this.running.delete(done);
    });
    this.running.add(done);
  }
}
