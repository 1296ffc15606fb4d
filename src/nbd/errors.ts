// The one place where failures become NBD error values (nbdkit's nbd_errno()).
// Devices throw Errors carrying an errno-style `code`; the transmission phase
// replies with whatever this module says, and nothing else chooses a number.

import { XDeviceError } from '../errors.ts';
import { NbdError, NBD_CMD_FLAG_DF, NBD_CMD_FLAG_FAST_ZERO } from './constants.ts';

/** A peer broke the protocol: the connection is closed (a hard disconnect). */
export class NbdProtocolError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_NBD_PROTOCOL', message);
  }
}

/** The server answered an option or a command with an error. */
export class NbdRemoteError extends XDeviceError {
  /** NBD_E* value (transmission) or NBD_REP_ERR_* (handshake). */
  readonly nbdError: number;
  constructor(nbdError: number, message: string) {
    super('XDEVICE_ERR_NBD_REMOTE', message);
    this.nbdError = nbdError;
  }
}

/** The connection closed (or was closed) while a request was outstanding. */
export class NbdConnectionClosedError extends XDeviceError {
  constructor(message = 'NBD connection closed') {
    super('XDEVICE_ERR_NBD_CLOSED', message);
  }
}

/** An Error with an errno-style code, as devices throw them. */
export function errnoError(code: string, message: string): Error & { code: string } {
  const error = new Error(`${code}: ${message}`) as Error & { code: string };
  error.code = code;
  return error;
}

/**
 * Maps a failure from a device to the NBD error the spec names. `flags` are
 * the request's command flags: ENOTSUP and EOVERFLOW are only legal answers
 * to requests that asked for them (FAST_ZERO, DF); elsewhere they become EINVAL.
 */
export function nbdErrorOf(error: unknown, flags = 0): NbdError {
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  switch (code) {
    case 'EPERM':
    case 'EROFS':
    case 'EACCES':
      return NbdError.EPERM;
    case 'EIO':
      return NbdError.EIO;
    case 'ENOMEM':
      return NbdError.ENOMEM;
    case 'ENOSPC':
    case 'EDQUOT':
    case 'EFBIG':
      return NbdError.ENOSPC;
    case 'ESHUTDOWN':
      return NbdError.ESHUTDOWN;
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
      return flags & NBD_CMD_FLAG_FAST_ZERO ? NbdError.ENOTSUP : NbdError.EINVAL;
    case 'EOVERFLOW':
      return flags & NBD_CMD_FLAG_DF ? NbdError.EOVERFLOW : NbdError.EINVAL;
    case 'EINVAL':
      return NbdError.EINVAL;
    default:
      // An error without an errno (a bug, a failed assertion in a device) is
      // an I/O error to the client; the server logs the real cause.
      return NbdError.EIO;
  }
}

export function nbdErrorName(error: number): string {
  switch (error) {
    case NbdError.OK: return 'OK';
    case NbdError.EPERM: return 'EPERM';
    case NbdError.EIO: return 'EIO';
    case NbdError.ENOMEM: return 'ENOMEM';
    case NbdError.EINVAL: return 'EINVAL';
    case NbdError.ENOSPC: return 'ENOSPC';
    case NbdError.EOVERFLOW: return 'EOVERFLOW';
    case NbdError.ENOTSUP: return 'ENOTSUP';
    case NbdError.ESHUTDOWN: return 'ESHUTDOWN';
    default: return `E${error}`;
  }
}
