// A database's write-ahead log on an XDevice device: fixed 4 KiB records
// (magic, LSN, length, SHA-256 prefix, payload), each written with FUA — the
// commit point of a transaction — then recovery: scan from the start and
// check that every committed LSN is there, intact and in order.
//
//   node --import=tsx examples/database-wal.ts --endpoints=H:P,H:P,H:P [--device=wal] [--records=200]
//
// Leader lost mid-run? The device reconnects to another member. A record whose
// write was in flight then has an unknown outcome (WriteOutcomeUnknownError):
// the log writes the same record again — an overwrite of the same block, so
// the retry is exact whether or not the first attempt was committed.
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import { openDevice, WriteOutcomeUnknownError } from 'xdevice';

const RECORD_BYTES = 4096;
const MAGIC = 0x5857414c; // "XWAL"
const { values } = parseArgs({ options: { endpoints: { type: 'string' }, device: { type: 'string', default: 'wal' }, records: { type: 'string', default: '200' } } });
const endpoints = (values.endpoints ?? '127.0.0.1:10809').split(',');
const records = Number(values.records);

function encode(lsn: number, payload: Buffer): Buffer {
  const rec = Buffer.alloc(RECORD_BYTES);
  rec.writeUInt32BE(MAGIC, 0);
  rec.writeUInt32BE(lsn, 4);
  rec.writeUInt32BE(payload.length, 8);
  payload.copy(rec, 32);
  createHash('sha256').update(rec.subarray(0, 12)).update(payload).digest().copy(rec, 12, 0, 20);
  return rec;
}

function decode(rec: Buffer): { lsn: number; payload: Buffer } | undefined {
  if (rec.readUInt32BE(0) !== MAGIC) return undefined;
  const length = rec.readUInt32BE(8);
  if (length > RECORD_BYTES - 32) return undefined;
  const payload = rec.subarray(32, 32 + length);
  const sum = createHash('sha256').update(rec.subarray(0, 12)).update(payload).digest().subarray(0, 20);
  return sum.equals(rec.subarray(12, 32)) ? { lsn: rec.readUInt32BE(4), payload } : undefined;
}

const dev = await openDevice(values.device!, { endpoints });
if (records * RECORD_BYTES > dev.size) throw new Error(`${records} records do not fit ${dev.size} bytes`);
let unknownOutcomes = 0;
for (let lsn = 1; lsn <= records; lsn++) {
  const rec = encode(lsn, Buffer.from(`txn ${lsn}: UPDATE accounts SET balance = balance - ${lsn} WHERE id = ${lsn % 97}`));
  for (;;) {
    try {
      await dev.write((lsn - 1) * RECORD_BYTES, rec, { fua: true });
      break;
    } catch (err) {
      if (!(err instanceof WriteOutcomeUnknownError)) throw err;
      unknownOutcomes++;
      console.log(JSON.stringify({ unknownOutcome: lsn, retrying: true }));
    }
  }
  if (lsn % 10 === 0) console.log(JSON.stringify({ committed: lsn, endpoint: dev.endpoint }));
}

// Recovery, as a restarted database does it: read records until the first that does not verify.
let recovered = 0;
for (let lsn = 1; lsn <= records; lsn++) {
  const r = decode(await dev.read((lsn - 1) * RECORD_BYTES, RECORD_BYTES));
  if (!r || r.lsn !== lsn) break;
  recovered = lsn;
}
await dev.close();
console.log(JSON.stringify({ records, recovered, reconnects: dev.reconnects, unknownOutcomes }));
process.exitCode = recovered === records ? 0 : 1;
