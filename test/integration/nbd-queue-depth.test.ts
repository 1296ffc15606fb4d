// More requests in flight than the server admits per connection: it must stop
// reading at its limit and resume — including when it stopped in the middle of
// a WRITE payload (a deadlock found by the kernel client, reproduced by fio).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { startNode } from './helpers/launcher.ts';
import { limits } from '../../src/limits.ts';

for (const backend of ['memory', 'replicated'] as const) {
  t.test(`fio at queue depth ${2 * limits.nbdInFlightRequestsMax} with 128 KiB writes (${backend})`, { timeout: 300_000 }, async (t) => {
    const node = await startNode({ backend, devices: ['default:128MiB'] });
    t.teardown(() => node.kill());
    const run = spawnSync(
      'timeout',
      ['120', 'fio', '--name=qd', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${node.nbdPort}/default`, '--rw=randrw', '--bs=128k',
        `--iodepth=${2 * limits.nbdInFlightRequestsMax}`, '--size=96m', '--io_size=192m', '--fsync=64', '--verify=crc32c', '--output-format=json'],
      { encoding: 'utf8', cwd: node.dataDir },
    );
    t.equal(run.status, 0, `fio finished (a stall ends in timeout's 124)\n${run.stderr}`);
    const job = JSON.parse(run.stdout.slice(run.stdout.indexOf('{'))).jobs[0];
    t.equal(job.error, 0, 'no I/O or verify error');
    t.ok(job.write.io_bytes >= 96 * 1024 * 1024 * 0.9, 'the writes all went through');
  });
}
