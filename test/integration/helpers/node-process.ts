// Starts the real `xdevice-node` binary as a child process and waits until its
// admin API answers. Tests kill it with real signals (SIGKILL, SIGTERM, SIGSTOP).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { request } from 'node:http';
import { freePorts } from './ports.ts';

export const ROOT = resolve(import.meta.dirname, '../../..');
export const NODE_BIN = join(ROOT, 'bin/xdevice-node.js');
export const CLI_BIN = join(ROOT, 'bin/xdevice-cli.js');

export interface NodeProcess {
  id: string;
  child: ChildProcess;
  dataDir: string;
  nbdPort: number;
  adminPort: number;
  peerPort: number;
  args: string[];
  /** stderr and stdout so far (the node's logs). */
  output(): string;
  /** Resolves with the exit code or signal once the process has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface StartOptions {
  id?: string;
  dataDir?: string;
  backend?: 'replicated' | 'file' | 'memory';
  devices?: string[];
  ports?: { nbd: number; admin: number; peer: number };
  peers?: string;
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
  /** Wait for /status to answer (default true). */
  waitReady?: boolean;
}

const createdDirs: string[] = [];
let cleanupHooked = false;

/**
 * A fresh directory under $XDEVICE_TEST_TMP (or the system's). Data
 * directories hold preallocated WAL segments (64 MiB each), so they are
 * removed when the test process exits cleanly; a failed run keeps them for a
 * look, as does XDEVICE_KEEP_TMP=1.
 */
export function tempDir(prefix: string): string {
  const base = process.env.XDEVICE_TEST_TMP ?? tmpdir();
  mkdirSync(base, { recursive: true });
  const dir = mkdtempSync(join(base, `xdevice-${prefix}-`));
  createdDirs.push(dir);
  if (!cleanupHooked) {
    cleanupHooked = true;
    process.on('exit', (code) => {
      if (code !== 0 || process.exitCode || process.env.XDEVICE_KEEP_TMP === '1') return;
      for (const d of createdDirs) {
        try {
          rmSync(d, { recursive: true, force: true });
        } catch {
          // a mount or a busy file: leave it
        }
      }
    });
  }
  return dir;
}

let secretFile: string | undefined;

/**
 * The cluster secret file every node started by this test process shares
 * (mode 600, 256 random bits): nodes with peers refuse to start without
 * peer authentication.
 */
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

export function httpGet(port: number, path: string, token = ''): Promise<{ status: number; body: string }> {
  return new Promise((resolvePromise, reject) => {
    const req = request({ host: '127.0.0.1', port, path, timeout: 3000, headers: token ? { Authorization: `Bearer ${token}` } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolvePromise({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });
}

/** What one run of xdevice-cli printed and how it exited. */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs xdevice-cli to completion (no stdin), with extra environment variables. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return new Promise((resolvePromise) => {
    const child = spawn(process.execPath, [CLI_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('exit', (code) => resolvePromise({ code, stdout, stderr }));
  });
}

/** One admin API call: a JSON body (or a raw string) out, the status and the parsed JSON (or text) back. */
export function adminRequest<T = any>(port: number, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<{ status: number; body: T }> {
  return new Promise((resolvePromise, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
    const req = request(
      { host: '127.0.0.1', port, method, path, timeout: timeoutMs, headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {} },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = JSON.parse(text);
          } catch {
            // not JSON: the text itself
          }
          resolvePromise({ status: res.statusCode ?? 0, body: parsed as T });
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(payload);
  });
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export async function startNode(options: StartOptions = {}): Promise<NodeProcess> {
  const id = options.id ?? 'node1';
  const dataDir = options.dataDir ?? tempDir(id);
  const [nbd, admin, peer] = options.ports ? [options.ports.nbd, options.ports.admin, options.ports.peer] : await freePorts(3);
  const args = [
    NODE_BIN,
    `--node-id=${id}`,
    `--data-dir=${dataDir}`,
    `--nbd-listen=127.0.0.1:${nbd}`,
    `--admin-listen=127.0.0.1:${admin}`,
    `--peer-listen=127.0.0.1:${peer}`,
    `--backend=${options.backend ?? 'replicated'}`,
    ...(options.devices ?? ['default:64MiB']).map((d) => `--device=${d}`),
    // Peer authentication even without peers: a node started alone may be grown with add-node later.
    ...(options.peers ? [`--peers=${options.peers}`] : []),
    ...(options.backend === undefined || options.backend === 'replicated' ? peerAuthArgs(options.extraArgs) : []),
    ...(options.extraArgs ?? []),
  ];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, XDEVICE_LOG_FORMAT: 'json', XDEVICE_LOG_LEVEL: process.env.XDEVICE_LOG_LEVEL ?? 'info', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (c: Buffer) => {
    output += c.toString('utf8');
    if (output.length > 4_000_000) output = output.slice(-2_000_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const proc: NodeProcess = {
    id,
    child,
    dataDir,
    nbdPort: nbd!,
    adminPort: admin!,
    peerPort: peer!,
    args,
    output: () => output,
    exited,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return await exited;
    },
  };
  if (options.waitReady !== false) {
    let dead = false;
    void exited.then(() => (dead = true));
    await waitFor(`${id} to serve its admin API`, async () => {
      if (dead) throw new Error(`${id} exited during start-up:\n${output.slice(-3000)}`);
      return (await httpGet(admin!, '/status')).status === 200;
    });
    if ((options.backend ?? 'replicated') === 'replicated' && !options.peers) {
      // A standalone node creates its devices through its one-node Raft log.
      const want = (options.devices ?? ['default:64MiB']).map((d) => d.slice(0, d.lastIndexOf(':')));
      await waitFor(`${id} to serve ${want.join(', ')}`, async () => {
        if (dead) throw new Error(`${id} exited during start-up:\n${output.slice(-3000)}`);
        const res = await httpGet(admin!, '/devices');
        const names = res.status === 200 ? (JSON.parse(res.body) as { devices: { name: string }[] }).devices.map((d) => d.name) : [];
        return want.every((n) => names.includes(n));
      });
    }
  }
  return proc;
}
