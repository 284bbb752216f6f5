/**
 * The profile directory: one device. It holds
 *
 * - `profile.json` (0600): non-secret settings: the server URL, its pinned key, which
 *   keystore holds the database key, and in passphrase mode the sealed key;
 * - `client.db` (0600): an SQLCipher database (SQLite3MultipleCiphers' `sqlcipher` scheme,
 *   SQLCipher 4 defaults: AES-256-CBC pages with HMAC-SHA512) keyed with a raw 256-bit key:
 *   identity, prekeys, sessions, contacts, history and the keys of received files.
 *
 * Every write that belongs together (a session record and the message it decrypted, say)
 * goes in one transaction, so a crash leaves either both or neither.
 */
import { closeSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AES256_KEY_LEN } from '@qalqon/crypto';
import Database from 'better-sqlite3-multiple-ciphers';
import { ClientError } from './errors.js';
import type { KeystoreKind, WrappedKey } from './keystore.js';

export const SETTINGS_FILE = 'profile.json';
export const DATABASE_FILE = 'client.db';
const SETTINGS_FORMAT = 1;

export interface ProfileSettings {
  readonly format: 1;
  readonly server: string;
  /** `sha256/<base64>`; absent until the first connection pins it. */
  readonly pin?: string | undefined;
  readonly keystore: KeystoreKind;
  /** Names the key in the OS store and binds the sealed key: 32 hex digits. */
  readonly keyId: string;
  readonly wrappedKey?: WrappedKey | undefined;
}

export function settingsPath(dir: string): string {
  return join(dir, SETTINGS_FILE);
}

export function readSettings(dir: string): ProfileSettings {
  let text: string;
  try {
    text = readFileSync(settingsPath(dir), 'utf8');
  } catch {
    throw new ClientError(
      'PROFILE_STATE',
      `${dir} holds no Qalqon profile (run "qalqon enroll" or "qalqon link")`,
    );
  }
  let s: ProfileSettings;
  try {
    s = JSON.parse(text) as ProfileSettings;
  } catch {
    throw new ClientError('PROFILE_CORRUPT', `${settingsPath(dir)} is not valid JSON`);
  }
  if (
    s?.format !== SETTINGS_FORMAT ||
    typeof s.server !== 'string' ||
    (s.keystore !== 'os' && s.keystore !== 'passphrase') ||
    typeof s.keyId !== 'string' ||
    !/^[0-9a-f]{32}$/.test(s.keyId) ||
    (s.pin !== undefined && typeof s.pin !== 'string')
  ) {
    throw new ClientError('PROFILE_CORRUPT', `${settingsPath(dir)} is not a profile of a known format`);
  }
  return s;
}

/** Writes the settings atomically (temp file, fsync by rename) with mode 0600. */
export function writeSettings(dir: string, s: ProfileSettings): void {
  const tmp = `${settingsPath(dir)}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(s, null, 2)}\n`, { mode: 0o600, flush: true });
  renameSync(tmp, settingsPath(dir));
}

/** Creates the profile directory (0700); refuses one that already holds a profile. */
export function createProfileDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (
    lstatSync(settingsPath(dir), { throwIfNoEntry: false }) ||
    lstatSync(join(dir, DATABASE_FILE), { throwIfNoEntry: false })
  ) {
    throw new ClientError('PROFILE_STATE', `${dir} already holds a profile; use another directory`);
  }
}

/** Version 1: the 1:1 client (identity, prekeys, sessions, contacts, history). */
export const SCHEMA_V1 = `
CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY NOT NULL) STRICT;
CREATE TABLE prekeys (id INTEGER PRIMARY KEY, record BLOB NOT NULL) STRICT;
CREATE TABLE signed_prekeys (id INTEGER PRIMARY KEY, record BLOB NOT NULL, created_at INTEGER NOT NULL) STRICT;
CREATE TABLE kyber_prekeys (id INTEGER PRIMARY KEY, record BLOB NOT NULL, created_at INTEGER NOT NULL) STRICT;
CREATE TABLE sessions (
  user_id TEXT NOT NULL, device_id INTEGER NOT NULL, record BLOB NOT NULL,
  PRIMARY KEY (user_id, device_id)) STRICT;
CREATE TABLE contacts (
  user_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, identity_key BLOB NOT NULL,
  verified INTEGER NOT NULL DEFAULT 0,
  -- 1 after the identity key changed while verified: sending is refused until re-verified.
  blocked INTEGER NOT NULL DEFAULT 0) STRICT;
-- Envelopes already handled (decrypted or refused), so a redelivery is acknowledged, not reprocessed.
CREATE TABLE envelopes_seen (id TEXT PRIMARY KEY, at INTEGER NOT NULL) STRICT;
-- The history: one row per message, keyed by the sender's message id, which every copy of a
-- message (to each of a user's devices) shares: shown once however often it arrives.
CREATE TABLE messages (
  sender_user_id TEXT NOT NULL, message_id TEXT NOT NULL, sender_name TEXT NOT NULL,
  sender_device INTEGER NOT NULL, peer TEXT NOT NULL, channel TEXT, text TEXT NOT NULL,
  sent_at INTEGER NOT NULL, received_at INTEGER NOT NULL, displayed INTEGER NOT NULL,
  PRIMARY KEY (sender_user_id, message_id)) STRICT;
`;

/**
 * Version 2: channels. A verified copy of each channel's signed membership log, the state
 * it replays to (so a later sync verifies only the new changes), this device's own sender
 * key per channel with the devices it was handed to, and the sender keys received from
 * other members' devices. Channel messages go in `messages` with `channel` set.
 */
const SCHEMA_V2 = `
-- One row per channel this device has verified the log of: the replayed state's head.
CREATE TABLE channels (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, seq INTEGER NOT NULL, head TEXT NOT NULL,
  -- The seq of the last 'remove' in the log (-1 for none): a sender key older than it is replaced.
  last_remove_seq INTEGER NOT NULL) STRICT;
-- The verified changes, exactly as signed.
CREATE TABLE channel_log (
  channel_id TEXT NOT NULL, seq INTEGER NOT NULL, change BLOB NOT NULL, signature BLOB NOT NULL,
  PRIMARY KEY (channel_id, seq)) STRICT;
-- The members the verified log names, with the identity key it binds for each.
CREATE TABLE channel_members (
  channel_id TEXT NOT NULL, user_id TEXT NOT NULL, user_name TEXT NOT NULL,
  identity_key BLOB NOT NULL, role TEXT NOT NULL, added_seq INTEGER NOT NULL,
  PRIMARY KEY (channel_id, user_id)) STRICT;
-- This device's sender key for the channel (the record holds the signing private key).
CREATE TABLE channel_own_keys (
  channel_id TEXT PRIMARY KEY, distribution_id BLOB NOT NULL, record BLOB NOT NULL,
  -- The log seq when it was made: a 'remove' after it forces a new key.
  created_seq INTEGER NOT NULL, created_at INTEGER NOT NULL) STRICT;
-- The devices the current own sender key was handed to (over their 1:1 sessions).
CREATE TABLE channel_key_holders (
  channel_id TEXT NOT NULL, distribution_id BLOB NOT NULL, user_id TEXT NOT NULL, device_id INTEGER NOT NULL,
  PRIMARY KEY (channel_id, distribution_id, user_id, device_id)) STRICT;
-- Sender keys received from other devices, per channel, sender device and distribution id.
CREATE TABLE channel_sender_keys (
  channel_id TEXT NOT NULL, user_id TEXT NOT NULL, device_id INTEGER NOT NULL,
  distribution_id BLOB NOT NULL, record BLOB NOT NULL, updated_at INTEGER NOT NULL,
  PRIMARY KEY (channel_id, user_id, device_id, distribution_id)) STRICT;
`;

/**
 * Version 3: files. The keys of end-to-end encrypted files (and their thumbnails) that
 * arrived in messages, with what the message says of each, so `getFile` can fetch and
 * check one by its id. A thumbnail's row names the file it belongs to in `thumbnail_of`.
 */
const SCHEMA_V3 = `
CREATE TABLE files (
  file_id TEXT PRIMARY KEY, sender_user_id TEXT NOT NULL, message_id TEXT NOT NULL,
  key BLOB NOT NULL, size INTEGER NOT NULL, sha256 BLOB NOT NULL, name TEXT NOT NULL, mime TEXT NOT NULL,
  thumbnail_of TEXT, width INTEGER, height INTEGER) STRICT;
CREATE INDEX files_by_message ON files (sender_user_id, message_id);
`;

/**
 * Version 4: a file's key is kept per (file id, sender). Keyed by the file id alone, the
 * first message to name an id won: anyone who learned a file's id could send a message
 * naming it with a wrong key before the real one arrived, and the real key was then
 * ignored. Now every sender's claim is kept (the first per sender: a replayed or later
 * message of the same sender changes nothing), and a download takes the row of the user
 * the server says uploaded the file (FileStatus.uploaderId). Rows of version 3 are kept.
 */
const SCHEMA_V4 = `
CREATE TABLE files_v4 (
  file_id TEXT NOT NULL, sender_user_id TEXT NOT NULL, message_id TEXT NOT NULL,
  key BLOB NOT NULL, size INTEGER NOT NULL, sha256 BLOB NOT NULL, name TEXT NOT NULL, mime TEXT NOT NULL,
  thumbnail_of TEXT, width INTEGER, height INTEGER,
  PRIMARY KEY (file_id, sender_user_id)) STRICT;
INSERT INTO files_v4 SELECT file_id, sender_user_id, message_id, key, size, sha256, name, mime, thumbnail_of, width, height FROM files;
DROP TABLE files;
ALTER TABLE files_v4 RENAME TO files;
CREATE INDEX files_by_message ON files (sender_user_id, message_id);
`;

/**
 * The schema as a list of steps: step i takes a database from version i to version i + 1.
 * A new profile runs them all; an existing one the steps it has not had yet, all in one
 * transaction, so an upgrade either completes or leaves the profile as it was.
 */
export const SCHEMA_STEPS: readonly string[] = [SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4];
export const SCHEMA_VERSION = SCHEMA_STEPS.length;

export type ClientDatabase = Database.Database;

function isNotADb(err: unknown): boolean {
  const code = err instanceof Error ? (err as { code?: unknown }).code : undefined;
  return code === 'SQLITE_NOTADB';
}

function schemaVersion(db: ClientDatabase): number {
  return db.pragma('user_version', { simple: true }) as number;
}

/**
 * Brings the database to SCHEMA_VERSION. Runs in an IMMEDIATE transaction that reads the
 * version again, so two processes opening an old profile at once upgrade it once. A
 * version newer than this code knows is refused (the profile was opened by a newer client).
 */
function migrate(db: ClientDatabase): void {
  const check = (version: number) => {
    if (!Number.isSafeInteger(version) || version < 0 || version > SCHEMA_VERSION) {
      throw new ClientError(
        'PROFILE_CORRUPT',
        `the profile database has unknown schema version ${version} (this client knows up to ${SCHEMA_VERSION})`,
      );
    }
  };
  check(schemaVersion(db));
  if (schemaVersion(db) === SCHEMA_VERSION) return;
  db.transaction(() => {
    const from = schemaVersion(db);
    check(from);
    for (let v = from; v < SCHEMA_VERSION; v++) db.exec(SCHEMA_STEPS[v]!);
    db.pragma(`user_version=${SCHEMA_VERSION}`);
  }).immediate();
}

/** Opens (creating with `create`) the SQLCipher database of a profile with its raw key. */
export function openDatabase(dir: string, key: Uint8Array, create: boolean): ClientDatabase {
  if (!(key instanceof Uint8Array) || key.length !== AES256_KEY_LEN) {
    throw new ClientError('INVALID_ARGUMENT', `"key" expected Uint8Array of length ${AES256_KEY_LEN}`);
  }
  const path = join(dir, DATABASE_FILE);
  const exists = lstatSync(path, { throwIfNoEntry: false }) !== undefined;
  if (!exists && !create) throw new ClientError('PROFILE_STATE', `${dir} holds no database`);
  // Created by us with 0600 before SQLite opens it; the -wal and -shm files inherit the mode.
  if (!exists) closeSync(openSync(path, 'wx', 0o600));
  const db = new Database(path);
  try {
    db.pragma(`cipher='sqlcipher'`);
    db.pragma('legacy=4');
    // The raw-key form skips SQLCipher's KDF: the key is already uniformly random.
    db.pragma(`key="x'${Buffer.from(key).toString('hex')}'"`);
    try {
      db.prepare('SELECT count(*) FROM sqlite_master').get();
    } catch (err) {
      if (isNotADb(err)) {
        throw new ClientError(
          'DATABASE_UNREADABLE',
          `the key does not open ${path} (wrong key, or not a Qalqon profile)`,
        );
      }
      throw err;
    }
    db.pragma('journal_mode=WAL');
    db.pragma('synchronous=FULL');
    // Sorts and temporary tables stay in memory, never in an unencrypted temp file.
    db.pragma('temp_store=MEMORY');
    db.pragma('busy_timeout=5000');
    migrate(db);
    return db;
  } catch (err) {
    db.close();
    throw err;
  }
}

/** Typed access to the `meta` table. */
export class Meta {
  readonly #get: Database.Statement<[string], { value: Uint8Array | string | number }>;
  readonly #set: Database.Statement<[string, Uint8Array | string | number]>;

  constructor(db: ClientDatabase) {
    this.#get = db.prepare('SELECT value FROM meta WHERE key = ?');
    this.#set = db.prepare(
      'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value',
    );
  }

  bytes(key: string): Uint8Array | undefined {
    const v = this.#get.get(key)?.value;
    return v instanceof Uint8Array ? new Uint8Array(v) : undefined;
  }
  string(key: string): string | undefined {
    const v = this.#get.get(key)?.value;
    return typeof v === 'string' ? v : undefined;
  }
  number(key: string): number | undefined {
    const v = this.#get.get(key)?.value;
    return typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined;
  }
  set(key: string, value: Uint8Array | string | number): void {
    this.#set.run(key, value instanceof Uint8Array ? Buffer.from(value) : value);
  }
}
