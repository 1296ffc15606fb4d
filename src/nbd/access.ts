// Who may attach which export (export-allow): the identity a connection
// proved in its TLS handshake (a verified client certificate's subject, or a
// TLS-PSK identity) against each export's allow list. An export without a
// list is open to every client, as before; one with a list only to the
// principals on it, read-only for those granted `ro`.

import { formatPrincipal, type ExportGrant, type GrantPrincipal } from '../parse.ts';

/** What a connection proved about its client: nothing (no TLS, or TLS without client authentication), or a principal. */
export type ClientIdentity = GrantPrincipal | { kind: 'anonymous' };

export const ANONYMOUS: ClientIdentity = { kind: 'anonymous' };

export type AccessDecision =
  | { allowed: true; readOnly: boolean }
  /** tlsRequired: the client has not started TLS, and only TLS can prove a listed identity. */
  | { allowed: false; tlsRequired: boolean; reason: string };

/** The principal as logs and the audit trail name it: `/CN=alice/O=Ops`, `psk:alice`, `anonymous`. */
export function describeIdentity(identity: ClientIdentity): string {
  return identity.kind === 'anonymous' ? 'anonymous' : formatPrincipal(identity);
}

/** Every attribute type the grant names has exactly the grant's values in the certificate subject. */
function subjectMatches(grant: Array<[string, string]>, subject: Array<[string, string]>): boolean {
  const valuesOf = (attributes: Array<[string, string]>, type: string): string[] =>
    attributes.filter(([t]) => t.toLowerCase() === type).map(([, v]) => v).sort();
  for (const type of new Set(grant.map(([t]) => t.toLowerCase()))) {
    const wanted = valuesOf(grant, type);
    const held = valuesOf(subject, type);
    if (wanted.length !== held.length || wanted.some((v, i) => v !== held[i])) return false;
  }
  return true;
}

function matches(principal: GrantPrincipal, identity: ClientIdentity): boolean {
  if (principal.kind === 'psk') return identity.kind === 'psk' && identity.identity === principal.identity;
  return identity.kind === 'subject' && subjectMatches(principal.attributes, identity.attributes);
}

export class ExportAccessPolicy {
  private readonly byExport = new Map<string, ExportGrant[]>();

  constructor(grants: readonly ExportGrant[] = []) {
    for (const grant of grants) this.byExport.set(grant.exportName, [...(this.byExport.get(grant.exportName) ?? []), grant]);
  }

  /** True when some export has an allow list. */
  get restricting(): boolean {
    return this.byExport.size > 0;
  }

  /** Whether `identity` may attach export `name`, and read-only or not; `tls` says whether the connection has started TLS. */
  decide(name: string, identity: ClientIdentity, tls: boolean): AccessDecision {
    const grants = this.byExport.get(name);
    if (grants === undefined) return { allowed: true, readOnly: false };
    if (!tls) return { allowed: false, tlsRequired: true, reason: `export ${name} has an allow list: start TLS with a listed client certificate or PSK identity` };
    const held = grants.filter((grant) => matches(grant.principal, identity));
    if (held.length === 0) {
      const who = identity.kind === 'anonymous' ? 'a client without a verified certificate or PSK identity' : describeIdentity(identity);
      return { allowed: false, tlsRequired: false, reason: `${who} is not on the allow list of export ${name}` };
    }
    // Several entries may match one certificate (/CN=alice and /CN=alice/O=Ops): rw wins.
    return { allowed: true, readOnly: held.every((grant) => grant.access === 'ro') };
  }
}
