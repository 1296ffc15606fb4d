// Errors with stable codes a caller can test for (undici's lib/core/errors.js is the model).

export class XDeviceError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** An invariant broke: crash rather than spread the damage (TigerBeetle style). */
export class AssertionFailure extends XDeviceError {
  constructor(message: string) {
    super('XDEVICE_ERR_ASSERTION', message);
  }
}

export function assert(condition: unknown, message = 'assertion failed'): asserts condition {
  if (!condition) throw new AssertionFailure(message);
}
