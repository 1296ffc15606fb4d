// PUBLISH_MEMBER: members' client addresses in the replicated member table —
// the command's encoding, its apply on the block store, and the table in
// checkpoints and snapshot state (an older checkpoint without it still loads).
import t from 'tap';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { BlockStore } from '../../src/device/block-store.ts';
import { CHECKPOINT_FILE, CheckpointError, decodeStoreState, encodeStoreState, readCheckpoint } from '../../src/device/checkpoint.ts';
import { CommandOp, decodeCommand, encodeCommand, encodeCreateDevice, encodePublishMember } from '../../src/device/commands.ts';
import { MemberTable, publishProblem, type Publication } from '../../src/device/member-table.ts';
import { EntryType } from '../../src/raft/types.ts';
import { tempDir, Log } from './helpers/store-log.ts';

const logger = pino({ level: 'silent' });

const pub = (nodeId: string, admin: string, nbd: string, startedAt = 1_700_000_000_000): Publication => ({ nodeId, adminAddress: admin, nbdAddress: nbd, version: '1.2.3', startedAt });

t.test('PUBLISH_MEMBER round-trips, takes the highest opcode, and refuses trailing bytes', async (t) => {
  const id = { clientId: 2 ** 50 + 3, seq: 4, firstUnacked: 2 };
  const p = pub('node-2', '127.0.0.1:10819', '[::1]:10809');
  const enc = encodePublishMember(id, p);
  t.equal(enc[1], 255, 'opcode 255 (new opcodes come from the top)');
  t.same(decodeCommand(enc), { op: CommandOp.PublishMember, ...id, ...p });
  t.same(encodeCommand(decodeCommand(enc)), enc, 'encodeCommand gives the same bytes');
  t.throws(() => decodeCommand(Buffer.concat([enc, Buffer.from([0])])), { code: 'XDEVICE_ERR_BAD_COMMAND' });
  t.throws(() => decodeCommand(enc.subarray(0, enc.length - 3)), { code: 'XDEVICE_ERR_BAD_COMMAND' });
});

t.test('publishProblem: what a proposal is checked against (and apply again)', async (t) => {
  t.equal(publishProblem(pub('n1', '127.0.0.1:1', '127.0.0.1:2')), undefined);
  t.equal(publishProblem(pub('n1', '', '')), undefined, 'not serving yet is allowed');
  t.match(publishProblem(pub('-bad', '127.0.0.1:1', '')), /node id/);
  t.match(publishProblem(pub('n1', 'nowhere', '')), /admin address/);
  t.match(publishProblem(pub('n1', '127.0.0.1:1', 'h:70000')), /NBD address/);
  t.match(publishProblem({ ...pub('n1', '', ''), version: 'x'.repeat(65) }), /version/);
  t.match(publishProblem({ ...pub('n1', '', ''), version: '1 2' }), /printable/);
  t.match(publishProblem({ ...pub('n1', '', ''), startedAt: -1 }), /start time/);
});

t.test('apply records the latest publication; a removed member is not recorded; removal forgets', async (t) => {
  const dir = await tempDir(t, 'xdevice-members-');
  const store = await BlockStore.open(dir, logger);
  t.teardown(() => store.closeFiles());
  const log = new Log(11);
  log.add(encodePublishMember(log.id(), pub('n1', '127.0.0.1:1001', '127.0.0.1:2001')));
  log.add(encodePublishMember(log.id(), pub('n2', '127.0.0.1:1002', '127.0.0.1:2002')));
  const republished = log.add(encodePublishMember(log.id(), pub('n1', '127.0.0.1:1101', '127.0.0.1:2101', 1_700_000_009_000)));
  const outcomes = await store.applyBatch(log.entries, () => {});
  t.ok(outcomes.every((o) => !o.error), 'valid publications never fail at apply');
  t.same(store.publishedMember('n1'), { adminAddress: '127.0.0.1:1101', nbdAddress: '127.0.0.1:2101', version: '1.2.3', startedAt: 1_700_000_009_000, index: republished.index });
  t.equal(store.publishedMember('n2')?.adminAddress, '127.0.0.1:1002');

  store.setMember('n2', undefined); // a RemoveNode applied
  t.equal(store.publishedMember('n2'), undefined, 'removal drops what the member published');
  const late = log.add(encodePublishMember(log.id(), pub('n2', '127.0.0.1:1202', '127.0.0.1:2202')));
  const [o] = await store.applyBatch([late], () => {});
  t.match(o, { index: late.index, error: { code: 'XDEVICE_ERR_INVALID', message: /removed/ } }, 'a publication from a removed member is a failed command');
  t.equal(store.publishedMember('n2'), undefined);
  store.setMember('n2', '127.0.0.1:3002'); // added back
  const again = log.add(encodePublishMember(log.id(), pub('n2', '127.0.0.1:1302', '127.0.0.1:2302')));
  await store.applyBatch([again], () => {});
  t.equal(store.publishedMember('n2')?.nbdAddress, '127.0.0.1:2302', 'a member added back publishes again');
});

t.test('an invalid publication in the log fails the same way on every replica', async (t) => {
  const dir = await tempDir(t, 'xdevice-members-');
  // Encoded without the proposer's check (an older or faulty proposer).
  const bad = encodePublishMember({ clientId: 1, seq: 1, firstUnacked: 1 }, pub('n1', 'not-an-address', ''));
  const outcomes: unknown[] = [];
  for (const name of ['a', 'b']) {
    const store = await BlockStore.open(join(dir, name), logger);
    const [o] = await store.applyBatch([{ term: 1, index: 1, type: EntryType.Normal, data: bad }], () => {});
    outcomes.push(o);
    t.equal(store.publishedMember('n1'), undefined);
    t.equal(store.appliedIndex, 1, 'the entry counts as applied');
    await store.closeFiles();
  }
  t.same(outcomes[0], outcomes[1]);
  t.match(outcomes[0], { error: { code: 'XDEVICE_ERR_INVALID' } });
});

t.test('the member table survives a checkpoint, a replay and a snapshot reload', async (t) => {
  const dir = await tempDir(t, 'xdevice-members-');
  let store = await BlockStore.open(join(dir, 's'), logger);
  const log = new Log(11);
  log.add(encodeCreateDevice(log.id(), 'd', 1 << 20));
  log.add(encodePublishMember(log.id(), pub('n1', '127.0.0.1:1001', '127.0.0.1:2001')));
  await store.applyBatch(log.entries, () => {});
  const state = store.captureState();
  t.same(Object.keys(state.published ?? {}), ['n1']);
  await store.checkpoint(state);
  const later = log.add(encodePublishMember(log.id(), pub('n3', '127.0.0.1:1003', '127.0.0.1:2003')));
  await store.applyBatch([later], () => {});
  await store.closeFiles();

  store = await BlockStore.open(join(dir, 's'), logger);
  t.equal(store.publishedMember('n1')?.adminAddress, '127.0.0.1:1001', 'loaded from the checkpoint');
  t.equal(store.publishedMember('n3'), undefined, 'not yet: it is after the checkpoint');
  await store.applyBatch(log.entries, () => {}); // the WAL replays
  t.equal(store.publishedMember('n3')?.adminAddress, '127.0.0.1:1003', 'replayed');
  const replayed = store.captureState();

  // A snapshot carries the same state to another replica.
  const other = await BlockStore.open(join(dir, 'o'), logger);
  await other.reload(decodeStoreState(encodeStoreState(replayed), 'snapshot'));
  t.same(other.captureState().published, replayed.published, 'a snapshot installs the table');
  await other.closeFiles();
  await store.closeFiles();
});

t.test('a checkpoint from before the member table loads (empty table); a malformed table refuses', async (t) => {
  const dir = await tempDir(t, 'xdevice-members-');
  // Exactly what an older node wrote: no `published` key.
  const old = { clusterId: 'c', appliedIndex: 0, appliedTerm: 0, devices: [], members: { n1: '127.0.0.1:1' }, removed: [], dedup: [] };
  await writeFile(join(dir, CHECKPOINT_FILE), encodeStoreState(old));
  t.same(await readCheckpoint(dir), old);
  const store = await BlockStore.open(dir, logger);
  t.equal(store.publishedMember('n1'), undefined);
  t.same(store.captureState().published, {}, 'written back with an empty table');
  t.same(store.memberAddresses(), { n1: '127.0.0.1:1' });
  await store.closeFiles();

  for (const published of [[], { n1: { adminAddress: 1 } }, { n1: null }, 'x']) {
    t.throws(() => decodeStoreState(encodeStoreState({ ...old, published } as never)), CheckpointError, `published = ${JSON.stringify(published)}`);
  }
});

t.test('MemberTable exports sorted copies', async (t) => {
  const table = MemberTable.from(undefined);
  t.equal(table.apply(pub('z', '127.0.0.1:1', ''), 5, false), undefined);
  t.equal(table.apply(pub('a', '127.0.0.1:2', ''), 6, false), undefined);
  t.same(Object.keys(table.export()), ['a', 'z']);
  const copy = table.get('a')!;
  copy.adminAddress = 'changed';
  t.equal(table.get('a')!.adminAddress, '127.0.0.1:2', 'get returns a copy');
  t.same(MemberTable.from(table.export()).export(), table.export());
});
