// The one parser of each kind of value (src/parse.ts): sizes, HOST:PORT
// addresses (IPv6 in brackets), node ids, peer lists and device specs. Each
// accepts what operators write and refuses the rest with a reason; the node
// refuses to start on any of them with exit 2 and that reason on stderr.
import t from 'tap';
import { spawn } from 'node:child_process';
import { join, resolve } from 'node:path';
import { formatHostPort, formatSize, parseDevice, parseDeviceName, parseDeviceSize, parseHostPort, parseNodeId, parsePeers, parseSize } from '../../src/parse.ts';
import { limits } from '../../src/limits.ts';

const ROOT = resolve(import.meta.dirname, '../..');

t.test('sizes: bytes, binary and decimal units, fractions; nothing else', async (t) => {
  t.equal(parseSize('4096'), 4096);
  t.equal(parseSize(' 4096 b '), 4096);
  t.equal(parseSize('1GiB'), 1024 ** 3);
  t.equal(parseSize('1G'), 1024 ** 3);
  t.equal(parseSize('1gib'), 1024 ** 3);
  t.equal(parseSize('1GB'), 1000 ** 3);
  t.equal(parseSize('1.5MiB'), 1.5 * 1024 * 1024);
  t.equal(parseSize('2TiB'), 2 * 1024 ** 4);
  for (const bad of ['-1', '', 'MiB', '1 parsec', '1e3', '0x10', '1.2.3K']) t.throws(() => parseSize(bad), { message: /not a size/ }, JSON.stringify(bad));
  t.throws(() => parseSize('99999999999TiB'), { message: /size too large/ });
  for (const n of [1, 512, 1000, 1024, 3 * 1024 ** 2, 1024 ** 3 + 512, 5 * 1024 ** 4]) t.equal(parseSize(formatSize(n)), n, `formatSize(${n}) reads back`);
  t.equal(formatSize(64 * 1024 ** 2), '64MiB');
});

t.test('addresses: HOST:PORT, [IPv6]:PORT, an empty host is loopback; ports 0..65535', async (t) => {
  t.same(parseHostPort('127.0.0.1:10809'), { host: '127.0.0.1', port: 10809 });
  t.same(parseHostPort('localhost:1'), { host: 'localhost', port: 1 });
  t.same(parseHostPort('[::1]:10819'), { host: '::1', port: 10819 });
  t.same(parseHostPort('[fe80::1%eth0]:5'), { host: 'fe80::1%eth0', port: 5 });
  t.same(parseHostPort(':0'), { host: '127.0.0.1', port: 0 });
  t.same(parseHostPort(' node-a.example:65535 '), { host: 'node-a.example', port: 65535 });
  t.throws(() => parseHostPort('127.0.0.1:65536'), { message: /port out of range/ });
  for (const bad of ['nope', '127.0.0.1', '::1:5', '[::1]', 'h:port', 'h:123456', 'h:-1', '']) t.throws(() => parseHostPort(bad), { message: /not HOST:PORT/ }, JSON.stringify(bad));
  for (const text of ['127.0.0.1:1', '[::1]:2', 'db-3:3']) t.equal(formatHostPort(parseHostPort(text)), text, `${text} reads back`);
});

t.test('node ids: the device name rule', async (t) => {
  for (const ok of ['n1', 'node.2', 'A_b-c', '9']) t.equal(parseNodeId(ok), ok);
  for (const bad of ['', '-n1', '.n', 'a b', 'a=b', 'a,b', 'é']) t.throws(() => parseNodeId(bad), { message: /bad node id/ }, JSON.stringify(bad));
});

t.test('peers: ID=HOST:PORT,... normalised; each id once', async (t) => {
  t.same(parsePeers('n1=[::1]:5,n2=localhost:6'), { n1: '[::1]:5', n2: 'localhost:6' });
  t.same(parsePeers(' n1=127.0.0.1:1 , ,n2=:2'), { n1: '127.0.0.1:1', n2: '127.0.0.1:2' });
  t.same(parsePeers(''), {});
  t.throws(() => parsePeers('n1=127.0.0.1:99999'), { message: /port out of range/ });
  t.throws(() => parsePeers('n1'), { message: /not ID=HOST:PORT: "n1"/ });
  t.throws(() => parsePeers('=127.0.0.1:1'), { message: /not ID=HOST:PORT/ });
  t.throws(() => parsePeers('-x=127.0.0.1:1'), { message: /bad node id "-x"/ });
  t.throws(() => parsePeers('n1=127.0.0.1:1,n1=127.0.0.1:2'), { message: /"n1" given twice/ });
  t.throws(() => parsePeers('n1=nowhere'), { message: /not HOST:PORT/ });
});

t.test('devices: NAME:SIZE, the device rules on both halves', async (t) => {
  t.same(parseDevice('default:1GiB'), { name: 'default', size: 1024 ** 3 });
  t.same(parseDevice('wal.0:4096'), { name: 'wal.0', size: 4096 });
  t.throws(() => parseDevice('nosize'), { message: /not NAME:SIZE/ });
  t.throws(() => parseDevice(':1MiB'), { message: /not NAME:SIZE/ });
  t.throws(() => parseDevice('a:12x'), { message: /not a size/ });
  t.throws(() => parseDevice('a:1000'), { message: /multiple of 512/ });
  t.throws(() => parseDevice('a:0'), { message: /positive/ });
  t.throws(() => parseDevice('bad/name:1MiB'), { message: /bad device name/ });
  t.throws(() => parseDeviceName('x'.repeat(limits.deviceNameBytesMax + 1)), { message: /longer than/ });
  t.equal(parseDeviceSize(8192), 8192, 'a number of bytes as the admin API sends it');
  t.throws(() => parseDeviceSize(1.5), { message: /whole number/ });
  t.throws(() => parseDeviceSize(limits.deviceBytesMax + 512), { message: /over the limit/ });
});

function runNode(args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((done) => {
    const child = spawn(process.execPath, ['--import=tsx', join(ROOT, 'src/node/main.ts'), ...args], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('exit', (code) => done({ code, stderr }));
  });
}

t.test('xdevice-node refuses a bad value of each kind: exit 2, naming the flag and the reason', async (t) => {
  const cases = [
    [['--space-reserve=12q'], /--space-reserve: not a size: "12q"/],
    [['--nbd-listen=[::1]:99999'], /--nbd-listen: port out of range/],
    [['--admin-listen=nowhere'], /--admin-listen: not HOST:PORT/],
    [['--node-id=-n1'], /node-id: bad node id "-n1"/],
    [['--peers=n1=127.0.0.1:1,n1=127.0.0.1:2', '--insecure-peers'], /--peers: node id "n1" given twice/],
    [['--device=a:1000'], /--device: .*multiple of 512/],
    [['--nbd-lsten=127.0.0.1:1'], /nbd-lsten/],
  ] as const;
  const runs = await Promise.all(cases.map(([args]) => runNode([...args])));
  runs.forEach((r, i) => {
    const [args, reason] = cases[i]!;
    t.equal(r.code, 2, `${args.join(' ')}: exit 2 (${r.stderr.trim()})`);
    t.match(r.stderr, reason, `${args.join(' ')}: says why`);
  });
});
