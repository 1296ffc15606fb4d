// The on-disk format of `xdevice-cli backup` / `restore` (src/cli/backup.ts):
// a directory of content-addressed blocks and one manifest per backup.
//
//   DIR/blocks/<hh>/<sha256>     one block's bytes (limits.snapshotBlockBytes, the last one may be
//                                shorter), named by its SHA-256: a block that is the same in two
//                                backups, or twice in one device, is stored once
//   DIR/blocks/<hh>/<sha256>.lz4 the same block LZ4-compressed (src/device/lz4.ts: a u32le length
//                                prefix, then one raw LZ4 block), stored so when that saves at least
//                                1/8 of it; the name is still the hash of the UNCOMPRESSED bytes, so
//                                deduplication does not depend on compression, and a restore checks
//                                the hash after decompressing
//   DIR/backups/<id>.json        BackupManifest
//
// Formats: xdevice-backup/1 stored every block raw; xdevice-backup/2 (this
// version) may store any block compressed. A restore reads both (a directory
// may hold both, and a /2 backup reuses the raw blocks of a /1 one); a
// manifest of any other format is refused, naming it. An xdevice-cli that
// knows only /1 refuses a /2 manifest the same way, so it never meets a
// block it cannot read.
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
import { compressBlock, compressionPays, decompressBlock } from '../device/lz4.ts';
import { limits } from '../limits.ts';

/** The format backups are written in. */
export const BACKUP_FORMAT = 'xdevice-backup/2';
/** Every format a restore reads: /1 stored all blocks raw. */
export const BACKUP_FORMATS_READ = ['xdevice-backup/1', BACKUP_FORMAT] as const;
export type BackupFormat = (typeof BACKUP_FORMATS_READ)[number];
/** A block that is all zeroes (incremental manifests only). */
export const ZERO = 'zero';
/** The suffix of a block stored LZ4-compressed. */
export const LZ4_SUFFIX = '.lz4';

export interface BackupManifest {
  format: BackupFormat;
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

/** A stored block that is not what its name says: damaged, or not a valid LZ4 block. */
export class DamagedBlockError extends Error {
  override name = 'DamagedBlockError';
}

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

export class BackupDir {
  /** Blocks written by this process (new) and found already stored (deduplicated). */
  stored = 0;
  deduped = 0;
  /** Of the blocks stored: how many LZ4-compressed, their bytes as read, and the bytes written for them. */
  compressed = 0;
  uncompressedBytes = 0;
  storedBytes = 0;
  private readonly dirty = new Set<string>();

  /** compress: store a block LZ4-compressed when that pays (a backup); off: always raw (tests write /1 directories). */
  constructor(
    readonly dir: string,
    private readonly options: { compress?: boolean } = {},
  ) {}

  async init(): Promise<void> {
    await mkdir(join(this.dir, 'blocks'), { recursive: true });
    await mkdir(join(this.dir, 'backups'), { recursive: true });
  }

  blockPath(hash: string, compressed = false): string {
    return join(this.dir, 'blocks', hash.slice(0, 2), compressed ? hash + LZ4_SUFFIX : hash);
  }

  /** Stores a block unless one with its hash is there (raw or compressed); returns its hash. */
  async putBlock(b: Buffer): Promise<string> {
    const hash = hashBlock(b);
    if ((await exists(this.blockPath(hash))) || (await exists(this.blockPath(hash, true)))) {
      this.deduped++;
      return hash;
    }
    await mkdir(join(this.dir, 'blocks', hash.slice(0, 2)), { recursive: true });
    const packed = this.options.compress !== false ? compressBlock(b) : undefined;
    const lz4 = packed !== undefined && compressionPays(b.length, packed.length) ? packed : undefined;
    await writeDurable(this.blockPath(hash, lz4 !== undefined), lz4 ?? b);
    this.dirty.add(join(this.dir, 'blocks', hash.slice(0, 2)));
    this.stored++;
    this.uncompressedBytes += b.length;
    this.storedBytes += (lz4 ?? b).length;
    if (lz4) this.compressed++;
    return hash;
  }

  /**
   * A stored block of `length` bytes, raw or compressed, checked against its
   * hash (after decompressing); DamagedBlockError when it is not that block.
   */
  async getBlock(hash: string, length: number): Promise<Buffer> {
    const raw = await readFile(this.blockPath(hash)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    let b: Buffer;
    if (raw !== undefined) {
      b = raw;
    } else {
      const path = this.blockPath(hash, true);
      const packed = await readFile(path).catch((err: NodeJS.ErrnoException) => {
        throw err.code === 'ENOENT' ? new DamagedBlockError(`block ${hash} is missing from ${this.dir} (neither ${hash} nor ${hash}${LZ4_SUFFIX})`) : err;
      });
      try {
        b = decompressBlock(packed, length, limits.requestBytesMax);
      } catch (err) {
        throw new DamagedBlockError(`block ${path} is damaged: ${(err as Error).message}`);
      }
    }
    if (b.length !== length || hashBlock(b) !== hash) throw new DamagedBlockError(`block ${hash} in ${this.dir} is damaged (its content ${b.length !== length ? `is ${b.length} bytes, not ${length}` : 'hashes differently'})`);
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
      const problem = manifestProblem(m);
      if (problem) throw new Error(`${join(this.dir, 'backups', n)}: ${problem}`);
      out.push(m);
    }
    return out.sort((a, b) => a.snapshot.index - b.snapshot.index || a.id.localeCompare(b.id));
  }
}

/** Why a manifest cannot be restored by this version, or undefined. */
export function manifestProblem(m: Partial<BackupManifest>): string | undefined {
  if (!(BACKUP_FORMATS_READ as readonly unknown[]).includes(m.format)) {
    return `backup format ${JSON.stringify(m.format)} is not one this xdevice-cli reads (${BACKUP_FORMATS_READ.join(', ')}): written by a newer version, or not a backup manifest`;
  }
  if (!Number.isSafeInteger(m.blockBytes) || m.blockBytes! <= 0 || m.blockBytes! > limits.requestBytesMax) return `block size ${m.blockBytes} out of range`;
  if (!Number.isSafeInteger(m.size) || m.size! < 0) return `device size ${m.size} out of range`;
  if (!Array.isArray(m.blocks)) return 'no block list';
  return undefined;
}

/** Bytes of block `b` of a backup: blockBytes, the last one shorter when the size is not a multiple. */
export function blockBytesOf(m: Pick<BackupManifest, 'size' | 'blockBytes'>, b: number): number {
  return Math.min(m.blockBytes, m.size - b * m.blockBytes);
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
