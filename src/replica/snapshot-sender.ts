// Streams a fuzzy snapshot to a lagging or new peer (DESIGN.md, "Fuzzy
// snapshots"). Raft asks for a snapshot with a Snap message carrying the WAL's
// compaction point i; the sender captures the state machine's header at its
// applied index a >= i between two apply batches, then copies the device
// files chunk by chunk while apply continues. Each byte copied reflects at
// least state a; the receiver skips entries up to a and replays the rest, so
// the result is exact. Holes are skipped (FIEMAP), chunks are paced by the
// socket's drain, and the Raft message goes out only once the receiver says
// the files are durably staged. A receiver that asks for more then gets the
// device snapshots (src/device/snapshot-transfer.ts has that protocol and
// why it is exact): captured between two later batches, each snapshot's
// map as of then and the blocks it names, read from descriptors opened then.
// With compression on, the begin offers LZ4 chunks; once the receiver says it
// decodes them, each later chunk goes as an LZ4 block if that saves 1/8.

import type { Logger } from 'pino';
import { limits } from '../limits.ts';
import type { Message } from '../raft/types.ts';
import { type StoreState, encodeStoreState } from '../device/checkpoint.ts';
import { decodeBlockMap, type SnapshotRecord } from '../device/snapshot-record.ts';
import { snapshotBlockLength } from '../device/snapshot-transfer.ts';
import { compressBlock, compressionPays } from '../device/lz4.ts';
import { CompressionStats } from '../device/compression.ts';
import type { SnapshotToSend } from '../device/snapshots.ts';
import type { Cancel, Clock, Host, PeerTransport, SnapshotFile, SnapshotFrame } from './env.ts';

/** A device snapshot to ship: its record, the length of its map (map.log's first mapBytes bytes) and the files, open since the capture. */
export interface SnapshotShipment {
  record: SnapshotRecord;
  mapBytes: number;
  data: SnapshotFile;
  map: SnapshotFile;
}

type SnapResultFrame = Extract<SnapshotFrame, { kind: 'result' }>;
type Stream = { id: number; progress: SnapshotProgress; result?: (f: SnapResultFrame) => void; lz4?: boolean; answered?: () => void };


/** Opens the files of the snapshots to ship (between two apply batches, so nothing deletes them first). */
export async function openShipments(list: readonly SnapshotToSend[], files: Host['snapshots']): Promise<SnapshotShipment[]> {
  const out: SnapshotShipment[] = [];
  try {
    for (const s of list) {
      const data = await files.openForSend(s.dataPath);
      const map = data && (await files.openForSend(s.mapPath));
      if (!data || !map) {
        // Not deleted (no batch ran since the list was taken): an I/O error. The stream fails and Raft asks again.
        await data?.close();
        throw new Error(`cannot open the files of snapshot ${s.record.id} to ship it`);
      }
      out.push({ record: s.record, mapBytes: s.mapBytes, data, map });
    }
  } catch (err) {
    for (const s of out) {
      await s.data.close();
      await s.map.close();
    }
    throw err;
  }
  return out;
}

export interface SnapshotSource {
  /** Runs between two apply batches: the state and paths of the files as of the applied index. */
  capture(): Promise<{ state: StoreState; paths: string[] }>;
  /** The applied index now (sent at the end of the copy). */
  appliedIndex(): number;
  /**
   * Runs between two apply batches: the applied index and the device
   * snapshots this node holds whole as of it, their files opened (the caller
   * closes them).
   */
  captureSnapshots(): Promise<{ appliedIndex: number; snapshots: SnapshotShipment[] }>;
  /** The outcome, for Raft (reportSnapshot) and the peer (the Snap message on success). */
  done(peer: string, ok: boolean, snap: Message): void;
  /**
   * The WAL must keep entries after `index` while a stream from it runs and
   * until the peer has caught up past it (undefined: released at once, the
   * stream failed).
   */
  hold(peer: string, index: number | undefined): void;
}

export interface SnapshotProgress {
  peer: string;
  bytesDone: number;
  bytesTotal: number;
}

export class SnapshotSender {
  private readonly active = new Map<string, Stream>();
  private nextId: number;

  constructor(
    private readonly transport: PeerTransport,
    private readonly source: SnapshotSource,
    private readonly files: Host['snapshots'],
    private readonly clock: Clock,
    private readonly logger: Logger,
    /** Whether to offer LZ4 chunks (the node's compression mode is lz4). */
    private readonly offerLz4: () => boolean = () => false,
    private readonly compress: (data: Buffer) => Buffer | Promise<Buffer> = compressBlock,
    /** Where the bytes LZ4 saved are counted (snapshot* fields). */
    private readonly stats: CompressionStats = new CompressionStats(),
  ) {
    // Unique across restarts of this node: a stale SnapResult never matches a new stream.
    this.nextId = Math.floor(clock.now());
  }

  get progress(): SnapshotProgress | undefined {
    for (const a of this.active.values()) return { ...a.progress };
    return undefined;
  }

  isSending(peer: string): boolean {
    return this.active.has(peer);
  }

  /** Raft wants `snap.to` to get a snapshot. A stream already running to it is left alone. */
  send(snap: Message): void {
    const peer = snap.to;
    if (this.active.has(peer)) return;
    const id = this.nextId++;
    const entry: Stream = { id, progress: { peer, bytesDone: 0, bytesTotal: 0 } };
    this.active.set(peer, entry);
    this.source.hold(peer, snap.snapshot!.index);
    const started = this.clock.now();
    this.stream(peer, id, snap, entry)
      .then(
        (ok) => {
          this.logger.info({ peer, ok, ms: Math.round(this.clock.now() - started), bytes: entry.progress.bytesDone }, 'snapshot stream finished');
          return ok;
        },
        (err: Error) => {
          this.logger.warn({ peer, err: err.message }, 'snapshot stream failed');
          return false;
        },
      )
      .then((ok) => {
        this.active.delete(peer);
        if (!ok) this.source.hold(peer, undefined);
        this.source.done(peer, ok, snap);
      });
  }

  /** A SnapResult frame from a peer. */
  onResult(peer: string, f: SnapResultFrame): void {
    const a = this.active.get(peer);
    if (!a || a.id !== f.snapshotId) return;
    // The receiver decodes LZ4 chunks: the chunks not yet sent go compressed.
    if (f.lz4) a.lz4 = true;
    else a.result?.(f);
    a.answered?.();
  }

  /** The next SnapResult of this stream (undefined after snapshotResultTimeoutMs). */
  private nextResult(entry: { result?: (f: SnapResultFrame) => void }): Promise<SnapResultFrame | undefined> {
    return new Promise<SnapResultFrame | undefined>((resolve) => {
      entry.result = resolve;
      this.clock.after(limits.snapshotResultTimeoutMs, () => resolve(undefined));
    });
  }

  private async stream(peer: string, id: number, snap: Message, entry: Stream): Promise<boolean> {
    const { state, paths } = await this.source.capture();
    const result = this.nextResult(entry);
    entry.progress.bytesTotal = state.devices.reduce((n, d) => n + d.size, 0);
    const handles: (SnapshotFile | undefined)[] = [];
    try {
      for (const p of paths) handles.push(await this.files.openForSend(p));
      const connection = this.transport.connection(peer);
      if (connection === undefined) return false;
      const lz4 = this.offerLz4();
      const header = encodeStoreState({ ...state, snapshotBlocksOffered: true, ...(lz4 ? { snapshotChunksLz4Offered: true as const } : {}) });
      if (!this.transport.sendFrame(peer, { kind: 'begin', snapshotId: id, metadata: snap.snapshot!, state: header })) return false;
      if (lz4) await this.answer(entry);
      let chunks = 0;
      const buf = Buffer.allocUnsafe(limits.snapshotChunkBytes);
      for (let file = 0; file < state.devices.length; file++) {
        const h = handles[file];
        const size = state.devices[file]!.size;
        // A file deleted since the capture: the receiver replays the delete.
        if (!h) continue;
        for (const range of h.dataRanges(size)) {
          for (let off = range.offset; off < range.end; off += limits.snapshotChunkBytes) {
            const n = Math.min(limits.snapshotChunkBytes, range.end - off);
            const bytesRead = await h.read(buf.subarray(0, n), off);
            if (bytesRead === 0) break;
            const data = buf.subarray(0, bytesRead);
            if (isZero(data)) continue;
            const block = entry.lz4 ? await this.compressed(data) : undefined;
            await this.transport.waitDrain(peer);
            // The frame is encoded (copied) before the buffer is reused: write() may keep a reference.
            const frame: SnapshotFrame = block ? { kind: 'chunk', snapshotId: id, file, offset: off, data: block, zeroBytes: 0, lz4: true } : { kind: 'chunk', snapshotId: id, file, offset: off, data, zeroBytes: 0 };
            if (!this.transport.sendFrame(peer, frame)) return false;
            chunks++;
            entry.progress.bytesDone += bytesRead;
          }
        }
      }
      if (!this.transport.sendFrame(peer, { kind: 'end', snapshotId: id, chunks, appliedEnd: this.source.appliedIndex() })) return false;
      let r = await this.whileConnected(peer, connection, result);
      if (!r) return false;
      if (r.ok && r.more) {
        // A receiver that knows device snapshots (an older one answered with its final result).
        const final = this.nextResult(entry);
        if (!(await this.streamSnapshots(peer, id, entry.progress))) return false;
        r = await this.whileConnected(peer, connection, final);
        if (!r) return false;
      }
      if (!r.ok) this.logger.warn({ peer, reason: r.reason }, 'peer refused the snapshot');
      return r.ok;
    } finally {
      for (const h of handles) await h?.close();
    }
  }

  /** The device snapshots' blocks, captured now (after the device files), then the end frame with the capture's index. */
  private async streamSnapshots(peer: string, id: number, progress: SnapshotProgress): Promise<boolean> {
    const { appliedIndex, snapshots } = await this.source.captureSnapshots();
    try {
      const B = limits.snapshotBlockBytes;
      for (const s of snapshots) progress.bytesTotal += (s.mapBytes / 8) * B;
      // Blocks per frame: about snapshotChunkBytes of data, read together.
      const perFrame = Math.max(1, Math.min(limits.snapshotStreamBlocksPerFrameMax, Math.floor(limits.snapshotChunkBytes / B)));
      let frames = 0;
      for (const s of snapshots) {
        const blocksMax = Math.ceil(s.record.size / B);
        const seen = new Set<number>();
        let pending: number[] = [];
        let sent = false;
        const flush = async (): Promise<boolean> => {
          const blocks = pending;
          pending = [];
          // Fresh buffers each frame: the transport may keep them (no copy).
          const data = await Promise.all(
            blocks.map(async (b) => {
              const buf = Buffer.alloc(snapshotBlockLength(s.record.size, b));
              const n = await s.data.read(buf, b * B);
              if (n < buf.length) buf.fill(0, n);
              return isZero(buf) ? Buffer.alloc(0) : buf;
            }),
          );
          await this.transport.waitDrain(peer);
          if (!this.transport.sendFrame(peer, { kind: 'blocks', snapshotId: id, snapshot: s.record, blocks, data })) return false;
          frames++;
          sent = true;
          for (const d of data) progress.bytesDone += d.length;
          return true;
        };
        for (let at = 0; at < s.mapBytes; ) {
          const piece = Buffer.alloc(Math.min(s.mapBytes - at, 8 * limits.snapshotStreamBlocksPerFrameMax));
          if ((await s.map.read(piece, at)) !== piece.length) throw new Error(`snapshot ${s.record.id}: its map is shorter than ${s.mapBytes} bytes`);
          at += piece.length;
          for (const b of decodeBlockMap(piece, blocksMax).blocks) {
            if (seen.has(b)) continue;
            seen.add(b);
            pending.push(b);
            if (pending.length >= perFrame && !(await flush())) return false;
          }
        }
        // At least one frame a snapshot: one with an empty map still travels.
        if ((pending.length > 0 || !sent) && !(await flush())) return false;
      }
      return this.transport.sendFrame(peer, { kind: 'end', snapshotId: id, chunks: frames, appliedEnd: appliedIndex });
    } finally {
      for (const s of snapshots) {
        await s.data.close();
        await s.map.close();
      }
    }
  }

  /** Until the receiver says whether it decodes LZ4 chunks, reports (a refused begin), or snapshotLz4AnswerMs passed. */
  private answer(entry: Stream): Promise<void> {
    return new Promise<void>((resolve) => {
      const cancel = this.clock.after(limits.snapshotLz4AnswerMs, () => {
        entry.answered = undefined;
        resolve();
      });
      entry.answered = () => {
        entry.answered = undefined;
        cancel();
        resolve();
      };
    });
  }

  /** The chunk as an LZ4 block if that saves 1/8 (compressed off the event loop), else undefined: it goes as read. */
  private async compressed(data: Buffer): Promise<Buffer | undefined> {
    const block = await this.compress(data);
    const pays = compressionPays(data.length, block.length);
    this.stats.snapshotBytesIn += data.length;
    this.stats.snapshotBytesOut += pays ? block.length : data.length;
    if (pays) this.stats.snapshotCompressedChunks++;
    return pays ? block : undefined;
  }

  /** The result, or undefined as soon as the connection the stream went over is gone (the receiver can no longer report). */
  private async whileConnected(peer: string, connection: number, result: Promise<SnapResultFrame | undefined>): Promise<SnapResultFrame | undefined> {
    let cancel: Cancel | undefined;
    const lost = new Promise<undefined>((resolve) => {
      const check = (): void => {
        if (this.transport.connection(peer) === connection) {
          cancel = this.clock.after(limits.snapshotConnectionCheckMs, check);
          return;
        }
        this.logger.warn({ peer }, 'snapshot stream: the connection closed before the peer reported; streaming again when Raft asks');
        resolve(undefined);
      };
      cancel = this.clock.after(limits.snapshotConnectionCheckMs, check);
    });
    try {
      return await Promise.race([result, lost]);
    } finally {
      cancel?.();
    }
  }
}

function isZero(b: Buffer): boolean {
  // Compare 8 bytes at a time; snapshots of sparse devices are mostly zeroes when FIEMAP is unavailable.
  const n = b.length - (b.length % 8);
  for (let i = 0; i < n; i += 8) if (b.readBigUInt64LE(i) !== 0n) return false;
  for (let i = n; i < b.length; i++) if (b[i] !== 0) return false;
  return true;
}
