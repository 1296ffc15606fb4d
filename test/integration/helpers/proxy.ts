// A fault-injecting TCP proxy for peer links: tests put one in front of each
// directed link (node A dialling node B) and cut it to partition the cluster.
//
//   forward   bytes flow both ways
//   blackhole existing connections stall (nothing forwarded, nothing closed),
//             new connections are accepted and never answered: a silent
//             partition, as a dropped cable or a DROP firewall rule makes
//   reset     existing and new connections are closed at once (REJECT)
import net from 'node:net';

export type ProxyMode = 'forward' | 'blackhole' | 'reset';

interface Pair {
  client: net.Socket;
  upstream: net.Socket | undefined;
}

export class FaultProxy {
  private mode: ProxyMode = 'forward';
  private readonly pairs = new Set<Pair>();

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
    const pair: Pair = { client, upstream: undefined };
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
    upstream.on('error', () => {});
    upstream.on('close', () => pair.client.destroy());
    pair.client.pipe(upstream);
    upstream.pipe(pair.client);
  }

  set(mode: ProxyMode): void {
    this.mode = mode;
    for (const pair of [...this.pairs]) {
      if (mode === 'reset') {
        pair.client.destroy();
        pair.upstream?.destroy();
      } else if (mode === 'blackhole') {
        pair.client.unpipe();
        pair.upstream?.unpipe();
        pair.client.pause();
        pair.upstream?.pause();
      } else if (pair.upstream === undefined) {
        // Held while black-holed: a real network would now deliver the handshake.
        this.connectUpstream(pair);
        pair.client.resume();
      } else {
        pair.client.pipe(pair.upstream);
        pair.upstream.pipe(pair.client);
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
