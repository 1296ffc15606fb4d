// A durable FIFO queue on an XDevice device: block 0 holds {head, tail}, the
// rest is a ring of 512-byte slots. Enqueue writes the slot, then the header
// (both FUA: the slot is committed before the header points at it). Dequeue
// reads the header and the slot at head, then advances head. Every member of
// the cluster sees the same queue; a consumer on another node would too.
//
//   node --import=tsx examples/message-queue.ts --endpoints=H:P,H:P,H:P [--device=queue] [--messages=100]
import { parseArgs } from 'node:util';
import { openDevice, type Device } from 'xdevice';

const SLOT_BYTES = 512;
const HEADER_BYTES = 4096;
const { values } = parseArgs({ options: { endpoints: { type: 'string' }, device: { type: 'string', default: 'queue' }, messages: { type: 'string', default: '100' } } });
const dev = await openDevice(values.device!, { endpoints: (values.endpoints ?? '127.0.0.1:10809').split(',') });
const slots = Math.floor((dev.size - HEADER_BYTES) / SLOT_BYTES);

async function header(d: Device): Promise<{ head: number; tail: number }> {
  const b = await d.read(0, HEADER_BYTES);
  return { head: Number(b.readBigUInt64BE(0)), tail: Number(b.readBigUInt64BE(8)) };
}

async function setHeader(d: Device, head: number, tail: number): Promise<void> {
  const b = Buffer.alloc(HEADER_BYTES);
  b.writeBigUInt64BE(BigInt(head), 0);
  b.writeBigUInt64BE(BigInt(tail), 8);
  await d.write(0, b, { fua: true });
}

async function enqueue(d: Device, message: string): Promise<void> {
  const { head, tail } = await header(d);
  if (tail - head >= slots) throw new Error('queue full');
  const slot = Buffer.alloc(SLOT_BYTES);
  const body = Buffer.from(message);
  slot.writeUInt16BE(body.length, 0);
  body.copy(slot, 2);
  await d.write(HEADER_BYTES + (tail % slots) * SLOT_BYTES, slot, { fua: true });
  await setHeader(d, head, tail + 1);
}

async function dequeue(d: Device): Promise<string | undefined> {
  const { head, tail } = await header(d);
  if (head === tail) return undefined;
  const slot = await d.read(HEADER_BYTES + (head % slots) * SLOT_BYTES, SLOT_BYTES);
  await setHeader(d, head + 1, tail);
  return slot.subarray(2, 2 + slot.readUInt16BE(0)).toString();
}

const count = Number(values.messages);
await setHeader(dev, 0, 0);
for (let i = 0; i < count; i++) await enqueue(dev, `order ${i}: 1 x widget to customer ${i * 7}`);
const received: string[] = [];
for (let m = await dequeue(dev); m !== undefined; m = await dequeue(dev)) received.push(m);
await dev.close();
const inOrder = received.length === count && received.every((m, i) => m.startsWith(`order ${i}:`));
console.log(JSON.stringify({ sent: count, received: received.length, inOrder, last: received.at(-1) }));
process.exitCode = inOrder ? 0 : 1;
