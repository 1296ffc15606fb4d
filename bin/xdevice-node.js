#!/usr/bin/env node
// Runs the compiled node (dist/ is built by `npm install` / `npm run build`).
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
