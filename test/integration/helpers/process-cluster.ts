// A cluster of real `xdevice-node` processes on loopback. With `proxied`, every
// directed peer link i→j runs through a FaultProxy, so tests can partition any
// set of nodes from any other, or slow a link down.

import { writeFileSync } from 'node:fs';
import { FaultProxy } from './proxy.ts';
import { freePorts } from './ports.ts';
import { httpGet, startNode, tempDir, waitFor, type NodeProcess } from './node-process.ts';
import type { NodeStatus } from '../../../src/admin/api.ts';

export interface ClusterOptions {
  size: number;
  devices?: string[];
  proxied?: boolean;
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
}

export interface NodeSlot {
  id: string;
  dataDir: string;
  ports: { nbd: number; admin: number; peer: number };
  peers: string;
  proc: NodeProcess | undefined;
  paused: boolean;
}

export class ProcessCluster {
  readonly slots: NodeSlot[] = [];
  /** proxies[i][j]: the link from node i to node j. */
  readonly proxies: (FaultProxy | undefined)[][] = [];

  private constructor(readonly options: ClusterOptions) {}

  static async start(options: ClusterOptions): Promise<ProcessCluster> {
    const c = new ProcessCluster(options);
    await c.boot();
    return c;
  }

  private async boot(): Promise<void> {
    const n = this.options.size;
    const ports = await freePorts(3 * n);
    for (let i = 0; i < n; i++) {
      this.slots.push({
        id: `node${i + 1}`,
        dataDir: tempDir(`node${i + 1}`),
        ports: { nbd: ports[3 * i]!, admin: ports[3 * i + 1]!, peer: ports[3 * i + 2]! },
        peers: '',
        proc: undefined,
        paused: false,
      });
    }
    for (let i = 0; i < n; i++) {
      this.proxies.push([]);
      const peers: string[] = [];
      for (let j = 0; j < n; j++) {
        if (i === j || !this.options.proxied) {
          this.proxies[i]!.push(undefined);
          peers.push(`${this.slots[j]!.id}=127.0.0.1:${this.slots[j]!.ports.peer}`);
          continue;
        }
        const proxy = await FaultProxy.start({ host: '127.0.0.1', port: this.slots[j]!.ports.peer });
        this.proxies[i]!.push(proxy);
        peers.push(`${this.slots[j]!.id}=127.0.0.1:${proxy.port}`);
      }
      this.slots[i]!.peers = peers.join(',');
    }
    await Promise.all(this.slots.map((_, i) => this.startNode(i)));
    await this.devicesReady();
  }

  /** A fresh cluster creates its devices through Raft: wait until every node serves them. */
  async devicesReady(timeoutMs = 60_000): Promise<void> {
    const want = (this.options.devices ?? ['default:64MiB']).map((d) => d.slice(0, d.lastIndexOf(':')));
    await waitFor(
      `devices ${want.join(', ')} on every node`,
      async () => {
        for (let i = 0; i < this.size; i++) {
          if (!this.isUp(i)) continue;
          const res = await httpGet(this.slots[i]!.ports.admin, '/devices');
          if (res.status !== 200) return false;
          const names = (JSON.parse(res.body) as { devices: { name: string }[] }).devices.map((d) => d.name);
          if (!want.every((n) => names.includes(n))) return false;
        }
        return true;
      },
      timeoutMs,
      50,
    );
  }

  async startNode(i: number): Promise<NodeProcess> {
    const slot = this.slots[i]!;
    slot.proc = await startNode({
      id: slot.id,
      dataDir: slot.dataDir,
      ports: slot.ports,
      peers: slot.peers,
      backend: 'replicated',
      devices: this.options.devices ?? ['default:64MiB'],
      ...(this.options.extraArgs ? { extraArgs: this.options.extraArgs } : {}),
      env: { ...this.options.env, XDEVICE_FAULT_FILE: this.faultFile(i) },
    });
    slot.paused = false;
    return slot.proc;
  }

  /** The disk-fault file node i watches (XDEVICE_FAULT_FILE); absent = no faults. */
  faultFile(i: number): string {
    return `${this.slots[i]!.dataDir}-faults.json`;
  }

  /** Slows (delayUs) or fails (errno) node i's disk writes; `{}` clears. */
  setDiskFault(i: number, fault: { delayUs?: number; fdatasyncErrno?: string; pwriteErrno?: string }): void {
    writeFileSync(this.faultFile(i), JSON.stringify(fault));
  }

  get size(): number {
    return this.slots.length;
  }

  isUp(i: number): boolean {
    const p = this.slots[i]!.proc;
    return p !== undefined && p.child.exitCode === null && p.child.signalCode === null;
  }

  async status(i: number): Promise<NodeStatus | undefined> {
    if (!this.isUp(i) || this.slots[i]!.paused) return undefined;
    try {
      const res = await httpGet(this.slots[i]!.ports.admin, '/status');
      return res.status === 200 ? (JSON.parse(res.body) as NodeStatus) : undefined;
    } catch {
      return undefined;
    }
  }

  /** Index of the node that is leader and that every live, connected node agrees on. */
  async leader(timeoutMs = 30_000): Promise<number> {
    return await waitFor(
      'a leader',
      async () => {
        for (let i = 0; i < this.size; i++) {
          const s = await this.status(i);
          if (s?.role === 'leader') return i;
        }
        return undefined;
      },
      timeoutMs,
      50,
    );
  }

  /** Waits until every live node has applied at least `index` (default: the leader's commit). */
  async converged(timeoutMs = 60_000): Promise<void> {
    await waitFor(
      'every live node to catch up with the leader',
      async () => {
        const leader = await this.status(await this.leader(timeoutMs));
        if (!leader) return false;
        for (let i = 0; i < this.size; i++) {
          if (!this.isUp(i)) continue;
          const s = await this.status(i);
          if (!s || s.applied < leader.commit) return false;
        }
        return true;
      },
      timeoutMs,
      100,
    );
  }

  async kill(i: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const slot = this.slots[i]!;
    if (slot.paused) this.resume(i);
    await slot.proc?.kill(signal);
  }

  pause(i: number): void {
    const slot = this.slots[i]!;
    if (!this.isUp(i) || slot.paused) return;
    slot.proc!.child.kill('SIGSTOP');
    slot.paused = true;
  }

  resume(i: number): void {
    const slot = this.slots[i]!;
    if (!slot.paused) return;
    slot.proc?.child.kill('SIGCONT');
    slot.paused = false;
  }

  /** Cuts every link between nodes of different groups. */
  partition(groups: number[][]): void {
    const groupOf = new Map<number, number>();
    groups.forEach((g, k) => g.forEach((i) => groupOf.set(i, k)));
    for (let i = 0; i < this.size; i++) {
      for (let j = 0; j < this.size; j++) {
        const proxy = this.proxies[i]![j];
        if (!proxy) continue;
        if (groupOf.get(i) !== groupOf.get(j)) proxy.set('reset');
      }
    }
  }

  heal(): void {
    for (const row of this.proxies) {
      for (const p of row) {
        if (!p) continue;
        p.set('forward');
        p.delayMs = 0;
      }
    }
  }

  slowLinks(delayMs: number): void {
    for (const row of this.proxies) for (const p of row) if (p) p.delayMs = delayMs;
  }

  async stop(): Promise<void> {
    for (let i = 0; i < this.size; i++) {
      this.resume(i);
      await this.slots[i]!.proc?.kill('SIGKILL');
    }
    for (const row of this.proxies) for (const p of row) await p?.close();
  }

  /** Logs of every node, for failure messages. */
  logs(tailBytes = 4000): string {
    return this.slots.map((s) => `---- ${s.id}\n${s.proc?.output().slice(-tailBytes) ?? '(not running)'}`).join('\n');
  }
}
