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
import { ServerError } from '../errors.js';
import type { Kms, WrappedKey } from '../kms/kms.js';
import { abytes, aint, aobject, astring } from '../validate.js';
import { FIELD_DEK, FIELD_DEK_GENERATION, LOOKUP_DEK } from './embedded.js';
import { FieldSealer } from './field-sealer.js';
import {
  checkDeviceId,
  checkEnrolment,
  checkEnvelopeIds,
  checkEnvelopes,
  checkLimits,
  checkNewDevice,
  checkNewEnrolmentCode,
  checkOneTimePrekeys,
  checkRoles,
  checkSignedPrekey,
  checkUserId,
  checkUserName,
  DEFAULT_FETCH,
  enrolmentCodeInvalid,
  fitsQueueLimits,
  MAX_FETCH,
} from './input.js';
import { migratePostgres, POSTGRES_MIGRATIONS } from './postgres-schema.js';
import {
  type DeviceRowFields,
  deviceRowId,
  type EnvelopeRow,
  enrolmentCodeHash,
  envelopeBodyRef,
  identityKeyRef,
  newId,
  oneTimePrekeyRef,
  openDevice,
  openEnvelope,
  ref,
  sealDeviceFields,
  tallyRecipients,
} from './sealed-rows.js';
import {
  DEFAULT_LIMITS,
  type Device,
  type Envelope,
  type EnvelopeReceipt,
  type MailboxStats,
  type NewDevice,
  type NewEnvelope,
  type OneTimePrekey,
  type PrekeyBundle,
  type SignedPrekey,
  type Storage,
  type StorageLimits,
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
  });
  // An idle connection that breaks (server restart, network) is dropped by the pool; without
  // a listener the 'error' event would end the process.
  pool.on('error', () => undefined);
  // Durability must not depend on the server's default: a COMMIT returns once it is flushed.
  // Queries on one client run in order, so this precedes anything the client is used for.
  pool.on('connect', (client) => {
    client.query('SET synchronous_commit = on').catch(() => undefined);
  });
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
 * no key would otherwise get a fresh key that opens nothing (DEK_NOT_FOUND instead). Two
 * nodes creating at once both insert with ON CONFLICT DO NOTHING and use the row that won.
 */
async function loadDataKeys(
  client: pg.PoolClient,
  kms: Kms,
  names: readonly string[],
  clock: () => number,
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
    const used = await client.query('SELECT 1 FROM users LIMIT 1');
    if (used.rowCount !== 0) {
      throw new ServerError(
        'DEK_NOT_FOUND',
        `the database holds data but no data key named ${missing[0]}; restore the data_keys table`,
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
      keys = await loadDataKeys(client, o.kms, [FIELD_DEK, LOOKUP_DEK], clock);
    } finally {
      client.release();
    }
    const fieldKey = keys.get(FIELD_DEK)!;
    const lookupKey = keys.get(LOOKUP_DEK)!;
    try {
      const sealer = new FieldSealer(new Map([[FIELD_DEK_GENERATION, fieldKey]]), FIELD_DEK_GENERATION);
      return new PostgresStorage(pool, sealer, lookupKey, limits, clock);
    } finally {
      // The storage and sealer keep their own copies; drop ours.
      fieldKey.fill(0);
      lookupKey.fill(0);
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
  const pool = createPostgresPool(options);
  try {
    const { activeKeyId } = await options.kms.describe();
    const client = await connect(pool);
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

function deviceNotFound(userId: string, deviceId: number): ServerError {
  return new ServerError('DEVICE_NOT_FOUND', `user ${userId} has no device ${deviceId}`);
}

export class PostgresStorage implements Storage {
  readonly #pool: pg.Pool;
  readonly #sealer: FieldSealer;
  readonly #lookupKey: Uint8Array;
  readonly #limits: StorageLimits;
  readonly #clock: () => number;
  #closed = false;
  /** Calls under way; close() lets them finish before it ends the pool and zeroes the keys. */
  readonly #inflight = new Set<Promise<unknown>>();

  /** Use openPostgresStorage. The storage owns `pool` and `sealer` from here; it copies `lookupKey`. */
  constructor(
    pool: pg.Pool,
    sealer: FieldSealer,
    lookupKey: Uint8Array,
    limits: StorageLimits,
    clock: () => number,
  ) {
    this.#pool = pool;
    this.#sealer = sealer;
    this.#lookupKey = Uint8Array.from(abytes('lookupKey', lookupKey, 32));
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
    return {
      id: row.id,
      name: row.name,
      roles: row.roles,
      identityKey:
        row.identity_key === null ? undefined : this.#sealer.open(identityKeyRef(row.id), row.identity_key),
      createdAt: row.created_at,
    };
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
    if (!row) throw new ServerError('USER_NOT_FOUND', `no user with id ${userId}`);
    return row;
  }

  async createUser(input: { readonly name: string; readonly roles?: readonly string[] }): Promise<User> {
    const o = aobject('input', input);
    const name = checkUserName('input.name', o.name);
    const roles = checkRoles('input.roles', o.roles ?? []);
    const id = newId();
    const now = this.#clock();
    return this.#tx(async (c) => {
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
      if (r.rowCount === 0) throw new ServerError('USER_NOT_FOUND', `no user with id ${userId}`);
    });
  }

  async grantRole(userId: string, role: string): Promise<void> {
    checkUserId('userId', userId);
    checkUserName('role', role);
    await this.#tx(async (c) => {
      await this.#lockUser(c, userId);
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
    const count = n.rows[0]?.n ?? 0;
    if (count >= this.#limits.maxDevicesPerUser) {
      throw new ServerError('TOO_MANY_DEVICES', `user ${userId} already has ${count} devices, the limit`);
    }
    await c.query('UPDATE users SET next_device_id = $1 WHERE id = $2', [deviceId + 1, userId]);
    const s = sealDeviceFields(this.#sealer, userId, deviceId, d);
    await c.query(
      `INSERT INTO devices (user_id, device_id, registration_id, name, signed_prekey_id, signed_prekey,
         signed_prekey_signature, kyber_prekey_id, kyber_prekey, kyber_prekey_signature, created_at, auth_key)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
      [
        userId,
        deviceId,
        d.registrationId,
        s.name,
        d.signedPrekey.id,
        s.signed_prekey,
        s.signed_prekey_signature,
        d.kyberPrekey.id,
        s.kyber_prekey,
        s.kyber_prekey_signature,
        now,
        s.auth_key,
      ],
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
      const identity =
        user.identity_key === null ? undefined : this.#sealer.open(identityKeyRef(userId), user.identity_key);
      // Identity keys are public: a plain comparison leaks nothing secret.
      if (!identity || Buffer.compare(identity, d.identityKey) !== 0) {
        throw new ServerError(
          'IDENTITY_KEY_MISMATCH',
          identity
            ? `the new device's identity key is not user ${userId}'s`
            : `user ${userId} has not enrolled a first device`,
        );
      }
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
    if (r.rows.length === 0) throw new ServerError('USER_NOT_FOUND', `no user with id ${userId}`);
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
      if (row.otpk_count + list.length > this.#limits.maxOneTimePrekeysPerDevice) {
        throw new ServerError(
          'TOO_MANY_PREKEYS',
          `device ${deviceId} holds ${row.otpk_count} one-time prekeys; ${list.length} more exceed the limit of ${this.#limits.maxOneTimePrekeysPerDevice}`,
        );
      }
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
    const rowId = deviceRowId(userId, deviceId);
    const pub = this.#sealer.seal(ref('devices', `${kind}_prekey`, rowId), p.publicKey);
    const sig = this.#sealer.seal(ref('devices', `${kind}_prekey_signature`, rowId), p.signature);
    await this.#tx(async (c) => {
      const r = await c.query(
        `UPDATE devices SET ${kind}_prekey_id = $1, ${kind}_prekey = $2, ${kind}_prekey_signature = $3
           WHERE user_id = $4 AND device_id = $5`,
        [p.id, pub, sig, userId, deviceId],
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
    const o = aobject('options', options);
    const only = o.deviceId === undefined ? undefined : checkDeviceId('options.deviceId', o.deviceId);
    return this.#tx(async (c) => {
      const u = await c.query<{ identity_key: Buffer | null }>(
        'SELECT identity_key FROM users WHERE id = $1',
        [userId],
      );
      const user = u.rows[0];
      if (!user) throw new ServerError('USER_NOT_FOUND', `no user with id ${userId}`);
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
        const device = openDevice(this.#sealer, row);
        // Lowest free id, taken and deleted in one statement; a row another fetch holds is
        // skipped, never shared.
        const taken = await c.query<{ prekey_id: number; public_key: Buffer }>(
          `DELETE FROM one_time_prekeys WHERE (user_id, device_id, prekey_id) =
             (SELECT user_id, device_id, prekey_id FROM one_time_prekeys
                WHERE user_id = $1 AND device_id = $2 ORDER BY prekey_id LIMIT 1 FOR UPDATE SKIP LOCKED)
           RETURNING prekey_id, public_key`,
          [userId, row.device_id],
        );
        const t = taken.rows[0];
        bundles.push({
          userId,
          deviceId: row.device_id,
          registrationId: row.registration_id,
          identityKey: new Uint8Array(identityKey),
          signedPrekey: device.signedPrekey,
          kyberPrekey: device.kyberPrekey,
          oneTimePrekey: t && {
            id: t.prekey_id,
            publicKey: this.#sealer.open(oneTimePrekeyRef(userId, row.device_id, t.prekey_id), t.public_key),
          },
          oneTimePrekeysRemaining: t ? Math.max(0, row.otpk_count - 1) : 0,
        });
      }
      return bundles;
    });
  }

  // --- mailbox -------------------------------------------------------------------------

  async enqueue(envelopes: readonly NewEnvelope[]): Promise<EnvelopeReceipt[]> {
    const list = checkEnvelopes('envelopes', envelopes, this.#limits);
    const now = this.#clock();
    // Seal before the transaction: AES-GCM over large bodies need not hold row locks.
    const sealed = list.map((e) => {
      const id = newId();
      return { e, id, body: this.#sealer.seal(envelopeBodyRef(id), e.body) };
    });
    const tallies = [...tallyRecipients(list).values()];
    return this.#tx(async (c) => {
      // Lock every recipient's device row in one statement, in key order (no deadlock between fan-outs).
      const locked = await c.query<{
        user_id: string;
        device_id: number;
        queued_count: number;
        queued_bytes: number;
      }>(
        `SELECT user_id, device_id, queued_count, queued_bytes FROM devices
           WHERE (user_id, device_id) IN (SELECT * FROM unnest($1::text[], $2::int[]))
           ORDER BY user_id, device_id FOR UPDATE`,
        [tallies.map((t) => t.userId), tallies.map((t) => t.deviceId)],
      );
      const stats = new Map(locked.rows.map((r) => [deviceRowId(r.user_id, r.device_id), r]));
      for (const t of tallies) {
        let s = stats.get(deviceRowId(t.userId, t.deviceId));
        if (!s) throw deviceNotFound(t.userId, t.deviceId);
        if (!fitsQueueLimits(this.#limits, s, t)) {
          // Expired envelopes still count until purged; purge this queue before refusing.
          const freed = await this.#purge(c, now, t.userId, t.deviceId);
          s = {
            ...s,
            queued_count: s.queued_count - freed.count,
            queued_bytes: s.queued_bytes - freed.bytes,
          };
          if (!fitsQueueLimits(this.#limits, s, t)) {
            throw new ServerError(
              'MAILBOX_FULL',
              `the mailbox of user ${t.userId} device ${t.deviceId} is full (${s.queued_count} envelopes, ${s.queued_bytes} bytes)`,
            );
          }
        }
      }
      // ORDER BY each envelope's index in the call: seq values are drawn in call order.
      const inserted = await c.query<{ seq: number; id: string }>(
        `INSERT INTO envelopes (id, recipient_user_id, recipient_device_id, sender_user_id, sender_device_id,
           created_at, size, body)
         SELECT id, ru, rd, su, sd, $9, size, body
           FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::int[], $6::int[], $7::bytea[], $8::int[])
             AS t(id, ru, rd, su, sd, size, body, ord)
           ORDER BY ord
         RETURNING seq, id`,
        [
          sealed.map((x) => x.id),
          sealed.map((x) => x.e.recipientUserId),
          sealed.map((x) => x.e.recipientDeviceId),
          sealed.map((x) => x.e.senderUserId),
          sealed.map((x) => x.e.senderDeviceId),
          sealed.map((x) => x.e.body.length),
          sealed.map((x) => x.body),
          sealed.map((_, i) => i),
          now,
        ],
      );
      const seqOf = new Map(inserted.rows.map((r) => [r.id, r.seq]));
      await c.query(
        `UPDATE devices d SET queued_count = d.queued_count + t.n, queued_bytes = d.queued_bytes + t.b
           FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS t(u, dv, n, b)
           WHERE d.user_id = t.u AND d.device_id = t.dv`,
        [
          tallies.map((t) => t.userId),
          tallies.map((t) => t.deviceId),
          tallies.map((t) => t.count),
          tallies.map((t) => t.bytes),
        ],
      );
      return sealed.map(
        ({ e, id }): EnvelopeReceipt => ({
          id,
          seq: seqOf.get(id)!,
          recipientUserId: e.recipientUserId,
          recipientDeviceId: e.recipientDeviceId,
        }),
      );
    });
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
    const o = aobject('options', options);
    const limit = o.limit === undefined ? DEFAULT_FETCH : aint('options.limit', o.limit, 1, MAX_FETCH);
    const afterSeq =
      o.afterSeq === undefined ? 0 : aint('options.afterSeq', o.afterSeq, 0, Number.MAX_SAFE_INTEGER);
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

  async ackEnvelopes(userId: string, deviceId: number, ids: readonly string[]): Promise<number> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const list = [...new Set(checkEnvelopeIds('ids', ids))];
    return this.#tx(async (c) => {
      // The device row before its envelopes, as enqueue's purge takes them.
      const dev = await c.query('SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2 FOR UPDATE', [
        userId,
        deviceId,
      ]);
      if (dev.rowCount === 0) throw deviceNotFound(userId, deviceId);
      if (list.length === 0) return 0;
      // The recipient columns in the WHERE clause make another device's ids a no-op.
      const r = await c.query<{ n: number }>(
        `WITH del AS (
           DELETE FROM envelopes WHERE id = ANY($3::text[]) AND recipient_user_id = $1 AND recipient_device_id = $2
           RETURNING size),
         sums AS (SELECT count(*) AS n, coalesce(sum(size), 0)::bigint AS b FROM del)
         UPDATE devices SET queued_count = queued_count - sums.n, queued_bytes = queued_bytes - sums.b
           FROM sums WHERE user_id = $1 AND device_id = $2
         RETURNING sums.n AS n`,
        [userId, deviceId, list],
      );
      return r.rows[0]?.n ?? 0;
    });
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

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Calls already under way finish (and commit) first; new ones get CLOSED.
    await Promise.allSettled([...this.#inflight]);
    await this.#pool.end().catch(() => undefined);
    this.#sealer.destroy();
    this.#lookupKey.fill(0);
  }
}
