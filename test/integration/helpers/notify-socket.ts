// A service manager's side of sd_notify: a unix datagram socket (Node has none,
// so a few lines of Python hold it) whose datagrams arrive here as lines.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { tempDir, waitFor } from './tools.ts';

const LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("bound", flush=True)
while True:
    data = s.recv(65536)
    for line in data.decode().split("\\n"):
        if line:
            print(line, flush=True)
`;

export interface NotifySocket {
  path: string;
  messages: string[];
  waitFor(line: string, timeoutMs?: number): Promise<void>;
  close(): void;
}

export async function notifySocket(): Promise<NotifySocket> {
  const path = join(tempDir('notify'), 'notify.sock');
  const child = spawn('/usr/bin/python3', ['-c', LISTENER, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  const messages: string[] = [];
  let buffered = '';
  child.stdout!.on('data', (c: Buffer) => {
    buffered += c.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    messages.push(...lines);
  });
  await waitFor('the notify socket', async () => messages.includes('bound'), 10_000, 20);
  return {
    path,
    messages,
    waitFor: (line, timeoutMs = 30_000) => waitFor(`sd_notify "${line}"`, async () => messages.includes(line), timeoutMs, 20).then(() => {}),
    close: () => child.kill('SIGKILL'),
  };
}
