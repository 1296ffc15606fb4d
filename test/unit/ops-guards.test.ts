// The guards of issue 11 that need no process: the data-directory lock (flock
// is per open file description, so a second lock in this process conflicts as
// a second process would), the start-state checks, the promotion rule, and
// the device rules shared by config, API and apply.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkDeviceFiles, checkStartState, lockDataDir } from '../../src/cluster/data-dir.ts';
import { promotionBlocker } from '../../src/replica/promotion.ts';
import { deviceNameProblem, deviceSizeProblem } from '../../src/parse.ts';
import { parseDevice } from '../../src/parse.ts';
import { limits } from '../../src/limits.ts';
import { makeRandom } from './helpers/nbd-random.ts';

const emptyConf = { voters: [], learners: [], votersOutgoing: [], learnersNext: [], autoLeave: false };

t.test('the data-directory lock: one holder, named; released on release()', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-lock-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const first = lockDataDir(dir, 4242);
  t.equal(readFileSync(join(dir, 'lock'), 'utf8'), '4242\n', 'the holder writes its pid');
  t.throws(() => lockDataDir(dir, 1), { code: 'XDEVICE_ERR_DATA_DIR_LOCKED', message: /pid 4242/ }, 'a second lock is refused, naming the holder');
  t.throws(() => lockDataDir(dir, 1), { message: new RegExp(dir) }, 'and the directory');
  first.release();
  const second = lockDataDir(dir, 7);
  t.equal(readFileSync(join(dir, 'lock'), 'utf8'), '7\n');
  second.release();
});

t.test('start-state checks refuse what is missing, accept a fresh or consistent directory', async (t) => {
  const wal = (lastIndex: number, snapshotIndex: number, term: number, voters: string[] = []) => ({ lastIndex, snapshotIndex, term, confState: { ...emptyConf, voters } });
  const joined = { clusterId: 'c1', nodeId: 'n1' };
  t.doesNotThrow(() => checkStartState({ dataDir: '/d', identity: undefined, checkpointIndex: undefined, wal: wal(0, 0, 0) }), 'fresh');
  t.doesNotThrow(() => checkStartState({ dataDir: '/d', identity: { clusterId: '', nodeId: 'n1' }, checkpointIndex: undefined, wal: wal(0, 0, 0) }), 'a joiner waiting for its snapshot');
  t.doesNotThrow(() => checkStartState({ dataDir: '/d', identity: joined, checkpointIndex: 5, wal: wal(9, 3, 2, ['n1']) }), 'consistent');
  t.throws(() => checkStartState({ dataDir: '/d', identity: joined, checkpointIndex: 5, wal: wal(0, 0, 0) }), { code: 'XDEVICE_ERR_STATE_MISSING', message: /WAL does not cover the checkpoint/ });
  t.throws(() => checkStartState({ dataDir: '/d', identity: joined, checkpointIndex: undefined, wal: wal(9, 3, 2, ['n1']) }), { code: 'XDEVICE_ERR_STATE_MISSING', message: /checkpoint is missing/ });
  t.throws(() => checkStartState({ dataDir: '/d', identity: joined, checkpointIndex: 5, wal: wal(9, 3, 2) }), { code: 'XDEVICE_ERR_STATE_MISSING', message: /no members/ });
});

t.test('promotion needs replication, an installed snapshot and a bounded lag, at any commit index', async (t) => {
  const leader = (commit: number, snapshotIndex: number) => ({ commit, snapshotIndex });
  t.match(promotionBlocker(undefined, leader(10, 3)), /no progress/);
  t.match(promotionBlocker({ match: 0, state: 'probe' }, leader(10, 3)), /not replicating/, 'nothing listening: never promoted');
  t.match(promotionBlocker({ match: 0, state: 'replicate' }, leader(10, 0)), /snapshot is not installed/, 'match 0 with a small commit index');
  t.match(promotionBlocker({ match: 2, state: 'replicate' }, leader(10, 3)), /snapshot is not installed/);
  t.match(promotionBlocker({ match: 3, state: 'snapshot' }, leader(10, 3)), /not replicating/);
  t.match(promotionBlocker({ match: 100, state: 'replicate' }, leader(100 + limits.learnerPromotionLagEntriesMax + 1, 3)), /entries behind/);
  t.equal(promotionBlocker({ match: 10, state: 'replicate' }, leader(10, 3)), undefined);
  t.equal(promotionBlocker({ match: 40, state: 'replicate' }, leader(40 + limits.learnerPromotionLagEntriesMax, 30)), undefined, 'within the bound');
});

t.test('device rules: what the config refuses, apply refuses (seeded)', async (t) => {
  const seed = Number(process.env.XDEVICE_SEED ?? Date.now() % 1_000_000_007);
  console.log(`# XDEVICE_SEED=${seed}`);
  const random = makeRandom(seed);
  const rnd = (n: number): number => random.int(0, n - 1);
  const alphabet = 'aZ09._-/ \\:%\0\u00e9\u{1f600}';
  for (let i = 0; i < 2000; i++) {
    const name = Array.from({ length: rnd(12) }, () => [...alphabet][rnd([...alphabet].length)]).join('');
    const size = [rnd(2 ** 20) * 512, rnd(2 ** 20), -rnd(1000), 1.5, limits.deviceBytesMax + 512, 0][rnd(6)]!;
    let configOk = true;
    try {
      parseDevice(`${name}:${size}`);
    } catch {
      configOk = false;
    }
    // NAME:SIZE text is trimmed around the name (formatting, as in a config file).
    const ruleOk = deviceNameProblem(name.trim()) === undefined && deviceSizeProblem(size) === undefined;
    if (configOk !== ruleOk) {
      t.fail(`"${name}":${size}: config ${configOk}, rules ${ruleOk} (XDEVICE_SEED=${seed})`);
      return;
    }
  }
  t.equal(deviceNameProblem('../../etc/x') !== undefined && deviceNameProblem('a/b') !== undefined && deviceNameProblem('sp ace') !== undefined, true);
  t.ok(deviceSizeProblem(1000), '1000 bytes: not block-aligned');
  t.ok(deviceSizeProblem(1.5), 'fractions refused');
  t.equal(deviceSizeProblem(limits.deviceBytesMax), undefined, '16 TiB passes the rules (the filesystem probe decides)');
});

t.test('apply records a size the filesystem refuses as a failed command, the same on every replica', async (t) => {
  const { BlockStore } = await import('../../src/device/block-store.ts');
  const { encodeCreateDevice, encodeResizeDevice } = await import('../../src/device/commands.ts');
  const { pino } = await import('pino');
  const TiB = 1024 ** 4;
  const outcomes: string[] = [];
  for (const replica of ['a', 'b']) {
    const dir = mkdtempSync(join(tmpdir(), `xdevice-efbig-${replica}-`));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const store = await BlockStore.open(dir, pino({ level: 'silent' }));
    const id = (seq: number) => ({ clientId: 9, seq, firstUnacked: seq });
    // 16 TiB passes the rules; ext4 (this test's /tmp) refuses it with EFBIG.
    const entries = [
      { term: 1, index: 1, type: 0, data: encodeCreateDevice(id(1), 'huge', 16 * TiB) },
      { term: 1, index: 2, type: 0, data: encodeCreateDevice(id(2), 'small', 1024 * 1024) },
      { term: 1, index: 3, type: 0, data: encodeResizeDevice(id(3), 'small', 16 * TiB) },
    ];
    const result = await store.applyBatch(entries, () => undefined);
    outcomes.push(JSON.stringify(result.map((o) => o.error?.code ?? 'ok')));
    t.same(store.devices().map((d) => [d.name, d.size]), [['small', 1024 * 1024]], `${replica}: the table holds what succeeded`);
    t.equal(store.appliedIndex, 3, `${replica}: applied through the failures`);
    await store.closeFiles();
  }
  t.equal(outcomes[0], JSON.stringify(['XDEVICE_ERR_INVALID', 'ok', 'XDEVICE_ERR_INVALID']), 'both refusals recorded');
  t.equal(outcomes[0], outcomes[1], 'identically on both replicas');
});

t.test('a device file the checkpoint lists may be missing only if a later entry deletes the device', async (t) => {
  const { encodeDeleteDevice } = await import('../../src/device/commands.ts');
  const { mkdirSync, writeFileSync } = await import('node:fs');
  const dir = mkdtempSync(join(tmpdir(), 'xdevice-files-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'devices'));
  writeFileSync(join(dir, 'devices', 'dev-3.img'), '');
  const devices = [{ id: 3, name: 'here', size: 512 }, { id: 4, name: 'gone', size: 512 }];
  t.throws(() => checkDeviceFiles(dir, devices, []), { code: 'XDEVICE_ERR_STATE_MISSING', message: /dev-4\.img of device gone is missing/ });
  const del = (name: string) => ({ term: 1, index: 9, type: 0, data: encodeDeleteDevice({ clientId: 1, seq: 1, firstUnacked: 1 }, name) });
  t.throws(() => checkDeviceFiles(dir, devices, [del('here')]), { code: 'XDEVICE_ERR_STATE_MISSING' }, 'a delete of another device does not count');
  t.doesNotThrow(() => checkDeviceFiles(dir, devices, [del('gone')]), 'deleted after the checkpoint: replay deletes it again');
});
