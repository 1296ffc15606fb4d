// Real replicated-node processes on loopback, for the cluster integration
// tests. By default each node runs src/cluster/main.ts under tsx; with
// XDEVICE_CLUSTER_BIN=1 it runs bin/xdevice-node.js --backend replicated
// (the same flags: the command-line contract of DESIGN.md).
//
// Optionally every directed peer link A→B goes through its own FaultProxy,
// so a test can partition any set of nodes from the rest.
import { spawn, type ChildProcess } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { NodeStatus } from '../../../src/admin/api.ts';
import { NbdClient } from '../../../src/nbd/client.ts';
import { freePorts } from './ports.ts';
import { FaultProxy, type ProxyMode } from './proxy.ts';
import { ROOT, NODE_BIN, peerAuthArgs, tempDir, waitFor } from './node-process.ts';

export interface ClusterNodeProcess {
  id: string;
  dataDir: string;
  nbdPort: number;
  adminPort: number;
  peerPort: number;
  child: ChildProcess;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  output(): string;
}

export interface ClusterOptions {
  ids?: string[];
  devices?: string[];
  /** Put a FaultProxy on every directed peer link. */
  proxied?: boolean;
  env?: NodeJS.ProcessEnv;
  logLevel?: string;
  /** Extra flags for each node (e.g. peer TLS files); without peer-auth flags, the shared secret file is used. */
  nodeArgs?: (id: string) => string[];
}

export interface AdminResponse<T = unknown> {
  status: number;
  body: T;
}

export async function admin<T = unknown>(port: number, method: string, path: string, body?: unknown, timeoutMs = 60_000): Promise<AdminResponse<T>> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  return { status: res.status, body: (text ? JSON.parse(text) : undefined) as T };
}

// Children outlive a test process that dies abruptly; kill them on any normal exit at least.
const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of liveChildren) c.kill('SIGKILL');
});

export class TestCluster {
  readonly nodes = new Map<string, ClusterNodeProcess>();
  readonly ports = new Map<string, { nbd: number; admin: number; peer: number }>();
  /** Proxy for the link from → to, keyed `${from}>${to}`. */
  readonly proxies = new Map<string, FaultProxy>();
  readonly baseDir: string;

  private constructor(
    readonly ids: string[],
    readonly options: ClusterOptions,
  ) {
    this.baseDir = tempDir('cluster');
  }

  /** Starts the founding members and waits for a leader and the devices. */
  static async start(options: ClusterOptions = {}): Promise<TestCluster> {
    const ids = options.ids ?? ['n1', 'n2', 'n3'];
    const c = new TestCluster(ids, options);
    for (const id of ids) await c.allocatePorts(id);
    if (options.proxied) {
      for (const from of ids) for (const to of ids) if (from !== to) c.proxies.set(`${from}>${to}`, await FaultProxy.start({ host: '127.0.0.1', port: c.ports.get(to)!.peer }));
    }
    await Promise.all(ids.map((id) => c.startNode(id)));
    await c.waitForLeader();
    const device = (options.devices ?? ['default:64MiB'])[0]!.split(':')[0]!;
    await waitFor(`device ${device} on every node`, async () => {
      for (const id of ids) {
        const r = await admin<{ devices: { name: string }[] }>(c.ports.get(id)!.admin, 'GET', '/devices');
        if (!r.body.devices.some((d) => d.name === device)) return false;
      }
      return true;
    });
    return c;
  }

  async allocatePorts(id: string): Promise<{ nbd: number; admin: number; peer: number }> {
    const [nbd, adminPort, peer] = await freePorts(3);
    const p = { nbd: nbd!, admin: adminPort!, peer: peer! };
    this.ports.set(id, p);
    return p;
  }

  /** The --peers value as `from` sees it (through the proxies if any). */
  peersFor(from: string, members: string[] = this.ids): string {
    return members
      .map((to) => {
        const proxy = this.proxies.get(`${from}>${to}`);
        return `${to}=${proxy ? proxy.address : `127.0.0.1:${this.ports.get(to)!.peer}`}`;
      })
      .join(',');
  }

  async startNode(id: string, opts: { join?: boolean; env?: NodeJS.ProcessEnv; members?: string[]; extraArgs?: string[] } = {}): Promise<ClusterNodeProcess> {
    const p = this.ports.get(id) ?? (await this.allocatePorts(id));
    const dataDir = join(this.baseDir, id);
    const flags = [
      '--node-id', id,
      '--data-dir', dataDir,
      '--nbd-listen', `127.0.0.1:${p.nbd}`,
      '--admin-listen', `127.0.0.1:${p.admin}`,
      '--peer-listen', `127.0.0.1:${p.peer}`,
      '--peers', this.peersFor(id, opts.members ?? this.ids),
      ...(this.options.devices ?? ['default:64MiB']).flatMap((d) => ['--device', d]),
      ...(opts.join ? ['--join'] : []),
      '--log-level', this.options.logLevel ?? 'info',
      ...peerAuthArgs(opts.extraArgs ?? this.options.nodeArgs?.(id)),
      ...(opts.extraArgs ?? this.options.nodeArgs?.(id) ?? []),
    ];
    const useBin = process.env.XDEVICE_CLUSTER_BIN === '1';
    const args = useBin
      ? [NODE_BIN, '--backend', 'replicated', ...flags.map((f) => (f === '--join' ? '--join=true' : f))]
      : ['--import=tsx', join(ROOT, 'src/cluster/main.ts'), ...flags];
    // xdevice-node refuses XDEVICE_* variables it does not know: this switch is ours.
    const env: NodeJS.ProcessEnv = { ...process.env, ...this.options.env, ...opts.env };
    delete env.XDEVICE_CLUSTER_BIN;
    const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    const keep = (chunk: Buffer): void => {
      out += chunk.toString();
      if (out.length > 4_000_000) out = out.slice(-2_000_000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    liveChildren.add(child);
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once('exit', (code, signal) => {
        liveChildren.delete(child);
        resolve({ code, signal });
      }),
    );
    const node: ClusterNodeProcess = { id, dataDir, nbdPort: p.nbd, adminPort: p.admin, peerPort: p.peer, child, exited, output: () => out };
    this.nodes.set(id, node);
    let up = false;
    const died = exited.then((e) => {
      if (!up) throw new Error(`${id} exited during startup (${e.code ?? e.signal}):\n${out.slice(-4000)}`);
    });
    await Promise.race([waitFor(`${id} to answer /status`, async () => (await admin(p.admin, 'GET', '/status', undefined, 2000)).status === 200, 60_000), died]);
    up = true;
    return node;
  }

  status(id: string): Promise<NodeStatus> {
    return admin<NodeStatus>(this.ports.get(id)!.admin, 'GET', '/status', undefined, 5000).then((r) => r.body);
  }

  /** Nodes whose process is still running. */
  live(): ClusterNodeProcess[] {
    return [...this.nodes.values()].filter((n) => n.child.exitCode === null && n.child.signalCode === null);
  }

  /** Waits until the live nodes (or `among`) agree on one leader; returns its id. */
  async waitForLeader(among?: string[], timeoutMs = 30_000): Promise<string> {
    return waitFor(
      'one leader the nodes agree on',
      async () => {
        const ids = among ?? this.live().map((n) => n.id);
        const statuses = await Promise.all(ids.map((id) => this.status(id).catch(() => undefined)));
        const leaders = new Set(statuses.map((s) => s?.leader ?? ''));
        if (leaders.size !== 1) return undefined;
        const [leader] = leaders;
        if (!leader || !ids.includes(leader)) return undefined;
        const ls = statuses[ids.indexOf(leader)];
        return ls?.role === 'leader' ? leader : undefined;
      },
      timeoutMs,
      50,
    );
  }

  async kill(id: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const n = this.nodes.get(id)!;
    if (n.child.exitCode === null && n.child.signalCode === null) n.child.kill(signal);
    return n.exited;
  }

  /** Cuts (or heals) every link between the nodes of `side` and the others. */
  partition(side: string[], mode: ProxyMode): void {
    for (const [key, proxy] of this.proxies) {
      const [from, to] = key.split('>') as [string, string];
      if (side.includes(from) !== side.includes(to)) proxy.set(mode);
    }
  }

  heal(): void {
    for (const proxy of this.proxies.values()) proxy.set('forward');
  }

  async client(id: string, device = 'default'): Promise<NbdClient> {
    const c = await NbdClient.connect({ host: '127.0.0.1', port: this.nodes.get(id)!.nbdPort, connectTimeoutMs: 5000 });
    await c.openDevice(device);
    return c;
  }

  nbdUri(id: string, device = 'default'): string {
    return `nbd://127.0.0.1:${this.nodes.get(id)!.nbdPort}/${device}`;
  }

  /** SIGTERM (clean stop) every live node. */
  async stopAll(): Promise<void> {
    await Promise.all(this.live().map((n) => this.kill(n.id, 'SIGTERM')));
  }

  async destroy(): Promise<void> {
    await Promise.all(this.live().map((n) => this.kill(n.id, 'SIGKILL')));
    for (const p of this.proxies.values()) await p.close();
    if (!process.env.XDEVICE_KEEP_TEST_DIRS) await rm(this.baseDir, { recursive: true, force: true });
  }

  /** The last lines of every node's log, for failure messages. */
  logs(lines = 40): string {
    return [...this.nodes.values()].map((n) => `--- ${n.id}\n${n.output().split('\n').slice(-lines).join('\n')}`).join('\n');
  }
}
