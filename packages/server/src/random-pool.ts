/**
 * Random bytes for values that must be unique and unpredictable but are not secret: row
 * ids and AES-GCM nonces. They are drawn from the CSPRNG 4 KiB at a time, because one
 * OpenSSL call per 12-byte nonce was a tenth of the relay's server time. Each byte is
 * handed out once and zeroed in the pool. Never use this for key material: a key must not
 * sit in a shared buffer before it is used.
 */
import { randomBytes } from '@qalqon/crypto';

const POOL_BYTES = 4096;
let pool: Uint8Array = new Uint8Array(0);
let at = 0;

/** `length` (1 to 64) fresh random bytes in a new array of their own. */
export function publicRandomBytes(length: number): Uint8Array {
  if (!Number.isInteger(length) || length < 1 || length > 64) {
    throw new RangeError('"length" expected an integer in [1, 64]');
  }
  if (at + length > pool.length) {
    pool = randomBytes(POOL_BYTES);
    at = 0;
  }
  const out = pool.slice(at, at + length);
  pool.fill(0, at, at + length);
  at += length;
  return out;
}
