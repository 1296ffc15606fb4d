// A simulated disk for the simulator: a DiskIo over the in-memory model of
// test/sim/sim-fs.ts (read its header for what survives a crash), with time
// and faults decided by a seed.
//
//   time     Every operation completes after a latency drawn from the seed,
//            through the injected scheduler (the simulator's event queue), and
//            takes effect when it completes. Operations on one handle run one
//            after another in submission order, as the native addon's per-file
//            I/O thread runs them; path operations and different handles run
//            side by side (the libuv thread pool), so they may complete in any
//            order.
//   faults   Each with a probability per operation (options.faults) or armed
//            once (arm()):
//              writeEio   pwrite / pwriteBatch / writeFile fails, nothing lands;
//              tornWrite  it fails after a sector-aligned prefix landed (in the
//                         page cache, and on the platter for an O_DSYNC handle);
//              syncEio    fdatasync / syncDir / writeFile's sync fails; the
//                         file's unsynced pages are then lost (sim-fs.ts).
//            A full disk: writes and fallocates that would allocate past
//            capacityBytes fail with ENOSPC, nothing landing; holes, truncation
//            and removed files free space.
//   crash    crash() is a power cut of this disk: use one SimDisk per node.
//            The write running on each handle at that moment is torn (its
//            bytes join the dirty pages, which keep a random subset of their
//            sectors); every open handle is dead; operations in flight and
//            every later one through a DiskIo from io() before the crash never
//            settle: their process is gone, so nothing may run after them.
//   counts   stats: operations, each fault injected, crashes, sectors and
//            journal records lost at crashes.
//
// Over 500 lines: it is one DiskIo — every call of the interface the real WAL
// and block store use (files, paths, directories, extents), each with its
// latency, faults and crash semantics — and splitting the calls apart would
// split the one per-operation schedule they share.

import { constants as osConstants } from 'node:os';
import { dirname, basename } from 'node:path';
import type { DiskFile, DiskFileStat, DiskIo, DiskOpenOptions, DiskPathStat, Extent } from '../../src/disk/disk-io.ts';
import { Prng } from './prng.ts';
import { allocationClock, Inode, PAGE_BYTES, SECTOR_BYTES, SimFs } from './sim-fs.ts';

export interface DiskScheduler {
  /** Runs fn `ms` time units from now (the simulator's clock). */
  after(ms: number, fn: () => void): void;
}

export type SimFault = 'writeEio' | 'tornWrite' | 'syncEio';

export interface SimDiskLatency {
  /** Each operation takes min..max time units, or with slowChance up to slowMax. */
  min: number;
  max: number;
  slowChance: number;
  slowMax: number;
}

export interface SimDiskOptions {
  seed: number;
  scheduler: DiskScheduler;
  latency?: Partial<SimDiskLatency>;
  /** Probability per eligible operation of each fault (default 0: none). */
  faults?: Partial<Record<SimFault, number>>;
  /** Allocated bytes past which writes fail with ENOSPC (default: unlimited). */
  capacityBytes?: number;
  /** Hears one line per completed operation, fault and crash (a replay's trace). */
  trace?: (line: string) => void;
}

export interface SimDiskStats {
  ops: number;
  writeErrors: number;
  tornWrites: number;
  syncErrors: number;
  noSpace: number;
  crashes: number;
  /** Sectors whose unsynced bytes a crash threw away, and metadata operations it undid. */
  lostSectors: number;
  lostJournalRecords: number;
}

interface ArmedFault {
  fault: SimFault;
  pathPrefix: string;
  skip: number;
}

class SimFile implements DiskFile {
  closed = false;
  /** The end of the chain of operations submitted on this handle. */
  tail: Promise<void> = Promise.resolve();
  constructor(
    readonly path: string,
    readonly inode: Inode,
    readonly direct: boolean,
    readonly dsync: boolean,
    readonly readOnly: boolean,
    readonly generation: number,
  ) {}
}

const errnos = osConstants.errno as Record<string, number>;

export function simError(code: string, syscall: string, path?: string): Error & { code: string; errno: number; syscall: string } {
  const err = new Error(`${code}: simulated ${syscall}${path ? ` '${path}'` : ''}`) as Error & { code: string; errno: number; syscall: string; path?: string };
  err.code = code;
  err.errno = -(errnos[code] ?? 5);
  err.syscall = syscall;
  if (path !== undefined) err.path = path;
  return err;
}

const never = new Promise<never>(() => {});

export class SimDisk implements DiskIo {
  readonly stats: SimDiskStats = { ops: 0, writeErrors: 0, tornWrites: 0, syncErrors: 0, noSpace: 0, crashes: 0, lostSectors: 0, lostJournalRecords: 0 };
  capacityBytes: number;
  readonly faults: Record<SimFault, number>;
  private readonly latency: SimDiskLatency;
  private readonly prng: Prng;
  private readonly scheduler: DiskScheduler;
  private fs = new SimFs();
  private generation = 0;
  private readonly handles = new Set<SimFile>();
  /** Writes running now (on the platter's way), torn by a crash. */
  private readonly running = new Set<{ inode: Inode; data: Uint8Array[]; positions: number[] }>();
  private armed: ArmedFault[] = [];
  private readonly trace: ((line: string) => void) | undefined;

  constructor(opts: SimDiskOptions) {
    this.prng = new Prng(opts.seed);
    this.scheduler = opts.scheduler;
    this.latency = { min: 0, max: 2, slowChance: 0.02, slowMax: 20, ...opts.latency };
    this.faults = { writeEio: 0, tornWrite: 0, syncEio: 0, ...opts.faults };
    this.capacityBytes = opts.capacityBytes ?? Number.POSITIVE_INFINITY;
    this.trace = opts.trace;
  }

  // ---- control -------------------------------------------------------------------

  /** The next matching operation (on a path under pathPrefix, after `skip` matching ones) fails so. */
  arm(fault: SimFault, opts: { pathPrefix?: string; skip?: number } = {}): void {
    this.armed.push({ fault, pathPrefix: opts.pathPrefix ?? '', skip: opts.skip ?? 0 });
  }

  disarm(): void {
    this.armed = [];
  }

  /** Power cut (see the top of the file). The disk is usable again at once, through a fresh io(). */
  crash(): void {
    this.stats.crashes++;
    this.generation++;
    this.trace?.(`disk crash (${this.running.size} writes in flight)`);
    for (const w of this.running) w.data.forEach((d, i) => w.inode.write(d, w.positions[i]!));
    this.running.clear();
    this.handles.clear();
    allocationClock.changes++;
    const lost = this.fs.crash(this.prng);
    this.stats.lostSectors += lost.lostSectors;
    this.stats.lostJournalRecords += lost.lostRecords;
  }

  /** A DiskIo for the current incarnation of the node: after a crash every call through it never settles. */
  io(): DiskIo {
    const generation = this.generation;
    const alive = (): boolean => generation === this.generation;
    const view = {} as Record<string, unknown>;
    for (const name of diskIoMethods) {
      const method = (this as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!.bind(this);
      view[name] = (...args: unknown[]) => (alive() ? method(...args) : name === 'extents' || name === 'allocAligned' ? method(...args) : never);
    }
    return view as unknown as DiskIo;
  }

  /** This disk's PRNG state (a run's digest). */
  fingerprint(): string {
    return this.prng.fingerprint();
  }

  /** Allocated bytes over every live file (counted again only after an allocation changed somewhere). */
  usedBytes(): number {
    if (this.used.at === allocationClock.changes) return this.used.bytes;
    let pages = 0;
    for (const i of this.fs.liveFiles([...this.handles].map((h) => h.inode))) pages += i.pages.size;
    this.used = { at: allocationClock.changes, bytes: pages * PAGE_BYTES };
    return this.used.bytes;
  }

  private used = { at: -1, bytes: 0 };

  // ---- scheduling and faults ---------------------------------------------------------

  private delay(): number {
    const l = this.latency;
    return this.prng.chance(l.slowChance) ? this.prng.range(l.max, l.slowMax) : this.prng.range(l.min, l.max);
  }

  /** Runs `effect` when the operation completes; nothing settles if the disk crashed meanwhile. */
  private op<T>(what: string, effect: () => T, generation = this.generation): Promise<T> {
    if (generation !== this.generation) return never;
    this.stats.ops++;
    return new Promise<T>((resolve, reject) => {
      this.scheduler.after(this.delay(), () => {
        if (generation !== this.generation) return;
        try {
          const result = effect();
          this.trace?.(`disk ${what}: ok`);
          resolve(result);
        } catch (err) {
          this.trace?.(`disk ${what}: ${(err as Error).message}`);
          reject(err as Error);
        }
      });
    });
  }

  /** Queues `effect` behind everything submitted on this handle. */
  private fileOp<T>(file: DiskFile, syscall: string, effect: (f: SimFile) => T, write?: { data: Uint8Array[]; positions: number[] }, detail?: () => string): Promise<T> {
    const f = file as SimFile;
    if (!(f instanceof SimFile)) throw new TypeError('not a handle of this SimDisk');
    if (f.generation !== this.generation) return never;
    const run = f.tail.then(() => {
      if (f.generation !== this.generation) return never;
      if (f.closed) throw simError('EBADF', syscall, f.path);
      const running = write && { inode: f.inode, ...write };
      if (running) this.running.add(running);
      // The description only a trace reads: not built for every write of an untraced run.
      return this.op(
        this.trace ? `${syscall} ${f.path}${detail?.() ?? ''}` : '',
        () => {
          if (running) this.running.delete(running);
          return effect(f);
        },
        f.generation,
      );
    });
    f.tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private draw(fault: SimFault, path: string): boolean {
    for (const [i, a] of this.armed.entries()) {
      if (a.fault !== fault || !path.startsWith(a.pathPrefix)) continue;
      if (a.skip > 0) {
        a.skip--;
        continue;
      }
      this.armed.splice(i, 1);
      return true;
    }
    return this.faults[fault] > 0 && this.prng.chance(this.faults[fault]);
  }

  private checkSpace(inode: Inode, offset: number, length: number, path: string, syscall: string): void {
    if (length <= 0 || !Number.isFinite(this.capacityBytes)) return;
    const added = inode.newPages(Math.floor(offset / PAGE_BYTES), Math.floor((offset + length - 1) / PAGE_BYTES)) * PAGE_BYTES;
    if (added > 0 && this.usedBytes() + added > this.capacityBytes) {
      this.stats.noSpace++;
      throw simError('ENOSPC', syscall, path);
    }
  }

  /** One write with its faults: all of it lands, or nothing, or a sector-aligned prefix and then EIO. */
  private landWrite(f: SimFile, data: Uint8Array, position: number, syscall: string): void {
    if (f.readOnly) throw simError('EBADF', syscall, f.path);
    if (f.direct && (position % SECTOR_BYTES !== 0 || data.length % SECTOR_BYTES !== 0)) throw simError('EINVAL', syscall, f.path);
    this.checkSpace(f.inode, position, data.length, f.path, syscall);
    if (this.draw('writeEio', f.path)) {
      this.stats.writeErrors++;
      throw simError('EIO', syscall, f.path);
    }
    if (this.draw('tornWrite', f.path)) {
      this.stats.tornWrites++;
      const sectors = Math.floor(data.length / SECTOR_BYTES);
      const landed = this.prng.int(sectors + 1) * SECTOR_BYTES;
      this.trace?.(`disk torn ${syscall} ${f.path} [${position}, +${data.length}): ${landed} bytes landed`);
      if (landed > 0) {
        f.inode.write(data.subarray(0, landed), position);
        if (f.dsync) f.inode.makeRangeDurable(position, landed);
      }
      throw simError('EIO', syscall, f.path);
    }
    f.inode.write(data, position);
    if (f.dsync) f.inode.makeRangeDurable(position, data.length);
  }

  private syncInode(inode: Inode, path: string, syscall: string): void {
    if (this.draw('syncEio', path)) {
      this.stats.syncErrors++;
      inode.syncFailed();
      throw simError('EIO', syscall, path);
    }
    inode.sync();
  }

  // ---- the namespace -------------------------------------------------------------------

  private lookup(path: string): Inode | undefined {
    let at: Inode | undefined = this.fs.root;
    for (const part of path.split('/')) {
      if (part === '' || part === '.') continue;
      if (!at?.isDir) return undefined;
      at = at.children.get(part);
    }
    return at;
  }

  private parentOf(path: string, syscall: string): { dir: Inode; name: string } {
    const dir = this.lookup(dirname(path));
    if (!dir) throw simError('ENOENT', syscall, path);
    if (!dir.isDir) throw simError('ENOTDIR', syscall, path);
    return { dir, name: basename(path) };
  }

  private existing(path: string, syscall: string): Inode {
    const inode = this.lookup(path);
    if (!inode) throw simError('ENOENT', syscall, path);
    return inode;
  }

  private createFile(path: string, syscall: string): Inode {
    const { dir, name } = this.parentOf(path, syscall);
    const inode = new Inode('file');
    this.fs.change([{ dir, name, target: inode }]);
    return inode;
  }

  // ---- DiskIo: open files ----------------------------------------------------------------

  openFile(path: string, opts: DiskOpenOptions = {}): Promise<DiskFile> {
    return this.op(`open ${path}`, () => {
      let inode = this.lookup(path);
      if (inode?.isDir) throw simError('EISDIR', 'open', path);
      if (!inode) {
        if (!opts.create) throw simError('ENOENT', 'open', path);
        inode = this.createFile(path, 'open');
      }
      inode.opens++;
      allocationClock.changes++;
      const f = new SimFile(path, inode, opts.direct ?? false, opts.dsync ?? false, opts.readOnly ?? false, this.generation);
      this.handles.add(f);
      return f;
    });
  }

  closeFile(file: DiskFile): Promise<void> {
    return this.fileOp(file, 'close', (f) => {
      f.closed = true;
      f.inode.opens--;
      allocationClock.changes++;
      this.handles.delete(f);
    });
  }

  pread(file: DiskFile, buf: Uint8Array, position: number): Promise<number> {
    return this.fileOp(file, 'pread', (f) => {
      if (f.direct && (position % SECTOR_BYTES !== 0 || buf.length % SECTOR_BYTES !== 0)) throw simError('EINVAL', 'pread', f.path);
      return f.inode.read(buf, position);
    });
  }

  pwrite(file: DiskFile, buf: Uint8Array, position: number): Promise<number> {
    // The caller may reuse its buffer once this settles, not before: take the bytes now.
    const data = new Uint8Array(buf);
    return this.fileOp(
      file,
      'pwrite',
      (f) => {
        this.landWrite(f, data, position, 'pwrite');
        return data.length;
      },
      { data: [data], positions: [position] },
      () => ` [${position}, +${data.length})`,
    );
  }

  pwriteBatch(file: DiskFile, bufs: Uint8Array[], positions: number[]): Promise<number> {
    const data = bufs.map((b) => new Uint8Array(b));
    const at = [...positions];
    return this.fileOp(
      file,
      'pwrite',
      (f) => {
        let n = 0;
        for (const [i, d] of data.entries()) {
          this.landWrite(f, d, at[i]!, 'pwrite');
          n += d.length;
        }
        return n;
      },
      { data, positions: at },
      () => ` ${data.length} writes`,
    );
  }

  fdatasync(file: DiskFile): Promise<void> {
    return this.fileOp(file, 'fdatasync', (f) => this.syncInode(f.inode, f.path, 'fdatasync'));
  }

  fallocate(file: DiskFile, offset: number, length: number, opts: { keepSize?: boolean } = {}): Promise<void> {
    return this.fileOp(file, 'fallocate', (f) => {
      this.checkSpace(f.inode, offset, length, f.path, 'fallocate');
      f.inode.allocate(offset, length, opts.keepSize ?? false);
    });
  }

  punchHole(file: DiskFile, offset: number, length: number): Promise<void> {
    return this.fileOp(file, 'fallocate', (f) => f.inode.punch(offset, length));
  }

  truncate(file: DiskFile, size: number): Promise<void> {
    return this.fileOp(file, 'ftruncate', (f) => {
      if (f.readOnly) throw simError('EINVAL', 'ftruncate', f.path);
      f.inode.truncate(size);
    });
  }

  fstat(file: DiskFile): Promise<DiskFileStat> {
    return this.fileOp(file, 'fstat', (f) => ({ size: f.inode.size, allocatedBytes: f.inode.pages.size * PAGE_BYTES }));
  }

  extents(file: DiskFile, offset: number, length: number): Extent[] {
    const f = file as SimFile;
    if (f.closed) throw simError('EBADF', 'ioctl', f.path);
    return f.inode.extents(offset, length);
  }

  allocAligned(size: number): Buffer {
    return Buffer.alloc(size);
  }

  // ---- DiskIo: paths ---------------------------------------------------------------------

  readdir(dir: string): Promise<string[]> {
    return this.op(`readdir ${dir}`, () => {
      const inode = this.existing(dir, 'scandir');
      if (!inode.isDir) throw simError('ENOTDIR', 'scandir', dir);
      return [...inode.children.keys()];
    });
  }

  mkdir(dir: string, opts: { recursive?: boolean } = {}): Promise<void> {
    return this.op(`mkdir ${dir}`, () => {
      const parts = dir.split('/').filter((p) => p !== '' && p !== '.');
      let at = this.fs.root;
      for (const [i, part] of parts.entries()) {
        const next = at.children.get(part);
        const last = i === parts.length - 1;
        if (next) {
          if (!next.isDir) throw simError(last ? 'EEXIST' : 'ENOTDIR', 'mkdir', dir);
          if (last && !opts.recursive) throw simError('EEXIST', 'mkdir', dir);
          at = next;
          continue;
        }
        if (!last && !opts.recursive) throw simError('ENOENT', 'mkdir', dir);
        const made = new Inode('dir');
        this.fs.change([{ dir: at, name: part, target: made }]);
        at = made;
      }
    });
  }

  stat(path: string): Promise<DiskPathStat> {
    return this.op(`stat ${path}`, () => {
      const inode = this.existing(path, 'stat');
      return { size: inode.isDir ? PAGE_BYTES : inode.size, isDirectory: inode.isDir };
    });
  }

  rename(from: string, to: string): Promise<void> {
    return this.op(`rename ${from} ${to}`, () => {
      const source = this.existing(from, 'rename');
      const src = this.parentOf(from, 'rename');
      const dst = this.parentOf(to, 'rename');
      const replaced = dst.dir.children.get(dst.name);
      if (replaced === source) return;
      if (replaced) {
        if (replaced.isDir && !source.isDir) throw simError('EISDIR', 'rename', to);
        if (!replaced.isDir && source.isDir) throw simError('ENOTDIR', 'rename', to);
        if (replaced.isDir && replaced.children.size > 0) throw simError('ENOTEMPTY', 'rename', to);
      }
      this.fs.change([
        { dir: src.dir, name: src.name, target: undefined },
        { dir: dst.dir, name: dst.name, target: source },
      ]);
    });
  }

  unlink(path: string): Promise<void> {
    return this.op(`unlink ${path}`, () => {
      const inode = this.existing(path, 'unlink');
      if (inode.isDir) throw simError('EISDIR', 'unlink', path);
      const { dir, name } = this.parentOf(path, 'unlink');
      this.fs.change([{ dir, name, target: undefined }]);
    });
  }

  rm(path: string, opts: { recursive?: boolean; force?: boolean } = {}): Promise<void> {
    return this.op(`rm ${path}`, () => {
      const inode = this.lookup(path);
      if (!inode) {
        if (opts.force) return;
        throw simError('ENOENT', 'rm', path);
      }
      if (inode.isDir && !opts.recursive) throw simError('EISDIR', 'rm', path);
      const remove = (dir: Inode): void => {
        for (const [name, child] of [...dir.children]) {
          if (child.isDir) remove(child);
          this.fs.change([{ dir, name, target: undefined }]);
        }
      };
      if (inode.isDir) remove(inode);
      const { dir, name } = this.parentOf(path, 'rm');
      this.fs.change([{ dir, name, target: undefined }]);
    });
  }

  syncDir(dir: string): Promise<void> {
    return this.op(`fsync ${dir}`, () => {
      const inode = this.existing(dir, 'fsync');
      if (this.draw('syncEio', dir)) {
        this.stats.syncErrors++;
        throw simError('EIO', 'fsync', dir);
      }
      this.fs.syncDir(inode);
    });
  }

  readFile(path: string): Promise<Buffer> {
    return this.op(`readFile ${path}`, () => {
      const inode = this.existing(path, 'open');
      if (inode.isDir) throw simError('EISDIR', 'read', path);
      // read() fills every byte up to the size: no zero-fill first (WAL segments are read whole at every restart).
      const out = Buffer.allocUnsafeSlow(inode.size);
      inode.read(out, 0);
      return out;
    });
  }

  writeFile(path: string, data: Uint8Array, opts: { sync?: boolean } = {}): Promise<void> {
    const bytes = new Uint8Array(data);
    return this.op(`writeFile ${path} ${bytes.length}`, () => {
      let inode = this.lookup(path);
      if (inode?.isDir) throw simError('EISDIR', 'open', path);
      inode ??= this.createFile(path, 'open');
      inode.truncate(0);
      const f = new SimFile(path, inode, false, false, false, this.generation);
      this.landWrite(f, bytes, 0, 'write');
      if (opts.sync) this.syncInode(inode, path, 'fsync');
    });
  }
}

const diskIoMethods = [
  'openFile',
  'closeFile',
  'pread',
  'pwrite',
  'pwriteBatch',
  'fdatasync',
  'fallocate',
  'punchHole',
  'truncate',
  'fstat',
  'extents',
  'allocAligned',
  'readdir',
  'mkdir',
  'stat',
  'rename',
  'unlink',
  'rm',
  'syncDir',
  'readFile',
  'writeFile',
] as const satisfies readonly (keyof DiskIo)[];
