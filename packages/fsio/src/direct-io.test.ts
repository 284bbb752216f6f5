import { randomBytes } from 'node:crypto';
import { constants, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  AlignedPool,
  alignedBuffer,
  alignUp,
  DIRECT_IO_ALIGN,
  DirectFile,
  isAligned,
  isAlignedView,
} from './direct-io.js';

const dir = mkdtempSync(join(tmpdir(), 'qalqon-fsio-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(dir, `f${n++}`);
const CREATE = constants.O_RDWR | constants.O_CREAT | constants.O_EXCL;
/** Linux (this project's CI) has O_DIRECT, also on tmpfs since 6.6: the direct path must be taken there. */
const DIRECT_EXPECTED = process.platform === 'linux';

function filled(size: number): Buffer {
  const b = alignedBuffer(size);
  randomBytes(size).copy(b);
  return b;
}

describe('aligned buffers', () => {
  it('are whole 64 KiB pages, and only their aligned views count as aligned', () => {
    expect(alignedBuffer(1).length).toBe(65536);
    expect(alignedBuffer(65537).length).toBe(2 * 65536);
    const b = alignedBuffer(3 * DIRECT_IO_ALIGN);
    expect(isAlignedView(b)).toBe(true);
    expect(isAlignedView(b.subarray(DIRECT_IO_ALIGN))).toBe(true);
    expect(isAlignedView(b.subarray(512))).toBe(false);
    expect(isAlignedView(Buffer.alloc(DIRECT_IO_ALIGN))).toBe(false);
    expect(isAlignedView(new Uint8Array(new ArrayBuffer(8192)))).toBe(false);
    expect([alignUp(0), alignUp(1), alignUp(4096), alignUp(4097)]).toEqual([0, 4096, 4096, 8192]);
    expect([isAligned(0), isAligned(4096), isAligned(100)]).toEqual([true, true, false]);
  });

  it('a pool hands a returned buffer out again and keeps only as many as it is told', () => {
    const pool = new AlignedPool(1);
    const a = pool.take(10_000);
    const b = pool.take(10_000);
    expect(a).not.toBe(b);
    pool.give(a);
    pool.give(b);
    expect(pool.take(5_000)).toBe(a);
    expect(pool.take(5_000)).not.toBe(b);
    // Too small for the request: a new one.
    pool.give(a);
    expect(pool.take(100_000).length).toBeGreaterThanOrEqual(100_000);
  });
});

describe.each([
  { name: 'direct', direct: true },
  { name: 'buffered', direct: false },
])('DirectFile ($name)', ({ direct }) => {
  it(`opens ${direct ? 'for direct I/O' : 'buffered'}`, async () => {
    const f = await DirectFile.open(fresh(), CREATE, 0o600, direct);
    try {
      expect(f.direct).toBe(direct && DIRECT_EXPECTED);
    } finally {
      await f.close();
    }
  });

  it('writes an unaligned length at an aligned offset exactly (no padding), and reads it back to the end', async () => {
    const path = fresh();
    const data = filled(3 * DIRECT_IO_ALIGN + 100);
    const f = await DirectFile.open(path, CREATE, 0o600, direct);
    try {
      await f.write(data, 3 * DIRECT_IO_ALIGN + 100, 0);
      await f.datasync();
      expect(statSync(path).size).toBe(3 * DIRECT_IO_ALIGN + 100);
      expect(readFileSync(path).equals(data.subarray(0, 3 * DIRECT_IO_ALIGN + 100))).toBe(true);
      // A read that runs past the end stops there.
      const into = alignedBuffer(2 * DIRECT_IO_ALIGN);
      const got = await f.read(into, 2 * DIRECT_IO_ALIGN, 2 * DIRECT_IO_ALIGN);
      expect(got).toBe(DIRECT_IO_ALIGN + 100);
      expect(
        into.subarray(0, got).equals(data.subarray(2 * DIRECT_IO_ALIGN, 3 * DIRECT_IO_ALIGN + 100)),
      ).toBe(true);
      // At an unaligned offset (buffered either way) and past the end.
      expect(await f.read(into, 50, 10)).toBe(50);
      expect(into.subarray(0, 50).equals(data.subarray(10, 60))).toBe(true);
      expect(await f.read(into, 100, 3 * DIRECT_IO_ALIGN + 100)).toBe(0);
    } finally {
      await f.close();
    }
  });

  it('appends at an unaligned offset and overwrites in place', async () => {
    const path = fresh();
    const a = filled(DIRECT_IO_ALIGN + 7);
    const b = filled(2 * DIRECT_IO_ALIGN);
    const f = await DirectFile.open(path, CREATE, 0o600, direct);
    try {
      await f.write(a, DIRECT_IO_ALIGN + 7, 0);
      await f.write(b, 2 * DIRECT_IO_ALIGN, DIRECT_IO_ALIGN + 7);
      await f.write(b, DIRECT_IO_ALIGN, 0);
      const expected = Buffer.concat([
        b.subarray(0, DIRECT_IO_ALIGN),
        a.subarray(DIRECT_IO_ALIGN, DIRECT_IO_ALIGN + 7),
        b.subarray(0, 2 * DIRECT_IO_ALIGN),
      ]);
      expect(readFileSync(path).equals(expected)).toBe(true);
    } finally {
      await f.close();
    }
  });

  it('writev takes aligned views as they are and ordinary buffers through the page cache, in order', async () => {
    const path = fresh();
    const big = filled(4 * DIRECT_IO_ALIGN);
    const aligned = [
      big.subarray(0, DIRECT_IO_ALIGN),
      big.subarray(2 * DIRECT_IO_ALIGN, 2 * DIRECT_IO_ALIGN + 300),
    ];
    const ordinary = [randomBytes(1000), randomBytes(5000)];
    const f = await DirectFile.open(path, CREATE, 0o600, direct);
    try {
      await f.writev(aligned, 0);
      const at = DIRECT_IO_ALIGN + 300;
      await f.writev(ordinary, at);
      // Ordinary buffers with a staging pool: copied into an aligned one (direct when possible).
      const staged = [randomBytes(3000), randomBytes(9000)];
      await f.writev(staged, 2 * DIRECT_IO_ALIGN, new AlignedPool(1));
      // Empty parts are skipped.
      await f.writev([new Uint8Array(0)], at + 6000);
      const expected = Buffer.concat([...aligned, ...ordinary]);
      Buffer.concat(staged).copy(expected, 2 * DIRECT_IO_ALIGN);
      expect(
        readFileSync(path).equals(
          Buffer.concat([expected, Buffer.concat(staged).subarray(expected.length - 2 * DIRECT_IO_ALIGN)]),
        ),
      ).toBe(true);
    } finally {
      await f.close();
    }
  });

  it('takes ordinary buffers too (through the page cache)', async () => {
    const path = fresh();
    const data = randomBytes(2 * DIRECT_IO_ALIGN + 5);
    const f = await DirectFile.open(path, CREATE, 0o600, direct);
    try {
      await f.write(data, data.length, 0);
      const back = Buffer.alloc(data.length);
      expect(await f.read(back, data.length, 0)).toBe(data.length);
      expect(back.equals(data)).toBe(true);
      // An aligned buffer too short for whole blocks: also through the page cache.
      const short = alignedBuffer(1).subarray(0, 100);
      expect(await f.read(short, 100, 0)).toBe(100);
      expect(short.equals(data.subarray(0, 100))).toBe(true);
    } finally {
      await f.close();
    }
  });

  it('refuses a path that exists, or is a symlink, when asked to create', async () => {
    const existing = fresh();
    writeFileSync(existing, 'x');
    await expect(DirectFile.open(existing, CREATE, 0o600, direct)).rejects.toMatchObject({ code: 'EEXIST' });
    const link = fresh();
    symlinkSync(join(dir, 'elsewhere'), link);
    await expect(DirectFile.open(link, CREATE, 0o600, direct)).rejects.toMatchObject({ code: 'EEXIST' });
    await expect(DirectFile.open(fresh(), constants.O_RDONLY, undefined, direct)).rejects.toMatchObject({
      code: 'ENOENT',
    });
    await expect(DirectFile.open(fresh(), CREATE | constants.O_APPEND, 0o600, direct)).rejects.toThrow(
      TypeError,
    );
  });
});
