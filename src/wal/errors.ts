// The WAL's failure modes, each a stable code.

import { XDeviceError } from '../errors.ts';

/** A record before the tail is damaged, or a segment is missing: the node must not start. The files are left untouched. */
export class WalCorruptError extends XDeviceError {
  constructor(
    readonly segment: string,
    readonly offset: number,
    why: string,
  ) {
    super('XDEVICE_ERR_WAL_CORRUPT', `WAL corrupt in segment ${segment} at offset ${offset}: ${why}`);
  }
}

/**
 * A segment the log needs is gone (the last one, after a sealed segment; one
 * in the middle of the sequence; the ones holding entries the rest refer to).
 * Start-up refuses, naming it; nothing is changed on disk.
 */
export class WalMissingError extends XDeviceError {
  constructor(
    readonly segment: string,
    why: string,
  ) {
    super('XDEVICE_ERR_WAL_MISSING', `WAL incomplete at segment ${segment}: ${why}`);
  }
}

/**
 * A write or fdatasync failed: the page cache can no longer be trusted, so
 * the log refuses every further append (it "fails closed") until the process
 * restarts and recovers from what is really on disk.
 */
export class WalFailedError extends XDeviceError {
  constructor(cause: unknown) {
    const detail = cause instanceof Error ? cause.message : String(cause);
    super('XDEVICE_ERR_WAL_FAILED', `WAL failed closed after an I/O error: ${detail}`, { cause });
  }
}

export class WalClosedError extends XDeviceError {
  constructor() {
    super('XDEVICE_ERR_WAL_CLOSED', 'WAL is closed');
  }
}

/** A caller asked for something the log cannot represent (a gap, a batch too large for a segment). */
export class WalUsageError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_WAL_USAGE', message);
  }
}

/** The test-only fault file holds something other than a fault specification. */
export class FaultFileError extends XDeviceError {
  constructor(
    readonly path: string,
    why: string,
  ) {
    super('XDEVICE_ERR_FAULT_FILE', `fault file ${path}: ${why}`);
  }
}
