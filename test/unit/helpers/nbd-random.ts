// Seeded randomness for the NBD fuzz tests: XDEVICE_SEED replays a run.

export interface Random {
  /** Integer in [min, max]. */
  int(min: number, max: number): number;
  bytes(n: number): Buffer;
}

export function seedFromEnv(): number {
  const fromEnv = process.env.XDEVICE_SEED;
  return fromEnv !== undefined && fromEnv !== '' ? Number(fromEnv) >>> 0 : (Math.random() * 2 ** 32) >>> 0;
}

/** mulberry32: small, fast, and good enough to drive a fuzzer. */
export function makeRandom(seed: number): Random {
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let x = state;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
  return {
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    bytes: (n) => {
      const out = Buffer.allocUnsafe(n);
      for (let i = 0; i < n; i++) out[i] = Math.floor(next() * 256);
      return out;
    },
  };
}
