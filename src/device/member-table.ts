// The replicated member table: where each member serves its clients (admin
// API, NBD), which version it runs and when it started, as the member itself
// published it through Raft (a PUBLISH_MEMBER command, the way an etcd member
// publishes its client URLs). Every replica applies the same entries, so any
// member can tell a tool where every other member is.
//
// The rule a publication must meet (publishProblem) is checked where it is
// proposed and again at apply, so a proposal that passed never fails at apply
// (DESIGN contract 8). One thing apply can see that the proposer could not:
// the member was removed meanwhile. That outcome is the same on every replica
// (it depends only on the log), and the record is not kept.
//
// Kept in the checkpoint and the snapshot header (StoreState.published);
// older checkpoints have none and load as an empty table.

import { parseHostPort, parseNodeId } from '../parse.ts';

/** What one member published about itself. */
export interface PublishedMember {
  adminAddress: string;
  nbdAddress: string;
  version: string;
  /** Wall-clock milliseconds since the epoch when the publishing process started. */
  startedAt: number;
  /** Log index of the entry that published it. */
  index: number;
}

export interface Publication {
  nodeId: string;
  adminAddress: string;
  nbdAddress: string;
  version: string;
  startedAt: number;
}

const VERSION_BYTES_MAX = 64;

/** Why `p` cannot be published, or undefined if it can. */
export function publishProblem(p: Publication): string | undefined {
  try {
    parseNodeId(p.nodeId);
  } catch (err) {
    return (err as Error).message;
  }
  if (Buffer.byteLength(p.nodeId) > 255) return 'node id longer than 255 bytes';
  for (const [what, address] of [['admin address', p.adminAddress], ['NBD address', p.nbdAddress]] as const) {
    if (typeof address !== 'string') return `${what} missing`;
    if (address === '') continue; // not serving that (yet)
    if (Buffer.byteLength(address) > 255) return `${what} longer than 255 bytes`;
    try {
      parseHostPort(address);
    } catch (err) {
      return `${what}: ${(err as Error).message}`;
    }
  }
  if (typeof p.version !== 'string' || Buffer.byteLength(p.version) > VERSION_BYTES_MAX) return `version longer than ${VERSION_BYTES_MAX} bytes`;
  if (!/^[\x21-\x7e]*$/.test(p.version)) return 'version has characters other than printable ASCII';
  if (!Number.isSafeInteger(p.startedAt) || p.startedAt < 0) return `bad start time ${p.startedAt}`;
  return undefined;
}

function validRecord(r: unknown): r is PublishedMember {
  const x = r as PublishedMember;
  return (
    typeof x === 'object' &&
    x !== null &&
    typeof x.adminAddress === 'string' &&
    typeof x.nbdAddress === 'string' &&
    typeof x.version === 'string' &&
    Number.isSafeInteger(x.startedAt) &&
    Number.isSafeInteger(x.index)
  );
}

/** Whether a checkpoint's `published` field is well formed (absent is: an older checkpoint). */
export function validPublished(v: unknown): boolean {
  if (v === undefined) return true;
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return false;
  return Object.values(v).every(validRecord);
}

export class MemberTable {
  private readonly byId = new Map<string, PublishedMember>();

  static from(records: Record<string, PublishedMember> | undefined): MemberTable {
    const t = new MemberTable();
    for (const [id, r] of Object.entries(records ?? {})) t.byId.set(id, { ...r });
    return t;
  }

  get(id: string): PublishedMember | undefined {
    const r = this.byId.get(id);
    return r ? { ...r } : undefined;
  }

  /**
   * Applies a publication at log index `index` (in log order; the latest
   * replaces what the member published before). Returns why it was not
   * recorded, or undefined.
   */
  apply(p: Publication, index: number, removed: boolean): string | undefined {
    const problem = publishProblem(p);
    if (problem) return problem;
    if (removed) return `${p.nodeId} was removed from the cluster`;
    this.byId.set(p.nodeId, { adminAddress: p.adminAddress, nbdAddress: p.nbdAddress, version: p.version, startedAt: p.startedAt, index });
    return undefined;
  }

  /** A member left the configuration: what it published goes with it. */
  forget(id: string): void {
    this.byId.delete(id);
  }

  export(): Record<string, PublishedMember> {
    const out: Record<string, PublishedMember> = {};
    for (const id of [...this.byId.keys()].sort()) out[id] = { ...this.byId.get(id)! };
    return out;
  }
}
