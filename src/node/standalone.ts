// `--backend file|memory`: one node serving its devices directly, no Raft.
// It exists to test the NBD layer alone; devices can still be listed, created,
// resized and deleted through the admin API, while membership calls are refused.

import { EventEmitter } from 'node:events';
import { mkdir, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { DeviceInfo, DiskUsage, HealthReport, Member, NodeApi, NodeStatus } from '../admin/api.ts';
import { VERSION } from '../version.ts';
import type { BlockDevice, DeviceTable } from '../device/block-device.ts';
import { FileDevice } from '../device/file.ts';
import { MemoryDevice } from '../device/memory.ts';
import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import { formatHostPort, parseDevice } from '../parse.ts';
import { lockDataDir } from '../cluster/data-dir.ts';
import type { NodeConfig } from './config.ts';
import type { Runtime } from './runtime.ts';

class MutableDeviceTable implements DeviceTable {
  readonly devices = new Map<string, BlockDevice>();
  constructor(readonly defaultName: string | undefined) {}
  get(name: string): BlockDevice | undefined {
    return this.devices.get(name);
  }
  list(): BlockDevice[] {
    return [...this.devices.values()];
  }
}

class StandaloneNode extends EventEmitter implements NodeApi {
  readonly table: MutableDeviceTable;
  private addresses = { nbd: '', admin: '' };
  private readonly startedAt = Date.now();

  constructor(
    private readonly config: NodeConfig,
    private readonly logger: Logger,
  ) {
    super();
    this.table = new MutableDeviceTable(config.devices[0]?.name);
  }

  private deviceDir(): string {
    return join(this.config.dataDir, 'devices');
  }

  async openDevice(name: string, size: number): Promise<BlockDevice> {
    if (this.config.backend === 'memory') return new MemoryDevice({ name, size });
    await mkdir(this.deviceDir(), { recursive: true });
    return await FileDevice.open({ name, size, path: join(this.deviceDir(), name) });
  }

  setAddresses(addresses: { nbd: string; admin: string }): void {
    this.addresses = addresses;
  }

  async stop(): Promise<void> {
    await Promise.all(this.table.list().map((d) => d.flush().catch(() => {}).then(() => d.close())));
  }

  status(): NodeStatus {
    return {
      id: this.config.nodeId,
      role: 'standalone',
      term: 0,
      leader: this.config.nodeId,
      commit: 0,
      applied: 0,
      backend: this.config.backend,
      peers: [],
      nbdAddress: this.addresses.nbd,
      adminAddress: this.addresses.admin,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      version: VERSION,
    };
  }

  /** No WAL here; the data is what the devices hold. */
  async diskUsage(): Promise<DiskUsage> {
    let dataBytes = 0;
    for (const d of await this.devices()) dataBytes += d.usedBytes;
    return { dataBytes };
  }

  async health(): Promise<HealthReport> {
    const checks = [{ name: 'devices', ok: this.table.devices.size > 0, detail: `${this.table.devices.size} device(s) open` }];
    return { healthy: checks.every((c) => c.ok), checks };
  }

  members(): Member[] {
    return [
      { id: this.config.nodeId, address: formatHostPort(this.config.peerListen), voter: true, learner: false, adminAddress: this.addresses.admin, nbdAddress: this.addresses.nbd, version: VERSION, startedAt: this.startedAt },
    ];
  }

  async devices(): Promise<DeviceInfo[]> {
    return await Promise.all(
      this.table.list().map(async (d) => {
        let usedBytes = 0;
        if (d instanceof MemoryDevice) usedBytes = d.allocatedBytes;
        else if (d instanceof FileDevice) usedBytes = (await stat(d.path)).blocks * 512;
        return { name: d.name, size: d.size, usedBytes, readOnly: d.capabilities.readOnly };
      }),
    );
  }

  private unsupported(what: string): never {
    throw new XDeviceError('XDEVICE_ERR_UNSUPPORTED', `${what} needs --backend replicated (this node runs --backend ${this.config.backend})`);
  }
  async addNode(): Promise<void> {
    this.unsupported('adding a node');
  }
  async removeNode(): Promise<void> {
    this.unsupported('removing a node');
  }
  async transferLeader(): Promise<void> {
    this.unsupported('leadership transfer');
  }
  async promoteNode(): Promise<void> {
    this.unsupported('promoting a node');
  }
  space(): undefined {
    return undefined;
  }

  async createDevice(name: string, size: number): Promise<void> {
    checkDevice(name, size);
    if (this.table.devices.has(name)) throw new XDeviceError('XDEVICE_ERR_EXISTS', `device ${name} exists`);
    if (this.table.devices.size >= limits.devicesMax) throw new XDeviceError('XDEVICE_ERR_INVALID', `at most ${limits.devicesMax} devices`);
    this.table.devices.set(name, await this.openDevice(name, size));
    this.logger.info({ name, size }, 'device created');
  }

  async deleteDevice(name: string): Promise<void> {
    const device = this.requireDevice(name);
    this.table.devices.delete(name);
    await device.close();
    if (device instanceof FileDevice) await unlink(device.path);
    this.logger.info({ name }, 'device deleted');
  }

  async resizeDevice(name: string, size: number): Promise<void> {
    checkDevice(name, size);
    const device = this.requireDevice(name);
    if (device instanceof MemoryDevice && size < device.size) {
      throw new XDeviceError('XDEVICE_ERR_INVALID', 'a memory device can only grow');
    }
    await device.flush();
    // Reopen at the new size: connections already open keep the old size (as
    // with any NBD server, clients see a new size when they reconnect).
    const fresh = device instanceof MemoryDevice ? await this.growMemory(device, size) : await this.openDevice(name, size);
    this.table.devices.set(name, fresh);
    if (!(device instanceof MemoryDevice)) await device.close();
    this.logger.info({ name, size }, 'device resized');
  }

  private async growMemory(device: MemoryDevice, size: number): Promise<BlockDevice> {
    const grown = new MemoryDevice({ name: device.name, size });
    for (let offset = 0; offset < device.size; offset += 1 << 20) {
      const length = Math.min(1 << 20, device.size - offset);
      const data = await device.read(offset, length);
      if (data.some((b) => b !== 0)) await grown.write(offset, data);
    }
    return grown;
  }

  private requireDevice(name: string): BlockDevice {
    const device = this.table.get(name);
    if (!device) throw new XDeviceError('XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
    return device;
  }

  pendingProposals(): number {
    return 0;
  }
}

export async function startStandaloneRuntime(config: NodeConfig, logger: Logger): Promise<Runtime> {
  // The file backend keeps its devices under the data directory: one process there at a time.
  const lock = config.backend === 'file' ? lockDataDir(config.dataDir) : undefined;
  const node = new StandaloneNode(config, logger);
  try {
    for (const spec of config.devices) node.table.devices.set(spec.name, await node.openDevice(spec.name, spec.size));
  } catch (err) {
    lock?.release();
    throw err;
  }
  return {
    devices: node.table,
    api: node,
    setAddresses: (a) => node.setAddresses(a),
    // Without a WAL nothing here fails the node as a whole: device errors go to the client.
    onFatal: () => {},
    onRemoved: () => {},
    stop: () => node.stop().finally(() => lock?.release()),
  };
}

/** The configuration's checks, as an API error (400) rather than a plain Error (500). */
function checkDevice(name: string, size: number): void {
  try {
    parseDevice(`${name}:${size}`);
  } catch (err) {
    throw new XDeviceError('XDEVICE_ERR_INVALID', (err as Error).message);
  }
}
