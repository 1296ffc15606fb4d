// What every xdevice-cli command shares: the global options, the admin
// client they describe, output in the chosen format, and the exit codes.
//
// Exit codes a script can rely on:
//   0 success · 1 the operation failed (refused, not found, timeout)
//   2 usage error · 3 no endpoint reachable / no leader · 4 not authorised
//   5 the kernel cannot attach NBD devices

import { readFileSync } from 'node:fs';
import { AdminClient, type AdminClientTls } from './admin-client.ts';
import type { OutputFormat } from './output.ts';

export const EXIT = { ok: 0, failed: 1, usage: 2, unreachable: 3, unauthorised: 4, noKernelNbd: 5 } as const;

export interface GlobalArgs {
  endpoints: string;
  w: OutputFormat;
  token: string;
  cacert: string;
  cert: string;
  key: string;
  timeout: number;
}

export class CliExit extends Error {
  constructor(
    readonly exitCode: number,
    message: string,
  ) {
    super(message);
  }
}

export function usage(message: string): never {
  throw new CliExit(EXIT.usage, message);
}

export function fail(message: string): never {
  throw new CliExit(EXIT.failed, message);
}

/** Runs one of the configuration's parsers on an argument; its complaint is a usage error naming the argument. */
export function arg<T>(what: string, parse: () => T): T {
  try {
    return parse();
  } catch (err) {
    return usage(`${what}: ${(err as Error).message}`);
  }
}

export function client(argv: GlobalArgs): AdminClient {
  const endpoints = argv.endpoints.split(',').map((s) => s.trim()).filter(Boolean);
  return new AdminClient(endpoints, argv.token, argv.timeout * 1000, clientTls(argv));
}

/** --cacert/--cert/--key as PEM contents (any of them means HTTPS), or undefined for none. */
export function clientTls(argv: GlobalArgs): AdminClientTls | undefined {
  if (!argv.cacert && !argv.cert && !argv.key) return undefined;
  if (!argv.cert !== !argv.key) usage('--cert and --key go together');
  const read = (flag: string, path: string): Buffer | undefined => (path ? arg(flag, () => readFileSync(path)) : undefined);
  return { ca: read('--cacert', argv.cacert), cert: read('--cert', argv.cert), key: read('--key', argv.key) };
}

export function print(argv: GlobalArgs, json: unknown, table: () => string): void {
  process.stdout.write(argv.w === 'json' ? JSON.stringify(json, null, 2) + '\n' : table());
}

export function positiveSeconds(v: unknown): number {
  const n = typeof v === 'number' ? v : Number(String(v).trim());
  if (String(v).trim() === '' || !Number.isFinite(n) || n <= 0 || n > 86_400) throw new Error(`not a number of seconds in (0, 86400]: "${String(v)}"`);
  return n;
}

