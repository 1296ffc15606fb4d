// Moved to src/disk/fiemap.ts (the disk layer owns every way of looking at a
// file's storage); kept as a re-export for src/cluster/snapshot-sender.ts,
// whose owner moves its import with the replica-core work.
export { fileExtents } from '../disk/fiemap.ts';
