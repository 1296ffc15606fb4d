// Errors the replica's admin operations raise (XDEVICE_ERR_* codes the admin API maps to HTTP statuses).

import { XDeviceError } from '../errors.ts';

export class ReplicaError extends XDeviceError {}
