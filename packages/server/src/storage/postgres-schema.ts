/**
 * The PostgreSQL backend's schema: versioned migrations (append only: never edit a released
 * one) and the runner that applies them at start-up.
 *
 * Tables, columns and row ids match the embedded schema (sqlite-schema.ts) wherever a
 * value is sealed, because a sealed value's AAD is (table, column, row id). Columns named
 * "sealed" hold FieldSealer output; everything else is routing metadata (ids, counters,
 * timestamps, user and role names), queryable as on the embedded backend. Unlike the
 * embedded file, PostgreSQL is not encrypted as a whole, so the sealing is the only layer:
 * no column outside this list may ever hold client content.
 *
 * Several nodes may start at once against one database: the runner holds a session-level
 * advisory lock (`pg_advisory_lock`, scoped to the database) while it reads the version
 * and applies what is missing, each migration in its own transaction with its record in
 * `schema_migrations`. A node that waited for the lock finds the work done and applies
 * nothing. If the connection drops, PostgreSQL releases the lock and rolls back the open
 * migration, so a crash leaves the schema at the previous version.
 */
import type pg from 'pg';
import { ServerError } from '../errors.js';
import { checkList, type Migration, type MigrationResult } from './migrations.js';

/** The advisory-lock key migrations run under ("qalq" in ASCII). Per database. */
export const MIGRATION_LOCK_KEY = 0x7161_6c71;

export const POSTGRES_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'data keys, users, enrolment codes, devices, prekeys, mailbox',
    sql: `
-- The DEKs of this database, each wrapped by the KMS under the context 'dek:<name>'. Only
-- wrapped keys are stored: a node needs the KMS to unwrap them, so a copy of the database
-- (a dump, a replica, a stolen disk) opens nothing without the KMS.
CREATE TABLE data_keys (
  name TEXT PRIMARY KEY,
  key_id TEXT NOT NULL,                     -- the KEK version that wrapped it
  ciphertext BYTEA NOT NULL,                -- wrapped by the KMS (opaque, authenticated)
  created_at BIGINT NOT NULL
);

CREATE TABLE users (
  id TEXT PRIMARY KEY,
  name TEXT COLLATE "C" NOT NULL UNIQUE,    -- "C": sorted by code point, as on the embedded backend
  identity_key BYTEA,                       -- sealed (row id: users.id); NULL until first enrolment
  next_device_id INTEGER NOT NULL DEFAULT 1, -- device ids are never reused: peers' sessions name them
  created_at BIGINT NOT NULL
);

CREATE TABLE user_roles (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY (user_id, role)
);

-- Only an HMAC of the code is stored; redeeming deletes the row (single use).
CREATE TABLE enrolment_codes (
  code_hash BYTEA PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  expires_at BIGINT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE INDEX enrolment_codes_user ON enrolment_codes(user_id);

CREATE TABLE devices (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  device_id INTEGER NOT NULL,
  registration_id INTEGER NOT NULL,
  name BYTEA NOT NULL,                      -- sealed (row id: <user>/<device>)
  signed_prekey_id INTEGER NOT NULL,
  signed_prekey BYTEA NOT NULL,             -- sealed
  signed_prekey_signature BYTEA NOT NULL,   -- sealed
  kyber_prekey_id INTEGER NOT NULL,
  kyber_prekey BYTEA NOT NULL,              -- sealed
  kyber_prekey_signature BYTEA NOT NULL,    -- sealed
  queued_count BIGINT NOT NULL DEFAULT 0,   -- kept in step with envelopes, so limits cost O(1)
  queued_bytes BIGINT NOT NULL DEFAULT 0,
  created_at BIGINT NOT NULL,
  auth_key BYTEA,                           -- sealed; NULL for a device registered without one
  PRIMARY KEY (user_id, device_id)
);

CREATE TABLE one_time_prekeys (
  user_id TEXT NOT NULL,
  device_id INTEGER NOT NULL,
  prekey_id INTEGER NOT NULL,
  public_key BYTEA NOT NULL,                -- sealed (row id: <user>/<device>/<prekey id>)
  PRIMARY KEY (user_id, device_id, prekey_id),
  FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
);

-- seq comes from an identity sequence: it never goes backwards, and because an enqueue
-- locks the recipient's device row before it draws seq values and holds the lock until
-- commit, one device's envelopes commit in seq order, so an afterSeq cursor never skips one.
CREATE TABLE envelopes (
  seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  recipient_user_id TEXT NOT NULL,
  recipient_device_id INTEGER NOT NULL,
  sender_user_id TEXT NOT NULL,
  sender_device_id INTEGER NOT NULL,
  created_at BIGINT NOT NULL,
  size INTEGER NOT NULL,                    -- plaintext body length, for the byte limit
  body BYTEA NOT NULL,                      -- sealed (row id: envelopes.id)
  FOREIGN KEY (recipient_user_id, recipient_device_id)
    REFERENCES devices(user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX envelopes_recipient ON envelopes(recipient_user_id, recipient_device_id, seq);
CREATE INDEX envelopes_created ON envelopes(created_at);
`,
  },
  {
    version: 2,
    name: 'roles, grants, org units, channels, channel log, audit log',
    sql: `
-- Custom roles only: the built-in ones (admin, auditor, member, guest) are code.
CREATE TABLE roles (
  name TEXT COLLATE "C" PRIMARY KEY,
  permissions TEXT[] NOT NULL,              -- sorted, distinct, each a known permission
  created_at BIGINT NOT NULL
);

-- Global grants stay in user_roles (a user's roles); unit and channel grants live here.
-- scope_id has no foreign key (it names a unit or a channel): removeOrgUnit refuses while a
-- unit has grants, removeChannel deletes the channel's grants, and writers lock the row
-- they name.
CREATE TABLE grants (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role TEXT COLLATE "C" NOT NULL,
  scope_kind TEXT COLLATE "C" NOT NULL CHECK (scope_kind IN ('unit', 'channel')),
  scope_id TEXT COLLATE "C" NOT NULL,
  PRIMARY KEY (user_id, role, scope_kind, scope_id)
);
CREATE INDEX grants_scope ON grants(scope_kind, scope_id);
CREATE INDEX grants_role ON grants(role);
CREATE INDEX user_roles_role ON user_roles(role);

CREATE TABLE org_units (
  id TEXT PRIMARY KEY,
  name TEXT COLLATE "C" NOT NULL UNIQUE,
  parent_id TEXT REFERENCES org_units(id),  -- NULL for a top-level unit
  created_at BIGINT NOT NULL
);
CREATE INDEX org_units_parent ON org_units(parent_id);

CREATE TABLE user_org_units (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  unit_id TEXT NOT NULL REFERENCES org_units(id),
  PRIMARY KEY (user_id, unit_id)
);
CREATE INDEX user_org_units_unit ON user_org_units(unit_id, user_id);

-- Channel ids are chosen by the creating client (they are inside the signed genesis change).
CREATE TABLE channels (
  id TEXT PRIMARY KEY,
  name TEXT COLLATE "C" NOT NULL UNIQUE,
  unit_id TEXT REFERENCES org_units(id),
  created_by TEXT NOT NULL,
  seq BIGINT NOT NULL,                      -- the last change in its log; appends lock this row
  created_at BIGINT NOT NULL
);
CREATE INDEX channels_unit ON channels(unit_id);

CREATE TABLE channel_members (
  channel_id TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role TEXT NOT NULL CHECK (role IN ('member', 'manager')),
  added_seq BIGINT NOT NULL,
  PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user ON channel_members(user_id);

-- The signed membership changes as received.
CREATE TABLE channel_log (
  channel_id TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
  seq BIGINT NOT NULL,
  change BYTEA NOT NULL,                    -- sealed (row id: <channel id>/<seq>)
  signature BYTEA NOT NULL,                 -- sealed (row id: <channel id>/<seq>)
  PRIMARY KEY (channel_id, seq)
);

-- The audit hash chain (audit/chain.ts): seq, time and hash in the clear for ordering,
-- --since and the chain walk; the canonical record (actor, target, ...) sealed.
CREATE TABLE audit_log (
  seq BIGINT PRIMARY KEY,
  at BIGINT NOT NULL,
  hash TEXT COLLATE "C" NOT NULL,           -- hex SHA-256 of the canonical record
  record BYTEA NOT NULL                     -- sealed (row id: auditRecordRef())
);
CREATE INDEX audit_log_at ON audit_log(at);

-- The last record's seq and hash, signed with the audit key after every append.
CREATE TABLE audit_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq BIGINT NOT NULL,
  hash TEXT COLLATE "C" NOT NULL,
  signature BYTEA NOT NULL
);
`,
  },
  {
    version: 3,
    name: 'files',
    sql: `
-- End-to-end encrypted files (files/): the client's ciphertext, encrypted again at rest in
-- chunks under the file's own data key, which the KMS wraps under the context 'file:<id>'.
-- The chunks live here, not on a node's disk, so every node serves every file and a
-- database backup holds them. size and chunk_size are bound into every chunk's AAD and
-- every chunk below received must be there, so editing these columns makes the file fail
-- to open rather than read wrongly.
CREATE TABLE files (
  id TEXT PRIMARY KEY,
  owner_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  size BIGINT NOT NULL,
  chunk_size INTEGER NOT NULL,
  received BIGINT NOT NULL DEFAULT 0,       -- complete when received = size; appends lock this row
  recipients BYTEA NOT NULL,                -- sealed (row id: files.id)
  key_id TEXT NOT NULL,                     -- the KEK version that wrapped the data key
  wrapped_key BYTEA NOT NULL,               -- wrapped by the KMS (opaque, authenticated)
  created_at BIGINT NOT NULL,
  updated_at BIGINT NOT NULL
);
CREATE INDEX files_owner ON files(owner_id);
CREATE INDEX files_incomplete ON files(updated_at) WHERE received < size;

CREATE TABLE file_chunks (
  file_id TEXT NOT NULL REFERENCES files(id) ON DELETE CASCADE,
  idx INTEGER NOT NULL,
  data BYTEA NOT NULL,                      -- files/chunk-format.ts: format, nonce, AES-256-GCM ciphertext, tag
  PRIMARY KEY (file_id, idx)
);
-- Ciphertext does not compress: store it out of line without trying.
ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
`,
  },
];

async function currentVersion(client: pg.PoolClient): Promise<number> {
  const r = await client.query<{ v: number | null }>('SELECT max(version) AS v FROM schema_migrations');
  return r.rows[0]?.v ?? 0;
}

/**
 * Brings the database to the latest version in `migrations`, under the migration lock.
 * SCHEMA_TOO_NEW if it is ahead. `client` is a dedicated connection (not in a transaction).
 */
export async function migratePostgres(
  client: pg.PoolClient,
  migrations: readonly Migration[],
  clock: () => number,
): Promise<MigrationResult> {
  checkList(migrations);
  await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
  try {
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version INTEGER PRIMARY KEY,
      name TEXT NOT NULL,
      applied_at BIGINT NOT NULL
    )`);
    const latest = migrations.length;
    const from = await currentVersion(client);
    if (from > latest) {
      throw new ServerError(
        'SCHEMA_TOO_NEW',
        `the database is at schema version ${from}, newer than this server's ${latest}; run a newer server`,
      );
    }
    const applied: number[] = [];
    for (const m of migrations) {
      if (m.version <= from) continue;
      await client.query('BEGIN');
      try {
        await client.query(m.sql);
        await client.query('INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)', [
          m.version,
          m.name,
          clock(),
        ]);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw err;
      }
      applied.push(m.version);
    }
    return { from, to: await currentVersion(client), applied };
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]).catch(() => undefined);
  }
}
