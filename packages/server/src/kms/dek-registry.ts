/**
 * The server's data keys (DEKs): random 256-bit keys, each stored only wrapped by the KMS,
 * in a small file beside the database. The file lives outside the database on purpose:
 * the database key cannot be kept inside the database it opens.
 *
 * Each DEK is wrapped with the context `dek:<name>`, so the KMS's authentication binds a
 * wrapped key to its name and the file's entries cannot be swapped. Rotating the KEK
 * re-wraps every DEK (`rewrapAll`) and leaves the data encrypted under the same DEKs:
 * nothing is re-encrypted.
 */
import { readFileSync } from 'node:fs';
import { AES256_KEY_LEN, randomBytes } from '@qalqon/crypto';
import { ServerError } from '../errors.js';
import { writePrivateFileAtomic } from '../secure-file.js';
import { astring } from '../validate.js';
import { KEY_ID_PATTERN, type Kms, type WrappedKey } from './kms.js';

/** The wrapped-DEK file's name inside the data directory. */
export const DEK_FILE = 'data-keys.json';
const FILE_FORMAT = 'qalqon-data-keys';
const FILE_VERSION = 1;
/** DEK names: lower case, digits and dashes, e.g. `database`, `fields-1`. */
export const DEK_NAME_PATTERN = /^[a-z][a-z0-9-]{0,62}$/;

interface DekEntry {
  readonly wrapped: WrappedKey;
  readonly createdAt: number;
}

interface DekFileJson {
  format: string;
  version: number;
  keys: Record<string, { keyId: string; createdAt: number; ciphertext: string }>;
}

/** What an operator may see about a DEK: its name, its KEK version, its age. Never key bytes. */
export interface DekInfo {
  readonly name: string;
  readonly keyId: string;
  readonly createdAt: number;
}

function contextOf(name: string): string {
  return `dek:${name}`;
}

function invalidFile(path: string, why: string): ServerError {
  return new ServerError('DEK_FILE_INVALID', `data-key file ${path} ${why}`);
}

function parse(path: string, text: string): Map<string, DekEntry> {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    // The parser's message quotes the input; say only that it failed.
    throw invalidFile(path, 'is not valid JSON');
  }
  const f = json as Partial<DekFileJson>;
  if (typeof f !== 'object' || f === null || f.format !== FILE_FORMAT)
    throw invalidFile(path, 'has the wrong format');
  if (f.version !== FILE_VERSION) throw invalidFile(path, `has unsupported version ${String(f.version)}`);
  if (typeof f.keys !== 'object' || f.keys === null || Array.isArray(f.keys))
    throw invalidFile(path, 'has no keys');
  const out = new Map<string, DekEntry>();
  for (const [name, e] of Object.entries(f.keys)) {
    if (!DEK_NAME_PATTERN.test(name)) throw invalidFile(path, 'has a key with a bad name');
    if (typeof e !== 'object' || e === null) throw invalidFile(path, `key ${name} is not an object`);
    if (typeof e.keyId !== 'string' || !KEY_ID_PATTERN.test(e.keyId))
      throw invalidFile(path, `key ${name} has a bad keyId`);
    if (!Number.isSafeInteger(e.createdAt)) throw invalidFile(path, `key ${name} has a bad createdAt`);
    const ct = typeof e.ciphertext === 'string' ? Buffer.from(e.ciphertext, 'base64') : undefined;
    if (!ct || ct.length === 0 || ct.toString('base64') !== e.ciphertext) {
      throw invalidFile(path, `key ${name} has a bad ciphertext`);
    }
    out.set(name, {
      wrapped: { keyId: e.keyId, context: contextOf(name), ciphertext: new Uint8Array(ct) },
      createdAt: e.createdAt,
    });
  }
  return out;
}

function serialise(entries: ReadonlyMap<string, DekEntry>): Uint8Array {
  const json: DekFileJson = { format: FILE_FORMAT, version: FILE_VERSION, keys: {} };
  for (const [name, e] of [...entries].sort(([a], [b]) => (a < b ? -1 : 1))) {
    json.keys[name] = {
      keyId: e.wrapped.keyId,
      createdAt: e.createdAt,
      ciphertext: Buffer.from(e.wrapped.ciphertext).toString('base64'),
    };
  }
  return new TextEncoder().encode(`${JSON.stringify(json, null, 2)}\n`);
}

export class DekRegistry {
  readonly #path: string;
  readonly #kms: Kms;
  readonly #clock: () => number;
  #entries: Map<string, DekEntry>;

  private constructor(path: string, kms: Kms, entries: Map<string, DekEntry>, clock: () => number) {
    this.#path = path;
    this.#kms = kms;
    this.#entries = entries;
    this.#clock = clock;
  }

  /** Opens the registry at `path`; a missing file is an empty registry (it is written on first create). */
  static async open(path: string, kms: Kms, clock: () => number = Date.now): Promise<DekRegistry> {
    astring('path', path, 1, 4096);
    let text: string | undefined;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    return new DekRegistry(path, kms, text === undefined ? new Map() : parse(path, text), clock);
  }

  list(): DekInfo[] {
    return [...this.#entries].map(([name, e]) => ({ name, keyId: e.wrapped.keyId, createdAt: e.createdAt }));
  }

  has(name: string): boolean {
    astring('name', name, 1, 63, DEK_NAME_PATTERN);
    return this.#entries.has(name);
  }

  /** The DEK named `name`, unwrapped by the KMS. The caller owns the returned bytes and should zero them. */
  async get(name: string): Promise<Uint8Array> {
    astring('name', name, 1, 63, DEK_NAME_PATTERN);
    const e = this.#entries.get(name);
    if (!e) throw new ServerError('DEK_NOT_FOUND', `no data key named ${name}`);
    return this.#kms.unwrap(e.wrapped);
  }

  /**
   * The DEK named `name`, creating it (random, wrapped, persisted before it is returned)
   * if it does not exist yet, so no data is ever encrypted under a key that is not on disk.
   */
  async getOrCreate(name: string): Promise<Uint8Array> {
    if (this.has(name)) return this.get(name);
    const dek = randomBytes(AES256_KEY_LEN);
    const wrapped = await this.#kms.wrap(dek, contextOf(name));
    const next = new Map(this.#entries).set(name, { wrapped, createdAt: this.#clock() });
    writePrivateFileAtomic(this.#path, serialise(next));
    this.#entries = next;
    return dek;
  }

  /**
   * Re-wraps every DEK not yet under the KMS's active KEK version and persists the result
   * in one atomic write (a crash leaves the old file, still readable by the old version).
   * Returns how many were re-wrapped. The DEKs, and so all data, stay the same.
   */
  async rewrapAll(): Promise<number> {
    const { activeKeyId } = await this.#kms.describe();
    const next = new Map(this.#entries);
    let count = 0;
    for (const [name, e] of this.#entries) {
      if (e.wrapped.keyId === activeKeyId) continue;
      const dek = await this.#kms.unwrap(e.wrapped);
      try {
        next.set(name, { wrapped: await this.#kms.wrap(dek, contextOf(name)), createdAt: e.createdAt });
      } finally {
        dek.fill(0);
      }
      count++;
    }
    if (count > 0) {
      writePrivateFileAtomic(this.#path, serialise(next));
      this.#entries = next;
    }
    return count;
  }
}

/**
 * KEK rotation: a new KEK version becomes active and every DEK is re-wrapped under it.
 * The previous versions are kept (the caller destroys them with `kms.destroy` once backups
 * that reference them are no longer needed); until then old backups of the DEK file still open.
 */
export async function rotateKek(
  kms: Kms,
  registry: DekRegistry,
): Promise<{ readonly activeKeyId: string; readonly rewrapped: number }> {
  const activeKeyId = await kms.rotate();
  const rewrapped = await registry.rewrapAll();
  return { activeKeyId, rewrapped };
}
