// Bugs planted on purpose, for the simulator's self-test only
// (test/sim/planted-bugs.test.ts): each is a real way to lose data or serve
// stale reads, and the simulator must find each within a bound of seeds.
// Production never sets any of them.

import type { TestingBugs } from '../raft/config.ts';
import { EntryType, type Entry } from '../raft/types.ts';
import { decodeCommand, type RequestId } from '../device/commands.ts';
import type { RequestSession } from './requests.ts';

/** Runtime bugs the simulator must find (each is a real way to lose data or serve stale reads). */
export interface PlantedBugs {
  /** Settle a proposal as soon as it is appended locally, before it commits. */
  ackBeforeCommit?: boolean;
  /** Promote a learner as soon as it is added. */
  promoteEarly?: boolean;
  /** Serve reads without waiting for the read index to be applied. */
  readBeforeApplied?: boolean;
  /** Protocol bugs planted in Raft itself (src/raft/config.ts). */
  raft?: TestingBugs;
}

/** ackBeforeCommit: settles this node's proposals as soon as Raft appended them locally. */
export function settleEarly(session: RequestSession, entries: Entry[]): void {
  for (const e of entries) {
    if (e.type !== EntryType.Normal || e.data.length === 0) continue;
    let request: RequestId;
    try {
      request = decodeCommand(e.data);
    } catch {
      continue;
    }
    if (request.clientId === session.clientId) session.settle({ index: e.index, request });
  }
}
