// The test-only fault file: parsing, and a watcher that turns file changes into
// real native faults (checked by making real syscalls fail, not by spying).

import t, { type Test } from 'tap';
import { mkdtempSync, rmSync, writeFileSync, renameSync, unlinkSync } from 'node:fs';
import { tmpdir, constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import * as native from '../../src/native.ts';
import { parseFaultFile, watchFaultFile } from '../../src/wal/fault-file.ts';
import { limits } from '../../src/limits.ts';

const { errno } = osConstants;

function tempDir(t: Test): string {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-fault-file-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface LogLine {
  level: number;
  msg: string;
  faults?: Record<string, number>;
}

function capturingLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  return { logger: pino({ level: 'debug' }, sink), lines };
}

// Atomic replacement, as the module asks of writers.
function writeFaults(path: string, text: string): void {
  writeFileSync(`${path}.tmp`, text);
  renameSync(`${path}.tmp`, path);
}

async function waitFor(what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function fdatasyncFails(fd: number): Promise<boolean> {
  try {
    await native.fdatasync(fd);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EIO';
  }
}

t.test('parseFaultFile accepts errno names and numbers, counts and delays', async (t) => {
  t.same(parseFaultFile('f', '{"fdatasyncErrno":"EIO"}'), { fdatasyncErrno: errno.EIO });
  t.same(parseFaultFile('f', '{"pwriteErrno":28,"afterCalls":3}'), { pwriteErrno: 28, afterCalls: 3 });
  t.same(parseFaultFile('f', '{"delayUs":5000}'), { delayUs: 5000 });
  t.same(parseFaultFile('f', '{"pwriteErrno":"ENOSPC","fdatasyncErrno":"EIO","delayUs":1}'), {
    pwriteErrno: errno.ENOSPC,
    fdatasyncErrno: errno.EIO,
    delayUs: 1,
  });
  t.equal(parseFaultFile('f', '{}'), null, 'an empty object means no faults');
  t.equal(parseFaultFile('f', '  \n'), null, 'an empty file means no faults');
  t.equal(parseFaultFile('f', '{"afterCalls":4,"delayUs":0}'), null, 'a countdown with nothing to count is no fault');
});

t.test('parseFaultFile refuses malformed specifications with a stable code', async (t) => {
  const bad = [
    '{"fdatasyncErrno":"EWHATEVER"}',
    '{"fdatasyncErrno":-5}',
    '{"fdatasyncErrno":true}',
    '{"pwriteErrno":1.5}',
    '{"afterCalls":-1}',
    '{"delayUs":"slow"}',
    '{"delayUs":1e300}',
    '{"fd":3}',
    '[1,2]',
    '"EIO"',
    'null',
    '{"fdatasyncErrno":"EIO"',
  ];
  for (const text of bad) {
    t.throws(() => parseFaultFile('/x/faults.json', text), { code: 'XDEVICE_ERR_FAULT_FILE', message: /\/x\/faults\.json/ }, text);
  }
});

t.test('the watcher arms, changes and clears real faults as the file changes', async (t) => {
  const dir = tempDir(t);
  t.teardown(() => native.setFaultInjection(null));
  const path = join(dir, 'faults.json');
  const file = await native.openFile(join(dir, 'data'), { create: true });
  t.teardown(() => native.closeFile(file.fd));
  const { logger, lines } = capturingLogger();

  // The file does not exist yet: no faults, nothing logged.
  const watch = watchFaultFile(path, logger);
  t.teardown(() => watch.stop());
  t.equal(await fdatasyncFails(file.fd), false, 'no faults before the file exists');
  t.equal(lines.length, 0, 'a missing file is not worth a log line');

  writeFaults(path, JSON.stringify({ fdatasyncErrno: 'EIO' }));
  await waitFor('the EIO fault', () => fdatasyncFails(file.fd));
  t.match(lines.at(-1), { msg: 'fault injection armed', faults: { fdatasyncErrno: errno.EIO } });

  writeFaults(path, JSON.stringify({ pwriteErrno: 'ENOSPC' }));
  await waitFor('the switch to a pwrite fault', async () => !(await fdatasyncFails(file.fd)));
  await t.rejects(native.pwrite(file.fd, Buffer.from('x'), 0), { code: 'ENOSPC' }, 'the new fault replaced the old');

  // A malformed version is logged and leaves the faults in force.
  const before = lines.length;
  writeFaults(path, '{"pwriteErrno": "ENOSPC", "bogus": 1}');
  await waitFor('the malformed file to be noticed', () => lines.length > before);
  t.match(lines.at(-1), { level: 50, msg: /malformed fault file/ });
  await t.rejects(native.pwrite(file.fd, Buffer.from('x'), 0), { code: 'ENOSPC' }, 'the previous faults stay');

  writeFaults(path, '{}');
  await waitFor('the faults to clear', async () => {
    try {
      await native.pwrite(file.fd, Buffer.from('x'), 0);
      return true;
    } catch {
      return false;
    }
  });
  t.match(lines.at(-1), { msg: 'fault injection cleared' });

  writeFaults(path, JSON.stringify({ fdatasyncErrno: 5, afterCalls: 0 }));
  await waitFor('the fault again', () => fdatasyncFails(file.fd));
  unlinkSync(path);
  await waitFor('removing the file to clear the faults', async () => !(await fdatasyncFails(file.fd)));
});

t.test('faults already in the file apply before the first poll; stop() stops following it', async (t) => {
  const dir = tempDir(t);
  t.teardown(() => native.setFaultInjection(null));
  const path = join(dir, 'faults.json');
  const file = await native.openFile(join(dir, 'data'), { create: true });
  t.teardown(() => native.closeFile(file.fd));
  const { logger, lines } = capturingLogger();

  writeFaults(path, JSON.stringify({ fdatasyncErrno: 'EIO', afterCalls: 1 }));
  const watch = watchFaultFile(path, logger);
  // No await between starting the watch and the calls: the first look is synchronous.
  const first = native.fdatasync(file.fd);
  const second = native.fdatasync(file.fd);
  await first;
  await t.rejects(second, { code: 'EIO' }, 'afterCalls counts from the moment the file was read');
  t.equal(lines.length, 1);

  watch.stop();
  const logged = lines.length;
  writeFaults(path, '{}');
  // Several poll periods pass; the stopped watcher must not have cleared anything.
  await new Promise((r) => setTimeout(r, limits.faultFilePollMs * 5));
  t.equal(await fdatasyncFails(file.fd), true, 'a stopped watcher leaves the faults in force');
  t.equal(lines.length, logged, 'and logs nothing more');
});

t.test('an oversized fault file is refused', async (t) => {
  const dir = tempDir(t);
  t.teardown(() => native.setFaultInjection(null));
  const path = join(dir, 'faults.json');
  const file = await native.openFile(join(dir, 'data'), { create: true });
  t.teardown(() => native.closeFile(file.fd));
  const { logger, lines } = capturingLogger();
  writeFaults(path, JSON.stringify({ fdatasyncErrno: 'EIO', pad: 'x'.repeat(limits.faultFileBytesMax) }));
  const watch = watchFaultFile(path, logger);
  t.teardown(() => watch.stop());
  t.match(lines.at(-1), { level: 50, err: { message: /longer than/ } });
  t.equal(await fdatasyncFails(file.fd), false, 'nothing from the oversized file was applied');
});
