// xdevice-cli's device commands (create, list, delete, resize, set, verify,
// rekey) and `key rotate`: all go through the admin API's /devices and /keys.

import type { Argv } from 'yargs';
import type { AdminClient } from './admin-client.ts';
import { arg, CliExit, client, EXIT, type GlobalArgs, positiveSeconds, print, usage } from './common.ts';
import { formatSize, parseDeviceName, parseDeviceSize } from '../parse.ts';
import { ProgressBar, renderTable } from './output.ts';
import type { DeviceInfo, VerifyReport } from '../admin/api.ts';

/** Every endpoint's view of a device's connected NBD clients (those that answer). */
async function clientsOn(c: AdminClient, name: string): Promise<{ endpoint: string; clients: number }[]> {
  const out: { endpoint: string; clients: number }[] = [];
  for (const endpoint of c.endpoints) {
    try {
      const res = await c.call<{ devices: (DeviceInfo & { clients?: number })[] }>(endpoint, 'GET', '/devices');
      const d = res.status === 200 ? res.body.devices.find((x) => x.name === name) : undefined;
      if (d?.clients) out.push({ endpoint, clients: d.clients });
    } catch {
      // unreachable: the leader's own check still applies
    }
  }
  return out;
}

/**
 * Delete and shrink break clients that are attached: refused while any
 * endpoint reports one, unless --force, which first disconnects them on every
 * endpoint (the leader refuses on its own too).
 */
async function clearClients(c: AdminClient, name: string, force: boolean, what: string): Promise<void> {
  const busy = await clientsOn(c, name);
  if (busy.length === 0) return;
  const where = busy.map((b) => `${b.clients} on ${b.endpoint}`).join(', ');
  if (!force) throw new CliExit(EXIT.failed, `${name} has connected NBD clients (${where}); ${what} would break them. Disconnect them, or pass --force to disconnect them first`);
  for (const b of busy) await c.call(b.endpoint, 'POST', `/devices/${encodeURIComponent(name)}/disconnect`);
}

function devicesTable(devices: DeviceInfo[]): string {
  return renderTable(
    ['name', 'size', 'used', 'read-only', 'encryption', 'snapshots'],
    devices.map((d) => [d.name, formatSize(d.size), formatSize(d.usedBytes), d.readOnly, encryptionCell(d), d.snapshots ? `${d.snapshots} (${formatSize(d.snapshotBytes ?? 0)} held)` : '-']),
  );
}

/** "-", "gen 1 (kek k1)", "gen 1 (kek k1), rekey to 2: 40%", and "NOT SERVED HERE: why" when this node lacks the key. */
function encryptionCell(d: DeviceInfo): string {
  const e = d.encryption;
  if (!e) return '-';
  const rekey = e.rekey ? `, rekey to ${e.rekey.generation}: ${d.size > 0 ? Math.floor((100 * e.rekey.doneBytes) / d.size) : 100}%` : '';
  return `gen ${e.generation} (kek ${e.kekId})${rekey}${e.unavailable ? `; NOT SERVED HERE: ${e.unavailable}` : ''}`;
}

// ---- key rotate / device rekey -------------------------------------------------------

/** `key rotate`: the leader rewraps every data key with the newest key-encryption key of its key file. */
export function keyCommand(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y.command('key', 'encryption keys', (y) =>
    y
      .command('rotate', 'rewrap every encrypted device’s data key with the newest key-encryption key (the last line of the leader’s key file); no data is rewritten', {}, async (argv) => {
        const { body } = await client(argv as unknown as GlobalArgs).change<{ kekId: string; devices: string[] }>('POST', '/keys/rotate');
        print(argv as unknown as GlobalArgs, body, () => `data keys of ${body.devices.length} device(s) rewrapped with key-encryption key ${body.kekId}${body.devices.length ? `: ${body.devices.join(', ')}` : ''}\n`);
      })
      .demandCommand(1, 'say which: rotate'),
  ) as unknown as Argv<GlobalArgs>;
}

/** `device rekey NAME`: a new data key; the leader re-encrypts the device under writes; --wait shows progress. */
function deviceRekeyCommand(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y.command(
    'rekey <name>',
    'replace an encrypted device’s data key: re-encrypted in the background under writes, resumable after a crash (progress: device list)',
    (y) =>
      y
        .positional('name', { type: 'string', demandOption: true })
        .option('wait', { type: 'boolean', default: false, describe: 'wait until every block is under the new key, showing progress' }),
    async (argv) => {
      const name = arg('NAME', () => parseDeviceName(argv.name!));
      const c = client(argv);
      const { body } = await c.change<{ device: string; generation: number; watermark: number; size: number }>('POST', `/devices/${encodeURIComponent(name)}/rekey`);
      if (!argv.wait) {
        print(argv, body, () => `rekey of ${name} to key generation ${body.generation} started (${formatSize(body.size)})\n`);
        return;
      }
      const bar = new ProgressBar(`rekeying ${name}`);
      for (;;) {
        const d = (await c.read<{ devices: DeviceInfo[] }>('/devices')).body.devices.find((x) => x.name === name);
        if (!d?.encryption) throw new CliExit(EXIT.failed, `device ${name} is gone`);
        if (!d.encryption.rekey && d.encryption.generation >= body.generation) break;
        bar.update(d.encryption.rekey?.doneBytes ?? 0, d.size, formatSize(d.encryption.rekey?.doneBytes ?? 0));
        await new Promise((r) => setTimeout(r, 500));
      }
      bar.done(`every block under key generation ${body.generation}`);
      print(argv, { device: name, generation: body.generation }, () => '');
    },
  ) as unknown as Argv<GlobalArgs>;
}

// ---- device set / device verify ------------------------------------------------------

/** `device set NAME --read-only | --read-write`: the replicated read-only flag. */
function deviceSetCommand(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y.command(
    'set <name>',
    'change a device: --read-only (writes get EPERM; NBD clients see READ_ONLY) or --read-write',
    (y) =>
      y
        .positional('name', { type: 'string', demandOption: true })
        .option('read-only', { type: 'boolean', describe: 'refuse writes (clients connecting from now on see a read-only export)' })
        .option('read-write', { type: 'boolean', describe: 'accept writes again (clients reconnect to see a writable export)' }),
    async (argv) => {
      const name = arg('NAME', () => parseDeviceName(argv.name!));
      const ro = argv['read-only'] === true;
      const rw = argv['read-write'] === true;
      if (ro === rw) usage('device set: say --read-only or --read-write (one of them)');
      const { body } = await client(argv).change<{ devices: DeviceInfo[] }>('PATCH', `/devices/${encodeURIComponent(name)}`, { readOnly: ro });
      print(argv, body, () => devicesTable(body.devices));
    },
  ) as unknown as Argv<GlobalArgs>;
}

function verifyTable(r: VerifyReport): string {
  const lines = [
    `verify ${r.id} of ${r.device}: ${r.ranges} ranges of ${formatSize(r.rangeBytes)}, compared on ${r.verified.join(', ') || 'no node'}`,
    ...Object.entries(r.unavailable).map(([node, why]) => `${node}: not compared: ${why}`),
    ...(r.pending.length > 0 ? [`no result from ${r.pending.join(', ')}`] : []),
    r.mismatches.length === 0 ? (r.verified.length >= 2 ? 'no mismatching range' : 'fewer than two nodes compared: nothing to compare') : `${r.mismatches.length} mismatching range(s):`,
  ].join('\n');
  if (r.mismatches.length === 0) return lines + '\n';
  return lines + '\n' + renderTable(['range', 'offset', 'length', 'differs on', 'crc32c'], r.mismatches.map((m) => [m.range, m.offset, m.length, m.nodes.join(','), Object.entries(m.digests).map(([n, d]) => `${n}=${d}`).join(' ')]));
}

/**
 * `device verify NAME`: the replicas' content compared at one log index, like
 * `drbdadm verify`. Exit 0 when every member's checksums agree, 1 on a
 * mismatch or when a member gave none within --wait-timeout.
 */
function deviceVerifyCommand(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y.command(
    'verify <name>',
    'compare the replicas of a device at one log index (per-range CRC32C); exit 1 on a mismatch',
    (y) =>
      y
        .positional('name', { type: 'string', demandOption: true })
        .option('wait-timeout', { type: 'number', default: 120, describe: 'seconds to wait for every member’s checksums' }),
    async (argv) => {
      const name = arg('NAME', () => parseDeviceName(argv.name!));
      const waitTimeout = arg('--wait-timeout', () => positiveSeconds(argv['wait-timeout']));
      const c = client(argv);
      const started = await c.change<VerifyReport>('POST', `/devices/${encodeURIComponent(name)}/verify`);
      // The node that proposed it has applied it; it hears every result as it applies.
      let report = started.body;
      const deadline = Date.now() + waitTimeout * 1000;
      while (!report.complete && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 250));
        const res = await c.call<VerifyReport>(started.endpoint, 'GET', `/verify/${report.id}`);
        if (res.status === 200) report = res.body;
      }
      print(argv, report, () => verifyTable(report));
      if (report.mismatches.length > 0) throw new CliExit(EXIT.failed, `${report.mismatches.length} range(s) of ${name} differ between replicas`);
      if (!report.complete) throw new CliExit(EXIT.failed, `no checksums from ${report.pending.join(', ')} within ${waitTimeout} s`);
      if (Object.keys(report.unavailable).length > 0) throw new CliExit(EXIT.failed, `not compared on ${Object.keys(report.unavailable).join(', ')}`);
    },
  ) as unknown as Argv<GlobalArgs>;
}

/** `device create | list | delete | resize | set | verify | rekey`. */
export function deviceCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return deviceRekeyCommand(deviceVerifyCommand(deviceSetCommand(y)))
    .command(
      'create <name> <size>',
      'create a device',
      (y) =>
        y
          .positional('name', { type: 'string', demandOption: true })
          .positional('size', { type: 'string', demandOption: true })
          .option('read-only', { type: 'boolean', default: false, describe: 'create it read-only (device set --read-write makes it writable)' })
          .option('encrypt', { type: 'boolean', default: false, describe: 'encrypt it at rest (AES-256-XTS, 4 KiB blocks; the nodes need encryption-key-file)' }),
      async (argv) => {
        const name = arg('NAME', () => parseDeviceName(argv.name!));
        const size = arg('SIZE', () => parseDeviceSize(argv.size!));
        const { body } = await client(argv).change<{ devices: DeviceInfo[] }>('POST', '/devices', { name, size, ...(argv['read-only'] ? { readOnly: true } : {}), ...(argv.encrypt ? { encrypt: true } : {}) });
        print(argv, body, () => devicesTable(body.devices));
      },
    )
    .command('list', 'list devices', () => {}, async (argv) => {
      const { body } = await client(argv).read<{ devices: DeviceInfo[] }>('/devices');
      print(argv, body, () => devicesTable(body.devices));
    })
    .command(
      'delete <name>',
      'delete a device and its data',
      (y) =>
        y
          .positional('name', { type: 'string', demandOption: true })
          .option('force', { type: 'boolean', default: false, describe: 'disconnect connected NBD clients first (otherwise refused while any is connected)' }),
      async (argv) => {
        const name = arg('NAME', () => parseDeviceName(argv.name!));
        const c = client(argv);
        await clearClients(c, name, argv.force, 'deleting it');
        const { body } = await c.change<{ devices: DeviceInfo[] }>('DELETE', `/devices/${encodeURIComponent(name)}${argv.force ? '?force=1' : ''}`);
        print(argv, body, () => devicesTable(body.devices));
      },
    )
    .command(
      'resize <name> <size>',
      'resize a device (shrinking needs --allow-shrink: it discards the tail)',
      (y) =>
        y
          .positional('name', { type: 'string', demandOption: true })
          .positional('size', { type: 'string', demandOption: true })
          .option('allow-shrink', { type: 'boolean', default: false, describe: 'allow a smaller size (the data past it is lost)' })
          .option('force', { type: 'boolean', default: false, describe: 'when shrinking, disconnect connected NBD clients first' }),
      async (argv) => {
        const name = arg('NAME', () => parseDeviceName(argv.name!));
        const size = arg('SIZE', () => parseDeviceSize(argv.size!));
        const c = client(argv);
        const current = (await c.read<{ devices: DeviceInfo[] }>('/devices')).body.devices.find((d) => d.name === name);
        if (current && size < current.size) {
          if (!argv['allow-shrink']) usage(`SIZE: ${formatSize(size)} is smaller than ${name}'s ${formatSize(current.size)}; shrinking discards the data past it: pass --allow-shrink`);
          await clearClients(c, name, argv.force, 'shrinking it');
        }
        const { body } = await c.change<{ devices: DeviceInfo[] }>('PATCH', `/devices/${encodeURIComponent(name)}`, {
          size,
          allowShrink: argv['allow-shrink'],
          force: argv.force,
        });
        print(argv, body, () => devicesTable(body.devices));
      },
    )
    .demandCommand(1, 'say which: create, list, delete, resize, set, verify, rekey') as unknown as Argv<GlobalArgs>;
}
