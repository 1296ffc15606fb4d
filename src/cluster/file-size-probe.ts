// Will the data filesystem hold a file of a given size? Asked before a device
// create or resize is proposed, so apply never meets EFBIG (ext4 with 4 KiB
// blocks stops at 16 TiB - 4 KiB; others differ). A sparse probe file is
// truncated to the size and removed: no blocks are allocated.

import { open, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { XDeviceError } from '../errors.ts';

export const SIZE_PROBE_FILE = 'size-probe.tmp';

export async function probeFileSize(dataDir: string, size: number): Promise<void> {
  const path = join(dataDir, SIZE_PROBE_FILE);
  const handle = await open(path, 'w');
  try {
    await handle.truncate(size);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EFBIG' || code === 'EINVAL') {
      throw new XDeviceError('XDEVICE_ERR_INVALID', `the filesystem under ${dataDir} cannot hold a ${size}-byte device file (${code})`);
    }
    throw err;
  } finally {
    await handle.close();
    await unlink(path).catch(() => undefined);
  }
}
