/**
 * Direct I/O (O_DIRECT): large sequential writes and reads that bypass the page cache,
 * moving bytes between the disk and a few reused, page-aligned buffers. The server writes
 * and reads its file blobs this way, and the client writes a download's output.
 *
 * Why: an uploaded file's chunks are written once, synced at once, and read again only on
 * download; a downloaded file is written once and synced. Through the page cache every MiB
 * first lands in a newly allocated page-cache page and is then written back by the sync;
 * on a virtual machine whose free memory the host reclaims (this project's CI machines:
 * 2-2.7 ms of kernel CPU per MiB, against 0.05 ms direct, measured with `bench/files.ts`
 * and perf) that copy dominated a transfer's cost. Databases use direct I/O for the same
 * reason. It changes nothing about durability: the caller still fdatasyncs before it
 * reports the bytes stored (the sync also flushes the device's cache and the file's size).
 *
 * Linux requires the buffer's address, the file offset and the length to be multiples of
 * the device's logical block size; DIRECT_IO_ALIGN (4096) covers every block size in use.
 * Buffers come from WebAssembly memories, whose backing store V8 maps page-aligned
 * (JavaScript has no other way to get an aligned buffer). `DirectFile` writes the aligned
 * part of a write directly and the unaligned rest (a file's last partial block) through a
 * second, buffered descriptor, so files keep their exact length. Where the platform or
 * the file system refuses O_DIRECT (tmpfs, some network file systems, not Linux), or an
 * offset is not aligned, it reads and writes buffered, as any file.
 */
import { constants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';

/** The alignment of direct-I/O buffers, offsets and lengths. */
export const DIRECT_IO_ALIGN = 4096;
const WASM_PAGE = 65536;

/** `n` rounded up to a multiple of DIRECT_IO_ALIGN. */
export function alignUp(n: number): number {
  return Math.ceil(n / DIRECT_IO_ALIGN) * DIRECT_IO_ALIGN;
}

export function isAligned(n: number): boolean {
  return n % DIRECT_IO_ALIGN === 0;
}

/** The backing stores `alignedBuffer` made: a view's address is aligned iff its offset is. */
const alignedStores = new WeakSet<ArrayBufferLike>();

/** A page-aligned buffer of at least `size` bytes (its length is `size` rounded up to 64 KiB). */
export function alignedBuffer(size: number): Buffer {
  const pages = Math.max(1, Math.ceil(size / WASM_PAGE));
  const store = new WebAssembly.Memory({ initial: pages, maximum: pages }).buffer;
  alignedStores.add(store);
  return Buffer.from(store);
}

/** Whether `view` starts at an aligned address (it lies in a buffer from `alignedBuffer`). */
export function isAlignedView(view: Uint8Array): boolean {
  return alignedStores.has(view.buffer) && isAligned(view.byteOffset);
}

/** O_DIRECT where this platform has it (Linux); 0 elsewhere. */
const O_DIRECT: number = (constants as { O_DIRECT?: number }).O_DIRECT ?? 0;

/**
 * Opens `path` for direct I/O with the given open(2) flags and mode; undefined when the
 * platform or the file system does not support it (the caller then opens it buffered).
 * Other errors (ENOENT, EEXIST, EACCES…) are thrown as they are.
 */
export async function openDirect(
  path: string,
  flags: number,
  mode?: number,
): Promise<FileHandle | undefined> {
  if (O_DIRECT === 0) return undefined;
  try {
    return await open(path, flags | O_DIRECT, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
    throw err;
  }
}

/**
 * A few aligned buffers, reused: an append or a read takes one for as long as it runs and
 * gives it back. At most `keep` are kept between uses (the rest are left to the GC), so a
 * burst of concurrent transfers does not pin memory forever.
 */
export class AlignedPool {
  readonly #free: Buffer[] = [];
  readonly #keep: number;

  constructor(keep = 4) {
    this.#keep = keep;
  }

  /** A buffer of at least `size` bytes. */
  take(size: number): Buffer {
    const i = this.#free.findIndex((b) => b.length >= size);
    if (i >= 0) return this.#free.splice(i, 1)[0]!;
    return alignedBuffer(size);
  }

  give(buf: Buffer): void {
    if (this.#free.length < this.#keep) this.#free.push(buf);
  }
}

/**
 * A file opened for direct I/O where possible. A transfer goes direct when the file offset
 * is aligned and the buffer comes from `alignedBuffer` (or an AlignedPool); any other
 * goes through the page cache, so every call works with any buffer.
 */
export class DirectFile {
  readonly path: string;
  /** The O_DIRECT descriptor; undefined when direct I/O is not available for this file. */
  readonly #direct: FileHandle | undefined;
  /** The buffered descriptor: every transfer without `direct`, and the unaligned pieces with it. */
  readonly #buffered: FileHandle;

  private constructor(path: string, direct: FileHandle | undefined, buffered: FileHandle) {
    this.path = path;
    this.#direct = direct;
    this.#buffered = buffered;
  }

  /**
   * Opens `path` with open(2) `flags` (O_CREAT, O_EXCL… as usual; O_APPEND is refused) and
   * `mode`. With `direct: false`, or where direct I/O is unavailable, the file is buffered.
   */
  static async open(path: string, flags: number, mode?: number, direct = true): Promise<DirectFile> {
    if ((flags & constants.O_APPEND) !== 0) throw new TypeError('DirectFile does not append');
    const d = direct ? await openDirect(path, flags, mode) : undefined;
    if (!d) return new DirectFile(path, undefined, await open(path, flags, mode));
    // The buffered descriptor for unaligned pieces: the same file, opened again at once and
    // checked to be the same inode (never a symlink or a file put there meanwhile).
    try {
      const reopen = flags & ~(constants.O_CREAT | constants.O_EXCL | constants.O_TRUNC);
      const b = await open(path, reopen | constants.O_NOFOLLOW);
      const [sd, sb] = await Promise.all([d.stat(), b.stat()]);
      if (sd.dev !== sb.dev || sd.ino !== sb.ino) {
        await b.close();
        throw Object.assign(new Error(`${path} was replaced while it was opened`), { code: 'EEXIST' });
      }
      return new DirectFile(path, d, b);
    } catch (err) {
      await d.close();
      throw err;
    }
  }

  /** Whether aligned transfers bypass the page cache. */
  get direct(): boolean {
    return this.#direct !== undefined;
  }

  /** Writes `buf[0, length)` at `position`, all of it (short writes are continued). */
  async write(buf: Uint8Array, length: number, position: number): Promise<void> {
    let done = 0;
    if (this.#direct && isAligned(position) && isAlignedView(buf)) {
      const aligned = length - (length % DIRECT_IO_ALIGN);
      while (done < aligned) {
        const { bytesWritten } = await this.#direct.write(buf, done, aligned - done, position + done);
        done += bytesWritten;
        // A short, unaligned direct write (rare): the rest goes through the page cache.
        if (bytesWritten === 0 || !isAligned(bytesWritten)) break;
      }
    }
    if (done === length) return;
    const fh = this.#buffered;
    while (done < length) {
      const { bytesWritten } = await fh.write(buf, done, length - done, position + done);
      if (bytesWritten === 0) throw Object.assign(new Error('a write made no progress'), { code: 'EIO' });
      done += bytesWritten;
    }
  }

  /**
   * Writes `parts` back to back at `position`, all of them. Directly, without a copy, when
   * every part is an aligned view (isAlignedView) and all but the last have aligned
   * lengths (the last one's unaligned tail goes through the page cache). Otherwise, with a
   * `staging` pool, the parts are copied into one aligned buffer from it and written
   * directly; without one, they are written through the page cache.
   */
  async writev(parts: readonly Uint8Array[], position: number, staging?: AlignedPool): Promise<void> {
    let pending = parts.filter((p) => p.length > 0);
    const last = pending.length - 1;
    if (!this.#direct || !isAligned(position) || last < 0) return this.#writevBuffered(pending, position);
    if (!pending.every((p, i) => isAlignedView(p) && (i === last || isAligned(p.length)))) {
      if (!staging) return this.#writevBuffered(pending, position);
      let total = 0;
      for (const p of pending) total += p.length;
      const buf = staging.take(total);
      try {
        let at = 0;
        for (const p of pending) {
          buf.set(p, at);
          at += p.length;
        }
        return await this.write(buf, total, position);
      } finally {
        staging.give(buf);
      }
    }
    const tail = pending[last]!.length % DIRECT_IO_ALIGN;
    const direct = pending.map((p, i) => (i === last ? p.subarray(0, p.length - tail) : p));
    const { bytesWritten } = await this.#direct.writev(direct, position);
    // The unaligned tail, or what a short direct write left (rare), through the page cache.
    pending = rest(pending, bytesWritten);
    await this.#writevBuffered(pending, position + bytesWritten);
  }

  async #writevBuffered(parts: readonly Uint8Array[], position: number): Promise<void> {
    let pending = parts.filter((p) => p.length > 0);
    while (pending.length > 0) {
      const { bytesWritten } = await this.#buffered.writev(pending, position);
      if (bytesWritten === 0) throw Object.assign(new Error('a write made no progress'), { code: 'EIO' });
      position += bytesWritten;
      pending = rest(pending, bytesWritten);
    }
  }

  /**
   * Reads up to `length` bytes at `position` into `buf`; fewer only where the file ends.
   * Returns how many. Direct when `buf` is aligned and holds alignUp(length) bytes.
   */
  async read(buf: Uint8Array, length: number, position: number): Promise<number> {
    if (this.#direct && isAligned(position) && isAlignedView(buf) && buf.length >= alignUp(length)) {
      const padded = alignUp(length);
      let got = 0;
      // Whole aligned blocks until the file ends (a short read there is the last).
      while (got < padded) {
        const { bytesRead } = await this.#direct.read(buf, got, padded - got, position + got);
        got += bytesRead;
        if (bytesRead === 0 || !isAligned(bytesRead)) break;
      }
      return Math.min(got, length);
    }
    const fh = this.#buffered;
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, position + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got;
  }

  /** fdatasync: flushes the file, whichever descriptor wrote (both reach the same inode). */
  async datasync(): Promise<void> {
    await this.#buffered.datasync();
  }

  async sync(): Promise<void> {
    await this.#buffered.sync();
  }

  async close(): Promise<void> {
    await Promise.all([this.#direct?.close(), this.#buffered.close()]);
  }
}

/** What is left of `parts` once their first `written` bytes are written. */
function rest(parts: readonly Uint8Array[], written: number): Uint8Array[] {
  let left = written;
  const out: Uint8Array[] = [];
  for (const p of parts) {
    if (left >= p.length) {
      left -= p.length;
      continue;
    }
    out.push(left > 0 ? p.subarray(left) : p);
    left = 0;
  }
  return out;
}
