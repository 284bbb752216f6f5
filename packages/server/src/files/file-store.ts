/**
 * End-to-end encrypted files on the server: creation under a quota, resumable streamed
 * uploads sealed chunk by chunk, and streamed (range) reads that decrypt only the chunks
 * they touch. Storage keeps the rows and the sealed chunks (the embedded backend in blob
 * files beside its database, PostgreSQL in `file_chunks`); this module owns the keys and
 * the at-rest format (chunk-format.ts).
 *
 * Keys: each file gets a fresh random 256-bit data key, wrapped at once by the KMS under
 * the context `file:<id>` (so a wrapped key copied to another file's row does not unwrap)
 * and stored only wrapped. A transfer unwraps it once, keeps it for the request, and zeroes
 * it when the request ends. Keys never appear in logs or error messages.
 *
 * Uploads are stored in batches of up to UPLOAD_BATCH_BYTES: one storage call (one sync of
 * the blob and one commit) per batch, not per chunk. While one batch is being written the
 * next is read and sealed; the request stream is read no further once a second batch is
 * full, so backpressure reaches the client through TCP.
 *
 * Memory: an upload holds one chunk buffer and at most two batches of sealed chunks; a read
 * holds at most two batches of READ_BATCH stored chunks (one being decrypted and sent, the
 * next being read from disk). Nothing is ever buffered whole, and no JS loop touches
 * single bytes.
 */
import { AES256_KEY_LEN, randomBytes } from '@qalqon/crypto';
import { alignedBuffer } from '@qalqon/fsio';
import { ServerError } from '../errors.js';
import type { Kms, WrappedKey } from '../kms/kms.js';
import { newId } from '../storage/sealed-rows.js';
import type { FileRecipients, NewFileChunk, Storage, StoredFile } from '../storage/types.js';
import { aint, aobject } from '../validate.js';
import {
  CHUNK_OVERHEAD,
  type ChunkLayout,
  chunkLength,
  FILE_CHUNK_BYTES,
  openChunk,
  sealChunk,
} from './chunk-format.js';

/** The file limits a service runs with (config.json `files`). */
export interface FileServiceLimits {
  /** The largest file accepted, bytes. */
  readonly maxFileBytes: number;
  /** The most bytes one user's files (complete and in progress) may add up to. */
  readonly quotaBytesPerUser: number;
  /** An incomplete upload untouched this long is deleted. */
  readonly incompleteTtlMs: number;
  /**
   * File content requests (uploads and downloads) one node serves at once. Each holds up
   * to ~12 MiB of buffers, so this bounds their memory (64: ~0.8 GiB); more are refused
   * with RATE_LIMITED until one ends.
   */
  readonly maxConcurrentTransfers: number;
  /** Of those, the most one user may have at once (so one user cannot take them all). */
  readonly maxConcurrentTransfersPerUser: number;
}

export const DEFAULT_FILE_LIMITS: FileServiceLimits = Object.freeze({
  maxFileBytes: 4 * 1024 ** 3,
  quotaBytesPerUser: 20 * 1024 ** 3,
  incompleteTtlMs: 24 * 3600_000,
  maxConcurrentTransfers: 64,
  maxConcurrentTransfersPerUser: 4,
});

/** The largest `maxFileBytes` a configuration may set (the wire's MAX_FILE_BYTES, 64 GiB). */
export const MAX_CONFIGURABLE_FILE_BYTES = 64 * 1024 ** 3;

/** Checks (and completes with the defaults) a partial limits object; INVALID_ARGUMENT. */
export function checkFileServiceLimits(v: unknown, label = 'files'): FileServiceLimits {
  const o = v === undefined ? {} : aobject(label, v);
  const pick = (name: keyof FileServiceLimits, min: number, max: number) =>
    o[name] === undefined ? DEFAULT_FILE_LIMITS[name] : aint(`${label}.${name}`, o[name], min, max);
  return {
    maxFileBytes: pick('maxFileBytes', 1, MAX_CONFIGURABLE_FILE_BYTES),
    quotaBytesPerUser: pick('quotaBytesPerUser', 0, Number.MAX_SAFE_INTEGER),
    incompleteTtlMs: pick('incompleteTtlMs', 60_000, 365 * 24 * 3600_000),
    maxConcurrentTransfers: pick('maxConcurrentTransfers', 1, 100_000),
    maxConcurrentTransfersPerUser: pick('maxConcurrentTransfersPerUser', 1, 100_000),
  };
}

/** Stored chunks a read fetches per storage call (the next call runs while these are sent). */
const READ_BATCH = 4;
/** Plaintext bytes an upload stores per storage call (one blob sync and one commit). */
export const UPLOAD_BATCH_BYTES = 4 * 1024 * 1024;

/** The KMS context a file's data key is wrapped under. */
export function fileKeyContext(fileId: string): string {
  return `file:${fileId}`;
}

function layoutOf(f: StoredFile): ChunkLayout {
  return { fileId: f.id, size: f.size, chunkSize: f.chunkSize };
}

export interface FileStoreOptions {
  readonly storage: Storage;
  readonly kms: Kms;
  readonly limits?: Partial<FileServiceLimits>;
  readonly clock?: () => number;
  /** Bytes committed by uploads and released by reads, for metrics. */
  readonly onBytes?: (direction: 'uploaded' | 'downloaded', bytes: number) => void;
}

export class FileStore {
  readonly limits: FileServiceLimits;
  readonly #storage: Storage;
  readonly #kms: Kms;
  readonly #clock: () => number;
  readonly #onBytes: (direction: 'uploaded' | 'downloaded', bytes: number) => void;

  constructor(options: FileStoreOptions) {
    this.#storage = options.storage;
    this.#kms = options.kms;
    this.limits = checkFileServiceLimits(options.limits);
    this.#clock = options.clock ?? Date.now;
    this.#onBytes = options.onBytes ?? (() => undefined);
  }

  /**
   * Creates an empty file of `size` bytes owned by `ownerId`, with a fresh data key
   * wrapped by the KMS. FILE_TOO_LARGE, QUOTA_EXCEEDED (checked atomically by the storage).
   */
  async create(ownerId: string, size: number, recipients: FileRecipients): Promise<StoredFile> {
    aint('size', size, 1, Number.MAX_SAFE_INTEGER);
    if (size > this.limits.maxFileBytes) {
      throw new ServerError(
        'FILE_TOO_LARGE',
        `a file of ${size} bytes exceeds the limit of ${this.limits.maxFileBytes} bytes`,
      );
    }
    const id = newId();
    const dek = randomBytes(AES256_KEY_LEN);
    let wrapped: WrappedKey;
    try {
      wrapped = await this.#kms.wrap(dek, fileKeyContext(id));
    } finally {
      dek.fill(0);
    }
    return this.#storage.createFile(
      {
        id,
        ownerId,
        size,
        chunkSize: FILE_CHUNK_BYTES,
        recipients,
        wrappedKey: { keyId: wrapped.keyId, ciphertext: wrapped.ciphertext },
      },
      { maxFileBytes: this.limits.maxFileBytes, quotaBytes: this.limits.quotaBytesPerUser },
    );
  }

  get(fileId: string): Promise<StoredFile | undefined> {
    return this.#storage.getFile(fileId);
  }

  usage(userId: string): Promise<number> {
    return this.#storage.fileUsage(userId);
  }

  delete(fileId: string, ownerId: string): Promise<void> {
    return this.#storage.deleteFile(fileId, ownerId);
  }

  /** Deletes incomplete uploads idle for longer than `incompleteTtlMs`; returns how many. */
  purgeIncomplete(): Promise<number> {
    return this.#storage.purgeIncompleteFiles(Math.max(0, this.#clock() - this.limits.incompleteTtlMs));
  }

  /** The file's data key: FILE_CORRUPT when the wrapped key in its row does not unwrap as this file's. */
  async #key(f: StoredFile): Promise<Uint8Array> {
    try {
      return await this.#kms.unwrap({
        keyId: f.wrappedKey.keyId,
        context: fileKeyContext(f.id),
        ciphertext: f.wrappedKey.ciphertext,
      });
    } catch (err) {
      if (err instanceof ServerError && err.code === 'KMS_UNWRAP_FAILED') {
        throw new ServerError('FILE_CORRUPT', `the data key of file ${f.id} does not unwrap`);
      }
      throw err;
    }
  }

  /**
   * Stores `length` bytes of `body` at byte `start` of the file, which must be `received`
   * and a chunk boundary (the caller checked the request; the storage re-checks against
   * the stored row, so a concurrent writer gets UPLOAD_OFFSET_MISMATCH). Whole chunks are
   * sealed as they fill and stored in batches (see the header): the promise resolves only
   * once every chunk is durably stored. When `body` ends early or fails (a connection cut
   * off), the whole chunks received so far are stored and the partial chunk is dropped:
   * the upload resumes from the file's `received`. A body longer than `length`, or one
   * that ends early, is INVALID_ARGUMENT (after storing the whole chunks before it).
   * Each piece of `body` is used only until the next is asked for, so an iterable may
   * reuse its buffers (chunkedBody does).
   */
  async upload(
    file: StoredFile,
    start: number,
    length: number,
    body: AsyncIterable<Uint8Array>,
  ): Promise<StoredFile> {
    const layout = layoutOf(file);
    if (start !== file.received || start % file.chunkSize !== 0) {
      throw new ServerError(
        'UPLOAD_OFFSET_MISMATCH',
        `file ${file.id} continues at byte ${file.received}, not ${start}`,
      );
    }
    aint('length', length, 1, file.size - start);
    if (start + length !== file.size && (start + length) % file.chunkSize !== 0) {
      throw new ServerError(
        'INVALID_ARGUMENT',
        `an upload must end at a multiple of ${file.chunkSize} bytes or at the end of the file`,
      );
    }
    const key = await this.#key(file);
    let current = file;
    // The batch being filled, and the one being stored (at most one at a time, in order).
    let batch: NewFileChunk[] = [];
    let batchBytes = 0;
    let storing: Promise<void> = Promise.resolve();
    let storeError: { error: unknown } | undefined;
    // Full-size stored-chunk buffers whose batch the storage has taken: sealed into again
    // (at most two batches' worth exist at once), so an upload allocates no new buffer per
    // chunk. Only a batch the storage accepted comes back here; a failed one is dropped.
    const spare: Uint8Array[] = [];
    const stride = file.chunkSize + CHUNK_OVERHEAD;
    const store = (chunks: NewFileChunk[], bytes: number) => {
      storing = storing.then(async () => {
        if (storeError) return;
        try {
          current = await this.#storage.appendFileChunks(file.id, chunks);
          this.#onBytes('uploaded', bytes);
          for (const c of chunks) if (c.data.length === stride) spare.push(c.data);
        } catch (error) {
          storeError = { error };
        }
      });
    };
    /** Hands the filled batch to the storage once the previous one is stored. */
    const submit = async () => {
      if (batch.length === 0) return;
      await storing;
      if (storeError) throw storeError.error;
      store(batch, batchBytes);
      batch = [];
      batchBytes = 0;
    };
    const batchLimit = Math.max(1, Math.floor(UPLOAD_BATCH_BYTES / file.chunkSize));
    try {
      let index = start / file.chunkSize;
      let want = chunkLength(layout, index);
      // Pieces that hold a whole chunk (chunkedBody yields exactly those) are sealed where
      // they lie; smaller ones are gathered in this buffer first (allocated when needed).
      let buf: Buffer | undefined;
      let fill = 0;
      let total = 0;
      try {
        for await (const piece of body) {
          if (total + piece.length > length) {
            throw new ServerError(
              'INVALID_ARGUMENT',
              `the body is longer than the ${length} bytes its Content-Range announced`,
            );
          }
          total += piece.length;
          let off = 0;
          while (off < piece.length) {
            let plain: Uint8Array | undefined;
            if (fill === 0 && piece.length - off >= want) {
              plain = piece.subarray(off, off + want);
              off += want;
            } else {
              buf ??= Buffer.allocUnsafe(Math.min(file.chunkSize, length));
              const n = Math.min(want - fill, piece.length - off);
              buf.set(piece.subarray(off, off + n), fill);
              fill += n;
              off += n;
              if (fill === want) plain = buf.subarray(0, want);
            }
            if (plain !== undefined) {
              // Aligned, so the embedded storage writes it to disk without a copy (@qalqon/fsio);
              // the file's last, shorter chunk too.
              const length = want + CHUNK_OVERHEAD;
              const out =
                (length === stride ? spare.pop() : undefined) ?? alignedBuffer(length).subarray(0, length);
              batch.push({
                index,
                bytes: want,
                data: sealChunk(key, layout, index, plain, out),
              });
              batchBytes += want;
              index++;
              want = chunkLength(layout, index);
              fill = 0;
              if (batch.length >= batchLimit) await submit();
            }
          }
        }
      } finally {
        // Whatever ends the body (its end, a cut connection, a refusal): the whole chunks
        // received are stored before this returns or throws.
        if (!storeError) await submit().catch(() => undefined);
        await storing;
      }
      if (storeError) throw storeError.error;
      if (total < length) {
        throw new ServerError(
          'INVALID_ARGUMENT',
          `the body ended after ${total} of ${length} bytes; ${current.received} bytes of the file are stored`,
        );
      }
      return current;
    } finally {
      key.fill(0);
    }
  }

  /**
   * The file's bytes `start`..`end` (inclusive), decrypting only the chunks they lie in.
   * The file must be complete. Throws FILE_CORRUPT (before releasing any byte of the bad
   * chunk) when a chunk is missing, misplaced or altered, or the key does not unwrap.
   */
  async *read(file: StoredFile, start: number, end: number): AsyncGenerator<Buffer, void, undefined> {
    if (!file.complete) throw new ServerError('INVALID_ARGUMENT', `file ${file.id} is not complete`);
    aint('start', start, 0, file.size - 1);
    aint('end', end, start, file.size - 1);
    const layout = layoutOf(file);
    const cs = file.chunkSize;
    const first = Math.floor(start / cs);
    const last = Math.floor(end / cs);
    const key = await this.#key(file);
    const fetch = (i: number) => {
      const n = Math.min(READ_BATCH, last - i + 1);
      const p = this.#storage.readFileChunks(file.id, i, n);
      // Awaited below; this only keeps an early exit from leaving it unhandled.
      p.catch(() => undefined);
      return p;
    };
    try {
      let next = fetch(first);
      for (let i = first; i <= last; i += READ_BATCH) {
        const n = Math.min(READ_BATCH, last - i + 1);
        const stored = await next;
        // Read ahead: the next batch comes off the disk while this one is decrypted and sent.
        if (i + READ_BATCH <= last) next = fetch(i + READ_BATCH);
        for (let j = 0; j < n; j++) {
          const index = i + j;
          const c = stored[j];
          if (c?.index !== index) {
            throw new ServerError('FILE_CORRUPT', `chunk ${index} of file ${file.id} is missing`);
          }
          const plain = openChunk(key, layout, index, c.data);
          const from = index === first ? start - index * cs : 0;
          const to = index === last ? end - index * cs + 1 : plain.length;
          const out = from === 0 && to === plain.length ? plain : plain.subarray(from, to);
          this.#onBytes('downloaded', out.length);
          yield out;
        }
      }
    } finally {
      key.fill(0);
    }
  }
}

/**
 * KEK rotation for file keys: re-wraps every file's data key that is not under the KMS's
 * active KEK version (call after `kms.rotate()`, before destroying an old version; the file
 * data is untouched). Each file is one compare-and-set, so several nodes may run it at once
 * and a crash midway leaves every key unwrappable (old or new version). Returns how many
 * were re-wrapped and which files' keys did not unwrap (corrupt rows, left as they are).
 */
export async function rewrapFileKeys(
  storage: Storage,
  kms: Kms,
): Promise<{ readonly rewrapped: number; readonly failed: readonly string[] }> {
  const { activeKeyId } = await kms.describe();
  let rewrapped = 0;
  const failed: string[] = [];
  let afterId: string | undefined;
  for (;;) {
    const page = await storage.listFileKeys({
      exceptKeyId: activeKeyId,
      ...(afterId === undefined ? {} : { afterId }),
      limit: 100,
    });
    for (const { fileId, wrappedKey } of page) {
      const context = fileKeyContext(fileId);
      let dek: Uint8Array;
      try {
        dek = await kms.unwrap({ keyId: wrappedKey.keyId, context, ciphertext: wrappedKey.ciphertext });
      } catch (err) {
        if (err instanceof ServerError && err.code === 'KMS_UNWRAP_FAILED') {
          failed.push(fileId);
          continue;
        }
        throw err;
      }
      try {
        const w = await kms.wrap(dek, context);
        if (
          await storage.replaceFileKey(fileId, wrappedKey.keyId, { keyId: w.keyId, ciphertext: w.ciphertext })
        ) {
          rewrapped++;
        }
      } finally {
        dek.fill(0);
      }
    }
    if (page.length < 100) return { rewrapped, failed };
    afterId = page[page.length - 1]?.fileId;
  }
}

/** How many files' keys each KEK version wraps: `kms destroy` must refuse a version still in use. */
export async function fileKeyVersions(storage: Storage): Promise<Map<string, number>> {
  return new Map((await storage.fileKeyVersions()).map((v) => [v.keyId, v.files]));
}
