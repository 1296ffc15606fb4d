// Operator slips with device commands, against real processes: what the
// configuration refuses the API refuses too (400, never 500); each
// xdevice-cli mistake changes nothing and exits 2; a 16 TiB device the
// filesystem cannot hold is a 400, not a cluster-wide crash loop; delete and
// shrink under a connected nbdsh client need --force (which disconnects it).
import t from 'tap';
import { spawn } from 'node:child_process';
import { adminApi as api, startNode, Cluster } from './helpers/launcher.ts';
import { CLI_BIN, waitFor, runCli as cli, type CliRun } from './helpers/tools.ts';
import { freePorts } from './helpers/ports.ts';

async function deviceList(port: number): Promise<{ name: string; size: number }[]> {
  const res = await api(port, 'GET', '/devices');
  return (res.body.devices as { name: string; size: number }[]).map((d) => ({ name: d.name, size: d.size })).sort((a, b) => a.name.localeCompare(b.name));
}

t.test('the admin API applies the configuration’s checks: 400 with a message, never 500', { timeout: 120_000 }, async (t) => {
  const node = await startNode({ id: 'node1', devices: ['default:64MiB', 'a:1MiB'] });
  t.teardown(() => node.kill());
  const before = await deviceList(node.adminPort);
  const refused: [string, string, unknown, number][] = [
    ['POST', '/devices', { name: '../../etc/x', size: '1MiB' }, 400],
    ['POST', '/devices', { name: 'a/b', size: '1MiB' }, 400],
    ['POST', '/devices', { name: 'sp ace', size: '1MiB' }, 400],
    ['POST', '/devices', { name: 'x'.repeat(300), size: '1MiB' }, 400],
    ['POST', '/devices', { name: 'ok', size: '1000' }, 400],
    ['POST', '/devices', { name: 'ok', size: 1000 }, 400],
    ['POST', '/devices', { name: 'ok', size: '1.5' }, 400],
    ['POST', '/devices', { name: 'ok', size: 1.5 }, 400],
    ['POST', '/devices', { name: 'ok', size: -512 }, 400],
    ['PATCH', '/devices/a', { size: '1000' }, 400],
    ['PATCH', '/devices/a', { size: '512KiB' }, 400], // a shrink without allowShrink
    ['DELETE', '/devices/%E0%A4%A', undefined, 400],
    ['DELETE', `/devices/${'y'.repeat(300)}`, undefined, 400],
    ['DELETE', '/devices/a/b', undefined, 404],
    ['DELETE', '/members/nobody', undefined, 404],
    ['DELETE', '/members/node1', undefined, 400], // the last voter
    ['DELETE', '/members/bad%20id', undefined, 400],
    ['POST', '/members', { id: 'n2', address: 'not-an-address' }, 400],
    ['POST', '/members', '{not json', 400],
  ];
  for (const [method, path, body, want] of refused) {
    const res = await api(node.adminPort, method, path, body);
    t.equal(res.status, want, `${method} ${path.slice(0, 40)} ${JSON.stringify(body)?.slice(0, 40) ?? ''} → ${want}`);
    t.ok(typeof res.body?.error?.message === 'string' && res.body.error.message.length > 0, 'with a message');
  }
  t.same(await deviceList(node.adminPort), before, 'nothing changed');
  t.notMatch(node.output(), /admin API request failed/, 'no user error logged as a server error');
  t.equal((await api(node.adminPort, 'GET', '/status')).status, 200, 'the node is up');
});

t.test('each xdevice-cli mistake changes nothing and exits 2 naming the argument', { timeout: 120_000 }, async (t) => {
  const node = await startNode({ id: 'node1', devices: ['default:64MiB', 'keep:8MiB'] });
  t.teardown(() => node.kill());
  const E = `127.0.0.1:${node.adminPort}`;
  const before = await deviceList(node.adminPort);
  const mistakes: [string[], RegExp][] = [
    [['--endpoints', E, 'device', 'create', 'wal4', '64', 'MiB'], /MiB/],
    [['--endpoints', E, 'device', 'create', 'wal4', '1000'], /SIZE.*512/],
    [['--endpoints', E, 'device', 'create', 'wal4', '1.5'], /SIZE/],
    [['--endpoints', E, 'device', 'create', '../x', '1MiB'], /NAME/],
    [['--endpoints', E, 'device', 'delete'], /arguments/],
    [['--endpoints', E, 'device', 'delete', 'keep', 'extra'], /extra/],
    [['--endpoints', E, '--endpoints', E, 'device', 'delete', 'keep'], /--endpoints given more than once/],
    [['--endpoints', E, '--timeout', 'abc', 'device', 'delete', 'keep'], /--timeout/],
    [['--endpoint', E, 'device', 'delete', 'keep'], /Unknown argument: endpoint/],
    [['--endpoints', E, 'device', 'resize', 'keep', '4MiB'], /--allow-shrink/],
    [['--endpoints', E, 'device', 'resize', 'keep', '7.5MiB'], /SIZE/],
    [['--endpoints', E, 'add-node', '--id=node2', '--address=nowhere'], /HOST:PORT/],
    [['--endpoints', E, 'members', 'promote'], /promote/],
    [['--endpoints', 'not-an-endpoint', 'device', 'delete', 'keep'], /--endpoints/],
  ];
  for (const [args, names] of mistakes) {
    const r = await cli(args);
    t.equal(r.code, 2, `${args.slice(2).join(' ')}: exit 2`);
    t.match(r.stderr, names, 'names the bad argument');
    t.notMatch(r.stderr, /ERR_|TypeError|is not a function|at .*\.js:\d+/, 'no Node error or stack leaks');
  }
  t.same(await deviceList(node.adminPort), before, 'nothing changed on the node');
  t.notMatch(node.output(), /admin API: device (created|deleted|resized)/, 'no change even reached the API');

  // Exit codes follow the table: nothing reachable is 3 for health as for status.
  const [dead] = await freePorts(1);
  t.equal((await cli(['--endpoints', `127.0.0.1:${dead}`, 'health'])).code, 3, 'health with no node running: exit 3');
  t.equal((await cli(['--endpoints', `127.0.0.1:${dead}`, 'status'])).code, 3, 'status with no node running: exit 3');

  // `xdevice-cli … | head`: the reader is gone before the output is written.
  const quiet = await new Promise<CliRun>((resolve) => {
    const child = spawn(process.execPath, [CLI_BIN, '--endpoints', E, '-w', 'json', 'device', 'list'], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.destroy();
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('exit', (code) => resolve({ code, stdout: '', stderr }));
  });
  t.equal(quiet.stderr, '', 'a closed pipe is not an error worth a trace');
  t.equal(quiet.code, 0, 'and exits 0');
});

t.test('16 TiB: refused with 400 where proposed; every node stays up', { timeout: 300_000 }, async (t) => {
  const cluster = await Cluster.start({ size: 3, devices: ['default:32MiB'] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();
  const follower = (leader + 1) % 3;
  const at = (i: number) => cluster.slots[i]!.ports.admin;

  const create = await api(at(leader), 'POST', '/devices', { name: 'huge', size: '16TiB' });
  t.equal(create.status, 400, 'create 16 TiB: 400');
  t.match(create.body?.error?.message, /cannot hold/, 'the filesystem’s limit is named');
  const viaFollower = await api(at(follower), 'POST', '/devices', { name: 'huge', size: '16TiB' });
  t.equal(viaFollower.status, 400, 'through a follower too');
  const resize = await api(at(leader), 'PATCH', '/devices/default', { size: '16TiB' });
  t.equal(resize.status, 400, 'resize to 16 TiB: 400');
  const viaCli = await cli(['--endpoints', cluster.slots.map((s) => `127.0.0.1:${s.ports.admin}`).join(','), 'device', 'resize', 'default', '16TiB']);
  t.equal(viaCli.code, 1, 'xdevice-cli: refused (exit 1)');
  t.match(viaCli.stderr, /cannot hold/);

  // Still a working cluster: a later command commits and applies everywhere.
  t.equal((await api(at(leader), 'POST', '/devices', { name: 'after', size: '1MiB' })).status, 201);
  await cluster.converged();
  for (let i = 0; i < 3; i++) {
    t.ok(cluster.isUp(i), `${cluster.slots[i]!.id} is up`);
    t.same((await deviceList(at(i))).map((d) => d.name), ['after', 'default'], `${cluster.slots[i]!.id} has the same table`);
  }
});

t.test('delete and shrink with a connected nbdsh client need --force, which disconnects it first', { timeout: 120_000 }, async (t) => {
  const node = await startNode({ id: 'node1', devices: ['default:64MiB', 'busy:8MiB'] });
  t.teardown(() => node.kill());
  const E = `127.0.0.1:${node.adminPort}`;
  const uri = `nbd://127.0.0.1:${node.nbdPort}/busy`;
  const client = spawn('nbdsh', ['-c', [
    'import sys',
    `h.connect_uri(${JSON.stringify(uri)})`,
    'h.pwrite(b"z" * 4096, 0)',
    'print("connected", flush=True)',
    'sys.stdin.readline()',
    'try:',
    '    h.pread(4096, 0)',
    '    print("still-connected", flush=True)',
    'except Exception as e:',
    '    print("disconnected", flush=True)',
  ].join('\n')], { env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` }, stdio: ['pipe', 'pipe', 'pipe'] });
  t.teardown(() => client.kill('SIGKILL'));
  let out = '';
  client.stdout.on('data', (c: Buffer) => (out += c.toString()));
  await waitFor('nbdsh to connect', async () => out.includes('connected'), 30_000);

  const shrink = await cli(['--endpoints', E, 'device', 'resize', 'busy', '4MiB', '--allow-shrink']);
  t.equal(shrink.code, 1, 'shrink with a client attached: refused');
  t.match(shrink.stderr, /connected NBD clients.*--force/);
  const del = await cli(['--endpoints', E, 'device', 'delete', 'busy']);
  t.equal(del.code, 1, 'delete with a client attached: refused');
  t.match(del.stderr, /--force/);
  t.ok((await deviceList(node.adminPort)).some((d) => d.name === 'busy' && d.size === 8 * 1024 * 1024), 'nothing changed');
  t.equal((await api(node.adminPort, 'DELETE', '/devices/busy')).status, 409, 'the API refuses on its own too (409)');

  const forced = await cli(['--endpoints', E, 'device', 'delete', 'busy', '--force']);
  t.equal(forced.code, 0, `delete --force: ${forced.stderr}`);
  t.notOk((await deviceList(node.adminPort)).some((d) => d.name === 'busy'), 'deleted');
  client.stdin.write('\n');
  await waitFor('nbdsh to report', async () => /still-connected|disconnected/.test(out.replace(/^connected\n/, '')), 30_000);
  t.match(out, /\ndisconnected/, 'the client was disconnected before the delete');
});
