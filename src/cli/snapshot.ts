// xdevice-cli's snapshot commands: `snapshot create | list | delete DEVICE
// NAME`, through the admin API's /devices/NAME/snapshots. A snapshot is
// served as the read-only NBD export DEVICE@NAME, with the meta context
// qemu:dirty-bitmap:NAME (src/replica/snapshot-export.ts).

import type { Argv } from 'yargs';
import { arg, client, type GlobalArgs, print } from './common.ts';
import { formatSize, parseDeviceName } from '../parse.ts';
import { renderTable } from './output.ts';
import type { SnapshotInfo } from '../admin/api.ts';
import { snapshotNameProblem } from '../device/snapshots.ts';

function snapshotName(name: string): string {
  const problem = snapshotNameProblem(name);
  if (problem) throw new Error(problem);
  return name;
}

function snapshotsTable(snapshots: SnapshotInfo[]): string {
  return renderTable(
    ['name', 'index', 'created', 'size', 'held', 'export'],
    snapshots.map((s) => [s.name, s.index, s.createdAt, formatSize(s.size), formatSize(s.heldBytes), s.unavailable ? `${s.export} (NOT SERVED HERE: ${s.unavailable})` : s.export]),
  );
}

export function snapshotCommand(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y.command('snapshot', 'point-in-time snapshots of devices (read-only exports DEVICE@NAME)', (y) =>
    y
      .command(
        'create <device> <name>',
        'take a snapshot of a device at one log index (copy-on-write: nothing is copied now)',
        (y) => y.positional('device', { type: 'string', demandOption: true }).positional('name', { type: 'string', demandOption: true }),
        async (argv) => {
          const device = arg('DEVICE', () => parseDeviceName(argv.device!));
          const name = arg('NAME', () => snapshotName(argv.name!));
          const { body } = await client(argv as unknown as GlobalArgs).change<SnapshotInfo>('POST', `/devices/${encodeURIComponent(device)}/snapshots`, { name });
          print(argv as unknown as GlobalArgs, body, () => snapshotsTable([body]));
        },
      )
      .command(
        'list <device>',
        'list a device’s snapshots: name, log index, created, bytes held on the node asked',
        (y) => y.positional('device', { type: 'string', demandOption: true }),
        async (argv) => {
          const device = arg('DEVICE', () => parseDeviceName(argv.device!));
          const { body } = await client(argv as unknown as GlobalArgs).read<{ snapshots: SnapshotInfo[] }>(`/devices/${encodeURIComponent(device)}/snapshots`);
          print(argv as unknown as GlobalArgs, body, () => snapshotsTable(body.snapshots));
        },
      )
      .command(
        'delete <device> <name>',
        'delete a snapshot (its blocks that an older snapshot needs move to that one)',
        (y) => y.positional('device', { type: 'string', demandOption: true }).positional('name', { type: 'string', demandOption: true }),
        async (argv) => {
          const device = arg('DEVICE', () => parseDeviceName(argv.device!));
          const name = arg('NAME', () => snapshotName(argv.name!));
          const { body } = await client(argv as unknown as GlobalArgs).change<{ snapshots: SnapshotInfo[] }>('DELETE', `/devices/${encodeURIComponent(device)}/snapshots`, { name });
          print(argv as unknown as GlobalArgs, body, () => snapshotsTable(body.snapshots));
        },
      )
      .demandCommand(1, 'say which: create, list, delete'),
  ) as unknown as Argv<GlobalArgs>;
}
