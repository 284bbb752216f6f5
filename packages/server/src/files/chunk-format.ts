/**
 * The at-rest format of a file's chunks.
 *
 * What a client uploads is already its own ciphertext, opaque to the server. At rest the
 * server encrypts it again, split into fixed-size chunks, each under the file's own random
 * 256-bit data key (wrapped by the KMS under the context `file:<id>`, stored in the file's
 * row) with AES-256-GCM and a fresh random 96-bit nonce:
 *
 *     stored chunk = 0x01 (format) ‖ nonce (12) ‖ ciphertext (= plaintext length) ‖ tag (16)
 *
 *     AAD = "qalqon/file-chunk/v1" ‖ 0x00 ‖ file id (32 ASCII hex digits) ‖ format (1)
 *           ‖ index (u32 BE) ‖ chunk count (u32 BE) ‖ file size (u64 BE) ‖ chunk size (u32 BE)
 *
 * So a chunk opens only as chunk `index` of that file, with that size and chunk layout: one
 * swapped with another, moved to another file, or altered fails its tag; a file whose stored
 * size or chunk size was edited fails every chunk; and a reader that finds a chunk missing
 * below the expected count (a dropped or truncated tail) reports it instead of returning
 * less. Every failure is FILE_CORRUPT, before any byte of the bad chunk is released.
 *
 * Chunk size: 1 MiB stored (FILE_CHUNK_BYTES of plaintext). The per-chunk costs (a GCM setup, 29 bytes of overhead) vanish beside
 * the bytes, a range read decrypts at most 1 MiB more than it returns, and a resumed upload
 * repeats at most 1 MiB. Chunks are stored in batches (file-store.ts UPLOAD_BATCH_BYTES): on
 * the embedded backend at fixed offsets of one blob file per file (storage/file-blobs.ts),
 * one sync and one commit per batch, not per chunk.
 */
import {
  AES256_KEY_LEN,
  aes256GcmDecrypt,
  aes256GcmEncryptInto,
  CryptoError,
  GCM_NONCE_LEN,
  GCM_TAG_LEN,
} from '@qalqon/crypto';
import { ServerError } from '../errors.js';
import { publicRandomBytes } from '../random-pool.js';

export const CHUNK_FORMAT_V1 = 0x01;
/** Bytes a stored chunk adds to its plaintext (the storage's FILE_CHUNK_OVERHEAD: the same number). */
export const CHUNK_OVERHEAD = 1 + GCM_NONCE_LEN + GCM_TAG_LEN;
/**
 * Plaintext bytes per at-rest chunk of a new file (the last chunk of a file may be
 * shorter): 1 MiB less the chunk's overhead, so that a stored chunk takes exactly 1 MiB
 * and every chunk starts at an offset the embedded backend can write and read with direct
 * I/O (storage/direct-io.ts). A file keeps the chunk size it was created with (its row
 * says which), so files created with the earlier 1 MiB chunks still open.
 */
export const FILE_CHUNK_BYTES = 1024 * 1024 - CHUNK_OVERHEAD;
const AAD_DOMAIN = 'qalqon/file-chunk/v1\0';

/** Where a chunk sits: the file it belongs to and that file's layout. */
export interface ChunkLayout {
  readonly fileId: string;
  readonly size: number;
  readonly chunkSize: number;
}

/** The number of chunks of a file. */
export function chunkCount(layout: ChunkLayout): number {
  return Math.ceil(layout.size / layout.chunkSize);
}

/** The plaintext length of chunk `index` (0 past the end). */
export function chunkLength(layout: ChunkLayout, index: number): number {
  return Math.max(0, Math.min(layout.chunkSize, layout.size - index * layout.chunkSize));
}

function chunkAad(layout: ChunkLayout, index: number): Uint8Array {
  const domain = Buffer.from(AAD_DOMAIN + layout.fileId, 'latin1');
  const out = Buffer.alloc(domain.length + 1 + 4 + 4 + 8 + 4);
  domain.copy(out, 0);
  let o = domain.length;
  out[o++] = CHUNK_FORMAT_V1;
  out.writeUInt32BE(index, o);
  out.writeUInt32BE(chunkCount(layout), o + 4);
  out.writeBigUInt64BE(BigInt(layout.size), o + 8);
  out.writeUInt32BE(layout.chunkSize, o + 16);
  return out;
}

function corrupt(layout: ChunkLayout, index: number, why: string): ServerError {
  return new ServerError('FILE_CORRUPT', `chunk ${index} of file ${layout.fileId} ${why}`);
}

/**
 * Seals chunk `index` of a file under its data key. `plaintext` must be exactly the chunk's
 * length. With `out` (exactly CHUNK_OVERHEAD bytes longer than the plaintext, not
 * overlapping it) the stored chunk is written there and `out` returned, so that a caller
 * can reuse its buffers; otherwise into a new one.
 */
export function sealChunk(
  key: Uint8Array,
  layout: ChunkLayout,
  index: number,
  plaintext: Uint8Array,
  out?: Uint8Array,
): Uint8Array {
  if (key.length !== AES256_KEY_LEN) throw new ServerError('INVALID_ARGUMENT', '"key" expected 32 bytes');
  const expected = chunkLength(layout, index);
  if (expected === 0 || plaintext.length !== expected) {
    throw new ServerError(
      'INVALID_ARGUMENT',
      `"plaintext" expected ${expected} bytes for chunk ${index}, got length=${plaintext.length}`,
    );
  }
  if (out !== undefined && out.length !== CHUNK_OVERHEAD + expected) {
    throw new ServerError('INVALID_ARGUMENT', `"out" expected ${CHUNK_OVERHEAD + expected} bytes`);
  }
  const nonce = publicRandomBytes(GCM_NONCE_LEN);
  // One buffer for the whole stored chunk: the ciphertext and tag are sealed into place.
  const stored = out ?? Buffer.allocUnsafe(CHUNK_OVERHEAD + expected);
  aes256GcmEncryptInto(key, nonce, plaintext, chunkAad(layout, index), stored.subarray(1 + GCM_NONCE_LEN));
  stored[0] = CHUNK_FORMAT_V1;
  stored.set(nonce, 1);
  return stored;
}

/** Opens chunk `index` of a file; FILE_CORRUPT unless it is exactly that chunk, unaltered. */
export function openChunk(key: Uint8Array, layout: ChunkLayout, index: number, stored: Uint8Array): Buffer {
  const expected = chunkLength(layout, index);
  if (expected === 0) throw corrupt(layout, index, 'lies past the end of the file');
  if (stored.length !== expected + CHUNK_OVERHEAD || stored[0] !== CHUNK_FORMAT_V1) {
    throw corrupt(layout, index, 'has the wrong length or format');
  }
  try {
    const plain = aes256GcmDecrypt(
      key,
      stored.subarray(1, 1 + GCM_NONCE_LEN),
      stored.subarray(1 + GCM_NONCE_LEN),
      chunkAad(layout, index),
    );
    return Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength);
  } catch (err) {
    if (err instanceof CryptoError && err.code === 'DECRYPT_FAILED') {
      throw corrupt(layout, index, 'does not authenticate');
    }
    throw err;
  }
}
