// Operator slips on a node's data directory, against the real xdevice-node:
// a second node on a live directory, a WAL removed under a checkpoint, and a
// stray file in devices/ (quarantined, never deleted).
import t from 'tap';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { adminApi as api, startNode } from './helpers/launcher.ts';
import { waitFor } from './helpers/tools.ts';

t.test('a second node on a live data directory exits 2 naming the directory and the holder', { timeout: 120_000 }, async (t) => {
  const first = await startNode({ id: 'node1' });
  t.teardown(() => first.kill());
  const before = readdirSync(join(first.dataDir, 'devices')).sort();
  const second = await startNode({ id: 'node1', dataDir: first.dataDir, waitReady: false });
  t.teardown(() => second.kill());
  const exit = await second.exited;
  t.equal(exit.code, 2, 'the second node refuses with exit 2');
  t.match(second.output(), first.dataDir, 'it names the directory');
  t.match(second.output(), `pid ${first.child.pid}`, "and the holder's pid");
  t.notMatch(second.output(), /WAL recovered/, 'it read nothing before the lock');
  t.same(readdirSync(join(first.dataDir, 'devices')).sort(), before, "the first node's device files are untouched");
  t.equal((await api(first.adminPort, 'GET', '/status')).status, 200, 'the first node still serves');
  const created = await api(first.adminPort, 'POST', '/devices', { name: 'after', size: '1MiB' });
  t.equal(created.status, 201, 'and still commits');
});

t.test('a node whose WAL was removed refuses to start and keeps the device files', { timeout: 120_000 }, async (t) => {
  const node = await startNode({ id: 'node1' });
  // Created after the bootstrap checkpoint: its file is known only to the WAL.
  t.equal((await api(node.adminPort, 'POST', '/devices', { name: 'late', size: '4MiB' })).status, 201);
  await node.kill('SIGKILL');
  const files = readdirSync(join(node.dataDir, 'devices')).sort();
  t.equal(files.length, 2, 'two device files');
  for (const f of readdirSync(join(node.dataDir, 'wal'))) rmSync(join(node.dataDir, 'wal', f));

  const again = await startNode({ id: 'node1', dataDir: node.dataDir, waitReady: false });
  t.teardown(() => again.kill());
  const exit = await Promise.race([again.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 30_000).unref())]);
  t.equal(exit?.code, 2, 'start refuses with exit 2');
  t.match(again.output(), /WAL does not cover the checkpoint/, 'naming what is missing');
  t.same(readdirSync(join(node.dataDir, 'devices')).sort(), files, 'no device file deleted');
  t.notOk(existsSync(join(node.dataDir, 'quarantine')), 'nothing even quarantined: it stopped before looking');
});

t.test('a file the device table does not know is quarantined, not deleted', { timeout: 120_000 }, async (t) => {
  const node = await startNode({ id: 'node1' });
  await node.kill('SIGTERM');
  const stray = join(node.dataDir, 'devices', 'dev-999999.img');
  writeFileSync(stray, 'precious bytes');
  const again = await startNode({ id: 'node1', dataDir: node.dataDir });
  t.teardown(() => again.kill());
  t.notOk(existsSync(stray), 'moved out of devices/');
  const q = join(node.dataDir, 'quarantine');
  const moved = readdirSync(q).map((d) => join(q, d, 'dev-999999.img')).filter((p) => existsSync(p));
  t.equal(moved.length, 1, 'into quarantine/<time>/');
  t.equal(readFileSync(moved[0]!, 'utf8'), 'precious bytes', 'with its contents');
  t.ok(statSync(moved[0]!).isFile());
  await waitFor('the quarantine log line', async () => /quarantined \(not deleted\)/.test(again.output()), 10_000);
  t.match(again.output(), /dev-999999\.img/, 'the log names the file');
});

t.test('a device file lost under the checkpoint refuses the start; one deleted after it does not', { timeout: 120_000 }, async (t) => {
  const node = await startNode({ id: 'node1', devices: ['default:8MiB', 'gone:4MiB'] });
  t.teardown(() => node.kill());
  await node.kill('SIGTERM'); // a checkpoint listing both devices
  const first = await startNode({ id: 'node1', dataDir: node.dataDir, devices: ['default:8MiB'] });
  t.teardown(() => first.kill());
  // Deleted after the checkpoint, then a crash: the delete replays.
  t.equal((await api(first.adminPort, 'DELETE', '/devices/gone')).status, 200);
  await first.kill('SIGKILL');
  const second = await startNode({ id: 'node1', dataDir: node.dataDir, devices: ['default:8MiB'] });
  t.teardown(() => second.kill());
  t.equal((await api(second.adminPort, 'GET', '/status')).status, 200, 'a file deleted by a later entry is no loss');
  await second.kill('SIGTERM'); // checkpoints: only default is in it
  const files = readdirSync(join(node.dataDir, 'devices'));
  t.equal(files.length, 1, 'one device file');
  rmSync(join(node.dataDir, 'devices', files[0]!));
  const again = await startNode({ id: 'node1', dataDir: node.dataDir, waitReady: false });
  t.teardown(() => again.kill());
  const exit = await Promise.race([again.exited, new Promise<undefined>((r) => setTimeout(() => r(undefined), 30_000).unref())]);
  t.equal(exit?.code, 2, 'a lost device file: start refused (exit 2)');
  t.match(again.output(), new RegExp(`device file .*${files[0]!.replace('.', '\\.')} of device default is missing`), 'naming the file and the device');
});
