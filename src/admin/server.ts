// The HTTP admin API: loopback and open by default; with credentials
// configured, every route needs the role ./routes.ts names for it, proved by a
// bearer token or (on the HTTPS listener, admin-tls-*) a client certificate
// (./access.ts). Changes and refusals are recorded through an AuditSink.
//
//   GET    /health            200 healthy / 503 not, with the checks
//   GET    /status            role, term, leader, commit/applied, peers, version, WAL/data bytes, free space
//   GET    /members           POST /members {id,address}   DELETE /members/:id
//   POST   /leader {to}       leadership transfer
//   GET    /devices           POST /devices {name,size,readOnly?}   PATCH /devices/:name {size?,readOnly?}   DELETE /devices/:name
//   POST   /devices/:name/verify   start a verify (202, its report so far)   GET /verify   GET /verify/:id  its report
//   GET    /metrics           Prometheus text format
//   GET    /                  the status page (HTML; reads the endpoints above)   GET /events  its recent events
//   GET    /audit             ?since=ISO&scope=cluster|node|all&limit=N  the audit trail; ?verify=true  its check (src/audit/query.ts)
//
// Errors are JSON {error: {code, message}} with a status a script can act on:
// 401 (with WWW-Authenticate) for missing or wrong credentials, 403 for a
// principal whose role is too low.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Registry } from 'prom-client';
import type { Logger } from 'pino';
import type { DeviceInfo, NodeApi } from './api.ts';
import { XDeviceError } from '../errors.ts';
import { formatHostPort, parseDeviceName, parseDeviceSize, parseNodeId, parsePeers } from '../parse.ts';
import { maskSecrets, NO_AUDIT, type AuditEvent, type AuditSink } from '../audit/event.ts';
import { STATUS_PAGE_HTML, type EventLog } from './status-page.ts';
import { authenticate, OPEN_ACCESS, type AccessTable, type Credentials, type Principal } from './access.ts';
import { roleAllows, routeKey, ROUTES, type RouteRule } from './routes.ts';
import { auditResponse, type AuditReader } from '../audit/query.ts';

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

/** The node's NBD exports as the admin API sees them: who is connected, and cutting them off. */
export interface ExportClients {
  clients(name: string): number;
  disconnect(name: string): Promise<number>;
}

export interface AdminServerOptions {
  node: NodeApi;
  /** This node's NBD server (delete and shrink refuse while clients are connected here, unless forced). */
  exports?: ExportClients;
  metrics: Registry;
  logger: Logger;
  /** Who may call what; default open (no credentials configured: loopback only). */
  access?: AccessTable;
  /** HTTPS instead of HTTP; with `ca`, client certificates are requested and verified against it. */
  tls?: AdminTls;
  /** Where changes, authentication failures and refusals are recorded. */
  audit?: AuditSink;
  /** Recent events for the status page (GET /events). */
  events?: EventLog;
  /** This node's audit trails (GET /audit). */
  auditReader?: AuditReader;
}

export interface AdminTls {
  cert: Buffer;
  key: Buffer;
  ca?: Buffer | undefined;
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
    XDEVICE_ERR_INVALID_CONF_CHANGE: 400,
    XDEVICE_ERR_PROPOSAL_DROPPED: 409,
    XDEVICE_ERR_TOO_MANY_UNCOMMITTED_BYTES: 503,
    XDEVICE_ERR_NOT_READY: 409,
    XDEVICE_ERR_NO_KEY: 409,
    XDEVICE_ERR_CONFLICT: 409,
    XDEVICE_ERR_BUSY: 409,
    XDEVICE_ERR_PEER_UNREACHABLE: 422,
    XDEVICE_ERR_NO_SPACE: 507,
    ENOSPC: 507,
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
  private access: AccessTable;
  private readonly audit: AuditSink;

  constructor(private readonly options: AdminServerOptions) {
    this.access = options.access ?? OPEN_ACCESS;
    this.audit = options.audit ?? NO_AUDIT;
    const handler = (req: IncomingMessage, res: ServerResponse): void => {
      this.handle(req, res).catch((err) => this.fail(res, err));
    };
    const tls = options.tls;
    // Without rejectUnauthorized a bad certificate still connects: it gets a 401
    // that says why (and is audited) rather than a bare handshake failure, and
    // token clients need no certificate at all.
    this.server = tls
      ? createHttpsServer({ cert: tls.cert, key: tls.key, ...(tls.ca ? { ca: tls.ca, requestCert: true, rejectUnauthorized: false } : {}) }, handler)
      : createServer(handler);
    this.server.keepAliveTimeout = 5_000;
  }

  /** SIGHUP: the clients, the token and the anonymous reads can change without a restart. */
  setAccess(access: AccessTable): void {
    this.access = access;
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

  /** The credentials a request carries: its Authorization header, and a client certificate on the HTTPS listener. */
  private credentials(req: IncomingMessage): Credentials {
    const socket = req.socket as TLSSocket;
    let certificate: Credentials['certificate'];
    if (socket.encrypted && this.options.tls?.ca) {
      const cert = socket.getPeerCertificate();
      if (cert && Object.keys(cert).length > 0) {
        const cn = cert.subject?.CN;
        certificate = { verified: socket.authorized, error: socket.authorizationError?.toString(), cn: typeof cn === 'string' ? cn : undefined };
      }
    }
    return { authorization: req.headers.authorization, certificate };
  }

  /** Who asked and whether it may call this route; a refusal is logged, audited and thrown as 401 or 403. */
  private authorise(req: IncomingMessage, rule: RouteRule | undefined, method: string, path: string): Principal {
    // The status page holds no data: credentials, right or wrong, do not matter to it.
    if (rule?.role === 'public') return { name: 'anonymous', role: undefined };
    const auth = authenticate(this.access, this.credentials(req));
    const source = sourceOf(req);
    const refuse = (status: 401 | 403, principal: string, reason: string, args: Record<string, unknown>): never => {
      this.options.logger.warn({ remote: source, principal, method, path, reason }, status === 401 ? 'admin API: not authenticated' : 'admin API: forbidden');
      this.audit.record({ operation: status === 401 ? 'auth.failure' : 'auth.forbidden', principal, source, args: { method, path, ...args }, outcome: 'refused', reason, scope: 'node' });
      if (status === 401) {
        throw new HttpError(401, 'XDEVICE_ERR_UNAUTHORIZED', `${reason}: give a bearer token (xdevice-cli --token) or a client certificate (--cert/--key)`);
      }
      throw new HttpError(403, 'XDEVICE_ERR_FORBIDDEN', reason, { needs: args.needs });
    };
    if (!auth.ok) return refuse(401, auth.principal, auth.reason, {});
    const { principal } = auth;
    if (principal.role === undefined) {
      if (rule?.anonymous && this.access.anonymousReads.has(rule.anonymous)) return { name: principal.name, role: 'viewer' };
      return refuse(401, principal.name, 'credentials required', {});
    }
    if (rule && !roleAllows(principal.role, rule.role)) {
      return refuse(403, principal.name, `${principal.name} has role ${principal.role}; ${method} ${path} needs ${rule.role}`, { needs: rule.role, role: principal.role });
    }
    return principal;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let url: URL;
    try {
      // Prefixed, not resolved: a path like //x/y is a path here, not a host.
      url = new URL(`http://admin${(req.url ?? '/').startsWith('/') ? req.url : '/'}`);
    } catch {
      throw new HttpError(400, 'XDEVICE_ERR_INVALID', 'bad request URL');
    }
    const method = req.method ?? 'GET';
    let parts: string[] | undefined;
    try {
      parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    } catch {
      parts = undefined;
    }
    const route = parts ? routeKey(method, parts) : '';
    const rule = parts && parts.length <= 3 ? ROUTES[route] : undefined;
    // Credentials before anything else, even a 404 or a 400: an unauthenticated caller learns nothing.
    const principal = this.authorise(req, rule, method, url.pathname);
    if (!parts) throw new HttpError(400, 'XDEVICE_ERR_INVALID', `bad percent-escape in ${url.pathname}`);
    if (!rule) throw new HttpError(404, 'XDEVICE_ERR_NOT_FOUND', `no such endpoint: ${req.method ?? ''} ${url.pathname}`);
    if (!rule.audit) return await this.route(req, res, url, route, parts, {});
    const { operation, scope } = rule.audit;
    const args: Record<string, unknown> = { path: url.pathname, ...(url.search ? { query: Object.fromEntries(url.searchParams) } : {}) };
    const record = (outcome: AuditEvent['outcome'], reason?: string): void =>
      this.audit.record({ operation, principal: principal.name, source: sourceOf(req), args: maskSecrets(args), outcome, scope, ...(reason !== undefined ? { reason } : {}) });
    try {
      await this.route(req, res, url, route, parts, args);
    } catch (err) {
      const { status, message } = statusFor(err);
      record(status >= 500 ? 'failed' : 'refused', message);
      throw err;
    }
    record('ok');
  }

  /** One route's work; the request body it reads is added to `args` (what the audit trail records). */
  private async route(req: IncomingMessage, res: ServerResponse, url: URL, route: string, parts: string[], args: Record<string, unknown>): Promise<void> {
    const { node } = this.options;
    const readJson = async (): Promise<Record<string, unknown>> => {
      const body = await readJsonBody(req);
      args.body = body;
      return body;
    };
    const force = flag(url.searchParams.get('force'), 'force');
    switch (route) {
      case 'GET /':
        // The status page holds no data (it reads the endpoints below with the token): no credentials needed.
        res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Content-Security-Policy': "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'" });
        res.end(STATUS_PAGE_HTML);
        return;
      case 'GET /health': {
        const report = await node.health();
        return this.json(res, report.healthy ? 200 : 503, report);
      }
      case 'GET /status':
        // status() is what metrics read every scrape; the disk figures are read only here.
        return this.json(res, 200, { ...node.status(), ...(await node.diskUsage()) });
      case 'GET /members':
        return this.json(res, 200, { members: node.members() });
      case 'POST /members': {
        const body = await readJson();
        const id = requireString(body, 'id');
        const address = requireString(body, 'address');
        // The configuration's parser for --peers: the same id and HOST:PORT rules.
        const parsed = badRequest(() => parsePeers(`${id}=${address}`));
        await node.addNode(id, parsed[id]!, { promote: optionalBoolean(body, 'promote') ?? true, wait: optionalBoolean(body, 'wait') ?? true });
        this.options.logger.info({ id, address }, 'admin API: node added');
        return this.json(res, 200, { members: node.members() });
      }
      case 'POST /members/:arg/promote': {
        const id = nodeId(parts[1]!);
        await node.promoteNode(id);
        this.options.logger.info({ id }, 'admin API: node promoted');
        return this.json(res, 200, { members: node.members() });
      }
      case 'DELETE /members/:arg': {
        const id = nodeId(parts[1]!);
        await node.removeNode(id);
        this.options.logger.info({ id }, 'admin API: node removed');
        return this.json(res, 200, { members: node.members() });
      }
      case 'POST /leader': {
        const body = await readJson();
        await node.transferLeader(nodeId(requireString(body, 'to')));
        return this.json(res, 200, node.status());
      }
      case 'GET /devices':
        return this.json(res, 200, { devices: await this.devices() });
      case 'POST /devices': {
        const body = await readJson();
        const name = badRequest(() => parseDeviceName(requireString(body, 'name')));
        const size = requireSize(body);
        const readOnly = optionalBoolean(body, 'readOnly') ?? false;
        const encrypt = optionalBoolean(body, 'encrypt') ?? false;
        if (readOnly && !node.setDeviceReadOnly) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'read-only devices need --backend replicated');
        if (encrypt && !node.rotateKey) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'encrypted devices need --backend replicated');
        await node.createDevice(name, size, { ...(readOnly ? { readOnly } : {}), ...(encrypt ? { encrypt } : {}) });
        this.options.logger.info({ name }, 'admin API: device created');
        return this.json(res, 201, { devices: await this.devices() });
      }
      case 'PATCH /devices/:arg': {
        const name = badRequest(() => parseDeviceName(parts[1]!));
        const body = await readJson();
        const readOnly = optionalBoolean(body, 'readOnly');
        if (readOnly !== undefined && body.size === undefined) {
          if (!node.setDeviceReadOnly) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'read-only devices need --backend replicated');
          await node.setDeviceReadOnly(name, readOnly);
          this.options.logger.info({ name, readOnly }, 'admin API: device flags set');
          return this.json(res, 200, { devices: await this.devices() });
        }
        if (readOnly !== undefined) throw new HttpError(400, 'XDEVICE_ERR_INVALID', 'give "size" or "readOnly", not both');
        const size = requireSize(body);
        const allowShrink = optionalBoolean(body, 'allowShrink') ?? false;
        const forced = optionalBoolean(body, 'force') ?? force;
        const current = (await node.devices()).find((d) => d.name === name);
        if (current && size < current.size) {
          if (!allowShrink) throw new HttpError(400, 'XDEVICE_ERR_INVALID', `shrinking ${name} from ${current.size} to ${size} bytes discards its tail: pass allowShrink (xdevice-cli --allow-shrink)`);
          await this.clearClients(name, forced, 'shrink');
        }
        await node.resizeDevice(name, size, { allowShrink });
        this.options.logger.info({ name, size }, 'admin API: device resized');
        return this.json(res, 200, { devices: await this.devices() });
      }
      case 'DELETE /devices/:arg': {
        const name = badRequest(() => parseDeviceName(parts[1]!));
        if (!(await node.devices()).some((d) => d.name === name)) throw new HttpError(404, 'XDEVICE_ERR_NOT_FOUND', `no device ${name}`);
        await this.clearClients(name, force, 'delete');
        await node.deleteDevice(name);
        this.options.logger.info({ name }, 'admin API: device deleted');
        return this.json(res, 200, { devices: await this.devices() });
      }
      case 'GET /devices/:arg/snapshots': {
        const name = badRequest(() => parseDeviceName(parts[1]!));
        if (!node.snapshots) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'snapshots need --backend replicated');
        return this.json(res, 200, { snapshots: await node.snapshots(name) });
      }
      case 'POST /devices/:arg/snapshots': {
        const name = badRequest(() => parseDeviceName(parts[1]!));
        if (!node.createSnapshot) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'snapshots need --backend replicated');
        const snapshot = await node.createSnapshot(name, requireString(await readJson(), 'name'));
        this.options.logger.info({ device: name, snapshot: snapshot.name, index: snapshot.index }, 'admin API: snapshot created');
        return this.json(res, 201, snapshot);
      }
      case 'DELETE /devices/:arg/snapshots': {
        const name = badRequest(() => parseDeviceName(parts[1]!));
        if (!node.deleteSnapshot) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'snapshots need --backend replicated');
        const snapshot = requireString(await readJson(), 'name');
        await node.deleteSnapshot(name, snapshot);
        this.options.logger.info({ device: name, snapshot }, 'admin API: snapshot deleted');
        return this.json(res, 200, { snapshots: await node.snapshots!(name) });
      }
      case 'POST /devices/:arg/disconnect': {
        const name = badRequest(() => parseDeviceName(parts[1]!));
        const disconnected = (await this.options.exports?.disconnect(name)) ?? 0;
        this.options.logger.info({ name, disconnected }, 'admin API: clients disconnected');
        return this.json(res, 200, { device: name, disconnected });
      }
      case 'POST /devices/:arg/verify': {
        const name = badRequest(() => parseDeviceName(parts[1]!));
        if (!node.verifyDevice || !node.verifyReport) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'verify compares replicas: it needs --backend replicated');
        const id = await node.verifyDevice(name);
        this.options.logger.info({ name, id }, 'admin API: verify started');
        return this.json(res, 202, node.verifyReport(id));
      }
      case 'POST /keys/:arg': {
        if (parts[1] !== 'rotate') throw new HttpError(404, 'XDEVICE_ERR_NOT_FOUND', `no such endpoint: ${req.method ?? ''} ${url.pathname}`);
        if (!node.rotateKey) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'key rotation needs --backend replicated');
        return this.json(res, 200, await node.rotateKey());
      }
      case 'POST /devices/:arg/rekey': {
        const name = badRequest(() => parseDeviceName(parts[1]!));
        if (!node.rekeyDevice) throw new HttpError(501, 'XDEVICE_ERR_UNSUPPORTED', 'rekey needs --backend replicated');
        return this.json(res, 202, await node.rekeyDevice(name));
      }
      case 'GET /verify':
        return this.json(res, 200, { verifies: node.verifyReports?.() ?? [] });
      case 'GET /verify/:arg': {
        const id = Number(parts[1]);
        if (!/^[0-9]{1,15}$/.test(parts[1]!) || !Number.isSafeInteger(id)) throw new HttpError(400, 'XDEVICE_ERR_INVALID', `bad verify id "${parts[1]}"`);
        if (!node.verifyReport) throw new HttpError(404, 'XDEVICE_ERR_NOT_FOUND', `no verify ${id}`);
        return this.json(res, 200, node.verifyReport(id));
      }
      case 'GET /audit':
        return this.json(res, 200, await auditResponse(this.options.auditReader, url.searchParams));
      case 'GET /events':
        return this.json(res, 200, { events: this.options.events?.list() ?? [] });
      case 'GET /metrics': {
        const text = await this.options.metrics.metrics();
        res.writeHead(200, { 'Content-Type': this.options.metrics.contentType });
        res.end(text);
        return;
      }
      default:
        // A row in ROUTES without its case here: a bug, not the caller's mistake.
        throw new HttpError(500, 'XDEVICE_ERR_INTERNAL', `${route} has a row in src/admin/routes.ts but no handler`);
    }
  }

  /** Devices with the number of NBD clients connected to each on this node. */
  private async devices(): Promise<(DeviceInfo & { clients: number })[]> {
    const exports = this.options.exports;
    return (await this.options.node.devices()).map((d) => ({ ...d, clients: exports?.clients(d.name) ?? 0 }));
  }

  /** Delete and shrink break connected clients: refused unless forced, and forced means they are cut off first. */
  private async clearClients(name: string, force: boolean, what: string): Promise<void> {
    const exports = this.options.exports;
    const clients = exports?.clients(name) ?? 0;
    if (clients === 0) return;
    if (!force) {
      throw new HttpError(409, 'XDEVICE_ERR_BUSY', `${clients} NBD client(s) are connected to ${name} on this node: disconnect them, or ${what} with force (xdevice-cli --force), which disconnects them first`, { clients });
    }
    const n = await exports!.disconnect(name);
    this.options.logger.warn({ name, disconnected: n }, `admin API: clients disconnected before a forced ${what}`);
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
    if (status === 401) res.setHeader('WWW-Authenticate', 'Bearer realm="xdevice"');
    this.json(res, status, { error: { code, message, ...extra } });
  }
}

/** The caller's address for logs and the audit trail: `ip:port` (`[v6]:port`). */
function sourceOf(req: IncomingMessage): string {
  const { remoteAddress, remotePort } = req.socket;
  return remoteAddress ? formatHostPort({ host: remoteAddress, port: remotePort ?? 0 }) : 'unknown';
}

async function readJsonBody(req: IncomingMessage): Promise<Record<string, unknown>> {
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

/** The configuration's device size rules (whole, in range, block-aligned), for a number of bytes or "64MiB". */
function requireSize(body: Record<string, unknown>): number {
  const v = body.size;
  if (typeof v !== 'number' && typeof v !== 'string') throw new HttpError(400, 'XDEVICE_ERR_INVALID', '"size" (bytes, or a string like "1GiB") is required');
  return badRequest(() => parseDeviceSize(v));
}

function optionalBoolean(body: Record<string, unknown>, key: string): boolean | undefined {
  const v = body[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new HttpError(400, 'XDEVICE_ERR_INVALID', `"${key}" must be true or false`);
  return v;
}

function flag(v: string | null, key: string): boolean {
  if (v === null || v === '0' || v === 'false') return false;
  if (v === '' || v === '1' || v === 'true') return true;
  throw new HttpError(400, 'XDEVICE_ERR_INVALID', `?${key}= must be true or false`);
}

function nodeId(id: string): string {
  return badRequest(() => parseNodeId(id));
}

/** Runs a configuration parser; its complaint becomes a 400. */
function badRequest<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new HttpError(400, 'XDEVICE_ERR_INVALID', (err as Error).message);
  }
}
