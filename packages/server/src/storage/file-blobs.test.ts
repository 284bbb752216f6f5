import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { alignedBuffer } from '@qalqon/fsio';
import { afterAll, describe, expect, it } from 'vitest';
import { CHUNK_OVERHEAD, FILE_CHUNK_BYTES } from '../files/chunk-format.js';
import { chunkStride, FileBlobs } from './file-blobs.js';

const root = mkdtempSync(join(tmpdir(), 'qalqon-blobs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const id = () => (n++).toString(16).padStart(32, '0');

/** `count` stored chunks of `stride` bytes, the last `lastBytes` long; in aligned buffers or not. */
function chunks(stride: number, count: number, lastBytes: number, aligned: boolean): Uint8Array[] {
  return Array.from({ length: count }, (_, i) => {
    const len = i === count - 1 ? lastBytes : stride;
    const b = aligned ? alignedBuffer(len).subarray(0, len) : Buffer.allocUnsafe(len);
    randomBytes(len).copy(b);
    return b;
  });
}

describe.each([
  { name: 'direct I/O', directIo: true },
  { name: 'buffered', directIo: false },
])('file blobs ($name)', ({ directIo }) => {
  const blobs = new FileBlobs(join(root, directIo ? 'direct' : 'buffered'), { directIo });

  it('a new file: stored chunks of exactly 1 MiB, appended in batches and read back by range', async () => {
    expect(chunkStride(FILE_CHUNK_BYTES)).toBe(1024 * 1024);
    const f = id();
    const stride = chunkStride(FILE_CHUNK_BYTES);
    for (const aligned of [true, false]) {
      const g = aligned ? f : id();
      const first = chunks(stride, 3, stride, aligned);
      const rest = chunks(stride, 2, 1000 + CHUNK_OVERHEAD, aligned);
      await blobs.write(g, 0, first, true);
      await blobs.write(g, 3 * stride, rest, false);
      const all = Buffer.concat([...first, ...rest]);
      // Exactly the bytes written: a partial last block is not padded.
      expect(statSync(blobs.path(g)).size).toBe(all.length);
      expect(readFileSync(blobs.path(g)).equals(all)).toBe(true);
      expect((await blobs.read(g, stride, 2 * stride)).equals(all.subarray(stride, 3 * stride))).toBe(true);
      // Past the end: what there is.
      const tail = await blobs.read(g, 4 * stride, stride);
      expect(tail.equals(all.subarray(4 * stride))).toBe(true);
    }
    expect(blobs.directIo).toBe(directIo && process.platform === 'linux');
  });

  it('a file with the earlier stride (1 MiB + 29, unaligned) is written and read as before', async () => {
    const f = id();
    const stride = chunkStride(1024 * 1024);
    const first = chunks(stride, 2, stride, false);
    const second = chunks(stride, 1, 77, false);
    await blobs.write(f, 0, first, true);
    await blobs.write(f, 2 * stride, second, false);
    const all = Buffer.concat([...first, ...second]);
    expect(readFileSync(blobs.path(f)).equals(all)).toBe(true);
    expect((await blobs.read(f, stride, stride + 77)).equals(all.subarray(stride))).toBe(true);
  });

  it('a missing blob: FILE_CORRUPT on append without create, empty on read', async () => {
    await expect(blobs.write(id(), 0, chunks(4096, 1, 4096, true), false)).rejects.toMatchObject({
      code: 'FILE_CORRUPT',
    });
    expect((await blobs.read(id(), 0, 4096)).length).toBe(0);
    await expect(blobs.write('not-an-id', 0, [], true)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});
