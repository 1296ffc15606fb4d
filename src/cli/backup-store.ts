// The on-disk format of `xdevice-cli backup` / `restore` (src/cli/backup.ts):
// a directory of content-addressed blocks and one manifest per backup.
//
//   DIR/blocks/<hh>/<sha256>     one block's bytes (limits.snapshotBlockBytes, the last one may be
//                                shorter), named by its SHA-256: a block that is the same in two
//                                backups, or twice in one device, is stored once
//   DIR/backups/<id>.json        BackupManifest
//
// A full backup lists every block that is not all zeroes (the others read as
// zeroes); an incremental one names its parent and lists the blocks that
// changed since it (the snapshot's qemu:dirty-bitmap), ZERO for a block that
// became all zeroes. A restore composes the chain from the full backup on.
// Files are written to a temporary name, fsync'd and renamed, so a backup cut
// short leaves no manifest naming blocks that are not there.

import { createHash } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';

export const BACKUP_FORMAT = 'xdevice-backup/1';
/** A block that is all zeroes (incremental manifests only). */
export const ZERO = 'zero';

export interface BackupManifest {
  format: typeof BACKUP_FORMAT;
  id: string;
  device: string;
  size: number;
  blockBytes: number;
  /** The snapshot read: its name and log index. */
  snapshot: { name: string; index: number; createdAt: string };
  kind: 'full' | 'incremental';
  /** Incremental: the backup this one builds on (of an older snapshot of the same device). */
  parent?: string;
  /** [block number, SHA-256 hex or ZERO], ascending. */
  blocks: [number, string][];
  createdAt: string;
}

export function hashBlock(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

export function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}

async function writeDurable(path: string, data: Buffer): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class BackupDir {
  /** Blocks written by this process (new) and found already stored (deduplicated). */
  stored = 0;
  deduped = 0;
  storedBytes = 0;
  private readonly dirty = new Set<string>();

  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await mkdir(join(this.dir, 'blocks'), { recursive: true });
    await mkdir(join(this.dir, 'backups'), { recursive: true });
  }

  private blockPath(hash: string): string {
    return join(this.dir, 'blocks', hash.slice(0, 2), hash);
  }

  /** Stores a block unless one with its hash is there; returns its hash. */
  async putBlock(b: Buffer): Promise<string> {
    const hash = hashBlock(b);
    const path = this.blockPath(hash);
    if (await stat(path).then(() => true, () => false)) {
      this.deduped++;
      return hash;
    }
    await mkdir(join(this.dir, 'blocks', hash.slice(0, 2)), { recursive: true });
    await writeDurable(path, b);
    this.dirty.add(join(this.dir, 'blocks', hash.slice(0, 2)));
    this.stored++;
    this.storedBytes += b.length;
    return hash;
  }

  /** A stored block, checked against its hash. */
  async getBlock(hash: string): Promise<Buffer> {
    const b = await readFile(this.blockPath(hash));
    if (hashBlock(b) !== hash) throw new Error(`block ${hash} in ${this.dir} is damaged (its content hashes differently)`);
    return b;
  }

  /** Writes the manifest last: once it is there, every block it names is durable. */
  async putManifest(m: BackupManifest): Promise<void> {
    for (const d of this.dirty) await syncDirectory(d);
    this.dirty.clear();
    await writeDurable(join(this.dir, 'backups', `${m.id}.json`), Buffer.from(JSON.stringify(m, null, 1)));
    await syncDirectory(join(this.dir, 'backups'));
  }

  async manifests(): Promise<BackupManifest[]> {
    const names = await readdir(join(this.dir, 'backups')).catch(() => [] as string[]);
    const out: BackupManifest[] = [];
    for (const n of names.filter((x) => x.endsWith('.json'))) {
      const m = JSON.parse(await readFile(join(this.dir, 'backups', n), 'utf8')) as BackupManifest;
      if (m.format !== BACKUP_FORMAT) throw new Error(`${n}: not an ${BACKUP_FORMAT} manifest`);
      out.push(m);
    }
    return out.sort((a, b) => a.snapshot.index - b.snapshot.index || a.id.localeCompare(b.id));
  }
}

/** The chain a restore of `target` applies: the full backup first, `target` last. */
export function backupChain(all: readonly BackupManifest[], target: BackupManifest): BackupManifest[] {
  const byId = new Map(all.map((m) => [m.id, m]));
  const chain: BackupManifest[] = [target];
  for (let m = target; m.kind === 'incremental'; ) {
    const parent = m.parent === undefined ? undefined : byId.get(m.parent);
    if (!parent) throw new Error(`backup ${m.id} builds on ${m.parent ?? '(none)'}, which is not in the directory`);
    if (parent.device !== m.device || parent.size !== m.size || parent.blockBytes !== m.blockBytes) throw new Error(`backup ${m.id} and its parent ${parent.id} are of different devices or geometries`);
    if (chain.includes(parent)) throw new Error(`backup chain of ${target.id} loops`);
    chain.unshift(parent);
    m = parent;
  }
  return chain;
}

/** Block → hash as of the chain's last backup (blocks absent read as zeroes). */
export function composeChain(chain: readonly BackupManifest[]): Map<number, string> {
  const blocks = new Map<number, string>();
  for (const m of chain) {
    for (const [b, h] of m.blocks) {
      if (h === ZERO) blocks.delete(b);
      else blocks.set(b, h);
    }
  }
  return blocks;
}
