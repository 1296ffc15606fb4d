// Checks an audit trail offline, from its files: every rotated file in
// order, every line's form and hash, the chain from record to record
// (seq one more, prevHash the previous hash, cluster log indexes rising),
// and the end against the head file. The first problem is reported with its
// file and line and what it means: an edited record (its hash no longer
// matches), a removed or moved one (the chain breaks), a removed file, a
// cut-off end (the head names a later record).
//
// A node caught up by a snapshot holds an anchor line where the records the
// snapshot covered would be (record.ts, TrailAnchor): the chain continues
// from the anchor's seq and hash. The report lists every anchor; the records
// before one are on the nodes that applied them, and `audit list` there
// shows the anchor's record with the anchor's hash.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { AuditScope } from './event.ts';
import { GENESIS_HASH, parseAnchorLine, parseRecordLine, recordHash, type TrailRecord } from './record.ts';
import { headFileName, readHead, trailFiles } from './trail.ts';

export interface TrailProblem {
  file: string;
  /** 1-based; 0 when the problem is the file as a whole. */
  line: number;
  what: string;
}

export interface TrailReport {
  scope: AuditScope;
  dir: string;
  ok: boolean;
  files: number;
  records: number;
  /** The last good record's seq and hash. */
  head: { seq: number; hash: string };
  /** Where the chain continues from a snapshot (seq and hash of the record before, its log index). */
  anchors: { file: string; line: number; seq: number; hash: string; index: number }[];
  problem?: TrailProblem;
}

export async function verifyTrail(dir: string, scope: AuditScope): Promise<TrailReport> {
  const files = await trailFiles(dir, scope);
  let prev = { seq: 0, hash: GENESIS_HASH, index: 0 };
  let records = 0;
  const anchors: TrailReport['anchors'] = [];
  const report = (problem?: TrailProblem): TrailReport => ({
    scope,
    dir,
    ok: problem === undefined,
    files: files.length,
    records,
    head: { seq: prev.seq, hash: prev.hash },
    anchors,
    ...(problem ? { problem } : {}),
  });
  for (let f = 0; f < files.length; f++) {
    const { n, name } = files[f]!;
    const path = join(dir, name);
    if (n !== f + 1) return report({ file: path, line: 0, what: `file number ${n} where ${f + 1} was expected: a rotated file of the trail is missing` });
    const text = await readFile(path, 'utf8');
    const lines = text.split('\n');
    const torn = lines.pop() !== '';
    for (let i = 0; i < lines.length; i++) {
      const at = (what: string): TrailReport => report({ file: path, line: i + 1, what });
      const anchored = scope === 'cluster' ? parseAnchorLine(lines[i]!) : undefined;
      if (anchored) {
        const a = anchored.anchor;
        if (a.seq < prev.seq || a.index < prev.index) return at(`an anchor at record ${a.seq} (log index ${a.index}) after record ${prev.seq} (log index ${prev.index}): the trail went back`);
        if (a.seq === prev.seq && a.hash !== prev.hash) return at(`an anchor at record ${a.seq} with another hash than record ${prev.seq}'s: a record before it was replaced`);
        anchors.push({ file: path, line: i + 1, ...a });
        prev = { ...a };
        continue;
      }
      const parsed = parseRecordLine(lines[i]!);
      if ('problem' in parsed) return at(`${parsed.problem}: the line was edited or damaged`);
      const r: TrailRecord = parsed.record;
      const { hash, ...body } = r;
      if (r.scope !== scope) return at(`a ${r.scope} record in the ${scope} trail: the line was edited or moved here`);
      if (recordHash(body) !== hash) return at(`record ${r.seq}: its hash does not match its content: the record was edited`);
      if (r.seq !== prev.seq + 1) {
        return at(
          r.seq > prev.seq + 1
            ? `record ${r.seq} follows record ${prev.seq}: ${r.seq - prev.seq - 1} record(s) before it were removed (or moved)`
            : `record ${r.seq} follows record ${prev.seq}: records are out of order (moved or copied)`,
        );
      }
      if (r.prevHash !== prev.hash) return at(`record ${r.seq}: its prevHash is not the hash of record ${prev.seq}: a record before it was replaced`);
      if (scope === 'cluster' && (r.index === undefined || r.index <= prev.index)) return at(`record ${r.seq}: log index ${r.index ?? 'missing'} does not follow ${prev.index}`);
      prev = { seq: r.seq, hash: r.hash, index: r.index ?? 0 };
      records++;
    }
    if (torn) return report({ file: path, line: lines.length + 1, what: 'the last line has no newline: an append cut short (the node repairs this at start-up) or an edit' });
  }
  const head = await readHead(dir, scope);
  const headPath = join(dir, headFileName(scope));
  if (head === 'malformed') return report({ file: headPath, line: 1, what: 'the head file is malformed' });
  if (head === undefined) return records === 0 ? report() : report({ file: headPath, line: 0, what: `the head file is missing while the trail holds ${records} records` });
  if (head.seq > prev.seq) {
    const last = files.length > 0 ? join(dir, files[files.length - 1]!.name) : headPath;
    return report({ file: last, line: 0, what: `the trail ends at record ${prev.seq}, its head names record ${head.seq}: the last ${head.seq - prev.seq} record(s) were removed` });
  }
  if (head.seq === prev.seq && head.hash !== prev.hash) return report({ file: headPath, line: 1, what: `the head's hash is not that of record ${prev.seq}: the last record or the head was edited` });
  // head.seq < prev.seq: a crash between appends and the head's replacement (repaired at start-up).
  return report();
}
