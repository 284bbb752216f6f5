/**
 * The embedded database's migrations, oldest first. Append only: never edit a released one.
 *
 * Columns named in comments as "sealed" hold FieldSealer output bound to (table, column,
 * row id); everything else is routing metadata the server queries on (ids, counters,
 * timestamps, user and role names).
 */
import type { Migration } from './migrations.js';

export const SQLITE_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'users, enrolment codes, devices, prekeys, mailbox',
    sql: `
CREATE TABLE users (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  identity_key BLOB,                        -- sealed (row id: users.id); NULL until first enrolment
  next_device_id INTEGER NOT NULL DEFAULT 1, -- device ids are never reused: peers' sessions name them
  created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE user_roles (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role TEXT NOT NULL,
  PRIMARY KEY (user_id, role)
) STRICT, WITHOUT ROWID;

-- Only an HMAC of the code is stored; redeeming deletes the row (single use).
CREATE TABLE enrolment_codes (
  code_hash BLOB PRIMARY KEY,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  expires_at INTEGER NOT NULL,
  created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX enrolment_codes_user ON enrolment_codes(user_id);

CREATE TABLE devices (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  device_id INTEGER NOT NULL,
  registration_id INTEGER NOT NULL,
  name BLOB NOT NULL,                       -- sealed (row id: <user>/<device>)
  signed_prekey_id INTEGER NOT NULL,
  signed_prekey BLOB NOT NULL,              -- sealed
  signed_prekey_signature BLOB NOT NULL,    -- sealed
  kyber_prekey_id INTEGER NOT NULL,
  kyber_prekey BLOB NOT NULL,               -- sealed
  kyber_prekey_signature BLOB NOT NULL,     -- sealed
  queued_count INTEGER NOT NULL DEFAULT 0,  -- kept in step with envelopes, so limits cost O(1)
  queued_bytes INTEGER NOT NULL DEFAULT 0,
  created_at INTEGER NOT NULL,
  PRIMARY KEY (user_id, device_id)
) STRICT;

CREATE TABLE one_time_prekeys (
  user_id TEXT NOT NULL,
  device_id INTEGER NOT NULL,
  prekey_id INTEGER NOT NULL,
  public_key BLOB NOT NULL,                 -- sealed (row id: <user>/<device>/<prekey id>)
  PRIMARY KEY (user_id, device_id, prekey_id),
  FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
) STRICT, WITHOUT ROWID;

-- AUTOINCREMENT: seq never goes backwards, even after the newest rows are deleted, so a
-- device's afterSeq cursor can never skip a later envelope.
CREATE TABLE envelopes (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  recipient_user_id TEXT NOT NULL,
  recipient_device_id INTEGER NOT NULL,
  sender_user_id TEXT NOT NULL,
  sender_device_id INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  size INTEGER NOT NULL,                    -- plaintext body length, for the byte limit
  body BLOB NOT NULL,                       -- sealed (row id: envelopes.id)
  FOREIGN KEY (recipient_user_id, recipient_device_id)
    REFERENCES devices(user_id, device_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX envelopes_recipient ON envelopes(recipient_user_id, recipient_device_id, seq);
CREATE INDEX envelopes_created ON envelopes(created_at);
`,
  },
  {
    version: 2,
    name: 'device authentication keys',
    sql: `
-- The device's own Curve25519 key for signing authentication challenges (0x05-typed, 33
-- bytes), sealed (row id: <user>/<device>). NULL for a device registered without one, which
-- therefore cannot authenticate.
ALTER TABLE devices ADD COLUMN auth_key BLOB;
`,
  },
  {
    version: 3,
    name: 'roles, grants, org units, channels, audit log',
    sql: `
-- Custom roles only: the built-in ones are code (@qalqon/wire BUILTIN_ROLES).
CREATE TABLE roles (
  name TEXT PRIMARY KEY,
  permissions TEXT NOT NULL,                -- JSON array, sorted and distinct
  created_at INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE TABLE org_units (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  parent_id TEXT REFERENCES org_units(id),
  created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX org_units_parent ON org_units(parent_id);

CREATE TABLE user_org_units (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  unit_id TEXT NOT NULL REFERENCES org_units(id),
  PRIMARY KEY (user_id, unit_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX user_org_units_unit ON user_org_units(unit_id, user_id);

CREATE TABLE channels (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  unit_id TEXT REFERENCES org_units(id),
  created_by TEXT NOT NULL,                 -- not a reference: the creator may be removed later
  seq INTEGER NOT NULL,                     -- the seq of the last log entry
  created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX channels_unit ON channels(unit_id);

CREATE TABLE channel_members (
  channel_id TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role TEXT NOT NULL CHECK (role IN ('member', 'manager')),
  added_seq INTEGER NOT NULL,
  PRIMARY KEY (channel_id, user_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX channel_members_user ON channel_members(user_id, channel_id);

-- The signed membership log, stored as received.
CREATE TABLE channel_log (
  channel_id TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
  seq INTEGER NOT NULL,
  change BLOB NOT NULL,                     -- sealed (row id: <channel>/<seq>)
  signature BLOB NOT NULL,                  -- sealed (row id: <channel>/<seq>)
  PRIMARY KEY (channel_id, seq)
) STRICT, WITHOUT ROWID;

-- Unit and channel grants; global grants are user_roles.
CREATE TABLE grants (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  role TEXT NOT NULL,
  scope_kind TEXT NOT NULL CHECK (scope_kind IN ('unit', 'channel')),
  scope_id TEXT NOT NULL,
  PRIMARY KEY (user_id, role, scope_kind, scope_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX grants_scope ON grants(scope_kind, scope_id);
CREATE INDEX grants_role ON grants(role);
CREATE INDEX user_roles_role ON user_roles(role);

-- The audit hash chain (audit/chain.ts): seq, time and hash in the clear, the record sealed.
CREATE TABLE audit_log (
  seq INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  hash TEXT NOT NULL,                       -- hex SHA-256 of the canonical record bytes
  record BLOB NOT NULL                      -- sealed (auditRecordRef())
) STRICT;
CREATE INDEX audit_log_at ON audit_log(at);

-- The last record's seq and hash, signed with the audit key after every append.
CREATE TABLE audit_head (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  seq INTEGER NOT NULL,
  hash TEXT NOT NULL,
  signature BLOB NOT NULL
) STRICT;
`,
  },
  {
    version: 4,
    name: 'files',
    sql: `
-- End-to-end encrypted files (files/): the client's ciphertext, encrypted again at rest in
-- chunks under the file's own data key, which the KMS wraps under the context 'file:<id>'.
-- size and chunk_size are bound into every chunk's AAD and every chunk below received must
-- be in the file's blob, so editing these columns makes the file fail to open rather than read wrongly.
CREATE TABLE files (
  id TEXT PRIMARY KEY,
  owner_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  size INTEGER NOT NULL,
  chunk_size INTEGER NOT NULL,
  received INTEGER NOT NULL DEFAULT 0,      -- complete when received = size
  recipients BLOB NOT NULL,                 -- sealed (row id: files.id)
  key_id TEXT NOT NULL,                     -- the KEK version that wrapped the data key
  wrapped_key BLOB NOT NULL,                -- wrapped by the KMS (opaque, authenticated)
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL
) STRICT;
CREATE INDEX files_owner ON files(owner_id);
CREATE INDEX files_incomplete ON files(updated_at) WHERE received < size;
-- The chunks themselves are not in the database: each file's sealed chunks are one blob
-- file in the data directory's files/ (storage/file-blobs.ts), written and synced before
-- received is committed.
`,
  },
];
