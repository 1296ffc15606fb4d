// The one launcher of xdevice-node processes: a single node (any backend) or
// an N-node cluster on loopback, for the integration tests and the benchmark
// scripts alike. It lives with the tests' helpers because tests are its main
// users and must not depend on bench code; scripts/ imports it from here.
//
//   const node = await startNode({ devices: ['default:64MiB'] });      // ready to serve
//   const c = await Cluster.start({ size: 3, proxied: true });         // a leader, devices on every node
//   await c.kill(1); await c.startNode(1);                             // SIGKILL, restart on the same data dir
//   c.partition([[0], [1, 2]]); c.heal(); c.setDiskFault(2, { delayUs: 5000 });
//
// Nodes get free 127.0.0.1 ports, a data directory from tempDir() (removed
// when the test process exits cleanly), and peer authentication through one
// shared secret file (mode 600) unless the caller passes its own peer-auth
// flags. Their output is kept for failure messages (`output()`, `logs()`).
// Admin calls go through the product's client (src/cli/admin-client.ts).
// About 500 lines on purpose: one node and a cluster of them share the
// command, peer authentication and readiness, so they are one module.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { AdminClient } from '../../../src/cli/admin-client.ts';
import type { NodeStatus } from '../../../src/admin/api.ts';
import { NbdClient } from '../../../src/nbd/client.ts';
import { freePorts } from './ports.ts';
import { FaultProxy, type ProxyMode } from './proxy.ts';
import { ROOT, tempDir, waitFor } from './tools.ts';

/** Which program runs the node: the product binary, or the replicated runtime's own entry (benchmarks, peer-startup). */
/** 'bin': the installed entry (bin/xdevice-node.js over dist/); 'source': src/node/main.ts under tsx. */
export type NodeEntry = 'bin' | 'source';

/**
 * The one place that says how a node process starts: the arguments for
 * `process.execPath`. `nodeOptions` are Node's own (--cpu-prof, refused in NODE_OPTIONS).
 */
export function nodeCommand(flags: readonly string[], options: { entry?: NodeEntry | undefined; nodeOptions?: readonly string[] | undefined } = {}): string[] {
  const pre = [...nodeV8Flags(), ...(options.nodeOptions ?? [])];
  if (options.entry === 'source') return [...pre, '--import=tsx', join(ROOT, 'src/node/main.ts'), ...flags];
  return [...pre, join(ROOT, 'bin/xdevice-node.js'), ...flags];
}

/**
 * The V8 flags the product runs its node with: those on bin/xdevice-node.js's
 * interpreter line (`#!/usr/bin/env -S node FLAGS`), so tests and benchmarks
 * run what systemd and `npm start` run. XDEVICE_NODE_V8_FLAGS replaces them
 * (benchmarks compare; empty: none).
 */
export function nodeV8Flags(env: NodeJS.ProcessEnv = process.env): string[] {
  const override = env.XDEVICE_NODE_V8_FLAGS;
  if (override !== undefined) return override.split(/\s+/).filter((f) => f !== '');
  return interpreterFlags(readFileSync(join(ROOT, 'bin/xdevice-node.js'), 'utf8'));
}

/** A node's environment: without the launcher's own key, which the node refuses as unknown (it checks every XDEVICE_ key). */
function nodeEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const { XDEVICE_NODE_V8_FLAGS: _launcherOnly, ...rest } = env;
  return rest;
}

/** The flags after `node` on a script's `#!/usr/bin/env -S node ...` line. */
export function interpreterFlags(script: string): string[] {
  const first = script.slice(0, script.indexOf('\n') >>> 0);
  const m = /^#!\S*env(?: -S)? node((?: \S+)*)\s*$/.exec(first);
  if (!m) throw new Error(`bin/xdevice-node.js: interpreter line ${JSON.stringify(first)} is not "#!/usr/bin/env [-S] node [FLAGS]"`);
  return m[1]!.split(' ').filter((f) => f !== '');
}

let secretFile: string | undefined;

/** The cluster secret file (mode 600, 256 random bits) every node started by this process shares. */
export function clusterSecretFile(): string {
  if (!secretFile) {
    const file = join(tempDir('secret'), 'cluster.secret');
    writeFileSync(file, randomBytes(32).toString('hex') + '\n', { mode: 0o600 });
    secretFile = file;
  }
  return secretFile;
}

const PEER_AUTH_FLAG = /^--(cluster-secret-file|peer-tls-cert|insecure-peers|cluster-secret)\b/;

/** The peer-authentication flags a node needs unless the caller chose its own. */
export function peerAuthArgs(extraArgs: readonly string[] = []): string[] {
  return extraArgs.some((a) => PEER_AUTH_FLAG.test(a)) ? [] : [`--cluster-secret-file=${clusterSecretFile()}`];
}

export interface AdminReply<T> {
  status: number;
  body: T;
}

/**
 * One admin API call to 127.0.0.1:port through the product's AdminClient,
 * whatever the status: JSON out (a string body is sent as is), JSON or text back.
 */
export async function adminApi<T = any>(port: number, method: string, path: string, body?: unknown, options: { token?: string; timeoutMs?: number } = {}): Promise<AdminReply<T>> {
  const client = new AdminClient([`127.0.0.1:${port}`], options.token ?? '', options.timeoutMs ?? 30_000);
  const endpoint = client.endpoints[0]!;
  const res = typeof body === 'string' ? await client.callRaw<T>(endpoint, method, path, body) : await client.call<T>(endpoint, method, path, body);
  return { status: res.status, body: res.body };
}

export type Exit = { code: number | null; signal: NodeJS.Signals | null };

export interface NodeProcess {
  id: string;
  child: ChildProcess;
  dataDir: string;
  host: string;
  nbdPort: number;
  adminPort: number;
  peerPort: number;
  /** The arguments after process.execPath. */
  args: string[];
  /** stdout and stderr so far (the node's logs). */
  output(): string;
  alive(): boolean;
  exited: Promise<Exit>;
  /** `nbd://127.0.0.1:PORT/device`. */
  uri(device?: string): string;
  kill(signal?: NodeJS.Signals): Promise<Exit>;
  /** SIGTERM, SIGKILL after 15 s; the exit code. */
  stop(): Promise<number | null>;
  api<T = any>(method: string, path: string, body?: unknown, options?: { token?: string; timeoutMs?: number }): Promise<AdminReply<T>>;
  /** GET /status (throws unless 200). */
  status(): Promise<NodeStatus>;
}

export interface StartOptions {
  id?: string;
  dataDir?: string;
  backend?: 'replicated' | 'file' | 'memory';
  devices?: string[];
  ports?: { nbd: number; admin: number; peer: number };
  /** --peers: ID=HOST:PORT,... */
  peers?: string;
  join?: boolean | undefined;
  /** --log-level (a flag: it overrides XDEVICE_LOG_LEVEL, which defaults to ours or info). */
  logLevel?: string | undefined;
  /** More flags (peer TLS, --config, --space-reserve ...); peer-auth flags here replace the shared secret. */
  extraArgs?: string[];
  /** Environment on top of ours (XDEVICE_FAULT_FILE, XDEVICE_CHECKPOINT_ENTRIES ...). */
  env?: NodeJS.ProcessEnv;
  entry?: NodeEntry | undefined;
  nodeOptions?: string[] | undefined;
  /** Wait for /status (and a standalone replicated node's devices); default true. */
  waitReady?: boolean;
}

// Children outlive a test process that dies abruptly; kill them on any normal exit at least.
const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of liveChildren) c.kill('SIGKILL');
});

const deviceNames = (devices: string[]): string[] => devices.map((d) => d.slice(0, d.lastIndexOf(':')));

/** Starts one node; by default resolves once it serves its admin API (and, standalone, its devices). */
export async function startNode(options: StartOptions = {}): Promise<NodeProcess> {
  const id = options.id ?? 'node1';
  const dataDir = options.dataDir ?? tempDir(id);
  mkdirSync(dataDir, { recursive: true });
  const backend = options.backend ?? 'replicated';
  const devices = options.devices ?? ['default:64MiB'];
  const [nbd, admin, peer] = options.ports ? [options.ports.nbd, options.ports.admin, options.ports.peer] : await freePorts(3);
  const flags = [
    `--node-id=${id}`,
    `--data-dir=${dataDir}`,
    `--nbd-listen=127.0.0.1:${nbd}`,
    `--admin-listen=127.0.0.1:${admin}`,
    `--peer-listen=127.0.0.1:${peer}`,
    `--backend=${backend}`,
    ...devices.map((d) => `--device=${d}`),
    ...(options.peers ? [`--peers=${options.peers}`] : []),
    ...(options.join ? ['--join'] : []),
    ...(options.logLevel ? [`--log-level=${options.logLevel}`] : []),
    // Peer authentication even without peers: a node started alone may be grown with add-node later.
    ...(backend === 'replicated' ? peerAuthArgs(options.extraArgs) : []),
    ...(options.extraArgs ?? []),
  ];
  const args = nodeCommand(flags, { entry: options.entry, nodeOptions: options.nodeOptions });
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: nodeEnv({ ...process.env, XDEVICE_LOG_FORMAT: 'json', XDEVICE_LOG_LEVEL: process.env.XDEVICE_LOG_LEVEL ?? 'info', ...options.env }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveChildren.add(child);
  let output = '';
  const keep = (c: Buffer): void => {
    output += c.toString('utf8');
    if (output.length > 4_000_000) output = output.slice(-2_000_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let dead = false;
  const exited = new Promise<Exit>((r) =>
    child.once('exit', (code, signal) => {
      dead = true;
      liveChildren.delete(child);
      r({ code, signal });
    }),
  );
  const proc: NodeProcess = {
    id,
    child,
    dataDir,
    host: '127.0.0.1',
    nbdPort: nbd!,
    adminPort: admin!,
    peerPort: peer!,
    args,
    output: () => output,
    alive: () => !dead,
    exited,
    uri: (device = '') => `nbd://127.0.0.1:${nbd}/${device}`,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (!dead) child.kill(signal);
      return await exited;
    },
    async stop() {
      if (!dead) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const { code } = await exited;
      clearTimeout(timer);
      return code;
    },
    api: (method, path, body, o) => adminApi(admin!, method, path, body, o),
    async status() {
      const res = await adminApi<NodeStatus>(admin!, 'GET', '/status', undefined, { timeoutMs: 5000 });
      if (res.status !== 200) throw new Error(`${id} /status: HTTP ${res.status}`);
      return res.body;
    },
  };
  if (options.waitReady === false) return proc;
  const alive = (): void => {
    if (dead) throw new Error(`${id} exited during start-up (${child.exitCode ?? child.signalCode}):\n${output.slice(-4000)}`);
  };
  const check = async <T>(what: string, fn: () => Promise<T | undefined | false>): Promise<T> => {
    // A start-up death fails at once, not at the timeout.
    const died = exited.then(alive);
    return (await Promise.race([waitFor(what, async () => (alive(), await fn()), 60_000, 50), died])) as T;
  };
  try {
    await check(`${id} to serve its admin API`, async () => (await proc.api('GET', '/status', undefined, { timeoutMs: 2000 })).status === 200);
    if (backend === 'replicated' && !options.peers && !options.join) {
      // A standalone node creates its devices through its one-node Raft log.
      await check(`${id} to serve ${deviceNames(devices).join(', ')}`, async () => {
        const res = await proc.api<{ devices: { name: string }[] }>('GET', '/devices');
        return res.status === 200 && deviceNames(devices).every((n) => res.body.devices.some((d) => d.name === n));
      });
    }
  } catch (err) {
    await proc.kill();
    throw err;
  }
  return proc;
}

export interface ClusterOptions {
  /** Founding members' ids (default node1..node<size>). */
  ids?: string[];
  size?: number;
  devices?: string[];
  /** Put a FaultProxy on every directed peer link, so tests can cut or slow any of them. */
  proxied?: boolean;
  env?: NodeJS.ProcessEnv;
  logLevel?: string;
  /** Extra flags for each node (e.g. peer TLS files). */
  nodeArgs?: (id: string) => string[];
  nodeOptions?: (id: string) => string[];
  entry?: NodeEntry;
  /** Where the data directories go (default a tempDir). */
  baseDir?: string;
}

export interface ClusterSlot {
  id: string;
  index: number;
  dataDir: string;
  ports: { nbd: number; admin: number; peer: number };
  /** The latest process started in this slot. */
  proc: NodeProcess | undefined;
  paused: boolean;
}

/** A node by id or by its position among the slots. */
export type NodeRef = string | number;

export type DiskFault = { delayUs?: number; fdatasyncErrno?: string; pwriteErrno?: string };

export class Cluster {
  readonly slots: ClusterSlot[] = [];
  /** The founding members. */
  readonly ids: string[];
  /** The proxy of the link from → to, keyed `${from}>${to}`. */
  readonly proxies = new Map<string, FaultProxy>();
  readonly baseDir: string;

  private constructor(readonly options: ClusterOptions) {
    this.ids = options.ids ?? Array.from({ length: options.size ?? 3 }, (_, i) => `node${i + 1}`);
    this.baseDir = options.baseDir ?? tempDir('cluster');
  }

  /** Starts the founding members; resolves once they agree on a leader and serve the devices. */
  static async start(options: ClusterOptions = {}): Promise<Cluster> {
    const c = new Cluster(options);
    try {
      for (const id of c.ids) await c.addSlot(id);
      if (options.proxied) {
        for (const from of c.ids) for (const to of c.ids) if (from !== to) c.proxies.set(`${from}>${to}`, await FaultProxy.start({ host: '127.0.0.1', port: c.slot(to).ports.peer }));
      }
      const started = await Promise.allSettled(c.ids.map((id) => c.startNode(id)));
      const failed = started.find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
      await c.waitForLeader(undefined, 60_000);
      await c.devicesReady();
    } catch (err) {
      await c.stop();
      throw err;
    }
    return c;
  }

  private async addSlot(id: string): Promise<ClusterSlot> {
    const [nbd, admin, peer] = await freePorts(3);
    const slot: ClusterSlot = { id, index: this.slots.length, dataDir: join(this.baseDir, id), ports: { nbd: nbd!, admin: admin!, peer: peer! }, proc: undefined, paused: false };
    this.slots.push(slot);
    return slot;
  }

  get size(): number {
    return this.slots.length;
  }

  slot(ref: NodeRef): ClusterSlot {
    const s = typeof ref === 'number' ? this.slots[ref] : this.slots.find((x) => x.id === ref);
    if (!s) throw new Error(`no node ${ref} in this cluster`);
    return s;
  }

  /** The process last started for a node. */
  node(ref: NodeRef): NodeProcess {
    const p = this.slot(ref).proc;
    if (!p) throw new Error(`node ${ref} was never started`);
    return p;
  }

  indexOf(id: string): number {
    return this.slot(id).index;
  }

  /** The --peers value as `from` sees it (through the proxies if any). */
  peersFor(from: string, members: string[] = this.ids): string {
    return members
      .map((to) => {
        const proxy = this.proxies.get(`${from}>${to}`);
        return `${to}=${proxy ? proxy.address : `127.0.0.1:${this.slot(to).ports.peer}`}`;
      })
      .join(',');
  }

  /** Starts (or restarts, on the same data directory and ports) a node; a new id gets a new slot. */
  async startNode(ref: NodeRef, opts: { join?: boolean; env?: NodeJS.ProcessEnv; members?: string[]; extraArgs?: string[] } = {}): Promise<NodeProcess> {
    const slot = typeof ref === 'string' && !this.slots.some((s) => s.id === ref) ? await this.addSlot(ref) : this.slot(ref);
    slot.proc = await startNode({
      id: slot.id,
      dataDir: slot.dataDir,
      ports: slot.ports,
      peers: this.peersFor(slot.id, opts.members ?? this.ids),
      devices: this.options.devices ?? ['default:64MiB'],
      join: opts.join,
      logLevel: this.options.logLevel,
      extraArgs: opts.extraArgs ?? this.options.nodeArgs?.(slot.id) ?? [],
      env: { XDEVICE_FAULT_FILE: this.faultFile(slot.id), ...this.options.env, ...opts.env },
      entry: this.options.entry,
      nodeOptions: this.options.nodeOptions?.(slot.id),
    });
    slot.paused = false;
    return slot.proc;
  }

  /** The disk-fault file a node watches (XDEVICE_FAULT_FILE); absent = no faults. */
  faultFile(ref: NodeRef): string {
    return join(this.baseDir, `${this.slot(ref).id}-faults.json`);
  }

  /** Slows (delayUs) or fails (errno) a node's disk writes; `{}` clears. */
  setDiskFault(ref: NodeRef, fault: DiskFault): void {
    // Written aside and renamed: the node's watcher never reads half a file.
    const file = this.faultFile(ref);
    writeFileSync(`${file}.tmp`, JSON.stringify(fault));
    renameSync(`${file}.tmp`, file);
  }

  isUp(ref: NodeRef): boolean {
    return this.slot(ref).proc?.alive() ?? false;
  }

  /** Nodes whose process is running. */
  live(): NodeProcess[] {
    return this.slots.flatMap((s) => (s.proc?.alive() ? [s.proc] : []));
  }

  /** GET /status of a node (throws if it is down, paused or not answering). */
  async status(ref: NodeRef): Promise<NodeStatus> {
    const s = this.slot(ref);
    if (!s.proc?.alive() || s.paused) throw new Error(`${s.id} is ${s.paused ? 'paused' : 'down'}`);
    return await s.proc.status();
  }

  /** Waits until the running, unpaused nodes (or `among`) agree on one leader; its id. */
  async waitForLeader(among?: NodeRef[], timeoutMs = 30_000): Promise<string> {
    return await waitFor(
      'one leader the nodes agree on',
      async () => {
        const ids = among ? among.map((r) => this.slot(r).id) : this.slots.filter((s) => s.proc?.alive() && !s.paused).map((s) => s.id);
        const statuses = await Promise.all(ids.map((id) => this.status(id).catch(() => undefined)));
        const leaders = new Set(statuses.map((s) => s?.leader ?? ''));
        if (leaders.size !== 1) return undefined;
        const [leader] = leaders;
        if (!leader || !ids.includes(leader)) return undefined;
        return statuses[ids.indexOf(leader)]?.role === 'leader' ? leader : undefined;
      },
      timeoutMs,
      50,
    );
  }

  /** waitForLeader, as the leader's slot index. */
  async leaderIndex(timeoutMs = 30_000): Promise<number> {
    return this.indexOf(await this.waitForLeader(undefined, timeoutMs));
  }

  /** A fresh cluster creates its devices through Raft: waits until every running node serves them. */
  async devicesReady(timeoutMs = 60_000): Promise<void> {
    const want = deviceNames(this.options.devices ?? ['default:64MiB']);
    await waitFor(
      `devices ${want.join(', ')} on every node`,
      async () => {
        for (const n of this.live()) {
          const res = await n.api<{ devices: { name: string }[] }>('GET', '/devices');
          if (res.status !== 200 || !want.every((w) => res.body.devices.some((d) => d.name === w))) return false;
        }
        return true;
      },
      timeoutMs,
      50,
    );
  }

  /** Waits until every running node has applied the leader's commit index. */
  async converged(timeoutMs = 60_000): Promise<void> {
    await waitFor(
      'every live node to catch up with the leader',
      async () => {
        const leader = await this.status(await this.waitForLeader(undefined, timeoutMs));
        for (const n of this.live()) if ((await n.status()).applied < leader.commit) return false;
        return true;
      },
      timeoutMs,
      100,
    );
  }

  async kill(ref: NodeRef, signal: NodeJS.Signals = 'SIGKILL'): Promise<Exit | undefined> {
    this.resume(ref);
    return await this.slot(ref).proc?.kill(signal);
  }

  /** SIGSTOP: the process holds its sockets and answers nothing. */
  pause(ref: NodeRef): void {
    const s = this.slot(ref);
    if (!s.proc?.alive() || s.paused) return;
    s.proc.child.kill('SIGSTOP');
    s.paused = true;
  }

  resume(ref: NodeRef): void {
    const s = this.slot(ref);
    if (!s.paused) return;
    s.proc?.child.kill('SIGCONT');
    s.paused = false;
  }

  /** Cuts every link between nodes of different groups; the nodes in no group form one more group. */
  partition(groups: NodeRef[][], mode: ProxyMode = 'reset'): void {
    const groupOf = new Map<string, number>();
    groups.forEach((g, k) => g.forEach((r) => groupOf.set(this.slot(r).id, k)));
    for (const [key, proxy] of this.proxies) {
      const [from, to] = key.split('>') as [string, string];
      if ((groupOf.get(from) ?? -1) !== (groupOf.get(to) ?? -1)) proxy.set(mode);
    }
  }

  /** Every link forwards again, without delay. */
  heal(): void {
    for (const p of this.proxies.values()) {
      p.set('forward');
      p.delayMs = 0;
    }
  }

  slowLinks(delayMs: number): void {
    for (const p of this.proxies.values()) p.delayMs = delayMs;
  }

  async client(ref: NodeRef, device = 'default'): Promise<NbdClient> {
    const c = await NbdClient.connect({ host: '127.0.0.1', port: this.slot(ref).ports.nbd, connectTimeoutMs: 5000 });
    await c.openDevice(device);
    return c;
  }

  nbdUri(ref: NodeRef, device = 'default'): string {
    return `nbd://127.0.0.1:${this.slot(ref).ports.nbd}/${device}`;
  }

  /** SIGTERM (a clean stop) to every running node. */
  async stopAll(): Promise<void> {
    await Promise.all(this.live().map((n) => this.kill(n.id, 'SIGTERM')));
  }

  /** Kills every node (SIGKILL unless told) and closes the proxies; the data stays until the process exits. */
  async stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    await Promise.all(this.slots.map((s) => this.kill(s.id, signal)));
    for (const p of this.proxies.values()) await p.close();
  }

  /** The last lines of every node's log, for failure messages. */
  logs(lines = 40): string {
    return this.slots.map((s) => `--- ${s.id}\n${s.proc ? s.proc.output().split('\n').slice(-lines).join('\n') : '(never started)'}`).join('\n');
  }
}
