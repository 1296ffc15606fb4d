// Every request is checked here before anything executes it (nbdkit's
// validate_request). The answer is the NBD error to reply with, or OK.
// Order matters where several rules apply: read-only first, then range,
// then flags, then what was negotiated.

import { limits } from '../limits.ts';
import {
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLAGS_KNOWN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NbdCommand,
  NbdError,
} from './constants.ts';

export interface ValidationContext {
  size: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** Some meta context (base:allocation or another) was selected: BLOCK_STATUS is allowed. */
  baseAllocation: boolean;
}

export function validateRequest(
  type: number,
  flags: number,
  offset: number,
  length: number,
  ctx: ValidationContext,
): NbdError {
  const tflags = ctx.transmissionFlags;
  const isWrite = type === NbdCommand.WRITE || type === NbdCommand.TRIM || type === NbdCommand.WRITE_ZEROES;
  if (isWrite && (tflags & NBD_FLAG_READ_ONLY) !== 0) return NbdError.EPERM;

  switch (type) {
    case NbdCommand.READ:
    case NbdCommand.WRITE:
    case NbdCommand.TRIM:
    case NbdCommand.CACHE:
    case NbdCommand.WRITE_ZEROES:
    case NbdCommand.BLOCK_STATUS:
      if (offset > ctx.size || length > ctx.size - offset) {
        // The spec: writes beyond the end are ENOSPC, everything else EINVAL.
        return type === NbdCommand.WRITE || type === NbdCommand.WRITE_ZEROES ? NbdError.ENOSPC : NbdError.EINVAL;
      }
      break;
    case NbdCommand.FLUSH:
      if (offset !== 0 || length !== 0) return NbdError.EINVAL;
      break;
    default:
      return NbdError.EINVAL;
  }

  if ((flags & ~NBD_CMD_FLAGS_KNOWN) !== 0) return NbdError.EINVAL;
  if ((flags & NBD_CMD_FLAG_NO_HOLE) !== 0 && type !== NbdCommand.WRITE_ZEROES) return NbdError.EINVAL;
  if ((flags & NBD_CMD_FLAG_FAST_ZERO) !== 0) {
    if (type !== NbdCommand.WRITE_ZEROES || (tflags & NBD_FLAG_SEND_FAST_ZERO) === 0) return NbdError.EINVAL;
  }
  if ((flags & NBD_CMD_FLAG_DF) !== 0 && (type !== NbdCommand.READ || !ctx.structuredReplies)) return NbdError.EINVAL;
  if ((flags & NBD_CMD_FLAG_REQ_ONE) !== 0 && type !== NbdCommand.BLOCK_STATUS) return NbdError.EINVAL;
  if ((flags & NBD_CMD_FLAG_FUA) !== 0 && (tflags & NBD_FLAG_SEND_FUA) === 0) return NbdError.EINVAL;

  if ((type === NbdCommand.READ || type === NbdCommand.WRITE) && length > limits.requestBytesMax) return NbdError.EINVAL;

  switch (type) {
    case NbdCommand.FLUSH:
      if ((tflags & NBD_FLAG_SEND_FLUSH) === 0) return NbdError.EINVAL;
      break;
    case NbdCommand.TRIM:
      if ((tflags & NBD_FLAG_SEND_TRIM) === 0) return NbdError.EINVAL;
      break;
    case NbdCommand.WRITE_ZEROES:
      if ((tflags & NBD_FLAG_SEND_WRITE_ZEROES) === 0) return NbdError.EINVAL;
      break;
    case NbdCommand.CACHE:
      if ((tflags & NBD_FLAG_SEND_CACHE) === 0) return NbdError.EINVAL;
      break;
    case NbdCommand.BLOCK_STATUS:
      if (!ctx.structuredReplies || !ctx.baseAllocation) return NbdError.EINVAL;
      // Every descriptor must have a nonzero length, so an empty query has no valid answer.
      if (length === 0) return NbdError.EINVAL;
      break;
  }
  return NbdError.OK;
}
