// The interface between the NBD server (src/nbd) and whatever stores blocks.
// nbdkit's backends are the model: a device states what it can do, and the
// handshake flags follow from that.

import type { Extent } from '../disk/disk-io.ts';

export interface BlockDeviceCapabilities {
  /** Writes are refused with EPERM. */
  readOnly: boolean;
  /** flush() makes every acknowledged write durable. */
  canFlush: boolean;
  /** write(..., {fua:true}) is durable when it resolves. */
  canFua: boolean;
  canTrim: boolean;
  canWriteZeroes: boolean;
  /** writeZeroes(..., {fast:true}) can fail fast with ENOTSUP instead of writing. */
  canFastZero: boolean;
  /** Every connection (to any node) sees the same data: CAN_MULTI_CONN. */
  canMultiConn: boolean;
  /** blockStatus() reports holes. */
  canExtents: boolean;
  canCache: boolean;
}

// One run of the allocation map (NBD base:allocation), defined with the disk layer that reads it.
export type { Extent };

export interface WriteOptions {
  /** Force unit access: durable before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Leave allocated (NBD_CMD_FLAG_NO_HOLE). */
  noHole?: boolean;
  /** Fail with ENOTSUP rather than do slow work (NBD_CMD_FLAG_FAST_ZERO). */
  fast?: boolean;
}

/** A run of a sparse read: `data` is null where the bytes read as zeroes (a hole). */
export interface ReadSegment {
  offset: number;
  length: number;
  data: Buffer | null;
}

/**
 * A block device. Offsets and lengths are validated by the caller against
 * `size`; implementations may still assert them. Errors are thrown as
 * Error objects with an errno-style `code` (EIO, ENOSPC, EPERM, EINVAL,
 * ENOTSUP, ESHUTDOWN, EOVERFLOW) that src/nbd maps to the NBD error.
 */
export interface BlockDevice {
  readonly name: string;
  readonly description?: string;
  /** Size in bytes. */
  readonly size: number;
  readonly capabilities: BlockDeviceCapabilities;
  /** Preferred block size (NBD_INFO_BLOCK_SIZE). */
  readonly preferredBlockSize?: number;
  /** Minimum block size (NBD_INFO_BLOCK_SIZE), when above 1: writes must be aligned to it. */
  readonly minimumBlockSize?: number | undefined;
  /** The export whose grants (export-allow) govern this one: a snapshot export goes by its device's. */
  readonly accessName?: string;
  /** Meta contexts besides base:allocation that NBD_OPT_SET_META_CONTEXT may select (a snapshot's qemu:dirty-bitmap:NAME). */
  readonly metaContexts?: readonly string[];
  /** NBD_CMD_BLOCK_STATUS for one of metaContexts: extents whose flags are that context's. */
  contextStatus?(context: string, offset: number, length: number): Promise<Extent[]>;
  /** Why this node cannot serve the export now (refused at the handshake with that reason), if it cannot. */
  unavailable?(): string | undefined;

  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Like read(), but runs that read as zeroes come back as `data: null`, so a
   * structured reply can send them as NBD_REPLY_TYPE_OFFSET_HOLE. Segments are
   * consecutive and cover exactly [offset, offset+length).
   */
  readSparse?(offset: number, length: number): Promise<ReadSegment[]>;
  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void>;
  /**
   * write() of the buffers back to back. The NBD server passes a large
   * payload as the pieces it arrived in, sparing a gathering copy. The
   * buffers are not modified later, but must not be retained once it resolves.
   */
  writev?(offset: number, data: readonly Buffer[], options?: WriteOptions): Promise<void>;
  flush(): Promise<void>;
  trim(offset: number, length: number, options?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void>;
  /** Hint to read ahead (NBD_CMD_CACHE). */
  cache?(offset: number, length: number): Promise<void>;
  /** Allocation extents covering [offset, offset+length) (may end early). */
  blockStatus?(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/** Resolves export names to devices; the replicated device table implements it too. */
export interface DeviceTable {
  /** Name of the export served when the client asks for "" (the default export). */
  readonly defaultName: string | undefined;
  get(name: string): BlockDevice | undefined;
  list(): BlockDevice[];
}
