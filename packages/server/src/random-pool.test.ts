import { describe, expect, it } from 'vitest';
import { publicRandomBytes } from './random-pool.js';

describe('publicRandomBytes', () => {
  it('hands out fresh, distinct bytes across pool refills, each in its own buffer', () => {
    const seen = new Set<string>();
    // 2,000 × 12 bytes crosses several 4 KiB refills.
    for (let i = 0; i < 2000; i++) {
      const b = publicRandomBytes(12);
      expect(b.length).toBe(12);
      expect(b.byteOffset).toBe(0);
      expect(b.buffer.byteLength).toBe(12);
      seen.add(Buffer.from(b).toString('hex'));
    }
    expect(seen.size).toBe(2000);
  });

  it('refuses lengths it is not meant for', () => {
    for (const bad of [0, -1, 65, 1.5, Number.NaN]) expect(() => publicRandomBytes(bad)).toThrow(RangeError);
  });
});
