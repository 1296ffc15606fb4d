// A small client of the admin API that finds its way to the leader, the way
// etcdctl follows --endpoints: reads go to the first endpoint that answers,
// changes go to the leader (found through /status, or through a 421 answer).
// It speaks HTTPS to an https:// endpoint, and to every endpoint when given a
// CA or a client certificate (an HTTPS admin listener, admin-tls-*).

import { request } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { XDeviceError } from '../errors.ts';
import type { Member, NodeStatus } from '../admin/api.ts';
import { isIP } from 'node:net';
import { parseHostPort, type HostPort } from '../parse.ts';

export class AdminClientError extends XDeviceError {
  constructor(
    code: string,
    message: string,
    readonly httpStatus?: number,
  ) {
    super(code, message);
  }
}

export interface AdminResponse<T> {
  status: number;
  body: T;
  endpoint: string;
}

/** PEM contents for HTTPS: the CA that signed the admin listener's certificate, and this client's certificate and key. */
export interface AdminClientTls {
  ca?: Buffer | undefined;
  cert?: Buffer | undefined;
  key?: Buffer | undefined;
}

export class AdminClient {
  constructor(
    readonly endpoints: string[],
    private readonly token = '',
    private readonly timeoutMs = 5_000,
    private readonly tls?: AdminClientTls,
  ) {
    if (endpoints.length === 0) throw new AdminClientError('XDEVICE_ERR_CONFIG', 'no endpoints given');
  }

  /** HTTPS for an https:// endpoint; for a bare HOST:PORT (a member's published address too) when any endpoint is https:// or TLS material was given. */
  private https(endpoint: string): boolean {
    if (/^https:\/\//i.test(endpoint)) return true;
    if (/^http:\/\//i.test(endpoint)) return false;
    return this.tls !== undefined || this.endpoints.some((e) => /^https:\/\//i.test(e));
  }

  /** One HTTP request to one endpoint; JSON in and out. */
  async call<T = unknown>(endpoint: string, method: string, path: string, body?: unknown): Promise<AdminResponse<T>> {
    return await this.callRaw<T>(endpoint, method, path, body === undefined ? undefined : Buffer.from(JSON.stringify(body)));
  }

  /**
   * One HTTP request with a body sent as given (tests send malformed JSON);
   * the reply as `call` reads it: JSON when it says so, text otherwise.
   */
  async callRaw<T = unknown>(endpoint: string, method: string, path: string, payload?: string | Buffer): Promise<AdminResponse<T>> {
    const { host, port } = endpointAddress(endpoint);
    if (typeof payload === 'string') payload = Buffer.from(payload);
    const https = this.https(endpoint);
    return await new Promise<AdminResponse<T>>((resolve, reject) => {
      const req = (https ? httpsRequest : request)(
        {
          host,
          port,
          ...(https ? { ca: this.tls?.ca, cert: this.tls?.cert, key: this.tls?.key, servername: isIP(host) ? undefined : host } : {}),
          method,
          path,
          timeout: this.timeoutMs,
          headers: {
            Accept: 'application/json',
            ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}),
            ...(this.token ? { Authorization: `Bearer ${this.token}` } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = text;
            if ((res.headers['content-type'] ?? '').includes('json')) {
              try {
                parsed = JSON.parse(text);
              } catch {
                return reject(new AdminClientError('XDEVICE_ERR_PROTOCOL', `${endpoint}: bad JSON in reply`));
              }
            }
            resolve({ status: res.statusCode ?? 0, body: parsed as T, endpoint });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new AdminClientError('XDEVICE_ERR_TIMEOUT', `${endpoint}: no answer within ${this.timeoutMs} ms`)));
      req.on('error', (err) =>
        reject(err instanceof AdminClientError ? err : new AdminClientError('XDEVICE_ERR_UNREACHABLE', `${endpoint}: ${(err as Error).message}`)),
      );
      req.end(payload);
    });
  }

  /** GET from the first endpoint that answers. */
  async read<T>(path: string): Promise<AdminResponse<T>> {
    const errors: string[] = [];
    for (const endpoint of this.endpoints) {
      try {
        const res = await this.call<T>(endpoint, 'GET', path);
        return this.check(res);
      } catch (err) {
        if (err instanceof AdminClientError && err.code !== 'XDEVICE_ERR_UNREACHABLE' && err.code !== 'XDEVICE_ERR_TIMEOUT') throw err;
        errors.push((err as Error).message);
      }
    }
    throw new AdminClientError('XDEVICE_ERR_UNREACHABLE', `no endpoint answered: ${errors.join('; ')}`);
  }

  /** Status of every endpoint (unreachable or refusing ones as errors, with the error's code). */
  async statusAll(): Promise<{ endpoint: string; status?: NodeStatus; error?: string; code?: string }[]> {
    return await Promise.all(
      this.endpoints.map(async (endpoint) => {
        try {
          const res = this.check(await this.call<NodeStatus>(endpoint, 'GET', '/status'));
          return { endpoint, status: res.body };
        } catch (err) {
          return { endpoint, error: (err as Error).message, ...(err instanceof AdminClientError ? { code: err.code } : {}) };
        }
      }),
    );
  }

  /** The leader's admin endpoint, as the nodes see it. */
  async findLeader(): Promise<string> {
    const all = await this.statusAll();
    const leader = all.find((s) => s.status?.role === 'leader' || s.status?.role === 'standalone');
    if (leader) return leader.endpoint;
    // The leader may not be among --endpoints: ask a member that knows it.
    for (const s of all) {
      const id = s.status?.leader;
      if (!id) continue;
      try {
        const res = this.check(await this.call<{ members: Member[] }>(s.endpoint, 'GET', '/members'));
        const address = res.body.members.find((m) => m.id === id)?.adminAddress;
        if (address) return address;
      } catch {
        // try the next one
      }
    }
    const refused = all.find((s) => s.code === 'XDEVICE_ERR_UNAUTHORIZED');
    if (all.every((s) => s.error) && refused) throw new AdminClientError(refused.code!, refused.error!, 401);
    if (all.every((s) => s.error)) throw new AdminClientError('XDEVICE_ERR_UNREACHABLE', `no endpoint answered: ${all.map((s) => s.error).join('; ')}`);
    // A member that knows the leader forwards what Raft can forward (device
    // changes); leader-only calls come back 421 naming the leader.
    const follower = all.find((s) => s.status?.leader);
    if (follower) return follower.endpoint;
    throw new AdminClientError('XDEVICE_ERR_NO_LEADER', 'no endpoint knows a leader (is a majority of the cluster up?)');
  }

  /** A change: sent to the leader, retried on the others if the leader moved. */
  async change<T>(method: string, path: string, body?: unknown): Promise<AdminResponse<T>> {
    let target = await this.findLeader();
    const tried = new Set<string>();
    for (;;) {
      tried.add(target);
      const res = await this.call<T>(target, method, path, body);
      if (res.status === 421) {
        const next = this.endpoints.find((e) => !tried.has(e));
        if (next) {
          target = next;
          continue;
        }
        const leader = (res.body as { error?: { leader?: string } })?.error?.leader;
        if (leader) {
          throw new AdminClientError('XDEVICE_ERR_NOT_LEADER', `${target}: only the leader (${leader}) can do this and its admin address is not known here; add it to --endpoints`, 421);
        }
      }
      return this.check(res);
    }
  }

  private check<T>(res: AdminResponse<T>): AdminResponse<T> {
    if (res.status >= 200 && res.status < 300) return res;
    const err = (res.body as { error?: { code?: string; message?: string } })?.error;
    throw new AdminClientError(err?.code ?? `HTTP_${res.status}`, `${res.endpoint}: ${err?.message ?? `HTTP ${res.status}`}`, res.status);
  }
}

/** An endpoint as HOST:PORT (a leading http:// or https:// and a trailing / are allowed), by the one HOST:PORT parser. */
export function endpointAddress(endpoint: string): HostPort {
  try {
    return parseHostPort(endpoint.replace(/^https?:\/\//i, '').replace(/\/$/, ''));
  } catch (err) {
    throw new AdminClientError('XDEVICE_ERR_CONFIG', `endpoint: ${(err as Error).message}`);
  }
}
