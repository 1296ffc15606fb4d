// Errors the replica's admin operations raise (XDEVICE_ERR_* codes the admin API maps to HTTP statuses).

import { XDeviceError } from '../errors.ts';

export class ReplicaError extends XDeviceError {}

/**
 * A failed proposal as the admin API sees it: an error that carries an
 * XDEVICE_ERR_* code becomes a ReplicaError with that code (so it maps to its
 * HTTP status); anything else is rethrown as it is.
 */
export function asReplicaError(err: unknown): never {
  const code = (err as XDeviceError).code;
  if (typeof code === 'string' && code.startsWith('XDEVICE_ERR_')) throw new ReplicaError(code, (err as Error).message);
  throw err;
}
