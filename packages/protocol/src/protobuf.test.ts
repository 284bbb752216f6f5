import { describe, expect, it } from 'vitest';
import { decodeMessage, encodeMessage, WIRE_LEN, WIRE_VARINT } from './protobuf.js';

describe('protobuf codec', () => {
  it('round-trips', () => {
    const enc = encodeMessage([
      [1, 300],
      [2, new Uint8Array([1, 2, 3])],
    ]);
    const m = decodeMessage(enc, { 1: WIRE_VARINT, 2: WIRE_LEN });
    expect(m.get(1)).toBe(300);
    expect(m.get(2)).toEqual(new Uint8Array([1, 2, 3]));
  });
});
