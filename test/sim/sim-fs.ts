// The storage model under test/sim/sim-disk.ts: files and directories in
// memory, each with what a running system sees and what would survive a
// power cut. No time, no faults of its own: sim-disk.ts decides when each
// operation happens and whether it fails; this file says what it does.
//
// Model (ext4, data=ordered, a disk with 512-byte atomic sectors):
//   file data   A file keeps its current bytes (what reads see: the page
//               cache) and its durable bytes, in 4 KiB pages. A write changes
//               the current bytes and marks the pages dirty. fdatasync makes
//               every dirty page and the size durable. A write on an O_DSYNC
//               handle makes its own byte range durable as it completes.
//   failed sync A failed fdatasync drops the dirty pages from writeback
//               without writing them (Linux marks them clean: reads still see
//               the new bytes, a crash loses them, a later fdatasync does not
//               write them unless they are written again).
//   names       Creating, renaming and removing names are metadata
//               operations in one ordered journal (ext4's). A fsync of
//               directory D commits the journal up to and including the last
//               operation that touched D; earlier operations on other
//               directories ride along, as they do in a real journal commit.
//               fdatasync of a file commits no names (POSIX does not promise
//               it; code that relies on ext4 doing so is wrong elsewhere). A
//               rename is one journal record: atomic, never half done.
//   crash       The journal commits a random prefix of its uncommitted
//               records (background commits may have run at any moment); the
//               namespace becomes the committed one. Every dirty page of
//               every file keeps, sector by sector, independently and at
//               random, either its current or its durable bytes (write-back
//               may have reached any subset of sectors, in any order); pages
//               whose sync failed keep their durable bytes. The size is the
//               durable size or the current one, at random (data=ordered
//               orders a size change after the data it covers).
//   space       Allocation is counted in whole pages over every live file
//               (named, or still open); holes and unlinked-and-closed files
//               free theirs.

import type { Extent } from '../../src/disk/disk-io.ts';
import type { Prng } from './prng.ts';

export const SECTOR_BYTES = 512;
export const PAGE_BYTES = 4096;
const SECTORS_PER_PAGE = PAGE_BYTES / SECTOR_BYTES;

/** Page content: bytes, or written zeroes ('zero', data), or preallocated and never written ('unwritten'). */
type Page = Uint8Array | 'zero' | 'unwritten';

const zeroPage = Buffer.alloc(PAGE_BYTES);

function pageBytes(p: Page | undefined): Uint8Array {
  return p === undefined || typeof p === 'string' ? zeroPage : p;
}

function compactPage(bytes: Uint8Array): Page {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).equals(zeroPage) ? 'zero' : bytes;
}

let nextInode = 1;

/**
 * Counts every change that can change what liveFiles() finds or how many
 * pages those files hold: a page allocated or freed, a name linked or
 * unlinked, a handle opened or closed, a crash. A caller that counted the
 * allocation at one count may reuse the figure while the count stays.
 */
export const allocationClock = { changes: 0 };

export class Inode {
  readonly id = nextInode++;
  /** Names linking to this inode in the current namespace. */
  links = 0;
  /** Open handles. */
  opens = 0;
  // directories
  readonly children = new Map<string, Inode>();
  readonly durableChildren = new Map<string, Inode>();
  // files
  size = 0;
  durableSize = 0;
  readonly pages = new Map<number, Page>();
  readonly durablePages = new Map<number, Page>();
  /** Pages whose current bytes may differ from the durable ones and will be written back. */
  readonly dirty = new Set<number>();
  /** Pages whose current bytes differ from the durable ones and will not be (their sync failed). */
  readonly lost = new Set<number>();
  // A page's bytes may be one array in both `pages` and `durablePages` (a
  // clean page shares them; nothing is copied at a sync): write() copies a
  // shared array before changing it, and nothing else changes one in place.

  constructor(readonly kind: 'file' | 'dir') {}

  get isDir(): boolean {
    return this.kind === 'dir';
  }

  /** Pages that are allocated now, were not, in [first, last]. */
  newPages(first: number, last: number): number {
    let n = 0;
    for (let p = first; p <= last; p++) if (!this.pages.has(p)) n++;
    return n;
  }

  read(buf: Uint8Array, position: number): number {
    const n = Math.max(0, Math.min(buf.length, this.size - position));
    let done = 0;
    while (done < n) {
      const at = position + done;
      const p = Math.floor(at / PAGE_BYTES);
      const inPage = at - p * PAGE_BYTES;
      const len = Math.min(PAGE_BYTES - inPage, n - done);
      buf.set(pageBytes(this.pages.get(p)).subarray(inPage, inPage + len), done);
      done += len;
    }
    return n;
  }

  write(data: Uint8Array, position: number): void {
    let done = 0;
    while (done < data.length) {
      const at = position + done;
      const p = Math.floor(at / PAGE_BYTES);
      const inPage = at - p * PAGE_BYTES;
      const len = Math.min(PAGE_BYTES - inPage, data.length - done);
      const old = this.pages.get(p);
      if (old === undefined) allocationClock.changes++;
      const bytes = old instanceof Uint8Array ? (old === this.durablePages.get(p) ? (len === PAGE_BYTES ? new Uint8Array(PAGE_BYTES) : old.slice()) : old) : new Uint8Array(PAGE_BYTES);
      bytes.set(data.subarray(done, done + len), inPage);
      this.pages.set(p, len === PAGE_BYTES ? compactPage(bytes) : bytes);
      this.touch(p);
      done += len;
    }
    this.size = Math.max(this.size, position + data.length);
  }

  /** An O_DSYNC write completed: its bytes are on the platter. */
  makeRangeDurable(position: number, length: number): void {
    for (let p = Math.floor(position / PAGE_BYTES); p * PAGE_BYTES < position + length; p++) {
      const from = Math.max(position, p * PAGE_BYTES) - p * PAGE_BYTES;
      const to = Math.min(position + length, (p + 1) * PAGE_BYTES) - p * PAGE_BYTES;
      const cur = this.pages.get(p);
      if (from === 0 && to === PAGE_BYTES) {
        if (cur === undefined) this.durablePages.delete(p);
        else this.durablePages.set(p, cur);
        this.dirty.delete(p);
      } else {
        // Part of the page: the rest of it stays dirty.
        const durable = new Uint8Array(pageBytes(this.durablePages.get(p)));
        durable.set(pageBytes(cur).subarray(from, to), from);
        this.durablePages.set(p, compactPage(durable));
      }
    }
    this.durableSize = Math.max(this.durableSize, Math.min(this.size, position + length));
  }

  allocate(offset: number, length: number, keepSize: boolean): void {
    for (let p = Math.floor(offset / PAGE_BYTES); p * PAGE_BYTES < offset + length; p++) {
      if (!this.pages.has(p)) {
        allocationClock.changes++;
        this.pages.set(p, 'unwritten');
        this.touch(p);
      }
    }
    if (!keepSize) this.size = Math.max(this.size, offset + length);
  }

  punch(offset: number, length: number): void {
    const end = Math.min(offset + length, Math.max(this.size, offset));
    for (let p = Math.floor(offset / PAGE_BYTES); p * PAGE_BYTES < end; p++) {
      const start = p * PAGE_BYTES;
      if (offset <= start && start + PAGE_BYTES <= end) {
        if (this.pages.delete(p)) allocationClock.changes++;
        this.touch(p);
      } else if (this.pages.has(p)) {
        const from = Math.max(offset, start);
        this.write(new Uint8Array(Math.min(end, start + PAGE_BYTES) - from), from);
      }
    }
  }

  truncate(size: number): void {
    const keep = Math.ceil(size / PAGE_BYTES);
    for (const p of [...this.pages.keys()]) {
      if (p >= keep) {
        allocationClock.changes++;
        this.pages.delete(p);
        this.touch(p);
      }
    }
    if (size % PAGE_BYTES !== 0 && this.pages.has(keep - 1)) {
      const tail = (keep - 1) * PAGE_BYTES + (size % PAGE_BYTES);
      const oldSize = this.size;
      this.write(new Uint8Array(keep * PAGE_BYTES - tail), tail);
      this.size = oldSize;
    }
    this.size = size;
  }

  sync(): void {
    for (const p of this.dirty) {
      const cur = this.pages.get(p);
      if (cur === undefined) this.durablePages.delete(p);
      else this.durablePages.set(p, cur);
    }
    this.dirty.clear();
    this.durableSize = this.size;
  }

  /** fdatasync failed: the dirty pages are dropped from write-back, unwritten. */
  syncFailed(): void {
    for (const p of this.dirty) this.lost.add(p);
    this.dirty.clear();
  }

  /** Power cut: see the model at the top. Returns the sectors whose unsynced bytes were lost. */
  crash(prng: Prng): number {
    let lostSectors = 0;
    for (const p of this.lost) {
      if (this.dirty.has(p)) continue;
      this.restore(p, this.durablePages.get(p));
      lostSectors += SECTORS_PER_PAGE;
    }
    for (const p of this.dirty) {
      const current = this.pages.get(p);
      const durable = this.durablePages.get(p);
      const cur = pageBytes(current);
      const dur = pageBytes(durable);
      if (!(current instanceof Uint8Array) && !(durable instanceof Uint8Array)) {
        // both absent or both markers: nothing to choose between
        this.restore(p, prng.chance(0.5) ? this.pages.get(p) : this.durablePages.get(p));
        continue;
      }
      const merged = new Uint8Array(dur);
      for (let s = 0; s < SECTORS_PER_PAGE; s++) {
        const from = s * SECTOR_BYTES;
        if (prng.chance(0.5)) merged.set(cur.subarray(from, from + SECTOR_BYTES), from);
        else if (!Buffer.from(cur.buffer, cur.byteOffset + from, SECTOR_BYTES).equals(Buffer.from(dur.buffer, dur.byteOffset + from, SECTOR_BYTES))) lostSectors++;
      }
      // A page that was a hole on one side stays allocated (blocks were reserved either way).
      this.restore(p, compactPage(merged));
    }
    this.dirty.clear();
    this.lost.clear();
    const size = prng.chance(0.5) ? this.durableSize : this.size;
    this.size = size;
    this.durableSize = size;
    for (const p of [...this.pages.keys()]) {
      if (p * PAGE_BYTES >= size) {
        allocationClock.changes++;
        this.pages.delete(p);
        this.durablePages.delete(p);
      }
    }
    return lostSectors;
  }

  private restore(p: number, page: Page | undefined): void {
    if (page === undefined) {
      if (this.pages.delete(p)) allocationClock.changes++;
      this.durablePages.delete(p);
    } else {
      if (!this.pages.has(p)) allocationClock.changes++;
      // One array for both (write() copies it before changing it).
      this.pages.set(p, page);
      this.durablePages.set(p, page);
    }
  }

  private touch(p: number): void {
    this.dirty.add(p);
    this.lost.delete(p);
  }

  /** Allocation map at page granularity. */
  extents(offset: number, length: number): Extent[] {
    const out: Extent[] = [];
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const p = Math.floor(at / PAGE_BYTES);
      const next = Math.min(end, (p + 1) * PAGE_BYTES);
      const page = this.pages.get(p);
      const flags = page === undefined ? 3 : page === 'unwritten' ? 2 : 0;
      const last = out[out.length - 1];
      if (last && last.flags === flags) last.length += next - at;
      else out.push({ length: next - at, flags });
      at = next;
    }
    return out;
  }
}

/** One change to a directory entry; target undefined removes the name. */
interface EntryChange {
  dir: Inode;
  name: string;
  target: Inode | undefined;
}

/** The namespace with its ordered metadata journal. */
export class SimFs {
  readonly root = new Inode('dir');
  private journal: EntryChange[][] = [];

  constructor() {
    this.root.links = 1;
  }

  /** Applies one journal record (one metadata operation) to the current namespace. */
  change(changes: EntryChange[]): void {
    allocationClock.changes++;
    for (const c of changes) {
      const old = c.dir.children.get(c.name);
      if (old) old.links--;
      if (c.target) {
        c.target.links++;
        c.dir.children.set(c.name, c.target);
      } else {
        c.dir.children.delete(c.name);
      }
    }
    this.journal.push(changes);
  }

  /** fsync of directory `dir`: commits the journal through the last record that touched it. */
  syncDir(dir: Inode): void {
    let last = -1;
    for (let i = 0; i < this.journal.length; i++) {
      if (this.journal[i]!.some((c) => c.dir === dir || c.target === dir)) last = i;
    }
    this.commit(last + 1);
  }

  private commit(records: number): void {
    for (const changes of this.journal.splice(0, records)) {
      for (const c of changes) {
        if (c.target) c.dir.durableChildren.set(c.name, c.target);
        else c.dir.durableChildren.delete(c.name);
      }
    }
  }

  /** Power cut: a random journal prefix commits, the namespace becomes the durable one, files lose what was not synced. */
  crash(prng: Prng): { lostSectors: number; lostRecords: number } {
    allocationClock.changes++;
    const keep = prng.int(this.journal.length + 1);
    const lostRecords = this.journal.length - keep;
    this.commit(keep);
    this.journal = [];
    let lostSectors = 0;
    const seen = new Set<Inode>();
    const visit = (dir: Inode): void => {
      dir.children.clear();
      for (const [name, child] of dir.durableChildren) {
        dir.children.set(name, child);
        if (seen.has(child)) continue;
        seen.add(child);
        child.links = 0;
        child.opens = 0;
        if (child.isDir) visit(child);
        else lostSectors += child.crash(prng);
      }
    };
    visit(this.root);
    for (const child of seen) child.links = 0;
    const count = (dir: Inode): void => {
      for (const child of dir.children.values()) {
        child.links++;
        if (child.isDir && child.links === 1) count(child);
      }
    };
    count(this.root);
    return { lostSectors, lostRecords };
  }

  /** Every live inode (named, or open) once: the ones whose pages count against capacity. */
  liveFiles(extra: Iterable<Inode>): Set<Inode> {
    const out = new Set<Inode>();
    const walk = (dir: Inode): void => {
      for (const child of dir.children.values()) {
        if (out.has(child)) continue;
        out.add(child);
        if (child.isDir) walk(child);
      }
    };
    walk(this.root);
    for (const i of extra) if (i.opens > 0) out.add(i);
    return out;
  }
}
