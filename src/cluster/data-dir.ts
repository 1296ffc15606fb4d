// Opening a node's data directory: the exclusive lock, taken before anything
// in the directory is read, and the checks that refuse to start on state that
// is missing or does not fit together (DESIGN contract 9: nothing deletes
// what a user did not delete).
//
//   <data-dir>/lock   flock(LOCK_EX) held for the life of the process; holds
//                     the holder's pid so a second start can name it.
//
// A second xdevice-node on the same directory would recover the WAL under
// the first one's feet, delete the files it has open and serve as a second
// leader; the lock makes it exit 2 instead.

import { closeSync, existsSync, ftruncateSync, mkdirSync, readFileSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { XDeviceError } from '../errors.ts';
import * as native from '../native.ts';
import { EntryType, type ConfState, type Entry } from '../raft/types.ts';
import { DEVICES_DIR, deviceFileName } from '../device/block-store.ts';
import { CommandOp, decodeCommand } from '../device/commands.ts';
import type { DeviceRecord } from '../device/checkpoint.ts';

export const LOCK_FILE = 'lock';

/** Start-up refused because of the data directory (xdevice-node exits 2: an operator must look). */
export class StartRefusedError extends XDeviceError {
  constructor(code: 'XDEVICE_ERR_DATA_DIR_LOCKED' | 'XDEVICE_ERR_STATE_MISSING', message: string) {
    super(code, message);
  }
}

export const START_REFUSAL_CODES: ReadonlySet<string> = new Set(['XDEVICE_ERR_DATA_DIR_LOCKED', 'XDEVICE_ERR_STATE_MISSING', 'XDEVICE_ERR_WAL_MISSING']);

export interface DataDirLock {
  readonly dir: string;
  release(): void;
}

/** Creates `dir` if needed and locks it; throws StartRefusedError naming the holder if another process has it. */
export function lockDataDir(dir: string, pid = process.pid): DataDirLock {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, LOCK_FILE);
  const fd = native.lockFile(path);
  if (fd === undefined) {
    let holder = 'unknown';
    try {
      const text = readFileSync(path, 'utf8').trim();
      if (/^\d+$/.test(text)) holder = text;
    } catch {
      // unreadable: still locked, the pid is just not known
    }
    throw new StartRefusedError('XDEVICE_ERR_DATA_DIR_LOCKED', `data directory ${resolve(dir)} is in use by another xdevice-node (pid ${holder}); stop it first, or give this node its own --data-dir`);
  }
  ftruncateSync(fd, 0);
  writeSync(fd, `${pid}\n`, 0);
  let released = false;
  return {
    dir,
    release() {
      if (released) return;
      released = true;
      closeSync(fd);
    },
  };
}

export interface StartState {
  dataDir: string;
  /** node.id: undefined on a fresh directory; clusterId '' until a joining node got its snapshot. */
  identity: { clusterId: string; nodeId: string } | undefined;
  /** The checkpoint's applied index, undefined when there is no checkpoint file. */
  checkpointIndex: number | undefined;
  wal: { lastIndex: number; snapshotIndex: number; term: number; confState: ConfState };
}

/**
 * Refuses (StartRefusedError, exit 2) a directory whose pieces do not fit:
 * a node that has been part of a cluster keeps a WAL that reaches its
 * checkpoint, a checkpoint if its WAL was compacted, and a member list.
 * Starting anyway would begin at term 0 with no voters and treat the
 * device files as orphans.
 */
export function checkStartState(s: StartState): void {
  const joined = s.identity !== undefined && s.identity.clusterId !== '';
  const walEmpty = s.wal.lastIndex === 0 && s.wal.snapshotIndex === 0 && s.wal.term === 0;
  const wal = join(s.dataDir, 'wal');
  if (joined && walEmpty) {
    throw new StartRefusedError(
      'XDEVICE_ERR_STATE_MISSING',
      `${wal} holds no log, but ${join(s.dataDir, 'node.id')} says this node belongs to cluster ${s.identity!.clusterId}` +
        (s.checkpointIndex !== undefined ? ` and the checkpoint is at index ${s.checkpointIndex}` : '') +
        ': the WAL does not cover the checkpoint (WAL files missing?). Restore them, or remove the node from the cluster and re-add it with an empty --data-dir',
    );
  }
  if (joined && s.checkpointIndex === undefined && s.wal.snapshotIndex > 0) {
    throw new StartRefusedError(
      'XDEVICE_ERR_STATE_MISSING',
      `${join(s.dataDir, 'checkpoint')} is missing, but the WAL starts after index ${s.wal.snapshotIndex}: the device files cannot be trusted. Restore the checkpoint, or re-add the node with an empty --data-dir`,
    );
  }
  const members = s.wal.confState.voters.length + s.wal.confState.learners.length + s.wal.confState.votersOutgoing.length;
  if (joined && members === 0) {
    throw new StartRefusedError(
      'XDEVICE_ERR_STATE_MISSING',
      `the WAL in ${wal} records no members, but this node has joined cluster ${s.identity!.clusterId}: the log's start is missing. Restore the WAL, or re-add the node with an empty --data-dir`,
    );
  }
}

/**
 * A device the checkpoint lists must still have its file, unless an entry
 * after the checkpoint deletes the device (a crash between that delete and
 * the next checkpoint). Recreating it empty would replay only the writes
 * since the checkpoint over zeros: data lost without a word.
 */
export function checkDeviceFiles(dataDir: string, devices: readonly DeviceRecord[], laterEntries: readonly Entry[]): void {
  for (const d of devices) {
    const path = join(dataDir, DEVICES_DIR, deviceFileName(d.id));
    if (existsSync(path)) continue;
    const deletedLater = laterEntries.some((e) => {
      if (e.type !== EntryType.Normal || e.data.length < 2 || e.data[1] !== CommandOp.DeleteDevice) return false;
      try {
        const c = decodeCommand(e.data);
        return c.op === CommandOp.DeleteDevice && c.name === d.name;
      } catch {
        return false;
      }
    });
    if (deletedLater) continue;
    throw new StartRefusedError(
      'XDEVICE_ERR_STATE_MISSING',
      `device file ${path} of device ${d.name} is missing, and no log entry after the checkpoint deletes the device: restore the file, or re-add this node with an empty --data-dir (it then copies the device from the others)`,
    );
  }
}
