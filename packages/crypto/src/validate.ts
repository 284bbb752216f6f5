/**
 * Argument checks run on entry to every exported function of both backends.
 *
 * Messages follow noble's style (`"key" expected Uint8Array of length 32, got length=31`):
 * they name the argument and describe its type or length, and never include its bytes,
 * so a message can be logged without leaking key material.
 */
import { CryptoError } from './errors.js';
import { AES256_KEY_LEN, GCM_NONCE_LEN, GCM_TAG_LEN, SHA256_LEN } from './types.js';

/** Upper bound on lengths asked of `randomBytes` and `shake256`: a sanity limit (1 GiB). */
export const MAX_OUTPUT_LEN = 2 ** 30;
/** RFC 5869 section 2.3: L <= 255 * HashLen. */
export const HKDF_SHA256_MAX_LEN = 255 * SHA256_LEN;

/** Describes a value's type for an error message without revealing its contents. */
function describe(value: unknown): string {
  if (value === null) return 'null';
  if (ArrayBuffer.isView(value)) return value.constructor.name;
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return typeof value;
}

/**
 * Is `value` a Uint8Array (a Node Buffer is one)? `instanceof` alone fails across realms
 * (e.g. a jsdom test environment), so fall back to the tag check that noble uses too.
 */
export function isBytes(value: unknown): value is Uint8Array {
  return (
    value instanceof Uint8Array ||
    (ArrayBuffer.isView(value) && value.constructor.name === 'Uint8Array' && 'BYTES_PER_ELEMENT' in value)
  );
}

/** Throws INVALID_ARGUMENT unless `value` is a Uint8Array (of exactly `length` bytes, if given). */
export function abytes(label: string, value: unknown, length?: number): Uint8Array {
  if (!isBytes(value)) {
    throw new CryptoError('INVALID_ARGUMENT', `"${label}" expected Uint8Array, got type=${describe(value)}`);
  }
  if (length !== undefined && value.length !== length) {
    throw new CryptoError(
      'INVALID_ARGUMENT',
      `"${label}" expected Uint8Array of length ${length}, got length=${value.length}`,
    );
  }
  return value;
}

/** Like `abytes`, but `undefined` is allowed (an optional argument). */
export function aoptionalBytes(label: string, value: unknown, length?: number): Uint8Array | undefined {
  return value === undefined ? undefined : abytes(label, value, length);
}

/** Throws INVALID_ARGUMENT unless `value` is an array of Uint8Arrays. */
export function abytesArray(label: string, value: unknown): readonly Uint8Array[] {
  if (!Array.isArray(value)) {
    throw new CryptoError(
      'INVALID_ARGUMENT',
      `"${label}" expected array of Uint8Array, got type=${describe(value)}`,
    );
  }
  for (let i = 0; i < value.length; i++) abytes(`${label}[${i}]`, value[i]);
  return value as readonly Uint8Array[];
}

/** Throws INVALID_ARGUMENT unless `value` is a safe integer in [min, max]. */
export function aint(label: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new CryptoError('INVALID_ARGUMENT', `"${label}" expected integer, got type=${describe(value)}`);
  }
  if (value < min || value > max) {
    throw new CryptoError(
      'INVALID_ARGUMENT',
      `"${label}" expected integer in [${min}, ${max}], got ${value}`,
    );
  }
  return value;
}

/**
 * Throws INVALID_ARGUMENT when `out` shares any byte with `input` (an output written in
 * place over its own input would be read after it was overwritten).
 */
export function anoOverlap(outLabel: string, out: Uint8Array, inLabel: string, input: Uint8Array): void {
  if (out.length === 0 || input.length === 0 || out.buffer !== input.buffer) return;
  const a = out.byteOffset;
  const b = input.byteOffset;
  if (a < b + input.length && b < a + out.length) {
    throw new CryptoError('INVALID_ARGUMENT', `"${outLabel}" must not overlap "${inLabel}"`);
  }
}

/** The arguments of aes256GcmEncrypt, checked alike by both backends. */
export function checkGcmEncrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array | undefined,
): void {
  abytes('key', key, AES256_KEY_LEN);
  abytes('nonce', nonce, GCM_NONCE_LEN);
  abytes('plaintext', plaintext);
  aoptionalBytes('aad', aad);
}

/** The arguments of aes256GcmEncryptInto, checked alike by both backends. */
export function checkGcmEncryptInto(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array | undefined,
  out: Uint8Array,
): void {
  checkGcmEncrypt(key, nonce, plaintext, aad);
  abytes('out', out, plaintext.length + GCM_TAG_LEN);
  anoOverlap('out', out, 'plaintext', plaintext);
}
