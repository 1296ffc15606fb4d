// LZ4 blocks through lz4-napi (lz4_flex, a memory-safe Rust implementation,
// with prebuilt binaries per platform): the codec of COMPRESSED_WRITE
// (src/device/commands.ts) and of compressed backup blocks
// (src/cli/backup-store.ts), and nothing else.
//
// A block is what lz4-napi's compressSync returns: a u32le of the original
// length, then one raw LZ4 block. The prefix is read and bounded HERE before
// the library sees the block (a peer's u32 is not an allocation), and the
// output must have exactly that length: any other outcome is one exception,
// so every replica reaches the same verdict on the same bytes. Both calls are
// synchronous: apply decodes in the order entries commit, and LZ4's output
// for a valid block is fixed by the format, not by the library's version.

import { createRequire } from 'node:module';

interface Lz4Napi {
  compressSync(data: Buffer): Buffer;
  compress(data: Buffer): Promise<Buffer>;
  uncompressSync(data: Buffer): Buffer;
}

const require = createRequire(import.meta.url);
const lz4 = require('lz4-napi') as Lz4Napi;

/**
 * The plaintext of commands this process compressed, by the command's
 * buffer: the proposing node's own apply takes it instead of decompressing
 * what it compressed a moment ago (LZ4 is lossless: the same bytes either
 * way). Taken once; a command never applied here (leadership lost) is
 * forgotten with its buffer. A peer's command or one read back from the WAL
 * is another buffer, always decompressed and checked.
 */
const ownPlaintext = new WeakMap<Buffer, Buffer>();

export function rememberPlaintext(command: Buffer, plain: Buffer): Buffer {
  ownPlaintext.set(command, plain);
  return command;
}

/** The plaintext rememberPlaintext() kept for this very buffer, once. */
export function takePlaintext(command: Buffer): Buffer | undefined {
  const plain = ownPlaintext.get(command);
  if (plain !== undefined) ownPlaintext.delete(command);
  return plain;
}

/** Bytes of the length prefix in front of the raw LZ4 block. */
export const LZ4_PREFIX_BYTES = 4;

export class Lz4BlockError extends Error {
  override name = 'Lz4BlockError';
}

/** Whether storing `length` bytes as a `compressedLength`-byte block pays: it must save at least 1/8. */
export function compressionPays(length: number, compressedLength: number): boolean {
  return compressedLength <= length - Math.floor(length / 8);
}

/** `data` as a size-prefixed LZ4 block (it may be longer than `data`: the caller decides whether it pays, compressionPays). */
export function compressBlock(data: Buffer): Buffer {
  return lz4.compressSync(data);
}

/** compressBlock() on libuv's thread pool: a large write does not hold up the event loop (Raft, NBD) meanwhile. */
export function compressBlockAsync(data: Buffer): Promise<Buffer> {
  return lz4.compress(data);
}

/** The original length a block claims (its prefix), or undefined if it is too short to have one. */
export function blockLength(block: Buffer): number | undefined {
  return block.length < LZ4_PREFIX_BYTES ? undefined : block.readUInt32LE(0);
}

/**
 * Decompresses a size-prefixed block that must hold exactly `length` bytes,
 * `length` at most `lengthMax`; throws Lz4BlockError otherwise (a malformed
 * block, a prefix that disagrees, an output of another length).
 */
export function decompressBlock(block: Buffer, length: number, lengthMax: number): Buffer {
  const claimed = blockLength(block);
  if (claimed === undefined) throw new Lz4BlockError(`LZ4 block of ${block.length} bytes has no length prefix`);
  if (claimed !== length) throw new Lz4BlockError(`LZ4 block says ${claimed} bytes, the command ${length}`);
  if (length > lengthMax) throw new Lz4BlockError(`LZ4 block of ${length} bytes, more than ${lengthMax}`);
  let out: Buffer;
  try {
    out = lz4.uncompressSync(block);
  } catch (err) {
    throw new Lz4BlockError(`malformed LZ4 block: ${(err as Error).message}`);
  }
  if (out.length !== length) throw new Lz4BlockError(`LZ4 block decompressed to ${out.length} bytes, not ${length}`);
  return out;
}
