// The state-machine commands carried in Raft entries (Entry.data).
//
// Every command starts with a request id {clientId, seq}: a proposal retried
// after a leader change carries the same id, and the block store applies an
// id at most once (a write applied twice could otherwise undo a newer write
// committed in between — a linearizability violation, not just wasted work).
//
// Data commands name a device by its id (the log index of the entry that
// created it), not by name: a write still in flight for a deleted device can
// never land in a new device that reuses the name.
//
//   command := u8 version | u8 op | u64 clientId | u64 seq | u64 firstUnacked | body
//   WRITE          u64 deviceId | u64 offset | data...
//   TRIM           u64 deviceId | u64 offset | u64 length
//   WRITE_ZEROES   u64 deviceId | u64 offset | u64 length | u8 flags
//   CREATE_DEVICE  str8 name | u64 size
//   DELETE_DEVICE  str8 name
//   RESIZE_DEVICE  str8 name | u64 size

import { XDeviceError } from '../errors.ts';
import { WireReader, WireWriter, str8Size } from './wire.ts';

export const COMMAND_VERSION = 1;
export const COMMAND_HEADER_BYTES = 2 + 8 + 8 + 8;

export const enum CommandOp {
  Write = 1,
  Trim = 2,
  WriteZeroes = 3,
  CreateDevice = 4,
  DeleteDevice = 5,
  ResizeDevice = 6,
}

export interface RequestId {
  /** Random per client incarnation, below 2^53. */
  clientId: number;
  /** Increases by one per request of that client, from 1. */
  seq: number;
  /**
   * The lowest seq this client still waits for: every seq below it is
   * settled, so the applier may forget it (Raft thesis 6.3).
   */
  firstUnacked: number;
}

export type Command =
  | (RequestId & { op: CommandOp.Write; deviceId: number; offset: number; data: Buffer })
  | (RequestId & { op: CommandOp.Trim; deviceId: number; offset: number; length: number })
  | (RequestId & { op: CommandOp.WriteZeroes; deviceId: number; offset: number; length: number; noHole: boolean })
  | (RequestId & { op: CommandOp.CreateDevice; name: string; size: number })
  | (RequestId & { op: CommandOp.DeleteDevice; name: string })
  | (RequestId & { op: CommandOp.ResizeDevice; name: string; size: number });

export class CommandDecodeError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_BAD_COMMAND', message);
  }
}

function header(size: number, op: CommandOp, id: RequestId): WireWriter {
  const w = new WireWriter(Buffer.allocUnsafe(COMMAND_HEADER_BYTES + size));
  w.u8(COMMAND_VERSION);
  w.u8(op);
  w.u64(id.clientId);
  w.u64(id.seq);
  w.u64(id.firstUnacked);
  return w;
}

/** One copy of the payload into the entry: Entry.data is a single Buffer. */
export function encodeWrite(id: RequestId, deviceId: number, offset: number, data: Buffer): Buffer {
  const w = header(16 + data.length, CommandOp.Write, id);
  w.u64(deviceId);
  w.u64(offset);
  w.raw(data);
  return w.buf;
}

/**
 * encodeWrite() of the pieces back to back (the slices a payload arrived in
 * off the socket): they are copied once, straight into the entry, with no
 * gathering buffer in between. The same bytes as encodeWrite of their concatenation.
 */
export function encodeWritev(id: RequestId, deviceId: number, offset: number, parts: readonly Buffer[]): Buffer {
  let length = 0;
  for (const part of parts) length += part.length;
  const w = header(16 + length, CommandOp.Write, id);
  w.u64(deviceId);
  w.u64(offset);
  for (const part of parts) w.raw(part);
  return w.buf;
}

export function encodeTrim(id: RequestId, deviceId: number, offset: number, length: number): Buffer {
  const w = header(24, CommandOp.Trim, id);
  w.u64(deviceId);
  w.u64(offset);
  w.u64(length);
  return w.buf;
}

export function encodeWriteZeroes(id: RequestId, deviceId: number, offset: number, length: number, noHole: boolean): Buffer {
  const w = header(25, CommandOp.WriteZeroes, id);
  w.u64(deviceId);
  w.u64(offset);
  w.u64(length);
  w.u8(noHole ? 1 : 0);
  return w.buf;
}

export function encodeCreateDevice(id: RequestId, name: string, size: number): Buffer {
  const w = header(str8Size(name) + 8, CommandOp.CreateDevice, id);
  w.str8(name);
  w.u64(size);
  return w.buf;
}

export function encodeDeleteDevice(id: RequestId, name: string): Buffer {
  const w = header(str8Size(name), CommandOp.DeleteDevice, id);
  w.str8(name);
  return w.buf;
}

export function encodeResizeDevice(id: RequestId, name: string, size: number): Buffer {
  const w = header(str8Size(name) + 8, CommandOp.ResizeDevice, id);
  w.str8(name);
  w.u64(size);
  return w.buf;
}

export function encodeCommand(c: Command): Buffer {
  switch (c.op) {
    case CommandOp.Write:
      return encodeWrite(c, c.deviceId, c.offset, c.data);
    case CommandOp.Trim:
      return encodeTrim(c, c.deviceId, c.offset, c.length);
    case CommandOp.WriteZeroes:
      return encodeWriteZeroes(c, c.deviceId, c.offset, c.length, c.noHole);
    case CommandOp.CreateDevice:
      return encodeCreateDevice(c, c.name, c.size);
    case CommandOp.DeleteDevice:
      return encodeDeleteDevice(c, c.name);
    case CommandOp.ResizeDevice:
      return encodeResizeDevice(c, c.name, c.size);
  }
}

/** Reads only the request id (cheap: used to match applied entries to waiting requests). */
export function peekRequestId(data: Buffer): RequestId | undefined {
  if (data.length < COMMAND_HEADER_BYTES || data[0] !== COMMAND_VERSION) return undefined;
  const r = new WireReader(data, 2);
  return { clientId: r.u64(), seq: r.u64(), firstUnacked: r.u64() };
}

/** Decodes an entry payload; the WRITE data is a slice of `data`, not a copy. */
export function decodeCommand(data: Buffer): Command {
  try {
    const r = new WireReader(data);
    const version = r.u8();
    if (version !== COMMAND_VERSION) throw new CommandDecodeError(`unknown command version ${version}`);
    const op = r.u8() as CommandOp;
    const clientId = r.u64();
    const seq = r.u64();
    const firstUnacked = r.u64();
    if (seq < 1 || firstUnacked < 1 || firstUnacked > seq) throw new CommandDecodeError(`bad request sequence ${seq}/${firstUnacked}`);
    switch (op) {
      case CommandOp.Write: {
        const deviceId = r.u64();
        const offset = r.u64();
        return { op, clientId, seq, firstUnacked, deviceId, offset, data: r.slice(r.remaining) };
      }
      case CommandOp.Trim: {
        const c = { op, clientId, seq, firstUnacked, deviceId: r.u64(), offset: r.u64(), length: r.u64() };
        r.end();
        return c;
      }
      case CommandOp.WriteZeroes: {
        const c = { op, clientId, seq, firstUnacked, deviceId: r.u64(), offset: r.u64(), length: r.u64(), noHole: r.u8() === 1 };
        r.end();
        return c;
      }
      case CommandOp.CreateDevice: {
        const c = { op, clientId, seq, firstUnacked, name: r.str8(), size: r.u64() };
        r.end();
        return c;
      }
      case CommandOp.DeleteDevice: {
        const c = { op, clientId, seq, firstUnacked, name: r.str8() };
        r.end();
        return c;
      }
      case CommandOp.ResizeDevice: {
        const c = { op, clientId, seq, firstUnacked, name: r.str8(), size: r.u64() };
        r.end();
        return c;
      }
      default:
        throw new CommandDecodeError(`unknown command op ${op as number}`);
    }
  } catch (err) {
    if (err instanceof CommandDecodeError) throw err;
    throw new CommandDecodeError((err as Error).message);
  }
}
