/**
 * The embedded backend's file contents: one blob file per uploaded file in a private
 * directory beside the database (`files/` in the data directory, 0700; blobs 0600, named
 * by the file's id), holding its sealed chunks back to back at fixed offsets: chunk `i` at
 * `i × (chunkSize + FILE_CHUNK_OVERHEAD)`, the last one possibly shorter.
 *
 * Why not in the database: the chunks are already sealed with AES-256-GCM under the file's
 * own KMS-wrapped key and bound to their place (files/chunk-format.ts), so encrypting them
 * again as SQLCipher pages, and writing them twice through the WAL, protects nothing more
 * and cost most of an upload's time. The row (size, `received`, wrapped key, recipients)
 * stays in the database.
 *
 * Durability: an append writes its chunks with one positional write, fdatasyncs the blob
 * (and the directory when the blob is new), and only then does the caller commit the new
 * `received`. A crash in between leaves bytes past `received` that nothing reads and the
 * resumed upload overwrites. Below `received` a blob is never written again (appends
 * start at `received`, and one process writes a file's blob at a time: see `exclusive`),
 * so a copy of [0, stored length of `received`) is consistent with any database snapshot
 * that has that `received` (backup/backup.ts relies on this).
 *
 * Every call here is asynchronous (libuv's thread pool): a batch's write and its fdatasync
 * never block the event loop.
 *
 * Direct I/O (@qalqon/fsio): a write or read that starts at an aligned offset (every
 * chunk of a file whose stride is a multiple of 4096, as FILE_CHUNK_BYTES makes it)
 * bypasses the page cache through a reused aligned buffer (a file's last, partial block
 * goes through the page cache). Elsewhere, and on file systems without O_DIRECT, both are
 * buffered.
 */
import { constants, readdirSync, rmSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { AlignedPool, alignUp, DirectFile, isAligned } from '@qalqon/fsio';
import { ServerError } from '../errors.js';
import { ensurePrivateDir, fsyncDir, PRIVATE_FILE_MODE } from '../secure-file.js';
import { FILE_CHUNK_OVERHEAD } from './types.js';

/** The blob directory's name in the data directory. */
export const FILES_DIR = 'files';
const BLOB_NAME = /^[0-9a-f]{32}$/;

/** Bytes between the starts of two consecutive stored chunks of a file. */
export function chunkStride(chunkSize: number): number {
  return chunkSize + FILE_CHUNK_OVERHEAD;
}

/** The stored length of a file's chunks below `received` (the bytes a backup copies). */
export function storedLength(row: { readonly chunkSize: number; readonly received: number }): number {
  const n = Math.ceil(row.received / row.chunkSize);
  return row.received + n * FILE_CHUNK_OVERHEAD;
}

/** Per blob path, the tail of the chain of operations holding it (shared by every handle in the process). */
const locks = new Map<string, Promise<void>>();

export interface FileBlobsOptions {
  /** Use direct I/O where it applies (default true); false keeps every transfer buffered. */
  readonly directIo?: boolean;
}

export class FileBlobs {
  readonly dir: string;
  /** False once the file system refused O_DIRECT (or when turned off). */
  #direct: boolean;
  readonly #pool = new AlignedPool(2);

  /** Creates the directory (0700) if it does not exist. */
  constructor(dir: string, options: FileBlobsOptions = {}) {
    ensurePrivateDir(dir);
    this.dir = dir;
    this.#direct = options.directIo ?? true;
  }

  /** Whether the last transfers used direct I/O (for tests and diagnostics). */
  get directIo(): boolean {
    return this.#direct;
  }

  path(fileId: string): string {
    if (!BLOB_NAME.test(fileId)) throw new ServerError('INVALID_ARGUMENT', '"fileId" expected 32 hex digits');
    return join(this.dir, fileId);
  }

  /**
   * The blob, for direct I/O when `offset` is aligned and the file system allows it (a
   * refusal turns it off for this instance).
   */
  async #open(path: string, offset: number, flags: number, mode?: number): Promise<DirectFile> {
    const wantDirect = this.#direct && isAligned(offset);
    const file = await DirectFile.open(path, flags, mode, wantDirect);
    if (wantDirect && !file.direct) this.#direct = false;
    return file;
  }

  /**
   * Runs `fn` while no other call of `exclusive` for the same file runs in this process,
   * so two appends to one file never write its blob at once (the second one then finds
   * `received` moved and writes nothing).
   */
  async exclusive<T>(fileId: string, fn: () => Promise<T>): Promise<T> {
    const key = this.path(fileId);
    const before = locks.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((r) => {
      release = r;
    });
    const tail = before.then(() => mine);
    locks.set(key, tail);
    await before;
    try {
      return await fn();
    } finally {
      release();
      if (locks.get(key) === tail) locks.delete(key);
    }
  }

  /**
   * Writes `parts` back to back at `offset` of the file's blob and syncs it. The blob is
   * created (0600, and the directory synced) only with `create`; otherwise a missing blob
   * is FILE_CORRUPT (it was lost, or the file was deleted meanwhile: the caller tells).
   */
  async write(fileId: string, offset: number, parts: readonly Uint8Array[], create: boolean): Promise<void> {
    const path = this.path(fileId);
    let file: DirectFile;
    let created = false;
    try {
      file = await this.#open(path, offset, constants.O_RDWR);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (!create) throw new ServerError('FILE_CORRUPT', `the stored contents of file ${fileId} are missing`);
      // O_EXCL refuses a planted file or symlink; a concurrent creator cannot exist (exclusive).
      const flags = constants.O_RDWR | constants.O_CREAT | constants.O_EXCL;
      file = await this.#open(path, offset, flags, PRIVATE_FILE_MODE);
      created = true;
    }
    try {
      // Aligned parts (FileStore seals into such) go to the disk as they are; others are
      // copied into one aligned buffer first.
      await file.writev(parts, offset, this.#pool);
      await file.datasync();
    } finally {
      await file.close();
    }
    if (created) fsyncDir(this.dir);
  }

  /**
   * Up to `length` bytes at `offset` of the file's blob: fewer where the blob ends early,
   * none when it does not exist.
   */
  async read(fileId: string, offset: number, length: number): Promise<Buffer> {
    let file: DirectFile;
    try {
      file = await this.#open(this.path(fileId), offset, constants.O_RDONLY);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return Buffer.alloc(0);
      throw err;
    }
    try {
      if (!file.direct) {
        const buf = Buffer.allocUnsafe(length);
        const got = await file.read(buf, length, offset);
        return got === length ? buf : buf.subarray(0, got);
      }
      // Through an aligned buffer, copied out (the caller keeps what it gets).
      const buf = this.#pool.take(alignUp(length));
      try {
        const got = await file.read(buf, length, offset);
        const out = Buffer.allocUnsafe(got);
        buf.copy(out, 0, 0, got);
        return out;
      } finally {
        this.#pool.give(buf);
      }
    } finally {
      await file.close();
    }
  }

  /** Removes the file's blob (after its row is gone); absent is fine. */
  async remove(fileId: string): Promise<void> {
    try {
      await unlink(this.path(fileId));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /**
   * Removes every blob whose file has no row (`exists` says false): what a crash between
   * a row's deletion and its blob's removal leaves behind. A blob never exists before its
   * row does, so this never removes a live file's contents.
   */
  sweep(exists: (fileId: string) => boolean): number {
    let removed = 0;
    for (const name of readdirSync(this.dir)) {
      if (BLOB_NAME.test(name) && !exists(name)) {
        rmSync(join(this.dir, name), { force: true });
        removed++;
      }
    }
    return removed;
  }
}
