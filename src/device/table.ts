// A fixed DeviceTable for the file and memory backends (no Raft): the devices
// are known at startup and never change while serving.

import type { BlockDevice, DeviceTable } from './block-device.ts';
import { assert } from '../errors.ts';

export class StaticDeviceTable implements DeviceTable {
  readonly defaultName: string | undefined;
  private readonly devices = new Map<string, BlockDevice>();

  /** The default export is `defaultName`, else the first device. */
  constructor(devices: readonly BlockDevice[], defaultName?: string) {
    for (const device of devices) {
      assert(!this.devices.has(device.name), `duplicate device name ${device.name}`);
      this.devices.set(device.name, device);
    }
    assert(defaultName === undefined || this.devices.has(defaultName), `default device ${defaultName} is not in the table`);
    this.defaultName = defaultName ?? devices[0]?.name;
  }

  get(name: string): BlockDevice | undefined {
    return this.devices.get(name);
  }

  list(): BlockDevice[] {
    return [...this.devices.values()];
  }

  async close(): Promise<void> {
    await Promise.all(this.list().map((device) => device.close()));
  }
}
