/**
 * The end-to-end encryption of a file: a fresh 256-bit key per file, and the plaintext in
 * fixed segments of FILE_SEGMENT_BYTES, each sealed with AES-256-GCM on its own.
 *
 * - Nonce of segment i: 4 zero bytes ‖ i as a big-endian uint64. A key seals one file only
 *   (and a resumed upload seals the same segment of the same unchanged plaintext again,
 *   which gives the same bytes), so a nonce never meets two different plaintexts.
 * - AAD of segment i: "qalqon-file-v1" ‖ i (uint64 BE) ‖ final flag (1 for the last
 *   segment, else 0). A segment moved to another index, one from another file, or a file
 *   cut at a segment boundary (the new last segment was sealed as not final) does not open.
 * - Every segment but the last holds exactly FILE_SEGMENT_BYTES of plaintext; the last holds
 *   the rest (0 bytes for an empty file, which is one segment of just its tag). So the
 *   ciphertext's size is a pure function of the plaintext's: `ciphertextSize`.
 *
 * The key, the plaintext's size and its SHA-256 travel only inside the end-to-end
 * encrypted message that announces the file.
 */
import {
  AES256_KEY_LEN,
  aes256GcmDecrypt,
  aes256GcmEncrypt,
  GCM_NONCE_LEN,
  GCM_TAG_LEN,
} from '@qalqon/crypto';
import { MAX_FILE_BYTES } from '@qalqon/wire';
import { ClientError } from './errors.js';

/** Plaintext bytes per segment. */
export const FILE_SEGMENT_BYTES = 64 * 1024;
/** Ciphertext bytes of a full segment. */
export const FILE_SEALED_SEGMENT_BYTES = FILE_SEGMENT_BYTES + GCM_TAG_LEN;
/** The largest plaintext whose ciphertext the wire allows. */
export const MAX_FILE_PLAINTEXT_BYTES =
  MAX_FILE_BYTES - GCM_TAG_LEN * Math.ceil(MAX_FILE_BYTES / FILE_SEALED_SEGMENT_BYTES);

const DOMAIN = new TextEncoder().encode('qalqon-file-v1');

function checkSize(plainSize: number): void {
  if (!Number.isSafeInteger(plainSize) || plainSize < 0 || plainSize > MAX_FILE_PLAINTEXT_BYTES) {
    throw new ClientError('INVALID_ARGUMENT', `"size" expected 0..${MAX_FILE_PLAINTEXT_BYTES} bytes`);
  }
}

/** How many segments a plaintext of `plainSize` bytes makes (at least one). */
export function segmentCount(plainSize: number): number {
  checkSize(plainSize);
  return Math.max(1, Math.ceil(plainSize / FILE_SEGMENT_BYTES));
}

/** The ciphertext's size for a plaintext of `plainSize` bytes. */
export function ciphertextSize(plainSize: number): number {
  return plainSize + GCM_TAG_LEN * segmentCount(plainSize);
}

/** Where segment `index` starts in the ciphertext. */
export function sealedOffset(index: number): number {
  return index * FILE_SEALED_SEGMENT_BYTES;
}

/** The plaintext bytes of segment `index`: [start, end). */
export function plainRange(index: number, plainSize: number): { start: number; end: number } {
  const start = index * FILE_SEGMENT_BYTES;
  return { start, end: Math.min(plainSize, start + FILE_SEGMENT_BYTES) };
}

function nonceOf(index: number): Uint8Array {
  const n = new Uint8Array(GCM_NONCE_LEN);
  new DataView(n.buffer).setBigUint64(4, BigInt(index));
  return n;
}

function aadOf(index: number, final: boolean): Uint8Array {
  const a = new Uint8Array(DOMAIN.length + 9);
  a.set(DOMAIN);
  new DataView(a.buffer).setBigUint64(DOMAIN.length, BigInt(index));
  a[DOMAIN.length + 8] = final ? 1 : 0;
  return a;
}

function checkKey(key: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.length !== AES256_KEY_LEN) {
    throw new ClientError('INVALID_ARGUMENT', `"key" expected ${AES256_KEY_LEN} bytes`);
  }
}

/** Seals segment `index` (`final` for the file's last segment). */
export function sealSegment(
  key: Uint8Array,
  index: number,
  final: boolean,
  plaintext: Uint8Array,
): Uint8Array {
  checkKey(key);
  if (plaintext.length > FILE_SEGMENT_BYTES || (!final && plaintext.length !== FILE_SEGMENT_BYTES)) {
    throw new ClientError('INVALID_ARGUMENT', 'a file segment has the wrong length');
  }
  return aes256GcmEncrypt(key, nonceOf(index), plaintext, aadOf(index, final));
}

/** Opens segment `index`; FILE_INVALID if it does not authenticate at that place. */
export function openSegment(key: Uint8Array, index: number, final: boolean, sealed: Uint8Array): Uint8Array {
  checkKey(key);
  try {
    return aes256GcmDecrypt(key, nonceOf(index), sealed, aadOf(index, final));
  } catch {
    throw new ClientError(
      'FILE_INVALID',
      `segment ${index} of the downloaded file does not authenticate (the file was altered, truncated or mixed with another)`,
    );
  }
}

/**
 * Decrypts a run of consecutive segments as their ciphertext arrives in chunks of any
 * size: segments `first` to `last` (inclusive) of a file of `plainSize` plaintext bytes.
 * `push` returns the plaintext of the segments it completed; `finish` throws unless
 * exactly the expected bytes arrived.
 */
export class SegmentOpener {
  readonly #key: Uint8Array;
  readonly #plainSize: number;
  readonly #lastOfFile: number;
  readonly #last: number;
  #next: number;
  #pending: Buffer[] = [];
  #pendingBytes = 0;

  constructor(key: Uint8Array, plainSize: number, first = 0, last = segmentCount(plainSize) - 1) {
    checkKey(key);
    this.#key = key;
    this.#plainSize = plainSize;
    this.#lastOfFile = segmentCount(plainSize) - 1;
    if (!Number.isSafeInteger(first) || first < 0 || last < first || last > this.#lastOfFile) {
      throw new ClientError('INVALID_ARGUMENT', 'segment range outside the file');
    }
    this.#next = first;
    this.#last = last;
  }

  /** The next segment to complete (its ciphertext starts at sealedOffset(next)). */
  get next(): number {
    return this.#next;
  }

  get done(): boolean {
    return this.#next > this.#last;
  }

  #sealedLength(index: number): number {
    const r = plainRange(index, this.#plainSize);
    return r.end - r.start + GCM_TAG_LEN;
  }

  push(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    if (chunk.length === 0) return out;
    if (this.done) {
      throw new ClientError('FILE_INVALID', 'the server sent more bytes than the file holds');
    }
    this.#pending.push(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length));
    this.#pendingBytes += chunk.length;
    while (!this.done && this.#pendingBytes >= this.#sealedLength(this.#next)) {
      const need = this.#sealedLength(this.#next);
      const all = this.#pending.length === 1 ? this.#pending[0]! : Buffer.concat(this.#pending);
      const sealed = all.subarray(0, need);
      out.push(openSegment(this.#key, this.#next, this.#next === this.#lastOfFile, sealed));
      const rest = all.subarray(need);
      this.#pending = rest.length > 0 ? [rest] : [];
      this.#pendingBytes = rest.length;
      this.#next++;
    }
    if (this.done && this.#pendingBytes > 0) {
      throw new ClientError('FILE_INVALID', 'the server sent more bytes than the file holds');
    }
    return out;
  }

  /** Drops a partial segment (its bytes come again after a resumed download). */
  dropPartial(): void {
    this.#pending = [];
    this.#pendingBytes = 0;
  }

  finish(): void {
    if (!this.done || this.#pendingBytes !== 0) {
      throw new ClientError('FILE_INVALID', 'the downloaded file ends early (it was truncated)');
    }
  }
}
