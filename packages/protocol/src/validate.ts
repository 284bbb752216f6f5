/**
 * Argument checks shared by the protocol package's exported functions (the third border
 * of STYLE.md: primitive arguments are checked on entry). Every failure is a ProtocolError
 * INVALID_ARGUMENT whose message names the argument and what was wrong with its type or
 * length — never its contents, which may be key material.
 */
import { ProtocolError } from './errors.js';

export const MAX_UINT32 = 0xffffffff;

export function argError(message: string): never {
  throw new ProtocolError('INVALID_ARGUMENT', message);
}

/** A Uint8Array, of exactly `length` bytes when given. */
export function expectBytes(value: unknown, label: string, length?: number): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array)) argError(`"${label}" expected Uint8Array, got ${typeof value}`);
  if (length !== undefined && value.length !== length) {
    argError(`"${label}" expected Uint8Array of length ${length}, got length=${value.length}`);
  }
}

/** An integer in [0, 2^32 - 1] (ids, iterations, counters on the wire are uint32). */
export function expectUint32(value: unknown, label: string): asserts value is number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_UINT32) {
    argError(
      `"${label}" expected an integer in [0, 2^32 - 1], got ${typeof value === 'number' ? value : typeof value}`,
    );
  }
}
