// A stand-in for `xdevice-node --backend memory|file` until the binary serves
// NBD: the same flags, an NbdServer over a static device table, and one line
// of JSON on stdout ({"host","port"}) once listening. SIGTERM closes cleanly.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { pino } from 'pino';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import type { BlockDevice } from '../../../src/device/block-device.ts';
import { FileDevice } from '../../../src/device/file.ts';
import { MemoryDevice } from '../../../src/device/memory.ts';
import { StaticDeviceTable } from '../../../src/device/table.ts';
import { NbdServer } from '../../../src/nbd/server.ts';

const UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

function parseSize(text: string): number {
  const match = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (match === null) throw new Error(`bad size ${JSON.stringify(text)}`);
  return Number(match[1]) * UNITS[match[2]!.toUpperCase()]!;
}

const argv = await yargs(hideBin(process.argv))
  .option('nbd-listen', { type: 'string', default: '127.0.0.1:10809' })
  .option('backend', { choices: ['memory', 'file'] as const, default: 'memory' as const })
  .option('device', { type: 'string', array: true, default: ['default:1GiB'] })
  .option('data-dir', { type: 'string', default: './data' })
  .option('tls', { choices: ['off', 'on', 'require'] as const, default: 'off' as const })
  .option('tls-cert', { type: 'string' })
  .option('tls-key', { type: 'string' })
  .option('tls-ca', { type: 'string' })
  .option('tls-psk', { type: 'string' })
  .strict()
  .parseAsync();

const listen = argv['nbd-listen'];
const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

const devices: BlockDevice[] = [];
for (const spec of argv.device) {
  const colonAt = spec.lastIndexOf(':');
  const name = spec.slice(0, colonAt);
  const size = parseSize(spec.slice(colonAt + 1));
  if (argv.backend === 'memory') {
    devices.push(new MemoryDevice({ name, size }));
  } else {
    const dir = path.join(argv['data-dir'], 'devices');
    mkdirSync(dir, { recursive: true });
    devices.push(await FileDevice.open({ name, path: path.join(dir, name), size }));
  }
}
const table = new StaticDeviceTable(devices);
const logger = pino({ level: process.env.XDEVICE_LOG_LEVEL ?? 'warn' }, pino.destination(2));
const server = new NbdServer({
  devices: table,
  logger,
  tls: {
    mode: argv.tls,
    ...(argv['tls-cert'] !== undefined ? { certFile: argv['tls-cert'] } : {}),
    ...(argv['tls-key'] !== undefined ? { keyFile: argv['tls-key'] } : {}),
    ...(argv['tls-ca'] !== undefined ? { caFile: argv['tls-ca'] } : {}),
    ...(argv['tls-psk'] !== undefined ? { pskFile: argv['tls-psk'] } : {}),
  },
});
const address = await server.listen(host, port);
process.stdout.write(`${JSON.stringify(address)}\n`);

let stopping = false;
const stop = async (): Promise<void> => {
  if (stopping) return;
  stopping = true;
  await server.close();
  await table.close();
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.on('SIGINT', () => void stop());
