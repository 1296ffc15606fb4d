// The handshake phase: fixed newstyle option haggling up to the point where a
// client enters transmission (NBD_OPT_GO or NBD_OPT_EXPORT_NAME). It knows
// nothing of sockets: bytes come and go through a HandshakeIo, so tests can
// drive it with a script. A client that breaks a MUST makes this throw
// NbdProtocolError and the caller hangs up (a hard disconnect). Exports with
// an allow list (./access.ts) are TLS-only in the spec's SELECTIVETLS sense:
// without TLS, GO and INFO get NBD_REP_ERR_TLS_REQD; with TLS but an identity
// not on the list, NBD_REP_ERR_POLICY; EXPORT_NAME, which cannot carry an
// error, ends the session. NBD_OPT_LIST shows only what the client may attach.

import type { Logger } from 'pino';
import type { BlockDevice, DeviceTable } from '../device/block-device.ts';
import { limits } from '../limits.ts';
import {
  BASE_ALLOCATION,
  BASE_ALLOCATION_CONTEXT_ID,
  CLIENT_FLAGS_BYTES,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NbdInfo,
  NbdOption,
  NbdReply,
  OPTION_HEADER_BYTES,
  optionName,
} from './constants.ts';
import {
  decodeClientFlags,
  decodeExportNamePayload,
  decodeInfoRequestPayload,
  decodeMetaContextRequestPayload,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSizePayload,
  encodeInfoExportPayload,
  encodeInfoStringPayload,
  encodeMetaContextPayload,
  encodeOptionError,
  encodeOptionReply,
  encodeServerPayload,
} from './codec.ts';
import { ANONYMOUS, ExportAccessPolicy, type ClientIdentity } from './access.ts';
import { NbdProtocolError } from './errors.ts';
import type { TlsMode } from './tls.ts';


export interface HandshakeIo {
  /** Reads exactly n bytes (rejects when the peer goes away). */
  read(n: number): Promise<Buffer>;
  write(buf: Buffer): void;
  /** Bytes received but not yet read: must be 0 when STARTTLS is acknowledged. */
  readonly buffered: number;
  /** Replaces the transport by TLS over it; resolves with what the client proved once the TLS handshake is done. */
  startTls(): Promise<ClientIdentity>;
}

export interface HandshakeConfig {
  devices: DeviceTable;
  tlsMode: TlsMode;
  isShuttingDown(): boolean;
  logger?: Logger | undefined;
  /** Export allow lists; without one every export is open. */
  access?: ExportAccessPolicy | undefined;
  /** Told of every option the allow lists refuse (GO, EXPORT_NAME, INFO, meta contexts of an export), before the refusal is sent. */
  onRefused?: ((refusal: AccessRefusal) => void) | undefined;
}

export interface AccessRefusal {
  /** NBD_OPT_GO, NBD_OPT_EXPORT_NAME, NBD_OPT_INFO, NBD_OPT_SET_META_CONTEXT, NBD_OPT_LIST_META_CONTEXT. */
  option: string;
  /** The export asked for (the default export's real name when "" was asked for). */
  exportName: string;
  identity: ClientIdentity;
  reason: string;
}

/** What the client and server agreed on, handed to the transmission phase. */
export interface Negotiated {
  device: BlockDevice;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** base:allocation was selected for this export (BLOCK_STATUS allowed). */
  baseAllocation: boolean;
  /** Other meta contexts of the export selected (device.metaContexts), with their ids; BLOCK_STATUS answers each. */
  contexts?: { id: number; name: string }[];
  tls: boolean;
}

/** readOnly: this connection may not write even if the device can (an `ro` grant); writes then get EPERM. */
export function transmissionFlagsFor(device: BlockDevice, structuredReplies: boolean, readOnly = false): number {
  const c = device.capabilities;
  const ro = c.readOnly || readOnly;
  let flags = NBD_FLAG_HAS_FLAGS;
  if (ro) flags |= NBD_FLAG_READ_ONLY;
  if (c.canFlush) flags |= NBD_FLAG_SEND_FLUSH;
  if (c.canFua) flags |= NBD_FLAG_SEND_FUA;
  if (!ro && c.canTrim) flags |= NBD_FLAG_SEND_TRIM;
  if (!ro && c.canWriteZeroes) {
    flags |= NBD_FLAG_SEND_WRITE_ZEROES;
    if (c.canFastZero) flags |= NBD_FLAG_SEND_FAST_ZERO;
  }
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  if (c.canMultiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
  if (c.canCache) flags |= NBD_FLAG_SEND_CACHE;
  return flags;
}

/** Export name → device; "" is the default export. */
export function resolveExport(devices: DeviceTable, name: string): BlockDevice | undefined {
  if (name === '') {
    const fallback = devices.defaultName;
    return fallback === undefined ? undefined : devices.get(fallback);
  }
  return devices.get(name);
}

interface MetaContextSelection {
  deviceName: string;
  baseAllocation: boolean;
  contexts: { id: number; name: string }[];
}

/** Context ids: base:allocation is BASE_ALLOCATION_CONTEXT_ID, an export's other contexts follow it in their order. */
function contextId(index: number): number {
  return BASE_ALLOCATION_CONTEXT_ID + 1 + index;
}

/**
 * The export's own contexts a query names: an exact name, or for LIST a
 * namespace or leaf prefix ending in ':' ("qemu:", "qemu:dirty-bitmap:").
 */
function matchContexts(offered: readonly string[], query: string, isSet: boolean): number[] {
  const out: number[] = [];
  offered.forEach((name, i) => {
    if (name === query || (!isSet && query.endsWith(':') && name.startsWith(query))) out.push(i);
  });
  return out;
}

/**
 * Runs the handshake. Resolves with the negotiated export, or undefined when
 * the client aborted (NBD_OPT_ABORT). Throws NbdProtocolError on a violation.
 */
export async function negotiate(io: HandshakeIo, config: HandshakeConfig): Promise<Negotiated | undefined> {
  const { devices, tlsMode, logger } = config;
  const access = config.access ?? new ExportAccessPolicy();
  io.write(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));

  const clientFlags = decodeClientFlags(await io.read(CLIENT_FLAGS_BYTES));
  if ((clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
    throw new NbdProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
  }
  const fixedNewstyle = (clientFlags & NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;

  let tls = false;
  let identity: ClientIdentity = ANONYMOUS;
  let structuredReplies = false;
  let metaContext: MetaContextSelection | undefined;

  const reply = (option: number, type: number, payload?: Buffer): void => io.write(encodeOptionReply(option, type, payload));
  const replyError = (option: number, type: number, message: string): void => {
    logger?.debug({ option: optionName(option), reply: type >>> 0, message }, 'nbd option refused');
    io.write(encodeOptionError(option, type, message));
  };

  for (let count = 0; ; count++) {
    if (count >= limits.handshakeOptionsMax) {
      throw new NbdProtocolError(`more than ${limits.handshakeOptionsMax} options in one handshake`);
    }
    const header = decodeOptionHeader(await io.read(OPTION_HEADER_BYTES));
    const { option, length } = header;
    if (length > limits.handshakeOptionBytesMax) {
      // Reading (or even skipping) gigabytes of option data would be a denial of service.
      throw new NbdProtocolError(`option ${optionName(option)} payload of ${length} bytes exceeds the limit`);
    }
    const payload = await io.read(length);
    logger?.debug({ option: optionName(option), length }, 'nbd option');

    if (!fixedNewstyle && option !== NbdOption.EXPORT_NAME) {
      // Without fixed newstyle there is no way to send an error reply.
      throw new NbdProtocolError(`option ${optionName(option)} from a client without fixed newstyle`);
    }
    if (tlsMode === 'require' && !tls && option !== NbdOption.STARTTLS && option !== NbdOption.ABORT) {
      if (option === NbdOption.EXPORT_NAME) {
        throw new NbdProtocolError('NBD_OPT_EXPORT_NAME before TLS while TLS is required');
      }
      replyError(option, NbdReply.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
      continue;
    }
    if (config.isShuttingDown() && option !== NbdOption.ABORT) {
      if (option === NbdOption.EXPORT_NAME) throw new NbdProtocolError('server is shutting down');
      replyError(option, NbdReply.ERR_SHUTDOWN, 'server is shutting down');
      continue;
    }

    switch (option) {
      case NbdOption.EXPORT_NAME: {
        const decoded = decodeExportNamePayload(payload);
        if (!decoded.ok) throw new NbdProtocolError(decoded.reason);
        const device = resolveExport(devices, decoded.name);
        if (device === undefined) {
          // EXPORT_NAME cannot carry an error: the spec says terminate the session.
          throw new NbdProtocolError(`NBD_OPT_EXPORT_NAME: no export named ${JSON.stringify(decoded.name)}`);
        }
        const unavailableWhy = device.unavailable?.();
        if (unavailableWhy !== undefined) throw new NbdProtocolError(`NBD_OPT_EXPORT_NAME: export ${device.name} not served here: ${unavailableWhy}`);
        const decision = access.decide(device.accessName ?? device.name, identity, tls);
        if (!decision.allowed) {
          config.onRefused?.({ option: `NBD_OPT_${optionName(option)}`, exportName: device.name, identity, reason: decision.reason });
          throw new NbdProtocolError(`NBD_OPT_EXPORT_NAME refused: ${decision.reason}`);
        }
        const transmissionFlags = transmissionFlagsFor(device, structuredReplies, decision.readOnly);
        io.write(encodeExportNameReply(device.size, transmissionFlags, noZeroes));
        return {
          device,
          transmissionFlags,
          structuredReplies,
          baseAllocation: metaContext?.deviceName === device.name && metaContext.baseAllocation,
          contexts: metaContext?.deviceName === device.name ? metaContext.contexts : [],
          tls,
        };
      }

      case NbdOption.ABORT:
        // The spec says to ignore any data here rather than reject it.
        reply(option, NbdReply.ACK);
        return undefined;

      case NbdOption.LIST: {
        if (length !== 0) {
          replyError(option, NbdReply.ERR_INVALID, 'NBD_OPT_LIST takes no data');
          break;
        }
        for (const device of devices.list()) {
          if (!access.decide(device.accessName ?? device.name, identity, tls).allowed) continue;
          reply(option, NbdReply.SERVER, encodeServerPayload(device.name, device.description ?? ''));
        }
        reply(option, NbdReply.ACK);
        break;
      }

      case NbdOption.STARTTLS: {
        if (length !== 0) {
          replyError(option, NbdReply.ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
          break;
        }
        if (tlsMode === 'off') {
          replyError(option, NbdReply.ERR_POLICY, 'TLS is not enabled on this server');
          break;
        }
        if (tls) {
          replyError(option, NbdReply.ERR_INVALID, 'TLS is already active');
          break;
        }
        if (io.buffered !== 0) {
          throw new NbdProtocolError('client sent data after NBD_OPT_STARTTLS before the reply');
        }
        reply(option, NbdReply.ACK);
        identity = await io.startTls();
        tls = true;
        // The spec: nothing negotiated before STARTTLS survives it.
        structuredReplies = false;
        metaContext = undefined;
        break;
      }

      case NbdOption.INFO:
      case NbdOption.GO: {
        const decoded = decodeInfoRequestPayload(payload);
        if (!decoded.ok) {
          replyError(option, NbdReply.ERR_INVALID, decoded.reason);
          break;
        }
        const device = resolveExport(devices, decoded.name);
        if (device === undefined) {
          replyError(option, NbdReply.ERR_UNKNOWN, `no export named ${JSON.stringify(decoded.name)}`);
          break;
        }
        const decision = access.decide(device.accessName ?? device.name, identity, tls);
        if (!decision.allowed) {
          config.onRefused?.({ option: `NBD_OPT_${optionName(option)}`, exportName: device.name, identity, reason: decision.reason });
          // A server without TLS must never send ERR_TLS_REQD (the spec's NOTLS mode).
          replyError(option, decision.tlsRequired && tlsMode !== 'off' ? NbdReply.ERR_TLS_REQD : NbdReply.ERR_POLICY, decision.reason);
          break;
        }
        const unavailableWhy = device.unavailable?.();
        if (unavailableWhy !== undefined) {
          logger?.warn({ export: device.name, why: unavailableWhy }, 'export refused');
          replyError(option, NbdReply.ERR_UNKNOWN, `export ${device.name} is not served by this node: ${unavailableWhy}`);
          break;
        }
        const transmissionFlags = transmissionFlagsFor(device, structuredReplies, decision.readOnly);
        reply(option, NbdReply.INFO, encodeInfoExportPayload(device.size, transmissionFlags));
        if (decoded.infos.includes(NbdInfo.NAME) || decoded.name !== device.name) {
          reply(option, NbdReply.INFO, encodeInfoStringPayload(NbdInfo.NAME, device.name));
        }
        if (decoded.infos.includes(NbdInfo.DESCRIPTION) && device.description !== undefined) {
          reply(option, NbdReply.INFO, encodeInfoStringPayload(NbdInfo.DESCRIPTION, device.description));
        }
        // Our constraints are the defaults, so sending them unasked is harmless and helps clients size requests.
        reply(
          option,
          NbdReply.INFO,
          encodeInfoBlockSizePayload(
            device.minimumBlockSize ?? limits.nbdBlockSizeMinBytes,
            device.preferredBlockSize ?? limits.nbdBlockSizePreferredBytes,
            limits.requestBytesMax,
          ),
        );
        reply(option, NbdReply.ACK);
        if (option === NbdOption.GO) {
          return {
            device,
            transmissionFlags,
            structuredReplies,
            baseAllocation: metaContext?.deviceName === device.name && metaContext.baseAllocation,
            contexts: metaContext?.deviceName === device.name ? metaContext.contexts : [],
            tls,
          };
        }
        break;
      }

      case NbdOption.STRUCTURED_REPLY: {
        if (length !== 0) {
          replyError(option, NbdReply.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          break;
        }
        if (structuredReplies) {
          replyError(option, NbdReply.ERR_INVALID, 'structured replies are already negotiated');
          break;
        }
        structuredReplies = true;
        reply(option, NbdReply.ACK);
        break;
      }

      case NbdOption.LIST_META_CONTEXT:
      case NbdOption.SET_META_CONTEXT: {
        const isSet = option === NbdOption.SET_META_CONTEXT;
        // SET replaces the selection even when it fails.
        if (isSet) metaContext = undefined;
        if (!structuredReplies) {
          replyError(option, NbdReply.ERR_INVALID, 'negotiate NBD_OPT_STRUCTURED_REPLY first');
          break;
        }
        const decoded = decodeMetaContextRequestPayload(payload);
        if (!decoded.ok) {
          replyError(option, decoded.tooBig ? NbdReply.ERR_TOO_BIG : NbdReply.ERR_INVALID, decoded.reason);
          break;
        }
        const device = resolveExport(devices, decoded.name);
        if (device === undefined) {
          replyError(option, NbdReply.ERR_UNKNOWN, `no export named ${JSON.stringify(decoded.name)}`);
          break;
        }
        const decision = access.decide(device.accessName ?? device.name, identity, tls);
        if (!decision.allowed) {
          config.onRefused?.({ option: `NBD_OPT_${optionName(option)}`, exportName: device.name, identity, reason: decision.reason });
          // ERR_TLS_REQD is for INFO, GO and EXPORT_NAME only (the spec's SELECTIVETLS).
          replyError(option, NbdReply.ERR_POLICY, decision.reason);
          break;
        }
        let baseAllocation = !isSet && decoded.queries.length === 0;
        const offered = device.metaContexts ?? [];
        const chosen = new Set<number>(!isSet && decoded.queries.length === 0 ? offered.map((_, i) => i) : []);
        let malformed: string | undefined;
        for (const query of decoded.queries) {
          const colon = query.indexOf(':');
          if (colon <= 0) {
            malformed = `meta context query ${JSON.stringify(query)} has no namespace`;
            break;
          }
          if (query === BASE_ALLOCATION || (!isSet && query === 'base:')) baseAllocation = true;
          for (const i of matchContexts(offered, query, isSet)) chosen.add(i);
          // Any other namespace or base: leaf is ignored, as the spec requires.
        }
        if (malformed !== undefined) {
          replyError(option, NbdReply.ERR_INVALID, malformed);
          break;
        }
        if (baseAllocation) {
          reply(option, NbdReply.META_CONTEXT, encodeMetaContextPayload(isSet ? BASE_ALLOCATION_CONTEXT_ID : 0, BASE_ALLOCATION));
        }
        const contexts = [...chosen].sort((x, y) => x - y).map((i) => ({ id: contextId(i), name: offered[i]! }));
        for (const c of contexts) reply(option, NbdReply.META_CONTEXT, encodeMetaContextPayload(isSet ? c.id : 0, c.name));
        if (isSet) metaContext = { deviceName: device.name, baseAllocation, contexts };
        reply(option, NbdReply.ACK);
        break;
      }

      default:
        replyError(option, NbdReply.ERR_UNSUP, `option ${optionName(option)} is not supported`);
        break;
    }
  }
}
