import { randomBytes } from 'node:crypto';
import { PassThrough, Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { chunkedBody } from './chunked-body.js';

/** Collects the yielded pieces (copied: the iterator reuses its buffers). */
async function collect(it: AsyncIterable<Uint8Array>): Promise<{ pieces: Buffer[]; error?: unknown }> {
  const pieces: Buffer[] = [];
  try {
    for await (const p of it) pieces.push(Buffer.from(p));
    return { pieces };
  } catch (error) {
    return { pieces, error };
  }
}

/** A stream that emits `data` in pieces of the given sizes, yielding to the event loop between them. */
function piecewise(data: Buffer, sizes: readonly number[]): Readable {
  return Readable.from(
    (async function* () {
      let off = 0;
      let i = 0;
      while (off < data.length) {
        const n = sizes[i++ % sizes.length] ?? 1;
        yield data.subarray(off, off + n);
        off += n;
        await new Promise((r) => setImmediate(r));
      }
    })(),
    { objectMode: false },
  );
}

describe('chunkedBody', () => {
  it('yields whole chunks and then the shorter rest, for any piece sizes', async () => {
    const data = randomBytes(10 * 1000 + 123);
    for (const sizes of [[1], [7, 3000, 1], [1000], [999], [1001], [16 * 1024], [10_123]]) {
      const { pieces, error } = await collect(chunkedBody(piecewise(data, sizes), 1000));
      expect(error).toBeUndefined();
      expect(pieces.map((p) => p.length)).toEqual([...Array(10).fill(1000), 123]);
      expect(Buffer.concat(pieces).equals(data)).toBe(true);
    }
  });

  it('ends without a piece for an empty stream or an exact multiple', async () => {
    expect((await collect(chunkedBody(Readable.from([]), 100))).pieces).toEqual([]);
    const data = randomBytes(300);
    const { pieces } = await collect(chunkedBody(piecewise(data, [64]), 100));
    expect(pieces.map((p) => p.length)).toEqual([100, 100, 100]);
  });

  it('reuses at most three buffers and pauses the stream while the consumer is busy', async () => {
    const data = randomBytes(64 * 1024);
    const stream = piecewise(data, [512]);
    const seen = new Set<ArrayBufferLike>();
    let maxPaused = 0;
    const got: Buffer[] = [];
    for await (const p of chunkedBody(stream, 1024)) {
      seen.add(p.buffer);
      got.push(Buffer.from(p));
      // A slow consumer: the stream must wait, not fill new buffers.
      await new Promise((r) => setTimeout(r, 2));
      if (stream.isPaused()) maxPaused++;
    }
    expect(Buffer.concat(got).equals(data)).toBe(true);
    expect(seen.size).toBeLessThanOrEqual(3);
    expect(maxPaused).toBeGreaterThan(0);
  });

  it('yields every byte that arrived before a failure, then throws it', async () => {
    const s = new PassThrough();
    const it = chunkedBody(s, 100);
    s.write(Buffer.alloc(250, 1));
    setImmediate(() => s.destroy(new Error('connection reset')));
    const { pieces, error } = await collect(it);
    expect(pieces.map((p) => p.length)).toEqual([100, 100, 50]);
    expect(Buffer.concat(pieces).equals(Buffer.alloc(250, 1))).toBe(true);
    expect((error as Error).message).toBe('connection reset');
  });

  it('treats a close before the end as a premature close', async () => {
    const s = new PassThrough();
    const it = chunkedBody(s, 100);
    s.write(Buffer.alloc(150, 2));
    setImmediate(() => s.destroy());
    const { pieces, error } = await collect(it);
    expect(pieces.map((p) => p.length)).toEqual([100, 50]);
    expect((error as { code?: string }).code).toBe('ERR_STREAM_PREMATURE_CLOSE');
  });

  it('fails at once on a stream destroyed before it is read', async () => {
    const s = new PassThrough();
    s.on('error', () => undefined); // as the HTTP server's own listener would
    s.destroy(new Error('gone'));
    await new Promise((r) => setImmediate(r));
    const { pieces, error } = await collect(chunkedBody(s, 100));
    expect(pieces).toEqual([]);
    expect((error as Error).message).toBe('gone');
  });

  it('destroys the stream when the consumer stops early', async () => {
    const s = piecewise(randomBytes(10_000), [100]);
    for await (const p of chunkedBody(s, 1000)) {
      expect(p.length).toBe(1000);
      break;
    }
    expect(s.destroyed).toBe(true);
  });

  it('refuses a chunk size that is not a positive whole number', () => {
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      expect(() => chunkedBody(Readable.from([]), bad)).toThrow(RangeError);
    }
  });
});
