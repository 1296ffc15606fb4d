// pino, pretty on a terminal and JSON otherwise (systemd's journal, log shippers).

import { pino, type Logger } from 'pino';
import type { LogFormat } from './cli/config.ts';

export type { Logger };

export function createLogger(options: { level?: string; format?: LogFormat; name?: string; destination?: number } = {}): Logger {
  const fd = options.destination ?? 2;
  const format = options.format ?? 'auto';
  const pretty = format === 'pretty' || (format === 'auto' && fd === 2 && process.stderr.isTTY === true);
  const base = { level: options.level ?? 'info', name: options.name ?? 'xdevice' };
  if (pretty) {
    return pino({
      ...base,
      transport: { target: 'pino-pretty', options: { destination: fd, colorize: true, translateTime: 'SYS:HH:MM:ss.l' } },
    });
  }
  return pino(base, pino.destination({ fd, sync: false }));
}
