// The admin operations on device snapshots (src/device/snapshots.ts), checked
// before they are proposed so that a valid SNAPSHOT_CREATE/DELETE never fails
// at apply (DESIGN contract 8): the names, the device, uniqueness and the
// per-device limit here; apply checks the same again and records a refusal
// (the same on every replica) for one that raced with another change.
//
// Mixed versions: a node that does not know the snapshot ops skips them as
// undecodable entries, and would then apply later writes without preserving
// anything. So a snapshot is proposed only when every member has published
// (PUBLISH_MEMBER) the version this node runs. Version strings name releases,
// so a rolling upgrade refuses snapshots until it is complete.

import { deviceNameProblem } from '../parse.ts';
import { encodeSnapshotCreate, encodeSnapshotDelete, type RequestId } from '../device/commands.ts';
import { SnapshotSet } from '../device/snapshots.ts';
import { VERSION } from '../version.ts';
import { asReplicaError, ReplicaError } from './errors.ts';
import type { ReplicaCore } from './core.ts';
import type { SnapshotInfo } from '../admin/api.ts';

export type { SnapshotInfo };

export class SnapshotOps {
  constructor(private readonly r: ReplicaCore) {}

  private device(name: string): { id: number; name: string; encryption?: unknown } {
    const problem = deviceNameProblem(name);
    if (problem) throw new ReplicaError('XDEVICE_ERR_INVALID', problem);
    const d = this.r.store.device(name);
    if (!d) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    return d;
  }

  private async propose(encode: (id: RequestId) => Buffer): Promise<void> {
    await this.r.propose(encode).catch(asReplicaError);
  }

  /** Members that have not published this node's version (they may not know the snapshot ops). */
  private olderMembers(): string[] {
    const cs = this.r.raw.status().confState;
    return [...new Set([...cs.voters, ...cs.learners])].filter((id) => id !== this.r.nodeId && this.r.store.publishedMember(id)?.version !== VERSION).sort();
  }

  async create(device: string, name: string): Promise<SnapshotInfo> {
    const d = this.device(device);
    const problem = SnapshotSet.createProblem(d, this.r.store.snapshots(d.id), name);
    if (problem) throw new ReplicaError(problem.code, problem.message);
    const older = this.olderMembers();
    if (older.length > 0) throw new ReplicaError('XDEVICE_ERR_CONFLICT', `members ${older.join(', ')} have not published version ${VERSION}: snapshots wait until every member runs it`);
    await this.propose((id) => encodeSnapshotCreate(id, device, name, Date.now()));
    const made = this.r.store.snapshot(d.id, name);
    if (!made) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `snapshot ${device}@${name} applied but was deleted since`);
    return this.info(d.id, device, made.name);
  }

  async delete(device: string, name: string): Promise<void> {
    const d = this.device(device);
    if (!this.r.store.snapshot(d.id, name)) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `device ${device} has no snapshot ${name}`);
    await this.propose((id) => encodeSnapshotDelete(id, device, name));
  }

  async list(device: string): Promise<SnapshotInfo[]> {
    const d = this.device(device);
    const out: SnapshotInfo[] = [];
    for (const s of this.r.store.snapshots(d.id)) out.push(await this.info(d.id, device, s.name));
    return out;
  }

  /** Bytes held by all of a device's snapshots on this node. */
  async heldBytes(deviceId: number): Promise<number> {
    let n = 0;
    for (const s of this.r.store.snapshots(deviceId)) n += await this.r.store.snapshotHeldBytes(deviceId, s.id);
    return n;
  }

  private async info(deviceId: number, device: string, name: string): Promise<SnapshotInfo> {
    const s = this.r.store.snapshot(deviceId, name)!;
    const unavailable = this.r.store.snapshotUnavailable(deviceId, s.id);
    return {
      device,
      name: s.name,
      index: s.id,
      createdAt: new Date(s.createdAt).toISOString(),
      size: s.size,
      heldBytes: await this.r.store.snapshotHeldBytes(deviceId, s.id),
      export: `${device}@${s.name}`,
      ...(unavailable ? { unavailable } : {}),
    };
  }
}
