/**
 * The encrypted archive format shared by backups and exports (docs/ARCHITECTURE.md,
 * "Backups, restore and exports").
 *
 * ```
 * archive  = header ‖ segment_0 ‖ … ‖ segment_{n-1}
 * header   = "QLQNARCH" (8 bytes) ‖ version (u8, 1) ‖ json_len (u32 BE, ≤ 64 KiB) ‖ json (UTF-8)
 * segment  = AES-256-GCM(archive key, nonce_i, plaintext_i, aad_i) = ciphertext_i ‖ tag (16)
 * nonce_i  = 0x00000000 ‖ i (u64 BE)
 * aad_i    = "qalqon/archive-segment/v1" ‖ SHA-256(header) ‖ i (u64 BE) ‖ final (u8: 1 on the last segment, else 0)
 * ```
 *
 * Every plaintext segment is `segmentSize` bytes except the last (1..segmentSize bytes; an
 * empty payload is one empty final segment), so the header's `payloadBytes` fixes the
 * number of segments and the file's exact length. The header is JSON with exactly these
 * fields: `kind` (backup | export), `archiveId` (32 hex digits), `createdAt` (ms),
 * `hostname` (the server's), `segmentSize`, `payloadBytes`, `kms` ({provider, keyId,
 * wrapped}: the archive key wrapped by the server's KMS with context `archive:<archiveId>`)
 * and optionally `recovery` ({salt, nonce, wrapped}: the archive key under a recovery key).
 * Binding the header's hash, the index and the final flag into every segment's AAD makes an
 * edit anywhere, a reordering, a truncation at a segment boundary, an appended segment or a
 * header taken from another archive fail authentication.
 *
 * The archive key is 256 fresh random bits per archive, so the counter nonces never repeat
 * under one key. The recovery key is another 256 random bits, shown once and never stored:
 * `kek = HKDF-SHA256(recoveryKey, salt (32 random bytes), "qalqon/archive-recovery/v1\0" ‖ archiveId)`,
 * `wrapped = AES-256-GCM(kek, nonce (12 random bytes), archiveKey, same info string as AAD)`.
 * It is written as 56 base32 characters (RFC 4648 alphabet) in groups of four: the 32 key
 * bytes and 3 check bytes (the start of SHA-256 of the key), so a mistyped key is told apart
 * from a wrong one.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import {
  AES256_KEY_LEN,
  aes256GcmDecrypt,
  aes256GcmEncrypt,
  CryptoError,
  constantTimeEqual,
  GCM_NONCE_LEN,
  GCM_TAG_LEN,
  hkdfSha256,
  randomBytes,
  sha256,
} from '@qalqon/crypto';
import { isServerError, ServerError } from '../errors.js';
import { KEY_ID_PATTERN, type Kms, type KmsProvider } from '../kms/kms.js';

export const ARCHIVE_MAGIC = new TextEncoder().encode('QLQNARCH');
export const ARCHIVE_VERSION = 1;
/** Fixed prefix: magic, version byte, JSON length. */
const PREFIX_LEN = ARCHIVE_MAGIC.length + 1 + 4;
const MAX_HEADER_JSON = 64 * 1024;
/** The default plaintext bytes per segment. */
export const DEFAULT_SEGMENT_SIZE = 1024 * 1024;
export const MIN_SEGMENT_SIZE = 4096;
export const MAX_SEGMENT_SIZE = 16 * 1024 * 1024;
export const RECOVERY_KEY_LEN = 32;
const RECOVERY_CHECK_LEN = 3;
const SEGMENT_AAD_PREFIX = new TextEncoder().encode('qalqon/archive-segment/v1');
const RECOVERY_INFO = 'qalqon/archive-recovery/v1';
const ARCHIVE_ID_PATTERN = /^[0-9a-f]{32}$/;

export type ArchiveKind = 'backup' | 'export';

export interface ArchiveHeader {
  readonly kind: ArchiveKind;
  readonly archiveId: string;
  readonly createdAt: number;
  readonly hostname: string;
  readonly segmentSize: number;
  readonly payloadBytes: number;
  readonly kms: { readonly provider: KmsProvider; readonly keyId: string; readonly wrapped: string };
  readonly recovery?: { readonly salt: string; readonly nonce: string; readonly wrapped: string };
}

/** The KMS context an archive's key is wrapped with. */
export function archiveKeyContext(archiveId: string): string {
  return `archive:${archiveId}`;
}

/** How many segments a payload of `payloadBytes` takes (at least one). */
export function segmentCount(payloadBytes: number, segmentSize: number): number {
  return Math.max(1, Math.ceil(payloadBytes / segmentSize));
}

/** The archive's exact length in bytes, given its header's length. */
export function archiveLength(headerLen: number, payloadBytes: number, segmentSize: number): number {
  return headerLen + payloadBytes + segmentCount(payloadBytes, segmentSize) * GCM_TAG_LEN;
}

function segmentNonce(index: number): Uint8Array {
  const n = new Uint8Array(GCM_NONCE_LEN);
  new DataView(n.buffer).setBigUint64(4, BigInt(index));
  return n;
}

function segmentAad(headerHash: Uint8Array, index: number, final: boolean): Uint8Array {
  const aad = new Uint8Array(SEGMENT_AAD_PREFIX.length + 32 + 8 + 1);
  aad.set(SEGMENT_AAD_PREFIX);
  aad.set(headerHash, SEGMENT_AAD_PREFIX.length);
  new DataView(aad.buffer).setBigUint64(SEGMENT_AAD_PREFIX.length + 32, BigInt(index));
  aad[aad.length - 1] = final ? 1 : 0;
  return aad;
}

function recoveryInfo(archiveId: string): Uint8Array {
  return new TextEncoder().encode(`${RECOVERY_INFO}\0${archiveId}`);
}

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString('base64');
}

// ---------------------------------------------------------------- recovery keys

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** 256 fresh random bits. The caller shows it once and never stores it. */
export function newRecoveryKey(): Uint8Array {
  return randomBytes(RECOVERY_KEY_LEN);
}

/** The recovery key as 14 groups of four base32 characters (key and check bytes). */
export function formatRecoveryKey(key: Uint8Array): string {
  if (!(key instanceof Uint8Array) || key.length !== RECOVERY_KEY_LEN) {
    throw new ServerError('INVALID_ARGUMENT', `"key" expected Uint8Array of length ${RECOVERY_KEY_LEN}`);
  }
  const bytes = new Uint8Array(RECOVERY_KEY_LEN + RECOVERY_CHECK_LEN);
  bytes.set(key);
  bytes.set(sha256(key).subarray(0, RECOVERY_CHECK_LEN), RECOVERY_KEY_LEN);
  let bits = 0;
  let value = 0;
  let out = '';
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  bytes.fill(0);
  // 35 bytes are exactly 56 characters: no leftover bits.
  return out.match(/.{4}/g)!.join('-');
}

/**
 * Reads a recovery key as `formatRecoveryKey` writes it; case, spaces and dashes do not
 * matter. Throws RECOVERY_KEY_INVALID for anything else or for a mistyped key. The message
 * never quotes the input.
 */
export function parseRecoveryKey(text: string): Uint8Array {
  const clean = typeof text === 'string' ? text.replace(/[\s-]/g, '').toUpperCase() : '';
  const bad = () =>
    new ServerError(
      'RECOVERY_KEY_INVALID',
      'the recovery key is not 56 base32 characters (A-Z, 2-7) in groups of four',
    );
  if (clean.length !== 56) throw bad();
  const bytes = new Uint8Array(RECOVERY_KEY_LEN + RECOVERY_CHECK_LEN);
  let bits = 0;
  let value = 0;
  let i = 0;
  for (const c of clean) {
    const v = BASE32.indexOf(c);
    if (v < 0) throw bad();
    value = ((value << 5) | v) & 0xfff;
    bits += 5;
    if (bits >= 8) {
      bytes[i++] = (value >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  const key = bytes.slice(0, RECOVERY_KEY_LEN);
  const check = sha256(key).subarray(0, RECOVERY_CHECK_LEN);
  const ok = constantTimeEqual(check, bytes.subarray(RECOVERY_KEY_LEN));
  bytes.fill(0);
  if (!ok) {
    key.fill(0);
    throw new ServerError(
      'RECOVERY_KEY_INVALID',
      'the recovery key is mistyped (its check characters do not match)',
    );
  }
  return key;
}

function recoveryKek(recoveryKey: Uint8Array, salt: Uint8Array, archiveId: string): Uint8Array {
  return hkdfSha256(recoveryKey, salt, recoveryInfo(archiveId), AES256_KEY_LEN);
}

// ---------------------------------------------------------------- header

function invalid(why: string): ServerError {
  return new ServerError('ARCHIVE_INVALID', `not a readable Qalqon archive: ${why}`);
}

function corrupt(why: string): ServerError {
  return new ServerError('ARCHIVE_CORRUPT', `the archive fails authentication: ${why}`);
}

function encodeHeader(h: ArchiveHeader): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(h));
  if (json.length > MAX_HEADER_JSON) throw new ServerError('INVALID_ARGUMENT', 'archive header too large');
  const out = new Uint8Array(PREFIX_LEN + json.length);
  out.set(ARCHIVE_MAGIC);
  out[ARCHIVE_MAGIC.length] = ARCHIVE_VERSION;
  new DataView(out.buffer).setUint32(ARCHIVE_MAGIC.length + 1, json.length);
  out.set(json, PREFIX_LEN);
  return out;
}

function base64Field(label: string, v: unknown, len: number): string {
  if (typeof v !== 'string') throw invalid(`header field ${label} is missing`);
  const b = Buffer.from(v, 'base64');
  if (b.length !== len || b.toString('base64') !== v) throw invalid(`header field ${label} is malformed`);
  return v;
}

function exactKeys(
  label: string,
  o: unknown,
  required: string[],
  optional: string[] = [],
): Record<string, unknown> {
  if (typeof o !== 'object' || o === null || Array.isArray(o))
    throw invalid(`header field ${label} is not an object`);
  const keys = Object.keys(o);
  for (const k of required) if (!keys.includes(k)) throw invalid(`header field ${label}.${k} is missing`);
  for (const k of keys) {
    if (!required.includes(k) && !optional.includes(k))
      throw invalid(`header has an unknown field ${label}.${k}`);
  }
  return o as Record<string, unknown>;
}

/** Parses and checks the header's JSON (strictly: every field, nothing else). */
function parseHeaderJson(json: Uint8Array): ArchiveHeader {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
  } catch {
    throw invalid('the header is not JSON');
  }
  const h = exactKeys(
    'header',
    raw,
    ['kind', 'archiveId', 'createdAt', 'hostname', 'segmentSize', 'payloadBytes', 'kms'],
    ['recovery'],
  );
  if (h.kind !== 'backup' && h.kind !== 'export') throw invalid('unknown archive kind');
  if (typeof h.archiveId !== 'string' || !ARCHIVE_ID_PATTERN.test(h.archiveId)) {
    throw invalid('header field archiveId is malformed');
  }
  if (!Number.isSafeInteger(h.createdAt) || (h.createdAt as number) < 0) throw invalid('bad createdAt');
  if (typeof h.hostname !== 'string' || h.hostname.length === 0 || h.hostname.length > 253) {
    throw invalid('bad hostname');
  }
  const seg = h.segmentSize as number;
  if (!Number.isSafeInteger(seg) || seg < MIN_SEGMENT_SIZE || seg > MAX_SEGMENT_SIZE) {
    throw invalid('bad segmentSize');
  }
  if (!Number.isSafeInteger(h.payloadBytes) || (h.payloadBytes as number) < 0)
    throw invalid('bad payloadBytes');
  const k = exactKeys('kms', h.kms, ['provider', 'keyId', 'wrapped']);
  if (k.provider !== 'local' && k.provider !== 'pkcs11') throw invalid('unknown kms.provider');
  if (typeof k.keyId !== 'string' || !KEY_ID_PATTERN.test(k.keyId)) throw invalid('bad kms.keyId');
  if (typeof k.wrapped !== 'string' || k.wrapped.length === 0 || k.wrapped.length > 1024) {
    throw invalid('bad kms.wrapped');
  }
  base64Field('kms.wrapped', k.wrapped, Buffer.from(k.wrapped, 'base64').length);
  let recovery: ArchiveHeader['recovery'];
  if (h.recovery !== undefined) {
    const r = exactKeys('recovery', h.recovery, ['salt', 'nonce', 'wrapped']);
    recovery = {
      salt: base64Field('recovery.salt', r.salt, 32),
      nonce: base64Field('recovery.nonce', r.nonce, GCM_NONCE_LEN),
      wrapped: base64Field('recovery.wrapped', r.wrapped, AES256_KEY_LEN + GCM_TAG_LEN),
    };
  }
  return {
    kind: h.kind,
    archiveId: h.archiveId,
    createdAt: h.createdAt as number,
    hostname: h.hostname,
    segmentSize: seg,
    payloadBytes: h.payloadBytes as number,
    kms: { provider: k.provider, keyId: k.keyId, wrapped: k.wrapped },
    ...(recovery ? { recovery } : {}),
  };
}

// ---------------------------------------------------------------- writing

export interface NewArchiveOptions {
  readonly kind: ArchiveKind;
  readonly hostname: string;
  /** The payload's exact length: the writer refuses a source that yields more or less. */
  readonly payloadBytes: number;
  /** The server's KMS: wraps the archive key under its active KEK version. */
  readonly kms: Kms;
  /** When given, the archive key is also wrapped under it. */
  readonly recoveryKey?: Uint8Array;
  readonly segmentSize?: number;
  readonly clock?: () => number;
}

export interface NewArchive {
  readonly header: ArchiveHeader;
  /** The header's bytes, the first thing to write. */
  readonly headerBytes: Uint8Array;
  /** The whole archive's length: header and every sealed segment. */
  readonly totalBytes: number;
  /**
   * Encrypts the payload as it arrives (chunks of any size) and yields sealed segments.
   * Call at most once; the archive key is zeroed when it finishes or fails.
   */
  seal(payload: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): AsyncGenerator<Uint8Array>;
  /** Zeroes the archive key if `seal` never ran to its end. */
  destroy(): void;
}

/** Makes a fresh archive key, wraps it, and returns the header and the segment sealer. */
export async function newArchive(options: NewArchiveOptions): Promise<NewArchive> {
  const segmentSize = options.segmentSize ?? DEFAULT_SEGMENT_SIZE;
  if (
    !Number.isSafeInteger(segmentSize) ||
    segmentSize < MIN_SEGMENT_SIZE ||
    segmentSize > MAX_SEGMENT_SIZE
  ) {
    throw new ServerError(
      'INVALID_ARGUMENT',
      `"segmentSize" expected ${MIN_SEGMENT_SIZE}..${MAX_SEGMENT_SIZE}`,
    );
  }
  if (!Number.isSafeInteger(options.payloadBytes) || options.payloadBytes < 0) {
    throw new ServerError('INVALID_ARGUMENT', '"payloadBytes" expected a non-negative integer');
  }
  const archiveId = Buffer.from(randomBytes(16)).toString('hex');
  const key = randomBytes(AES256_KEY_LEN);
  try {
    const wrapped = await options.kms.wrap(key, archiveKeyContext(archiveId));
    const provider = (await options.kms.describe()).provider;
    let recovery: ArchiveHeader['recovery'];
    if (options.recoveryKey !== undefined) {
      if (!(options.recoveryKey instanceof Uint8Array) || options.recoveryKey.length !== RECOVERY_KEY_LEN) {
        throw new ServerError('INVALID_ARGUMENT', `"recoveryKey" expected ${RECOVERY_KEY_LEN} bytes`);
      }
      const salt = randomBytes(32);
      const nonce = randomBytes(GCM_NONCE_LEN);
      const kek = recoveryKek(options.recoveryKey, salt, archiveId);
      const sealed = aes256GcmEncrypt(kek, nonce, key, recoveryInfo(archiveId));
      kek.fill(0);
      recovery = { salt: b64(salt), nonce: b64(nonce), wrapped: b64(sealed) };
    }
    const header: ArchiveHeader = {
      kind: options.kind,
      archiveId,
      createdAt: (options.clock ?? Date.now)(),
      hostname: options.hostname,
      segmentSize,
      payloadBytes: options.payloadBytes,
      kms: { provider, keyId: wrapped.keyId, wrapped: b64(wrapped.ciphertext) },
      ...(recovery ? { recovery } : {}),
    };
    const headerBytes = encodeHeader(header);
    const headerHash = sha256(headerBytes);
    const total = archiveLength(headerBytes.length, options.payloadBytes, segmentSize);
    const count = segmentCount(options.payloadBytes, segmentSize);
    let used = false;
    async function* seal(payload: AsyncIterable<Uint8Array> | Iterable<Uint8Array>) {
      if (used) throw new ServerError('INVALID_ARGUMENT', 'an archive is sealed only once');
      used = true;
      try {
        const buf = new Uint8Array(segmentSize);
        let fill = 0;
        let index = 0;
        let seen = 0;
        const emit = (final: boolean) => {
          const out = aes256GcmEncrypt(
            key,
            segmentNonce(index),
            buf.subarray(0, fill),
            segmentAad(headerHash, index, final),
          );
          index++;
          fill = 0;
          return out;
        };
        for await (const chunk of payload) {
          seen += chunk.length;
          if (seen > options.payloadBytes) {
            throw new ServerError('INVALID_ARGUMENT', 'the archive payload is longer than announced');
          }
          let off = 0;
          while (off < chunk.length) {
            const n = Math.min(segmentSize - fill, chunk.length - off);
            buf.set(chunk.subarray(off, off + n), fill);
            fill += n;
            off += n;
            // A full segment is final only if it ends the payload: then it is emitted below.
            if (fill === segmentSize && seen - (chunk.length - off) < options.payloadBytes) {
              yield emit(false);
            }
          }
        }
        if (seen !== options.payloadBytes) {
          throw new ServerError('INVALID_ARGUMENT', 'the archive payload is shorter than announced');
        }
        yield emit(true);
        buf.fill(0);
        if (index !== count) throw new ServerError('INVALID_ARGUMENT', 'archive segment count mismatch');
      } finally {
        key.fill(0);
      }
    }
    return {
      header,
      headerBytes,
      totalBytes: total,
      seal,
      destroy: () => key.fill(0),
    };
  } catch (err) {
    key.fill(0);
    throw err;
  }
}

// ---------------------------------------------------------------- reading

/** What may open an archive's key: the KMS that made it, or its recovery key (tried first). */
export interface ArchiveKeySource {
  readonly kms?: Kms;
  readonly recoveryKey?: Uint8Array;
}

/** An archive file opened for reading: its checked header and where the segments start. */
export interface ArchiveFile {
  readonly path: string;
  readonly header: ArchiveHeader;
  readonly headerBytes: Uint8Array;
  readonly headerHash: Uint8Array;
  readonly totalBytes: number;
}

function readExactly(fd: number, buf: Uint8Array, position: number): number {
  let off = 0;
  while (off < buf.length) {
    const n = readSync(fd, buf, off, buf.length - off, position + off);
    if (n === 0) break;
    off += n;
  }
  return off;
}

/**
 * Reads and checks an archive's header and its length (a file shorter or longer than the
 * header says is ARCHIVE_CORRUPT: truncated or extended). Nothing is decrypted yet.
 */
export function readArchiveHeader(path: string): ArchiveFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new ServerError(
      'ARCHIVE_INVALID',
      `the archive ${path} cannot be read (${(err as NodeJS.ErrnoException).code ?? 'error'})`,
    );
  }
  try {
    const size = fstatSync(fd).size;
    const prefix = new Uint8Array(PREFIX_LEN);
    if (
      readExactly(fd, prefix, 0) < PREFIX_LEN ||
      !constantTimeEqual(prefix.subarray(0, ARCHIVE_MAGIC.length), ARCHIVE_MAGIC)
    ) {
      throw invalid('it does not start with the archive magic');
    }
    if (prefix[ARCHIVE_MAGIC.length] !== ARCHIVE_VERSION) {
      throw invalid(`format version ${prefix[ARCHIVE_MAGIC.length]} is not supported`);
    }
    const jsonLen = new DataView(prefix.buffer).getUint32(ARCHIVE_MAGIC.length + 1);
    if (jsonLen === 0 || jsonLen > MAX_HEADER_JSON) throw invalid('the header length is out of range');
    const headerBytes = new Uint8Array(PREFIX_LEN + jsonLen);
    if (readExactly(fd, headerBytes, 0) < headerBytes.length) throw corrupt('it ends inside its header');
    const header = parseHeaderJson(headerBytes.subarray(PREFIX_LEN));
    const totalBytes = archiveLength(headerBytes.length, header.payloadBytes, header.segmentSize);
    if (size < totalBytes) throw corrupt(`it is truncated (${size} of ${totalBytes} bytes)`);
    if (size > totalBytes) throw corrupt(`it has ${size - totalBytes} bytes after its last segment`);
    return { path, header, headerBytes, headerHash: sha256(headerBytes), totalBytes };
  } finally {
    closeSync(fd);
  }
}

/**
 * Unwraps the archive key: with the recovery key when one is given (the archive must carry
 * a recovery wrap), else with the KMS. Any failure is ARCHIVE_KEY_REJECTED, naming which
 * way failed and never a key.
 */
export async function openArchiveKey(file: ArchiveFile, source: ArchiveKeySource): Promise<Uint8Array> {
  const { header } = file;
  if (source.recoveryKey !== undefined) {
    if (!header.recovery) {
      throw new ServerError(
        'ARCHIVE_KEY_REJECTED',
        'this archive was made without a recovery key; open it with the KMS',
      );
    }
    const kek = recoveryKek(
      source.recoveryKey,
      Buffer.from(header.recovery.salt, 'base64'),
      header.archiveId,
    );
    try {
      return aes256GcmDecrypt(
        kek,
        Buffer.from(header.recovery.nonce, 'base64'),
        Buffer.from(header.recovery.wrapped, 'base64'),
        recoveryInfo(header.archiveId),
      );
    } catch (err) {
      if (err instanceof CryptoError && err.code === 'DECRYPT_FAILED') {
        throw new ServerError('ARCHIVE_KEY_REJECTED', 'the recovery key does not open this archive');
      }
      throw err;
    } finally {
      kek.fill(0);
    }
  }
  if (!source.kms)
    throw new ServerError('ARCHIVE_KEY_REJECTED', 'no KMS or recovery key was given to open the archive');
  try {
    const key = await source.kms.unwrap({
      keyId: header.kms.keyId,
      context: archiveKeyContext(header.archiveId),
      ciphertext: new Uint8Array(Buffer.from(header.kms.wrapped, 'base64')),
    });
    if (key.length !== AES256_KEY_LEN)
      throw new ServerError('ARCHIVE_KEY_REJECTED', 'the archive key has the wrong length');
    return key;
  } catch (err) {
    if (isServerError(err, 'KMS_KEY_NOT_FOUND')) {
      throw new ServerError(
        'ARCHIVE_KEY_REJECTED',
        `the KMS does not hold KEK version ${header.kms.keyId}, which wrapped this archive's key (another KMS, or a destroyed version)`,
      );
    }
    if (isServerError(err, 'KMS_UNWRAP_FAILED') || isServerError(err, 'INVALID_ARGUMENT')) {
      throw new ServerError(
        'ARCHIVE_KEY_REJECTED',
        `the archive's wrapped key does not open under KEK version ${header.kms.keyId}`,
      );
    }
    throw err;
  }
}

/**
 * Decrypts the archive's segments in order, yielding each plaintext segment after it
 * authenticates; throws ARCHIVE_CORRUPT at the first that does not (or if the file's header
 * changed since `readArchiveHeader`). `onProgress` gets the archive bytes read so far.
 */
export function* openSegments(
  file: ArchiveFile,
  key: Uint8Array,
  onProgress?: (done: number, total: number) => void,
): Generator<Uint8Array> {
  const { header, headerHash, headerBytes } = file;
  const fd = openSync(file.path, 'r');
  try {
    const again = new Uint8Array(headerBytes.length);
    if (readExactly(fd, again, 0) !== again.length || !constantTimeEqual(sha256(again), headerHash)) {
      throw corrupt('its header changed while it was being read');
    }
    const count = segmentCount(header.payloadBytes, header.segmentSize);
    const sealed = new Uint8Array(header.segmentSize + GCM_TAG_LEN);
    let position = headerBytes.length;
    onProgress?.(position, file.totalBytes);
    for (let i = 0; i < count; i++) {
      const final = i === count - 1;
      const plainLen = final ? header.payloadBytes - i * header.segmentSize : header.segmentSize;
      const want = sealed.subarray(0, plainLen + GCM_TAG_LEN);
      if (readExactly(fd, want, position) < want.length) throw corrupt(`it is truncated in segment ${i}`);
      position += want.length;
      let plain: Uint8Array;
      try {
        plain = aes256GcmDecrypt(key, segmentNonce(i), want, segmentAad(headerHash, i, final));
      } catch (err) {
        if (err instanceof CryptoError && err.code === 'DECRYPT_FAILED') {
          throw corrupt(
            `segment ${i} of ${count} does not authenticate (edited, reordered, or from another archive)`,
          );
        }
        throw err;
      }
      onProgress?.(position, file.totalBytes);
      yield plain;
    }
    const extra = new Uint8Array(1);
    if (readExactly(fd, extra, position) !== 0) throw corrupt('it has bytes after its last segment');
  } finally {
    closeSync(fd);
  }
}
