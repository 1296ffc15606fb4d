// What the block store's unit tests share: a temporary directory removed at
// the end of the test, and a log of entries as Raft would commit them.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import type { RequestId } from '../../../src/device/commands.ts';
import { EntryType, type Entry } from '../../../src/raft/types.ts';

/** A new directory under the system's temporary directory, removed when `t` ends. */
export async function tempDir(t: Test, prefix = 'xdevice-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Entries at consecutive indexes in term 1, with request ids of one client. */
export class Log {
  entries: Entry[] = [];
  seq = 0;
  constructor(readonly clientId = 7) {}
  id(): RequestId {
    this.seq++;
    return { clientId: this.clientId, seq: this.seq, firstUnacked: this.seq };
  }
  add(data: Buffer, type = EntryType.Normal): Entry {
    const e = { term: 1, index: this.entries.length + 1, type, data };
    this.entries.push(e);
    return e;
  }
  /** add() of a command encoded with the next request id. */
  propose(encode: (id: RequestId) => Buffer): Entry {
    return this.add(encode(this.id()));
  }
}
