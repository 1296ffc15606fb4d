// A real kernel block device on an NBD export, on a kernel without nbd.ko:
// nbdfuse turns the export into a file, losetup turns the file into
// /dev/loopN, and ext4 goes on that. Needs root.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, waitFor } from './tools.ts';

function run(cmd: string, args: string[], options: { allowFail?: boolean } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, PATH: `/usr/sbin:/sbin:/usr/bin:/bin:${process.env.PATH}` } });
  if (r.status !== 0 && !options.allowFail) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr || r.stdout}`);
  return r.stdout.trim();
}

export interface AttachedDevice {
  /** /dev/loopN */
  loop: string;
  /** Where ext4 is mounted (after mkfsAndMount). */
  mountpoint: string;
  nbdfuse: ChildProcess;
  mkfsAndMount(options?: { mkfsArgs?: string[]; mountOptions?: string }): void;
  /** Unmount the filesystem (the loop device stays, e.g. for e2fsck). */
  unmount(): void;
  /** Unmount, detach the loop device and unmount the FUSE file. */
  detach(): Promise<void>;
}

/** Attaches nbd://127.0.0.1:PORT/EXPORT as /dev/loopN through nbdfuse. */
export async function attachExport(port: number, exportName: string, options: { connections?: number } = {}): Promise<AttachedDevice> {
  const dir = tempDir('nbdfuse');
  const fuseDir = join(dir, 'fuse');
  const mountpoint = join(dir, 'mnt');
  mkdirSync(fuseDir);
  mkdirSync(mountpoint);
  const file = join(fuseDir, 'disk');
  const nbdfuse = spawn('nbdfuse', ['-C', String(options.connections ?? 1), file, `nbd://127.0.0.1:${port}/${exportName}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  let exited = false;
  let output = '';
  nbdfuse.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  nbdfuse.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  nbdfuse.once('exit', (code, signal) => {
    exited = true;
    output += `\n(nbdfuse exited: code ${code}, signal ${signal})`;
  });
  await waitFor('nbdfuse to present the export', async () => {
    if (exited) throw new Error(`nbdfuse exited: ${output.trim()}`);
    return existsSync(file);
  }, 30_000);
  const loop = run('losetup', ['-f', '--show', file]);
  let mounted = false;
  const device: AttachedDevice = {
    loop,
    mountpoint,
    nbdfuse,
    mkfsAndMount({ mkfsArgs = [], mountOptions } = {}) {
      run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard,lazy_itable_init=0,lazy_journal_init=0', ...mkfsArgs, loop]);
      run('mount', ['-t', 'ext4', ...(mountOptions ? ['-o', mountOptions] : []), loop, mountpoint]);
      mounted = true;
    },
    unmount() {
      run('umount', [mountpoint]);
      mounted = false;
    },
    async detach() {
      if (mounted) {
        run('umount', [mountpoint], { allowFail: true });
        mounted = false;
      }
      run('losetup', ['-d', loop], { allowFail: true });
      run('fusermount3', ['-u', fuseDir], { allowFail: true });
      if (!exited) await new Promise((r) => nbdfuse.once('exit', r));
    },
  };
  return device;
}

export function fsck(loop: string): { clean: boolean; output: string } {
  const r = spawnSync('e2fsck', ['-fn', loop], { encoding: 'utf8', env: { ...process.env, PATH: `/usr/sbin:/sbin:${process.env.PATH}` } });
  return { clean: r.status === 0, output: `${r.stdout}\n${r.stderr}` };
}

export function unmount(mountpoint: string): void {
  run('umount', [mountpoint]);
}

export function mount(loop: string, mountpoint: string, options = ''): void {
  run('mount', ['-t', 'ext4', ...(options ? ['-o', options] : []), loop, mountpoint]);
}
