// What makes a device name and size acceptable: one definition, used by the
// configuration parser (--device), the admin API, the proposing node and the
// apply of a replicated table command (so apply checks nothing a proposal
// was not checked against).

import { limits } from '../limits.ts';

/** Letters, digits, '.', '_', '-'; not starting with a separator: safe as an export name, a path part, a URL segment. */
export const DEVICE_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** Why `name` is not a device name, or undefined if it is one. */
export function deviceNameProblem(name: string): string | undefined {
  if (typeof name !== 'string' || name === '') return 'a device name is required';
  if (Buffer.byteLength(name) > limits.deviceNameBytesMax) return `device name longer than ${limits.deviceNameBytesMax} bytes`;
  if (!DEVICE_NAME_RE.test(name)) return `bad device name "${name}" (letters, digits, '.', '_', '-'; starting with a letter or digit)`;
  return undefined;
}

/** Why `size` (bytes) is not a device size, or undefined if it is one. */
export function deviceSizeProblem(size: number): string | undefined {
  if (!Number.isSafeInteger(size) || size <= 0) return `device size must be a positive whole number of bytes, got ${size}`;
  if (size > limits.deviceBytesMax) return `device size ${size} is over the limit of ${limits.deviceBytesMax} bytes`;
  if (size % limits.deviceSizeAlignmentBytes !== 0) return `device size must be a multiple of ${limits.deviceSizeAlignmentBytes} bytes, got ${size}`;
  return undefined;
}
