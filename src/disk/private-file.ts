// Files that hold secrets or say who may do what (cluster-secret-file,
// encryption-key-file, admin-clients-file): each must be a regular file that
// group and others cannot open, and of a bounded size, before it is read.
// One check for all of them; the caller names its key and its error type.

import { readFileSync, statSync } from 'node:fs';

/** Why a file of this mode may not hold a secret, or undefined if it may. */
export function privateModeProblem(path: string, mode: number): string | undefined {
  return (mode & 0o077) !== 0 ? `${path} is accessible by group or others (mode ${(mode & 0o777).toString(8)}); chmod 600 it` : undefined;
}

/**
 * The bytes of a private file, or `fail(message)` thrown: messages start
 * with `key: ` (the configuration key that named the file).
 */
export function readPrivateFile(path: string, key: string, bytesMax: number, fail: (message: string) => Error): Buffer {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw fail(`${key}: cannot read ${path}: ${(err as Error).message}`);
  }
  if (!st.isFile()) throw fail(`${key}: ${path} is not a regular file`);
  const problem = privateModeProblem(path, st.mode);
  if (problem) throw fail(`${key}: ${problem}`);
  if (st.size > bytesMax) throw fail(`${key}: ${path} is larger than ${bytesMax} bytes`);
  try {
    return readFileSync(path);
  } catch (err) {
    throw fail(`${key}: cannot read ${path}: ${(err as Error).message}`);
  }
}
