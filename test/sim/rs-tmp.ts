import { runReplicaSeed } from './replica-sim.ts';
const from = Number(process.argv[2] ?? 1), count = Number(process.argv[3] ?? 1);
const trace = process.env.TRACE ? (l: string) => console.log(l) : undefined;
const t0 = Date.now();
let fails = 0;
for (let s = from; s < from + count; s++) {
  const r = await runReplicaSeed({ seed: s, ...(process.env.SYNC ? { syncMode: process.env.SYNC as 'dsync' } : {}), ...(trace ? { trace } : {}) });
  if (!r.ok) { fails++; console.log(`seed ${s}: ${r.error}`); }
  if (count <= 3 || process.env.V) console.log(s, r.ok, JSON.stringify(r.stats));
}
console.log(`${count} seeds, ${fails} failed, ${((Date.now() - t0) / count).toFixed(0)} ms/seed`);
