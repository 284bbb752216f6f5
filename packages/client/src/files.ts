/**
 * Moving an end-to-end encrypted file to and from the server (routes of @qalqon/wire
 * files.ts), streamed both ways so that a large file never sits in memory:
 *
 * - upload: the source is read in blocks, sealed segment by segment (file-crypto.ts) and
 *   streamed in PUTs of at most UPLOAD_PART_BYTES with `Content-Range`. A broken transfer
 *   resumes from the server's `received` (GET /v1/files/:id): the segments from there are
 *   sealed again, which gives the same bytes because the nonce comes from the segment's
 *   index and the plaintext is the same: the source is checked (size, modification and
 *   change times) after every block it is read, and a change abandons the upload
 *   (FILE_CHANGED) rather than seal other plaintext under the same key and nonce.
 * - download: the ciphertext is decrypted as it arrives into a temporary file beside the
 *   target (mode 0600), a broken transfer resumes with `Range` from the first segment not
 *   yet verified, and only when the last segment opens (it is sealed as final) and the
 *   plaintext's SHA-256 equals the one in the message is the file renamed into place. Any
 *   failure removes the temporary file: no output at all, never a partial or forged one.
 *
 * The server sees the ciphertext's size and who may read it (users or a channel), nothing
 * else: the key, name, type, plaintext size and hash are in the message only.
 */
import { createHash } from 'node:crypto';
import { constants as fsConstants, type Stats } from 'node:fs';
import { type FileHandle, lstat, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { AES256_KEY_LEN, constantTimeEqual, GCM_TAG_LEN, randomBytes } from '@qalqon/crypto';
import { AlignedPool, chunkedBody, DirectFile } from '@qalqon/fsio';
import { FileStatus, isWireError, OkResponse } from '@qalqon/wire';
import { ClientError } from './errors.js';
import {
  ciphertextSize,
  FILE_SEALED_SEGMENT_BYTES,
  FILE_SEGMENT_BYTES,
  MAX_FILE_PLAINTEXT_BYTES,
  plainRange,
  SegmentOpener,
  sealedOffset,
  sealSegmentsInto,
  segmentCount,
} from './file-crypto.js';
import type { ServerConnection } from './transport.js';

/**
 * Ciphertext bytes per PUT, at most: rounded down to a multiple of the file's at-rest chunk
 * size as the server reports it (`chunkSize`), so every part but the last ends on a chunk
 * boundary (the server requires that of a PUT that does not reach the end of the file). A
 * broken PUT costs little: the server keeps every whole chunk it received, and the upload
 * resumes from there. Each PUT is a new connection and ends with the server storing its
 * last batch before it answers, during which nothing flows: 256 MiB makes that pause rare.
 */
export const UPLOAD_PART_BYTES = 256 * 1024 * 1024;
/** Consecutive failed attempts (without progress) before an upload or download gives up. */
export const TRANSFER_ATTEMPTS = 5;
/** The wait before the first retry; doubled for each further one. */
const RETRY_BASE_MS = 250;
/** The longest a transfer waits between two attempts, whatever the server asks. */
export const MAX_RETRY_WAIT_MS = 10_000;
/** Segments read from the source, hashed and sealed at once (4 MiB of plaintext). */
const READ_BLOCK_SEGMENTS = 64;
/**
 * A download body is read in pieces of this many whole sealed segments (~1 MiB), so each
 * segment is opened where it lies and the socket's 16 KiB reads cost one promise round per
 * piece, not one each.
 */
const DOWNLOAD_PIECE_BYTES = 16 * FILE_SEALED_SEGMENT_BYTES;
/** Plaintext bytes a download collects before writing them out. */
const WRITE_BATCH_BYTES = 4 * 1024 * 1024;
/** Batches a download may have queued for writing before it stops taking more from the socket. */
const WRITES_IN_FLIGHT = 4;
/** A download syncs its temporary file after each this many bytes written. */
const SYNC_EVERY_BYTES = 64 * 1024 * 1024;
/** Largest image a thumbnail is made of: bytes, and pixels (width × height) by its header. */
export const THUMBNAIL_MAX_SOURCE_BYTES = 32 * 1024 * 1024;
export const THUMBNAIL_MAX_SOURCE_PIXELS = 40_000_000;
/** A thumbnail's longest side. */
export const THUMBNAIL_MAX_SIDE = 256;

export interface FileProgress {
  /** `upload` or `download` of the file itself; `thumbnail` for its thumbnail's upload. */
  readonly phase: 'upload' | 'download' | 'thumbnail';
  /** Ciphertext bytes the server has (upload) or this client has verified (download). */
  readonly done: number;
  readonly total: number;
}
export type ProgressListener = (p: FileProgress) => void;

/** What the recipient needs to fetch and check a file: all of it end-to-end encrypted. */
export interface FileSecret {
  readonly id: string;
  readonly key: Uint8Array;
  /** Plaintext bytes. */
  readonly size: number;
  readonly sha256: Uint8Array;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * How long to wait before attempt `failures` + 1 after `err`: exponential backoff, or the
 * server's retry-after when it asked for longer (at most MAX_RETRY_WAIT_MS: a server may
 * not park a transfer indefinitely).
 */
export function retryDelay(err: unknown, failures: number): number {
  const backoff = RETRY_BASE_MS * 2 ** (failures - 1);
  const asked = isWireError(err) ? (err.retryAfterMs ?? 0) : 0;
  return Math.min(MAX_RETRY_WAIT_MS, Math.max(backoff, asked));
}

/** Failures worth another attempt: the connection, or a server that is busy or out of step. */
function retryable(err: unknown): boolean {
  if (err instanceof ClientError) return err.code === 'SERVER_UNREACHABLE';
  return (
    isWireError(err) &&
    (err.code === 'UNAVAILABLE' ||
      err.code === 'RATE_LIMITED' ||
      err.code === 'UPLOAD_OFFSET_MISMATCH' ||
      err.code === 'INTERNAL')
  );
}

// --- the source file -----------------------------------------------------------------------

/** Where an upload's plaintext comes from: a file on disk, or bytes in memory (a thumbnail). */
export interface SourceFile {
  readonly size: number;
  /** Its first (up to) 64 bytes, for `sniffMime`. */
  readonly head: Uint8Array;
  /**
   * Exactly `length` bytes at `position`; FILE_CHANGED if the source changed meanwhile.
   * With `into` (at least `length` bytes) they are read into it and a view of it returned.
   */
  read(position: number, length: number, into?: Uint8Array): Promise<Uint8Array>;
  /** FILE_CHANGED unless the source is as it was when opened. */
  checkUnchanged(): Promise<void>;
  close(): Promise<void>;
}

function changed(): ClientError {
  return new ClientError(
    'FILE_CHANGED',
    'the file changed while it was being sent; the upload was abandoned (send it again once it is complete)',
  );
}

/** Opens a regular file for sending (refusing FIFOs, devices and directories). */
export async function openSource(path: string): Promise<SourceFile> {
  let handle: FileHandle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new ClientError('INVALID_ARGUMENT', `cannot open the file to send (${code})`);
  }
  try {
    const first: Stats = await handle.stat();
    if (!first.isFile()) throw new ClientError('INVALID_ARGUMENT', 'the path to send is not a regular file');
    if (first.size > MAX_FILE_PLAINTEXT_BYTES) {
      throw new ClientError('INVALID_ARGUMENT', `the file is larger than ${MAX_FILE_PLAINTEXT_BYTES} bytes`);
    }
    const checkUnchanged = async () => {
      const now = await handle.stat();
      if (
        now.size !== first.size ||
        now.mtimeMs !== first.mtimeMs ||
        now.ctimeMs !== first.ctimeMs ||
        now.ino !== first.ino
      ) {
        throw changed();
      }
    };
    const read = async (position: number, length: number, into?: Uint8Array) => {
      const buf =
        into !== undefined && into.length >= length ? into.subarray(0, length) : new Uint8Array(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await handle.read(buf, got, length - got, position + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      // After the read: a change before or during it shows in the times (or the length).
      await checkUnchanged();
      if (got !== length) throw changed();
      return buf;
    };
    const head = first.size > 0 ? await read(0, Math.min(64, first.size)) : new Uint8Array(0);
    return { size: first.size, head, read, checkUnchanged, close: () => handle.close() };
  } catch (err) {
    await handle.close();
    throw err;
  }
}

/** Bytes in memory as a source (they cannot change). */
export function memorySource(bytes: Uint8Array): SourceFile {
  const copy = bytes.slice();
  return {
    size: copy.length,
    head: copy.subarray(0, 64),
    read: async (position, length, into) => {
      if (position < 0 || position + length > copy.length) throw changed();
      if (into === undefined || into.length < length) return copy.slice(position, position + length);
      into.set(copy.subarray(position, position + length));
      return into.subarray(0, length);
    },
    checkUnchanged: async () => undefined,
    close: async () => undefined,
  };
}

/** The type of a file by its first bytes (the few kinds a viewer cares about), else octet-stream. */
export function sniffMime(head: Uint8Array): string {
  const starts = (sig: readonly number[], at = 0) =>
    head.length >= at + sig.length && sig.every((b, i) => head[at + i] === b);
  if (starts([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return 'image/png';
  if (starts([0xff, 0xd8, 0xff])) return 'image/jpeg';
  if (starts([0x47, 0x49, 0x46, 0x38])) return 'image/gif';
  if (starts([0x52, 0x49, 0x46, 0x46]) && starts([0x57, 0x45, 0x42, 0x50], 8)) return 'image/webp';
  if (starts([0x25, 0x50, 0x44, 0x46, 0x2d])) return 'application/pdf';
  if (starts([0x50, 0x4b, 0x03, 0x04])) return 'application/zip';
  return 'application/octet-stream';
}

// --- upload ----------------------------------------------------------------------------------

/**
 * The sealed bytes [from, to) of the ciphertext of `src` under `key`, one piece per block
 * of up to READ_BLOCK_SEGMENTS segments (each block's segments sealed back to back into one
 * buffer, so the socket gets one large write per block). Feeds the plaintext of every
 * segment not yet hashed to `hash` (in order, once). The next block is read from disk while
 * this one is hashed, sealed and sent.
 */
async function* sealedStream(
  src: SourceFile,
  key: Uint8Array,
  from: number,
  to: number,
  hash: { update(b: Uint8Array): void; segments: number },
  onSent: (bytes: number) => void,
  sealedBuffers: AlignedPool,
): AsyncGenerator<Uint8Array> {
  const count = segmentCount(src.size);
  const lastOfFile = count - 1;
  const first = Math.floor(from / FILE_SEALED_SEGMENT_BYTES);
  const last = Math.min(lastOfFile, Math.floor((to - 1) / FILE_SEALED_SEGMENT_BYTES));
  // Blocks of segments [s, e): the plaintext bytes read for them, into one of two buffers
  // that take turns (the block being hashed and sealed, and the next one being read).
  const spare: Uint8Array[] = [];
  const readBlock = (s: number, e: number) => {
    const start = plainRange(s, src.size).start;
    const into = spare.pop() ?? new Uint8Array(Math.min(src.size, READ_BLOCK_SEGMENTS * FILE_SEGMENT_BYTES));
    const bytes = src.read(start, plainRange(e - 1, src.size).end - start, into);
    bytes.catch(() => undefined);
    return { s, e, bytes, into };
  };
  /** Gives a block's buffer back once its bytes are hashed and sealed (both synchronous). */
  const done = (into: Uint8Array) => {
    if (spare.length < 2) spare.push(into);
  };
  let ahead: ReturnType<typeof readBlock> | undefined;
  /** Segments [s, min(s + per block, end)) and the read of the next block of the same run. */
  const block = async (s: number, end: number) => {
    const e = Math.min(end, s + READ_BLOCK_SEGMENTS);
    let cur = ahead;
    if (cur?.s !== s || cur.e !== e) {
      // (Not the block read ahead: that read may still be writing into its buffer, which is
      // therefore never reused.)
      cur = readBlock(s, e);
    }
    ahead = e < end ? readBlock(e, Math.min(end, e + READ_BLOCK_SEGMENTS)) : undefined;
    return { e, plain: await cur.bytes, into: cur.into };
  };
  // Segments the server claims to hold but this attempt never read: hashed all the same.
  for (let s = hash.segments; s < first; ) {
    const { e, plain, into } = await block(s, first);
    hash.update(plain);
    hash.segments = e;
    done(into);
    s = e;
  }
  for (let s = first; s <= last; ) {
    const { e, plain, into } = await block(s, last + 1);
    if (hash.segments >= s && hash.segments < e) {
      hash.update(plain.subarray((hash.segments - s) * FILE_SEGMENT_BYTES));
      hash.segments = e;
    }
    const length = plain.length + (e - s) * GCM_TAG_LEN;
    const sealed = sealedBuffers.take(length).subarray(0, length);
    sealSegmentsInto(key, s, lastOfFile, plain, sealed);
    done(into);
    const at = sealedOffset(s);
    const piece = sealed.subarray(Math.max(0, from - at), Math.min(sealed.length, to - at));
    yield piece;
    onSent(piece.length);
    s = e;
  }
}

/**
 * Encrypts `src` under a fresh key and uploads it for `readers` (users, or a channel id);
 * resumes after a broken connection. On failure the server's partial upload is deleted.
 */
export async function uploadFile(
  conn: ServerConnection,
  src: SourceFile,
  readers: { to: string[] } | { channel: string },
  phase: 'upload' | 'thumbnail',
  onProgress?: ProgressListener,
): Promise<FileSecret> {
  const key = randomBytes(AES256_KEY_LEN);
  const total = ciphertextSize(src.size);
  const created = await conn.request('POST', '/v1/files', FileStatus, { size: total, ...readers });
  if (created.size !== total || created.received !== 0) {
    throw new ClientError('SERVER_PROTOCOL', 'the server created another upload than the one asked for');
  }
  const id = created.id;
  const path = `/v1/files/${id}`;
  const partBytes = Math.max(1, Math.floor(UPLOAD_PART_BYTES / created.chunkSize)) * created.chunkSize;
  const hasher = createHash('sha256');
  const hash = { update: (b: Uint8Array) => hasher.update(b), segments: 0 };
  // The buffers blocks are sealed into: one is sealed into again once the socket has
  // written it out (upload's onWritten), so an upload allocates a few, not one per block.
  const sealedBuffers = new AlignedPool(3);
  try {
    let offset = 0;
    let failures = 0;
    onProgress?.({ phase, done: 0, total });
    while (offset < total) {
      const end = Math.min(total, (Math.floor(offset / partBytes) + 1) * partBytes);
      let sent = offset;
      try {
        const body = sealedStream(
          src,
          key,
          offset,
          end,
          hash,
          (n) => {
            sent += n;
            onProgress?.({ phase, done: sent, total });
          },
          sealedBuffers,
        );
        // The next block is sealed while the socket still sends the one before (upload's
        // pieces in flight); a block's buffer is sealed into again once it is written out.
        const st = await conn.upload(
          `${path}/content`,
          FileStatus,
          end - offset,
          { 'content-range': `bytes ${offset}-${end - 1}/${total}` },
          body,
          // Each piece is a view of a whole buffer from the pool.
          (piece) => sealedBuffers.give(Buffer.from(piece.buffer)),
        );
        if (st.id !== id || st.size !== total || st.received < end) {
          throw new ClientError('SERVER_PROTOCOL', 'the server did not take the upload as sent');
        }
        offset = st.received;
        failures = 0;
      } catch (err) {
        if (!retryable(err) || ++failures >= TRANSFER_ATTEMPTS) throw err;
        await sleep(retryDelay(err, failures));
        // Where to go on: what the server holds (it keeps a broken PUT's bytes up to a chunk boundary).
        const st = await conn.request('GET', path, FileStatus);
        if (st.id !== id || st.size !== total || st.received > total) {
          throw new ClientError('SERVER_PROTOCOL', 'the server reports an impossible upload state');
        }
        if (st.received > offset) failures = 0;
        offset = st.received;
        onProgress?.({ phase, done: offset, total });
      }
    }
    // Segments past the last upload's start that were skipped (never, unless the server lied).
    if (hash.segments !== segmentCount(src.size)) {
      throw new ClientError('SERVER_PROTOCOL', 'the server took the upload out of order');
    }
    await src.checkUnchanged();
    return { id, key, size: src.size, sha256: new Uint8Array(hasher.digest()) };
  } catch (err) {
    key.fill(0);
    // Best effort: an abandoned upload should not hold the user's quota.
    await conn.request('DELETE', path, OkResponse).catch(() => undefined);
    throw err;
  }
}

// --- download --------------------------------------------------------------------------------

/** `path` must not exist yet and its directory must; the temporary file goes beside it. */
async function prepareOutput(outPath: string): Promise<{ tmp: string; handle: DirectFile }> {
  if (typeof outPath !== 'string' || outPath === '') {
    throw new ClientError('INVALID_ARGUMENT', '"out" expected a file path');
  }
  if (await lstat(outPath).catch(() => undefined)) {
    throw new ClientError('INVALID_ARGUMENT', 'the output path already exists; choose another or remove it');
  }
  const tmp = join(
    dirname(outPath),
    `.${basename(outPath)}.${Buffer.from(randomBytes(6)).toString('hex')}.part`,
  );
  try {
    // Direct I/O where the file system has it (@qalqon/fsio): the plaintext goes from this
    // process's reused buffers to the disk, never through newly allocated page cache.
    const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL;
    return { tmp, handle: await DirectFile.open(tmp, flags, 0o600) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new ClientError(
      'INVALID_ARGUMENT',
      `cannot create the output file beside ${basename(outPath)} (${code})`,
    );
  }
}

/**
 * Streams segments `first..last` of `file` from the server through `opener` (with Range
 * resumption after a broken connection) and hands each verified plaintext piece to `sink`.
 */
async function fetchSegments(
  conn: ServerConnection,
  file: FileSecret,
  opener: SegmentOpener,
  last: number,
  sink: (plain: Uint8Array) => Promise<void> | void,
): Promise<void> {
  const total = ciphertextSize(file.size);
  const lastEnd = Math.min(total, sealedOffset(last + 1)) - 1;
  let failures = 0;
  while (!opener.done) {
    const start = sealedOffset(opener.next);
    const before = opener.next;
    try {
      const whole = start === 0 && lastEnd === total - 1;
      const dl = await conn.download(
        `/v1/files/${file.id}/content`,
        whole ? undefined : { start, end: lastEnd },
      );
      try {
        const expect = whole
          ? dl.status === 200 || dl.contentRange === `bytes 0-${lastEnd}/${total}`
          : dl.status === 206 && dl.contentRange === `bytes ${start}-${lastEnd}/${total}`;
        if (!expect || (dl.contentLength !== undefined && dl.contentLength !== lastEnd - start + 1)) {
          throw new ClientError(
            'FILE_INVALID',
            'the server answers with another size or range than the file has (the file was altered)',
          );
        }
        try {
          // Read in runs of whole segments, each opened where it lies (@qalqon/fsio chunkedBody).
          for await (const chunk of chunkedBody(dl.body, DOWNLOAD_PIECE_BYTES)) {
            for (const plain of opener.push(chunk)) {
              // Most pieces are taken synchronously: no promise to wait for.
              const pending = sink(plain);
              if (pending) await pending;
            }
          }
        } catch (err) {
          if (err instanceof ClientError) throw err;
          throw new ClientError('SERVER_UNREACHABLE', 'the download broke off');
        }
        if (!opener.done) throw new ClientError('SERVER_UNREACHABLE', 'the download ended early');
      } finally {
        dl.close();
      }
    } catch (err) {
      if (!retryable(err) || isWireError(err, 'UPLOAD_OFFSET_MISMATCH')) throw err;
      if (opener.next > before) failures = 0;
      if (++failures >= TRANSFER_ATTEMPTS) {
        throw err instanceof ClientError && err.message === 'the download ended early'
          ? new ClientError('FILE_INVALID', 'the downloaded file ends early (it was truncated)')
          : err;
      }
      opener.dropPartial();
      await sleep(retryDelay(err, failures));
    }
  }
}

/**
 * Downloads, decrypts and verifies `file` into `outPath` (which must not exist): through a
 * temporary file beside it, renamed into place only when every segment and the SHA-256
 * verify. On any failure nothing is left at `outPath` and the temporary file is removed.
 */
export async function downloadFile(
  conn: ServerConnection,
  file: FileSecret,
  outPath: string,
  onProgress?: ProgressListener,
): Promise<{ size: number }> {
  const total = ciphertextSize(file.size);
  const { tmp, handle } = await prepareOutput(outPath);
  let renamed = false;
  /** Waits for a write still in flight (before the handle is closed on failure). */
  let settle: () => Promise<void> = async () => undefined;
  try {
    const hasher = createHash('sha256');
    const opener = new SegmentOpener(file.key, file.size);
    let written = 0;
    // Verified plaintext is copied into batches of WRITE_BATCH_BYTES (aligned buffers, reused),
    // each written with one positional write while the next ones are received (at most
    // WRITES_IN_FLIGHT + 1 batches in memory). Every batch but the last is whole, so each
    // starts at an aligned offset.
    const pool = new AlignedPool(WRITES_IN_FLIGHT + 1);
    let batch = pool.take(WRITE_BATCH_BYTES);
    let batched = 0;
    let writing: Promise<void> = Promise.resolve();
    // Writes run one after another on the thread pool, up to WRITES_IN_FLIGHT batches
    // queued, so that receiving and decrypting go on while the disk is slow for a moment.
    // Every SYNC_EVERY_BYTES the data written so far is synced, so the final sync before
    // the rename has little left to do (one large flush at the end stalls for seconds).
    let queued = 0;
    let failure: { error: unknown } | undefined;
    let unsynced = 0;
    let drained: (() => void) | undefined;
    const flush = async () => {
      if (batched === 0) return;
      const buf = batch;
      const length = batched;
      const at = written;
      batch = pool.take(WRITE_BATCH_BYTES);
      batched = 0;
      written += length;
      queued++;
      writing = writing.then(async () => {
        try {
          if (failure) return;
          await handle.write(buf, length, at);
          unsynced += length;
          if (unsynced >= SYNC_EVERY_BYTES) {
            unsynced = 0;
            await handle.datasync();
          }
        } catch (error) {
          failure = { error };
        } finally {
          pool.give(buf);
          queued--;
          drained?.();
        }
      });
      while (queued > WRITES_IN_FLIGHT && !failure) {
        await new Promise<void>((r) => {
          drained = r;
        });
        drained = undefined;
      }
      if (failure) throw failure.error;
    };
    settle = () => writing.catch(() => undefined);
    onProgress?.({ phase: 'download', done: 0, total });
    await fetchSegments(conn, file, opener, segmentCount(file.size) - 1, (plain) => {
      hasher.update(plain);
      let pending: Promise<void> | undefined;
      let from = 0;
      while (from < plain.length) {
        const n = Math.min(plain.length - from, WRITE_BATCH_BYTES - batched);
        batch.set(plain.subarray(from, from + n), batched);
        batched += n;
        from += n;
        if (batched === WRITE_BATCH_BYTES) {
          const f = flush();
          pending = pending ? Promise.all([pending, f]).then(() => undefined) : f;
        }
      }
      onProgress?.({ phase: 'download', done: Math.min(total, sealedOffset(opener.next)), total });
      return pending;
    });
    await flush();
    await writing;
    if (failure) throw failure.error;
    opener.finish();
    if (written !== file.size || !constantTimeEqual(new Uint8Array(hasher.digest()), file.sha256)) {
      throw new ClientError('FILE_INVALID', 'the downloaded file does not match the hash in its message');
    }
    await handle.sync();
    await handle.close();
    if (await lstat(outPath).catch(() => undefined)) {
      throw new ClientError(
        'INVALID_ARGUMENT',
        'the output path appeared during the download; nothing was replaced',
      );
    }
    await rename(tmp, outPath);
    renamed = true;
    onProgress?.({ phase: 'download', done: total, total });
    return { size: written };
  } finally {
    if (!renamed) {
      await settle();
      await handle.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
    }
  }
}

/**
 * Plaintext bytes [offset, offset + length) of `file`: only the segments that hold them are
 * fetched (one Range request) and each is verified before any byte of it is returned.
 */
export async function readFileRange(
  conn: ServerConnection,
  file: FileSecret,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset + length > file.size
  ) {
    throw new ClientError(
      'INVALID_ARGUMENT',
      `"offset" and "length" expected a range within the file's ${file.size} bytes`,
    );
  }
  if (length === 0) return new Uint8Array(0);
  const first = Math.floor(offset / FILE_SEGMENT_BYTES);
  const last = Math.floor((offset + length - 1) / FILE_SEGMENT_BYTES);
  const opener = new SegmentOpener(file.key, file.size, first, last);
  const out = new Uint8Array(length);
  let pos = first * FILE_SEGMENT_BYTES;
  await fetchSegments(conn, file, opener, last, (plain) => {
    const from = Math.max(offset, pos);
    const to = Math.min(offset + length, pos + plain.length);
    if (to > from) out.set(plain.subarray(from - pos, to - pos), from - offset);
    pos += plain.length;
  });
  opener.finish();
  return out;
}

// --- thumbnails ------------------------------------------------------------------------------

/** Width and height from a PNG's IHDR or a JPEG's first SOF marker, without decoding. */
export function imageDimensions(
  bytes: Uint8Array,
  mime: string,
): { width: number; height: number } | undefined {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (mime === 'image/png') {
    // Signature (8), IHDR length (4), "IHDR" (4), width (4), height (4).
    if (bytes.length < 24 || String.fromCharCode(...bytes.subarray(12, 16)) !== 'IHDR') return undefined;
    return { width: view.getUint32(16), height: view.getUint32(20) };
  }
  if (mime === 'image/jpeg') {
    let i = 2;
    while (i + 9 < bytes.length) {
      if (bytes[i] !== 0xff) return undefined;
      const marker = bytes[i + 1]!;
      if (marker === 0xff) {
        i++;
        continue;
      }
      const len = view.getUint16(i + 2);
      // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
      if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
        return { height: view.getUint16(i + 5), width: view.getUint16(i + 7) };
      }
      if (len < 2) return undefined;
      i += 2 + len;
    }
  }
  return undefined;
}

/**
 * A thumbnail of a PNG or JPEG (longest side at most THUMBNAIL_MAX_SIDE, same format,
 * metadata dropped), or undefined for anything else, anything too large, or an image that
 * does not decode. Only ever run on the sender's own file.
 */
export async function makeThumbnail(
  src: SourceFile,
  mime: string,
): Promise<
  { bytes: Uint8Array; width: number; height: number; mime: 'image/png' | 'image/jpeg' } | undefined
> {
  if ((mime !== 'image/png' && mime !== 'image/jpeg') || src.size > THUMBNAIL_MAX_SOURCE_BYTES)
    return undefined;
  const bytes = await src.read(0, src.size);
  const dims = imageDimensions(bytes, mime);
  if (!dims || dims.width < 1 || dims.height < 1 || dims.width * dims.height > THUMBNAIL_MAX_SOURCE_PIXELS) {
    return undefined;
  }
  try {
    const { Jimp } = await import('jimp');
    const img = await Jimp.fromBuffer(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    if (img.width !== dims.width || img.height !== dims.height) return undefined;
    if (Math.max(img.width, img.height) > THUMBNAIL_MAX_SIDE) {
      img.scaleToFit({ w: THUMBNAIL_MAX_SIDE, h: THUMBNAIL_MAX_SIDE });
    }
    const out =
      mime === 'image/png'
        ? await img.getBuffer('image/png')
        : await img.getBuffer('image/jpeg', { quality: 80 });
    return { bytes: new Uint8Array(out), width: img.width, height: img.height, mime };
  } catch {
    return undefined;
  }
}
