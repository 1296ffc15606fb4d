// A real PostgreSQL 15 whose WAL directory lives on an XDevice export
// (initdb --waldir), the data directory on local disk. PostgreSQL refuses to
// run as root, so everything runs as the `postgres` user.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, readFileSync, writeFileSync, appendFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import pg from 'pg';
import { tempDir } from './tools.ts';

export const PG_BIN = '/usr/lib/postgresql/15/bin';

function ids(): { uid: number; gid: number } {
  const r = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error('no postgres user: apt-get install postgresql');
  return { uid: Number(r.stdout), gid: Number(g.stdout) };
}

function asPostgres(cmd: string, args: string[], options: { allowFail?: boolean; cwd?: string } = {}): { status: number | null; out: string } {
  const r = spawnSync('runuser', ['-u', 'postgres', '--', cmd, ...args], { encoding: 'utf8', cwd: options.cwd ?? '/' });
  const out = `${r.stdout}\n${r.stderr}`;
  if (r.status !== 0 && !options.allowFail) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${out}`);
  return { status: r.status, out };
}

/** Lets other users pass through every ancestor of `path` (temp dirs are 0700). */
function makeTraversable(path: string): void {
  for (let dir = path; dir !== dirname(dir); dir = dirname(dir)) {
    const mode = statSync(dir).mode & 0o7777;
    if ((mode & 0o011) !== 0o011) chmodSync(dir, mode | 0o011);
  }
}

/** A directory postgres can own, with traversable parents. */
export function postgresDir(path: string): string {
  const { uid, gid } = ids();
  mkdirSync(path, { recursive: true });
  chownSync(path, uid, gid);
  chmodSync(path, 0o700);
  return path;
}

export interface Postgres {
  port: number;
  dataDir: string;
  walDir: string;
  socketDir: string;
  logFile: string;
  start(): void;
  /** Stops fast (or immediate: a crash as far as the WAL is concerned). */
  stop(mode?: 'fast' | 'immediate'): void;
  isRunning(): boolean;
  client(): pg.Client;
  log(): string;
}

export function initPostgres(options: { walDir: string; port: number }): Postgres {
  const base = tempDir('pg');
  chmodSync(base, 0o755);
  const dataDir = postgresDir(join(base, 'data'));
  const socketDir = postgresDir(join(base, 'sock'));
  chmodSync(socketDir, 0o755);
  const logFile = join(base, 'postgres.log');
  writeFileSync(logFile, '');
  const owner = ids();
  chownSync(logFile, owner.uid, owner.gid);
  // initdb wants the WAL directory empty or absent, and owned by postgres
  const walDir = options.walDir;
  mkdirSync(walDir, { recursive: true });
  chownSync(walDir, owner.uid, owner.gid);
  chmodSync(walDir, 0o700);
  makeTraversable(dirname(walDir));
  asPostgres(join(PG_BIN, 'initdb'), ['-D', dataDir, '--waldir', walDir, '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
  appendFileSync(
    join(dataDir, 'postgresql.conf'),
    [
      `port = ${options.port}`,
      `listen_addresses = '127.0.0.1'`,
      `unix_socket_directories = '${socketDir}'`,
      'synchronous_commit = on',
      'fsync = on',
      'full_page_writes = on',
      'wal_sync_method = fdatasync',
      'shared_buffers = 64MB',
      'max_connections = 50',
      'checkpoint_timeout = 5min',
      'max_wal_size = 256MB',
      "log_min_messages = warning",
      '',
    ].join('\n'),
  );
  const pgdb: Postgres = {
    port: options.port,
    dataDir,
    walDir,
    socketDir,
    logFile,
    start() {
      asPostgres(join(PG_BIN, 'pg_ctl'), ['-D', dataDir, '-l', logFile, '-w', '-t', '120', 'start']);
    },
    stop(mode = 'fast') {
      asPostgres(join(PG_BIN, 'pg_ctl'), ['-D', dataDir, '-m', mode, '-w', '-t', '120', 'stop'], { allowFail: true });
    },
    isRunning() {
      return asPostgres(join(PG_BIN, 'pg_ctl'), ['-D', dataDir, 'status'], { allowFail: true }).status === 0;
    },
    client() {
      return new pg.Client({ host: '127.0.0.1', port: options.port, user: 'postgres', database: 'postgres' });
    },
    log() {
      return readFileSync(logFile, 'utf8');
    },
  };
  return pgdb;
}

export interface PgbenchResult {
  /** tps reported each second by pgbench -P 1: [secondsSinceStart, tps]. */
  progress: [number, number][];
  /** Transactions pgbench logged as completed (committed), from its -l logs. */
  committed: number;
  exitCode: number | null;
  output: string;
}

/** Runs pgbench as postgres with per-transaction logs; `onProgress` sees each -P 1 line. */
export function runPgbench(db: Postgres, args: string[], onProgress?: (second: number, tps: number) => void): { child: ChildProcess; done: Promise<PgbenchResult> } {
  const logDir = tempDir('pgbench');
  chmodSync(logDir, 0o777);
  const child = spawn('runuser', ['-u', 'postgres', '--', join(PG_BIN, 'pgbench'), '-h', '127.0.0.1', '-p', String(db.port), '-U', 'postgres', '-P', '1', '-l', '--log-prefix', join(logDir, 'tx'), ...args, 'postgres'], {
    cwd: logDir,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const progress: [number, number][] = [];
  const onData = (c: Buffer) => {
    const text = c.toString();
    output += text;
    for (const m of text.matchAll(/progress: ([\d.]+) s, ([\d.]+) tps/g)) {
      const point: [number, number] = [Number(m[1]), Number(m[2])];
      progress.push(point);
      onProgress?.(point[0], point[1]);
    }
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const done = new Promise<PgbenchResult>((resolve) => {
    child.once('exit', (exitCode) => {
      let committed = 0;
      for (const f of readdirSync(logDir)) {
        if (!f.startsWith('tx')) continue;
        for (const line of readFileSync(join(logDir, f), 'utf8').split('\n')) {
          const fields = line.trim().split(/\s+/);
          // client_id transaction_no time script_no time_epoch time_us; failed ones have "failed"/"serialization"/"deadlock" in time
          if (fields.length >= 6 && /^\d+$/.test(fields[2]!)) committed++;
        }
      }
      resolve({ progress, committed, exitCode, output });
    });
  });
  return { child, done };
}

export function pgAmcheck(db: Postgres): { clean: boolean; output: string } {
  const r = asPostgres(join(PG_BIN, 'pg_amcheck'), ['-h', db.socketDir, '-p', String(db.port), '-U', 'postgres', '--install-missing', '--heapallindexed', '--all'], { allowFail: true });
  return { clean: r.status === 0, output: r.out };
}

export function pgbenchInit(db: Postgres, scale: number): void {
  asPostgres(join(PG_BIN, 'pgbench'), ['-h', db.socketDir, '-p', String(db.port), '-U', 'postgres', '-i', '-q', '-s', String(scale), 'postgres']);
}
