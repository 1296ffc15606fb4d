// Test X.509 material made by openssl: certificate authorities, server and
// client certificates signed by them, and directories in libnbd's
// tls-certificates=DIR layout (ca-cert.pem to verify the server,
// client-cert.pem and client-key.pem to present).

import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { run } from './tools.ts';

async function openssl(dir: string, args: string[]): Promise<void> {
  const result = await run('openssl', args, { cwd: dir });
  if (result.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${result.stderr}`);
}

export interface TestCa {
  cert: string;
  key: string;
}

export interface TestCertificate {
  cert: string;
  key: string;
}

/** A self-signed CA in `dir` (NAME-cert.pem, NAME-key.pem). */
export async function makeCa(dir: string, name = 'ca', subject = '/CN=xdevice test CA'): Promise<TestCa> {
  await openssl(dir, ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', subject, '-keyout', `${name}-key.pem`, '-out', `${name}-cert.pem`]);
  return { cert: path.join(dir, `${name}-cert.pem`), key: path.join(dir, `${name}-key.pem`) };
}

/** A certificate for `subject` (openssl -subj form) signed by `ca`: a server one names 127.0.0.1 and localhost. */
export async function issueCertificate(ca: TestCa, dir: string, name: string, subject: string, use: 'server' | 'client'): Promise<TestCertificate> {
  await openssl(dir, ['req', '-newkey', 'rsa:2048', '-nodes', '-subj', subject, '-keyout', `${name}-key.pem`, '-out', `${name}.csr`]);
  writeFileSync(
    path.join(dir, `${name}.ext`),
    use === 'server' ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' : 'extendedKeyUsage=clientAuth\n',
  );
  await openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '2', '-extfile', `${name}.ext`, '-out', `${name}-cert.pem`]);
  return { cert: path.join(dir, `${name}-cert.pem`), key: path.join(dir, `${name}-key.pem`) };
}

/** `dir` in libnbd's layout: trust `serverCa`, present `client` (or no certificate at all). */
export function libnbdCertificateDir(dir: string, serverCa: TestCa, client?: TestCertificate): string {
  mkdirSync(dir, { recursive: true });
  copyFileSync(serverCa.cert, path.join(dir, 'ca-cert.pem'));
  if (client !== undefined) {
    copyFileSync(client.cert, path.join(dir, 'client-cert.pem'));
    copyFileSync(client.key, path.join(dir, 'client-key.pem'));
  }
  return dir;
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate (/CN=client), all in `dir` in libnbd's layout. */
export async function makeCertificates(dir: string): Promise<{ ca: TestCa; server: TestCertificate; client: TestCertificate }> {
  const ca = await makeCa(dir);
  const server = await issueCertificate(ca, dir, 'server', '/CN=server', 'server');
  const client = await issueCertificate(ca, dir, 'client', '/CN=client', 'client');
  return { ca, server, client };
}
