// Output for xdevice-cli: `-w table` for people, `-w json` for scripts.

export type OutputFormat = 'table' | 'json';

export function renderTable(headers: string[], rows: (string | number | boolean | undefined)[][]): string {
  const cells = rows.map((r) => r.map((c) => (c === undefined ? '' : String(c))));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => '| ' + r.map((c, i) => c.padEnd(widths[i]!)).join(' | ') + ' |';
  const rule = '+' + widths.map((w) => '-'.repeat(w + 2)).join('+') + '+';
  return [rule, line(headers.map((h) => h.toUpperCase())), rule, ...cells.map(line), rule].join('\n') + '\n';
}

/** A one-line progress bar on a terminal; a plain line per update otherwise. */
export class ProgressBar {
  private lastPlain = -1;
  constructor(
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  update(done: number, total: number, detail = ''): void {
    const fraction = total > 0 ? Math.min(1, done / total) : 0;
    const percent = Math.floor(fraction * 100);
    if (this.stream.isTTY) {
      const width = 30;
      const filled = Math.round(fraction * width);
      this.stream.write(`\r${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(percent).padStart(3)}% ${detail}\x1b[K`);
    } else if (percent !== this.lastPlain && (percent === 100 || percent - this.lastPlain >= 10)) {
      this.lastPlain = percent;
      this.stream.write(`${this.label}: ${percent}% ${detail}\n`);
    }
  }

  done(message: string): void {
    if (this.stream.isTTY) this.stream.write(`\r${this.label}: ${message}\x1b[K\n`);
    else this.stream.write(`${this.label}: ${message}\n`);
  }
}

/** Bytes for people: "0 B", "812 B", "4.0 KiB", "1.5 GiB" (one decimal above KiB). */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = bytes / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(1)} ${units[i]}`;
}

/** Seconds for people: "45s", "3m07s", "2h05m", "4d03h". */
export function formatDuration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const pad = (n: number) => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86400)}d${pad(Math.floor(s / 3600) % 24)}h`;
}
