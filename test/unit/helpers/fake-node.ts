// An in-process NodeApi for the admin layer's unit tests: members, devices
// and health held in memory, with the errors the real node throws.
import { EventEmitter } from 'node:events';
import type { DeviceInfo, HealthReport, Member, NodeApi, NodeStatus } from '../../../src/admin/api.ts';
import { XDeviceError } from '../../../src/errors.ts';
import { VERSION } from '../../../src/version.ts';

export class FakeNode extends EventEmitter implements NodeApi {
  deviceList: DeviceInfo[] = [{ name: 'default', size: 1 << 30, usedBytes: 4096, readOnly: false }];
  memberList: Member[] = [{ id: 'node1', address: '127.0.0.1:1', voter: true, learner: false }];
  healthy = true;
  snapshot: NodeStatus['snapshot'];
  status(): NodeStatus {
    return {
      id: 'node1', role: 'leader', term: 3, leader: 'node1', commit: 10, applied: 10, backend: 'replicated', logFirstIndex: 6, logLastIndex: 10, checkpointIndex: 8, checkpoints: 2, compactions: 1,
      peers: [{ id: 'node2', address: '127.0.0.1:2', match: 7, next: 8, state: 'replicate', lagEntries: 3, voter: true, connected: true, messagesDropped: 5, bytesSent: 123456 }],
      nbdAddress: '127.0.0.1:10809', adminAddress: '127.0.0.1:10819', uptimeSeconds: 1, version: VERSION,
      ...(this.snapshot ? { snapshot: this.snapshot } : {}),
    };
  }
  async diskUsage() { return { walBytes: 64 << 20, dataBytes: 4096, freeBytes: 5 << 30, totalBytes: 10 << 30 }; }
  async health(): Promise<HealthReport> {
    return { healthy: this.healthy, checks: [{ name: 'leader', ok: this.healthy, detail: this.healthy ? 'node1' : 'none' }] };
  }
  members() { return this.memberList; }
  async devices() { return this.deviceList; }
  async addNode(id: string, address: string) {
    if (this.memberList.some((m) => m.id === id)) throw new XDeviceError('XDEVICE_ERR_EXISTS', `${id} is already a member`);
    this.memberList.push({ id, address, voter: false, learner: true });
  }
  async removeNode(id: string) {
    if (!this.memberList.some((m) => m.id === id)) throw new XDeviceError('XDEVICE_ERR_NOT_FOUND', `no member ${id}`);
    this.memberList = this.memberList.filter((m) => m.id !== id);
  }
  async promoteNode(id: string) {
    const m = this.memberList.find((x) => x.id === id);
    if (!m) throw new XDeviceError('XDEVICE_ERR_NOT_FOUND', `no member ${id}`);
    m.voter = true;
    m.learner = false;
  }
  space() { return { freeBytes: 5 << 30, totalBytes: 10 << 30, reserveBytes: 256 << 20 }; }
  async transferLeader(to: string) { throw Object.assign(new XDeviceError('XDEVICE_ERR_NOT_LEADER', 'not the leader'), { leader: to }); }
  async createDevice(name: string, size: number) { this.deviceList.push({ name, size, usedBytes: 0, readOnly: false }); }
  async deleteDevice(name: string) { this.deviceList = this.deviceList.filter((d) => d.name !== name); }
  async resizeDevice(name: string, size: number) { this.deviceList.find((d) => d.name === name)!.size = size; }
  pendingProposals() { return 2; }
  compression() { return { bytesIn: 10_000, bytesOut: 3_000, compressedWrites: 2, zeroWrites: 1, incompressibleWrites: 1, skippedWrites: 1, snapshotBytesIn: 4_096, snapshotBytesOut: 1_024, snapshotCompressedChunks: 1 }; }
}
