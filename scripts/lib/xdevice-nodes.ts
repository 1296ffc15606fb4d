// Starts xdevice-node processes for benchmarks: one node or a loopback
// cluster, through the real binary (bin/xdevice-node.js, the command-line
// contract of DESIGN.md) or through the cluster runtime's own process entry
// (dist/cluster/main.js, the same runtime without configuration files), and
// finds the leader through the admin API.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';

export type NodeEntry = 'bin' | 'cluster-main';

export interface NodeSpec {
  id: string;
  dataDir: string;
  entry: NodeEntry;
  backend: 'replicated' | 'file';
  devices: string[];
  nbdPort: number;
  adminPort: number;
  peerPort: number;
  /** ID=HOST:PORT,... of every member, this one included; empty: a one-node cluster. */
  peers: string;
  env?: NodeJS.ProcessEnv;
  /** Options for node itself (--cpu-prof is refused in NODE_OPTIONS). */
  nodeArgs?: string[];
}

export interface BenchNode {
  spec: NodeSpec;
  child: ChildProcess;
  output(): string;
  /** SIGTERM lets the node flush a --cpu-prof profile; SIGKILL is quicker. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface NodeStatusLike {
  id: string;
  role: string;
  commit: number;
  applied: number;
}

export async function freePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < n) {
    ports.add(
      await new Promise<number>((resolve, reject) => {
        const s = createServer();
        s.once('error', reject);
        s.listen(0, '127.0.0.1', () => {
          const { port } = s.address() as { port: number };
          s.close(() => resolve(port));
        });
      }),
    );
  }
  return [...ports];
}

export function getStatus(adminPort: number): Promise<NodeStatusLike | undefined> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port: adminPort, path: '/status', timeout: 3000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          resolve(res.statusCode === 200 ? (JSON.parse(Buffer.concat(chunks).toString('utf8')) as NodeStatusLike) : undefined);
        } catch {
          resolve(undefined);
        }
      });
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(undefined));
    req.end();
  });
}

export async function waitUntil<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let secretFile: string | undefined;

/** One cluster secret file (mode 600) shared by the nodes this process starts: peers must authenticate. */
export function clusterSecretFile(): string {
  if (!secretFile) {
    const file = join(mkdtempSync(join(tmpdir(), 'xdevice-secret-')), 'cluster.secret');
    writeFileSync(file, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    secretFile = file;
  }
  return secretFile;
}

function argsFor(root: string, s: NodeSpec): string[] {
  const common = [
    `--node-id=${s.id}`,
    `--data-dir=${s.dataDir}`,
    `--nbd-listen=127.0.0.1:${s.nbdPort}`,
    `--admin-listen=127.0.0.1:${s.adminPort}`,
    `--peer-listen=127.0.0.1:${s.peerPort}`,
    ...(s.peers ? [`--peers=${s.peers}`, `--cluster-secret-file=${clusterSecretFile()}`] : []),
    ...s.devices.map((d) => `--device=${d}`),
  ];
  if (s.entry === 'cluster-main') return [join(root, 'dist/cluster/main.js'), ...common];
  return [join(root, 'bin/xdevice-node.js'), `--backend=${s.backend}`, ...common];
}

/** Starts one node and waits until its admin API answers. */
export async function startBenchNode(root: string, spec: NodeSpec): Promise<BenchNode> {
  mkdirSync(spec.dataDir, { recursive: true });
  const child = spawn(process.execPath, [...(spec.nodeArgs ?? []), ...argsFor(root, spec)], {
    cwd: root,
    env: { ...process.env, XDEVICE_LOG_FORMAT: 'json', ...spec.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (c: Buffer): void => {
    output += c.toString('utf8');
    if (output.length > 1_000_000) output = output.slice(-500_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  let dead = false;
  void exited.then(() => (dead = true));
  const node: BenchNode = {
    spec,
    child,
    output: () => output,
    async stop(signal: NodeJS.Signals = 'SIGKILL') {
      if (!dead) child.kill(signal);
      return await exited;
    },
  };
  try {
    await waitUntil(
      `${spec.id} to serve its admin API`,
      async () => {
        if (dead) throw new Error(`${spec.id} exited during start-up:\n${output.slice(-3000)}`);
        return (await getStatus(spec.adminPort)) !== undefined ? true : undefined;
      },
      60_000,
    );
  } catch (err) {
    await node.stop();
    throw err;
  }
  return node;
}

export interface BenchCluster {
  nodes: BenchNode[];
  /** Index of the node every live node agrees is the leader. */
  leader(timeoutMs?: number): Promise<number>;
  /** Waits until every node has applied the leader's commit index. */
  converged(timeoutMs?: number): Promise<void>;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Starts `size` nodes on loopback that know each other from the start. */
export async function startBenchCluster(
  root: string,
  options: { size: number; dataDir: string; entry: NodeEntry; devices: string[]; env?: NodeJS.ProcessEnv; nodeArgs?: (id: string) => string[] },
): Promise<BenchCluster> {
  const ports = await freePorts(3 * options.size);
  const ids = Array.from({ length: options.size }, (_, i) => `node${i + 1}`);
  const peers = ids.map((id, i) => `${id}=127.0.0.1:${ports[3 * i + 2]}`).join(',');
  const nodes: BenchNode[] = [];
  const cluster: BenchCluster = {
    nodes,
    async leader(timeoutMs = 60_000) {
      return await waitUntil(
        'a leader',
        async () => {
          const statuses = await Promise.all(nodes.map((n) => getStatus(n.spec.adminPort)));
          const i = statuses.findIndex((s) => s?.role === 'leader');
          return i >= 0 ? i : undefined;
        },
        timeoutMs,
      );
    },
    async converged(timeoutMs = 120_000) {
      await waitUntil(
        'every node to apply the leader’s commit index',
        async () => {
          const statuses = await Promise.all(nodes.map((n) => getStatus(n.spec.adminPort)));
          const leader = statuses.find((s) => s?.role === 'leader');
          if (!leader) return undefined;
          return statuses.every((s) => s !== undefined && s.applied >= leader.commit) ? true : undefined;
        },
        timeoutMs,
      );
    },
    async stop(signal: NodeJS.Signals = 'SIGKILL') {
      await Promise.all(nodes.map((n) => n.stop(signal)));
    },
  };
  const started = await Promise.allSettled(
    ids.map((id, i) =>
      startBenchNode(root, {
        id,
        dataDir: join(options.dataDir, id),
        entry: options.entry,
        backend: 'replicated',
        devices: options.devices,
        nbdPort: ports[3 * i]!,
        adminPort: ports[3 * i + 1]!,
        peerPort: ports[3 * i + 2]!,
        peers,
        ...(options.env ? { env: options.env } : {}),
        ...(options.nodeArgs ? { nodeArgs: options.nodeArgs(id) } : {}),
      }),
    ),
  );
  for (const r of started) if (r.status === 'fulfilled') nodes.push(r.value);
  const failure = started.find((r) => r.status === 'rejected');
  if (failure) {
    await cluster.stop();
    throw failure.reason;
  }
  return cluster;
}
