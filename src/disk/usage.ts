// How much of the disk a directory's files take (allocated blocks, so
// preallocated WAL segments count and holes do not): for metrics and status.

import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

export /** Allocated bytes of the files directly in `dir` (0 if it does not exist). */
async function allocatedBytes(dir: string): Promise<number> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return 0;
  }
  let total = 0;
  for (const name of names) {
    try {
      const st = await stat(join(dir, name));
      if (st.isFile()) total += st.blocks * 512;
    } catch {
      // removed by compaction while we looked
    }
  }
  return total;
}
