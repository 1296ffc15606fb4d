// What the integration tests need besides nodes (helpers/launcher.ts): the
// repository root, temporary directories that clean up after a clean run,
// polling, and running a command (or xdevice-cli) to completion.
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const ROOT = resolve(import.meta.dirname, '../../..');
export const CLI_BIN = join(ROOT, 'bin/xdevice-cli.js');

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

/** Every file under `dir` holding `needle` (device files, WAL segments, checkpoint, snapshots, audit trails…). */
export function filesHolding(dir: string, needle: Buffer): string[] {
  const found: string[] = [];
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && readFileSync(p).indexOf(needle) !== -1) found.push(p);
    }
  };
  walk(dir);
  return found;
}

/** Polls `fn` until it returns something other than undefined or false; its last error is in the timeout message. */
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

/** The sum of a metric's samples (every label set) in a node's /metrics text; 0 when absent. */
export function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))) sum += Number(m[1]);
  return sum;
}

/** What one run of a command printed and how it exited. */
export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; resolves with its exit code and output (never rejects on a non-zero exit). */
export function run(
  command: string,
  args: string[],
  options: { input?: string | Buffer; env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {},
): Promise<CliRun> {
  return new Promise((resolvePromise, reject) => {
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
      resolvePromise({ code, stdout, stderr });
    });
    // A command that exits without reading its input must not fail the test with EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}

/** Runs xdevice-cli to completion (no stdin), with extra environment variables. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliRun> {
  return run(process.execPath, [CLI_BIN, ...args], { env });
}

/** PATH for Debian's tools first: nbdsh needs /usr/bin/python3 (with libnbd), which pyenv's python3 hides. */
export const SYSTEM_TOOLS_ENV = { PATH: `/usr/bin:${process.env.PATH ?? ''}` };

/**
 * One 4 KiB write at offset 0 and one read through nbdsh: the write's errno
 * name ('' if it succeeded), whether the read returned 4 KiB, its first byte,
 * and whether the server advertised READ_ONLY. Strict mode off: libnbd sends
 * the write instead of refusing it itself on a read-only export, so the
 * answer is the server's.
 */
export async function nbdshWrite(uri: string): Promise<{ errno: string; readOk: boolean; readOnly: boolean; first: number }> {
  const script = [
    'import json',
    'h.set_strict_mode(0)',
    `h.connect_uri(${JSON.stringify(uri)})`,
    'ro = h.is_read_only()',
    "err = ''",
    'try:',
    "    h.pwrite(b'\\x5a' * 4096, 0)",
    'except nbd.Error as e:',
    '    err = e.errno',
    'buf = h.pread(4096, 0)',
    "print(json.dumps({'errno': err, 'readOk': len(buf) == 4096, 'readOnly': bool(ro), 'first': buf[0]}))",
  ].join('\n');
  const r = await run('nbdsh', ['-c', script], { env: SYSTEM_TOOLS_ENV });
  if (r.code !== 0) throw new Error(`nbdsh failed: ${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}
