/**
 * The at-rest chunk format on its own: a chunk opens only as itself (file, index, size and
 * chunk layout all bound), fresh nonces, exact lengths; and the HTTP range parsing.
 */
import { randomBytes } from '@qalqon/crypto';
import { describe, expect, it } from 'vitest';
import { ServerError } from '../errors.js';
import { FILE_CHUNK_OVERHEAD } from '../storage/types.js';
import {
  CHUNK_OVERHEAD,
  type ChunkLayout,
  chunkCount,
  chunkLength,
  FILE_CHUNK_BYTES,
  openChunk,
  sealChunk,
} from './chunk-format.js';
import { parseContentRange, parseRange } from './http-ranges.js';

const CS = 4096;
const layout: ChunkLayout = { fileId: 'a'.repeat(32), size: 2 * CS + 100, chunkSize: CS };

function corrupt(fn: () => unknown): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe('FILE_CORRUPT');
}

describe('chunk format', () => {
  const key = randomBytes(32);
  const plain = [randomBytes(CS), randomBytes(CS), randomBytes(100)];
  const sealed = plain.map((p, i) => sealChunk(key, layout, i, p));

  it('round-trips each chunk with 29 bytes of overhead and a fresh nonce', () => {
    // A stored chunk of a new file is exactly 1 MiB (aligned for direct I/O).
    expect(FILE_CHUNK_BYTES + CHUNK_OVERHEAD).toBe(1024 * 1024);
    // The storage lays chunks out by this overhead (storage/file-blobs.ts).
    expect(CHUNK_OVERHEAD).toBe(FILE_CHUNK_OVERHEAD);
    expect(chunkCount(layout)).toBe(3);
    expect([0, 1, 2, 3].map((i) => chunkLength(layout, i))).toEqual([CS, CS, 100, 0]);
    sealed.forEach((s, i) => {
      expect(s.length).toBe(plain[i]!.length + CHUNK_OVERHEAD);
      expect(new Uint8Array(openChunk(key, layout, i, s))).toEqual(plain[i]);
    });
    const again = sealChunk(key, layout, 0, plain[0]!);
    expect(Buffer.compare(again.subarray(1, 13), sealed[0]!.subarray(1, 13))).not.toBe(0);
  });

  it('opens a chunk only as the same chunk of the same file, size and layout, unaltered', () => {
    // Another index (reordered or swapped), another file, another size, another chunk size.
    corrupt(() => openChunk(key, layout, 1, sealed[0]!));
    corrupt(() => openChunk(key, { ...layout, fileId: 'b'.repeat(32) }, 0, sealed[0]!));
    corrupt(() => openChunk(key, { ...layout, size: layout.size + 1 }, 0, sealed[0]!));
    corrupt(() => openChunk(key, { ...layout, size: 3 * CS }, 0, sealed[0]!));
    corrupt(() => openChunk(key, { ...layout, chunkSize: 2 * CS, size: 4 * CS }, 0, sealed[0]!));
    // Another key; any flipped bit; a cut or extended chunk; another format byte; past the end.
    corrupt(() => openChunk(randomBytes(32), layout, 0, sealed[0]!));
    for (const at of [0, 5, 20, CS, CS + CHUNK_OVERHEAD - 1]) {
      const bad = Uint8Array.from(sealed[0]!);
      bad[at]! ^= 0x80;
      corrupt(() => openChunk(key, layout, 0, bad));
    }
    corrupt(() => openChunk(key, layout, 0, sealed[0]!.subarray(0, sealed[0]!.length - 1)));
    corrupt(() => openChunk(key, layout, 3, sealed[2]!));
    // The right chunk still opens after all that.
    expect(new Uint8Array(openChunk(key, layout, 2, sealed[2]!))).toEqual(plain[2]);
  });

  it('seals only a chunk of exactly its length', () => {
    expect(() => sealChunk(key, layout, 2, randomBytes(CS))).toThrow(/expected 100 bytes/);
    expect(() => sealChunk(key, layout, 3, randomBytes(1))).toThrow(ServerError);
    expect(() => sealChunk(randomBytes(16), layout, 0, plain[0]!)).toThrow(ServerError);
  });

  it('seals into a caller’s buffer (reused between chunks) exactly as into a new one', () => {
    const out = new Uint8Array(CS + CHUNK_OVERHEAD).fill(0x5a);
    for (const i of [0, 1]) {
      const got = sealChunk(key, layout, i, plain[i]!, out);
      expect(got).toBe(out);
      expect(new Uint8Array(openChunk(key, layout, i, out))).toEqual(plain[i]);
    }
    // The last (short) chunk needs a buffer of its own length; a wrong length is refused untouched.
    const before = Uint8Array.from(out);
    expect(() => sealChunk(key, layout, 2, plain[2]!, out)).toThrow(/"out" expected 129 bytes/);
    expect(out).toEqual(before);
    const short = new Uint8Array(100 + CHUNK_OVERHEAD);
    sealChunk(key, layout, 2, plain[2]!, short);
    expect(new Uint8Array(openChunk(key, layout, 2, short))).toEqual(plain[2]);
  });
});

describe('byte ranges', () => {
  it('parses the single ranges a download may ask for', () => {
    const size = 1000;
    expect(parseRange(undefined, size)).toEqual({ kind: 'whole' });
    expect(parseRange('bytes=0-9', size)).toEqual({ kind: 'partial', start: 0, end: 9 });
    expect(parseRange('bytes=990-5000', size)).toEqual({ kind: 'partial', start: 990, end: 999 });
    expect(parseRange('bytes=10-', size)).toEqual({ kind: 'partial', start: 10, end: 999 });
    expect(parseRange('bytes=-10', size)).toEqual({ kind: 'partial', start: 990, end: 999 });
    expect(parseRange('bytes=-5000', size)).toEqual({ kind: 'partial', start: 0, end: 999 });
    for (const h of ['bytes=1000-', 'bytes=1000-1001', 'bytes=-0']) {
      expect(parseRange(h, size)).toEqual({ kind: 'unsatisfiable' });
    }
    for (const h of [
      'bytes=0-1,3-4',
      'bytes=5-4',
      'bytes=-',
      'lines=0-1',
      'bytes=a-b',
      `bytes=${'9'.repeat(17)}-`,
    ]) {
      expect(parseRange(h, size)).toEqual({ kind: 'whole' });
    }
  });

  it('parses an upload Content-Range and refuses malformed ones', () => {
    expect(parseContentRange('bytes 0-9/10')).toEqual({ start: 0, end: 9, size: 10 });
    for (const h of [
      undefined,
      'bytes 5-4/10',
      'bytes 0-10/10',
      'bytes */10',
      'bytes 0-9/*',
      'bits 0-9/10',
    ]) {
      expect(parseContentRange(h)).toBeUndefined();
    }
  });
});
