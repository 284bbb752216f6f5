/**
 * The default KMS: KEKs kept in a master-key file (mode 0600) in the data directory.
 *
 * Wrapping is AES-256-GCM (NIST SP 800-38D) with a fresh 96-bit random nonce per wrap and
 * the KEK version id and the caller's context bound as additional authenticated data, so a
 * wrapped key cannot be relabelled to another version or another purpose. A DEK is wrapped
 * a handful of times over the server's life, far below the 2^32 random-nonce bound of
 * SP 800-38D section 8.3.
 *
 * The file is trusted only if no one else can read or replace it: `open` refuses a file
 * with any group/other permission bit, a symlink, a file owned by another user, and a
 * directory others can write to. Losing this file loses the data; it belongs in backups
 * kept apart from the database backups.
 */
import { readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  AES256_KEY_LEN,
  aes256GcmDecrypt,
  aes256GcmEncrypt,
  CryptoError,
  GCM_NONCE_LEN,
  GCM_TAG_LEN,
  randomBytes,
} from '@qalqon/crypto';
import { ServerError } from '../errors.js';
import { checkPrivateFile, ensurePrivateDir, writePrivateFileAtomic } from '../secure-file.js';
import { abytes, astring } from '../validate.js';
import { CONTEXT_PATTERN, KEY_ID_PATTERN, type Kms, type KmsDescription, type WrappedKey } from './kms.js';

/** The master-key file's name inside the data directory. */
export const LOCAL_KMS_FILE = 'kms-master.key';
const FILE_FORMAT = 'qalqon-local-kms';
const FILE_VERSION = 1;
/** Domain separation for the AAD, so these tags cannot be confused with any other GCM use of a KEK. */
const WRAP_AAD_PREFIX = 'qalqon/kms-wrap/v1';
/** nonce ‖ ciphertext of a 32-byte DEK ‖ tag. */
export const LOCAL_WRAPPED_LEN = GCM_NONCE_LEN + AES256_KEY_LEN + GCM_TAG_LEN;

interface KekEntry {
  id: string;
  createdAt: number;
  key: Uint8Array;
}

interface KeyFileJson {
  format: string;
  version: number;
  active: string;
  keys: { id: string; createdAt: number; key: string }[];
}

function newKeyId(): string {
  return `local-${Buffer.from(randomBytes(8)).toString('hex')}`;
}

function wrapAad(keyId: string, context: string): Uint8Array {
  // NUL separators: neither the id nor the context can contain one (their patterns exclude it).
  return new TextEncoder().encode(`${WRAP_AAD_PREFIX}\0${keyId}\0${context}`);
}

function invalidFile(path: string, why: string): ServerError {
  // Never include the file's text or a parser message: JSON.parse quotes the input.
  return new ServerError('KMS_KEY_FILE_INVALID', `KMS master-key file ${path} ${why}`);
}

function parseKeyFile(path: string, text: string): { active: string; keys: KekEntry[] } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw invalidFile(path, 'is not valid JSON');
  }
  const f = json as Partial<KeyFileJson>;
  if (typeof f !== 'object' || f === null || f.format !== FILE_FORMAT)
    throw invalidFile(path, 'has the wrong format');
  if (f.version !== FILE_VERSION) throw invalidFile(path, `has unsupported version ${String(f.version)}`);
  if (!Array.isArray(f.keys) || f.keys.length === 0) throw invalidFile(path, 'holds no keys');
  const keys: KekEntry[] = [];
  for (const [i, k] of f.keys.entries()) {
    if (typeof k !== 'object' || k === null) throw invalidFile(path, `key #${i} is not an object`);
    if (typeof k.id !== 'string' || !KEY_ID_PATTERN.test(k.id))
      throw invalidFile(path, `key #${i} has a bad id`);
    if (!Number.isSafeInteger(k.createdAt)) throw invalidFile(path, `key ${k.id} has a bad createdAt`);
    const key = typeof k.key === 'string' ? Buffer.from(k.key, 'base64') : undefined;
    if (!key || key.length !== AES256_KEY_LEN || key.toString('base64') !== k.key) {
      throw invalidFile(path, `key ${k.id} is not ${AES256_KEY_LEN} bytes of base64`);
    }
    if (keys.some((e) => e.id === k.id)) throw invalidFile(path, `key ${k.id} appears twice`);
    keys.push({ id: k.id, createdAt: k.createdAt, key: new Uint8Array(key) });
  }
  if (typeof f.active !== 'string' || !keys.some((k) => k.id === f.active)) {
    throw invalidFile(path, 'names an active key it does not hold');
  }
  return { active: f.active, keys };
}

function serialise(active: string, keys: readonly KekEntry[]): Uint8Array {
  const json: KeyFileJson = {
    format: FILE_FORMAT,
    version: FILE_VERSION,
    active,
    keys: keys.map((k) => ({ id: k.id, createdAt: k.createdAt, key: Buffer.from(k.key).toString('base64') })),
  };
  return new TextEncoder().encode(`${JSON.stringify(json, null, 2)}\n`);
}

/** Refuses a key-file directory that group or others may write to: they could swap the file. */
function checkDir(path: string): void {
  if (process.platform === 'win32') return;
  const st = statSync(dirname(path));
  if ((st.mode & 0o022) !== 0) {
    throw new ServerError(
      'KMS_KEY_FILE_INSECURE',
      `the directory of ${path} is writable by group or others; it must be private (chmod 700)`,
    );
  }
}

export class LocalKms implements Kms {
  readonly #path: string;
  #active: string;
  #keys: KekEntry[];
  readonly #clock: () => number;
  #closed = false;

  private constructor(path: string, active: string, keys: KekEntry[], clock: () => number) {
    this.#path = path;
    this.#clock = clock;
    this.#active = active;
    this.#keys = keys;
  }

  /**
   * Creates a new master-key file holding one fresh KEK. Refuses (KMS_KEY_FILE_INVALID) if
   * the file exists: initialising over an existing key would orphan every key it wrapped.
   */
  static async create(path: string, clock: () => number = Date.now): Promise<LocalKms> {
    astring('path', path, 1, 4096);
    ensurePrivateDir(dirname(path));
    checkDir(path);
    const entry: KekEntry = { id: newKeyId(), createdAt: clock(), key: randomBytes(AES256_KEY_LEN) };
    writePrivateFileAtomic(path, serialise(entry.id, [entry]), {
      exclusive: true,
      existsCode: 'KMS_KEY_FILE_INVALID',
    });
    return new LocalKms(path, entry.id, [entry], clock);
  }

  /** Opens an existing master-key file after checking that no one else can read or replace it. */
  static async open(path: string, clock: () => number = Date.now): Promise<LocalKms> {
    astring('path', path, 1, 4096);
    if (!checkPrivateFile(path, `KMS master-key file ${path}`, 'KMS_KEY_FILE_INSECURE')) {
      throw invalidFile(path, 'does not exist');
    }
    checkDir(path);
    const { active, keys } = parseKeyFile(path, readFileSync(path, 'utf8'));
    return new LocalKms(path, active, keys, clock);
  }

  #check(): void {
    if (this.#closed) throw new ServerError('CLOSED', 'the KMS was closed');
  }

  async describe(): Promise<KmsDescription> {
    this.#check();
    return {
      provider: 'local',
      location: this.#path,
      activeKeyId: this.#active,
      keys: this.#keys.map((k) => ({ id: k.id, createdAt: k.createdAt, active: k.id === this.#active })),
    };
  }

  async wrap(dek: Uint8Array, context: string): Promise<WrappedKey> {
    this.#check();
    abytes('dek', dek, AES256_KEY_LEN);
    astring('context', context, 1, 128, CONTEXT_PATTERN);
    const kek = this.#keys.find((k) => k.id === this.#active)!;
    const nonce = randomBytes(GCM_NONCE_LEN);
    const sealed = aes256GcmEncrypt(kek.key, nonce, dek, wrapAad(kek.id, context));
    const ciphertext = new Uint8Array(GCM_NONCE_LEN + sealed.length);
    ciphertext.set(nonce);
    ciphertext.set(sealed, GCM_NONCE_LEN);
    return { keyId: kek.id, context, ciphertext };
  }

  async unwrap(wrapped: WrappedKey): Promise<Uint8Array> {
    this.#check();
    if (typeof wrapped !== 'object' || wrapped === null) {
      throw new ServerError('INVALID_ARGUMENT', '"wrapped" expected object');
    }
    astring('wrapped.keyId', wrapped.keyId, 1, 64, KEY_ID_PATTERN);
    astring('wrapped.context', wrapped.context, 1, 128, CONTEXT_PATTERN);
    abytes('wrapped.ciphertext', wrapped.ciphertext, LOCAL_WRAPPED_LEN);
    const kek = this.#keys.find((k) => k.id === wrapped.keyId);
    if (!kek)
      throw new ServerError('KMS_KEY_NOT_FOUND', `KEK version ${wrapped.keyId} is not held by this KMS`);
    const nonce = wrapped.ciphertext.subarray(0, GCM_NONCE_LEN);
    const sealed = wrapped.ciphertext.subarray(GCM_NONCE_LEN);
    try {
      return aes256GcmDecrypt(kek.key, nonce, sealed, wrapAad(kek.id, wrapped.context));
    } catch (err) {
      if (err instanceof CryptoError && err.code === 'DECRYPT_FAILED') {
        throw new ServerError(
          'KMS_UNWRAP_FAILED',
          `wrapped key for ${wrapped.context} does not authenticate under KEK version ${kek.id}`,
        );
      }
      throw err;
    }
  }

  async rotate(): Promise<string> {
    this.#check();
    const entry: KekEntry = { id: newKeyId(), createdAt: this.#clock(), key: randomBytes(AES256_KEY_LEN) };
    const keys = [...this.#keys, entry];
    // Persist first: if the write fails, memory still matches the file.
    writePrivateFileAtomic(this.#path, serialise(entry.id, keys));
    this.#keys = keys;
    this.#active = entry.id;
    return entry.id;
  }

  async destroy(keyId: string): Promise<void> {
    this.#check();
    astring('keyId', keyId, 1, 64, KEY_ID_PATTERN);
    const victim = this.#keys.find((k) => k.id === keyId);
    if (!victim) throw new ServerError('KMS_KEY_NOT_FOUND', `KEK version ${keyId} is not held by this KMS`);
    if (keyId === this.#active) {
      throw new ServerError('KMS_KEY_ACTIVE', `KEK version ${keyId} is active; rotate before destroying it`);
    }
    const keys = this.#keys.filter((k) => k !== victim);
    writePrivateFileAtomic(this.#path, serialise(this.#active, keys));
    this.#keys = keys;
    // Best effort: the old key's bytes leave this process's heap once the GC reclaims them.
    victim.key.fill(0);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const k of this.#keys) k.key.fill(0);
    this.#keys = [];
  }
}
