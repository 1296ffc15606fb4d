// The admin clients file (`admin-clients-file`): who may use the admin API
// and with which role. One client per line, fields separated by blanks:
//
//   token  NAME  ROLE  sha256:HEX     a bearer token; only its SHA-256 is kept
//   cert   CN    ROLE                 a client certificate (verified against
//                                     admin-tls-ca) whose subject CN is CN
//
// `#` starts a comment line. NAME: letters, digits, '.', '_', '@', '-' (up to
// 64); CN: up to 64 printable ASCII characters without blanks. Tokens are
// minted by `xdevice-cli client add`, which prints the token once and appends
// its hash here; the file holds no secret a reader could replay, but it says
// who may do what, so it must be private to the node's user like the cluster
// secret file.

import { createHash, randomBytes } from 'node:crypto';
import { XDeviceError } from '../errors.ts';
import { limits } from '../limits.ts';
import { privateModeProblem, readPrivateFile } from '../disk/private-file.ts';
import { ROLES, type Role } from './routes.ts';

export class ClientsFileError extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_CONFIG', message);
  }
}

export type ClientEntry =
  | { kind: 'token'; name: string; role: Role; /** SHA-256 of the token, 32 bytes. */ hash: Buffer; line: number }
  | { kind: 'cert'; name: string; role: Role; line: number };

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
const CN_RE = /^[\x21-\x7e]{1,64}$/;
const HASH_RE = /^sha256:([0-9a-f]{64})$/;
const TOKEN_BYTES = 32;

/** A new high-entropy token (256 random bits); the `xdv_` prefix lets secret scanners and people recognise it. */
export function mintToken(): string {
  return `xdv_${randomBytes(TOKEN_BYTES).toString('base64url')}`;
}

export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

/** The line `client add` appends for a client. */
export function formatClientLine(entry: { kind: 'token'; name: string; role: Role; hash: Buffer } | { kind: 'cert'; name: string; role: Role }): string {
  return entry.kind === 'token' ? `token ${entry.name} ${entry.role} sha256:${entry.hash.toString('hex')}` : `cert ${entry.name} ${entry.role}`;
}

/** Why `name` cannot be a client name (undefined if it can). */
export function clientNameProblem(kind: 'token' | 'cert', name: string): string | undefined {
  if (kind === 'token' && !NAME_RE.test(name)) return `bad client name "${name.slice(0, 80)}" (letters, digits, '.', '_', '@', '-'; up to 64, starting with a letter or digit)`;
  if (kind === 'cert' && !CN_RE.test(name)) return `bad certificate CN "${name.slice(0, 80)}" (up to 64 printable ASCII characters without blanks)`;
  return undefined;
}

export function parseRole(text: string): Role {
  if (!(ROLES as readonly string[]).includes(text)) throw new Error(`unknown role "${text.slice(0, 80)}" (one of ${ROLES.join(', ')})`);
  return text as Role;
}

/** Parses the file's text; a ClientsFileError names the line and what is wrong with it. */
export function parseClientsFile(data: Buffer | string, fileName: string): ClientEntry[] {
  let text: string;
  if (typeof data === 'string') text = data;
  else {
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(data);
    } catch {
      throw new ClientsFileError(`${fileName}: not UTF-8 text`);
    }
  }
  const entries: ClientEntry[] = [];
  const seen = new Map<string, number>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const at = `${fileName}:${i + 1}`;
    const line = lines[i]!.replace(/\r$/, '').trim();
    if (line === '' || line.startsWith('#')) continue;
    if (!/^[\x20-\x7e\t]*$/.test(line)) throw new ClientsFileError(`${at}: only printable ASCII is allowed outside comments`);
    const fields = line.split(/[ \t]+/);
    const [kind, name = '', roleText = ''] = fields;
    const fail = (why: string): never => {
      throw new ClientsFileError(`${at}: ${why}`);
    };
    if (kind !== 'token' && kind !== 'cert') fail(`expected "token NAME ROLE sha256:HEX" or "cert CN ROLE", got a line starting "${kind!.slice(0, 40)}"`);
    const k = kind as 'token' | 'cert';
    const want = k === 'token' ? 4 : 3;
    if (fields.length !== want) fail(k === 'token' ? `expected "token NAME ROLE sha256:HEX" (4 fields), got ${fields.length}` : `expected "cert CN ROLE" (3 fields), got ${fields.length}`);
    const nameProblem = clientNameProblem(k, name);
    if (nameProblem) fail(nameProblem);
    let role: Role;
    try {
      role = parseRole(roleText);
    } catch (err) {
      return fail((err as Error).message);
    }
    const key = `${k} ${name}`;
    const before = seen.get(key);
    if (before !== undefined) fail(`${k === 'token' ? 'client' : 'certificate CN'} "${name}" is already on line ${before}`);
    seen.set(key, i + 1);
    if (k === 'token') {
      const m = HASH_RE.exec(fields[3]!);
      if (!m) fail('the token hash must be sha256: and 64 lowercase hex digits (xdevice-cli client add writes it)');
      const same = seen.get(m![1]!);
      if (same !== undefined) fail(`the same token hash as line ${same}: one token would be two clients`);
      seen.set(m![1]!, i + 1);
      entries.push({ kind: 'token', name, role, hash: Buffer.from(m![1]!, 'hex'), line: i + 1 });
    } else {
      entries.push({ kind: 'cert', name, role, line: i + 1 });
    }
    if (entries.length > limits.adminClientsMax) fail(`more than ${limits.adminClientsMax} clients`);
  }
  return entries;
}

/**
 * Reads and parses the clients file: it must be a regular file not
 * accessible by group or others, and within adminClientsFileBytesMax.
 */
export function readClientsFile(path: string): ClientEntry[] {
  return parseClientsFile(readPrivateFile(path, 'admin-clients-file', limits.adminClientsFileBytesMax, (m) => new ClientsFileError(m)), path);
}

/** Refuses a clients file that group or others can open (it says who may do what: only the node's user may change or read it). */
export function checkPrivate(path: string, mode: number): void {
  const problem = privateModeProblem(path, mode);
  if (problem) throw new ClientsFileError(`admin-clients-file: ${problem}`);
}
