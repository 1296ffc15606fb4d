// The NBD wire format as pure functions: Buffer in, typed message out, and an
// encoder for every message either side sends. Nothing here touches a socket
// (node-postgres's pg-protocol is the model). Framing errors a peer can cause
// throw NbdProtocolError (the caller disconnects); malformed option payloads
// come back as `{ ok: false }` because the spec answers them with an error reply.
//
// Over 500 lines: one encoder and one decoder for every message of the
// spec (handshake, options, requests, simple and structured replies) side by
// side, so each wire layout is written down once, next to its inverse.

import { limits } from '../limits.ts';
import {
  CLIENT_FLAGS_BYTES,
  EXPORT_NAME_REPLY_ZEROES_BYTES,
  GREETING_BYTES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBDMAGIC_HI,
  NBDMAGIC_LO,
  NbdInfo,
  NbdReplyType,
  NBD_REPLY_FLAG_DONE,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  OPTION_REPLY_MAGIC_HI,
  OPTION_REPLY_MAGIC_LO,
  REQUEST_HEADER_BYTES,
  SIMPLE_REPLY_BYTES,
  STRUCTURED_REPLY_HEADER_BYTES,
} from './constants.ts';
import { NbdProtocolError } from './errors.ts';

const TWO_32 = 0x1_0000_0000;
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------- primitives

/** Reads an unsigned 64-bit big-endian integer; values above 2^53 lose precision but stay above every device size. */
export function readU64(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * TWO_32 + buf.readUInt32BE(offset + 4);
}

export function writeU64(buf: Buffer, offset: number, value: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32) >>> 0, offset);
  buf.writeUInt32BE(value >>> 0, offset + 4);
}

/** A cookie is opaque: kept as two 32-bit halves so neither side needs BigInt. */
export interface Cookie {
  cookieHi: number;
  cookieLo: number;
}

export type Decoded<T> = ({ ok: true } & T) | { ok: false; reason: string };

/** Decodes an NBD string: valid UTF-8, no NUL, at most nbdStringBytesMax bytes. */
export function decodeNbdString(buf: Buffer, start: number, end: number): string | undefined {
  if (end - start > limits.nbdStringBytesMax) return undefined;
  let text: string;
  try {
    text = utf8Strict.decode(buf.subarray(start, end));
  } catch {
    return undefined;
  }
  if (text.includes('\0')) return undefined;
  return text;
}

function encodeString(text: string): Buffer {
  return Buffer.from(text, 'utf8');
}

// ---------------------------------------------------------------- handshake, server → client

export function encodeGreeting(handshakeFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(GREETING_BYTES);
  buf.writeUInt32BE(NBDMAGIC_HI, 0);
  buf.writeUInt32BE(NBDMAGIC_LO, 4);
  buf.writeUInt32BE(IHAVEOPT_HI, 8);
  buf.writeUInt32BE(IHAVEOPT_LO, 12);
  buf.writeUInt16BE(handshakeFlags, 16);
  return buf;
}

export function decodeGreeting(buf: Buffer): { handshakeFlags: number } {
  if (buf.length < GREETING_BYTES) throw new NbdProtocolError('short greeting');
  if (buf.readUInt32BE(0) !== NBDMAGIC_HI || buf.readUInt32BE(4) !== NBDMAGIC_LO) {
    throw new NbdProtocolError('bad NBDMAGIC in greeting');
  }
  if (buf.readUInt32BE(8) !== IHAVEOPT_HI || buf.readUInt32BE(12) !== IHAVEOPT_LO) {
    throw new NbdProtocolError('not a newstyle server (oldstyle negotiation is not supported)');
  }
  return { handshakeFlags: buf.readUInt16BE(16) };
}

export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.allocUnsafe(CLIENT_FLAGS_BYTES);
  buf.writeUInt32BE(flags >>> 0, 0);
  return buf;
}

export function decodeClientFlags(buf: Buffer): number {
  if (buf.length < CLIENT_FLAGS_BYTES) throw new NbdProtocolError('short client flags');
  return buf.readUInt32BE(0);
}

export interface OptionHeader {
  option: number;
  length: number;
}

export function encodeOption(option: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.allocUnsafe(OPTION_HEADER_BYTES + payload.length);
  buf.writeUInt32BE(IHAVEOPT_HI, 0);
  buf.writeUInt32BE(IHAVEOPT_LO, 4);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(payload.length, 12);
  payload.copy(buf, OPTION_HEADER_BYTES);
  return buf;
}

/** Throws on a bad magic: the spec leaves the server no way to resynchronise. */
export function decodeOptionHeader(buf: Buffer): OptionHeader {
  if (buf.length < OPTION_HEADER_BYTES) throw new NbdProtocolError('short option header');
  if (buf.readUInt32BE(0) !== IHAVEOPT_HI || buf.readUInt32BE(4) !== IHAVEOPT_LO) {
    throw new NbdProtocolError('bad IHAVEOPT magic in option header');
  }
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

export function encodeOptionReply(option: number, replyType: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + payload.length);
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_HI, 0);
  buf.writeUInt32BE(OPTION_REPLY_MAGIC_LO, 4);
  buf.writeUInt32BE(option >>> 0, 8);
  buf.writeUInt32BE(replyType >>> 0, 12);
  buf.writeUInt32BE(payload.length, 16);
  payload.copy(buf, OPTION_REPLY_HEADER_BYTES);
  return buf;
}

/** An error reply carries a human-readable message as its payload. */
export function encodeOptionError(option: number, replyType: number, message: string): Buffer {
  return encodeOptionReply(option, replyType, encodeString(message.slice(0, 1024)));
}

export interface OptionReplyHeader {
  option: number;
  replyType: number;
  length: number;
}

export function decodeOptionReplyHeader(buf: Buffer): OptionReplyHeader {
  if (buf.length < OPTION_REPLY_HEADER_BYTES) throw new NbdProtocolError('short option reply header');
  if (buf.readUInt32BE(0) !== OPTION_REPLY_MAGIC_HI || buf.readUInt32BE(4) !== OPTION_REPLY_MAGIC_LO) {
    throw new NbdProtocolError('bad option reply magic');
  }
  return { option: buf.readUInt32BE(8), replyType: buf.readUInt32BE(12), length: buf.readUInt32BE(16) };
}

/** NBD_REP_SERVER payload: name, then an optional human-readable description. */
export function encodeServerPayload(name: string, description = ''): Buffer {
  const nameBytes = encodeString(name);
  const descriptionBytes = encodeString(description);
  const buf = Buffer.allocUnsafe(4 + nameBytes.length + descriptionBytes.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  descriptionBytes.copy(buf, 4 + nameBytes.length);
  return buf;
}

export function decodeServerPayload(payload: Buffer): Decoded<{ name: string; description: string }> {
  if (payload.length < 4) return { ok: false, reason: 'NBD_REP_SERVER shorter than 4 bytes' };
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > payload.length - 4) return { ok: false, reason: 'NBD_REP_SERVER name overruns the reply' };
  const name = decodeNbdString(payload, 4, 4 + nameLength);
  const description = decodeNbdString(payload, 4 + nameLength, payload.length);
  if (name === undefined || description === undefined) return { ok: false, reason: 'NBD_REP_SERVER bad string' };
  return { ok: true, name, description };
}

export function encodeInfoExportPayload(size: number, transmissionFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(12);
  buf.writeUInt16BE(NbdInfo.EXPORT, 0);
  writeU64(buf, 2, size);
  buf.writeUInt16BE(transmissionFlags, 10);
  return buf;
}

export function encodeInfoStringPayload(info: NbdInfo.NAME | NbdInfo.DESCRIPTION, text: string): Buffer {
  const bytes = encodeString(text);
  const buf = Buffer.allocUnsafe(2 + bytes.length);
  buf.writeUInt16BE(info, 0);
  bytes.copy(buf, 2);
  return buf;
}

export function encodeInfoBlockSizePayload(minimum: number, preferred: number, maximum: number): Buffer {
  const buf = Buffer.allocUnsafe(14);
  buf.writeUInt16BE(NbdInfo.BLOCK_SIZE, 0);
  buf.writeUInt32BE(minimum, 2);
  buf.writeUInt32BE(preferred, 6);
  buf.writeUInt32BE(maximum >>> 0, 10);
  return buf;
}

export type InfoReply =
  | { info: NbdInfo.EXPORT; size: number; transmissionFlags: number }
  | { info: NbdInfo.NAME; name: string }
  | { info: NbdInfo.DESCRIPTION; description: string }
  | { info: NbdInfo.BLOCK_SIZE; minimum: number; preferred: number; maximum: number }
  | { info: number; unknown: true };

export function decodeInfoPayload(payload: Buffer): Decoded<{ reply: InfoReply }> {
  if (payload.length < 2) return { ok: false, reason: 'NBD_REP_INFO shorter than 2 bytes' };
  const info = payload.readUInt16BE(0);
  switch (info) {
    case NbdInfo.EXPORT:
      if (payload.length !== 12) return { ok: false, reason: 'NBD_INFO_EXPORT length is not 12' };
      return { ok: true, reply: { info, size: readU64(payload, 2), transmissionFlags: payload.readUInt16BE(10) } };
    case NbdInfo.NAME:
    case NbdInfo.DESCRIPTION: {
      const text = decodeNbdString(payload, 2, payload.length);
      if (text === undefined) return { ok: false, reason: 'NBD_INFO string is not valid' };
      return {
        ok: true,
        reply: info === NbdInfo.NAME ? { info, name: text } : { info, description: text },
      };
    }
    case NbdInfo.BLOCK_SIZE:
      if (payload.length !== 14) return { ok: false, reason: 'NBD_INFO_BLOCK_SIZE length is not 14' };
      return {
        ok: true,
        reply: {
          info,
          minimum: payload.readUInt32BE(2),
          preferred: payload.readUInt32BE(6),
          maximum: payload.readUInt32BE(10),
        },
      };
    default:
      return { ok: true, reply: { info, unknown: true } };
  }
}

export function encodeMetaContextPayload(contextId: number, name: string): Buffer {
  const bytes = encodeString(name);
  const buf = Buffer.allocUnsafe(4 + bytes.length);
  buf.writeUInt32BE(contextId >>> 0, 0);
  bytes.copy(buf, 4);
  return buf;
}

export function decodeMetaContextPayload(payload: Buffer): Decoded<{ contextId: number; name: string }> {
  if (payload.length < 4) return { ok: false, reason: 'NBD_REP_META_CONTEXT shorter than 4 bytes' };
  const name = decodeNbdString(payload, 4, payload.length);
  if (name === undefined) return { ok: false, reason: 'NBD_REP_META_CONTEXT name is not valid' };
  return { ok: true, contextId: payload.readUInt32BE(0), name };
}

/** The reply to NBD_OPT_EXPORT_NAME: no option-reply framing, and 124 zeroes unless NO_ZEROES. */
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_REPLY_ZEROES_BYTES));
  writeU64(buf, 0, size);
  buf.writeUInt16BE(transmissionFlags, 8);
  return buf;
}

export function decodeExportNameReply(buf: Buffer): { size: number; transmissionFlags: number } {
  if (buf.length < 10) throw new NbdProtocolError('short NBD_OPT_EXPORT_NAME reply');
  return { size: readU64(buf, 0), transmissionFlags: buf.readUInt16BE(8) };
}

// ---------------------------------------------------------------- option payloads, client → server

export function encodeExportNamePayload(name: string): Buffer {
  return encodeString(name);
}

export function decodeExportNamePayload(payload: Buffer): Decoded<{ name: string }> {
  const name = decodeNbdString(payload, 0, payload.length);
  if (name === undefined) return { ok: false, reason: 'export name is not a valid NBD string' };
  return { ok: true, name };
}

/** NBD_OPT_INFO / NBD_OPT_GO payload. */
export function encodeInfoRequestPayload(name: string, infos: readonly number[]): Buffer {
  const nameBytes = encodeString(name);
  const buf = Buffer.allocUnsafe(4 + nameBytes.length + 2 + infos.length * 2);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  let at = 4 + nameBytes.length;
  buf.writeUInt16BE(infos.length, at);
  at += 2;
  for (const info of infos) {
    buf.writeUInt16BE(info, at);
    at += 2;
  }
  return buf;
}

export function decodeInfoRequestPayload(payload: Buffer): Decoded<{ name: string; infos: number[] }> {
  if (payload.length < 6) return { ok: false, reason: 'INFO/GO payload shorter than 6 bytes' };
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > payload.length - 6) return { ok: false, reason: 'INFO/GO name length overruns the option' };
  const name = decodeNbdString(payload, 4, 4 + nameLength);
  if (name === undefined) return { ok: false, reason: 'INFO/GO export name is not a valid NBD string' };
  let at = 4 + nameLength;
  const count = payload.readUInt16BE(at);
  at += 2;
  if (payload.length - at !== count * 2) return { ok: false, reason: 'INFO/GO information request count does not match the length' };
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(payload.readUInt16BE(at + i * 2));
  return { ok: true, name, infos };
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload. */
export function encodeMetaContextRequestPayload(name: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const nameBytes = encodeString(name);
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(nameBytes.length, 0);
  parts.push(head, nameBytes);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) {
    const bytes = encodeString(query);
    const length = Buffer.allocUnsafe(4);
    length.writeUInt32BE(bytes.length, 0);
    parts.push(length, bytes);
  }
  return Buffer.concat(parts);
}

export type MetaContextRequest = Decoded<{ name: string; queries: string[] }> & { tooBig?: boolean };

export function decodeMetaContextRequestPayload(payload: Buffer): MetaContextRequest {
  if (payload.length < 8) return { ok: false, reason: 'meta context payload shorter than 8 bytes' };
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > payload.length - 8) return { ok: false, reason: 'meta context export name overruns the option' };
  const name = decodeNbdString(payload, 4, 4 + nameLength);
  if (name === undefined) return { ok: false, reason: 'meta context export name is not a valid NBD string' };
  let at = 4 + nameLength;
  const count = payload.readUInt32BE(at);
  at += 4;
  if (count > limits.metaContextQueriesMax) {
    return { ok: false, reason: `more than ${limits.metaContextQueriesMax} meta context queries`, tooBig: true };
  }
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (payload.length - at < 4) return { ok: false, reason: 'meta context query length overruns the option' };
    const length = payload.readUInt32BE(at);
    at += 4;
    if (length > payload.length - at) return { ok: false, reason: 'meta context query overruns the option' };
    const query = decodeNbdString(payload, at, at + length);
    if (query === undefined) return { ok: false, reason: 'meta context query is not a valid NBD string' };
    queries.push(query);
    at += length;
  }
  if (at !== payload.length) return { ok: false, reason: 'trailing bytes after meta context queries' };
  return { ok: true, name, queries };
}

// ---------------------------------------------------------------- transmission, client → server

export interface RequestHeader extends Cookie {
  flags: number;
  type: number;
  offset: number;
  length: number;
}

export function encodeRequest(
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  length: number,
  target: Buffer = Buffer.allocUnsafe(REQUEST_HEADER_BYTES),
  at = 0,
): Buffer {
  target.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  target.writeUInt16BE(flags, at + 4);
  target.writeUInt16BE(type, at + 6);
  target.writeUInt32BE(cookieHi >>> 0, at + 8);
  target.writeUInt32BE(cookieLo >>> 0, at + 12);
  writeU64(target, at + 16, offset);
  target.writeUInt32BE(length >>> 0, at + 24);
  return target;
}

/** Decodes the 28-byte request header at `at`. A bad magic is fatal: framing is lost. */
export function decodeRequestHeader(buf: Buffer, at = 0): RequestHeader {
  if (buf.length - at < REQUEST_HEADER_BYTES) throw new NbdProtocolError('short request header');
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_REQUEST_MAGIC) {
    throw new NbdProtocolError(`bad request magic 0x${magic.toString(16)}`);
  }
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookieHi: buf.readUInt32BE(at + 8),
    cookieLo: buf.readUInt32BE(at + 12),
    offset: readU64(buf, at + 16),
    length: buf.readUInt32BE(at + 24),
  };
}

// ---------------------------------------------------------------- transmission, server → client

export function encodeSimpleReply(error: number, cookieHi: number, cookieLo: number): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(error >>> 0, 4);
  buf.writeUInt32BE(cookieHi, 8);
  buf.writeUInt32BE(cookieLo, 12);
  return buf;
}

function writeChunkHeader(
  buf: Buffer,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  length: number,
): void {
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeUInt32BE(cookieHi, 8);
  buf.writeUInt32BE(cookieLo, 12);
  buf.writeUInt32BE(length >>> 0, 16);
}

/** NBD_REPLY_TYPE_NONE with DONE: a structured "success, nothing to add". */
export function encodeNoneChunk(cookieHi: number, cookieLo: number): Buffer {
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES);
  writeChunkHeader(buf, NBD_REPLY_FLAG_DONE, NbdReplyType.NONE, cookieHi, cookieLo, 0);
  return buf;
}

/** Header and offset of an OFFSET_DATA chunk; the `dataLength` bytes follow separately (no copy). */
export function encodeOffsetDataHeader(
  flags: number,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  dataLength: number,
): Buffer {
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 8);
  writeChunkHeader(buf, flags, NbdReplyType.OFFSET_DATA, cookieHi, cookieLo, 8 + dataLength);
  writeU64(buf, STRUCTURED_REPLY_HEADER_BYTES, offset);
  return buf;
}

export function encodeOffsetHoleChunk(
  flags: number,
  cookieHi: number,
  cookieLo: number,
  offset: number,
  holeLength: number,
): Buffer {
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + 12);
  writeChunkHeader(buf, flags, NbdReplyType.OFFSET_HOLE, cookieHi, cookieLo, 12);
  writeU64(buf, STRUCTURED_REPLY_HEADER_BYTES, offset);
  buf.writeUInt32BE(holeLength, STRUCTURED_REPLY_HEADER_BYTES + 8);
  return buf;
}

export interface BlockDescriptor {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(
  flags: number,
  cookieHi: number,
  cookieLo: number,
  contextId: number,
  descriptors: readonly BlockDescriptor[],
): Buffer {
  const payloadLength = 4 + descriptors.length * 8;
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + payloadLength);
  writeChunkHeader(buf, flags, NbdReplyType.BLOCK_STATUS, cookieHi, cookieLo, payloadLength);
  let at = STRUCTURED_REPLY_HEADER_BYTES;
  buf.writeUInt32BE(contextId >>> 0, at);
  at += 4;
  for (const descriptor of descriptors) {
    buf.writeUInt32BE(descriptor.length >>> 0, at);
    buf.writeUInt32BE(descriptor.flags >>> 0, at + 4);
    at += 8;
  }
  return buf;
}

/** NBD_REPLY_TYPE_ERROR, or ERROR_OFFSET when `offset` is given. */
export function encodeErrorChunk(
  flags: number,
  cookieHi: number,
  cookieLo: number,
  error: number,
  message: string,
  offset?: number,
): Buffer {
  const messageBytes = encodeString(message).subarray(0, limits.nbdStringBytesMax);
  const payloadLength = 6 + messageBytes.length + (offset === undefined ? 0 : 8);
  const buf = Buffer.allocUnsafe(STRUCTURED_REPLY_HEADER_BYTES + payloadLength);
  const type = offset === undefined ? NbdReplyType.ERROR : NbdReplyType.ERROR_OFFSET;
  writeChunkHeader(buf, flags, type, cookieHi, cookieLo, payloadLength);
  buf.writeUInt32BE(error >>> 0, STRUCTURED_REPLY_HEADER_BYTES);
  buf.writeUInt16BE(messageBytes.length, STRUCTURED_REPLY_HEADER_BYTES + 4);
  messageBytes.copy(buf, STRUCTURED_REPLY_HEADER_BYTES + 6);
  if (offset !== undefined) writeU64(buf, STRUCTURED_REPLY_HEADER_BYTES + 6 + messageBytes.length, offset);
  return buf;
}

// ---------------------------------------------------------------- transmission replies, decoded by a client

export type ReplyHeader =
  | ({ kind: 'simple'; error: number } & Cookie)
  | ({ kind: 'structured'; flags: number; type: number; length: number } & Cookie);

/** Bytes needed to decode a reply header whose magic is at `at` (16 or 20). */
export function replyHeaderBytes(buf: Buffer, at = 0): number {
  if (buf.length - at < 4) throw new NbdProtocolError('short reply header');
  const magic = buf.readUInt32BE(at);
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_BYTES;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return STRUCTURED_REPLY_HEADER_BYTES;
  throw new NbdProtocolError(`bad reply magic 0x${magic.toString(16)}`);
}

export function decodeReplyHeader(buf: Buffer, at = 0): ReplyHeader {
  const need = replyHeaderBytes(buf, at);
  if (buf.length - at < need) throw new NbdProtocolError('short reply header');
  if (need === SIMPLE_REPLY_BYTES) {
    return {
      kind: 'simple',
      error: buf.readUInt32BE(at + 4),
      cookieHi: buf.readUInt32BE(at + 8),
      cookieLo: buf.readUInt32BE(at + 12),
    };
  }
  return {
    kind: 'structured',
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookieHi: buf.readUInt32BE(at + 8),
    cookieLo: buf.readUInt32BE(at + 12),
    length: buf.readUInt32BE(at + 16),
  };
}

export type ChunkPayload =
  | { type: NbdReplyType.NONE }
  | { type: NbdReplyType.OFFSET_DATA; offset: number; data: Buffer }
  | { type: NbdReplyType.OFFSET_HOLE; offset: number; length: number }
  | { type: NbdReplyType.BLOCK_STATUS; contextId: number; descriptors: BlockDescriptor[] }
  | { type: NbdReplyType.ERROR | NbdReplyType.ERROR_OFFSET; error: number; message: string; offset?: number };

/** Interprets a structured chunk's payload; inconsistent contents are a protocol error. */
export function decodeChunkPayload(type: number, payload: Buffer): ChunkPayload {
  switch (type) {
    case NbdReplyType.NONE:
      if (payload.length !== 0) throw new NbdProtocolError('NBD_REPLY_TYPE_NONE with a payload');
      return { type };
    case NbdReplyType.OFFSET_DATA:
      if (payload.length < 9) throw new NbdProtocolError('OFFSET_DATA chunk shorter than 9 bytes');
      return { type, offset: readU64(payload, 0), data: payload.subarray(8) };
    case NbdReplyType.OFFSET_HOLE:
      if (payload.length !== 12) throw new NbdProtocolError('OFFSET_HOLE chunk is not 12 bytes');
      return { type, offset: readU64(payload, 0), length: payload.readUInt32BE(8) };
    case NbdReplyType.BLOCK_STATUS: {
      if (payload.length < 12 || (payload.length - 4) % 8 !== 0) {
        throw new NbdProtocolError('BLOCK_STATUS chunk length is not 4 + 8n');
      }
      const descriptors: BlockDescriptor[] = [];
      for (let at = 4; at < payload.length; at += 8) {
        descriptors.push({ length: payload.readUInt32BE(at), flags: payload.readUInt32BE(at + 4) });
      }
      return { type, contextId: payload.readUInt32BE(0), descriptors };
    }
    default: {
      if ((type & 0x8000) === 0) throw new NbdProtocolError(`unknown structured reply type ${type}`);
      if (payload.length < 6) throw new NbdProtocolError('error chunk shorter than 6 bytes');
      const error = payload.readUInt32BE(0);
      const messageLength = payload.readUInt16BE(4);
      if (messageLength > payload.length - 6) throw new NbdProtocolError('error chunk message overruns the chunk');
      const message = payload.toString('utf8', 6, 6 + messageLength);
      if (type === NbdReplyType.ERROR_OFFSET) {
        if (payload.length - 6 - messageLength !== 8) throw new NbdProtocolError('ERROR_OFFSET chunk has no offset');
        return { type, error, message, offset: readU64(payload, 6 + messageLength) };
      }
      return { type: NbdReplyType.ERROR, error, message };
    }
  }
}

export { REQUEST_HEADER_BYTES, OPTION_HEADER_BYTES, OPTION_REPLY_HEADER_BYTES, GREETING_BYTES };
