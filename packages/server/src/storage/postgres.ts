/**
 * The PostgreSQL storage backend, for several stateless server nodes sharing one database.
 * It keeps every rule of `Storage` (types.ts) exactly as the embedded backend does and
 * passes the same conformance suite.
 *
 * At rest: PostgreSQL is not encrypted as a whole, so every value the server does not route
 * on is sealed by the same FieldSealer, with the same (table, column, row id) AAD, through
 * the same functions (sealed-rows.ts) as on the embedded backend; enrolment codes are
 * stored as the same keyed hash. The database holds routing metadata, sealed values and
 * KMS-wrapped data keys (postgres-schema.ts), never plaintext content or an unwrapped key.
 *
 * Data keys: the nodes share them, so they live in the database's `data_keys` table, each
 * wrapped by the KMS under the context `dek:<name>` (as in the embedded backend's key file).
 * That is safe because a wrapped key is useless without the KMS: every node unwraps them at
 * start with its own access to the KMS, and a copy of the database (dump, replica, disk)
 * opens nothing. The KMS binds each wrapped key to its name, so rows cannot be swapped.
 * Keeping them beside the data also means a backup carries the keys it needs (still
 * wrapped), and a KEK rotation re-wraps them in one transaction (rewrapPostgresDataKeys).
 * One of them, AUDIT_SIGNING_DEK, is not an AES key but the seed of the audit log's
 * Ed25519 signing key (audit/chain.ts): every node signs the head with the same key.
 *
 * Concurrency (every node, every connection), READ COMMITTED plus explicit row locks:
 * - one user's writes (enrolment, linking, codes, roles) lock the user's row first;
 * - a one-time prekey is taken by one statement, `DELETE ... WHERE key = (SELECT ... ORDER
 *   BY prekey_id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING`, so two fetches can never both
 *   take it: the second skips the row the first holds and takes the next one;
 * - an enqueue locks its recipients' device rows (one statement, in key order, so fan-outs
 *   cannot deadlock each other) before it checks the limits and draws `seq` values, and
 *   holds them to commit: counters and limits are exact, and one device's envelopes commit
 *   in `seq` order, so an `afterSeq` cursor never skips a late commit;
 * - acks and purges lock the device rows before the envelope rows, in the same order;
 * - enqueues and acks are group-committed (see MailJob): one transaction per group of
 *   requests, which first locks every device row the whole group touches, in one statement
 *   in key order, so groups of different nodes cannot deadlock either;
 * - a channel's changes are appended under its row's lock (FOR UPDATE): of several nodes
 *   appending the same seq, one inserts it and the others then read its seq and get
 *   CHANNEL_CONFLICT;
 * - audit appends run one at a time across nodes under a transaction-scoped advisory lock
 *   (AUDIT_LOCK_KEY), so each chains after the previous one and re-signs the head;
 * - a write naming a role, unit, channel or user holds that row FOR KEY SHARE, and
 *   deleteRole / removeOrgUnit / removeChannel take it FOR UPDATE before checking what
 *   still refers to it: either the write commits first and is seen, or it finds the row gone;
 * - a deadlock or serialization failure PostgreSQL reports anyway is retried, the whole
 *   transaction again (nothing outside the database changed).
 * A method resolves only after its COMMIT returned with `synchronous_commit = on` (set on
 * every connection): an acknowledged write is on the database's stable storage.
 *
 * TLS: `ssl` is passed to node-postgres unchanged (`true`: TLS with certificate
 * verification against the system CAs; or tls.ConnectionOptions, e.g. `{ ca }`). TLS may
 * instead be set in the URL (`sslmode=verify-full&sslrootcert=...`), but not both (refused
 * as INVALID_ARGUMENT, because node-postgres would silently let the URL win). Say
 * `verify-full`: node-postgres 8 treats `require` as `verify-full` but warns that v9 will
 * give it libpq's weaker "encrypt without verifying" meaning. A server that does not offer
 * TLS when it is required, or whose certificate does not verify, fails with
 * DATABASE_UNAVAILABLE before any query is sent.
 */
import type { ConnectionOptions } from 'node:tls';
import { AES256_KEY_LEN, randomBytes } from '@qalqon/crypto';
import pg from 'pg';
import {
  AUDIT_SIGNING_DEK,
  auditPredecessor,
  auditPublicKey,
  chainAuditRecord,
  checkAuditEntry,
  signAuditHead,
} from '../audit/chain.js';
import { ServerError } from '../errors.js';
import type { Kms, WrappedKey } from '../kms/kms.js';
import { abytes, aint, aobject, astring } from '../validate.js';
import { FIELD_DEK, FIELD_DEK_GENERATION, LOOKUP_DEK } from './embedded.js';
import { FieldSealer } from './field-sealer.js';
import {
  allRoles,
  builtinRole,
  channelNotFound,
  checkAuditKey,
  checkAuditListOptions,
  checkBundleOptions,
  checkChannelEffect,
  checkChannelLogEntry,
  checkChannelLogOptions,
  checkDeviceId,
  checkDeviceRoom,
  checkEnrolment,
  checkEnvelopeIds,
  checkEnvelopes,
  checkFetchOptions,
  checkFileChunks,
  checkFileFits,
  checkFileLimits,
  checkFileRange,
  checkGrant,
  checkHexId,
  checkKekVersionId,
  checkLimits,
  checkListChannelsFilter,
  checkListFileKeys,
  checkListGrantsFilter,
  checkNewChannel,
  checkNewDevice,
  checkNewEnrolmentCode,
  checkNewFile,
  checkNewOrgUnit,
  checkNewRole,
  checkNextChunks,
  checkOneTimePrekeys,
  checkPrekeyRoom,
  checkRoleName,
  checkRoles,
  checkSameIdentity,
  checkSignedPrekey,
  checkUserId,
  checkUserName,
  checkWrappedFileKey,
  compareGrants,
  deviceNotFound,
  enrolmentCodeInvalid,
  fileNotFound,
  fitsQueueLimits,
  grantFromColumns,
  mailboxFull,
  orgUnitNotFound,
  roleNotFound,
  scopeColumns,
  userNotFound,
} from './input.js';
import { migratePostgres, POSTGRES_MIGRATIONS } from './postgres-schema.js';
import {
  auditRecordFromBytes,
  type ChannelLogRow,
  type ChannelRow,
  customRole,
  DEVICE_INSERT_COLUMNS,
  type DeviceRowFields,
  deviceInsertValues,
  deviceRowId,
  type EnvelopeRow,
  enrolmentCodeHash,
  envelopeBodyRef,
  type FileRow,
  identityKeyRef,
  type MemberRow,
  newId,
  type OrgUnitRow,
  oneTimePrekeyRef,
  openAuditRecord,
  openChannelLogEntry,
  openDevice,
  openEnvelope,
  openFileRow,
  openIdentityKey,
  openUser,
  prekeyBundle,
  type RecipientTally,
  sealAuditRecord,
  sealChannelLogEntry,
  sealFileRecipients,
  sealSignedPrekey,
  tallyRecipients,
  toChannel,
  toMembership,
  toOrgUnit,
  verifySealedAudit,
} from './sealed-rows.js';
import {
  type AuditEntry,
  type AuditRecord,
  type AuditVerification,
  type Channel,
  type ChannelEffect,
  type ChannelLogEntry,
  type ChannelMembership,
  DEFAULT_LIMITS,
  type Device,
  type Envelope,
  type EnvelopeReceipt,
  type FileChunk,
  type FileLimits,
  type Grant,
  type MailboxStats,
  type NewDevice,
  type NewEnvelope,
  type NewFile,
  type NewFileChunk,
  type OneTimePrekey,
  type OrgUnit,
  type PrekeyBundle,
  type Role,
  type SignedPrekey,
  type Storage,
  type StorageLimits,
  type StoredFile,
  type StoredWrappedKey,
  type User,
} from './types.js';

export interface PostgresStorageOptions {
  /** `postgres://user[:password]@host[:port]/database[?...]`. Never logged or echoed in errors. */
  readonly url: string;
  /** Unwraps (and on first start, wraps) the data keys stored in the database. */
  readonly kms: Kms;
  /** Require TLS: `true`, or Node TLS options (e.g. `{ ca, servername }`). See the header. */
  readonly ssl?: boolean | ConnectionOptions;
  readonly limits?: Partial<StorageLimits>;
  /** Milliseconds since the epoch; injectable for tests. */
  readonly clock?: () => number;
  /** Connections this node keeps at most (default 10). */
  readonly maxConnections?: number;
}

/** The wrap context of a data key: the same as the embedded backend's key file (dek-registry.ts). */
function dekContext(name: string): string {
  return `dek:${name}`;
}

const TX_ATTEMPTS = 5;
/** serialization_failure, deadlock_detected: the transaction was rolled back and may simply run again. */
const RETRYABLE = new Set(['40001', '40P01']);
/** Network errors of a connection that could not be made or was lost. */
const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EPIPE',
]);

/**
 * Turns a node-postgres or network error into a coded ServerError. Messages carry the
 * SQLSTATE and constraint, never the error's detail (which may quote row values) nor the URL.
 */
export function postgresError(err: unknown): unknown {
  if (err instanceof ServerError) return err;
  // A host with several addresses fails with one error per address; the first says why.
  if (err instanceof AggregateError && err.errors[0] instanceof Error) return postgresError(err.errors[0]);
  if (!(err instanceof Error)) return new ServerError('DATABASE_FAILED', 'the database call failed');
  const e = err as Error & { code?: unknown; constraint?: unknown };
  const code = typeof e.code === 'string' ? e.code : '';
  if (/does not support SSL/i.test(e.message)) {
    return new ServerError(
      'DATABASE_UNAVAILABLE',
      'the database server does not offer TLS, which the configuration requires (ssl / sslmode)',
    );
  }
  if (/^(ERR_TLS_|ERR_SSL_|DEPTH_ZERO|SELF_SIGNED|UNABLE_TO_|CERT_)/.test(code)) {
    return new ServerError('DATABASE_UNAVAILABLE', `TLS to the database failed (${code})`);
  }
  if (NETWORK_CODES.has(code)) {
    return new ServerError('DATABASE_UNAVAILABLE', `cannot reach the database (${code})`);
  }
  if (/^(08|28|53|57P|3D000)/.test(code)) {
    // Connection, authorization, resources, shutdown, unknown database: the server's own
    // text names the user or database, never a row value.
    return new ServerError(
      'DATABASE_UNAVAILABLE',
      `the database refused the connection (SQLSTATE ${code}): ${e.message}`,
    );
  }
  if (
    code === '' &&
    /Connection terminated|connection timeout|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(
      e.message,
    )
  ) {
    return new ServerError('DATABASE_UNAVAILABLE', `the database connection was lost: ${e.message}`);
  }
  const constraint = typeof e.constraint === 'string' ? `, constraint ${e.constraint}` : '';
  return new ServerError(
    'DATABASE_FAILED',
    `a database statement failed (SQLSTATE ${code || 'unknown'}${constraint})`,
  );
}

function sqlState(err: unknown): string | undefined {
  const c = err instanceof Error ? (err as { code?: unknown }).code : undefined;
  return typeof c === 'string' ? c : undefined;
}

/** BIGINT (and count(*)) as a JS number: every value stored fits 2^53 (ids, milliseconds, bytes). */
function parseInt8(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new ServerError('DATABASE_FAILED', 'a BIGINT exceeds 2^53');
  return n;
}

const TYPES = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === pg.types.builtins.INT8 && format !== 'binary'
      ? parseInt8
      : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

const URL_TLS_PARAMS = ['ssl', 'sslmode', 'sslcert', 'sslkey', 'sslrootcert', 'sslnegotiation'];

/** Checks the URL's shape (without ever echoing it: it may hold a password) and builds the pool. */
export function createPostgresPool(options: {
  readonly url: string;
  readonly ssl?: boolean | ConnectionOptions;
  readonly maxConnections?: number;
}): pg.Pool {
  const url = astring('options.url', options.url, 1, 4096);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ServerError('INVALID_ARGUMENT', '"options.url" is not a URL');
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new ServerError('INVALID_ARGUMENT', '"options.url" expected a postgres:// or postgresql:// URL');
  }
  const ssl = options.ssl;
  if (ssl !== undefined) {
    if (typeof ssl !== 'boolean' && (typeof ssl !== 'object' || ssl === null)) {
      throw new ServerError('INVALID_ARGUMENT', '"options.ssl" expected boolean or TLS options object');
    }
    // node-postgres lets the URL's TLS parameters override the option; refuse the ambiguity.
    if (URL_TLS_PARAMS.some((p) => parsed.searchParams.has(p))) {
      throw new ServerError(
        'INVALID_ARGUMENT',
        '"options.ssl" is set and the URL has TLS parameters too; set TLS in one place only',
      );
    }
  }
  const max =
    options.maxConnections === undefined
      ? 10
      : aint('options.maxConnections', options.maxConnections, 1, 1000);
  const pool = new pg.Pool({
    connectionString: url,
    ...(ssl === undefined ? {} : { ssl }),
    max,
    types: TYPES,
    application_name: 'qalqon-server',
    connectionTimeoutMillis: 15_000,
    // Durability must not depend on the server's default: a COMMIT returns once it is
    // flushed. Set in the startup packet, so it holds before the first query on a connection.
    options: '-c synchronous_commit=on',
  });
  // An idle connection that breaks (server restart, network) is dropped by the pool; without
  // a listener the 'error' event would end the process.
  pool.on('error', () => undefined);
  return pool;
}

async function connect(pool: pg.Pool): Promise<pg.PoolClient> {
  try {
    return await pool.connect();
  } catch (err) {
    throw postgresError(err);
  }
}

/**
 * Unwraps this database's data keys, creating the missing ones (random, wrapped, stored
 * before they are used) only while the database holds no users: a database with data and
 * no key would otherwise get a fresh key that opens nothing (DEK_NOT_FOUND instead). The
 * `mintable` names protect nothing stored before them (the audit signing key: a database
 * from before the audit log gains it on its first start) and are created whenever missing.
 * Two nodes creating at once both insert with ON CONFLICT DO NOTHING and use the row that won.
 */
async function loadDataKeys(
  client: pg.PoolClient,
  kms: Kms,
  names: readonly string[],
  clock: () => number,
  mintable: readonly string[] = [],
): Promise<Map<string, Uint8Array>> {
  const read = async () => {
    const r = await client.query<{ name: string; key_id: string; ciphertext: Buffer }>(
      'SELECT name, key_id, ciphertext FROM data_keys WHERE name = ANY($1::text[])',
      [names],
    );
    return new Map(r.rows.map((row) => [row.name, row]));
  };
  let rows = await read();
  const missing = names.filter((n) => !rows.has(n));
  if (missing.length > 0) {
    const guarded = missing.filter((n) => !mintable.includes(n));
    const used = guarded.length > 0 ? await client.query('SELECT 1 FROM users LIMIT 1') : undefined;
    if (used !== undefined && used.rowCount !== 0) {
      throw new ServerError(
        'DEK_NOT_FOUND',
        `the database holds data but no data key named ${guarded[0]}; restore the data_keys table`,
      );
    }
    for (const name of missing) {
      const dek = randomBytes(AES256_KEY_LEN);
      let wrapped: WrappedKey;
      try {
        wrapped = await kms.wrap(dek, dekContext(name));
      } finally {
        dek.fill(0);
      }
      await client.query(
        `INSERT INTO data_keys (name, key_id, ciphertext, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (name) DO NOTHING`,
        [name, wrapped.keyId, wrapped.ciphertext, clock()],
      );
    }
    rows = await read();
  }
  const out = new Map<string, Uint8Array>();
  try {
    for (const name of names) {
      const row = rows.get(name);
      if (!row) throw new ServerError('DEK_NOT_FOUND', `no data key named ${name}`);
      out.set(
        name,
        await kms.unwrap({
          keyId: row.key_id,
          context: dekContext(name),
          ciphertext: new Uint8Array(row.ciphertext),
        }),
      );
    }
  } catch (err) {
    for (const k of out.values()) k.fill(0);
    throw err;
  }
  return out;
}

/**
 * Opens the PostgreSQL storage: connects, applies pending migrations under the migration
 * lock, unwraps (or on a fresh database creates) the data keys with the KMS, and returns
 * the store. DATABASE_UNAVAILABLE when the database cannot be reached (or TLS is required
 * and not offered), SCHEMA_TOO_NEW, DEK_NOT_FOUND, and the KMS's codes.
 */
export async function openPostgresStorage(options: PostgresStorageOptions): Promise<PostgresStorage> {
  const o = aobject('options', options) as unknown as PostgresStorageOptions;
  if (typeof o.kms?.unwrap !== 'function') {
    throw new ServerError('INVALID_ARGUMENT', '"options.kms" expected Kms');
  }
  const limits = checkLimits(DEFAULT_LIMITS, o.limits);
  const clock = o.clock ?? Date.now;
  const pool = createPostgresPool(o);
  try {
    const client = await connect(pool);
    let keys: Map<string, Uint8Array>;
    try {
      await migratePostgres(client, POSTGRES_MIGRATIONS, clock);
      keys = await loadDataKeys(client, o.kms, [FIELD_DEK, LOOKUP_DEK, AUDIT_SIGNING_DEK], clock, [
        AUDIT_SIGNING_DEK,
      ]);
    } finally {
      client.release();
    }
    const fieldKey = keys.get(FIELD_DEK)!;
    const lookupKey = keys.get(LOOKUP_DEK)!;
    const auditSeed = keys.get(AUDIT_SIGNING_DEK)!;
    try {
      const sealer = new FieldSealer(new Map([[FIELD_DEK_GENERATION, fieldKey]]), FIELD_DEK_GENERATION);
      return new PostgresStorage(pool, sealer, lookupKey, limits, clock, auditSeed);
    } finally {
      // The storage and sealer keep their own copies; drop ours.
      fieldKey.fill(0);
      lookupKey.fill(0);
      auditSeed.fill(0);
    }
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw postgresError(err);
  }
}

/**
 * KEK rotation for a PostgreSQL deployment: after `kms.rotate()`, re-wraps every data key
 * not yet under the KMS's active KEK version, in one transaction (a crash leaves the old,
 * still unwrappable rows). The data stays encrypted under the same DEKs. Returns how many
 * were re-wrapped. Other nodes need not restart: their DEKs are unchanged.
 */
export async function rewrapPostgresDataKeys(options: {
  readonly url: string;
  readonly kms: Kms;
  readonly ssl?: boolean | ConnectionOptions;
}): Promise<number> {
  return withPostgresConnection(options, async (client) => {
    const { activeKeyId } = await options.kms.describe();
    try {
      await client.query('BEGIN');
      const rows = await client.query<{ name: string; key_id: string; ciphertext: Buffer }>(
        'SELECT name, key_id, ciphertext FROM data_keys ORDER BY name FOR UPDATE',
      );
      let count = 0;
      for (const row of rows.rows) {
        if (row.key_id === activeKeyId) continue;
        const dek = await options.kms.unwrap({
          keyId: row.key_id,
          context: dekContext(row.name),
          ciphertext: new Uint8Array(row.ciphertext),
        });
        try {
          const w = await options.kms.wrap(dek, dekContext(row.name));
          await client.query('UPDATE data_keys SET key_id = $1, ciphertext = $2 WHERE name = $3', [
            w.keyId,
            w.ciphertext,
            row.name,
          ]);
        } finally {
          dek.fill(0);
        }
        count++;
      }
      await client.query('COMMIT');
      return count;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  });
}

/**
 * Unwraps a data key that the storage itself does not use and that protects nothing stored
 * (the session MAC key of service/sessions.ts), creating it when missing: nodes starting
 * at once insert with ON CONFLICT DO NOTHING and all use the row that won. It lives in
 * `data_keys` beside the others, so KEK rotation re-wraps it too. Call after
 * openPostgresStorage (which creates the table).
 */
export async function loadPostgresExtraKey(options: {
  readonly url: string;
  readonly kms: Kms;
  readonly ssl?: boolean | ConnectionOptions;
  readonly clock?: () => number;
  readonly name: string;
}): Promise<Uint8Array> {
  return withPostgresConnection(options, async (client) => {
    const keys = await loadDataKeys(client, options.kms, [options.name], options.clock ?? Date.now, [
      options.name,
    ]);
    return keys.get(options.name)!;
  });
}

/** The data keys in `data_keys`: name and the KEK version wrapping each (for `kms status`). */
export async function listPostgresDataKeys(options: {
  readonly url: string;
  readonly ssl?: boolean | ConnectionOptions;
}): Promise<{ name: string; keyId: string }[]> {
  return withPostgresConnection(options, async (client) => {
    const r = await client.query<{ name: string; key_id: string }>(
      'SELECT name, key_id FROM data_keys ORDER BY name',
    );
    return r.rows.map((row) => ({ name: row.name, keyId: row.key_id }));
  });
}

/**
 * Runs `fn` on the one connection of a short-lived pool, for what runs outside an open
 * storage (KEK rotation, loading or listing data keys, init's check for an unused
 * database): failures come out as postgresError codes them, and the pool always ends.
 */
export async function withPostgresConnection<T>(
  options: { readonly url: string; readonly ssl?: boolean | ConnectionOptions },
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const pool = createPostgresPool({
    url: options.url,
    ...(options.ssl === undefined ? {} : { ssl: options.ssl }),
    maxConnections: 1,
  });
  try {
    const client = await connect(pool);
    try {
      return await fn(client);
    } finally {
      client.release();
    }
  } catch (err) {
    throw postgresError(err);
  } finally {
    await pool.end().catch(() => undefined);
  }
}

type Client = pg.PoolClient;

/**
 * Group commit of the mailbox's hot writes (enqueue, ackEnvelopes): every request made in one
 * event-loop turn (and every one queued while MAIL_GROUPS_IN_FLIGHT groups were running) runs
 * in ONE transaction on one pooled connection, so a busy node pays one COMMIT (one WAL flush)
 * and a few round trips per group instead of per request. Each request still succeeds or
 * fails alone: a refused one (DEVICE_NOT_FOUND, MAILBOX_FULL) changes nothing and rejects with
 * its own error while the others commit, and every promise settles only after the group's
 * COMMIT returned. A group that fails as a whole (deadlock, serialization failure) runs again
 * from the start; one that cannot commit rejects every request in it with the coded error.
 */
type MailJob = EnqueueJob | AckJob;

interface EnqueueJob {
  readonly kind: 'enqueue';
  /** The clock when the call was made: created_at, and the expiry cutoff for its purges. */
  readonly now: number;
  readonly envelopes: readonly SealedEnvelope[];
  readonly tallies: readonly RecipientTally[];
  /** Sealed body bytes, for MAIL_GROUP_MAX_BYTES. */
  readonly bytes: number;
  readonly resolve: (value: EnvelopeReceipt[]) => void;
  readonly reject: (error: unknown) => void;
}

interface AckJob {
  readonly kind: 'ack';
  readonly userId: string;
  readonly deviceId: number;
  /** Distinct ids. */
  readonly ids: readonly string[];
  readonly resolve: (value: number) => void;
  readonly reject: (error: unknown) => void;
}

interface SealedEnvelope {
  readonly e: NewEnvelope;
  readonly id: string;
  /** The body sealed under envelopeBodyRef(id). */
  readonly body: Uint8Array;
}

type MailOutcome = { ok: true; value: unknown } | { ok: false; error: unknown };

/** A locked device row's counters, as the group's requests change them. */
interface Queued {
  queued_count: number;
  queued_bytes: number;
}

/** Requests per group at most. */
const MAIL_GROUP_MAX_REQUESTS = 256;
/** Envelopes (enqueued or acked) per group at most, unless one request has more. */
const MAIL_GROUP_MAX_ENVELOPES = 4096;
/** Sealed body bytes per group at most, unless one request has more. */
const MAIL_GROUP_MAX_BYTES = 16 * 1024 * 1024;
/**
 * Groups one node runs at once: while one commits the next can start, and requests that
 * arrive meanwhile wait in the queue for the next free slot, forming a larger group.
 */
const MAIL_GROUPS_IN_FLIGHT = 2;

interface UserRow {
  id: string;
  name: string;
  identity_key: Buffer | null;
  created_at: number;
  roles: string[];
}

interface DeviceRow extends DeviceRowFields {
  queued_count: number;
  queued_bytes: number;
}

const USER_COLUMNS = `u.id, u.name, u.identity_key, u.created_at,
  ARRAY(SELECT r.role FROM user_roles r WHERE r.user_id = u.id ORDER BY r.role) AS roles`;

const DEVICE_COLUMNS = `d.*, (SELECT count(*) FROM one_time_prekeys o
  WHERE o.user_id = d.user_id AND o.device_id = d.device_id) AS otpk_count`;

// --- RBAC, org units, channels, audit ----------------------------------------------------

/** The advisory-lock key audit appends run under ("qalq" "au"). Per database, held to commit. */
export const AUDIT_LOCK_KEY = 0x7161_6c71_6175;

function isBuiltinRole(name: string): boolean {
  return builtinRole(name) !== undefined;
}

function roleExists(name: string): ServerError {
  return new ServerError('ROLE_EXISTS', `a role named ${name} already exists`);
}

function channelExists(id: string, name: string): ServerError {
  return new ServerError('CHANNEL_EXISTS', `a channel with id ${id} or named ${name} already exists`);
}

interface RoleRow {
  name: string;
  permissions: string[];
  created_at: number;
}

const UNIT_COLUMNS = 'id, name, parent_id, created_at';

const CHANNEL_COLUMNS = `ch.id, ch.name, ch.unit_id, ch.created_by, ch.seq, ch.created_at,
  (SELECT count(*) FROM channel_members m WHERE m.channel_id = ch.id) AS member_count`;

export class PostgresStorage implements Storage {
  readonly #pool: pg.Pool;
  readonly #sealer: FieldSealer;
  readonly #lookupKey: Uint8Array;
  readonly #limits: StorageLimits;
  readonly #clock: () => number;
  /** The audit signing key's 32-byte Ed25519 seed (the AUDIT_SIGNING_DEK data key). */
  readonly #auditSeed: Uint8Array;
  #closed = false;
  /** Calls under way; close() lets them finish before it ends the pool and zeroes the keys. */
  readonly #inflight = new Set<Promise<unknown>>();
  /** Mailbox writes waiting for a group (see MailJob), in call order. */
  #mailQueue: MailJob[] = [];
  /** The end-of-turn callback that starts the next groups, while one is scheduled. */
  #mailTimer: NodeJS.Immediate | undefined;
  /** Groups running now (at most MAIL_GROUPS_IN_FLIGHT). */
  #mailGroups = 0;

  /**
   * Use openPostgresStorage. The storage owns `pool` and `sealer` from here; it copies
   * `lookupKey` and `auditSeed`.
   */
  constructor(
    pool: pg.Pool,
    sealer: FieldSealer,
    lookupKey: Uint8Array,
    limits: StorageLimits,
    clock: () => number,
    auditSeed: Uint8Array,
  ) {
    this.#pool = pool;
    this.#sealer = sealer;
    this.#lookupKey = Uint8Array.from(abytes('lookupKey', lookupKey, 32));
    this.#auditSeed = Uint8Array.from(checkAuditKey('auditSeed', auditSeed));
    this.#limits = limits;
    this.#clock = clock;
  }

  #open(): void {
    if (this.#closed) throw new ServerError('CLOSED', 'the storage was closed');
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#inflight.add(p);
    const done = () => this.#inflight.delete(p);
    p.then(done, done);
    return p;
  }

  /** One statement outside a transaction (reads). */
  async #query<R extends pg.QueryResultRow>(sql: string, params: unknown[]): Promise<pg.QueryResult<R>> {
    this.#open();
    return this.#track(
      this.#pool.query<R>(sql, params).catch((err: unknown) => {
        throw postgresError(err);
      }),
    );
  }

  /**
   * Runs `fn` in a transaction (READ COMMITTED; the methods take the row locks they need).
   * Resolves only after COMMIT returned. A deadlock or serialization failure runs it again.
   */
  #tx<T>(fn: (c: Client) => Promise<T>): Promise<T> {
    this.#open();
    return this.#track(this.#runTx(fn));
  }

  async #runTx<T>(fn: (c: Client) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const c = await connect(this.#pool);
      let broken = false;
      try {
        await c.query('BEGIN');
        const value = await fn(c);
        await c.query('COMMIT');
        return value;
      } catch (err) {
        await c.query('ROLLBACK').catch(() => {
          broken = true;
        });
        const state = sqlState(err);
        if (attempt < TX_ATTEMPTS && state !== undefined && RETRYABLE.has(state)) continue;
        throw postgresError(err);
      } finally {
        c.release(broken);
      }
    }
  }

  // --- users ---------------------------------------------------------------------------

  #toUser(row: UserRow): User {
    return openUser(this.#sealer, row, row.roles);
  }

  /** The user's row, locked FOR UPDATE until the transaction ends: one user's writes run one at a time. */
  async #lockUser(
    c: Client,
    userId: string,
  ): Promise<{ identity_key: Buffer | null; next_device_id: number }> {
    const r = await c.query<{ identity_key: Buffer | null; next_device_id: number }>(
      'SELECT identity_key, next_device_id FROM users WHERE id = $1 FOR UPDATE',
      [userId],
    );
    const row = r.rows[0];
    if (!row) throw userNotFound(userId);
    return row;
  }

  async createUser(input: { readonly name: string; readonly roles?: readonly string[] }): Promise<User> {
    const o = aobject('input', input);
    const name = checkUserName('input.name', o.name);
    const roles = checkRoles('input.roles', o.roles ?? []);
    const id = newId();
    const now = this.#clock();
    return this.#tx(async (c) => {
      await this.#lockRoles(c, roles);
      const r = await c.query(
        'INSERT INTO users (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING',
        [id, name, now],
      );
      if (r.rowCount === 0) throw new ServerError('USER_EXISTS', `a user named ${name} already exists`);
      if (roles.length > 0) {
        await c.query('INSERT INTO user_roles (user_id, role) SELECT $1, unnest($2::text[])', [id, roles]);
      }
      return { id, name, roles, identityKey: undefined, createdAt: now };
    });
  }

  async getUser(userId: string): Promise<User | undefined> {
    checkUserId('userId', userId);
    const r = await this.#query<UserRow>(`SELECT ${USER_COLUMNS} FROM users u WHERE u.id = $1`, [userId]);
    return r.rows[0] && this.#toUser(r.rows[0]);
  }

  async findUserByName(name: string): Promise<User | undefined> {
    checkUserName('name', name);
    const r = await this.#query<UserRow>(`SELECT ${USER_COLUMNS} FROM users u WHERE u.name = $1`, [name]);
    return r.rows[0] && this.#toUser(r.rows[0]);
  }

  async listUsers(): Promise<User[]> {
    const r = await this.#query<UserRow>(`SELECT ${USER_COLUMNS} FROM users u ORDER BY u.name`, []);
    return r.rows.map((row) => this.#toUser(row));
  }

  async removeUser(userId: string): Promise<void> {
    checkUserId('userId', userId);
    await this.#tx(async (c) => {
      const r = await c.query('DELETE FROM users WHERE id = $1', [userId]);
      if (r.rowCount === 0) throw userNotFound(userId);
    });
  }

  async grantRole(userId: string, role: string): Promise<void> {
    checkUserId('userId', userId);
    checkUserName('role', role);
    await this.#tx(async (c) => {
      await this.#lockUser(c, userId);
      await this.#lockRoles(c, [role]);
      await c.query('INSERT INTO user_roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING', [
        userId,
        role,
      ]);
    });
  }

  async revokeRole(userId: string, role: string): Promise<void> {
    checkUserId('userId', userId);
    checkUserName('role', role);
    await this.#tx(async (c) => {
      await this.#lockUser(c, userId);
      await c.query('DELETE FROM user_roles WHERE user_id = $1 AND role = $2', [userId, role]);
    });
  }

  // --- enrolment -----------------------------------------------------------------------

  async createEnrolmentCode(input: {
    readonly userId: string;
    readonly code: string;
    readonly expiresAt: number;
  }): Promise<void> {
    const now = this.#clock();
    const { userId, code, expiresAt } = checkNewEnrolmentCode(input, now);
    const hash = enrolmentCodeHash(this.#lookupKey, code);
    await this.#tx(async (c) => {
      await this.#lockUser(c, userId);
      // One live code per user: issuing a new one revokes any earlier unused code.
      await c.query('DELETE FROM enrolment_codes WHERE user_id = $1', [userId]);
      await c.query(
        'INSERT INTO enrolment_codes (code_hash, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4)',
        [hash, userId, expiresAt, now],
      );
    });
  }

  async enrolDevice(input: { readonly code: string; readonly device: NewDevice }): Promise<Device> {
    const { code, device } = checkEnrolment(input, this.#limits);
    const invalid = enrolmentCodeInvalid;
    const hash = enrolmentCodeHash(this.#lookupKey, code);
    const now = this.#clock();
    return this.#tx(async (c) => {
      const found = await c.query<{ user_id: string; expires_at: number }>(
        'SELECT user_id, expires_at FROM enrolment_codes WHERE code_hash = $1',
        [hash],
      );
      const row = found.rows[0];
      if (!row || row.expires_at <= now) throw invalid();
      // Lock order user, then code (as createEnrolmentCode); a user removed meanwhile took its code along.
      const user = await this.#lockUser(c, row.user_id).catch((err: unknown) => {
        throw err instanceof ServerError && err.code === 'USER_NOT_FOUND' ? invalid() : err;
      });
      // Redeem once: of two concurrent redemptions only one deletes the row.
      const del = await c.query('DELETE FROM enrolment_codes WHERE code_hash = $1', [hash]);
      if (del.rowCount === 0) throw invalid();
      // An enrolment starts a new identity: the user's old devices (and their queues) go.
      await c.query('DELETE FROM devices WHERE user_id = $1', [row.user_id]);
      await c.query('UPDATE users SET identity_key = $1 WHERE id = $2', [
        this.#sealer.seal(identityKeyRef(row.user_id), device.identityKey),
        row.user_id,
      ]);
      return this.#insertDevice(c, row.user_id, user.next_device_id, device, now);
    });
  }

  // --- devices -------------------------------------------------------------------------

  /** Inserts a device as `deviceId` (the locked user row's next id). Call with the user row locked. */
  async #insertDevice(
    c: Client,
    userId: string,
    deviceId: number,
    d: NewDevice,
    now: number,
  ): Promise<Device> {
    const n = await c.query<{ n: number }>('SELECT count(*) AS n FROM devices WHERE user_id = $1', [userId]);
    checkDeviceRoom(this.#limits, userId, n.rows[0]?.n ?? 0);
    await c.query('UPDATE users SET next_device_id = $1 WHERE id = $2', [deviceId + 1, userId]);
    await c.query(
      `INSERT INTO devices (${DEVICE_INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
      deviceInsertValues(this.#sealer, userId, deviceId, d, now),
    );
    await this.#insertPrekeys(c, userId, deviceId, d.oneTimePrekeys);
    return openDevice(this.#sealer, await this.#deviceRow(c, userId, deviceId));
  }

  async #insertPrekeys(
    c: Client,
    userId: string,
    deviceId: number,
    prekeys: readonly OneTimePrekey[],
  ): Promise<void> {
    if (prekeys.length === 0) return;
    await c.query(
      `INSERT INTO one_time_prekeys (user_id, device_id, prekey_id, public_key)
       SELECT $1, $2, * FROM unnest($3::int[], $4::bytea[])`,
      [
        userId,
        deviceId,
        prekeys.map((p) => p.id),
        prekeys.map((p) => this.#sealer.seal(oneTimePrekeyRef(userId, deviceId, p.id), p.publicKey)),
      ],
    );
  }

  async #deviceRow(c: Client | pg.Pool, userId: string, deviceId: number, lock = ''): Promise<DeviceRow> {
    const r = await c.query<DeviceRow>(
      `SELECT ${DEVICE_COLUMNS} FROM devices d WHERE d.user_id = $1 AND d.device_id = $2 ${lock}`,
      [userId, deviceId],
    );
    const row = r.rows[0];
    if (!row) throw deviceNotFound(userId, deviceId);
    return row;
  }

  async addDevice(userId: string, device: NewDevice): Promise<Device> {
    checkUserId('userId', userId);
    const d = checkNewDevice('device', device, this.#limits);
    const now = this.#clock();
    return this.#tx(async (c) => {
      const user = await this.#lockUser(c, userId);
      checkSameIdentity(userId, openIdentityKey(this.#sealer, userId, user.identity_key), d.identityKey);
      return this.#insertDevice(c, userId, user.next_device_id, d, now);
    });
  }

  async getDevice(userId: string, deviceId: number): Promise<Device | undefined> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const r = await this.#query<DeviceRow>(
      `SELECT ${DEVICE_COLUMNS} FROM devices d WHERE d.user_id = $1 AND d.device_id = $2`,
      [userId, deviceId],
    );
    return r.rows[0] && openDevice(this.#sealer, r.rows[0]);
  }

  async listDevices(userId: string): Promise<Device[]> {
    checkUserId('userId', userId);
    // One statement, one snapshot: the user check and the list agree.
    const r = await this.#query<DeviceRow & { user_exists: boolean }>(
      `SELECT u.id AS user_exists, d.* , (SELECT count(*) FROM one_time_prekeys o
         WHERE o.user_id = d.user_id AND o.device_id = d.device_id) AS otpk_count
       FROM users u LEFT JOIN devices d ON d.user_id = u.id WHERE u.id = $1 ORDER BY d.device_id`,
      [userId],
    );
    if (r.rows.length === 0) throw userNotFound(userId);
    return r.rows.filter((row) => row.device_id !== null).map((row) => openDevice(this.#sealer, row));
  }

  async removeDevice(userId: string, deviceId: number): Promise<void> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    await this.#tx(async (c) => {
      const r = await c.query('DELETE FROM devices WHERE user_id = $1 AND device_id = $2', [
        userId,
        deviceId,
      ]);
      if (r.rowCount === 0) throw deviceNotFound(userId, deviceId);
    });
  }

  // --- prekeys -------------------------------------------------------------------------

  async addOneTimePrekeys(
    userId: string,
    deviceId: number,
    prekeys: readonly OneTimePrekey[],
  ): Promise<number> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const list = checkOneTimePrekeys('prekeys', prekeys, 1, this.#limits.maxOneTimePrekeysPerDevice);
    return this.#tx(async (c) => {
      // The device row lock serialises uploads, so the count check below holds at commit.
      const row = await this.#deviceRow(c, userId, deviceId, 'FOR UPDATE OF d');
      const dup = await c.query<{ prekey_id: number }>(
        `SELECT prekey_id FROM one_time_prekeys WHERE user_id = $1 AND device_id = $2
           AND prekey_id = ANY($3::int[]) ORDER BY prekey_id LIMIT 1`,
        [userId, deviceId, list.map((p) => p.id)],
      );
      if (dup.rows[0]) {
        throw new ServerError(
          'PREKEY_EXISTS',
          `device ${deviceId} already has one-time prekey ${dup.rows[0].prekey_id}`,
        );
      }
      checkPrekeyRoom(this.#limits, deviceId, row.otpk_count, list.length);
      await this.#insertPrekeys(c, userId, deviceId, list);
      return row.otpk_count + list.length;
    });
  }

  async #setPrekey(
    userId: string,
    deviceId: number,
    p: SignedPrekey,
    kind: 'signed' | 'kyber',
  ): Promise<void> {
    const sealed = sealSignedPrekey(this.#sealer, userId, deviceId, kind, p);
    await this.#tx(async (c) => {
      const r = await c.query(
        `UPDATE devices SET ${kind}_prekey_id = $1, ${kind}_prekey = $2, ${kind}_prekey_signature = $3
           WHERE user_id = $4 AND device_id = $5`,
        [p.id, sealed.publicKey, sealed.signature, userId, deviceId],
      );
      if (r.rowCount === 0) throw deviceNotFound(userId, deviceId);
    });
  }

  async setSignedPrekey(userId: string, deviceId: number, prekey: SignedPrekey): Promise<void> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    await this.#setPrekey(userId, deviceId, checkSignedPrekey('prekey', prekey, 'ec'), 'signed');
  }

  async setKyberPrekey(userId: string, deviceId: number, prekey: SignedPrekey): Promise<void> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    await this.#setPrekey(userId, deviceId, checkSignedPrekey('prekey', prekey, 'kyber'), 'kyber');
  }

  async fetchPrekeyBundles(
    userId: string,
    options: { readonly deviceId?: number } = {},
  ): Promise<PrekeyBundle[]> {
    checkUserId('userId', userId);
    const only = checkBundleOptions(options).deviceId;
    return this.#tx(async (c) => {
      const u = await c.query<{ identity_key: Buffer | null }>(
        'SELECT identity_key FROM users WHERE id = $1',
        [userId],
      );
      const user = u.rows[0];
      if (!user) throw userNotFound(userId);
      const rows =
        only === undefined
          ? (
              await c.query<DeviceRow>(
                `SELECT ${DEVICE_COLUMNS} FROM devices d WHERE d.user_id = $1 ORDER BY d.device_id`,
                [userId],
              )
            ).rows
          : [await this.#deviceRow(c, userId, only)];
      if (rows.length === 0 || user.identity_key === null) return [];
      const identityKey = this.#sealer.open(identityKeyRef(userId), user.identity_key);
      const bundles: PrekeyBundle[] = [];
      for (const row of rows) {
        // Lowest free id, taken and deleted in one statement; a row another fetch holds is
        // skipped, never shared.
        const taken = await c.query<{ prekey_id: number; public_key: Buffer }>(
          `DELETE FROM one_time_prekeys WHERE (user_id, device_id, prekey_id) =
             (SELECT user_id, device_id, prekey_id FROM one_time_prekeys
                WHERE user_id = $1 AND device_id = $2 ORDER BY prekey_id LIMIT 1 FOR UPDATE SKIP LOCKED)
           RETURNING prekey_id, public_key`,
          [userId, row.device_id],
        );
        bundles.push(prekeyBundle(this.#sealer, row, identityKey, taken.rows[0]));
      }
      return bundles;
    });
  }

  // --- mailbox -------------------------------------------------------------------------

  async enqueue(envelopes: readonly NewEnvelope[]): Promise<EnvelopeReceipt[]> {
    const list = checkEnvelopes('envelopes', envelopes, this.#limits);
    const now = this.#clock();
    // Seal before the transaction: AES-GCM over large bodies need not hold row locks.
    let bytes = 0;
    const sealed = list.map((e): SealedEnvelope => {
      const id = newId();
      const body = this.#sealer.seal(envelopeBodyRef(id), e.body);
      bytes += body.length;
      return { e, id, body };
    });
    const tallies = [...tallyRecipients(list).values()];
    return this.#mail<EnvelopeReceipt[]>((resolve, reject) => ({
      kind: 'enqueue',
      now,
      envelopes: sealed,
      tallies,
      bytes,
      resolve,
      reject,
    }));
  }

  async ackEnvelopes(userId: string, deviceId: number, ids: readonly string[]): Promise<number> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const list = [...new Set(checkEnvelopeIds('ids', ids))];
    return this.#mail<number>((resolve, reject) => ({
      kind: 'ack',
      userId,
      deviceId,
      ids: list,
      resolve,
      reject,
    }));
  }

  /**
   * Queues a mailbox write for the next group commit (see MailJob) and resolves with its
   * result once that group's COMMIT returned; rejects with its own error, having changed nothing.
   */
  #mail<T>(make: (resolve: (value: T) => void, reject: (error: unknown) => void) => MailJob): Promise<T> {
    this.#open();
    return this.#track(
      new Promise<T>((resolve, reject) => {
        this.#mailQueue.push(make(resolve, reject));
        this.#scheduleMail();
      }),
    );
  }

  /** Starts queued groups at the end of this event-loop turn, while fewer than MAIL_GROUPS_IN_FLIGHT run. */
  #scheduleMail(): void {
    if (this.#mailTimer !== undefined) return;
    if (this.#mailGroups >= MAIL_GROUPS_IN_FLIGHT || this.#mailQueue.length === 0) return;
    this.#mailTimer = setImmediate(() => {
      this.#mailTimer = undefined;
      while (this.#mailGroups < MAIL_GROUPS_IN_FLIGHT && this.#mailQueue.length > 0) {
        const jobs = this.#takeMailGroup();
        this.#mailGroups++;
        void this.#runMailGroup(jobs).finally(() => {
          this.#mailGroups--;
          this.#scheduleMail();
        });
      }
    });
  }

  /** The oldest queued requests, in call order, within the MAIL_GROUP_* caps (at least one). */
  #takeMailGroup(): MailJob[] {
    const q = this.#mailQueue;
    let n = 0;
    let envelopes = 0;
    let bytes = 0;
    while (n < q.length && n < MAIL_GROUP_MAX_REQUESTS) {
      const job = q[n]!;
      const e = job.kind === 'enqueue' ? job.envelopes.length : job.ids.length;
      const b = job.kind === 'enqueue' ? job.bytes : 0;
      if (n > 0 && (envelopes + e > MAIL_GROUP_MAX_ENVELOPES || bytes + b > MAIL_GROUP_MAX_BYTES)) break;
      envelopes += e;
      bytes += b;
      n++;
    }
    return q.splice(0, n);
  }

  /** Runs one group and settles every promise in it; never rejects. */
  async #runMailGroup(jobs: readonly MailJob[]): Promise<void> {
    let outcomes: MailOutcome[];
    try {
      outcomes = await this.#mailGroupTx(jobs);
    } catch (err) {
      const state = sqlState(err);
      if (jobs.length > 1 && state !== undefined && /^(22|23)/.test(state)) {
        // A statement shared by the group failed on some request's data (nothing of the
        // group committed): run each request alone, in call order, so only that one fails.
        for (const job of jobs) await this.#runMailGroup([job]);
        return;
      }
      const coded = postgresError(err);
      for (const job of jobs) job.reject(coded);
      return;
    }
    jobs.forEach((job, i) => {
      const o = outcomes[i]!;
      if (o.ok) (job.resolve as (value: unknown) => void)(o.value);
      else job.reject(o.error);
    });
  }

  /**
   * The group's transaction (READ COMMITTED), retried whole on a deadlock or serialization
   * failure: each attempt starts from what the database holds, so nothing is acknowledged
   * that did not commit. Throws the raw error (postgresError maps it).
   */
  async #mailGroupTx(jobs: readonly MailJob[]): Promise<MailOutcome[]> {
    for (let attempt = 1; ; attempt++) {
      const c = await connect(this.#pool);
      let broken = false;
      try {
        await c.query('BEGIN');
        const outcomes = await this.#mailGroup(c, jobs);
        await c.query('COMMIT');
        return outcomes;
      } catch (err) {
        await c.query('ROLLBACK').catch(() => {
          broken = true;
        });
        const state = sqlState(err);
        if (attempt < TX_ATTEMPTS && state !== undefined && RETRYABLE.has(state)) continue;
        throw err;
      } finally {
        c.release(broken);
      }
    }
  }

  /**
   * One group's work inside its transaction. Every device row the group touches is locked
   * first, in one statement in key order (so groups of several nodes, and fan-outs, cannot
   * deadlock), and its counters read; the acks run next (one statement), then each enqueue
   * is admitted or refused in call order against those counters, and the admitted ones are
   * inserted by one statement, drawing seq in call order. A refused request ran no statement
   * (or only a purge, rolled back to its savepoint), so it changes nothing.
   */
  async #mailGroup(c: Client, jobs: readonly MailJob[]): Promise<MailOutcome[]> {
    const out: MailOutcome[] = [];
    const devices = new Map<string, { readonly userId: string; readonly deviceId: number }>();
    for (const job of jobs) {
      if (job.kind === 'ack') devices.set(deviceRowId(job.userId, job.deviceId), job);
      else for (const t of job.tallies) devices.set(deviceRowId(t.userId, t.deviceId), t);
    }
    const list = [...devices.values()];
    const locked = await c.query<{
      user_id: string;
      device_id: number;
      queued_count: number;
      queued_bytes: number;
    }>(
      `SELECT user_id, device_id, queued_count, queued_bytes FROM devices
         WHERE (user_id, device_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))
         ORDER BY user_id, device_id FOR UPDATE`,
      [list.map((d) => d.userId), list.map((d) => d.deviceId)],
    );
    const queued = new Map<string, Queued>(
      locked.rows.map((r) => [
        deviceRowId(r.user_id, r.device_id),
        { queued_count: r.queued_count, queued_bytes: r.queued_bytes },
      ]),
    );

    // Acks first. Requests in one group are concurrent (none has resolved), so any order is
    // one they could have run in; an id two requests ack is counted for the first.
    const ack = { ids: [] as string[], users: [] as string[], devices: [] as number[], jobs: [] as number[] };
    const claimed = new Set<string>();
    jobs.forEach((job, i) => {
      if (job.kind !== 'ack') return;
      const key = deviceRowId(job.userId, job.deviceId);
      if (!queued.has(key)) {
        out[i] = { ok: false, error: deviceNotFound(job.userId, job.deviceId) };
        return;
      }
      out[i] = { ok: true, value: 0 };
      for (const id of job.ids) {
        if (claimed.has(`${key}/${id}`)) continue;
        claimed.add(`${key}/${id}`);
        ack.ids.push(id);
        ack.users.push(job.userId);
        ack.devices.push(job.deviceId);
        ack.jobs.push(i);
      }
    });
    if (ack.ids.length > 0) {
      // The recipient columns in the join make another device's ids a no-op.
      const r = await c.query<{ j: number; n: number; b: number }>(
        `WITH del AS (
           DELETE FROM envelopes e USING unnest($1::text[], $2::text[], $3::int[], $4::int[]) AS t(id, u, dv, j)
             WHERE e.id = t.id AND e.recipient_user_id = t.u AND e.recipient_device_id = t.dv
           RETURNING t.j AS j, e.recipient_user_id AS u, e.recipient_device_id AS dv, e.size AS size),
         sums AS (SELECT u, dv, count(*) AS n, sum(size)::bigint AS b FROM del GROUP BY u, dv),
         upd AS (
           UPDATE devices d SET queued_count = d.queued_count - sums.n, queued_bytes = d.queued_bytes - sums.b
             FROM sums WHERE d.user_id = sums.u AND d.device_id = sums.dv)
         SELECT j, count(*)::int AS n, sum(size)::bigint AS b FROM del GROUP BY j`,
        [ack.ids, ack.users, ack.devices, ack.jobs],
      );
      for (const row of r.rows) {
        const job = jobs[row.j] as AckJob;
        out[row.j] = { ok: true, value: row.n };
        const q = queued.get(deviceRowId(job.userId, job.deviceId))!;
        q.queued_count -= row.n;
        q.queued_bytes -= row.b;
      }
    }

    // Then the enqueues, admitted in call order against the counters.
    const admitted: number[] = [];
    const noneExpired = new Set<string>();
    for (let i = 0; i < jobs.length; i++) {
      const job = jobs[i]!;
      if (job.kind !== 'enqueue') continue;
      const refusal = await this.#admit(c, job, queued, noneExpired);
      if (refusal === undefined) admitted.push(i);
      else out[i] = { ok: false, error: refusal };
    }
    if (admitted.length === 0) return out;

    const rows = admitted.flatMap((i) => (jobs[i] as EnqueueJob).envelopes.map((x) => ({ x, i })));
    const inserted = await c.query<{ seq: number; id: string }>(
      `INSERT INTO envelopes (id, recipient_user_id, recipient_device_id, sender_user_id, sender_device_id,
         created_at, size, body)
       SELECT id, ru, rd, su, sd, at, size, body
         FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::int[], $6::bigint[], $7::int[],
           $8::bytea[], $9::int[]) AS t(id, ru, rd, su, sd, at, size, body, ord)
         ORDER BY ord
       RETURNING seq, id`,
      [
        rows.map(({ x }) => x.id),
        rows.map(({ x }) => x.e.recipientUserId),
        rows.map(({ x }) => x.e.recipientDeviceId),
        rows.map(({ x }) => x.e.senderUserId),
        rows.map(({ x }) => x.e.senderDeviceId),
        rows.map(({ i }) => (jobs[i] as EnqueueJob).now),
        rows.map(({ x }) => x.e.body.length),
        rows.map(({ x }) => x.body),
        rows.map((_, k) => k),
      ],
    );
    const seqOf = new Map(inserted.rows.map((r) => [r.id, r.seq]));
    const add = new Map<string, RecipientTally>();
    for (const i of admitted) {
      for (const t of (jobs[i] as EnqueueJob).tallies) {
        const key = deviceRowId(t.userId, t.deviceId);
        const a = add.get(key);
        if (a === undefined) add.set(key, { ...t });
        else {
          a.count += t.count;
          a.bytes += t.bytes;
        }
      }
    }
    const adds = [...add.values()];
    await c.query(
      `UPDATE devices d SET queued_count = d.queued_count + t.n, queued_bytes = d.queued_bytes + t.b
         FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS t(u, dv, n, b)
         WHERE d.user_id = t.u AND d.device_id = t.dv`,
      [
        adds.map((t) => t.userId),
        adds.map((t) => t.deviceId),
        adds.map((t) => t.count),
        adds.map((t) => t.bytes),
      ],
    );
    for (const i of admitted) {
      out[i] = {
        ok: true,
        value: (jobs[i] as EnqueueJob).envelopes.map(
          ({ e, id }): EnvelopeReceipt => ({
            id,
            seq: seqOf.get(id)!,
            recipientUserId: e.recipientUserId,
            recipientDeviceId: e.recipientDeviceId,
          }),
        ),
      };
    }
    return out;
  }

  /**
   * Admits one enqueue against the locked rows' counters (and adds it to them), or returns
   * why not: DEVICE_NOT_FOUND, or MAILBOX_FULL once the full queues' expired envelopes are
   * purged (expired envelopes still count until then). Those purges run in a SAVEPOINT
   * that a refusal rolls back, with the counters, so a refused request changes nothing.
   */
  async #admit(
    c: Client,
    job: EnqueueJob,
    queued: Map<string, Queued>,
    noneExpired: Set<string>,
  ): Promise<ServerError | undefined> {
    let savepoint = false;
    const before = new Map<string, Queued>();
    let refusal: ServerError | undefined;
    for (const t of job.tallies) {
      const key = deviceRowId(t.userId, t.deviceId);
      const q = queued.get(key);
      if (q === undefined) {
        refusal = deviceNotFound(t.userId, t.deviceId);
        break;
      }
      if (fitsQueueLimits(this.#limits, q, t)) continue;
      if (!noneExpired.has(key)) {
        if (!savepoint) {
          await c.query('SAVEPOINT mailbox_purge');
          savepoint = true;
        }
        const freed = await this.#purge(c, job.now, t.userId, t.deviceId);
        if (freed.count === 0) noneExpired.add(key);
        else {
          if (!before.has(key)) before.set(key, { ...q });
          q.queued_count -= freed.count;
          q.queued_bytes -= freed.bytes;
        }
        if (fitsQueueLimits(this.#limits, q, t)) continue;
      }
      refusal = mailboxFull(t.userId, t.deviceId, q);
      break;
    }
    if (refusal !== undefined) {
      if (savepoint) {
        await c.query('ROLLBACK TO SAVEPOINT mailbox_purge');
        await c.query('RELEASE SAVEPOINT mailbox_purge');
        for (const [key, q] of before) queued.set(key, q);
      }
      return refusal;
    }
    if (savepoint) await c.query('RELEASE SAVEPOINT mailbox_purge');
    for (const t of job.tallies) {
      const q = queued.get(deviceRowId(t.userId, t.deviceId))!;
      q.queued_count += t.count;
      q.queued_bytes += t.bytes;
    }
    return undefined;
  }

  /**
   * Deletes expired envelopes (of one device, whose row the caller has locked, or of all)
   * and debits the counters in the same statement. Returns what was deleted.
   */
  async #purge(
    c: Client,
    now: number,
    userId?: string,
    deviceId?: number,
  ): Promise<{ count: number; bytes: number }> {
    const cutoff = now - this.#limits.maxEnvelopeAgeMs;
    if (userId === undefined) {
      // Device rows first, in key order, as enqueue and ack lock them.
      await c.query(
        `SELECT 1 FROM devices d WHERE EXISTS (SELECT 1 FROM envelopes e WHERE e.recipient_user_id = d.user_id
           AND e.recipient_device_id = d.device_id AND e.created_at < $1)
         ORDER BY d.user_id, d.device_id FOR UPDATE`,
        [cutoff],
      );
    }
    const r = await c.query<{ n: number; b: number }>(
      `WITH del AS (
         DELETE FROM envelopes WHERE created_at < $1
           AND ($2::text IS NULL OR (recipient_user_id = $2 AND recipient_device_id = $3))
         RETURNING recipient_user_id AS u, recipient_device_id AS dv, size),
       sums AS (SELECT u, dv, count(*) AS n, sum(size)::bigint AS b FROM del GROUP BY u, dv)
       UPDATE devices d SET queued_count = d.queued_count - sums.n, queued_bytes = d.queued_bytes - sums.b
         FROM sums WHERE d.user_id = sums.u AND d.device_id = sums.dv
       RETURNING sums.n AS n, sums.b AS b`,
      [cutoff, userId ?? null, deviceId ?? null],
    );
    let count = 0;
    let bytes = 0;
    for (const row of r.rows) {
      count += row.n;
      bytes += row.b;
    }
    return { count, bytes };
  }

  async fetchEnvelopes(
    userId: string,
    deviceId: number,
    options: { readonly limit?: number; readonly afterSeq?: number } = {},
  ): Promise<Envelope[]> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const { limit, afterSeq } = checkFetchOptions(options);
    const r = await this.#query<EnvelopeRow>(
      `SELECT seq, id, recipient_user_id, recipient_device_id, sender_user_id, sender_device_id, created_at, body
         FROM envelopes WHERE recipient_user_id = $1 AND recipient_device_id = $2 AND seq > $3 AND created_at >= $4
         ORDER BY seq LIMIT $5`,
      [userId, deviceId, afterSeq, this.#clock() - this.#limits.maxEnvelopeAgeMs, limit],
    );
    // A device's envelopes are deleted with it, so only an empty page needs the device check.
    if (r.rows.length === 0) await this.#deviceExists(userId, deviceId);
    return r.rows.map((row) => openEnvelope(this.#sealer, row));
  }

  /** Throws DEVICE_NOT_FOUND unless the device exists. */
  async #deviceExists(userId: string, deviceId: number): Promise<void> {
    const r = await this.#query('SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2', [
      userId,
      deviceId,
    ]);
    if (r.rowCount === 0) throw deviceNotFound(userId, deviceId);
  }

  async mailboxStats(userId: string, deviceId: number): Promise<MailboxStats> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const r = await this.#query<{ queued_count: number; queued_bytes: number }>(
      'SELECT queued_count, queued_bytes FROM devices WHERE user_id = $1 AND device_id = $2',
      [userId, deviceId],
    );
    const row = r.rows[0];
    if (!row) throw deviceNotFound(userId, deviceId);
    return { count: row.queued_count, bytes: row.queued_bytes };
  }

  async purgeExpiredEnvelopes(): Promise<number> {
    const now = this.#clock();
    return this.#tx(async (c) => (await this.#purge(c, now)).count);
  }

  // --- roles and grants ----------------------------------------------------------------

  /**
   * Locks the custom roles among `roles` (FOR KEY SHARE, so deleteRole waits for this
   * transaction and then sees what it granted); ROLE_NOT_FOUND for a role that is neither
   * built in nor stored.
   */
  async #lockRoles(c: Client, roles: readonly string[]): Promise<void> {
    const custom = [...new Set(roles.filter((r) => !isBuiltinRole(r)))].sort();
    if (custom.length === 0) return;
    const r = await c.query<{ name: string }>(
      'SELECT name FROM roles WHERE name = ANY($1::text[]) ORDER BY name FOR KEY SHARE',
      [custom],
    );
    const found = new Set(r.rows.map((row) => row.name));
    const missing = custom.find((n) => !found.has(n));
    if (missing !== undefined) throw roleNotFound(missing);
  }

  /** Locks the user row against removal (FOR KEY SHARE); USER_NOT_FOUND. */
  async #userExists(c: Client, userId: string): Promise<void> {
    const r = await c.query('SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE', [userId]);
    if (r.rowCount === 0) throw userNotFound(userId);
  }

  /** Locks the unit row against removal (FOR KEY SHARE); ORG_UNIT_NOT_FOUND. */
  async #unitExists(c: Client, unitId: string): Promise<void> {
    const r = await c.query('SELECT 1 FROM org_units WHERE id = $1 FOR KEY SHARE', [unitId]);
    if (r.rowCount === 0) throw orgUnitNotFound(unitId);
  }

  async listRoles(): Promise<Role[]> {
    const r = await this.#query<RoleRow>('SELECT name, permissions, created_at FROM roles', []);
    return allRoles(r.rows.map(customRole));
  }

  async getRole(name: string): Promise<Role | undefined> {
    checkRoleName('name', name);
    const builtin = builtinRole(name);
    if (builtin) return builtin;
    const r = await this.#query<RoleRow>('SELECT name, permissions, created_at FROM roles WHERE name = $1', [
      name,
    ]);
    return r.rows[0] && customRole(r.rows[0]);
  }

  async createRole(input: { readonly name: string; readonly permissions: readonly string[] }): Promise<Role> {
    const { name, permissions } = checkNewRole(input);
    if (isBuiltinRole(name)) throw roleExists(name);
    const now = this.#clock();
    return this.#tx(async (c) => {
      const r = await c.query(
        'INSERT INTO roles (name, permissions, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING',
        [name, permissions, now],
      );
      if (r.rowCount === 0) throw roleExists(name);
      return { name, builtin: false, permissions, createdAt: now };
    });
  }

  async deleteRole(name: string): Promise<void> {
    checkRoleName('name', name);
    if (isBuiltinRole(name)) throw new ServerError('ROLE_BUILTIN', `role ${name} is built in`);
    await this.#tx(async (c) => {
      // FOR UPDATE: a grant under way (holding KEY SHARE) commits first and is seen below;
      // one that comes later waits, then finds the role gone.
      const r = await c.query('SELECT 1 FROM roles WHERE name = $1 FOR UPDATE', [name]);
      if (r.rowCount === 0) throw roleNotFound(name);
      const used = await c.query(
        `SELECT 1 WHERE EXISTS (SELECT 1 FROM user_roles WHERE role = $1)
            OR EXISTS (SELECT 1 FROM grants WHERE role = $1)`,
        [name],
      );
      if (used.rowCount !== 0) throw new ServerError('ROLE_IN_USE', `role ${name} is still granted`);
      await c.query('DELETE FROM roles WHERE name = $1', [name]);
    });
  }

  async addGrant(grant: Grant): Promise<void> {
    const g = checkGrant('grant', grant);
    await this.#tx(async (c) => {
      if (g.scope.kind === 'global') {
        await this.#lockUser(c, g.userId);
        await this.#lockRoles(c, [g.role]);
        await c.query('INSERT INTO user_roles (user_id, role) VALUES ($1, $2) ON CONFLICT DO NOTHING', [
          g.userId,
          g.role,
        ]);
        return;
      }
      await this.#userExists(c, g.userId);
      await this.#lockRoles(c, [g.role]);
      const scope = scopeColumns(g.scope);
      if (scope.kind === 'unit') {
        await this.#unitExists(c, scope.id);
      } else {
        const ch = await c.query('SELECT 1 FROM channels WHERE id = $1 FOR KEY SHARE', [scope.id]);
        if (ch.rowCount === 0) throw channelNotFound(scope.id);
      }
      await c.query(
        `INSERT INTO grants (user_id, role, scope_kind, scope_id) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING`,
        [g.userId, g.role, scope.kind, scope.id],
      );
    });
  }

  async removeGrant(grant: Grant): Promise<void> {
    const g = checkGrant('grant', grant);
    await this.#tx(async (c) => {
      if (g.scope.kind === 'global') {
        await c.query('DELETE FROM user_roles WHERE user_id = $1 AND role = $2', [g.userId, g.role]);
      } else {
        const scope = scopeColumns(g.scope);
        await c.query(
          'DELETE FROM grants WHERE user_id = $1 AND role = $2 AND scope_kind = $3 AND scope_id = $4',
          [g.userId, g.role, scope.kind, scope.id],
        );
      }
    });
  }

  async listGrants(filter: { readonly userId?: string } = {}): Promise<Grant[]> {
    const userId = checkListGrantsFilter(filter).userId ?? null;
    const r = await this.#query<{ user_id: string; role: string; scope_kind: string; scope_id: string }>(
      `SELECT user_id, role, scope_kind, scope_id FROM (
         SELECT user_id, role, 'global' AS scope_kind, '' AS scope_id FROM user_roles
           WHERE $1::text IS NULL OR user_id = $1
         UNION ALL
         SELECT user_id, role, scope_kind, scope_id FROM grants WHERE $1::text IS NULL OR user_id = $1
       ) g
       ORDER BY user_id COLLATE "C", role COLLATE "C", scope_kind COLLATE "C", scope_id COLLATE "C"`,
      [userId],
    );
    // The same order as the SQL's, made exact by the shared comparison (not a collation).
    return r.rows
      .map((row) => grantFromColumns(row.user_id, row.role, row.scope_kind, row.scope_id))
      .sort(compareGrants);
  }

  // --- org units -----------------------------------------------------------------------

  async createOrgUnit(input: { readonly name: string; readonly parentId?: string }): Promise<OrgUnit> {
    const { name, parentId } = checkNewOrgUnit(input);
    const id = newId();
    const now = this.#clock();
    return this.#tx(async (c) => {
      if (parentId !== undefined) await this.#unitExists(c, parentId);
      const r = await c.query(
        `INSERT INTO org_units (id, name, parent_id, created_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (name) DO NOTHING`,
        [id, name, parentId ?? null, now],
      );
      if (r.rowCount === 0) {
        throw new ServerError('ORG_UNIT_EXISTS', `an org unit named ${name} already exists`);
      }
      return { id, name, parentId, createdAt: now };
    });
  }

  async getOrgUnit(id: string): Promise<OrgUnit | undefined> {
    checkHexId('id', id);
    const r = await this.#query<OrgUnitRow>(`SELECT ${UNIT_COLUMNS} FROM org_units WHERE id = $1`, [id]);
    return r.rows[0] && toOrgUnit(r.rows[0]);
  }

  async findOrgUnitByName(name: string): Promise<OrgUnit | undefined> {
    checkUserName('name', name);
    const r = await this.#query<OrgUnitRow>(`SELECT ${UNIT_COLUMNS} FROM org_units WHERE name = $1`, [name]);
    return r.rows[0] && toOrgUnit(r.rows[0]);
  }

  async listOrgUnits(): Promise<OrgUnit[]> {
    const r = await this.#query<OrgUnitRow>(`SELECT ${UNIT_COLUMNS} FROM org_units ORDER BY name`, []);
    return r.rows.map(toOrgUnit);
  }

  async removeOrgUnit(id: string): Promise<void> {
    checkHexId('id', id);
    await this.#tx(async (c) => {
      // FOR UPDATE: writers naming the unit hold KEY SHARE on it; those under way commit
      // first and are seen below, later ones wait and then find it gone.
      const r = await c.query('SELECT 1 FROM org_units WHERE id = $1 FOR UPDATE', [id]);
      if (r.rowCount === 0) throw orgUnitNotFound(id);
      const used = await c.query(
        `SELECT 1 WHERE EXISTS (SELECT 1 FROM org_units WHERE parent_id = $1)
            OR EXISTS (SELECT 1 FROM user_org_units WHERE unit_id = $1)
            OR EXISTS (SELECT 1 FROM channels WHERE unit_id = $1)
            OR EXISTS (SELECT 1 FROM grants WHERE scope_kind = 'unit' AND scope_id = $1)`,
        [id],
      );
      if (used.rowCount !== 0) {
        throw new ServerError(
          'ORG_UNIT_NOT_EMPTY',
          `org unit ${id} still has sub-units, users, channels or grants`,
        );
      }
      await c.query('DELETE FROM org_units WHERE id = $1', [id]);
    });
  }

  async addUserToOrgUnit(userId: string, unitId: string): Promise<void> {
    checkUserId('userId', userId);
    checkHexId('unitId', unitId);
    await this.#tx(async (c) => {
      await this.#userExists(c, userId);
      await this.#unitExists(c, unitId);
      await c.query('INSERT INTO user_org_units (user_id, unit_id) VALUES ($1, $2) ON CONFLICT DO NOTHING', [
        userId,
        unitId,
      ]);
    });
  }

  async removeUserFromOrgUnit(userId: string, unitId: string): Promise<void> {
    checkUserId('userId', userId);
    checkHexId('unitId', unitId);
    await this.#tx(async (c) => {
      await c.query('DELETE FROM user_org_units WHERE user_id = $1 AND unit_id = $2', [userId, unitId]);
    });
  }

  async listUserOrgUnits(userId: string): Promise<string[]> {
    checkUserId('userId', userId);
    const r = await this.#query<{ unit_id: string }>(
      'SELECT unit_id FROM user_org_units WHERE user_id = $1 ORDER BY unit_id COLLATE "C"',
      [userId],
    );
    return r.rows.map((row) => row.unit_id);
  }

  async listOrgUnitUsers(unitId: string): Promise<string[]> {
    checkHexId('unitId', unitId);
    const r = await this.#query<{ user_id: string }>(
      'SELECT user_id FROM user_org_units WHERE unit_id = $1 ORDER BY user_id COLLATE "C"',
      [unitId],
    );
    return r.rows.map((row) => row.user_id);
  }

  // --- channels ------------------------------------------------------------------------

  async #channelRow(c: Client, id: string): Promise<Channel> {
    const r = await c.query<ChannelRow>(`SELECT ${CHANNEL_COLUMNS} FROM channels ch WHERE ch.id = $1`, [id]);
    if (!r.rows[0]) throw channelNotFound(id);
    return toChannel(r.rows[0]);
  }

  async createChannel(input: {
    readonly id: string;
    readonly name: string;
    readonly unitId?: string;
    readonly createdBy: string;
    readonly genesis: { readonly change: Uint8Array; readonly signature: Uint8Array };
  }): Promise<Channel> {
    const { id, name, unitId, createdBy, genesis } = checkNewChannel(input);
    const sealed = sealChannelLogEntry(this.#sealer, id, { seq: 0, ...genesis });
    const now = this.#clock();
    return this.#tx(async (c) => {
      const taken = await c.query('SELECT 1 FROM channels WHERE id = $1 OR name = $2', [id, name]);
      if (taken.rowCount !== 0) throw channelExists(id, name);
      await this.#userExists(c, createdBy);
      if (unitId !== undefined) await this.#unitExists(c, unitId);
      // A concurrent creation of the same id or name: exactly one insert wins.
      const r = await c.query(
        `INSERT INTO channels (id, name, unit_id, created_by, seq, created_at) VALUES ($1, $2, $3, $4, 0, $5)
           ON CONFLICT DO NOTHING`,
        [id, name, unitId ?? null, createdBy, now],
      );
      if (r.rowCount === 0) throw channelExists(id, name);
      await c.query('INSERT INTO channel_log (channel_id, seq, change, signature) VALUES ($1, 0, $2, $3)', [
        id,
        sealed.change,
        sealed.signature,
      ]);
      await c.query(
        `INSERT INTO channel_members (channel_id, user_id, role, added_seq) VALUES ($1, $2, 'manager', 0)`,
        [id, createdBy],
      );
      return { id, name, unitId, createdBy, seq: 0, memberCount: 1, createdAt: now };
    });
  }

  async getChannel(id: string): Promise<Channel | undefined> {
    checkHexId('id', id);
    const r = await this.#query<ChannelRow>(`SELECT ${CHANNEL_COLUMNS} FROM channels ch WHERE ch.id = $1`, [
      id,
    ]);
    return r.rows[0] && toChannel(r.rows[0]);
  }

  async findChannelByName(name: string): Promise<Channel | undefined> {
    checkUserName('name', name);
    const r = await this.#query<ChannelRow>(`SELECT ${CHANNEL_COLUMNS} FROM channels ch WHERE ch.name = $1`, [
      name,
    ]);
    return r.rows[0] && toChannel(r.rows[0]);
  }

  async listChannels(filter: { readonly memberUserId?: string } = {}): Promise<Channel[]> {
    const member = checkListChannelsFilter(filter).memberUserId ?? null;
    const r = await this.#query<ChannelRow>(
      `SELECT ${CHANNEL_COLUMNS} FROM channels ch
         WHERE $1::text IS NULL OR EXISTS (SELECT 1 FROM channel_members m WHERE m.channel_id = ch.id AND m.user_id = $1)
         ORDER BY ch.name`,
      [member],
    );
    return r.rows.map(toChannel);
  }

  async appendChannelChange(
    channelId: string,
    entry: ChannelLogEntry,
    effect: ChannelEffect,
  ): Promise<Channel> {
    checkHexId('channelId', channelId);
    const e = checkChannelLogEntry('entry', entry);
    const fx = checkChannelEffect('effect', effect);
    const sealed = sealChannelLogEntry(this.#sealer, channelId, e);
    return this.#tx(async (c) => {
      // The channel row lock orders appends: of two nodes appending the same seq, the second
      // waits, then reads the first's seq and gets CHANNEL_CONFLICT.
      const ch = await c.query<{ seq: number }>('SELECT seq FROM channels WHERE id = $1 FOR UPDATE', [
        channelId,
      ]);
      const row = ch.rows[0];
      if (!row) throw channelNotFound(channelId);
      if (e.seq !== row.seq + 1) {
        throw new ServerError(
          'CHANNEL_CONFLICT',
          `channel ${channelId} is at change ${row.seq}; change ${e.seq} does not follow it`,
        );
      }
      if (fx.kind === 'add') await this.#userExists(c, fx.userId);
      await c.query('INSERT INTO channel_log (channel_id, seq, change, signature) VALUES ($1, $2, $3, $4)', [
        channelId,
        e.seq,
        sealed.change,
        sealed.signature,
      ]);
      if (fx.kind === 'add') {
        await c.query(
          `INSERT INTO channel_members (channel_id, user_id, role, added_seq) VALUES ($1, $2, $3, $4)
             ON CONFLICT (channel_id, user_id) DO UPDATE SET role = EXCLUDED.role, added_seq = EXCLUDED.added_seq`,
          [channelId, fx.userId, fx.role, e.seq],
        );
      } else {
        await c.query('DELETE FROM channel_members WHERE channel_id = $1 AND user_id = $2', [
          channelId,
          fx.userId,
        ]);
        await c.query(`DELETE FROM grants WHERE user_id = $1 AND scope_kind = 'channel' AND scope_id = $2`, [
          fx.userId,
          channelId,
        ]);
      }
      await c.query('UPDATE channels SET seq = $1 WHERE id = $2', [e.seq, channelId]);
      return this.#channelRow(c, channelId);
    });
  }

  async channelLog(
    channelId: string,
    options: { readonly afterSeq?: number; readonly limit?: number } = {},
  ): Promise<ChannelLogEntry[]> {
    checkHexId('channelId', channelId);
    const { afterSeq, limit } = checkChannelLogOptions(options);
    // One statement, one snapshot: the channel check and the page agree.
    const r = await this.#query<{ seq: number | null; change: Uint8Array; signature: Uint8Array }>(
      `SELECT l.seq, l.change, l.signature FROM channels ch
         LEFT JOIN channel_log l ON l.channel_id = ch.id AND l.seq > $2
         WHERE ch.id = $1 ORDER BY l.seq LIMIT $3`,
      [channelId, afterSeq, limit],
    );
    if (r.rows.length === 0) throw channelNotFound(channelId);
    return r.rows
      .filter((row): row is ChannelLogRow & { seq: number } => row.seq !== null)
      .map((row) => openChannelLogEntry(this.#sealer, channelId, row));
  }

  async channelMembers(channelId: string): Promise<ChannelMembership[]> {
    checkHexId('channelId', channelId);
    // One statement, one snapshot: the channel check and the list agree.
    const r = await this.#query<MemberRow | { user_id: null }>(
      `SELECT m.user_id, m.role, m.added_seq FROM channels ch
         LEFT JOIN channel_members m ON m.channel_id = ch.id
         WHERE ch.id = $1 ORDER BY m.user_id COLLATE "C"`,
      [channelId],
    );
    if (r.rows.length === 0) throw channelNotFound(channelId);
    return r.rows.filter((row): row is MemberRow => row.user_id !== null).map(toMembership);
  }

  async channelMembership(channelId: string, userId: string): Promise<ChannelMembership | undefined> {
    checkHexId('channelId', channelId);
    checkUserId('userId', userId);
    const r = await this.#query<{ role: 'member' | 'manager'; added_seq: number }>(
      'SELECT role, added_seq FROM channel_members WHERE channel_id = $1 AND user_id = $2',
      [channelId, userId],
    );
    const row = r.rows[0];
    return row && { userId, role: row.role, addedSeq: row.added_seq };
  }

  async channelMemberDevices(channelId: string): Promise<{ userId: string; deviceId: number }[]> {
    checkHexId('channelId', channelId);
    // One statement, one snapshot: the channel check and the list agree.
    const r = await this.#query<{ user_id: string | null; device_id: number | null }>(
      `SELECT d.user_id, d.device_id FROM channels ch
         LEFT JOIN channel_members m ON m.channel_id = ch.id
         LEFT JOIN devices d ON d.user_id = m.user_id
         WHERE ch.id = $1 ORDER BY d.user_id COLLATE "C", d.device_id`,
      [channelId],
    );
    if (r.rows.length === 0) throw channelNotFound(channelId);
    const out: { userId: string; deviceId: number }[] = [];
    for (const row of r.rows) {
      if (row.user_id !== null && row.device_id !== null)
        out.push({ userId: row.user_id, deviceId: row.device_id });
    }
    return out;
  }

  async removeChannel(id: string): Promise<void> {
    checkHexId('id', id);
    await this.#tx(async (c) => {
      // Deleting the row locks it first: appends and grants naming it wait, then find it gone.
      const r = await c.query('DELETE FROM channels WHERE id = $1', [id]);
      if (r.rowCount === 0) throw channelNotFound(id);
      await c.query(`DELETE FROM grants WHERE scope_kind = 'channel' AND scope_id = $1`, [id]);
    });
  }

  // --- audit log -----------------------------------------------------------------------

  async appendAudit(entry: AuditEntry): Promise<AuditRecord> {
    const checked = checkAuditEntry(entry);
    return this.#tx(async (c) => {
      // One append at a time across every node: the lock is held to commit, and each
      // statement after it sees the previous append's rows.
      await c.query('SELECT pg_advisory_xact_lock($1)', [AUDIT_LOCK_KEY]);
      const last = await c.query<{ seq: number; hash: string }>(
        'SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1',
      );
      const head = await c.query<{ seq: number; hash: string }>(
        'SELECT seq, hash FROM audit_head WHERE id = 1',
      );
      const { record, bytes } = chainAuditRecord(auditPredecessor(last.rows[0], head.rows[0]), checked);
      await c.query('INSERT INTO audit_log (seq, at, hash, record) VALUES ($1, $2, $3, $4)', [
        record.seq,
        record.at,
        record.hash,
        sealAuditRecord(this.#sealer, bytes),
      ]);
      const signature = signAuditHead(this.#auditSeed, record.seq, record.hash);
      await c.query(
        `INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, $1, $2, $3)
           ON CONFLICT (id) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, signature = EXCLUDED.signature`,
        [record.seq, record.hash, signature],
      );
      return record;
    });
  }

  async listAudit(
    options: { readonly afterSeq?: number; readonly since?: number; readonly limit?: number } = {},
  ): Promise<AuditRecord[]> {
    const { afterSeq, since, limit } = checkAuditListOptions(options);
    const r = await this.#query<{ seq: number; record: Buffer }>(
      'SELECT seq, record FROM audit_log WHERE seq > $1 AND at >= $2 ORDER BY seq LIMIT $3',
      [afterSeq, since, limit],
    );
    return r.rows.map((row) => auditRecordFromBytes(row.seq, openAuditRecord(this.#sealer, row.record)));
  }

  async verifyAudit(): Promise<AuditVerification> {
    const publicKey = auditPublicKey(this.#auditSeed);
    const { rows, head } = await this.#tx(async (c) => {
      // One snapshot for the rows and the head, so a concurrent append is not "inserted".
      await c.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
      const r = await c.query<{ seq: number; hash: string; record: Buffer }>(
        'SELECT seq, hash, record FROM audit_log ORDER BY seq',
      );
      const h = await c.query<{ seq: number; hash: string; signature: Buffer }>(
        'SELECT seq, hash, signature FROM audit_head WHERE id = 1',
      );
      return { rows: r.rows, head: h.rows[0] };
    });
    return verifySealedAudit(this.#sealer, publicKey, rows, head);
  }

  // --- files ---------------------------------------------------------------------------

  async createFile(file: NewFile, limits: FileLimits): Promise<StoredFile> {
    const f = checkNewFile(file);
    const l = checkFileLimits(limits);
    const recipients = sealFileRecipients(this.#sealer, f.id, f.recipients);
    const now = this.#clock();
    return this.#tx(async (c) => {
      // The owner's row lock serialises their creations on every node: the sum below
      // cannot miss a file created concurrently.
      await this.#lockUser(c, f.ownerId);
      const used = await c.query<{ used: number }>(
        'SELECT coalesce(sum(size), 0)::bigint AS used FROM files WHERE owner_id = $1',
        [f.ownerId],
      );
      checkFileFits(f, l, used.rows[0]?.used ?? 0);
      const r = await c.query<FileRow>(
        `INSERT INTO files (id, owner_id, size, chunk_size, received, recipients, key_id, wrapped_key, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $8)
         ON CONFLICT (id) DO NOTHING RETURNING *`,
        [f.id, f.ownerId, f.size, f.chunkSize, recipients, f.wrappedKey.keyId, f.wrappedKey.ciphertext, now],
      );
      const row = r.rows[0];
      if (!row) throw new ServerError('INVALID_ARGUMENT', `a file with id ${f.id} already exists`);
      return openFileRow(this.#sealer, row);
    });
  }

  async getFile(fileId: string): Promise<StoredFile | undefined> {
    checkHexId('fileId', fileId);
    const r = await this.#query<FileRow>('SELECT * FROM files WHERE id = $1', [fileId]);
    return r.rows[0] && openFileRow(this.#sealer, r.rows[0]);
  }

  async appendFileChunks(fileId: string, chunks: readonly NewFileChunk[]): Promise<StoredFile> {
    checkHexId('fileId', fileId);
    const list = checkFileChunks(chunks);
    const now = this.#clock();
    return this.#tx(async (c) => {
      // The row lock orders appenders on every node: the second reads the first's
      // `received` and gets UPLOAD_OFFSET_MISMATCH.
      const r = await c.query<{ size: number; chunk_size: number; received: number }>(
        'SELECT size, chunk_size, received FROM files WHERE id = $1 FOR UPDATE',
        [fileId],
      );
      const row = r.rows[0];
      if (!row) throw fileNotFound(fileId);
      const received = checkNextChunks(
        fileId,
        { size: row.size, chunkSize: row.chunk_size, received: row.received },
        list,
      );
      // One statement for the whole run, in this one transaction (one commit per batch).
      const values: string[] = [];
      const params: unknown[] = [fileId];
      for (const ch of list) {
        params.push(ch.index, ch.data);
        values.push(`($1, $${params.length - 1}, $${params.length})`);
      }
      await c.query(`INSERT INTO file_chunks (file_id, idx, data) VALUES ${values.join(', ')}`, params);
      const u = await c.query<FileRow>(
        'UPDATE files SET received = $2, updated_at = $3 WHERE id = $1 RETURNING *',
        [fileId, received, now],
      );
      return openFileRow(this.#sealer, u.rows[0]!);
    });
  }

  async readFileChunks(fileId: string, first: number, count: number): Promise<FileChunk[]> {
    checkHexId('fileId', fileId);
    const rg = checkFileRange(first, count);
    // One statement, one snapshot; the file row says whether the file exists at all.
    const r = await this.#query<{ idx: number | null; data: Buffer | null }>(
      `SELECT k.idx, k.data FROM files f
         LEFT JOIN file_chunks k ON k.file_id = f.id AND k.idx >= $2 AND k.idx < $3
         WHERE f.id = $1 ORDER BY k.idx`,
      [fileId, rg.first, rg.first + rg.count],
    );
    if (r.rows.length === 0) throw fileNotFound(fileId);
    return r.rows
      .filter((row): row is { idx: number; data: Buffer } => row.idx !== null && row.data !== null)
      .map((row) => ({ index: row.idx, data: row.data }));
  }

  async deleteFile(fileId: string, ownerId: string): Promise<void> {
    checkHexId('fileId', fileId);
    checkUserId('ownerId', ownerId);
    await this.#tx(async (c) => {
      // The chunks go with it (ON DELETE CASCADE).
      const r = await c.query('DELETE FROM files WHERE id = $1 AND owner_id = $2', [fileId, ownerId]);
      if (r.rowCount === 0) {
        throw new ServerError('FILE_NOT_FOUND', `no file with id ${fileId} owned by ${ownerId}`);
      }
    });
  }

  async fileUsage(userId: string): Promise<number> {
    checkUserId('userId', userId);
    const r = await this.#query<{ used: number }>(
      'SELECT coalesce(sum(size), 0)::bigint AS used FROM files WHERE owner_id = $1',
      [userId],
    );
    return r.rows[0]?.used ?? 0;
  }

  async purgeIncompleteFiles(updatedBefore: number): Promise<number> {
    aint('updatedBefore', updatedBefore, 0, Number.MAX_SAFE_INTEGER);
    return this.#tx(async (c) => {
      const r = await c.query('DELETE FROM files WHERE received < size AND updated_at < $1', [updatedBefore]);
      return r.rowCount ?? 0;
    });
  }

  async fileKeyVersions(): Promise<{ keyId: string; files: number }[]> {
    const r = await this.#query<{ key_id: string; files: number }>(
      'SELECT key_id, count(*) AS files FROM files GROUP BY key_id ORDER BY key_id COLLATE "C"',
      [],
    );
    return r.rows.map((row) => ({ keyId: row.key_id, files: row.files }));
  }

  async listFileKeys(options: {
    readonly exceptKeyId: string;
    readonly afterId?: string;
    readonly limit: number;
  }): Promise<{ fileId: string; wrappedKey: StoredWrappedKey }[]> {
    const o = checkListFileKeys(options);
    const r = await this.#query<{ id: string; key_id: string; wrapped_key: Buffer }>(
      `SELECT id, key_id, wrapped_key FROM files WHERE key_id <> $1 AND id COLLATE "C" > $2
         ORDER BY id COLLATE "C" LIMIT $3`,
      [o.exceptKeyId, o.afterId, o.limit],
    );
    return r.rows.map((row) => ({
      fileId: row.id,
      wrappedKey: { keyId: row.key_id, ciphertext: new Uint8Array(row.wrapped_key) },
    }));
  }

  async replaceFileKey(
    fileId: string,
    expectedKeyId: string,
    wrappedKey: StoredWrappedKey,
  ): Promise<boolean> {
    checkHexId('fileId', fileId);
    checkKekVersionId('expectedKeyId', expectedKeyId);
    const w = checkWrappedFileKey('wrappedKey', wrappedKey);
    return this.#tx(async (c) => {
      const r = await c.query(
        'UPDATE files SET key_id = $1, wrapped_key = $2 WHERE id = $3 AND key_id = $4',
        [w.keyId, w.ciphertext, fileId, expectedKeyId],
      );
      return r.rowCount === 1;
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Calls already under way finish (and commit) first; new ones get CLOSED.
    await Promise.allSettled([...this.#inflight]);
    await this.#pool.end().catch(() => undefined);
    this.#sealer.destroy();
    this.#lookupKey.fill(0);
    this.#auditSeed.fill(0);
  }
}
