// npm run fuzz:peer: the long run of the peer fuzzer (10^6 frames unless
// XDEVICE_FUZZ_FRAMES says otherwise). Prints the seed; XDEVICE_SEED replays.
import { Cluster, clusterSecretFile } from '../helpers/launcher.ts';
import { readClusterSecret } from '../../../src/cluster/peer-auth.ts';
import { fuzzPeers, fuzzSeed } from './fuzz.ts';

const seed = fuzzSeed();
const frames = Number(process.env.XDEVICE_FUZZ_FRAMES ?? 1_000_000);
console.log(`XDEVICE_SEED=${seed} XDEVICE_FUZZ_FRAMES=${frames}`);
const c = await Cluster.start({ ids: ['n1', 'n2', 'n3'], devices: ['default:16MiB'], logLevel: 'error' });
const started = Date.now();
let code = 0;
try {
  const stats = await fuzzPeers(c, readClusterSecret(clusterSecretFile()), seed, frames, (s) => console.log(s));
  console.log(`ok: ${JSON.stringify(stats)} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} catch (err) {
  console.error(`FAILED (replay with XDEVICE_SEED=${seed}): ${(err as Error).stack ?? err}`);
  code = 1;
} finally {
  await c.stop();
}
process.exit(code);
