// Exactly-once application of retried client requests (Raft thesis 6.3).

import t from 'tap';
import { decodeRequest, encodeRequest } from '../../src/raft/dedup.ts';
import { RequestDedup } from '../../src/device/request-dedup.ts';

t.test('request header round-trips and the payload is a view', async (t) => {
  const payload = Buffer.from('block data');
  const b = encodeRequest({ clientId: 'conn-7', seq: 2 ** 40, firstUnacked: 5 }, payload);
  const { header, payload: p } = decodeRequest(b);
  t.same(header, { clientId: 'conn-7', seq: 2 ** 40, firstUnacked: 5 });
  t.equal(p.toString(), 'block data');
  t.throws(() => decodeRequest(b.subarray(0, 5)));
  t.throws(() => encodeRequest({ clientId: 'c', seq: 3, firstUnacked: 4 }, payload), 'firstUnacked beyond seq');
});

t.test('duplicates are refused, in any order, and state stays bounded', async (t) => {
  const d = new RequestDedup<string>();
  const h = (seq: number, firstUnacked = 1) => ({ clientId: 'c', seq, firstUnacked });
  t.ok(d.admit(h(1)));
  t.notOk(d.admit(h(1)), 'a retry of 1');
  t.ok(d.admit(h(3)));
  t.ok(d.admit(h(2)), '2 arrives after 3 (a retry via a new leader): applied once');
  t.notOk(d.admit(h(2)));
  t.ok(d.admit(h(4, 4)), 'the client acknowledged everything below 4');
  t.notOk(d.admit(h(3)), 'below the floor: settled');
  const table = d.export();
  t.same(table, [{ clientId: 'c', floor: 4, applied: [4] }]);
  const copy = RequestDedup.from<string>(table);
  t.notOk(copy.admit(h(4)), 'the table survives a snapshot');
  t.ok(copy.admit(h(5, 4)));
});

t.test('limits: clients and per-client window', async (t) => {
  const d = new RequestDedup<string>(2, 3);
  t.ok(d.admit({ clientId: 'a', seq: 1, firstUnacked: 1 }));
  t.ok(d.admit({ clientId: 'b', seq: 1, firstUnacked: 1 }));
  t.ok(d.admit({ clientId: 'c', seq: 1, firstUnacked: 1 }));
  t.equal(d.size, 2, 'the least recently used client is forgotten');
  for (let s = 2; s <= 6; s++) d.admit({ clientId: 'c', seq: s, firstUnacked: 1 });
  const w = d.export().find((x) => x.clientId === 'c')!;
  t.equal(w.applied.length, 3, 'a client that never acknowledges keeps only windowMax ids');
});
