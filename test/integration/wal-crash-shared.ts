// What wal-crash.test.ts and its child agree on: options and entry contents.

import type { Entry } from '../../src/raft/types.ts';
import type { WalOptions } from '../../src/wal/wal.ts';

/**
 * Small segments so crashes also hit segment rolls. XDEVICE_WAL_CRASH_SYNC_MODE=fdatasync
 * crashes the write-then-fdatasync batches (a linked pair on the addon's uring path)
 * instead of the default O_DSYNC writes.
 */
export const crashWalOptions: WalOptions = {
  segmentBytes: 1024 * 1024,
  alignmentBytes: 4096,
  batchBytesMax: 256 * 1024,
  syncMode: process.env.XDEVICE_WAL_CRASH_SYNC_MODE === 'fdatasync' ? 'fdatasync' : 'dsync',
};

/** Size and bytes follow from (index, term): the parent can check an entry without having seen it. */
export function crashEntry(index: number, term: number): Entry {
  let x = (index * 2654435761 + term * 40503) >>> 0;
  const size = 1 + (x % 6000);
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    data[i] = x >>> 24;
  }
  return { index, term, type: index % 2, data };
}
