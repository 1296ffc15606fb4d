// The log storage Raft reads from. Raft itself never writes: entries and hard
// state to persist come out of Ready, the runtime makes them durable (through
// src/wal in a node, MemoryStorage in tests) and then calls advance().
//
// All methods are synchronous: the WAL keeps the uncompacted log's index and
// payloads in memory, bounded by compaction (checkpoints).

import type { ConfState, Entry, HardState, SnapshotMetadata } from './types.ts';

export class StorageError extends Error {
  constructor(
    readonly code: 'XDEVICE_ERR_COMPACTED' | 'XDEVICE_ERR_UNAVAILABLE' | 'XDEVICE_ERR_SNAPSHOT_OUT_OF_DATE',
    message: string,
  ) {
    super(message);
    this.name = 'StorageError';
  }
}

export interface Storage {
  /** Hard state and membership as of the last restart. */
  initialState(): { hardState: HardState; confState: ConfState };
  /**
   * Entries in [lo, hi), stopping once their payload bytes would exceed
   * maxBytes (but always at least one entry when lo < hi).
   * Throws StorageError XDEVICE_ERR_COMPACTED if lo <= the snapshot index,
   * XDEVICE_ERR_UNAVAILABLE if hi > lastIndex()+1.
   */
  entries(lo: number, hi: number, maxBytes: number): Entry[];
  /** Term of the entry at index; the snapshot's term at firstIndex()-1. Throws COMPACTED / UNAVAILABLE. */
  term(index: number): number;
  /** Index of the first entry still held (snapshot index + 1). */
  firstIndex(): number;
  lastIndex(): number;
  /** Metadata of the latest snapshot (index 0 if none); its data is streamed by the state machine. */
  snapshotMetadata(): SnapshotMetadata;
}
