/**
 * Where the profile database's 256-bit key is kept. Two modes:
 *
 * - `os` (default): the OS secure store through @napi-rs/keyring: the Secret Service on
 *   Linux (gnome-keyring, KWallet), the Keychain on macOS, the Credential Manager on
 *   Windows. The key never touches the profile directory.
 * - `passphrase`: where no secure store exists. The key is sealed with AES-256-GCM under a
 *   key derived from the user's passphrase with scrypt (RFC 7914; N=2^17, r=8, p=1 as
 *   OWASP recommends), and the sealed form is kept in the profile's settings. This is
 *   weaker (an offline guessing attack on the passphrase is possible), so the user is told.
 *
 * The key is never written in the clear, and no message here carries it or the passphrase.
 */
import { scryptSync } from 'node:crypto';
import { Entry } from '@napi-rs/keyring';
import { AES256_KEY_LEN, aes256GcmDecrypt, aes256GcmEncrypt, randomBytes } from '@qalqon/crypto';
import { decodeBase64, encodeBase64 } from '@qalqon/wire';
import { ClientError } from './errors.js';

export type KeystoreKind = 'os' | 'passphrase';

/** The service name entries are filed under in the OS store; the account is the profile's key id. */
export const KEYRING_SERVICE = 'qalqon';
export const SCRYPT_N = 2 ** 17;
export const SCRYPT_R = 8;
export const SCRYPT_P = 1;
const SALT_LEN = 16;
const NONCE_LEN = 12;
/** Binds a sealed key to its purpose and profile, so it cannot be passed off as anything else. */
const WRAP_AAD_PREFIX = 'qalqon/db-key/v1\0';

export interface WrappedKey {
  readonly kdf: 'scrypt';
  readonly N: number;
  readonly r: number;
  readonly p: number;
  readonly salt: string;
  readonly nonce: string;
  readonly sealed: string;
}

export interface KeystoreAccess {
  readonly kind: KeystoreKind;
  /** Asked only in `passphrase` mode (e.g. QALQON_PASSPHRASE, or a prompt). */
  readonly passphrase?: (() => string | Promise<string>) | undefined;
  /** Told once when the weaker passphrase mode is in use. */
  readonly notice?: ((line: string) => void) | undefined;
}

/**
 * The OS store entry for a profile's key. On Linux it is pinned to the Secret Service: left
 * to itself the binding silently falls back to the kernel keyutils keyring, which lives in
 * memory only, so a reboot would lose the key and with it the whole profile.
 */
export function osEntry(keyId: string): Entry {
  return new Entry(KEYRING_SERVICE, keyId, { linux: { store: 'secret-service' } });
}

function osUnavailable(cause: unknown): ClientError {
  return new ClientError(
    'KEYSTORE_UNAVAILABLE',
    'no OS secure store is reachable (on Linux: a Secret Service such as gnome-keyring on the session D-Bus); ' +
      'start one, or choose --keystore passphrase to protect the database key with a passphrase instead',
    { cause },
  );
}

async function askPassphrase(access: KeystoreAccess): Promise<string> {
  const p = access.passphrase === undefined ? undefined : await access.passphrase();
  if (typeof p !== 'string' || p.length === 0) {
    throw new ClientError(
      'PASSPHRASE_REQUIRED',
      'this profile uses --keystore passphrase: set QALQON_PASSPHRASE or run in a terminal to be asked',
    );
  }
  return p;
}

function deriveWrappingKey(
  passphrase: string,
  salt: Uint8Array,
  N: number,
  r: number,
  p: number,
): Uint8Array {
  // scrypt needs 128·N·r bytes; allow that plus headroom.
  return new Uint8Array(
    scryptSync(passphrase.normalize('NFKC'), salt, AES256_KEY_LEN, { N, r, p, maxmem: 256 * N * r }),
  );
}

function aadFor(keyId: string): Uint8Array {
  return new TextEncoder().encode(WRAP_AAD_PREFIX + keyId);
}

/** Seals `key` under a passphrase. */
export function wrapKey(key: Uint8Array, passphrase: string, keyId: string): WrappedKey {
  const salt = randomBytes(SALT_LEN);
  const nonce = randomBytes(NONCE_LEN);
  const kek = deriveWrappingKey(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P);
  const sealed = aes256GcmEncrypt(kek, nonce, key, aadFor(keyId));
  kek.fill(0);
  return {
    kdf: 'scrypt',
    N: SCRYPT_N,
    r: SCRYPT_R,
    p: SCRYPT_P,
    salt: encodeBase64(salt),
    nonce: encodeBase64(nonce),
    sealed: encodeBase64(sealed),
  };
}

/** Opens a sealed key; PASSPHRASE_WRONG when the passphrase (or the sealed bytes) do not authenticate. */
export function unwrapKey(w: WrappedKey, passphrase: string, keyId: string): Uint8Array {
  const salt = decodeBase64(w.salt);
  const nonce = decodeBase64(w.nonce);
  const sealed = decodeBase64(w.sealed);
  // Bounded parameters: a tampered settings file must not make us allocate gigabytes.
  const sane =
    w.kdf === 'scrypt' &&
    Number.isInteger(w.N) &&
    w.N >= 2 ** 14 &&
    w.N <= 2 ** 20 &&
    (w.N & (w.N - 1)) === 0 &&
    w.r === SCRYPT_R &&
    w.p === SCRYPT_P &&
    salt?.length === SALT_LEN &&
    nonce?.length === NONCE_LEN &&
    sealed?.length === AES256_KEY_LEN + 16;
  if (!sane || !salt || !nonce || !sealed) {
    throw new ClientError('PROFILE_CORRUPT', "the profile's sealed database key is malformed");
  }
  const kek = deriveWrappingKey(passphrase, salt, w.N, w.r, w.p);
  try {
    return aes256GcmDecrypt(kek, nonce, sealed, aadFor(keyId));
  } catch {
    throw new ClientError(
      'PASSPHRASE_WRONG',
      'the passphrase does not unlock this profile; nothing was changed',
    );
  } finally {
    kek.fill(0);
  }
}

/**
 * Creates a fresh database key and stores it: in the OS store (refusing with
 * KEYSTORE_UNAVAILABLE if none answers), or sealed under a passphrase (returned as `wrapped`
 * for the caller to keep in the settings).
 */
export async function createDatabaseKey(
  keyId: string,
  access: KeystoreAccess,
): Promise<{ key: Uint8Array; wrapped: WrappedKey | undefined }> {
  const key = randomBytes(AES256_KEY_LEN);
  if (access.kind === 'passphrase') {
    access.notice?.(
      'using the passphrase keystore: the database key is sealed under your passphrase (scrypt), ' +
        'which is weaker than the OS secure store',
    );
    return { key, wrapped: wrapKey(key, await askPassphrase(access), keyId) };
  }
  try {
    const entry = osEntry(keyId);
    entry.setPassword(encodeBase64(key));
    // Read it back: a store that accepts writes but loses them would lose the profile.
    if (entry.getPassword() !== encodeBase64(key)) throw new Error('read-back mismatch');
  } catch (err) {
    throw osUnavailable(err);
  }
  return { key, wrapped: undefined };
}

/** Loads the database key of an existing profile. */
export async function loadDatabaseKey(
  keyId: string,
  kind: KeystoreKind,
  wrapped: WrappedKey | undefined,
  access: KeystoreAccess,
): Promise<Uint8Array> {
  if (kind === 'passphrase') {
    if (!wrapped) throw new ClientError('PROFILE_CORRUPT', 'the profile has no sealed database key');
    access.notice?.('using the passphrase keystore (weaker than the OS secure store)');
    return unwrapKey(wrapped, await askPassphrase(access), keyId);
  }
  let stored: string | null;
  try {
    stored = osEntry(keyId).getPassword();
  } catch (err) {
    throw osUnavailable(err);
  }
  if (stored === null) {
    throw new ClientError(
      'KEYSTORE_KEY_MISSING',
      "the OS secure store holds no key for this profile (it was deleted, or this is another user's store)",
    );
  }
  const key = decodeBase64(stored);
  if (key?.length !== AES256_KEY_LEN) {
    throw new ClientError(
      'KEYSTORE_KEY_MISSING',
      'the OS secure store holds a malformed key for this profile',
    );
  }
  return key;
}

/** Removes the profile's key from the OS store (best effort: used when creating a profile fails). */
export function deleteOsKey(keyId: string): void {
  try {
    osEntry(keyId).deletePassword();
  } catch {
    // Nothing to undo if the store is unreachable.
  }
}
