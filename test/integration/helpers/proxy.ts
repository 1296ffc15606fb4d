// A fault-injecting TCP proxy for peer links: tests put one in front of each
// directed link (node A dialling node B) and cut it to partition the cluster.
//
//   forward   bytes flow both ways
//   blackhole existing connections stall (nothing forwarded, nothing closed),
//             new connections are accepted and never answered: a silent
//             partition, as a dropped cable or a DROP firewall rule makes
//   reset     existing and new connections are closed at once (REJECT)
//
// Independently of the mode, `delayMs` holds every chunk back that long (a
// slow link), in order. `tap`, when set, sees every chunk forwarded, by
// connection and direction (a test greps a link's bytes).
import net from 'node:net';
import { Transform } from 'node:stream';

export type ProxyMode = 'forward' | 'blackhole' | 'reset';

interface Pair {
  client: net.Socket;
  upstream: net.Socket | undefined;
  /** client → upstream and upstream → client, each through a delaying stage. */
  up: Transform | undefined;
  down: Transform | undefined;
}

export class FaultProxy {
  private mode: ProxyMode = 'forward';
  private readonly pairs = new Set<Pair>();
  /** Milliseconds every chunk waits in each direction (0: none). */
  delayMs = 0;
  /** Called with every chunk forwarded: its connection (a number per accepted connection) and direction (up: dialler to target). */
  tap: ((connection: number, direction: 'up' | 'down', chunk: Buffer) => void) | undefined;
  private connections = 0;

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
    readonly target: { host: string; port: number },
  ) {}

  static async start(target: { host: string; port: number }, listenPort = 0): Promise<FaultProxy> {
    let proxy: FaultProxy | undefined;
    const server = net.createServer((client) => proxy!.accept(client));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(listenPort, '127.0.0.1', () => resolve());
    });
    proxy = new FaultProxy(server, (server.address() as net.AddressInfo).port, target);
    return proxy;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  private accept(client: net.Socket): void {
    client.on('error', () => {});
    if (this.mode === 'reset') {
      client.destroy();
      return;
    }
    const pair: Pair = { client, upstream: undefined, up: undefined, down: undefined };
    this.pairs.add(pair);
    client.on('close', () => {
      this.pairs.delete(pair);
      pair.upstream?.destroy();
    });
    if (this.mode === 'blackhole') {
      client.pause();
      return;
    }
    this.connectUpstream(pair);
  }

  private connectUpstream(pair: Pair): void {
    const upstream = net.connect(this.target.port, this.target.host);
    pair.upstream = upstream;
    const connection = ++this.connections;
    pair.up = this.delayer(connection, 'up');
    pair.down = this.delayer(connection, 'down');
    upstream.on('error', () => {});
    upstream.on('close', () => pair.client.destroy());
    pair.client.pipe(pair.up).pipe(upstream);
    upstream.pipe(pair.down).pipe(pair.client);
  }

  private delayer(connection: number, direction: 'up' | 'down'): Transform {
    return new Transform({
      transform: (chunk: Buffer, _encoding, done) => {
        this.tap?.(connection, direction, chunk);
        if (this.delayMs <= 0) done(null, chunk);
        else setTimeout(() => done(null, chunk), this.delayMs);
      },
    });
  }

  set(mode: ProxyMode): void {
    // Re-piping a link that already flows would deliver every chunk twice.
    if (mode === this.mode) return;
    this.mode = mode;
    for (const pair of [...this.pairs]) {
      if (mode === 'reset') {
        pair.client.destroy();
        pair.upstream?.destroy();
      } else if (mode === 'blackhole') {
        if (pair.up) pair.client.unpipe(pair.up);
        if (pair.down) pair.upstream?.unpipe(pair.down);
        pair.client.pause();
        pair.upstream?.pause();
      } else if (pair.upstream === undefined) {
        // Held while black-holed: a real network would now deliver the handshake.
        this.connectUpstream(pair);
        pair.client.resume();
      } else {
        pair.client.pipe(pair.up!);
        pair.upstream.pipe(pair.down!);
        pair.client.resume();
        pair.upstream.resume();
      }
    }
  }

  async close(): Promise<void> {
    for (const pair of this.pairs) {
      pair.client.destroy();
      pair.upstream?.destroy();
    }
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
