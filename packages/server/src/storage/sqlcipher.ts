/**
 * Opens the embedded database: an SQLCipher-format file (SQLite3MultipleCiphers' `sqlcipher`
 * scheme, SQLCipher 4 defaults: AES-256-CBC pages with HMAC-SHA512) keyed with a raw
 * 256-bit DEK. The raw-key form (`x'<hex>'`) skips the passphrase KDF: the key is already
 * uniformly random, and stretching it would only slow every start.
 *
 * Durability: WAL journal with `synchronous=FULL`, so every commit is fsynced before
 * better-sqlite3 returns; a write the server has acknowledged survives SIGKILL and power
 * loss. (`NORMAL` would survive SIGKILL too, since the WAL write reaches the OS before
 * commit returns, but could lose the last commits on power failure; the option exists for
 * benchmarks and is never the default.)
 */
import { closeSync, lstatSync, openSync } from 'node:fs';
import { AES256_KEY_LEN } from '@qalqon/crypto';
import Database from 'better-sqlite3-multiple-ciphers';
import { ServerError } from '../errors.js';
import { PRIVATE_FILE_MODE } from '../secure-file.js';
import { abytes, astring } from '../validate.js';

export type SqliteDatabase = Database.Database;

export interface OpenSqlcipherOptions {
  /** `FULL` (default): a commit is on stable storage when it returns. */
  readonly synchronous?: 'FULL' | 'NORMAL';
  /** How long a connection waits for another connection's write lock (ms). */
  readonly busyTimeoutMs?: number;
}

/** Is `err` better-sqlite3's error with an SQLite result code starting with `prefix`? */
export function isSqliteError(err: unknown, prefix: string): boolean {
  const code = err instanceof Error ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && code.startsWith(prefix);
}

/**
 * Opens (creating if absent, mode 0600) the SQLCipher database at `path` with `key`.
 * Throws DATABASE_UNREADABLE when the key does not open it (wrong key, or not an
 * SQLCipher database): SQLCipher cannot tell those apart, and neither can we.
 */
export function openSqlcipher(
  path: string,
  key: Uint8Array,
  options: OpenSqlcipherOptions = {},
): SqliteDatabase {
  astring('path', path, 1, 4096);
  abytes('key', key, AES256_KEY_LEN);
  if (!lstatSync(path, { throwIfNoEntry: false })) {
    // Create the file ourselves so it is 0600 from the start; SQLite gives the -wal and
    // -shm files the main file's permissions.
    closeSync(openSync(path, 'wx', PRIVATE_FILE_MODE));
  }
  const db = new Database(path);
  try {
    db.pragma(`cipher='sqlcipher'`);
    db.pragma('legacy=4');
    // The hex string is built only here and never logged; SQLite errors do not echo pragmas.
    db.pragma(`key="x'${Buffer.from(key).toString('hex')}'"`);
    try {
      // The first read decrypts page 1; a wrong key fails here with SQLITE_NOTADB.
      db.prepare('SELECT count(*) FROM sqlite_master').get();
    } catch (err) {
      if (isSqliteError(err, 'SQLITE_NOTADB')) {
        throw new ServerError(
          'DATABASE_UNREADABLE',
          `database ${path} cannot be opened with its data key (wrong key, or not a Qalqon database)`,
        );
      }
      throw err;
    }
    const mode = db.pragma('journal_mode=WAL', { simple: true });
    if (mode !== 'wal') throw new Error(`database ${path} refused WAL mode (got ${String(mode)})`);
    db.pragma(`synchronous=${options.synchronous === 'NORMAL' ? 'NORMAL' : 'FULL'}`);
    db.pragma('foreign_keys=ON');
    // Sorts and temporary tables stay in memory, never in an unencrypted temp file.
    db.pragma('temp_store=MEMORY');
    db.pragma(`busy_timeout=${Math.max(0, Math.floor(options.busyTimeoutMs ?? 5000))}`);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}
