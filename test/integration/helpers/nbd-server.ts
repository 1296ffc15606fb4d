// Starts the real `xdevice-node --backend memory|file` in a child process and
// resolves once it listens (the port comes from its "serving" log line).

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(import.meta.dirname, '../../..');
export const SERVER_COMMAND = [process.execPath, path.join(ROOT, 'bin/xdevice-node.js')];

export interface NbdServerProcess {
  host: string;
  port: number;
  dataDir: string;
  child: ChildProcess;
  uri(name?: string): string;
  /** Logs so far. */
  output(): string;
  alive(): boolean;
  /** SIGTERM, wait for exit, remove the data directory; resolves with the exit code. */
  stop(): Promise<number | null>;
}

export interface NbdServerStartOptions {
  backend?: 'memory' | 'file';
  devices?: string[];
  tls?: 'off' | 'on' | 'require';
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
  tlsPsk?: string;
  dataDir?: string;
}

export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `xdevice-${prefix}-`));
}

export async function startNbdServer(options: NbdServerStartOptions = {}): Promise<NbdServerProcess> {
  const dataDir = options.dataDir ?? tempDir('nbd');
  mkdirSync(dataDir, { recursive: true });
  const args = [
    '--nbd-listen', '127.0.0.1:0',
    '--admin-listen', '127.0.0.1:0',
    '--backend', options.backend ?? 'memory',
    '--data-dir', dataDir,
    '--tls', options.tls ?? 'off',
    ...(options.devices ?? ['a:64MiB', 'b:16MiB']).flatMap((d) => ['--device', d]),
    ...(options.tlsCert !== undefined ? ['--tls-cert', options.tlsCert] : []),
    ...(options.tlsKey !== undefined ? ['--tls-key', options.tlsKey] : []),
    ...(options.tlsCa !== undefined ? ['--tls-ca', options.tlsCa] : []),
    ...(options.tlsPsk !== undefined ? ['--tls-psk', options.tlsPsk] : []),
  ];
  const child = spawn(SERVER_COMMAND[0]!, [...SERVER_COMMAND.slice(1), ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, XDEVICE_LOG_LEVEL: 'info', XDEVICE_LOG_FORMAT: 'json' },
  });
  let output = '';
  let listening: ((address: { host: string; port: number }) => void) | undefined;
  child.stderr!.on('data', (c: Buffer) => {
    output += c.toString('utf8');
    if (listening) {
      const m = /"nbd":"([^"]+):(\d+)"[^\n]*"msg":"serving"/.exec(output);
      if (m) listening({ host: m[1]!, port: Number(m[2]) });
    }
    if (output.length > 1_000_000) output = output.slice(-500_000);
  });
  let exited = false;
  const exit = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => {
      exited = true;
      resolve(code);
    }),
  );
  child.stdout!.resume();
  const address = await new Promise<{ host: string; port: number }>((resolve, reject) => {
    listening = (a) => {
      listening = undefined;
      resolve(a);
    };
    void exit.then((code) => reject(new Error(`NBD server exited with ${code} during start-up:\n${output}`)));
  });
  return {
    ...address,
    dataDir,
    child,
    uri: (name = '') => `nbd://${address.host}:${address.port}/${name}`,
    output: () => output,
    alive: () => !exited,
    async stop() {
      if (!exited) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
      const code = await exit;
      clearTimeout(timer);
      if (options.dataDir === undefined) rmSync(dataDir, { recursive: true, force: true });
      return code;
    },
  };
}

/** Runs a command to completion; resolves with its exit code and output (never rejects on a non-zero exit). */
export function run(
  command: string,
  args: string[],
  options: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...options.env },
      ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    // A command that exits without reading its input must not fail the test with EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}
