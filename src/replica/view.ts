// The admin API's read-only view of one replica: status, members, devices,
// health. Nothing here changes state.

import type { DeviceInfo, DiskUsage, HealthReport, Member, NodeStatus, PeerStatus, Role as ApiRole } from '../admin/api.ts';
import { Role } from '../raft/rawnode.ts';
import type { ReplicaCore as Replica } from './core.ts';

/** Where this node is reached (known to the process that owns the listeners). */
export interface Addresses {
  nbd: string;
  admin: string;
  peer: string;
}

/** What the view needs from the process besides the replica. */
export interface ViewSources {
  addresses: () => Addresses;
  /** The running program's version. */
  version: string;
  /** Bytes the WAL's segment files occupy on disk. */
  walBytes: () => Promise<number>;
}

export class ReplicaView {
  private readonly addresses: () => Addresses;

  constructor(
    private readonly r: Replica,
    private readonly sources: ViewSources,
  ) {
    this.addresses = sources.addresses;
  }

  status(): NodeStatus {
    const st = this.r.raw.status();
    const cs = st.confState;
    const members = this.r.store.memberAddresses();
    const links = new Map(this.r.transport.status().map((l) => [l.id, l]));
    const isLearner = cs.learners.includes(this.r.nodeId);
    const role: ApiRole = isLearner ? 'learner' : (st.role as ApiRole);
    const peerIds = new Set([...cs.voters, ...cs.learners, ...cs.votersOutgoing]);
    peerIds.delete(this.r.nodeId);
    const peers: PeerStatus[] = [...peerIds].sort().map((id) => {
      const pr = st.progress[id];
      const link = links.get(id);
      return {
        id,
        address: members[id] ?? link?.address ?? '',
        match: pr?.match ?? 0,
        next: pr?.next ?? 0,
        state: pr?.state ?? 'unknown',
        lagEntries: pr ? Math.max(0, st.commit - pr.match) : 0,
        voter: cs.voters.includes(id) || cs.votersOutgoing.includes(id),
        connected: link?.connected ?? false,
        messagesDropped: link?.droppedMessages ?? 0,
        ...(link?.sentBytes !== undefined ? { bytesSent: link.sentBytes } : {}),
        ...(link?.rttMs !== undefined ? { rttMs: link.rttMs } : {}),
      };
    });
    const sending = this.r.sender.progress;
    const receiving = this.r.receiver.progress;
    return {
      id: this.r.nodeId,
      role,
      term: st.term,
      leader: st.lead,
      commit: st.commit,
      applied: this.r.processedIndex,
      logFirstIndex: this.r.log.firstIndex(),
      logLastIndex: this.r.log.lastIndex(),
      checkpointIndex: this.r.store.checkpointIndex,
      checkpoints: this.r.housekeeping.checkpoints,
      compactions: this.r.housekeeping.compactions,
      backend: 'replicated',
      peers,
      nbdAddress: this.addresses().nbd,
      adminAddress: this.addresses().admin,
      ...(sending
        ? { snapshot: { direction: 'sending' as const, peer: sending.peer, bytesDone: sending.bytesDone, bytesTotal: sending.bytesTotal } }
        : receiving
          ? { snapshot: { direction: 'receiving' as const, peer: receiving.peer, bytesDone: receiving.bytesDone, bytesTotal: 0 } }
          : {}),
      uptimeSeconds: Math.floor((this.r.clock.now() - this.r.startedAt) / 1000),
      version: this.sources.version,
    };
  }

  /** What status() leaves out because it takes the disk: WAL and device-file bytes, free space. */
  async diskUsage(): Promise<DiskUsage> {
    let dataBytes = 0;
    for (const d of this.r.store.devices()) dataBytes += await this.r.store.usedBytes(d.id);
    const space = this.r.host.space.report();
    return { walBytes: await this.sources.walBytes(), dataBytes, freeBytes: space.freeBytes, totalBytes: space.totalBytes };
  }

  members(): Member[] {
    const cs = this.r.raw.status().confState;
    const addr = this.r.store.memberAddresses();
    const ids = [...new Set([...cs.voters, ...cs.learners, ...cs.votersOutgoing])].sort();
    const own = this.addresses();
    return ids.map((id) => {
      // Client addresses as the member published them through Raft; this
      // node's own as it listens now (the table may not have caught up yet).
      const pub = this.r.store.publishedMember(id);
      const self = id === this.r.nodeId;
      const adminAddress = (self ? own.admin : '') || pub?.adminAddress || '';
      const nbdAddress = (self ? own.nbd : '') || pub?.nbdAddress || '';
      return {
        id,
        address: addr[id] ?? (self ? own.peer : ''),
        voter: cs.voters.includes(id) || cs.votersOutgoing.includes(id),
        learner: cs.learners.includes(id),
        ...(adminAddress ? { adminAddress } : {}),
        ...(nbdAddress ? { nbdAddress } : {}),
        ...(pub ? { version: pub.version, startedAt: pub.startedAt } : {}),
      };
    });
  }

  async devicesInfo(): Promise<DeviceInfo[]> {
    const out: DeviceInfo[] = [];
    for (const d of this.r.store.devices()) {
      const info: DeviceInfo = { name: d.name, size: d.size, usedBytes: await this.r.store.usedBytes(d.id), readOnly: d.readOnly === true };
      const snapshots = this.r.store.snapshots(d.id).length;
      if (snapshots > 0) {
        info.snapshots = snapshots;
        info.snapshotBytes = await this.r.snapshotOps.heldBytes(d.id);
      }
      const enc = d.encryption;
      if (enc) {
        const unavailable = this.r.devices.get(d.name)?.unavailable();
        info.encryption = {
          generation: enc.generation,
          kekId: enc.key.kekId,
          ...(enc.rekey ? { rekey: { generation: enc.rekey.generation, doneBytes: enc.rekey.watermark } } : {}),
          ...(unavailable ? { unavailable } : {}),
        };
      }
      out.push(info);
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  async health(): Promise<HealthReport> {
    const st = this.r.raw.status();
    const links = this.r.transport.status();
    const voters = st.confState.voters;
    // Reachability is counted where it means something: the leader dials every
    // voter. A follower only sees its own links (followers need not reach each
    // other), so it reports whether it hears from a leader, not a count.
    let quorum: { name: string; ok: boolean; detail: string };
    if (st.role === Role.Leader) {
      const reachable = 1 + links.filter((l) => l.connected && voters.includes(l.id)).length;
      quorum = { name: 'quorum', ok: reachable > voters.length / 2, detail: `${reachable} of ${voters.length} voters reachable from the leader` };
    } else if (st.lead !== '') {
      const heard = links.some((l) => l.id === st.lead && l.connected);
      quorum = { name: 'quorum', ok: heard, detail: heard ? `leader ${st.lead} is reachable and holds a quorum (this node does not count voters; the leader's /health does)` : `leader ${st.lead} not reachable from here` };
    } else {
      quorum = { name: 'quorum', ok: false, detail: 'unknown here: no leader known' };
    }
    const space = this.r.host.space.report();
    const checks = [
      { name: 'storage', ok: !this.r.fatalError, detail: this.r.fatalError ? this.r.fatalError.message : 'WAL and device files writable' },
      { name: 'member', ok: !this.r.removed, detail: this.r.removed ? 'removed from the cluster' : `member of ${voters.length}-voter cluster` },
      { name: 'leader', ok: st.lead !== '', detail: st.lead ? `leader ${st.lead} (term ${st.term})` : 'no leader known' },
      quorum,
      { name: 'apply', ok: st.commit - this.r.processedIndex < 10_000, detail: `applied ${this.r.processedIndex} of ${st.commit} committed` },
      {
        name: 'space',
        ok: space.freeBytes >= space.reserveBytes,
        detail: `${space.freeBytes} bytes free on the data filesystem (reserve ${space.reserveBytes}${space.freeBytes < space.reserveBytes ? ': writes get ENOSPC' : ''})`,
      },
    ];
    return { healthy: checks.every((c) => c.ok), checks, space };
  }
}
