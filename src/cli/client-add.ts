// `xdevice-cli client add`: mints an admin API client. A token client gets a
// new random token, printed once; only its SHA-256 goes into the clients file
// (created mode 600). A certificate client is a CN → role line. The file is
// checked as the node checks it (private, well-formed, no duplicate) before
// and after the line is added, so the node accepts what this writes; the
// node picks it up on SIGHUP.

import { closeSync, fstatSync, openSync, readFileSync, writeSync } from 'node:fs';
import { checkPrivate, clientNameProblem, formatClientLine, hashToken, mintToken, parseClientsFile, parseRole } from '../admin/clients-file.ts';
import { limits } from '../limits.ts';

export interface AddedClient {
  file: string;
  kind: 'token' | 'cert';
  name: string;
  role: string;
  /** The token (token clients only): shown once, never stored. */
  token?: string;
}

export function addClient(options: { file: string; name: string; role: string; cert: boolean }): AddedClient {
  const kind = options.cert ? 'cert' : 'token';
  const problem = clientNameProblem(kind, options.name);
  if (problem) throw new Error(problem);
  const role = parseRole(options.role);
  // O_APPEND, created 600: an existing file keeps its mode, and is refused if others can read it.
  const fd = openSync(options.file, 'a+', 0o600);
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error(`${options.file} is not a regular file`);
    checkPrivate(options.file, st.mode);
    if (st.size > limits.adminClientsFileBytesMax) throw new Error(`${options.file} is larger than ${limits.adminClientsFileBytesMax} bytes`);
    const existing = readFileSync(options.file);
    const token = kind === 'token' ? mintToken() : undefined;
    const line = formatClientLine(token !== undefined ? { kind: 'token', name: options.name, role, hash: hashToken(token) } : { kind: 'cert', name: options.name, role });
    const text = `${existing.length > 0 && existing[existing.length - 1] !== 0x0a ? '\n' : ''}${line}\n`;
    // The whole file as the node will read it: a duplicate name or a broken line is refused now, not at the next SIGHUP.
    parseClientsFile(Buffer.concat([existing, Buffer.from(text)]), options.file);
    writeSync(fd, text);
    return { file: options.file, kind, name: options.name, role, ...(token !== undefined ? { token } : {}) };
  } finally {
    closeSync(fd);
  }
}
