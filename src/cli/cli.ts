// xdevice-cli: manage a cluster the way etcdctl does.
//
// Exit codes a script can rely on:
//   0 success · 1 the operation failed (refused, not found, timeout)
//   2 usage error · 3 no endpoint reachable / no leader · 4 not authorised
//   5 the kernel cannot attach NBD devices

import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { AdminClient, AdminClientError, endpointAddress, type AdminClientTls } from './admin-client.ts';
import { addClient } from './client-add.ts';
import { formatSize, parseDeviceName, parseDeviceSize, parseNodeId, parsePeers } from '../parse.ts';
import { ProgressBar, renderTable, type OutputFormat } from './output.ts';
import { clusterHealth, clusterStatus, endpointHealth, endpointStatus, healthTable, statusTable } from './cluster-status.ts';
import { VERSION } from '../version.ts';
import { auditCommands } from './audit.ts';
import type { DeviceInfo, Member, NodeStatus, VerifyReport } from '../admin/api.ts';

export const EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3, unauthorised: 4, noKernelNbd: 5 } as const;

interface GlobalArgs {
  endpoints: string;
  w: OutputFormat;
  token: string;
  cacert: string;
  cert: string;
  key: string;
  timeout: number;
}

class CliExit extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
  }
}

function usage(message: string): never {
  throw new CliExit(EXIT.usage, message);
}

function fail(message: string): never {
  throw new CliExit(EXIT.failed, message);
}

/** Runs one of the configuration's parsers on an argument; its complaint is a usage error naming the argument. */
function arg<T>(what: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    return usage(`${what}: ${(err as Error).message}`);
  }
}

function client(argv: GlobalArgs): AdminClient {
  const endpoints = argv.endpoints.split(',').map((s) => s.trim()).filter(Boolean);
  return new AdminClient(endpoints, argv.token, argv.timeout * 1000, clientTls(argv));
}

/** --cacert/--cert/--key as PEM contents (any of them means HTTPS), or undefined for none. */
function clientTls(argv: GlobalArgs): AdminClientTls | undefined {
  if (!argv.cacert && !argv.cert && !argv.key) return undefined;
  if (!argv.cert !== !argv.key) usage('--cert and --key go together');
  const read = (flag: string, path: string): Buffer | undefined => (path ? arg(flag, () => readFileSync(path)) : undefined);
  return { ca: read('--cacert', argv.cacert), cert: read('--cert', argv.cert), key: read('--key', argv.key) };
}

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

function print(argv: GlobalArgs, json: unknown, table: () => string): void {
  process.stdout.write(argv.w === 'json' ? JSON.stringify(json, null, 2) + '\n' : table());
}

function membersTable(members: Member[]): string {
  return renderTable(
    ['id', 'address', 'role', 'admin', 'nbd', 'version'],
    members.map((m) => [m.id, m.address, m.voter ? 'voter' : 'learner', m.adminAddress, m.nbdAddress, m.version]),
  );
}

function devicesTable(devices: DeviceInfo[]): string {
  return renderTable(
    ['name', 'size', 'used', 'read-only', 'encryption'],
    devices.map((d) => [d.name, formatSize(d.size), formatSize(d.usedBytes), d.readOnly, encryptionCell(d)]),
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
function keyCommand(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
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

/** The device subcommands kept apart from the chain in buildCli (set, verify). */
function deviceExtraCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return deviceRekeyCommand(deviceVerifyCommand(deviceSetCommand(y)));
}

/**
 * Polls the leader until `id` has caught up (and, with `voter`, been promoted
 * by the leader), drawing a progress bar: snapshot bytes, then entries behind.
 */
async function waitCaughtUp(c: AdminClient, id: string, timeoutMs: number, voter: boolean): Promise<void> {
  const bar = new ProgressBar(`catching up ${id}`);
  const deadline = Date.now() + timeoutMs;
  let startLag: number | undefined;
  for (;;) {
    const leader = await c.findLeader();
    const { body: status } = await c.call<NodeStatus>(leader, 'GET', '/status');
    const peer = status.peers.find((p) => p.id === id);
    if (peer) {
      const snap = status.snapshot?.peer === id ? status.snapshot : undefined;
      if (snap) {
        bar.update(snap.bytesDone, snap.bytesTotal, `snapshot ${formatSize(snap.bytesDone)} / ${formatSize(snap.bytesTotal)}`);
      } else {
        startLag ??= Math.max(peer.lagEntries, 1);
        bar.update(startLag - Math.min(peer.lagEntries, startLag), startLag, `${peer.lagEntries} entries behind${peer.voter ? '' : ' (learner)'}`);
        if (peer.lagEntries === 0 && peer.match > 0 && (!voter || peer.voter)) {
          bar.done(peer.voter ? 'caught up; voting' : 'caught up; still a learner (members promote to make it vote)');
          return;
        }
      }
    }
    if (Date.now() > deadline) {
      throw new CliExit(EXIT.failed, `${id} did not catch up within ${timeoutMs / 1000} s; it stays a learner (see members list; remove-node --id=${id} removes it)`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

function nbdClientPath(): string | undefined {
  for (const p of ['/usr/sbin/nbd-client', '/sbin/nbd-client', '/usr/bin/nbd-client']) if (existsSync(p)) return p;
  return undefined;
}

function ensureKernelNbd(device: string): void {
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

export function buildCli(args: string[]): Argv<GlobalArgs> {
  return keyCommand(
    yargs(args)
    .scriptName('xdevice-cli')
    .usage('$0 [--endpoints HOST:PORT,...] [-w table|json] COMMAND')
    .option('endpoints', {
      type: 'string',
      default: process.env.XDEVICE_ENDPOINTS ?? '127.0.0.1:10819',
      describe: 'admin API addresses of cluster nodes (any node; changes follow the leader)',
    })
    .option('w', { alias: 'write-out', choices: ['table', 'json'] as const, default: 'table' as OutputFormat, describe: 'output format' })
    .option('token', { type: 'string', default: process.env.XDEVICE_ADMIN_TOKEN ?? '', describe: 'admin API bearer token (or XDEVICE_ADMIN_TOKEN)' })
    .option('cacert', { type: 'string', default: process.env.XDEVICE_ADMIN_CACERT ?? '', describe: 'CA (PEM) of an HTTPS admin API (or XDEVICE_ADMIN_CACERT); implies HTTPS' })
    .option('cert', { type: 'string', default: process.env.XDEVICE_ADMIN_CERT ?? '', describe: 'client certificate (PEM) for an HTTPS admin API (or XDEVICE_ADMIN_CERT); its CN names the client' })
    .option('key', { type: 'string', default: process.env.XDEVICE_ADMIN_KEY ?? '', describe: 'private key (PEM) of --cert (or XDEVICE_ADMIN_KEY)' })
    .option('timeout', { type: 'string', default: '10', describe: 'seconds to wait for one request' })
    .coerce('timeout', (v: unknown): number => {
      if (Array.isArray(v)) usage('--timeout given more than once');
      return arg('--timeout', () => positiveSeconds(v));
    })
    .coerce('endpoints', (v: unknown): string => {
      if (Array.isArray(v)) usage('--endpoints given more than once: give one comma-separated list (--endpoints=H:P,H:P)');
      const list = String(v).split(',').map((e) => e.trim()).filter(Boolean);
      if (list.length === 0) usage('--endpoints: no endpoint given');
      for (const e of list) arg('--endpoints', () => endpointAddress(e));
      return list.join(',');
    }) as unknown as Argv<GlobalArgs>
  )
    .command(
      'status',
      'status of every endpoint (--cluster: of every member, found through the member list)',
      (y) => y.option('cluster', { type: 'boolean', default: false, describe: 'ask one endpoint for the members, then every member at its published admin address' }),
      async (argv) => {
        const c = client(argv);
        const rows = argv.cluster ? await clusterStatus(c) : await endpointStatus(c);
        print(argv, rows, () => statusTable(rows));
        if (rows.every((r) => r.error === 'unauthorised')) throw new CliExit(EXIT.unauthorised, 'not authorised (give --token, or --cert/--key)');
        if (rows.every((r) => r.error)) throw new CliExit(EXIT.unreachable, argv.cluster ? 'no member answered' : 'no endpoint answered');
      },
    )
    .command(
      'health',
      'health of every endpoint (--cluster: of every member; exit 1 if any is unhealthy)',
      (y) => y.option('cluster', { type: 'boolean', default: false, describe: 'ask one endpoint for the members, then every member at its published admin address' }),
      async (argv) => {
        const c = client(argv);
        const rows = argv.cluster ? await clusterHealth(c) : await endpointHealth(c);
        print(argv, rows, () => healthTable(rows));
        if (rows.every((r) => r.error && r.error !== 'unauthorised')) throw new CliExit(EXIT.unreachable, 'no endpoint answered');
        if (rows.some((r) => r.error === 'unauthorised')) throw new CliExit(EXIT.unauthorised, 'not authorised (give --token, or --cert/--key)');
        if (!rows.every((r) => r.healthy)) throw new CliExit(EXIT.failed, 'unhealthy endpoints');
      },
    )
    .command(
      ['members [action] [id]', 'member [action] [id]'],
      'members list | members promote ID (make a caught-up learner a voter)',
      (y) => y.positional('action', { choices: ['list', 'promote'], default: 'list' }).positional('id', { type: 'string', describe: 'the learner to promote' }),
      async (argv) => {
        if (argv.action === 'promote') {
          if (!argv.id) usage('members promote: say which learner (members promote ID)');
          const id = arg('ID', () => parseNodeId(String(argv.id)));
          const { body } = await client(argv).change<{ members: Member[] }>('POST', `/members/${encodeURIComponent(id)}/promote`);
          print(argv, body, () => membersTable(body.members));
          return;
        }
        if (argv.id !== undefined) usage(`members list takes no argument (got "${argv.id}")`);
        const { body } = await client(argv).read<{ members: Member[] }>('/members');
        print(argv, body, () => membersTable(body.members));
      },
    )
    .command(
      'add-node',
      'add a node: it joins as a learner, catches up (snapshot + log), then votes',
      (y) =>
        y
          .option('id', { type: 'string', demandOption: true, describe: 'new node id' })
          .option('address', { type: 'string', demandOption: true, describe: 'its peer address HOST:PORT' })
          .option('wait', { type: 'boolean', default: true, describe: 'wait (with a progress bar) until it has caught up and votes' })
          .option('promote', { type: 'boolean', default: true, describe: 'make it a voter once caught up (--no-promote: stays a learner until `members promote`)' })
          .option('wait-timeout', { type: 'number', default: 600, describe: 'seconds to wait for the catch-up' }),
      async (argv) => {
        const peers = arg('--id/--address', () => parsePeers(`${argv.id}=${argv.address}`));
        const waitTimeout = arg('--wait-timeout', () => positiveSeconds(argv['wait-timeout']));
        const c = client(argv);
        // The leader connects to the new node first and refuses if it cannot; the learner is then
        // promoted by the leader once caught up (an interrupted add-node leaves a learner).
        const { body } = await c.change<{ members: Member[] }>('POST', '/members', { id: argv.id, address: peers[argv.id], promote: argv.promote, wait: false });
        if (argv.wait) {
          const interrupted = () => {
            process.stderr.write(`\ninterrupted: ${argv.id} stays a learner until it has caught up (members list shows it; remove-node --id=${argv.id} removes it)\n`);
            process.exit(EXIT.failed);
          };
          process.once('SIGINT', interrupted);
          await waitCaughtUp(c, argv.id, waitTimeout * 1000, argv.promote).finally(() => process.off('SIGINT', interrupted));
        }
        const members = argv.wait ? (await c.read<{ members: Member[] }>('/members')).body : body;
        print(argv, members, () => membersTable(members.members));
      },
    )
    .command(
      'remove-node',
      'remove a node from the cluster',
      (y) => y.option('id', { type: 'string', demandOption: true }),
      async (argv) => {
        arg('--id', () => parseNodeId(String(argv.id)));
        const { body } = await client(argv).change<{ members: Member[] }>('DELETE', `/members/${encodeURIComponent(argv.id)}`);
        print(argv, body, () => membersTable(body.members));
      },
    )
    .command(
      'transfer-leader',
      'move leadership to another voter',
      (y) => y.option('to', { type: 'string', demandOption: true }),
      async (argv) => {
        const c = client(argv);
        await c.change('POST', '/leader', { to: argv.to });
        const rows = await endpointStatus(c);
        print(argv, rows, () => statusTable(rows));
      },
    )
    .command('device', 'manage devices (exports)', (y) =>
      deviceExtraCommands(y as unknown as Argv<GlobalArgs>)
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
        .demandCommand(1, 'say which: create, list, delete, resize, set, verify, rekey'),
    )
    .command('client', 'admin API clients (the node’s admin-clients-file)', (y) =>
      y
        .command(
          'add',
          'mint a client: a token client gets a new token, printed once (only its hash is stored); --kind cert maps a certificate CN instead',
          (y) =>
            y
              .option('name', { type: 'string', demandOption: true, describe: 'client name (with --kind cert: the certificate subject CN)' })
              .option('role', { choices: ['viewer', 'operator', 'admin'] as const, demandOption: true, describe: 'viewer: reads; operator: + devices and leadership; admin: + membership' })
              .option('file', { type: 'string', demandOption: true, describe: 'the clients file (created mode 600); send the node SIGHUP to load it' })
              .option('kind', { choices: ['token', 'cert'] as const, default: 'token' as const, describe: 'token: a new bearer token; cert: a client certificate (verified by admin-tls-ca) whose subject CN is --name' }),
          (argv) => {
            let added;
            try {
              added = addClient({ file: argv.file, name: argv.name, role: argv.role, cert: argv.kind === 'cert' });
            } catch (err) {
              throw new CliExit(EXIT.failed, `client add: ${(err as Error).message}`);
            }
            print(argv, added, () =>
              added.token !== undefined
                ? `${added.token}\n# client ${added.name} (${added.role}) added to ${added.file}; this token is shown once: keep it (xdevice-cli --token, XDEVICE_ADMIN_TOKEN); SIGHUP the node to load it\n`
                : `# certificate CN ${added.name} (${added.role}) added to ${added.file}; SIGHUP the node to load it\n`,
            );
          },
        )
        .demandCommand(1, 'say which: add'),
    )
    .command('audit', 'read and check the audit trail', (y) => auditCommands(y, { client: (a) => client(a as GlobalArgs), print: (a, json, table) => print(a as GlobalArgs, json, table), usage, fail }))
    .command(
      'attach',
      'attach an export to a kernel NBD device with nbd-client',
      (y) =>
        y
          .option('device', { type: 'string', default: '/dev/nbd0', describe: 'the kernel device' })
          .option('export', { type: 'string', default: 'default', describe: 'export (device) name' })
          .option('connections', { type: 'number', default: 1, describe: 'connections (the export allows several: CAN_MULTI_CONN)' })
          .option('block-size', { type: 'number', default: 4096 })
          .option('persist', { type: 'boolean', default: true, describe: 'nbd-client -persist: ask nbd-client to reconnect when the connection drops' })
          .option('nbd-timeout', { type: 'number', default: 60, describe: 'nbd-client -timeout: seconds a request may wait before the kernel fails it' })
          .option('dry-run', { type: 'boolean', default: false, describe: 'print the nbd-client command instead of running it' }),
      async (argv) => {
        const c = client(argv);
        const { body: status } = await c.read<NodeStatus>('/status');
        const [host, port] = status.nbdAddress.split(/:(?=\d+$)/);
        const args = [
          '-N', argv.export,
          '-b', String(argv['block-size']),
          '-C', String(argv.connections),
          ...(argv.persist ? ['-persist'] : []),
          ...(argv['nbd-timeout'] > 0 ? ['-timeout', String(argv['nbd-timeout'])] : []),
          host!, port!, argv.device,
        ];
        const bin = nbdClientPath();
        if (argv['dry-run']) {
          print(argv, { command: [bin ?? 'nbd-client', ...args] }, () => [bin ?? 'nbd-client', ...args].join(' ') + '\n');
          return;
        }
        if (!bin) throw new CliExit(EXIT.failed, 'nbd-client is not installed: apt-get install nbd-client');
        ensureKernelNbd(argv.device);
        const run = spawnSync(bin, args, { encoding: 'utf8' });
        if (run.status !== 0) throw new CliExit(EXIT.failed, `nbd-client failed: ${(run.stderr || run.stdout).trim()}`);
        print(argv, { device: argv.device, export: argv.export, server: status.nbdAddress }, () => `attached ${argv.export} at ${status.nbdAddress} as ${argv.device}\n`);
      },
    )
    .command(
      'detach',
      'detach a kernel NBD device',
      (y) => y.option('device', { type: 'string', default: '/dev/nbd0' }),
      async (argv) => {
        const bin = nbdClientPath();
        if (!bin) throw new CliExit(EXIT.failed, 'nbd-client is not installed: apt-get install nbd-client');
        ensureKernelNbd(argv.device);
        const run = spawnSync(bin, ['-d', argv.device], { encoding: 'utf8' });
        if (run.status !== 0) throw new CliExit(EXIT.failed, `nbd-client -d failed: ${(run.stderr || run.stdout).trim()}`);
        print(argv, { device: argv.device, detached: true }, () => `detached ${argv.device}\n`);
      },
    )
    .completion('completion', 'print a bash completion script (eval "$(xdevice-cli completion)", or save it under /etc/bash_completion.d/)')
    .demandCommand(1, 'say which command (see --help)')
    .strict()
    .strictCommands()
    .help()
    .version(VERSION) as unknown as Argv<GlobalArgs>;
}

function exitCodeFor(err: unknown): number {
  if (err instanceof CliExit) return err.exitCode;
  if (err instanceof AdminClientError) {
    if (err.code === 'XDEVICE_ERR_UNREACHABLE' || err.code === 'XDEVICE_ERR_NO_LEADER') return EXIT.unreachable;
    if (err.code === 'XDEVICE_ERR_UNAUTHORIZED' || err.code === 'XDEVICE_ERR_FORBIDDEN') return EXIT.unauthorised;
    if (err.code === 'XDEVICE_ERR_CONFIG') return EXIT.usage;
  }
  return EXIT.failed;
}

function positiveSeconds(v: unknown): number {
  const n = typeof v === 'number' ? v : Number(String(v).trim());
  if (String(v).trim() === '' || !Number.isFinite(n) || n <= 0 || n > 86_400) throw new Error(`not a number of seconds in (0, 86400]: "${String(v)}"`);
  return n;
}

export async function main(argv = hideBin(process.argv)): Promise<number> {
  // `xdevice-cli … | head`: a reader that goes away is not an error worth a trace.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? EXIT.ok);
  });
  // A usage error must stop yargs before any handler runs: throwing from
  // fail() does (returning would let the command go ahead and act).
  const cli = buildCli(argv).fail((msg, err) => {
    // yargs reports its own complaints (and a coerce that threw) as YError: usage.
    if (err && err.name !== 'YError') throw err;
    throw new CliExit(EXIT.usage, msg ?? err?.message ?? 'usage error');
  });
  try {
    await cli.parseAsync();
  } catch (err) {
    const code = exitCodeFor(err);
    process.stderr.write(`Error: ${(err as Error).message}\n${code === EXIT.usage ? '(see xdevice-cli --help)\n' : ''}`);
    return code;
  }
  return EXIT.ok;
}
