// pino, pretty on a terminal and JSON otherwise (systemd's journal, log shippers).
//
// JSON lines carry what Loki, Elasticsearch and journald users expect:
// {"level":"warn","time":"2026-12-01T21:50:00.123Z","name":"xdevice-node/node1","msg":"peer link lost",...}
// — a level name, not pino's number, and an ISO 8601 UTC time, not epoch ms.

import { pino, type Logger, type LoggerOptions } from 'pino';
export type { Logger };

/** auto: pretty on a terminal, JSON otherwise (the log-format key of xdevice-node). */
export type LogFormat = 'auto' | 'json' | 'pretty';

/** The options of a JSON logger (exported for tests that capture lines). */
export function jsonLoggerOptions(level: string, name: string): LoggerOptions {
  return {
    level,
    name,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  };
}

export function createLogger(options: { level?: string; format?: LogFormat; name?: string; destination?: number } = {}): Logger {
  const fd = options.destination ?? 2;
  const format = options.format ?? 'auto';
  const pretty = format === 'pretty' || (format === 'auto' && fd === 2 && process.stderr.isTTY === true);
  const level = options.level ?? 'info';
  const name = options.name ?? 'xdevice';
  if (pretty) {
    return pino({
      level,
      name,
      transport: { target: 'pino-pretty', options: { destination: fd, colorize: true, translateTime: 'SYS:HH:MM:ss.l' } },
    });
  }
  return pino(jsonLoggerOptions(level, name), pino.destination({ fd, sync: false }));
}
