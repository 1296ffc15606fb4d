// Test-only plumbing: lets a fault test make a running node's disk fail or
// slow down from the outside. The node binary watches the file named by
// $XDEVICE_FAULT_FILE; a test writes JSON there and the native fault hook
// follows it, so a real process can be given a dead or slow disk without
// restarts and without a debugging endpoint in the production API.
//
//   { "fdatasyncErrno"?: "EIO" | 5, "pwriteErrno"?: "ENOSPC" | 28,
//     "afterCalls"?: n, "delayUs"?: n }
//
// `{}`, an empty file or no file at all means no faults. Writers should
// replace the file atomically (write elsewhere, rename); a half-written file is
// logged and ignored, and the faults in force stay until a valid one appears.

import { readFileSync, statSync, type Stats } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import type { Logger } from 'pino';
import { limits } from '../limits.ts';
import { setFaultInjection, type FaultSpec } from '../native.ts';
import { FaultFileError } from './errors.ts';

export interface FaultFileWatch {
  /** Stops watching. The faults in force stay in force (a dead disk stays dead). */
  stop(): void;
}

const errnoByName = osConstants.errno as Record<string, number>;
const allowedKeys = new Set(['fdatasyncErrno', 'pwriteErrno', 'afterCalls', 'delayUs']);

/** Parses a fault file's text; null means no faults. Throws FaultFileError on anything malformed. */
export function parseFaultFile(path: string, text: string): FaultSpec | null {
  if (text.trim() === '') return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new FaultFileError(path, `not JSON (${(err as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new FaultFileError(path, 'expected a JSON object');
  }
  const fields = value as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (!allowedKeys.has(key)) throw new FaultFileError(path, `unknown key "${key}"`);
  }
  const spec: FaultSpec = {};
  const fdatasyncErrno = errnoField(path, fields, 'fdatasyncErrno');
  if (fdatasyncErrno !== undefined) spec.fdatasyncErrno = fdatasyncErrno;
  const pwriteErrno = errnoField(path, fields, 'pwriteErrno');
  if (pwriteErrno !== undefined) spec.pwriteErrno = pwriteErrno;
  const afterCalls = countField(path, fields, 'afterCalls');
  if (afterCalls !== undefined) spec.afterCalls = afterCalls;
  const delayUs = countField(path, fields, 'delayUs');
  if (delayUs !== undefined && delayUs > 0) spec.delayUs = delayUs;
  return spec.fdatasyncErrno === undefined && spec.pwriteErrno === undefined && spec.delayUs === undefined ? null : spec;
}

function errnoField(path: string, fields: Record<string, unknown>, key: string): number | undefined {
  const v = fields[key];
  if (v === undefined) return undefined;
  if (typeof v === 'string') {
    const n = errnoByName[v];
    if (n === undefined) throw new FaultFileError(path, `${key}: unknown errno name "${v}"`);
    return n;
  }
  if (typeof v === 'number' && Number.isInteger(v) && v > 0 && v < 4096) return v;
  throw new FaultFileError(path, `${key}: expected an errno name like "EIO" or a positive errno number`);
}

function countField(path: string, fields: Record<string, unknown>, key: string): number | undefined {
  const v = fields[key];
  if (v === undefined) return undefined;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  throw new FaultFileError(path, `${key}: expected a non-negative integer`);
}

// Identity of one version of the file. ext4 stamps mtime with a coarse clock,
// so two writes within a tick can share an mtime: size and ctime help tell
// them apart, and the content comparison below settles the rest.
function versionOf(st: Stats | undefined): string {
  return st === undefined ? 'missing' : `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
}

/**
 * Applies the fault file at `path` through setFaultInjection now, then again
 * whenever it changes (polled every limits.faultFilePollMs). Each change is
 * logged; a malformed file is logged and leaves the current faults alone.
 * A file that disappears clears the faults.
 */
export function watchFaultFile(path: string, logger: Logger): FaultFileWatch {
  let version: string | undefined;
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  const refuse = (err: unknown): void => {
    logger.error({ err, path }, 'ignoring a malformed fault file; the faults in force stay');
  };
  // Every new version is applied, even with the same text: rewriting a file
  // re-arms its afterCalls countdown.
  const consider = (text: string): void => {
    if (stopped) return;
    let spec: FaultSpec | null;
    try {
      spec = parseFaultFile(path, text);
    } catch (err) {
      refuse(err);
      return;
    }
    setFaultInjection(spec);
    logger.warn({ path, faults: spec ?? {} }, spec === null ? 'fault injection cleared' : 'fault injection armed');
  };

  const tooLong = (st: Stats): FaultFileError | undefined =>
    st.size > limits.faultFileBytesMax ? new FaultFileError(path, `longer than ${limits.faultFileBytesMax} bytes`) : undefined;

  // The first look is synchronous so that faults already described when the
  // node starts apply to its very first write.
  let firstStat: Stats | undefined;
  try {
    firstStat = statSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  version = versionOf(firstStat);
  // No file yet: the process starts without faults, nothing to say.
  if (firstStat !== undefined) {
    const long = tooLong(firstStat);
    if (long) refuse(long);
    else consider(readFileSync(path, 'utf8'));
  }

  const poll = async (): Promise<void> => {
    let st: Stats | undefined;
    try {
      st = await stat(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const next = versionOf(st);
    if (next === version) return;
    let text = '';
    if (st !== undefined) {
      const long = tooLong(st);
      if (long) {
        version = next;
        refuse(long);
        return;
      }
      try {
        text = await readFile(path, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      }
    }
    // Only now: a failed read is retried on the next poll.
    version = next;
    consider(text);
  };

  const schedule = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      poll()
        .catch((err: unknown) => logger.error({ err, path }, 'cannot read the fault file; will retry'))
        .finally(schedule);
    }, limits.faultFilePollMs);
    // Watching must never be what keeps a node process alive.
    timer.unref();
  };
  schedule();

  return {
    stop(): void {
      stopped = true;
      if (timer !== undefined) clearTimeout(timer);
    },
  };
}
