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
