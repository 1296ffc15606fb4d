// The HTTP admin API: loopback by default, a bearer token when configured.
//
//   GET    /health            200 healthy / 503 not, with the checks
//   GET    /status            role, term, leader, commit/applied, peers
//   GET    /members           POST /members {id,address}   DELETE /members/:id
//   POST   /leader {to}       leadership transfer
//   GET    /devices           POST /devices {name,size}    PATCH /devices/:name {size}   DELETE /devices/:name
//   GET    /metrics           Prometheus text format
//   GET    /                  the status page (HTML; reads the endpoints above)   GET /events  its recent events
//
// Errors are JSON {error: {code, message}} with a status a script can act on.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { NodeApi } from './api.ts';
import { XDeviceError } from '../errors.ts';
import { parseSize } from '../cli/config.ts';
import { STATUS_PAGE_HTML, type EventLog } from './status-page.ts';

const BODY_BYTES_MAX = 64 * 1024;

export class HttpError extends XDeviceError {
  constructor(
    readonly status: number,
    code: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(code, message);
  }
}

export interface AdminServerOptions {
  node: NodeApi;
  metrics: Registry;
  logger: Logger;
  /** Bearer token; empty = no authentication (loopback only is the default). */
  token?: string;
  /** Recent events for the status page (GET /events). */
  events?: EventLog;
}

/** Maps errors thrown by the node to HTTP statuses. */
function statusFor(err: unknown): { status: number; code: string; message: string; extra: Record<string, unknown> } {
  if (err instanceof HttpError) return { status: err.status, code: err.code, message: err.message, extra: err.extra };
  const e = err as { code?: string; message?: string; leader?: string };
  const code = typeof e?.code === 'string' ? e.code : 'XDEVICE_ERR_INTERNAL';
  const message = e?.message ?? String(err);
  const byCode: Record<string, number> = {
    XDEVICE_ERR_NOT_LEADER: 421,
    XDEVICE_ERR_NO_LEADER: 503,
    XDEVICE_ERR_CONFIG: 400,
    XDEVICE_ERR_INVALID: 400,
    XDEVICE_ERR_NOT_FOUND: 404,
    XDEVICE_ERR_EXISTS: 409,
    XDEVICE_ERR_CONF_CHANGE_IN_PROGRESS: 409,
    XDEVICE_ERR_TRANSFER_IN_PROGRESS: 409,
    XDEVICE_ERR_UNSUPPORTED: 501,
    XDEVICE_ERR_TIMEOUT: 504,
    XDEVICE_ERR_SHUTDOWN: 503,
    ENOTSUP: 501,
  };
  const extra: Record<string, unknown> = {};
  if (e?.leader) extra.leader = e.leader;
  return { status: byCode[code] ?? 500, code, message, extra };
}

export class AdminServer {
  private readonly server: Server;
  private token: string;

  constructor(private readonly options: AdminServerOptions) {
    this.token = options.token ?? '';
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((err) => this.fail(res, err));
    });
    this.server.keepAliveTimeout = 5_000;
  }

  /** SIGHUP: the token can change without a restart. */
  setToken(token: string): void {
    this.token = token;
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const addr = this.server.address() as AddressInfo;
    return { host: addr.address, port: addr.port };
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private authorised(req: IncomingMessage): boolean {
    if (!this.token) return true;
    const header = req.headers.authorization ?? '';
    const m = /^Bearer\s+(.+)$/i.exec(header);
    if (!m) return false;
    const given = Buffer.from(m[1]!.trim());
    const want = Buffer.from(this.token);
    return given.length === want.length && timingSafeEqual(given, want);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://admin');
    const method = req.method ?? 'GET';
    if (method === 'GET' && url.pathname === '/') {
      // The status page holds no data (it reads the endpoints below with the token): no token needed.
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Security-Policy': "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'" });
      res.end(STATUS_PAGE_HTML);
      return;
    }
    if (!this.authorised(req)) {
      this.options.logger.warn({ remote: req.socket.remoteAddress, method, path: url.pathname }, 'admin API: missing or wrong bearer token');
      res.setHeader('WWW-Authenticate', 'Bearer realm="xdevice"');
      throw new HttpError(401, 'XDEVICE_ERR_UNAUTHORIZED', 'missing or wrong bearer token');
    }
    const { node } = this.options;
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const route = `${method} /${parts[0] ?? ''}${parts.length > 1 ? '/:arg' : ''}`;
    switch (route) {
      case 'GET /health': {
        const report = await node.health();
        return this.json(res, report.healthy ? 200 : 503, report);
      }
      case 'GET /status':
        return this.json(res, 200, node.status());
      case 'GET /members':
        return this.json(res, 200, { members: node.members() });
      case 'POST /members': {
        const body = await readJson(req);
        const id = requireString(body, 'id');
        const address = requireString(body, 'address');
        await node.addNode(id, address);
        this.options.logger.info({ id, address }, 'admin API: node added');
        return this.json(res, 200, { members: node.members() });
      }
      case 'DELETE /members/:arg':
        await node.removeNode(parts[1]!);
        this.options.logger.info({ id: parts[1] }, 'admin API: node removed');
        return this.json(res, 200, { members: node.members() });
      case 'POST /leader': {
        const body = await readJson(req);
        await node.transferLeader(requireString(body, 'to'));
        return this.json(res, 200, node.status());
      }
      case 'GET /devices':
        return this.json(res, 200, { devices: await node.devices() });
      case 'POST /devices': {
        const body = await readJson(req);
        await node.createDevice(requireString(body, 'name'), requireSize(body));
        return this.json(res, 201, { devices: await node.devices() });
      }
      case 'PATCH /devices/:arg': {
        const body = await readJson(req);
        await node.resizeDevice(parts[1]!, requireSize(body));
        return this.json(res, 200, { devices: await node.devices() });
      }
      case 'DELETE /devices/:arg':
        await node.deleteDevice(parts[1]!);
        return this.json(res, 200, { devices: await node.devices() });
      case 'GET /events':
        return this.json(res, 200, { events: this.options.events?.list() ?? [] });
      case 'GET /metrics': {
        const text = await this.options.metrics.metrics();
        res.writeHead(200, { 'Content-Type': this.options.metrics.contentType });
        res.end(text);
        return;
      }
      default:
        throw new HttpError(404, 'XDEVICE_ERR_NOT_FOUND', `no such endpoint: ${method} ${url.pathname}`);
    }
  }

  private json(res: ServerResponse, status: number, body: unknown): void {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  }

  private fail(res: ServerResponse, err: unknown): void {
    const { status, code, message, extra } = statusFor(err);
    if (status >= 500) this.options.logger.error({ err }, 'admin API request failed');
    if (res.headersSent) {
      res.destroy();
      return;
    }
    this.json(res, status, { error: { code, message, ...extra } });
  }
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > BODY_BYTES_MAX) throw new HttpError(413, 'XDEVICE_ERR_INVALID', `request body over ${BODY_BYTES_MAX} bytes`);
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    const value = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('not an object');
    return value as Record<string, unknown>;
  } catch (err) {
    throw new HttpError(400, 'XDEVICE_ERR_INVALID', `request body is not a JSON object: ${(err as Error).message}`);
  }
}

function requireString(body: Record<string, unknown>, key: string): string {
  const v = body[key];
  if (typeof v !== 'string' || v === '') throw new HttpError(400, 'XDEVICE_ERR_INVALID', `"${key}" (a non-empty string) is required`);
  return v;
}

function requireSize(body: Record<string, unknown>): number {
  const v = body.size;
  if (typeof v === 'number' && Number.isSafeInteger(v) && v > 0) return v;
  if (typeof v === 'string') {
    try {
      return parseSize(v);
    } catch (err) {
      throw new HttpError(400, 'XDEVICE_ERR_INVALID', (err as Error).message);
    }
  }
  throw new HttpError(400, 'XDEVICE_ERR_INVALID', '"size" (bytes, or a string like "1GiB") is required');
}
