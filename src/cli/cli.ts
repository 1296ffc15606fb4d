// xdevice-cli: manage a cluster the way etcdctl does. The global options,
// output and exit codes are in common.ts; the device and key commands in
// device.ts, the audit commands in audit.ts, attach/detach in attach.ts.

import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { AdminClient, AdminClientError, endpointAddress } from './admin-client.ts';
import { addClient } from './client-add.ts';
import { formatSize, parseNodeId, parsePeers } from '../parse.ts';
import { ProgressBar, renderTable, type OutputFormat } from './output.ts';
import { clusterHealth, clusterStatus, endpointHealth, endpointStatus, healthTable, statusTable } from './cluster-status.ts';
import { VERSION } from '../version.ts';
import { auditCommands } from './audit.ts';
import { arg, CliExit, client, EXIT, type GlobalArgs, positiveSeconds, print, usage } from './common.ts';
import { deviceCommands, keyCommand } from './device.ts';
import { attachCommands } from './attach.ts';
import { snapshotCommand } from './snapshot.ts';
import { backupCommands } from './backup.ts';
import type { Member, NodeStatus } from '../admin/api.ts';

export { EXIT } from './common.ts';

function membersTable(members: Member[]): string {
  return renderTable(
    ['id', 'address', 'role', 'admin', 'nbd', 'version'],
    members.map((m) => [m.id, m.address, m.voter ? 'voter' : 'learner', m.adminAddress, m.nbdAddress, m.version]),
  );
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

export function buildCli(args: string[]): Argv<GlobalArgs> {
  return attachCommands(backupCommands(snapshotCommand(keyCommand(
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
  ))))
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
    .command('device', 'manage devices (exports)', (y) => deviceCommands(y as unknown as Argv<GlobalArgs>))
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
    .command('audit', 'read and check the audit trail', (y) => auditCommands(y as unknown as Argv<GlobalArgs>))
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
