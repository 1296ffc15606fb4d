// Child of wal-crash.test.ts: appends with many concurrent appenders and
// reports each index on stdout the moment its save resolves (durable), until
// the parent SIGKILLs it. argv: dir term appenders

import { writeSync } from 'node:fs';
import { Wal } from '../../src/wal/wal.ts';
import { crashEntry, crashWalOptions } from './wal-crash-shared.ts';

const [dir, termArg, appendersArg] = process.argv.slice(2);
const term = Number(termArg);
const appenders = Number(appendersArg);
const wal = await Wal.open(dir!, crashWalOptions);
let next = wal.lastIndex() + 1;
writeSync(1, `ready ${next}\n`);

async function appender(): Promise<void> {
  for (;;) {
    const index = next++;
    // Saves are submitted in index order (this runs synchronously up to the save call).
    const hardState = index % 5 === 0 ? { term, vote: `node-${term % 3}`, commit: Math.max(0, index - 64) } : undefined;
    await wal.save({ entries: [crashEntry(index, term)], hardState });
    writeSync(1, `${index}\n`);
  }
}

await Promise.all(Array.from({ length: appenders }, appender));
