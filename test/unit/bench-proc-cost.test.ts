// The benchmark's /proc readers (scripts/lib/proc-cost.ts): the fields are
// counted from the last ')' of a comm that may hold anything, malformed text
// is refused with a typed error, and live processes read back sensibly.
import t from 'tap';
import { beginCost, parseIo, parseStat, ProcParseError, withDescendants } from '../../scripts/lib/proc-cost.ts';

const PARSE_ERROR = { code: 'XDEVICE_ERR_PROC_PARSE' };
const stat = (comm: string, utime = 123, stime = 45) => `4242 (${comm}) S 17 4242 4242 0 -1 4194560 1000 0 0 0 ${utime} ${stime} 0 0 20 0 11 0 9999 1000000 5000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n`;

t.test('stat: pid, ppid and utime+stime, whatever the comm holds', async (t) => {
  t.same(parseStat(stat('node')), { pid: 4242, ppid: 17, cpuTicks: 168 });
  t.same(parseStat(stat('a) (b) S 9 9')), { pid: 4242, ppid: 17, cpuTicks: 168 }, 'parentheses and fields inside comm');
  t.same(parseStat(stat('two words')).cpuTicks, 168);
  t.throws(() => parseStat('4242 node S 1'), PARSE_ERROR);
  t.throws(() => parseStat('4242 (node) S 17 1 2'), PARSE_ERROR, 'too few fields');
  t.throws(() => parseStat(stat('node', -1)), PARSE_ERROR, 'a negative count');
  t.throws(() => parseStat(stat('node', 99999999999999999999)), PARSE_ERROR, 'beyond 2^53');
});

t.test('io: write_bytes less cancelled_write_bytes', async (t) => {
  const io = 'rchar: 1\nwchar: 2\nsyscr: 3\nsyscw: 4\nread_bytes: 5\nwrite_bytes: 8192\ncancelled_write_bytes: 4096\n';
  t.equal(parseIo(io), 4096);
  t.throws(() => parseIo('write_bytes: 1\n'), PARSE_ERROR, 'cancelled_write_bytes missing');
  t.throws(() => parseIo('write_bytes: x\ncancelled_write_bytes: 0\n'), PARSE_ERROR);
  t.throws(() => parseIo('garbage\n'), PARSE_ERROR);
});

t.test('stat and io parsers refuse random mutations with their own error only (seeded fuzz)', async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000);
  t.comment(`XDEVICE_SEED=${seed}`);
  let s = seed >>> 0;
  const rand = (n: number) => ((s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x9e3779b9) >>> 0) % n);
  const io = 'rchar: 1\nwchar: 2\nwrite_bytes: 8192\ncancelled_write_bytes: 4096\n';
  let other = 0;
  for (let i = 0; i < 5000; i++) {
    const base = i % 2 === 0 ? stat('node') : io;
    const b = Buffer.from(base);
    for (let k = rand(4) + 1; k > 0; k--) b[rand(b.length)] = rand(256);
    const text = b.subarray(0, rand(b.length + 1)).toString('latin1');
    try {
      const v = i % 2 === 0 ? parseStat(text).cpuTicks : parseIo(text);
      if (!Number.isSafeInteger(v) || v < 0) other++;
    } catch (e) {
      if (!(e instanceof ProcParseError)) other++;
    }
  }
  t.equal(other, 0, `seed ${seed}: only ProcParseError, and counts are safe non-negative integers`);
});

t.test('a live process: its CPU grows while it spins, and it is its own descendant', async (t) => {
  t.ok(withDescendants([process.pid]).includes(process.pid));
  const window = beginCost([{ name: 'self', pids: [process.pid] }], 0);
  const until = performance.now() + 300;
  let x = 0;
  while (performance.now() < until) x += Math.sqrt(x + 1);
  t.ok(x > 0);
  const cost = window.finish();
  t.ok(cost.seconds > 0.25, `window ${cost.seconds} s`);
  t.ok(cost.groups[0]!.cpuSeconds >= 0.1, `${cost.groups[0]!.cpuSeconds} CPU seconds over 300 ms of spinning`);
});
