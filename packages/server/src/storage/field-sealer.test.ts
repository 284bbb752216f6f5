/** Field sealing: round trips, row binding, tampering, key generations, argument checks. */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ServerError, type ServerErrorCode } from '../errors.js';
import { FieldSealer, SEAL_OVERHEAD } from './field-sealer.js';

const key = () => new Uint8Array(randomBytes(32));
const row = { table: 'envelopes', column: 'body', rowId: 'a1' };

function expectCode(fn: () => unknown, code: ServerErrorCode): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe(code);
}

describe('FieldSealer', () => {
  it('round-trips bytes and strings with a fixed overhead and fresh nonces', () => {
    const s = new FieldSealer(new Map([[1, key()]]), 1);
    const pt = new Uint8Array(randomBytes(100));
    const sealed = s.seal(row, pt);
    expect(sealed).toHaveLength(100 + SEAL_OVERHEAD);
    expect(s.open(row, sealed)).toEqual(pt);
    expect(s.seal(row, pt)).not.toEqual(sealed);
    expect(s.open(row, s.seal(row, new Uint8Array(0)))).toEqual(new Uint8Array(0));
    expect(s.openString(row, s.sealString(row, 'Ключ 🔑'))).toBe('Ключ 🔑');
  });

  it('binds table, column and row id: a value moved anywhere else fails', () => {
    const s = new FieldSealer(new Map([[1, key()]]), 1);
    const sealed = s.seal(row, new TextEncoder().encode('secret'));
    for (const other of [
      { ...row, rowId: 'a2' },
      { ...row, column: 'name' },
      { ...row, table: 'devices' },
      { ...row, rowId: 'a' },
    ]) {
      expectCode(() => s.open(other, sealed), 'UNSEAL_FAILED');
    }
  });

  it('detects any flipped bit, truncation, or unknown format', () => {
    const s = new FieldSealer(new Map([[1, key()]]), 1);
    const sealed = s.seal(row, new Uint8Array(16));
    for (let i = 0; i < sealed.length; i++) {
      const t = Uint8Array.from(sealed);
      t[i]! ^= 0x80;
      expectCode(() => s.open(row, t), 'UNSEAL_FAILED');
    }
    expectCode(() => s.open(row, sealed.subarray(0, SEAL_OVERHEAD - 1)), 'UNSEAL_FAILED');
    expectCode(() => s.open(row, sealed.subarray(0, sealed.length - 1)), 'UNSEAL_FAILED');
  });

  it('keeps older generations readable and seals with the active one', () => {
    const k1 = key();
    const old = new FieldSealer(new Map([[1, k1]]), 1);
    const sealed1 = old.seal(row, new Uint8Array([1]));
    const s = new FieldSealer(
      new Map([
        [1, k1],
        [2, key()],
      ]),
      2,
    );
    expect(s.open(row, sealed1)).toEqual(new Uint8Array([1]));
    const sealed2 = s.seal(row, new Uint8Array([2]));
    expect(new DataView(sealed2.buffer).getUint32(1)).toBe(2);
    expectCode(() => old.open(row, sealed2), 'UNSEAL_FAILED');
    // Another key of the same generation does not open it either.
    expectCode(() => new FieldSealer(new Map([[1, key()]]), 1).open(row, sealed1), 'UNSEAL_FAILED');
  });

  it('checks its arguments, and refuses use after destroy', () => {
    expectCode(() => new FieldSealer(new Map([[1, new Uint8Array(16)]]), 1), 'INVALID_ARGUMENT');
    expectCode(() => new FieldSealer(new Map([[1, key()]]), 2), 'INVALID_ARGUMENT');
    expectCode(() => new FieldSealer(new Map([[0, key()]]), 0), 'INVALID_ARGUMENT');
    const s = new FieldSealer(new Map([[1, key()]]), 1);
    expectCode(() => s.seal({ ...row, table: 'Bad-Table' }, new Uint8Array(1)), 'INVALID_ARGUMENT');
    expectCode(() => s.seal({ ...row, rowId: '' }, new Uint8Array(1)), 'INVALID_ARGUMENT');
    expectCode(() => s.seal({ ...row, rowId: 'a\0b' }, new Uint8Array(1)), 'INVALID_ARGUMENT');
    expectCode(() => s.seal(row, 'text' as never), 'INVALID_ARGUMENT');
    const sealed = s.seal(row, new Uint8Array(1));
    s.destroy();
    expectCode(() => s.seal(row, new Uint8Array(1)), 'CLOSED');
    expectCode(() => s.open(row, sealed), 'CLOSED');
  });
});
