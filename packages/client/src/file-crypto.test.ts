/**
 * The file encryption format on its own: sizes, a round trip at and around segment
 * boundaries, and every way of rearranging sealed segments (truncation at a boundary,
 * reordering, splicing in a segment of another file, a flipped bit, extra bytes) refused.
 */
import { randomBytes } from '@qalqon/crypto';
import { describe, expect, it } from 'vitest';
import { isClientError } from './errors.js';
import {
  ciphertextSize,
  FILE_SEALED_SEGMENT_BYTES,
  FILE_SEGMENT_BYTES,
  openSegment,
  plainRange,
  SegmentOpener,
  sealedOffset,
  sealSegment,
  sealSegmentsInto,
  segmentCount,
} from './file-crypto.js';

const S = FILE_SEGMENT_BYTES;

function seal(key: Uint8Array, plain: Uint8Array): Uint8Array[] {
  const n = segmentCount(plain.length);
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const r = plainRange(i, plain.length);
    out.push(sealSegment(key, i, i === n - 1, plain.subarray(r.start, r.end)));
  }
  return out;
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts.map((p) => Buffer.from(p))));
}

/** Feeds `sealed` to an opener in chunks of `chunk` bytes; returns the plaintext. */
function openAll(key: Uint8Array, plainSize: number, sealed: Uint8Array, chunk: number): Uint8Array {
  const o = new SegmentOpener(key, plainSize);
  const out: Uint8Array[] = [];
  for (let i = 0; i < sealed.length; i += chunk) out.push(...o.push(sealed.subarray(i, i + chunk)));
  o.finish();
  return concat(out);
}

function refused(fn: () => unknown): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(isClientError(err, 'FILE_INVALID'), String(err)).toBe(true);
}

describe('file encryption format', () => {
  it('has a ciphertext size that is a function of the plaintext size alone', () => {
    expect(segmentCount(0)).toBe(1);
    expect(ciphertextSize(0)).toBe(16);
    expect(ciphertextSize(1)).toBe(17);
    expect(ciphertextSize(S)).toBe(S + 16);
    expect(ciphertextSize(S + 1)).toBe(S + 1 + 32);
    expect(ciphertextSize(3 * S)).toBe(3 * FILE_SEALED_SEGMENT_BYTES);
    expect(sealedOffset(2)).toBe(2 * FILE_SEALED_SEGMENT_BYTES);
    expect(() => ciphertextSize(-1)).toThrow();
    expect(() => ciphertextSize(1.5)).toThrow();
  });

  it('round-trips sizes around segment boundaries, in any chunking', () => {
    const key = randomBytes(32);
    for (const size of [0, 1, S - 1, S, S + 1, 2 * S, 2 * S + 17]) {
      const plain = randomBytes(size);
      const sealed = concat(seal(key, plain));
      expect(sealed.length).toBe(ciphertextSize(size));
      for (const chunk of [1000, S + 16, 7 * S]) {
        expect(
          Buffer.from(openAll(key, size, sealed, chunk)).equals(Buffer.from(plain)),
          `${size}/${chunk}`,
        ).toBe(true);
      }
    }
  });

  it('seals a run of segments into one buffer exactly as segment by segment', () => {
    const key = randomBytes(32);
    for (const size of [0, 1, S, 3 * S, 3 * S + 5]) {
      const plain = randomBytes(size);
      const each = seal(key, plain);
      const last = segmentCount(size) - 1;
      // Every run [first, end) of the file's segments, as the upload seals its blocks.
      for (let first = 0; first <= last; first++) {
        for (let end = first + 1; end <= last + 1; end++) {
          const from = plainRange(first, size).start;
          const to = plainRange(end - 1, size).end;
          const out = new Uint8Array(to - from + (end - first) * 16);
          sealSegmentsInto(key, first, last, plain.subarray(from, to), out);
          expect(
            Buffer.from(out).equals(Buffer.from(concat(each.slice(first, end)))),
            `${size} ${first}-${end}`,
          ).toBe(true);
        }
      }
    }
    // Refused: a wrong output length, a short segment that is not the file's last, a run past the end.
    const p = randomBytes(2 * S);
    expect(() => sealSegmentsInto(key, 0, 1, p, new Uint8Array(2 * S + 31))).toThrow(/wrong length/);
    expect(() => sealSegmentsInto(key, 0, 5, p.subarray(0, S + 1), new Uint8Array(S + 33))).toThrow(
      /wrong length/,
    );
    expect(() => sealSegmentsInto(key, 1, 1, p, new Uint8Array(2 * S + 32))).toThrow(/wrong length/);
  });

  it('returns plaintext that does not alias the ciphertext it was given', () => {
    const key = randomBytes(32);
    const plain = randomBytes(2 * S + 3);
    const sealed = concat(seal(key, plain));
    const o = new SegmentOpener(key, plain.length);
    const got = o.push(sealed);
    sealed.fill(0);
    o.finish();
    expect(Buffer.from(concat(got)).equals(Buffer.from(plain))).toBe(true);
  });

  it('gives the same bytes when a segment is sealed again (so a resumed upload can re-seal)', () => {
    const key = randomBytes(32);
    const plain = randomBytes(S);
    expect(
      Buffer.from(sealSegment(key, 3, false, plain)).equals(Buffer.from(sealSegment(key, 3, false, plain))),
    ).toBe(true);
  });

  it('refuses truncation at a segment boundary, reordering, splicing, bit flips and extra bytes', () => {
    const key = randomBytes(32);
    const size = 3 * S + 5;
    const plain = randomBytes(size);
    const segs = seal(key, plain);
    // Cut after two whole segments: the second was sealed as not final.
    refused(() => openAll(key, 2 * S, concat(segs.slice(0, 2)), S));
    // The two first segments swapped.
    refused(() => openAll(key, size, concat([segs[1]!, segs[0]!, segs[2]!, segs[3]!]), S));
    // A segment of another file (another key) at the same index.
    const other = seal(randomBytes(32), randomBytes(size));
    refused(() => openAll(key, size, concat([segs[0]!, other[1]!, segs[2]!, segs[3]!]), S));
    // One flipped bit.
    const flipped = concat(segs);
    flipped[S + 100]! ^= 1;
    refused(() => openAll(key, size, flipped, S));
    // Bytes past the end.
    refused(() => openAll(key, size, concat([...segs, new Uint8Array(1)]), S));
    // Too few bytes: the opener is not done.
    refused(() => openAll(key, size, concat(segs).subarray(0, ciphertextSize(size) - 1), S));
    // The final flag is bound: the last segment opened as not final fails.
    refused(() => openSegment(key, 3, false, segs[3]!));
  });

  it('opens a run of segments from the middle (a range read)', () => {
    const key = randomBytes(32);
    const size = 5 * S;
    const plain = randomBytes(size);
    const sealed = concat(seal(key, plain));
    const o = new SegmentOpener(key, size, 2, 3);
    const got = concat(o.push(sealed.subarray(sealedOffset(2), sealedOffset(4))));
    o.finish();
    expect(Buffer.from(got).equals(Buffer.from(plain.subarray(2 * S, 4 * S)))).toBe(true);
  });
});
