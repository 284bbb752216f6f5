/**
 * Argument checks for the server package's exported functions, in the style of the crypto
 * package (`"key" expected Uint8Array of length 32, got length=31`): messages name the
 * argument and describe its type, length or range, never its contents, so they can be
 * logged without leaking key material, enrolment codes or message bodies.
 */
import { ServerError } from './errors.js';

/** Describes a value's type for an error message without revealing its contents. */
function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'Array';
  if (ArrayBuffer.isView(value)) return value.constructor.name;
  if (typeof value === 'object') return (value as object).constructor?.name ?? 'object';
  return typeof value;
}

function invalid(message: string): ServerError {
  return new ServerError('INVALID_ARGUMENT', message);
}

/** Throws INVALID_ARGUMENT unless `value` is a Uint8Array (of exactly `length` bytes, if given). */
export function abytes(label: string, value: unknown, length?: number): Uint8Array {
  if (!(value instanceof Uint8Array))
    throw invalid(`"${label}" expected Uint8Array, got type=${describe(value)}`);
  if (length !== undefined && value.length !== length) {
    throw invalid(`"${label}" expected Uint8Array of length ${length}, got length=${value.length}`);
  }
  return value;
}

/** Throws INVALID_ARGUMENT unless `value` is a Uint8Array of `min`..`max` bytes. */
export function abytesRange(label: string, value: unknown, min: number, max: number): Uint8Array {
  const b = abytes(label, value);
  if (b.length < min || b.length > max) {
    throw invalid(`"${label}" expected Uint8Array of length ${min}..${max}, got length=${b.length}`);
  }
  return b;
}

/** Throws INVALID_ARGUMENT unless `value` is a safe integer in [min, max]. */
export function aint(label: string, value: unknown, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw invalid(`"${label}" expected integer, got type=${describe(value)}`);
  }
  if (value < min || value > max)
    throw invalid(`"${label}" expected integer in [${min}, ${max}], got ${value}`);
  return value;
}

/** Throws INVALID_ARGUMENT unless `value` is a string of `min`..`max` UTF-16 units matching `pattern`. */
export function astring(label: string, value: unknown, min: number, max: number, pattern?: RegExp): string {
  if (typeof value !== 'string') throw invalid(`"${label}" expected string, got type=${describe(value)}`);
  if (value.length < min || value.length > max) {
    throw invalid(`"${label}" expected string of length ${min}..${max}, got length=${value.length}`);
  }
  // The pattern is named, never the value: some strings checked here are secrets.
  if (pattern && !pattern.test(value)) throw invalid(`"${label}" has characters outside ${pattern.source}`);
  return value;
}

/** Throws INVALID_ARGUMENT unless `value` is an array of `min`..`max` elements. */
export function aarray(label: string, value: unknown, min: number, max: number): readonly unknown[] {
  if (!Array.isArray(value)) throw invalid(`"${label}" expected array, got type=${describe(value)}`);
  if (value.length < min || value.length > max) {
    throw invalid(`"${label}" expected array of length ${min}..${max}, got length=${value.length}`);
  }
  return value;
}

/** Throws INVALID_ARGUMENT unless `value` is a non-null, non-array object. */
export function aobject(label: string, value: unknown): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw invalid(`"${label}" expected object, got type=${describe(value)}`);
  }
  return value as Record<string, unknown>;
}

/** Identifiers chosen by operators (user and role names): lower case, no spaces. */
export const NAME_PATTERN = /^[a-z0-9][a-z0-9._-]*$/;
/** Server-generated ids: 32 lower-case hex digits (128 random bits). */
export const ID_PATTERN = /^[0-9a-f]{32}$/;
export const ID_LEN = 32;
