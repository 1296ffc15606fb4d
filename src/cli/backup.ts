// `xdevice-cli backup DEVICE --to DIR [--since SNAP] [--snapshot NAME]` and
// `xdevice-cli restore DIR --device NAME [--backup ID]`, in the ecosystem's
// own terms: the backup reads the snapshot's read-only NBD export
// DEVICE@NAME, and an incremental one reads only the blocks that the
// snapshots' qemu:dirty-bitmap contexts mark as changed since SNAP (the union
// of the bitmaps of the snapshots after SNAP, each relative to the one
// before). Blocks are stored by content hash, LZ4-compressed where that
// saves at least 1/8 (src/cli/backup-store.ts); the summary says how much.
// The NBD connection goes to the node the admin endpoint names (its
// nbdAddress), without TLS.

import type { Argv } from 'yargs';
import { NbdClient } from '../nbd/client.ts';
import { arg, CliExit, client, EXIT, type GlobalArgs, print } from './common.ts';
import { formatBytes } from './output.ts';
import { formatSize, parseDeviceName } from '../parse.ts';
import type { AdminClient } from './admin-client.ts';
import type { NodeStatus } from '../admin/api.ts';
import type { SnapshotInfo } from '../admin/api.ts';
import { snapshotNameProblem } from '../device/snapshots.ts';
import { limits } from '../limits.ts';
import { BACKUP_FORMAT, backupChain, BackupDir, blockBytesOf, type BackupManifest, composeChain, DamagedBlockError, isZeroBlock, ZERO } from './backup-store.ts';

const B = limits.snapshotBlockBytes;
/** Bytes asked for in one READ or BLOCK_STATUS. */
const STEP = 4 * 1024 * 1024;

function snapshotName(name: string): string {
  const problem = snapshotNameProblem(name);
  if (problem) throw new Error(problem);
  return name;
}

async function nbdAt(c: AdminClient): Promise<{ host: string; port: number }> {
  const { body } = await c.read<NodeStatus>('/status');
  const [host, port] = body.nbdAddress.split(/:(?=\d+$)/);
  return { host: host!.replace(/^\[|\]$/g, ''), port: Number(port) };
}

/**
 * A connection to an export of the node at `at`. That node may apply a
 * change the leader answered for (a new snapshot or device) a moment later:
 * a refused open is tried again for a few seconds.
 */
async function openExport(at: { host: string; port: number }, name: string, options: Parameters<NbdClient['openDevice']>[1]): Promise<NbdClient> {
  for (let attempt = 0; ; attempt++) {
    const nbd = await NbdClient.connect({ ...at, connectTimeoutMs: 10_000 });
    try {
      await nbd.openDevice(name, options);
      return nbd;
    } catch (err) {
      nbd.destroy();
      if (attempt >= 50) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Blocks flagged dirty in `exportName`'s meta context `context`. */
async function dirtyBlocks(at: { host: string; port: number }, exportName: string, context: string, size: number, into: Set<number>): Promise<void> {
  const nbd = await openExport(at, exportName, { metaContext: context });
  try {
    for (let offset = 0; offset < size; ) {
      const extents = await nbd.blockStatus(offset, Math.min(STEP, size - offset));
      let at2 = offset;
      for (const e of extents) {
        if (e.flags & 1) for (let b = Math.floor(at2 / B); b * B < at2 + e.length; b++) into.add(b);
        at2 += e.length;
      }
      if (at2 <= offset) throw new Error(`no progress in the ${context} map at ${offset}`);
      offset = at2;
    }
  } finally {
    await nbd.close().catch(() => nbd.destroy());
  }
}

async function backup(argv: GlobalArgs & { device: string; to: string; since?: string; snapshot?: string }): Promise<void> {
  const device = arg('DEVICE', () => parseDeviceName(argv.device));
  const since = argv.since === undefined ? undefined : arg('--since', () => snapshotName(argv.since!));
  const c = client(argv);
  const dir = new BackupDir(argv.to);
  await dir.init();
  const path = `/devices/${encodeURIComponent(device)}/snapshots`;
  let target: SnapshotInfo;
  if (argv.snapshot !== undefined) {
    const name = arg('--snapshot', () => snapshotName(argv.snapshot!));
    const found = (await c.read<{ snapshots: SnapshotInfo[] }>(path)).body.snapshots.find((s) => s.name === name);
    if (!found) throw new CliExit(EXIT.failed, `device ${device} has no snapshot ${name}`);
    target = found;
  } else {
    const name = `backup-${new Date().toISOString().replace(/[-:]/g, '').replace(/\..*$/, '')}`;
    target = (await c.change<SnapshotInfo>('POST', path, { name })).body;
  }
  // The node whose NBD server is read must know the snapshot (it has applied its creation).
  const at = await nbdAt(c);
  const snapshots = (await c.read<{ snapshots: SnapshotInfo[] }>(path)).body.snapshots;
  let parent: BackupManifest | undefined;
  let changed: Set<number> | undefined;
  if (since !== undefined) {
    const base = snapshots.find((s) => s.name === since);
    if (!base) throw new CliExit(EXIT.failed, `device ${device} has no snapshot ${since}`);
    if (base.index >= target.index) throw new CliExit(EXIT.failed, `snapshot ${since} is not older than ${target.name}`);
    parent = (await dir.manifests()).find((m) => m.device === device && m.snapshot.index === base.index);
    if (!parent) throw new CliExit(EXIT.failed, `${argv.to} holds no backup of ${device}@${since}: make a full one first (without --since)`);
    changed = new Set();
    for (const s of snapshots.filter((x) => x.index > base.index && x.index <= target.index)) await dirtyBlocks(at, s.export, `qemu:dirty-bitmap:${s.name}`, target.size, changed);
  }
  const nbd = await openExport(at, target.export, { blockStatus: false });
  const blocks: [number, string][] = [];
  try {
    const wanted = changed ? [...changed].sort((a, b) => a - b) : undefined;
    const read = async (b: number, data: Buffer): Promise<void> => {
      if (isZeroBlock(data)) {
        if (changed) blocks.push([b, ZERO]);
        return;
      }
      blocks.push([b, await dir.putBlock(data)]);
    };
    if (wanted) {
      for (const b of wanted) if (b * B < target.size) await read(b, await nbd.read(b * B, Math.min(B, target.size - b * B)));
    } else {
      for (let offset = 0; offset < target.size; offset += STEP) {
        const data = await nbd.read(offset, Math.min(STEP, target.size - offset));
        for (let at2 = 0; at2 < data.length; at2 += B) await read((offset + at2) / B, data.subarray(at2, at2 + B));
      }
    }
  } finally {
    await nbd.close().catch(() => nbd.destroy());
  }
  const manifest: BackupManifest = {
    format: BACKUP_FORMAT,
    id: `${device}-${target.index}`,
    device,
    size: target.size,
    blockBytes: B,
    snapshot: { name: target.name, index: target.index, createdAt: target.createdAt },
    kind: parent ? 'incremental' : 'full',
    ...(parent ? { parent: parent.id } : {}),
    blocks,
    createdAt: new Date().toISOString(),
  };
  await dir.putManifest(manifest);
  const savedBytes = dir.uncompressedBytes - dir.storedBytes;
  const summary = {
    id: manifest.id,
    kind: manifest.kind,
    format: manifest.format,
    snapshot: target.name,
    index: target.index,
    ...(parent ? { parent: parent.id } : {}),
    blocks: blocks.length,
    stored: dir.stored,
    deduplicated: dir.deduped,
    compressed: dir.compressed,
    /** Bytes of the blocks stored, as read from the device, and as written to the directory (LZ4 where it paid). */
    uncompressedBytes: dir.uncompressedBytes,
    storedBytes: dir.storedBytes,
    savedBytes,
  };
  print(
    argv,
    summary,
    () =>
      `${manifest.kind} backup ${manifest.id} of ${device}@${target.name} in ${argv.to}: ${blocks.length} block(s), ${dir.stored} stored ` +
      `(${formatBytes(dir.uncompressedBytes)} in ${formatBytes(dir.storedBytes)}; ${dir.compressed} LZ4-compressed, ${formatBytes(savedBytes)} saved), ${dir.deduped} already there\n`,
  );
}

async function restore(argv: GlobalArgs & { dir: string; device: string; backup?: string }): Promise<void> {
  const device = arg('--device', () => parseDeviceName(argv.device));
  const dir = new BackupDir(argv.dir);
  const all = await dir.manifests();
  if (all.length === 0) throw new CliExit(EXIT.failed, `${argv.dir} holds no backup`);
  const target = argv.backup !== undefined ? all.find((m) => m.id === argv.backup) : all[all.length - 1];
  if (!target) throw new CliExit(EXIT.failed, `${argv.dir} holds no backup ${argv.backup}`);
  const chain = backupChain(all, target);
  const blocks = composeChain(chain);
  const c = client(argv);
  await c.change('POST', '/devices', { name: device, size: target.size });
  const nbd = await openExport(await nbdAt(c), device, { blockStatus: false });
  let written = 0;
  try {
    for (const [b, hash] of [...blocks].sort((x, y) => x[0] - y[0])) {
      let data: Buffer;
      try {
        data = await dir.getBlock(hash, blockBytesOf(target, b));
      } catch (err) {
        if (!(err instanceof DamagedBlockError)) throw err;
        throw new CliExit(EXIT.failed, `${err.message} (block ${b} of ${target.id}): device ${device} holds only the ${written} block(s) before it; delete it (xdevice-cli device delete ${device}) or restore an older backup`);
      }
      await nbd.write(b * target.blockBytes, data);
      written++;
    }
    await nbd.sync();
  } finally {
    await nbd.close().catch(() => nbd.destroy());
  }
  const summary = { device, backup: target.id, chain: chain.map((m) => m.id), size: target.size, blocksWritten: written };
  print(argv, summary, () => `restored ${target.id} (${chain.map((m) => m.id).join(' + ')}) into new device ${device}: ${written} block(s) written, ${formatSize(target.size)}\n`);
}

export function backupCommands(y: Argv<GlobalArgs>): Argv<GlobalArgs> {
  return y
    .command(
      'backup <device>',
      'back a device up into a directory through a snapshot (a new one unless --snapshot); --since SNAP: only the blocks changed since that snapshot’s backup (qemu:dirty-bitmap)',
      (y) =>
        y
          .positional('device', { type: 'string', demandOption: true })
          .option('to', { type: 'string', demandOption: true, describe: 'backup directory (blocks stored once by content hash)' })
          .option('since', { type: 'string', describe: 'an older snapshot already backed up in --to: incremental' })
          .option('snapshot', { type: 'string', describe: 'back up this existing snapshot instead of taking a new one' }),
      (argv) => backup(argv as unknown as GlobalArgs & { device: string; to: string; since?: string; snapshot?: string }),
    )
    .command(
      'restore <dir>',
      'restore a backup (the newest unless --backup) into a new device, the chain from its full backup on',
      (y) =>
        y
          .positional('dir', { type: 'string', demandOption: true })
          .option('device', { type: 'string', demandOption: true, describe: 'name of the new device' })
          .option('backup', { type: 'string', describe: 'backup id (DEVICE-INDEX, as backup printed)' }),
      (argv) => restore(argv as unknown as GlobalArgs & { dir: string; device: string; backup?: string }),
    ) as unknown as Argv<GlobalArgs>;
}
