// src/raft is pure (DESIGN.md, Boundaries): it imports nothing that touches
// the world, and the runtime sees Raft only through RawNode's status views,
// never its internals (raftForTesting is for protocol tests and the simulator).
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return tsFiles(p);
    return p.endsWith('.ts') ? [p] : [];
  });
}

t.test('src/raft imports no node:* module and uses no timer, clock or Math.random', async (t) => {
  const offending: string[] = [];
  for (const file of tsFiles(join(ROOT, 'src/raft'))) {
    const code = readFileSync(file, 'utf8').replace(/\/\/.*$/gm, '').replace(/\/\*[\s\S]*?\*\//g, '');
    for (const [what, re] of [
      ['node:* import', /from\s+'node:/],
      ['import outside src/raft but errors/limits', /from\s+'\.\.\/(?!errors\.ts'|limits\.ts')/],
      ['timer', /\b(setTimeout|setInterval|setImmediate|queueMicrotask)\s*\(/],
      ['clock', /\b(Date\.now|new Date|performance\.now|process\.hrtime)\b/],
      ['Math.random', /\bMath\.random\b/],
    ] as const) {
      if (re.test(code)) offending.push(`${relative(ROOT, file)}: ${what}`);
    }
  }
  t.same(offending, []);
});

t.test('nothing under src/ outside src/raft reaches into RawNode’s Raft', async (t) => {
  const offending: string[] = [];
  for (const file of tsFiles(join(ROOT, 'src'))) {
    if (file.includes(`${join('src', 'raft')}/`)) continue;
    const code = readFileSync(file, 'utf8');
    if (/raftForTesting|\braw\.raft\b|\.raft\.(trk|log)\b/.test(code)) offending.push(relative(ROOT, file));
  }
  t.same(offending, []);
});
