// What changes the cluster's shape or its device table, on one replica:
// membership changes as they apply (peers linked and unlinked, this replica
// leaving when removed), the leader's learner promotion policy, and the
// admin operations (add/promote/remove a node, transfer leadership, create/
// delete/resize a device), each checked before it is proposed so that a
// valid command never fails at apply (DESIGN contract 8).

import type { AddNodeOptions, CreateDeviceOptions, ResizeOptions } from '../admin/api.ts';
import { limits } from '../limits.ts';
import type { XDeviceError } from '../errors.ts';
import { ConfChangeType, confChanges, decodeConfChange } from '../raft/confchange.ts';
import { NotLeaderError } from '../raft/errors.ts';
import { Role, type RawNode } from '../raft/rawnode.ts';
import type { Entry } from '../raft/types.ts';
import { deviceNameProblem, deviceSizeProblem } from '../parse.ts';
import {
  DEVICE_FLAG_ENCRYPTED,
  DEVICE_FLAG_READ_ONLY,
  encodeCreateDevice,
  encodeDeleteDevice,
  encodeResizeDevice,
  encodeSetDeviceFlags,
  encodeVerifyDevice,
  type RequestId,
} from '../device/commands.ts';
import { compareVerify, verifyRangeBytes, type VerifyReport } from '../device/verify.ts';
import { ReplicaVerifier } from './verify.ts';
import { asReplicaError, ReplicaError } from './errors.ts';
import { safeTerm } from './housekeeping.ts';
import { promotionBlocker } from './promotion.ts';
import type { ReplicaCore as Replica } from './core.ts';

export class Membership {
  /** Learners this leader was asked to add: promoted once promotionBlocker() has nothing to say. */
  private readonly autoPromote = new Set<string>();
  private promoting = false;
  /**
   * The learner whose promotion is proposed and not yet applied. It was
   * fit to vote when proposed (promotionBlocker); compaction must not then
   * move the leader's snapshot past it before the change applies, or it
   * becomes a voter that needs a snapshot (sim seeds 3001850, 3002269).
   */
  promotingLearner: string | undefined;
  readonly verifier: ReplicaVerifier;

  constructor(private readonly r: Replica) {
    this.verifier = new ReplicaVerifier(r);
  }

  /** A committed ConfChange entry applies (called by the block store's apply, in log order). */
  applyConfEntry(e: Entry): void {
    const r = this.r;
    const cc = decodeConfChange(e.data);
    const cs = r.raw.applyConfChange(cc, e.index);
    r.housekeeping.noteConf(e.index, cs);
    const address = cc.context?.toString('utf8');
    for (const ch of cc.changes) {
      if (ch.type === ConfChangeType.RemoveNode) {
        r.store.setMember(ch.nodeId, undefined);
        if (ch.nodeId === r.nodeId) r.leaveRemoved(`removed from the cluster at index ${e.index}`);
        else r.transport.removePeer(ch.nodeId);
      } else if (address) {
        r.store.setMember(ch.nodeId, address);
        if (ch.nodeId !== r.nodeId) r.transport.addPeer(ch.nodeId, address);
      }
    }
    // Entries this replica's WAL held before it started are replays of old changes, not news.
    if (e.index <= r.walLastIndexAtStart) r.logger.debug({ index: e.index, voters: cs.voters, learners: cs.learners }, 'membership change replayed');
    else {
      r.notice('info', { index: e.index, voters: cs.voters, learners: cs.learners }, 'membership changed');
      // The audit trail records it once, from the leader that proposed it (src/node/runtime.ts).
      const b = r.raw.basicStatus();
      if (b.role === Role.Leader && b.term === e.term) r.emit('membershipChangeProposedHere', { index: e.index, changes: cc.changes.map((ch) => ({ type: ConfChangeType[ch.type], node: ch.nodeId })), voters: cs.voters, learners: cs.learners });
    }
  }

  private requireLeader(): void {
    const b = this.r.raw.basicStatus();
    if (b.role !== Role.Leader) throw new NotLeaderError(b.lead);
  }

  private async proposeConfChange(cc: Parameters<RawNode['proposeConfChange']>[0]): Promise<void> {
    const r = this.r;
    r.checkServing();
    this.requireLeader();
    const { index, term } = r.raw.proposeConfChange(cc);
    r.schedule();
    await r.waitFor(() => r.raftAppliedIndex >= index, limits.requestTimeoutMs, `membership change at ${index}`);
    const applied = safeTerm(r, index);
    if (applied !== undefined && applied !== term) {
      throw new ReplicaError('XDEVICE_ERR_PROPOSAL_DROPPED', 'the membership change was lost to a leader change; retry');
    }
  }

  /**
   * Adds a node as a learner, once this leader has connected to it and
   * authenticated it; it becomes a voter when it has installed its snapshot
   * and caught up (promotionBlocker), by this leader's tick. An interrupted
   * caller leaves a learner that `members list` shows and remove-node removes.
   */
  async addNode(id: string, address: string, options: AddNodeOptions = {}): Promise<void> {
    const r = this.r;
    if (!id || id.length > 255) throw new ReplicaError('XDEVICE_ERR_INVALID', 'bad node id');
    r.checkServing();
    this.requireLeader();
    const cs = r.raw.status().confState;
    if (cs.voters.includes(id)) return;
    if (!cs.learners.includes(id)) {
      await this.probePeer(id, address);
      await this.proposeConfChange(confChanges.addLearner(id, Buffer.from(address)));
    }
    if (options.promote === false) return;
    this.autoPromote.add(id);
    if (options.wait === false) return;
    await r.waitFor(() => r.raw.status().confState.voters.includes(id), limits.addNodeCatchUpTimeoutMs, `${id} to catch up and become a voter`);
  }

  /** Connects to `address` as peer `id` and waits for the authenticated handshake; refuses if it does not come. */
  private async probePeer(id: string, address: string): Promise<void> {
    const t = this.r.transport;
    const known = t.peerAddress(id);
    if (known !== address) t.addPeer(id, address);
    t.connectAll();
    const linked = () => t.status().some((l) => l.id === id && l.connected);
    const deadline = this.r.clock.now() + limits.addNodeProbeTimeoutMs;
    while (!linked() && this.r.clock.now() < deadline) await this.r.sleep(50);
    if (linked()) return;
    if (known === undefined) t.removePeer(id);
    else if (known !== address) t.addPeer(id, known);
    throw new ReplicaError(
      'XDEVICE_ERR_PEER_UNREACHABLE',
      `cannot connect to and authenticate ${id} at ${address} within ${limits.addNodeProbeTimeoutMs / 1000} s: start it first (with --join and the cluster's peer authentication), then add it; nothing was changed`,
    );
  }

  /** Operator promotion of a learner (`members promote`): only once it could vote without hurting the cluster. */
  async promoteNode(id: string): Promise<void> {
    const r = this.r;
    r.checkServing();
    this.requireLeader();
    const st = r.raw.status();
    if (st.confState.voters.includes(id)) return;
    if (!st.confState.learners.includes(id)) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `${id} is not a learner`);
    const why = this.promotionBlocker(id);
    if (why) throw new ReplicaError('XDEVICE_ERR_NOT_READY', `${id} cannot vote yet: ${why}`);
    this.promotingLearner = id;
    try {
      await this.proposeConfChange(confChanges.addVoter(id, Buffer.from(r.store.memberAddresses()[id] ?? r.transport.peerAddress(id) ?? '')));
    } finally {
      if (this.promotingLearner === id) this.promotingLearner = undefined;
    }
    this.autoPromote.delete(id);
  }

  private promotionBlocker(id: string): string | undefined {
    if (this.r.bugs.promoteEarly) return undefined;
    const st = this.r.raw.status();
    return promotionBlocker(st.progress[id], { commit: st.commit, snapshotIndex: this.r.log.snapshotMetadata().index });
  }

  /** The leader's promotion policy, run every tick: one learner at a time. */
  promoteCaughtUp(): void {
    const r = this.r;
    if (this.autoPromote.size === 0 || this.promoting || r.raw.basicStatus().role !== Role.Leader) return;
    const st = r.raw.status();
    for (const id of this.autoPromote) {
      if (!st.confState.learners.includes(id)) {
        this.autoPromote.delete(id);
        continue;
      }
      if (this.promotionBlocker(id)) continue;
      this.promoting = true;
      r.logger.info({ id, match: st.progress[id]?.match, commit: st.commit }, 'learner caught up; promoting it to voter');
      this.promoteNode(id)
        .catch((err: Error) => r.logger.warn({ id, err: err.message }, 'promotion failed; will retry'))
        .finally(() => {
          this.promoting = false;
        });
      return;
    }
  }

  async removeNode(id: string): Promise<void> {
    const cs = this.r.raw.status().confState;
    if (!cs.voters.includes(id) && !cs.learners.includes(id)) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `${id} is not a member`);
    await this.proposeConfChange(confChanges.remove(id));
  }

  async transferLeader(to: string): Promise<void> {
    const r = this.r;
    r.checkServing();
    this.requireLeader();
    if (!r.raw.status().confState.voters.includes(to)) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `${to} is not a voter`);
    if (to === r.nodeId) return;
    r.raw.transferLeader(to);
    r.schedule();
    await r.waitFor(() => r.raw.basicStatus().lead === to, limits.requestTimeoutMs, `leadership to move to ${to}`);
  }

  /** Devices named in the configuration are created once, when the cluster is founded. */
  async createInitialDevices(devices: readonly { name: string; size: number }[], alone: boolean, encrypt = false): Promise<void> {
    const r = this.r;
    for (const d of devices) {
      try {
        await this.createDevice(d.name, d.size, encrypt ? { encrypt } : {});
      } catch (err) {
        if ((err as XDeviceError).code === 'XDEVICE_ERR_EXISTS') continue;
        if (r.stopped || r.fatalError) return;
        if (!alone) {
          // Other founders propose the same device; one of them wins.
          r.logger.debug({ device: d.name, err: (err as Error).message }, 'initial device not created here');
          continue;
        }
        r.logger.error({ device: d.name, err: (err as Error).message }, 'could not create the initial device');
      }
    }
  }

  // ---- the device table -------------------------------------------------------------------

  private async tableCommand(encode: (id: RequestId) => Buffer): Promise<void> {
    await this.r.propose(encode).catch(asReplicaError);
  }

  /** Everything apply will check, checked before proposing (DESIGN contract 8). */
  private async checkTableCommand(name: string, size?: number): Promise<void> {
    const problem = deviceNameProblem(name) ?? (size === undefined ? undefined : deviceSizeProblem(size));
    if (problem) throw new ReplicaError('XDEVICE_ERR_INVALID', problem);
    if (size === undefined) return;
    await this.r.host.probeFileSize(size);
    const space = this.r.host.space;
    if (space.wouldBreachReserve(0)) {
      const s = space.report();
      throw new ReplicaError('XDEVICE_ERR_NO_SPACE', `the data filesystem has ${s.freeBytes} bytes free, below the reserve of ${s.reserveBytes}: free space first`);
    }
  }

  async createDevice(name: string, size: number, options: CreateDeviceOptions = {}): Promise<void> {
    await this.checkTableCommand(name, size);
    const store = this.r.store;
    if (store.device(name)) throw new ReplicaError('XDEVICE_ERR_EXISTS', `device ${name} exists`);
    if (store.devices().length >= limits.devicesMax) throw new ReplicaError('XDEVICE_ERR_INVALID', `${limits.devicesMax} devices exist`);
    const flags = (options.readOnly ? DEVICE_FLAG_READ_ONLY : 0) | (options.encrypt ? DEVICE_FLAG_ENCRYPTED : 0);
    if (options.encrypt && size % limits.cryptSectorBytes !== 0) throw new ReplicaError('XDEVICE_ERR_INVALID', `an encrypted device's size is a multiple of ${limits.cryptSectorBytes} bytes, got ${size}`);
    const key = options.encrypt ? this.r.keyOps.newDeviceKey() : undefined;
    return this.tableCommand((id) => encodeCreateDevice(id, name, size, flags, key));
  }

  /** Makes a device read-only (writes get EPERM on every node) or read-write again. */
  async setDeviceReadOnly(name: string, readOnly: boolean): Promise<void> {
    await this.checkTableCommand(name);
    const current = this.r.store.device(name);
    if (!current) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    if ((current.readOnly === true) === readOnly) return;
    return this.tableCommand((id) => encodeSetDeviceFlags(id, name, readOnly ? DEVICE_FLAG_READ_ONLY : 0));
  }

  /**
   * Starts a verify of `name` at the index its entry gets; resolves with that
   * index (the verify id) once it applied here. Results arrive as each node's
   * scan finishes: verifyReport(id).
   */
  async verifyDevice(name: string): Promise<number> {
    await this.checkTableCommand(name);
    const current = this.r.store.device(name);
    if (!current) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    let request: RequestId | undefined;
    await this.tableCommand((id) => {
      request = id;
      return encodeVerifyDevice(id, name, verifyRangeBytes(current.size));
    });
    const v = this.r.store.verifies.list().find((x) => x.clientId === request?.clientId && x.seq === request?.seq);
    if (!v) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `the verify of ${name} applied but is no longer in the table (${limits.verifiesKept} newer ones started since)`);
    return v.id;
  }

  /** The comparison of a verify's results as applied here; members are the nodes expected to answer. */
  verifyReport(id: number): VerifyReport {
    const v = this.r.store.verifies.get(id);
    if (!v) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `no verify ${id} (only the latest ${limits.verifiesKept} are kept)`);
    const cs = this.r.raw.status().confState;
    return compareVerify(v, [...new Set([...cs.voters, ...cs.learners])]);
  }

  verifyReports(): VerifyReport[] {
    return this.r.store.verifies.list().map((v) => this.verifyReport(v.id));
  }

  async deleteDevice(name: string): Promise<void> {
    await this.checkTableCommand(name);
    if (!this.r.store.device(name)) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    return this.tableCommand((id) => encodeDeleteDevice(id, name));
  }

  async resizeDevice(name: string, size: number, options: ResizeOptions = {}): Promise<void> {
    await this.checkTableCommand(name, size);
    const current = this.r.store.device(name);
    if (!current) throw new ReplicaError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    if (current.encryption && size % limits.cryptSectorBytes !== 0) throw new ReplicaError('XDEVICE_ERR_INVALID', `an encrypted device's size is a multiple of ${limits.cryptSectorBytes} bytes, got ${size}`);
    if (size !== current.size && this.r.store.snapshots(current.id).length > 0) throw new ReplicaError('XDEVICE_ERR_CONFLICT', `device ${name} has snapshots: delete them before resizing it`);
    if (size < current.size && !options.allowShrink) {
      throw new ReplicaError('XDEVICE_ERR_INVALID', `shrinking ${name} from ${current.size} to ${size} bytes discards its tail: say so with allowShrink (xdevice-cli --allow-shrink)`);
    }
    return this.tableCommand((id) => encodeResizeDevice(id, name, size));
  }
}
