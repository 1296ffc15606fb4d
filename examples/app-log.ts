// An application log on an XDevice device: lines are packed into 4 KiB blocks
// (a length-prefixed block header, then newline-separated text) and written
// without FUA; a sync() every few lines makes all of them durable at once —
// the group commit an fsync'd log file gets, with replication to a majority.
// Reading it back (what `tail` on another host would do) prints the last lines.
//
//   node --import=tsx examples/app-log.ts --endpoints=H:P,H:P,H:P [--device=applog] [--lines=500]
import { parseArgs } from 'node:util';
import { openDevice } from 'xdevice';

const BLOCK_BYTES = 4096;
const { values } = parseArgs({ options: { endpoints: { type: 'string' }, device: { type: 'string', default: 'applog' }, lines: { type: 'string', default: '500' } } });
const dev = await openDevice(values.device!, { endpoints: (values.endpoints ?? '127.0.0.1:10809').split(',') });
const total = Number(values.lines);

let block = 0;
let pending: string[] = [];
const writes: Promise<void>[] = [];
function flushBlock(): void {
  if (pending.length === 0) return;
  const text = Buffer.from(pending.join('\n'));
  const b = Buffer.alloc(BLOCK_BYTES);
  b.writeUInt32BE(text.length, 0);
  text.copy(b, 4);
  writes.push(dev.write(block * BLOCK_BYTES, b));
  block++;
  pending = [];
}

let bytesInBlock = 4;
for (let i = 1; i <= total; i++) {
  const line = `${new Date(Date.UTC(2026, 0, 1, 0, 0, i)).toISOString()} INFO request ${i} served in ${(i * 37) % 250} ms`;
  if (bytesInBlock + line.length + 1 > BLOCK_BYTES) {
    flushBlock();
    bytesInBlock = 4;
  }
  pending.push(line);
  bytesInBlock += line.length + 1;
  if (i % 50 === 0) {
    flushBlock();
    bytesInBlock = 4;
    await Promise.all(writes.splice(0));
    await dev.sync(); // the 50 lines so far are durable on a majority
  }
}
flushBlock();
await Promise.all(writes.splice(0));
await dev.sync();

// Read it back.
const lines: string[] = [];
for (let i = 0; i < block; i++) {
  const b = await dev.read(i * BLOCK_BYTES, BLOCK_BYTES);
  lines.push(...b.subarray(4, 4 + b.readUInt32BE(0)).toString().split('\n'));
}
await dev.close();
for (const l of lines.slice(-3)) console.log(l);
const complete = lines.length === total && lines.every((l, i) => l.includes(`request ${i + 1} `));
console.log(JSON.stringify({ written: total, read: lines.length, blocks: block, complete }));
process.exitCode = complete ? 0 : 1;
