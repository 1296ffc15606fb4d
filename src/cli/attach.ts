// xdevice-cli attach / detach: a kernel /dev/nbdN on an export.
//
// --persist (the default) runs our own attacher, build/Release/xdevice-nbd-attach
// (native/attach/): it negotiates the export itself, hands the sockets to the
// kernel over generic netlink, and stays running; when a connection dies (the
// node restarts) it reconnects — to the node, else to the other members — and
// the kernel holds I/O meanwhile for up to --dead-conn-timeout seconds, so a
// restart is a pause rather than an I/O error. --no-persist runs nbd-client,
// which does not reconnect netlink devices.

import { spawnSync } from 'node:child_process';
import { lookup } from 'node:dns/promises';
import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { Argv } from 'yargs';
import type { Member, NodeStatus } from '../admin/api.ts';
import { CliExit, client, EXIT, type GlobalArgs, print } from './common.ts';

/** Where npm install (node-gyp) builds the attacher: build/Release under the package root
 * (XDEVICE_NBD_ATTACH names another build, e.g. a packager's). */
export function attacherLocation(): string {
  return process.env.XDEVICE_NBD_ATTACH || fileURLToPath(new URL('../../build/Release/xdevice-nbd-attach', import.meta.url));
}

function attacherPath(): string {
  const path = attacherLocation();
  if (!existsSync(path)) {
    throw new CliExit(EXIT.failed, `${path} is not built: run \`npm install\` (or \`npm rebuild\`) in the xdevice package; --no-persist uses nbd-client instead`);
  }
  return path;
}

function nbdClientPath(): string | undefined {
  for (const p of ['/usr/sbin/nbd-client', '/sbin/nbd-client', '/usr/bin/nbd-client']) if (existsSync(p)) return p;
  return undefined;
}

export function ensureKernelNbd(device: string): void {
  if (existsSync(device)) return;
  const probe = spawnSync('modprobe', ['nbd'], { encoding: 'utf8' });
  if (existsSync(device)) return;
  throw new CliExit(
    EXIT.noKernelNbd,
    `${device} does not exist and the nbd kernel module could not be loaded` +
      (probe.stderr ? ` (modprobe: ${probe.stderr.trim()})` : '') +
      '.\nThis kernel cannot attach NBD devices. Alternatives: run on a kernel with CONFIG_BLK_DEV_NBD, ' +
      'or use nbdfuse + losetup: nbdfuse DIR/disk nbd://HOST:PORT/EXPORT & losetup -f --show DIR/disk',
  );
}

/**
 * HOST:PORT as the attacher takes it: a numeric address (names resolved here),
 * IPv6 in brackets. A wildcard listen address (0.0.0.0, ::) names the node we
 * asked only if it runs here, so it is kept (as loopback) for that node alone
 * (`local`); a fallback member that publishes one is left out (undefined).
 */
async function endpointFor(address: string, local: boolean): Promise<string | undefined> {
  const m = /^(.*):(\d+)$/.exec(address);
  if (!m) throw new CliExit(EXIT.failed, `cannot use NBD address "${address}"`);
  let host = m[1]!.replace(/^\[(.*)\]$/, '$1');
  if (host === '0.0.0.0' || host === '::') {
    if (!local) return undefined;
    host = host === '::' ? '::1' : '127.0.0.1';
  }
  if (isIP(host) === 0) {
    try {
      host = (await lookup(host)).address;
    } catch (err) {
      if (!local) return undefined;
      throw new CliExit(EXIT.failed, `cannot resolve the node's NBD host "${host}": ${(err as Error).message}`);
    }
  }
  return isIP(host) === 6 ? `[${host}]:${m[2]}` : `${host}:${m[2]}`;
}

export function attachCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command(
      'attach',
      'attach an export to a kernel NBD device (kept attached across node restarts by xdevice-nbd-attach)',
      (y) =>
        y
          .option('device', { type: 'string', default: '/dev/nbd0', describe: 'the kernel device' })
          .option('export', { type: 'string', default: 'default', describe: 'export (device) name' })
          .option('connections', { type: 'number', default: 1, describe: 'connections (the export allows several: CAN_MULTI_CONN)' })
          .option('block-size', { type: 'number', default: 4096, describe: 'with --no-persist: nbd-client -b (the attacher takes the export’s)' })
          .option('persist', {
            type: 'boolean',
            default: true,
            describe: 'run xdevice-nbd-attach, which reconnects when a connection dies (--no-persist: nbd-client, which does not)',
          })
          .option('nbd-timeout', { type: 'number', default: 60, describe: 'seconds a request may wait before the kernel retries it on a new connection (nbd-client: fails it)' })
          .option('dead-conn-timeout', { type: 'number', default: 120, describe: 'seconds the kernel holds I/O while every connection is dead (the node restarting)' })
          .option('fallbacks', { type: 'boolean', default: true, describe: 'also reconnect to the other members’ NBD addresses while this node stays down (members that publish a wildcard address are left out)' })
          .option('dry-run', { type: 'boolean', default: false, describe: 'print the command instead of running it' }),
      async (argv) => {
        const c = client(argv);
        const { body: status } = await c.read<NodeStatus>('/status');
        let bin: string;
        let args: string[];
        if (argv.persist) {
          const endpoints = [(await endpointFor(status.nbdAddress, true))!];
          if (argv.fallbacks) {
            const { body } = await c.read<{ members: Member[] }>('/members');
            for (const m of body.members) {
              if (!m.nbdAddress || m.nbdAddress === status.nbdAddress) continue;
              const e = await endpointFor(m.nbdAddress, false);
              if (e && !endpoints.includes(e)) endpoints.push(e);
            }
          }
          bin = argv['dry-run'] && !existsSync(attacherLocation()) ? attacherLocation() : attacherPath();
          args = [
            '--device', argv.device,
            '--export', argv.export,
            ...endpoints.flatMap((e) => ['--endpoint', e]),
            '--connections', String(argv.connections),
            '--timeout', String(Math.max(0, Math.round(argv['nbd-timeout']))),
            '--dead-conn-timeout', String(Math.max(0, Math.round(argv['dead-conn-timeout']))),
          ];
        } else {
          const [host, port] = status.nbdAddress.split(/:(?=\d+$)/);
          bin = nbdClientPath() ?? 'nbd-client';
          args = [
            '-N', argv.export,
            '-b', String(argv['block-size']),
            '-C', String(argv.connections),
            ...(argv['nbd-timeout'] > 0 ? ['-timeout', String(argv['nbd-timeout'])] : []),
            host!, port!, argv.device,
          ];
        }
        if (argv['dry-run']) {
          print(argv, { command: [bin, ...args] }, () => [bin, ...args].join(' ') + '\n');
          return;
        }
        if (!argv.persist && !nbdClientPath()) throw new CliExit(EXIT.failed, 'nbd-client is not installed: apt-get install nbd-client (or use --persist)');
        ensureKernelNbd(argv.device);
        // The attacher goes to the background once the device is attached; its log lines
        // (one per event) go to our stderr, i.e. the journal under systemd.
        const run = spawnSync(bin, args, { encoding: 'utf8', stdio: argv.persist ? ['ignore', 'ignore', 'inherit'] : 'pipe' });
        if (run.status === 5) throw new CliExit(EXIT.noKernelNbd, 'the kernel has no nbd generic-netlink family: this kernel cannot attach NBD devices (modprobe nbd)');
        if (run.status !== 0) {
          const said = argv.persist ? 'see its message above' : (run.stderr || run.stdout).trim();
          throw new CliExit(EXIT.failed, `${argv.persist ? 'xdevice-nbd-attach' : 'nbd-client'} failed (exit ${run.status ?? run.signal}): ${said}`);
        }
        print(argv, { device: argv.device, export: argv.export, server: status.nbdAddress, persist: argv.persist }, () => `attached ${argv.export} at ${status.nbdAddress} as ${argv.device}\n`);
      },
    )
    .command(
      'detach',
      'detach a kernel NBD device (and stop the xdevice-nbd-attach that keeps it)',
      (y) => y.option('device', { type: 'string', default: '/dev/nbd0' }),
      async (argv) => {
        ensureKernelNbd(argv.device);
        // Our attacher stops its daemon and disconnects; a device nbd-client attached is
        // disconnected the same way (generic netlink), so either detaches both.
        const ours = attacherLocation();
        const bin = existsSync(ours) ? ours : nbdClientPath();
        if (!bin) throw new CliExit(EXIT.failed, 'neither xdevice-nbd-attach (npm rebuild) nor nbd-client (apt-get install nbd-client) is installed');
        const run = spawnSync(bin, bin === ours ? ['--disconnect', argv.device] : ['-d', argv.device], { encoding: 'utf8' });
        if (run.status !== 0) throw new CliExit(EXIT.failed, `${bin} ${bin === ours ? '--disconnect' : '-d'} failed: ${(run.stderr || run.stdout).trim()}`);
        print(argv, { device: argv.device, detached: true }, () => `detached ${argv.device}\n`);
      },
    );
}
