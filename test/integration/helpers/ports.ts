// Free loopback ports for real processes: bind port 0, note it, close.
// The kernel may hand the same ephemeral port out again once it is closed
// (a CI run saw node1 and node3 given one peer port), so every port handed
// out in this process is remembered and never handed out twice.
import { createServer } from 'node:net';

const handedOut = new Set<number>();

async function bindAndClose(host: string): Promise<number> {
  return await new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.once('error', reject);
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** A port free now and never returned before by this process. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (;;) {
    const port = await bindAndClose(host);
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    return port;
  }
}

export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const ports: number[] = [];
  while (ports.length < n) ports.push(await freePort(host));
  return ports;
}
