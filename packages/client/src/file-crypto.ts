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
  aes256GcmEncryptInto,
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

/** Writes `index` (a safe integer) as a big-endian uint64 at `at` (without a BigInt per call). */
function setUint64(view: DataView, at: number, index: number): void {
  view.setUint32(at, Math.floor(index / 2 ** 32));
  view.setUint32(at + 4, index >>> 0);
}

function nonceOf(index: number): Uint8Array {
  const n = new Uint8Array(GCM_NONCE_LEN);
  setUint64(new DataView(n.buffer), 4, index);
  return n;
}

function aadOf(index: number, final: boolean): Uint8Array {
  const a = new Uint8Array(DOMAIN.length + 9);
  a.set(DOMAIN);
  setUint64(new DataView(a.buffer), DOMAIN.length, index);
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

/**
 * Seals the consecutive segments `first`, `first + 1`, … whose plaintext is `plain` (it
 * starts at segment `first`'s first byte; every segment in it is whole, except the file's
 * last segment, which ends it) into `out`, back to back: exactly what `sealSegment` gives
 * for each, without a new array per segment. `out` must hold ciphertextSize-many bytes:
 * plain.length + 16 per segment. `lastOfFile` is the file's last segment index.
 */
export function sealSegmentsInto(
  key: Uint8Array,
  first: number,
  lastOfFile: number,
  plain: Uint8Array,
  out: Uint8Array,
): void {
  checkKey(key);
  const count = Math.max(1, Math.ceil(plain.length / FILE_SEGMENT_BYTES));
  if (
    !Number.isSafeInteger(first) ||
    first < 0 ||
    first + count - 1 > lastOfFile ||
    out.length !== plain.length + count * GCM_TAG_LEN ||
    (first + count - 1 !== lastOfFile && plain.length !== count * FILE_SEGMENT_BYTES)
  ) {
    throw new ClientError('INVALID_ARGUMENT', 'file segments of the wrong length or place');
  }
  const nonce = new Uint8Array(GCM_NONCE_LEN);
  const nonceView = new DataView(nonce.buffer);
  const aad = new Uint8Array(DOMAIN.length + 9);
  aad.set(DOMAIN);
  const aadView = new DataView(aad.buffer);
  for (let k = 0; k < count; k++) {
    const index = first + k;
    setUint64(nonceView, 4, index);
    setUint64(aadView, DOMAIN.length, index);
    aad[DOMAIN.length + 8] = index === lastOfFile ? 1 : 0;
    const from = k * FILE_SEGMENT_BYTES;
    const piece = plain.subarray(from, Math.min(plain.length, from + FILE_SEGMENT_BYTES));
    const at = k * FILE_SEALED_SEGMENT_BYTES;
    aes256GcmEncryptInto(key, nonce, piece, aad, out.subarray(at, at + piece.length + GCM_TAG_LEN));
  }
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
  /** The bytes of segment `next` received so far (one buffer, reused for every segment). */
  #partial: Uint8Array | undefined;
  #partialBytes = 0;

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

  #open(sealed: Uint8Array): Uint8Array {
    const index = this.#next;
    const plain = openSegment(this.#key, index, index === this.#lastOfFile, sealed);
    this.#next++;
    return plain;
  }

  /**
   * Takes the next `chunk` of ciphertext; returns the plaintext of the segments it
   * completed (each verified; new arrays, never views of `chunk`). A segment that lies
   * whole in `chunk` is opened where it is; one split across chunks is gathered first.
   */
  push(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    let off = 0;
    while (off < chunk.length) {
      if (this.done) {
        throw new ClientError('FILE_INVALID', 'the server sent more bytes than the file holds');
      }
      const need = this.#sealedLength(this.#next);
      if (this.#partialBytes === 0 && chunk.length - off >= need) {
        out.push(this.#open(chunk.subarray(off, off + need)));
        off += need;
        continue;
      }
      this.#partial ??= new Uint8Array(FILE_SEALED_SEGMENT_BYTES);
      const n = Math.min(need - this.#partialBytes, chunk.length - off);
      this.#partial.set(chunk.subarray(off, off + n), this.#partialBytes);
      this.#partialBytes += n;
      off += n;
      if (this.#partialBytes === need) {
        this.#partialBytes = 0;
        out.push(this.#open(this.#partial.subarray(0, need)));
      }
    }
    return out;
  }

  /** Drops a partial segment (its bytes come again after a resumed download). */
  dropPartial(): void {
    this.#partialBytes = 0;
  }

  finish(): void {
    if (!this.done || this.#partialBytes !== 0) {
      throw new ClientError('FILE_INVALID', 'the downloaded file ends early (it was truncated)');
    }
  }
}
