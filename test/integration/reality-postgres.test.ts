// PostgreSQL keeps its WAL on the replicated device (initdb --waldir on ext4
// on the export; data directory on local disk) while pgbench runs with
// synchronous_commit on, and the Raft leader is killed with SIGKILL.
// Afterwards every transaction a client saw commit must be there, and
// pg_amcheck must be clean.
import t from 'tap';
import { join } from 'node:path';
import { Cluster } from './helpers/launcher.ts';
import { attachExport } from './helpers/blockdev.ts';
import { freePort } from './helpers/ports.ts';
import { initPostgres, pgAmcheck, pgbenchInit, runPgbench, type Postgres } from './helpers/postgres.ts';

const RUN_SECONDS = Number(process.env.XDEVICE_PGBENCH_SECONDS ?? 30);
const KILL_AT_SECONDS = Math.round(RUN_SECONDS / 3);

/** A client of our own: sequential inserts, each recorded once its COMMIT returned. */
async function ledger(db: Postgres, stop: () => boolean): Promise<{ acked: number[]; errors: number }> {
  const acked: number[] = [];
  let errors = 0;
  let next = 1;
  while (!stop()) {
    const c = db.client();
    try {
      await c.connect();
      while (!stop()) {
        const id = next++;
        await c.query('INSERT INTO ledger(id) VALUES ($1)', [id]);
        acked.push(id);
      }
    } catch {
      errors++;
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      await c.end().catch(() => {});
    }
  }
  return { acked, errors };
}

t.test('pgbench with its WAL on XDevice survives kill -9 of the Raft leader', { timeout: 900_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:1GiB'] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();
  const follower = (leader + 1) % 3;
  const dev = await attachExport(cluster.slots[follower]!.ports.nbd, 'default', { connections: 2 });
  t.teardown(() => dev.detach());
  dev.mkfsAndMount();
  const db = initPostgres({ walDir: join(dev.mountpoint, 'pg_wal'), port: await freePort() });
  t.teardown(() => db.stop('immediate'));
  db.start();
  pgbenchInit(db, 4);
  const setup = db.client();
  await setup.connect();
  await setup.query('CREATE TABLE ledger (id bigint PRIMARY KEY)');
  await setup.end();

  let stopLedger = false;
  const ledgerRun = ledger(db, () => stopLedger);
  const tps: [number, number][] = [];
  let killed = false;
  const bench = runPgbench(db, ['-c', '4', '-j', '2', '-T', String(RUN_SECONDS), '-n'], (second, rate) => {
    tps.push([second, rate]);
    if (!killed && second >= KILL_AT_SECONDS) {
      killed = true;
      void cluster.kill(leader).then(() => t.comment(`killed the Raft leader node${leader + 1} at ${second} s`));
    }
  });
  const result = await bench.done;
  stopLedger = true;
  t.ok(killed, 'the leader was killed during the run');

  // PostgreSQL either kept running, or stopped on an I/O error and recovers on its own WAL.
  const survived = db.isRunning();
  t.comment(`PostgreSQL ${survived ? 'kept running' : 'stopped; restarting it to recover from its WAL'}`);
  if (!survived) db.start();
  const { acked, errors } = await ledgerRun;

  const avg = (from: number, to: number) => {
    const xs = tps.filter(([s]) => s > from && s <= to).map(([, v]) => v);
    return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0;
  };
  const before = avg(0, KILL_AT_SECONDS);
  const during = avg(KILL_AT_SECONDS, KILL_AT_SECONDS + 3);
  const after = avg(KILL_AT_SECONDS + 3, RUN_SECONDS);
  t.comment(`pgbench tps: before ${before.toFixed(0)}, during failover ${during.toFixed(0)}, after ${after.toFixed(0)}; committed ${result.committed}; ledger acked ${acked.length} (client errors ${errors})`);

  const c = db.client();
  await c.connect();
  const history = Number((await c.query('SELECT count(*) AS n FROM pgbench_history')).rows[0].n);
  t.ok(result.committed > 0, 'pgbench committed transactions');
  t.ok(history >= result.committed, `every transaction pgbench saw commit is in pgbench_history (${history} >= ${result.committed})`);
  const present = new Set((await c.query('SELECT id FROM ledger')).rows.map((r: { id: string }) => Number(r.id)));
  const missing = acked.filter((id) => !present.has(id));
  t.same(missing, [], `every acknowledged ledger insert is present (${acked.length} acked)`);
  await c.end();
  t.ok(after > 0, 'transactions flow again after the failover');

  const amcheck = pgAmcheck(db);
  t.ok(amcheck.clean, `pg_amcheck is clean\n${amcheck.output}`);
});
