// The status page on the admin port, in a real browser (Debian's chromium,
// headless) against a live 3-node cluster: the page served by the leader shows
// every member with its role and link, the device, the commit latency
// histogram and recent events; a follower SIGKILLed shows as down, and as up
// again once restarted. A screenshot of the page with the node down is written
// to the test's temp directory (its path is printed) — docs/status-page.png is one.
import t from 'tap';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { adminApi, Cluster } from './helpers/launcher.ts';
import { ROOT, tempDir, waitFor } from './helpers/tools.ts';
import { NbdClient } from '../../src/nbd/client.ts';
import type { NodeStatus } from '../../src/admin/api.ts';

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--hide-scrollbars'];

/** Runs chromium once on `url` with a fresh profile; resolves with its stdout. */
function chromium(url: string, extra: string[]): Promise<string> {
  const profile = tempDir('chromium');
  return new Promise((resolve, reject) => {
    const child = spawn(CHROMIUM, [...FLAGS, `--user-data-dir=${profile}`, ...extra, url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`chromium exited ${code}: ${err.slice(-2000)}`));
    });
  });
}

/** The page's DOM after its script has loaded the node's data (virtual time lets the first refreshes run). */
async function dom(url: string): Promise<string> {
  return await chromium(url, ['--dump-dom', '--virtual-time-budget=5000', '--run-all-compositor-stages-before-draw']);
}

function memberState(html: string, id: string): string | undefined {
  return new RegExp(`data-member="${id}" data-state="(\\w+)"`).exec(html)?.[1];
}

t.test('the status page shows the cluster, and a killed node down then back', { timeout: 420_000 }, async (t) => {
  t.ok(existsSync(CHROMIUM), 'chromium is installed (scripts/setup-test-host.sh)');
  const cluster = await Cluster.start({ size: 3, devices: ['default:16MiB'] });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leaderIndex();
  const slot = cluster.slots[leader]!;
  const page = `http://127.0.0.1:${slot.ports.admin}/`;

  const nbd = await NbdClient.connect({ host: '127.0.0.1', port: slot.ports.nbd });
  await nbd.openDevice('default');
  for (let i = 0; i < 32; i++) await nbd.write(i * 65536, Buffer.alloc(65536, i + 1));
  await nbd.close();

  const plain = await adminApi(slot.ports.admin, 'GET', '/');
  t.equal(plain.status, 200);
  t.match(plain.body, /^<!doctype html>/, 'GET / is the HTML page');

  const healthy = await dom(page);
  t.match(healthy, /data-loaded="true"/, 'the script loaded the node’s data');
  for (const s of cluster.slots) t.equal(memberState(healthy, s.id), 'up', `${s.id} shown up`);
  t.match(healthy, new RegExp(`<tr data-member="${slot.id}" data-state="up" class="leader">`), 'the leader is marked');
  t.match(healthy, /<tr data-device="default"><td>default<\/td><td class="num">16\.0 MiB<\/td>/, 'the device and its size');
  t.notMatch(healthy.slice(healthy.indexOf('id="hist-write"'), healthy.indexOf('id="hist-fsync"')), /no samples yet/, 'the commit latency histogram has samples');
  t.match(healthy, /<tr data-check="quorum"><td>quorum<\/td><td class="up">ok/, 'health checks');

  const victim = (leader + 1) % 3;
  const victimId = cluster.slots[victim]!.id;
  await cluster.kill(victim);
  await waitFor('the leader to see the link down', async () => {
    const st = (await adminApi(slot.ports.admin, 'GET', '/status')).body as NodeStatus;
    return st.peers.find((p) => p.id === victimId)?.connected === false;
  }, 60_000);
  const down = await dom(page);
  t.equal(memberState(down, victimId), 'down', `${victimId} shown down after SIGKILL`);
  t.equal(memberState(down, cluster.slots[(leader + 2) % 3]!.id), 'up', 'the other follower still up');
  t.match(down, new RegExp(`<li class="warn">.*peer link lost.*peer=${victimId}`), 'the loss is in the recent events');

  const shot = join(tempDir('status-shot'), 'status-page.png');
  await chromium(page, ['--screenshot=' + shot, '--window-size=1000,860', '--virtual-time-budget=5000']);
  t.ok(statSync(shot).size > 10_000, `a screenshot: ${shot}`);
  t.same([...readFileSync(shot).subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47], 'a PNG');
  t.comment(`status page screenshot (node ${victimId} down): ${shot}`);
  if (process.env.STATUS_PAGE_SCREENSHOT) copyFileSync(shot, join(ROOT, process.env.STATUS_PAGE_SCREENSHOT));

  await cluster.startNode(victim);
  await waitFor('the leader to see the link up', async () => {
    const st = (await adminApi(slot.ports.admin, 'GET', '/status')).body as NodeStatus;
    return st.peers.find((p) => p.id === victimId)?.connected === true;
  }, 60_000);
  const back = await dom(page);
  t.equal(memberState(back, victimId), 'up', `${victimId} shown up again after restart`);
  t.match(back, new RegExp(`<li class="info">.*peer link up.*peer=${victimId}`), 'the return is in the recent events');
});
