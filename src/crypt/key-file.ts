// The key-encryption keys (KEKs) a node holds, from its key file:
//
//   # comments and blank lines are ignored
//   <id> <64 hex digits>        one 256-bit KEK per line (openssl rand -hex 32)
//
// Ids are [A-Za-z0-9._-], 1..64 characters, unique. New data keys are
// wrapped with the LAST key of the file, and `xdevice-cli key rotate`
// rewraps every device's data key with it: to rotate, append a new line on
// every node, rotate, then remove the old line.
//
// The file comes from the `encryption-key-file` option, else from the
// systemd credential `xdevice-encryption-keys` ($CREDENTIALS_DIRECTORY, set
// by LoadCredential=). It is refused if group or others may read it.

import { statSync } from 'node:fs';
import { join } from 'node:path';
import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import { readPrivateFile } from '../disk/private-file.ts';
import { KEK_BYTES, type Kek } from './wrap.ts';

export const KEY_CREDENTIAL_NAME = 'xdevice-encryption-keys';
const KEY_ID = /^[A-Za-z0-9._-]{1,64}$/;

export class KeyFileError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_KEY_FILE', message);
  }
}

export function keyIdProblem(id: string): string | undefined {
  return KEY_ID.test(id) ? undefined : `key id must be 1-64 characters of A-Z a-z 0-9 . _ -, got ${JSON.stringify(id.slice(0, 80))}`;
}

/** Parses a key file's text; `name` goes into errors (never a key's bytes). */
export function parseKeyFile(text: string, name: string): Kek[] {
  const keys: Kek[] = [];
  const ids = new Set<string>();
  const seen = new Set<string>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `${name}:${i + 1}`;
    const m = /^(\S+)\s+(\S+)$/.exec(line);
    if (!m) throw new KeyFileError(`${where}: expected "ID HEX" (a key id and ${KEK_BYTES * 2} hex digits)`);
    const [, id, hex] = m as unknown as [string, string, string];
    const idProblem = keyIdProblem(id);
    if (idProblem) throw new KeyFileError(`${where}: ${idProblem}`);
    if (!/^[0-9a-fA-F]+$/.test(hex) || hex.length !== KEK_BYTES * 2) throw new KeyFileError(`${where}: key ${id} must be ${KEK_BYTES * 2} hex digits (openssl rand -hex ${KEK_BYTES})`);
    if (ids.has(id)) throw new KeyFileError(`${where}: key id ${id} appears twice`);
    const lower = hex.toLowerCase();
    if (seen.has(lower)) throw new KeyFileError(`${where}: key ${id} has the same bytes as an earlier key`);
    const key = Buffer.from(hex, 'hex');
    if (new Set(key).size < 8) throw new KeyFileError(`${where}: key ${id} is not random (fewer than 8 distinct bytes)`);
    if (keys.length >= limits.keyEncryptionKeysMax) throw new KeyFileError(`${where}: more than ${limits.keyEncryptionKeysMax} keys`);
    ids.add(id);
    seen.add(lower);
    keys.push({ id, key });
  }
  if (keys.length === 0) throw new KeyFileError(`${name}: no key (add a line "ID HEX", e.g. "k1 $(openssl rand -hex ${KEK_BYTES})")`);
  return keys;
}

/** Where this node's key file is: the option, else the systemd credential, else none. */
export function keyFilePath(option: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (option !== '') return option;
  const dir = env.CREDENTIALS_DIRECTORY;
  if (!dir) return undefined;
  const path = join(dir, KEY_CREDENTIAL_NAME);
  try {
    statSync(path);
  } catch {
    return undefined;
  }
  return path;
}

/** Reads and parses a key file; refused if it is not a regular file or group/other may read it. */
export function readKeyFile(path: string): Kek[] {
  const data = readPrivateFile(path, 'encryption-key-file', limits.encryptionKeyFileBytesMax, (m) => new KeyFileError(m));
  return parseKeyFile(data.toString('utf8'), path);
}
