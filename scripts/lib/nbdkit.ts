// nbdkit as the reference server in benchmarks: the same NBD client (fio,
// nbdfuse) against a plain C server over the same filesystem shows what the
// protocol and the disk cost on their own.

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { freePort } from '../../test/integration/helpers/ports.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Nbdkit {
  port: number;
  /** nbd://127.0.0.1:PORT/ (nbdkit serves one unnamed export). */
  uri: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/** Starts `nbdkit PLUGIN ARGS...` on a free loopback port and waits until it accepts connections. */
export async function startNbdkit(pluginArgs: readonly string[]): Promise<Nbdkit> {
  const port = await freePort();
  // nbdkit writes its pid file once it accepts connections: no probe
  // connection (which nbdkit would log as a client error) is needed.
  const pidDir = mkdtempSync(join(tmpdir(), 'xdevice-nbdkit-'));
  const pidFile = join(pidDir, 'pid');
  const child = spawn('nbdkit', ['-f', '--exit-with-parent', '-P', pidFile, '-i', '127.0.0.1', '-p', String(port), ...pluginArgs], {
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), resolve())));
  const nbdkit: Nbdkit = {
    port,
    uri: `nbd://127.0.0.1:${port}/`,
    child,
    async stop() {
      if (!exited) child.kill('SIGTERM');
      await exit;
    },
  };
  try {
    for (let i = 0; i < 600; i++) {
      if (exited) throw new Error(`nbdkit ${pluginArgs.join(' ')} exited during start-up`);
      if (existsSync(pidFile)) return nbdkit;
      await new Promise((r) => setTimeout(r, 50));
    }
    await nbdkit.stop();
    throw new Error('nbdkit did not start within 30 s');
  } finally {
    rmSync(pidDir, { recursive: true, force: true });
  }
}

/** nbdkit's file plugin over a fresh sparse file of sizeBytes at `path`. */
export async function startNbdkitFile(path: string, sizeBytes: number): Promise<Nbdkit> {
  writeFileSync(path, '');
  truncateSync(path, sizeBytes);
  return await startNbdkit(['file', path]);
}
