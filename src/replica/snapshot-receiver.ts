// The receiving end of a snapshot stream: frames from the leader go, in
// order, into a SnapshotStaging; when the staging is complete and durable the
// leader is told so, and the Raft Snap message it then sends may be stepped
// (the runtime checks `staged` before it does). The install itself happens
// when Raft hands the snapshot back in a Ready (see ClusterNode).
//
// A stream is accepted only from the peer this node follows as leader, with
// at most devicesMax devices; a begin that fails releases everything it
// opened. When the begin offers the device snapshots' blocks, the first end
// is answered `more` and the blocks follow, then a second end
// (src/device/snapshot-transfer.ts). When it offers LZ4 chunks, the
// receiver says at once that it decodes them, and the chunks after that
// arrive compressed wherever compression pays.

import type { Logger } from 'pino';
import { decodeStoreState } from '../device/checkpoint.ts';
import type { StagedSnapshot } from '../device/snapshot-staging.ts';
import { blockLength, decompressBlock } from '../device/lz4.ts';
import type { Host, PeerTransport, SnapshotFrame, StagingHandle } from './env.ts';
import { limits } from '../limits.ts';

export interface ReceiveProgress {
  peer: string;
  bytesDone: number;
}

export class SnapshotReceiver {
  private staging: StagingHandle | undefined;
  /** The stream being staged offered the device snapshots' blocks. */
  private offered = false;
  private chain: Promise<void> = Promise.resolve();
  /** A complete, durable staging waiting for Raft's Snap message. */
  staged: (StagedSnapshot & { from: string }) | undefined;
  /** Raft took the staged snapshot and it is being installed: refuse new streams meanwhile. */
  pinned = false;

  constructor(
    private readonly snapshots: Host['snapshots'],
    private readonly transport: PeerTransport,
    private readonly logger: Logger,
    /** The leader this node follows now ('' if none). */
    private readonly currentLeader: () => string,
  ) {}

  /** Snapshot streams refused (not from the leader, too many devices, a failed begin). */
  refused = 0;

  get progress(): ReceiveProgress | undefined {
    return this.staging ? { peer: this.staging.from, bytesDone: this.staging.bytes } : undefined;
  }

  /** Handles SnapBegin / SnapChunk / SnapEnd, strictly in arrival order. */
  onFrame(from: string, f: SnapshotFrame): void {
    if (f.kind === 'chunk' || f.kind === 'blocks') {
      // Chunks are queued synchronously so order holds even while begin() is pending.
      this.chain = this.chain.then(() => {
        const s = this.staging;
        if (s && s.snapshotId === f.snapshotId && s.from === from) {
          if (f.kind === 'chunk') {
            const data = f.lz4 ? this.decompress(s, f.data) : f.data;
            if (data) s.chunk(f.file, f.offset, data, f.zeroBytes);
          } else s.blocks({ snapshot: f.snapshot, blocks: f.blocks, data: f.data });
          return s.settled().then(() => undefined);
        }
        return undefined;
      });
      return;
    }
    this.chain = this.chain.then(() => this.handle(from, f)).catch((err: Error) => this.logger.error({ err: err.message }, 'snapshot receive error'));
  }

  private async handle(from: string, f: SnapshotFrame): Promise<void> {
    switch (f.kind) {
      case 'begin': {
        if (this.pinned) {
          this.reply(from, f.snapshotId, false, 'installing another snapshot');
          return;
        }
        const leader = this.currentLeader();
        if (from !== leader) {
          this.refused++;
          this.logger.warn({ from, leader }, 'refused a snapshot stream from a peer that is not the leader');
          this.reply(from, f.snapshotId, false, `${from} is not the leader`);
          return;
        }
        if (this.staging) await this.staging.abort();
        this.staging = undefined;
        this.staged = undefined;
        let state;
        try {
          state = decodeStoreState(f.state, 'snapshot header');
          if (state.devices.length > limits.devicesMax) throw new Error(`snapshot with ${state.devices.length} devices (at most ${limits.devicesMax})`);
          if ((state.snapshots?.length ?? 0) > limits.devicesMax * limits.snapshotsPerDeviceMax) throw new Error(`snapshot with ${state.snapshots!.length} device snapshots`);
        } catch (err) {
          this.refused++;
          this.reply(from, f.snapshotId, false, (err as Error).message);
          return;
        }
        const { snapshotBlocksOffered, snapshotChunksLz4Offered, ...header } = state;
        state = header;
        this.offered = snapshotBlocksOffered === true;
        this.logger.info({ from, index: f.metadata.index, stateIndex: state.appliedIndex, devices: state.devices.length }, 'receiving snapshot');
        try {
          this.staging = await this.snapshots.beginStaging(f.snapshotId, from, f.metadata, state);
          // Before any chunk is handled: the sender switches once this arrives, and chunks keep their order.
          if (snapshotChunksLz4Offered === true) this.transport.sendFrame(from, { kind: 'result', snapshotId: f.snapshotId, ok: true, reason: '', lz4: true });
        } catch (err) {
          this.refused++;
          this.logger.warn({ from, err: (err as Error).message }, 'snapshot stream could not begin');
          this.reply(from, f.snapshotId, false, (err as Error).message);
        }
        return;
      }
      case 'end': {
        const s = this.staging;
        if (!s || s.snapshotId !== f.snapshotId || s.from !== from) {
          this.reply(from, f.snapshotId, false, 'no such snapshot stream');
          return;
        }
        if (this.offered && s.phase === 'devices') {
          // The device files are here: ask for the snapshots (captured by the sender from now on).
          try {
            await s.endDevices(f.chunks, f.appliedEnd);
            this.reply(from, f.snapshotId, true, '', true);
          } catch (err) {
            this.staging = undefined;
            await s.abort();
            this.reply(from, f.snapshotId, false, (err as Error).message);
          }
          return;
        }
        this.staging = undefined;
        try {
          const staged = await s.finish(f.chunks, f.appliedEnd);
          this.staged = { ...staged, from };
          this.logger.info({ from, index: staged.metadata.index, bytes: s.bytes }, 'snapshot staged');
          this.reply(from, f.snapshotId, true, '');
        } catch (err) {
          await s.abort();
          this.reply(from, f.snapshotId, false, (err as Error).message);
        }
        return;
      }
      default:
        return;
    }
  }

  /** An LZ4 chunk's bytes, or undefined after failing the stream (a block that does not decode to what its prefix says). */
  private decompress(s: StagingHandle, block: Buffer): Buffer | undefined {
    try {
      const data = decompressBlock(block, blockLength(block) ?? 0, limits.snapshotChunkBytes);
      this.lz4Bytes += block.length;
      this.lz4Decoded += data.length;
      return data;
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'snapshot stream: an LZ4 chunk does not decode');
      s.fail(err as Error);
      return undefined;
    }
  }

  /** LZ4 chunk bytes received and what they decoded to. */
  lz4Bytes = 0;
  lz4Decoded = 0;

  private reply(to: string, snapshotId: number, ok: boolean, reason: string, more = false): void {
    this.transport.sendFrame(to, { kind: 'result', snapshotId, ok, reason, ...(more ? { more: true as const } : {}) });
  }

  /** Runs fn with no frame being handled (snapshot install touches the staging directory). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.chain.then(fn);
    this.chain = p.then(
      () => undefined,
      () => undefined,
    );
    return p;
  }

  /** The installed staging is consumed. */
  take(): (StagedSnapshot & { from: string }) | undefined {
    const s = this.staged;
    this.staged = undefined;
    return s;
  }

  async close(): Promise<void> {
    await this.chain.catch(() => undefined);
    if (this.staging) await this.staging.abort();
    this.staging = undefined;
  }
}
