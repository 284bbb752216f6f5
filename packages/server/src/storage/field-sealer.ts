/**
 * Field sealing: values the server does not need for routing (envelope bodies, device
 * names, public keys uploaded by clients) are encrypted at the storage layer before they
 * are written, so a backend that is not encrypted as a whole (PostgreSQL) stores no
 * plaintext either, and the embedded database has a second layer under its page cipher.
 *
 * Format (version 1): 0x01 ‖ key generation (u32 big-endian) ‖ 12-byte random nonce ‖
 * AES-256-GCM ciphertext ‖ 16-byte tag. The generation names the DEK so a later field-key
 * rotation can keep old rows readable. The AAD binds the header and the row identity
 * (table, column, row id): a sealed value copied into another row or column fails to open.
 */
import {
  AES256_KEY_LEN,
  aes256GcmDecrypt,
  aes256GcmEncrypt,
  CryptoError,
  GCM_NONCE_LEN,
  GCM_TAG_LEN,
} from '@qalqon/crypto';
import { ServerError } from '../errors.js';
import { publicRandomBytes } from '../random-pool.js';
import { abytes, aint, astring } from '../validate.js';

const FORMAT_V1 = 0x01;
const HEADER_LEN = 1 + 4;
/** Bytes a sealed value adds to its plaintext. */
export const SEAL_OVERHEAD = HEADER_LEN + GCM_NONCE_LEN + GCM_TAG_LEN;
const AAD_PREFIX = 'qalqon/field/v1';
const IDENT = /^[a-z_][a-z0-9_]*$/;

/** Which row and column a sealed value belongs to. */
export interface FieldRef {
  readonly table: string;
  readonly column: string;
  /** The row's stable identity, e.g. an envelope id or `<userId>/<deviceId>`. */
  readonly rowId: string;
}

function aad(header: Uint8Array, ref: FieldRef): Uint8Array {
  // NUL cannot occur in table or column names (IDENT) and is refused in row ids below,
  // so distinct refs always give distinct AADs.
  const text = new TextEncoder().encode(`${AAD_PREFIX}\0${ref.table}\0${ref.column}\0${ref.rowId}\0`);
  const out = new Uint8Array(text.length + header.length);
  out.set(text);
  out.set(header, text.length);
  return out;
}

function checkRef(ref: FieldRef): void {
  astring('ref.table', ref.table, 1, 64, IDENT);
  astring('ref.column', ref.column, 1, 64, IDENT);
  astring('ref.rowId', ref.rowId, 1, 256, /^[^\0]+$/);
}

export class FieldSealer {
  readonly #keys: Map<number, Uint8Array>;
  readonly #active: number;

  /**
   * `keys` maps key generations to 32-byte DEKs; `activeGeneration` seals new values.
   * The sealer copies the keys; `destroy()` zeroes its copies.
   */
  constructor(keys: ReadonlyMap<number, Uint8Array>, activeGeneration: number) {
    aint('activeGeneration', activeGeneration, 1, 0xffffffff);
    this.#keys = new Map();
    for (const [gen, key] of keys) {
      aint('keys generation', gen, 1, 0xffffffff);
      this.#keys.set(gen, Uint8Array.from(abytes(`keys[${gen}]`, key, AES256_KEY_LEN)));
    }
    if (!this.#keys.has(activeGeneration)) {
      throw new ServerError('INVALID_ARGUMENT', `"activeGeneration" ${activeGeneration} has no key`);
    }
    this.#active = activeGeneration;
  }

  seal(ref: FieldRef, plaintext: Uint8Array): Uint8Array {
    checkRef(ref);
    abytes('plaintext', plaintext);
    const key = this.#keys.get(this.#active);
    if (!key) throw new ServerError('CLOSED', 'the field sealer was destroyed');
    const header = new Uint8Array(HEADER_LEN);
    header[0] = FORMAT_V1;
    new DataView(header.buffer).setUint32(1, this.#active);
    const nonce = publicRandomBytes(GCM_NONCE_LEN);
    const ct = aes256GcmEncrypt(key, nonce, plaintext, aad(header, ref));
    const out = new Uint8Array(HEADER_LEN + GCM_NONCE_LEN + ct.length);
    out.set(header);
    out.set(nonce, HEADER_LEN);
    out.set(ct, HEADER_LEN + GCM_NONCE_LEN);
    return out;
  }

  /** Throws UNSEAL_FAILED for any value that is not one this sealer sealed for exactly `ref`. */
  open(ref: FieldRef, sealed: Uint8Array): Uint8Array {
    checkRef(ref);
    abytes('sealed', sealed);
    if (this.#keys.size === 0) throw new ServerError('CLOSED', 'the field sealer was destroyed');
    // One code for every failure below, and the ref (not the bytes) in the message:
    // a reader learns which field is damaged, never why in a way that helps forge one.
    const fail = () =>
      new ServerError(
        'UNSEAL_FAILED',
        `sealed ${ref.table}.${ref.column} of row ${ref.rowId} does not authenticate`,
      );
    if (sealed.length < SEAL_OVERHEAD || sealed[0] !== FORMAT_V1) throw fail();
    const header = sealed.subarray(0, HEADER_LEN);
    const gen = new DataView(sealed.buffer, sealed.byteOffset, sealed.byteLength).getUint32(1);
    const key = this.#keys.get(gen);
    if (!key) throw fail();
    try {
      return aes256GcmDecrypt(
        key,
        sealed.subarray(HEADER_LEN, HEADER_LEN + GCM_NONCE_LEN),
        sealed.subarray(HEADER_LEN + GCM_NONCE_LEN),
        aad(header, ref),
      );
    } catch (err) {
      if (err instanceof CryptoError) throw fail();
      throw err;
    }
  }

  sealString(ref: FieldRef, text: string): Uint8Array {
    return this.seal(ref, new TextEncoder().encode(astring('text', text, 0, Number.MAX_SAFE_INTEGER)));
  }

  openString(ref: FieldRef, sealed: Uint8Array): string {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(this.open(ref, sealed));
    } catch (err) {
      if (err instanceof TypeError) {
        throw new ServerError(
          'UNSEAL_FAILED',
          `sealed ${ref.table}.${ref.column} of row ${ref.rowId} is not UTF-8`,
        );
      }
      throw err;
    }
  }

  /** Zeroes the sealer's key copies; it refuses to seal or open afterwards. */
  destroy(): void {
    for (const k of this.#keys.values()) k.fill(0);
    this.#keys.clear();
  }
}
