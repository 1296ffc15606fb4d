// The authenticated peer-frame fuzzer (test/integration/peer-fuzz/fuzz.ts) at a
// live 3-node cluster: 10^5 frames per CI run (XDEVICE_FUZZ_FRAMES to change;
// `npm run fuzz:peer` sends 10^6). Prints its seed; XDEVICE_SEED replays it.
import t from 'tap';
import { Cluster, clusterSecretFile } from './helpers/launcher.ts';
import { readClusterSecret } from '../../src/cluster/peer-auth.ts';
import { fuzzPeers, fuzzSeed } from './peer-fuzz/fuzz.ts';

t.test('authenticated random and mutated peer frames stop nothing and lose no acknowledged write', async (t) => {
  const seed = fuzzSeed();
  const frames = Number(process.env.XDEVICE_FUZZ_FRAMES ?? 100_000);
  t.comment(`XDEVICE_SEED=${seed} XDEVICE_FUZZ_FRAMES=${frames}`);
  const c = await Cluster.start({ ids: ['n1', 'n2', 'n3'], devices: ['default:16MiB'], logLevel: 'error' });
  t.teardown(() => c.stop());
  const started = Date.now();
  const stats = await fuzzPeers(c, readClusterSecret(clusterSecretFile()), seed, frames, (s) => t.comment(s));
  t.comment(`${JSON.stringify(stats)} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  t.ok(stats.frames >= frames, `${stats.frames} frames sent`);
  t.ok(stats.linksClosed > 0, 'protocol errors closed links (the bad frames were seen)');
  t.equal(stats.unexpectedCloses, 0, 'no well-formed frame closed a link');
  t.ok(stats.writesAcked > 0, `the cluster kept committing during the fuzz (${stats.writesAcked} writes)`);
  t.equal(c.live().length, 3, 'no node exited');
});
