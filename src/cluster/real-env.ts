// The real world behind the replica core's environment (src/replica/env.ts):
// timers, the peer transport's sockets, statfs, and the snapshot files in the
// data directory. Only the production runtime builds these.

import type { Message } from '../raft/types.ts';
import type { Clock, Host, PeerTransport, SnapshotFile, SnapshotFrame } from '../replica/env.ts';
import type { DiskFile, DiskIo } from '../disk/disk-io.ts';
import { nativeDisk } from '../disk/native-disk.ts';
import { writeNodeIdentity } from '../device/checkpoint.ts';
import { beginInstall, finishInstall, installStagedFiles, SnapshotStaging } from '../device/snapshot-staging.ts';
import { encodeRemoved, encodeSnapBegin, encodeSnapBlocks, encodeSnapChunk, encodeSnapEnd, encodeSnapResult, FrameKind, type Frame } from './codec.ts';
import { probeFileSize } from './file-size-probe.ts';
import { compressBlockAsync } from '../device/lz4.ts';
import type { Transport } from './transport.ts';

export const realClock: Clock = {
  now: () => performance.timeOrigin + performance.now(),
  after: (ms, fn) => {
    const t = setTimeout(fn, ms);
    return () => clearTimeout(t);
  },
  defer: (fn) => void setImmediate(fn),
};

/** The socket transport as the core's PeerTransport; `replyTo` answers a stranger on the connection it spoke on. */
export function peerTransport(t: Transport, replyTo: (peer: string) => ((frame: Buffer) => void) | undefined): PeerTransport {
  return {
    get clusterId() {
      return t.clusterId;
    },
    set clusterId(id: string) {
      t.clusterId = id;
    },
    send: (m: Message) => void t.send(m),
    sendFrame: (peer, f) => t.sendFrame(peer, encodeSnapshotFrame(f)),
    waitDrain: (peer) => t.waitDrain(peer),
    connection: (peer) => t.connection(peer),
    tellRemoved: (peer) => replyTo(peer)?.(encodeRemoved(peer)),
    addPeer: (id, address) => t.addPeer(id, address),
    removePeer: (id) => t.removePeer(id),
    peerAddress: (id) => t.peerAddress(id),
    status: () => t.status(),
    connectAll: () => t.connectAll(),
    close: () => t.close(),
  };
}

/** Encodes a core snapshot frame for the wire (chunk data is copied: the sender reuses its buffer). */
export function encodeSnapshotFrame(f: SnapshotFrame): Buffer[] {
  switch (f.kind) {
    case 'begin':
      return encodeSnapBegin({ snapshotId: f.snapshotId, metadata: f.metadata, state: f.state });
    case 'chunk':
      return [Buffer.concat(encodeSnapChunk({ snapshotId: f.snapshotId, file: f.file, offset: f.offset, data: f.data, zeroBytes: f.zeroBytes, ...(f.lz4 ? { lz4: true as const } : {}) }))];
    case 'blocks':
      // Not copied: the sender gives each frame buffers of its own.
      return encodeSnapBlocks({ snapshotId: f.snapshotId, snapshot: f.snapshot, blocks: f.blocks, data: f.data });
    case 'end':
      return [encodeSnapEnd({ snapshotId: f.snapshotId, chunks: f.chunks, appliedEnd: f.appliedEnd })];
    case 'result':
      return [encodeSnapResult({ snapshotId: f.snapshotId, ok: f.ok, reason: f.reason, ...(f.more ? { more: true as const } : {}), ...(f.lz4 ? { lz4: true as const } : {}) })];
  }
}

/** A decoded wire frame as a core snapshot frame (undefined: not a snapshot frame). */
export function snapshotFrameOf(f: Frame): SnapshotFrame | undefined {
  switch (f.kind) {
    case FrameKind.SnapBegin:
      return { kind: 'begin', snapshotId: f.snapshotId, metadata: f.metadata, state: f.state };
    case FrameKind.SnapChunk:
      return { kind: 'chunk', snapshotId: f.snapshotId, file: f.file, offset: f.offset, data: f.data, zeroBytes: f.zeroBytes, ...(f.lz4 ? { lz4: true as const } : {}) };
    case FrameKind.SnapBlocks:
      return { kind: 'blocks', snapshotId: f.snapshotId, snapshot: f.snapshot, blocks: f.blocks, data: f.data };
    case FrameKind.SnapEnd:
      return { kind: 'end', snapshotId: f.snapshotId, chunks: f.chunks, appliedEnd: f.appliedEnd };
    case FrameKind.SnapResult:
      return { kind: 'result', snapshotId: f.snapshotId, ok: f.ok, reason: f.reason, ...(f.more ? { more: true as const } : {}), ...(f.lz4 ? { lz4: true as const } : {}) };
    default:
      return undefined;
  }
}

export function realHost(dataDir: string, nodeId: string, space: Host['space'], disk: DiskIo = nativeDisk): Host {
  return {
    space,
    probeFileSize: (size) => probeFileSize(dataDir, size),
    compressChunk: compressBlockAsync,
    snapshots: diskSnapshots(dataDir, nodeId, disk),
  };
}

/** Snapshot files in the data directory, on any DiskIo (the simulator passes its simulated disk). */
export function diskSnapshots(dataDir: string, nodeId: string, disk: DiskIo): Host['snapshots'] {
  return {
    beginStaging: (snapshotId, from, metadata, state) => SnapshotStaging.begin(dataDir, snapshotId, from, metadata, state, disk),
    installFiles: async (metadata) => {
      await beginInstall(dataDir, metadata, disk);
      await installStagedFiles(dataDir, disk);
    },
    finishInstall: () => finishInstall(dataDir, disk),
    recordClusterId: (clusterId) => writeNodeIdentity(dataDir, { clusterId, nodeId }, disk),
    openForSend: async (path): Promise<SnapshotFile | undefined> => {
      const f = await disk.openFile(path, { readOnly: true }).catch(() => undefined);
      if (!f) return undefined;
      return {
        dataRanges: (size) => dataRanges(disk, f, size),
        read: (buf, offset) => disk.pread(f, buf, offset),
        close: () => disk.closeFile(f),
      };
    },
  };
}

/** Ranges of [0, size) that may hold data; the whole file where the allocation map is unavailable. */
function dataRanges(disk: DiskIo, f: DiskFile, size: number): { offset: number; end: number }[] {
  const out: { offset: number; end: number }[] = [];
  try {
    let at = 0;
    while (at < size) {
      const extents = disk.extents(f, at, size - at);
      if (extents.length === 0) break;
      for (const e of extents) {
        // flags & 1: a hole; & 2: reads as zeroes (unwritten).
        if ((e.flags & 3) === 0) out.push({ offset: at, end: at + e.length });
        at += e.length;
      }
    }
    return out;
  } catch {
    return [{ offset: 0, end: size }];
  }
}
