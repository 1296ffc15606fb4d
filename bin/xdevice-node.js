#!/usr/bin/env -S node --initial-old-space-size=256
// Runs the compiled node (dist/ is built by `npm install` / `npm run build`).
// The V8 flag on the first line (the only place it is written; the test
// launcher reads it from there, `npm start` and systemd run this file):
// 1 MiB writes hold external buffers that keep forcing scavenges, and on a
// young, small old generation each of them also crossed the old generation's
// allocation limit and started a full mark-compact (about 25 a second at
// 200 MB/s; GC was a quarter of a node's CPU). Starting the old generation at
// 256 MiB cut the CPU per written MiB by about a third. Node refuses the flag
// in NODE_OPTIONS, so it goes on the interpreter line.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/node/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write('xdevice-node: dist/ is missing; run `npm install` (or `npm run build`) first\n');
  process.exit(2);
}
let main;
try {
  ({ main } = await import(entry.href));
} catch (err) {
  // An unbuilt native addon lands here: one line that says what to run, not a stack.
  process.stderr.write(`xdevice-node: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
await main();
