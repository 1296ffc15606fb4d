// Numbers of the NBD protocol (../shared/reference/nbd-proto.md). Names follow
// the specification so a reader can grep the spec for them.

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
/** High and low 32-bit halves of the magics, so the hot path avoids BigInt. */
export const NBDMAGIC_HI = 0x4e42444d;
export const NBDMAGIC_LO = 0x41474943;
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
export const OPTION_REPLY_MAGIC_HI = 0x0003e889;
export const OPTION_REPLY_MAGIC_LO = 0x045565a9;

export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const NBD_EXTENDED_REQUEST_MAGIC = 0x21e41c71;

/** Bytes of fixed-size messages. */
export const GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
export const EXPORT_NAME_REPLY_ZEROES_BYTES = 124;

// Handshake flags (server → client).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;

// Client flags (client → server).
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Transmission flags.
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

export const enum NbdOption {
  EXPORT_NAME = 1,
  ABORT = 2,
  LIST = 3,
  PEEK_EXPORT = 4,
  STARTTLS = 5,
  INFO = 6,
  GO = 7,
  STRUCTURED_REPLY = 8,
  LIST_META_CONTEXT = 9,
  SET_META_CONTEXT = 10,
  EXTENDED_HEADERS = 11,
}

export const enum NbdReply {
  ACK = 1,
  SERVER = 2,
  INFO = 3,
  META_CONTEXT = 4,
  ERR_UNSUP = 0x80000001,
  ERR_POLICY = 0x80000002,
  ERR_INVALID = 0x80000003,
  ERR_PLATFORM = 0x80000004,
  ERR_TLS_REQD = 0x80000005,
  ERR_UNKNOWN = 0x80000006,
  ERR_SHUTDOWN = 0x80000007,
  ERR_BLOCK_SIZE_REQD = 0x80000008,
  ERR_TOO_BIG = 0x80000009,
}

/** Bit 31 marks an option reply as an error. */
export const NBD_REP_FLAG_ERROR = 0x80000000;

export const enum NbdInfo {
  EXPORT = 0,
  NAME = 1,
  DESCRIPTION = 2,
  BLOCK_SIZE = 3,
}

export const enum NbdCommand {
  READ = 0,
  WRITE = 1,
  DISC = 2,
  FLUSH = 3,
  TRIM = 4,
  CACHE = 5,
  WRITE_ZEROES = 6,
  BLOCK_STATUS = 7,
}

export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;
export const NBD_CMD_FLAGS_KNOWN =
  NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_DF | NBD_CMD_FLAG_REQ_ONE | NBD_CMD_FLAG_FAST_ZERO;

export const NBD_REPLY_FLAG_DONE = 1 << 0;

export const enum NbdReplyType {
  NONE = 0,
  OFFSET_DATA = 1,
  OFFSET_HOLE = 2,
  BLOCK_STATUS = 5,
  ERROR = 0x8001,
  ERROR_OFFSET = 0x8002,
}

/** Error values of the transmission phase (the only ones a reply may carry). */
export const enum NbdError {
  OK = 0,
  EPERM = 1,
  EIO = 5,
  ENOMEM = 12,
  EINVAL = 22,
  ENOSPC = 28,
  EOVERFLOW = 75,
  ENOTSUP = 95,
  ESHUTDOWN = 108,
}

export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;

export const BASE_ALLOCATION = 'base:allocation';
/** The one metadata context we serve; any nonzero id will do, it is per-connection. */
export const BASE_ALLOCATION_CONTEXT_ID = 1;


export function commandName(command: number): string {
  switch (command) {
    case NbdCommand.READ: return 'read';
    case NbdCommand.WRITE: return 'write';
    case NbdCommand.DISC: return 'disc';
    case NbdCommand.FLUSH: return 'flush';
    case NbdCommand.TRIM: return 'trim';
    case NbdCommand.CACHE: return 'cache';
    case NbdCommand.WRITE_ZEROES: return 'write_zeroes';
    case NbdCommand.BLOCK_STATUS: return 'block_status';
    default: return `unknown(${command})`;
  }
}

export function optionName(option: number): string {
  switch (option) {
    case NbdOption.EXPORT_NAME: return 'EXPORT_NAME';
    case NbdOption.ABORT: return 'ABORT';
    case NbdOption.LIST: return 'LIST';
    case NbdOption.PEEK_EXPORT: return 'PEEK_EXPORT';
    case NbdOption.STARTTLS: return 'STARTTLS';
    case NbdOption.INFO: return 'INFO';
    case NbdOption.GO: return 'GO';
    case NbdOption.STRUCTURED_REPLY: return 'STRUCTURED_REPLY';
    case NbdOption.LIST_META_CONTEXT: return 'LIST_META_CONTEXT';
    case NbdOption.SET_META_CONTEXT: return 'SET_META_CONTEXT';
    case NbdOption.EXTENDED_HEADERS: return 'EXTENDED_HEADERS';
    default: return `unknown(${option})`;
  }
}
