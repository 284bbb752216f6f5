/**
 * The embedded storage backend: one SQLCipher file (see sqlcipher.ts) with the fields the
 * server does not route on sealed again by a FieldSealer, so the same rows would be
 * opaque in any backend.
 *
 * better-sqlite3 is synchronous, so each method runs start to finish without yielding:
 * within one process nothing interleaves. Across processes (or a second connection),
 * every read-modify-write runs in a BEGIN IMMEDIATE transaction, which takes SQLite's
 * write lock before the first read, so e.g. two bundle fetches can never both read the
 * same lowest one-time prekey.
 *
 * Group commit: with `synchronous=FULL` every COMMIT waits for an fsync, and the event loop
 * waits with it. The mailbox's hot writes (enqueue, ackEnvelopes) are therefore queued and
 * run together at the end of the event-loop turn they arrived in: ONE BEGIN IMMEDIATE
 * transaction, each request inside its own SAVEPOINT (better-sqlite3 nests transactions
 * that way), so a request that fails (MAILBOX_FULL, DEVICE_NOT_FOUND, ...) rolls back only
 * its own changes and rejects only its own promise. Every promise settles only after the
 * COMMIT returned: a resolved enqueue is on disk exactly as before. Requests run in the
 * order they were made, and any other write first runs what is queued, so writes keep
 * their call order; reads never see a queued write, whose promise has not resolved yet.
 */
import { dirname, join } from 'node:path';
import type Database from 'better-sqlite3-multiple-ciphers';
import {
  auditPredecessor,
  auditPublicKey,
  chainAuditRecord,
  checkAuditEntry,
  signAuditHead,
} from '../audit/chain.js';
import { isServerError, ServerError } from '../errors.js';
import { abytes, aint, aobject, astring } from '../validate.js';
import type { FieldSealer } from './field-sealer.js';
import { chunkStride, FILES_DIR, FileBlobs } from './file-blobs.js';
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
  parsePermissionsJson,
  permissionsJson,
  roleNotFound,
  scopeColumns,
  userNotFound,
} from './input.js';
import { migrate } from './migrations.js';
import {
  auditRecordFromBytes,
  type ChannelLogRow,
  type ChannelRow,
  customRole,
  DEVICE_INSERT_COLUMNS,
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
import { openSqlcipher, type SqliteDatabase } from './sqlcipher.js';
import { SQLITE_MIGRATIONS } from './sqlite-schema.js';
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
  FILE_CHUNK_OVERHEAD,
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

export interface SqliteStorageOptions {
  /** The database file (created 0600 if absent). */
  readonly path: string;
  /**
   * The directory of file contents (file-blobs.ts; created 0700 if absent). Default:
   * `files` beside the database.
   */
  readonly filesDir?: string;
  /** The raw 256-bit SQLCipher key: the `database` DEK. */
  readonly databaseKey: Uint8Array;
  /** Seals non-routing fields; the storage owns it from here and destroys it on close. */
  readonly sealer: FieldSealer;
  /** 32-byte HMAC key for enrolment-code hashes, so a stolen table cannot be brute-forced offline. */
  readonly lookupKey: Uint8Array;
  /** The 32-byte Ed25519 seed that signs the audit log's head (the `audit-signing` DEK). */
  readonly auditKey: Uint8Array;
  readonly limits?: Partial<StorageLimits>;
  /** Milliseconds since the epoch; injectable for tests. */
  readonly clock?: () => number;
  readonly synchronous?: 'FULL' | 'NORMAL';
}

interface UserRow {
  id: string;
  name: string;
  identity_key: Uint8Array | null;
  next_device_id: number;
  created_at: number;
}

interface DeviceRow {
  user_id: string;
  device_id: number;
  registration_id: number;
  name: Uint8Array;
  signed_prekey_id: number;
  signed_prekey: Uint8Array;
  signed_prekey_signature: Uint8Array;
  kyber_prekey_id: number;
  kyber_prekey: Uint8Array;
  kyber_prekey_signature: Uint8Array;
  queued_count: number;
  queued_bytes: number;
  created_at: number;
  otpk_count: number;
  auth_key: Uint8Array | null;
}

const DEVICE_COLUMNS = `d.*, (SELECT count(*) FROM one_time_prekeys o
  WHERE o.user_id = d.user_id AND o.device_id = d.device_id) AS otpk_count`;

/** The roles table's row; `permissions` is a JSON array (permissionsJson). */
interface RoleRow {
  name: string;
  permissions: string;
  created_at: number;
}

function toRole(row: RoleRow): Role {
  return customRole({ ...row, permissions: parsePermissionsJson(row.permissions) });
}

const CHANNEL_COLUMNS = `c.*, (SELECT count(*) FROM channel_members m WHERE m.channel_id = c.id) AS member_count`;

type Statement = Database.Statement;

/** A mailbox write waiting for the next group commit. */
interface GroupJob {
  readonly run: (db: SqliteDatabase) => unknown;
  readonly resolve: (value: never) => void;
  readonly reject: (reason: unknown) => void;
}

type GroupResult = { ok: true; value: unknown } | { ok: false; error: unknown };

export class SqliteStorage implements Storage {
  readonly #db: SqliteDatabase;
  readonly #statements = new Map<string, Statement>();
  readonly #sealer: FieldSealer;
  readonly #lookupKey: Uint8Array;
  /** The audit signing key's 32-byte Ed25519 seed (our copy; zeroed on close). */
  readonly #auditKey: Uint8Array;
  readonly #limits: StorageLimits;
  readonly #clock: () => number;
  readonly #blobs: FileBlobs;
  #closed = false;
  /** Mailbox writes waiting for the group commit scheduled in #groupTimer. */
  #group: GroupJob[] = [];
  #groupTimer: NodeJS.Immediate | undefined;
  /** One request of a group commit, in a SAVEPOINT (a nested better-sqlite3 transaction). */
  readonly #savepoint: (job: GroupJob, db: SqliteDatabase) => unknown;
  /** The group's enclosing transaction; run with `.immediate`. */
  readonly #groupTx: Database.Transaction<(jobs: readonly GroupJob[], results: GroupResult[]) => void>;

  private constructor(
    db: SqliteDatabase,
    o: SqliteStorageOptions,
    limits: StorageLimits,
    clock: () => number,
    blobs: FileBlobs,
  ) {
    this.#db = db;
    this.#blobs = blobs;
    this.#sealer = o.sealer;
    this.#lookupKey = Uint8Array.from(o.lookupKey);
    this.#auditKey = Uint8Array.from(o.auditKey);
    this.#limits = limits;
    this.#clock = clock;
    this.#savepoint = db.transaction((job: GroupJob, conn: SqliteDatabase) => job.run(conn));
    this.#groupTx = db.transaction((jobs: readonly GroupJob[], results: GroupResult[]) => {
      for (const job of jobs) {
        try {
          results.push({ ok: true, value: this.#savepoint(job, db) });
        } catch (error) {
          // An error that ended the whole transaction (SQLite rolls back on some I/O and
          // out-of-memory errors) must not let the later requests run in autocommit mode.
          if (!db.inTransaction) throw error;
          results.push({ ok: false, error });
        }
      }
    });
  }

  /**
   * Opens (creating if needed) the database and applies pending migrations. Throws
   * DATABASE_UNREADABLE for a wrong key and SCHEMA_TOO_NEW for a database from a newer server.
   */
  static async open(options: SqliteStorageOptions): Promise<SqliteStorage> {
    const o = aobject('options', options) as unknown as SqliteStorageOptions;
    astring('options.path', o.path, 1, 4096);
    abytes('options.databaseKey', o.databaseKey, 32);
    abytes('options.lookupKey', o.lookupKey, 32);
    checkAuditKey('options.auditKey', o.auditKey);
    if (typeof o.sealer?.seal !== 'function') {
      throw new ServerError('INVALID_ARGUMENT', '"options.sealer" expected FieldSealer');
    }
    const limits = checkLimits(DEFAULT_LIMITS, o.limits);
    const clock = o.clock ?? Date.now;
    const filesDir =
      o.filesDir === undefined
        ? join(dirname(o.path), FILES_DIR)
        : astring('options.filesDir', o.filesDir, 1, 4096);
    const db = openSqlcipher(o.path, o.databaseKey, o.synchronous ? { synchronous: o.synchronous } : {});
    let blobs: FileBlobs;
    try {
      migrate(db, SQLITE_MIGRATIONS, clock);
      blobs = new FileBlobs(filesDir);
      // Blobs a crash left without their row (deleted between the two).
      const exists = db.prepare('SELECT 1 FROM files WHERE id = ?').pluck();
      blobs.sweep((id) => exists.get(id) !== undefined);
    } catch (err) {
      db.close();
      throw err;
    }
    return new SqliteStorage(db, o, limits, clock, blobs);
  }

  /**
   * A prepared statement for `sql`, compiled once per connection. Preparing is a large part
   * of a small query's cost (the relay benchmark spent 6 % of the server's time in it).
   * Statements here are only ever run to completion (`get`, `all`, `run`), never iterated,
   * so sharing one between calls is safe; `pluck` is set by the one caller of each query.
   */
  #prep(db: SqliteDatabase, sql: string): Statement {
    let stmt = this.#statements.get(sql);
    if (stmt === undefined) {
      stmt = db.prepare(sql);
      this.#statements.set(sql, stmt);
    }
    return stmt;
  }

  /** The live connection, or CLOSED. */
  #conn(): SqliteDatabase {
    if (this.#closed) throw new ServerError('CLOSED', 'the storage was closed');
    return this.#db;
  }

  /** Runs `fn` in a BEGIN IMMEDIATE transaction: all or nothing, write lock held from the first read. */
  #tx<T>(fn: (db: SqliteDatabase) => T): T {
    const db = this.#conn();
    // Writes keep their call order: queued mailbox writes go first.
    if (this.#group.length > 0) this.#commitGroup();
    return db.transaction(() => fn(db)).immediate();
  }

  /** Runs `fn` in a read transaction: its reads see one snapshot of the database. */
  #read<T>(fn: (db: SqliteDatabase) => T): T {
    const db = this.#conn();
    return db.transaction(() => fn(db)).deferred();
  }

  /**
   * Queues `fn` for the next group commit (see the header) and resolves with its result
   * once that transaction has committed; rejects with its error, having changed nothing.
   */
  #grouped<T>(fn: (db: SqliteDatabase) => T): Promise<T> {
    this.#conn();
    return new Promise<T>((resolve, reject) => {
      this.#group.push({ run: fn, resolve: resolve as (value: never) => void, reject });
      this.#groupTimer ??= setImmediate(() => this.#commitGroup());
    });
  }

  /** Runs every queued mailbox write in one transaction, then settles their promises. */
  #commitGroup(): void {
    if (this.#groupTimer !== undefined) clearImmediate(this.#groupTimer);
    this.#groupTimer = undefined;
    const jobs = this.#group;
    if (jobs.length === 0) return;
    this.#group = [];
    const results: GroupResult[] = [];
    try {
      this.#conn();
      this.#groupTx.immediate(jobs, results);
    } catch (error) {
      // Nothing of this group committed.
      for (const job of jobs) job.reject(error);
      return;
    }
    for (let i = 0; i < jobs.length; i++) {
      const r = results[i]!;
      if (r.ok) jobs[i]!.resolve(r.value as never);
      else jobs[i]!.reject(r.error);
    }
  }

  // --- users ---------------------------------------------------------------------------

  #toUser(db: SqliteDatabase, row: UserRow): User {
    const roles = this.#prep(db, 'SELECT role FROM user_roles WHERE user_id = ? ORDER BY role')
      .pluck()
      .all(row.id) as string[];
    return openUser(this.#sealer, row, roles);
  }

  #userRow(db: SqliteDatabase, userId: string): UserRow {
    const row = this.#prep(db, 'SELECT * FROM users WHERE id = ?').get(userId) as UserRow | undefined;
    if (!row) throw userNotFound(userId);
    return row;
  }

  async createUser(input: { readonly name: string; readonly roles?: readonly string[] }): Promise<User> {
    const o = aobject('input', input);
    const name = checkUserName('input.name', o.name);
    const roles = checkRoles('input.roles', o.roles ?? []);
    return this.#tx((db) => {
      if (this.#prep(db, 'SELECT 1 FROM users WHERE name = ?').get(name)) {
        throw new ServerError('USER_EXISTS', `a user named ${name} already exists`);
      }
      for (const r of roles) this.#roleExists(db, r);
      const id = newId();
      this.#prep(db, 'INSERT INTO users (id, name, created_at) VALUES (?, ?, ?)').run(
        id,
        name,
        this.#clock(),
      );
      const addRole = this.#prep(db, 'INSERT INTO user_roles (user_id, role) VALUES (?, ?)');
      for (const r of roles) addRole.run(id, r);
      return this.#toUser(db, this.#userRow(db, id));
    });
  }

  async getUser(userId: string): Promise<User | undefined> {
    checkUserId('userId', userId);
    const db = this.#conn();
    const row = this.#prep(db, 'SELECT * FROM users WHERE id = ?').get(userId) as UserRow | undefined;
    return row && this.#toUser(db, row);
  }

  async findUserByName(name: string): Promise<User | undefined> {
    checkUserName('name', name);
    const db = this.#conn();
    const row = this.#prep(db, 'SELECT * FROM users WHERE name = ?').get(name) as UserRow | undefined;
    return row && this.#toUser(db, row);
  }

  async listUsers(): Promise<User[]> {
    const db = this.#conn();
    const rows = this.#prep(db, 'SELECT * FROM users ORDER BY name').all() as UserRow[];
    return rows.map((r) => this.#toUser(db, r));
  }

  async removeUser(userId: string): Promise<void> {
    checkUserId('userId', userId);
    const files = this.#tx((db) => {
      // Their files go with them (ON DELETE CASCADE); the blobs after the commit.
      const ids = this.#prep(db, 'SELECT id FROM files WHERE owner_id = ?').pluck().all(userId) as string[];
      if (this.#prep(db, 'DELETE FROM users WHERE id = ?').run(userId).changes === 0) {
        throw userNotFound(userId);
      }
      return ids;
    });
    await this.#removeBlobs(files);
  }

  async grantRole(userId: string, role: string): Promise<void> {
    checkUserId('userId', userId);
    checkUserName('role', role);
    this.#tx((db) => {
      this.#userRow(db, userId);
      this.#roleExists(db, role);
      this.#prep(db, 'INSERT OR IGNORE INTO user_roles (user_id, role) VALUES (?, ?)').run(userId, role);
    });
  }

  async revokeRole(userId: string, role: string): Promise<void> {
    checkUserId('userId', userId);
    checkUserName('role', role);
    this.#tx((db) => {
      this.#userRow(db, userId);
      this.#prep(db, 'DELETE FROM user_roles WHERE user_id = ? AND role = ?').run(userId, role);
    });
  }

  // --- enrolment -----------------------------------------------------------------------

  #codeHash(code: string): Uint8Array {
    return enrolmentCodeHash(this.#lookupKey, code);
  }

  async createEnrolmentCode(input: {
    readonly userId: string;
    readonly code: string;
    readonly expiresAt: number;
  }): Promise<void> {
    const now = this.#clock();
    const { userId, code, expiresAt } = checkNewEnrolmentCode(input, now);
    const hash = this.#codeHash(code);
    this.#tx((db) => {
      this.#userRow(db, userId);
      // One live code per user: issuing a new one revokes any earlier unused code.
      this.#prep(db, 'DELETE FROM enrolment_codes WHERE user_id = ?').run(userId);
      this.#prep(
        db,
        'INSERT INTO enrolment_codes (code_hash, user_id, expires_at, created_at) VALUES (?, ?, ?, ?)',
      ).run(hash, userId, expiresAt, now);
    });
  }

  async enrolDevice(input: { readonly code: string; readonly device: NewDevice }): Promise<Device> {
    const { code, device } = checkEnrolment(input, this.#limits);
    const invalid = enrolmentCodeInvalid;
    const hash = this.#codeHash(code);
    const now = this.#clock();
    return this.#tx((db) => {
      const row = this.#prep(db, 'SELECT user_id, expires_at FROM enrolment_codes WHERE code_hash = ?').get(
        hash,
      ) as { user_id: string; expires_at: number } | undefined;
      if (!row || row.expires_at <= now) throw invalid();
      this.#prep(db, 'DELETE FROM enrolment_codes WHERE code_hash = ?').run(hash);
      // An enrolment starts a new identity: the user's old devices (and their queues) go.
      this.#prep(db, 'DELETE FROM devices WHERE user_id = ?').run(row.user_id);
      this.#prep(db, 'UPDATE users SET identity_key = ? WHERE id = ?').run(
        this.#sealer.seal(identityKeyRef(row.user_id), device.identityKey),
        row.user_id,
      );
      return this.#insertDevice(db, row.user_id, device, now);
    });
  }

  // --- devices -------------------------------------------------------------------------

  #insertDevice(db: SqliteDatabase, userId: string, d: NewDevice, now: number): Device {
    const user = this.#userRow(db, userId);
    const count = this.#prep(db, 'SELECT count(*) FROM devices WHERE user_id = ?')
      .pluck()
      .get(userId) as number;
    checkDeviceRoom(this.#limits, userId, count);
    const deviceId = user.next_device_id;
    this.#prep(db, 'UPDATE users SET next_device_id = ? WHERE id = ?').run(deviceId + 1, userId);
    this.#prep(
      db,
      `INSERT INTO devices (${DEVICE_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ).run(...deviceInsertValues(this.#sealer, userId, deviceId, d, now));
    this.#insertPrekeys(db, userId, deviceId, d.oneTimePrekeys);
    return this.#deviceById(db, userId, deviceId);
  }

  #insertPrekeys(
    db: SqliteDatabase,
    userId: string,
    deviceId: number,
    prekeys: readonly OneTimePrekey[],
  ): void {
    const insert = this.#prep(
      db,
      'INSERT INTO one_time_prekeys (user_id, device_id, prekey_id, public_key) VALUES (?, ?, ?, ?)',
    );
    for (const p of prekeys) {
      insert.run(
        userId,
        deviceId,
        p.id,
        this.#sealer.seal(oneTimePrekeyRef(userId, deviceId, p.id), p.publicKey),
      );
    }
  }

  #toDevice(row: DeviceRow): Device {
    return openDevice(this.#sealer, row);
  }

  #deviceRow(db: SqliteDatabase, userId: string, deviceId: number): DeviceRow {
    const row = this.#prep(
      db,
      `SELECT ${DEVICE_COLUMNS} FROM devices d WHERE d.user_id = ? AND d.device_id = ?`,
    ).get(userId, deviceId) as DeviceRow | undefined;
    if (!row) throw deviceNotFound(userId, deviceId);
    return row;
  }

  #deviceById(db: SqliteDatabase, userId: string, deviceId: number): Device {
    return this.#toDevice(this.#deviceRow(db, userId, deviceId));
  }

  async addDevice(userId: string, device: NewDevice): Promise<Device> {
    checkUserId('userId', userId);
    const d = checkNewDevice('device', device, this.#limits);
    const now = this.#clock();
    return this.#tx((db) => {
      const user = this.#userRow(db, userId);
      checkSameIdentity(userId, openIdentityKey(this.#sealer, userId, user.identity_key), d.identityKey);
      return this.#insertDevice(db, userId, d, now);
    });
  }

  async getDevice(userId: string, deviceId: number): Promise<Device | undefined> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const db = this.#conn();
    const row = this.#prep(
      db,
      `SELECT ${DEVICE_COLUMNS} FROM devices d WHERE d.user_id = ? AND d.device_id = ?`,
    ).get(userId, deviceId) as DeviceRow | undefined;
    return row && this.#toDevice(row);
  }

  async listDevices(userId: string): Promise<Device[]> {
    checkUserId('userId', userId);
    const db = this.#conn();
    this.#userRow(db, userId);
    const rows = this.#prep(
      db,
      `SELECT ${DEVICE_COLUMNS} FROM devices d WHERE d.user_id = ? ORDER BY d.device_id`,
    ).all(userId) as DeviceRow[];
    return rows.map((r) => this.#toDevice(r));
  }

  async removeDevice(userId: string, deviceId: number): Promise<void> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    this.#tx((db) => {
      const res = this.#prep(db, 'DELETE FROM devices WHERE user_id = ? AND device_id = ?').run(
        userId,
        deviceId,
      );
      if (res.changes === 0) throw deviceNotFound(userId, deviceId);
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
    return this.#tx((db) => {
      const row = this.#deviceRow(db, userId, deviceId);
      const exists = this.#prep(
        db,
        'SELECT 1 FROM one_time_prekeys WHERE user_id = ? AND device_id = ? AND prekey_id = ?',
      );
      for (const p of list) {
        if (exists.get(userId, deviceId, p.id)) {
          throw new ServerError('PREKEY_EXISTS', `device ${deviceId} already has one-time prekey ${p.id}`);
        }
      }
      checkPrekeyRoom(this.#limits, deviceId, row.otpk_count, list.length);
      this.#insertPrekeys(db, userId, deviceId, list);
      return row.otpk_count + list.length;
    });
  }

  #setPrekey(userId: string, deviceId: number, p: SignedPrekey, kind: 'signed' | 'kyber'): void {
    const sealed = sealSignedPrekey(this.#sealer, userId, deviceId, kind, p);
    this.#tx((db) => {
      const res = this.#prep(
        db,
        `UPDATE devices SET ${kind}_prekey_id = ?, ${kind}_prekey = ?, ${kind}_prekey_signature = ?
           WHERE user_id = ? AND device_id = ?`,
      ).run(p.id, sealed.publicKey, sealed.signature, userId, deviceId);
      if (res.changes === 0) throw deviceNotFound(userId, deviceId);
    });
  }

  async setSignedPrekey(userId: string, deviceId: number, prekey: SignedPrekey): Promise<void> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    this.#setPrekey(userId, deviceId, checkSignedPrekey('prekey', prekey, 'ec'), 'signed');
  }

  async setKyberPrekey(userId: string, deviceId: number, prekey: SignedPrekey): Promise<void> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    this.#setPrekey(userId, deviceId, checkSignedPrekey('prekey', prekey, 'kyber'), 'kyber');
  }

  async fetchPrekeyBundles(
    userId: string,
    options: { readonly deviceId?: number } = {},
  ): Promise<PrekeyBundle[]> {
    checkUserId('userId', userId);
    const only = checkBundleOptions(options).deviceId;
    return this.#tx((db) => {
      const user = this.#userRow(db, userId);
      const rows =
        only === undefined
          ? (this.#prep(
              db,
              `SELECT ${DEVICE_COLUMNS} FROM devices d WHERE d.user_id = ? ORDER BY d.device_id`,
            ).all(userId) as DeviceRow[])
          : [this.#deviceRow(db, userId, only)];
      if (rows.length === 0 || user.identity_key === null) return [];
      const identityKey = this.#sealer.open(identityKeyRef(userId), user.identity_key);
      // Take the lowest id and delete it in one statement, inside the write transaction.
      const take = this.#prep(
        db,
        `DELETE FROM one_time_prekeys WHERE user_id = ? AND device_id = ? AND prekey_id =
           (SELECT min(prekey_id) FROM one_time_prekeys WHERE user_id = ? AND device_id = ?)
         RETURNING prekey_id, public_key`,
      );
      return rows.map((row) =>
        prekeyBundle(
          this.#sealer,
          row,
          identityKey,
          take.get(userId, row.device_id, userId, row.device_id) as
            | { prekey_id: number; public_key: Uint8Array }
            | undefined,
        ),
      );
    });
  }

  // --- mailbox -------------------------------------------------------------------------

  async enqueue(envelopes: readonly NewEnvelope[]): Promise<EnvelopeReceipt[]> {
    const list = checkEnvelopes('envelopes', envelopes, this.#limits);
    const now = this.#clock();
    // Seal before taking the write lock: AES-GCM over large bodies need not block other writers.
    const sealed = list.map((e) => {
      const id = newId();
      return { e, id, body: this.#sealer.seal(envelopeBodyRef(id), e.body) };
    });
    const perRecipient = tallyRecipients(list);
    return this.#grouped((db) => {
      const stats = this.#prep(
        db,
        'SELECT queued_count, queued_bytes FROM devices WHERE user_id = ? AND device_id = ?',
      );
      const bump = this.#prep(
        db,
        'UPDATE devices SET queued_count = queued_count + ?, queued_bytes = queued_bytes + ? WHERE user_id = ? AND device_id = ?',
      );
      for (const r of perRecipient.values()) {
        let s = stats.get(r.userId, r.deviceId) as { queued_count: number; queued_bytes: number } | undefined;
        if (!s) throw deviceNotFound(r.userId, r.deviceId);
        if (!fitsQueueLimits(this.#limits, s, r)) {
          // Expired envelopes still count until purged; purge this queue before refusing.
          this.#purge(db, now, r.userId, r.deviceId);
          s = stats.get(r.userId, r.deviceId) as { queued_count: number; queued_bytes: number };
          if (!fitsQueueLimits(this.#limits, s, r)) throw mailboxFull(r.userId, r.deviceId, s);
        }
      }
      const insert = this.#prep(
        db,
        `INSERT INTO envelopes (id, recipient_user_id, recipient_device_id, sender_user_id, sender_device_id,
           created_at, size, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
      );
      const receipts = sealed.map(({ e, id, body }): EnvelopeReceipt => {
        const res = insert.run(
          id,
          e.recipientUserId,
          e.recipientDeviceId,
          e.senderUserId,
          e.senderDeviceId,
          now,
          e.body.length,
          body,
        );
        return {
          id,
          seq: Number(res.lastInsertRowid),
          recipientUserId: e.recipientUserId,
          recipientDeviceId: e.recipientDeviceId,
        };
      });
      for (const r of perRecipient.values()) bump.run(r.count, r.bytes, r.userId, r.deviceId);
      return receipts;
    });
  }

  /** Deletes expired envelopes (of one device, or all) and keeps the counters in step. Call inside a transaction. */
  #purge(db: SqliteDatabase, now: number, userId?: string, deviceId?: number): number {
    const cutoff = now - this.#limits.maxEnvelopeAgeMs;
    const deleted = (
      userId === undefined
        ? this.#prep(
            db,
            'DELETE FROM envelopes WHERE created_at < ? RETURNING recipient_user_id AS u, recipient_device_id AS d, size',
          ).all(cutoff)
        : this.#prep(
            db,
            `DELETE FROM envelopes WHERE recipient_user_id = ? AND recipient_device_id = ? AND created_at < ?
               RETURNING recipient_user_id AS u, recipient_device_id AS d, size`,
          ).all(userId, deviceId, cutoff)
    ) as { u: string; d: number; size: number }[];
    this.#debit(db, deleted);
    return deleted.length;
  }

  /** Subtracts deleted envelopes from their devices' counters. */
  #debit(db: SqliteDatabase, deleted: readonly { u: string; d: number; size: number }[]): void {
    const sums = new Map<string, { u: string; d: number; count: number; bytes: number }>();
    for (const x of deleted) {
      const k = deviceRowId(x.u, x.d);
      const acc = sums.get(k) ?? { u: x.u, d: x.d, count: 0, bytes: 0 };
      acc.count++;
      acc.bytes += x.size;
      sums.set(k, acc);
    }
    const debit = this.#prep(
      db,
      'UPDATE devices SET queued_count = queued_count - ?, queued_bytes = queued_bytes - ? WHERE user_id = ? AND device_id = ?',
    );
    for (const s of sums.values()) debit.run(s.count, s.bytes, s.u, s.d);
  }

  async fetchEnvelopes(
    userId: string,
    deviceId: number,
    options: { readonly limit?: number; readonly afterSeq?: number } = {},
  ): Promise<Envelope[]> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const { limit, afterSeq } = checkFetchOptions(options);
    const db = this.#conn();
    const rows = this.#prep(
      db,
      `SELECT seq, id, recipient_user_id, recipient_device_id, sender_user_id, sender_device_id, created_at, body
         FROM envelopes WHERE recipient_user_id = ? AND recipient_device_id = ? AND seq > ? AND created_at >= ?
         ORDER BY seq LIMIT ?`,
    ).all(userId, deviceId, afterSeq, this.#clock() - this.#limits.maxEnvelopeAgeMs, limit) as EnvelopeRow[];
    // A device's envelopes are deleted with it, so only an empty page needs the device check.
    if (rows.length === 0) this.#deviceExists(db, userId, deviceId);
    return rows.map((r) => openEnvelope(this.#sealer, r));
  }

  async ackEnvelopes(userId: string, deviceId: number, ids: readonly string[]): Promise<number> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const list = checkEnvelopeIds('ids', ids);
    return this.#grouped((db) => {
      // The recipient columns in the WHERE clause make another device's ids a no-op.
      const del = this.#prep(
        db,
        `DELETE FROM envelopes WHERE id = ? AND recipient_user_id = ? AND recipient_device_id = ?
         RETURNING size`,
      ).pluck();
      let count = 0;
      let bytes = 0;
      for (const id of new Set(list)) {
        const size = del.get(id, userId, deviceId) as number | undefined;
        if (size === undefined) continue;
        count++;
        bytes += size;
      }
      if (count === 0) {
        // Only when nothing matched can the device be missing (its envelopes go with it).
        this.#deviceExists(db, userId, deviceId);
        return 0;
      }
      this.#prep(
        db,
        'UPDATE devices SET queued_count = queued_count - ?, queued_bytes = queued_bytes - ? WHERE user_id = ? AND device_id = ?',
      ).run(count, bytes, userId, deviceId);
      return count;
    });
  }

  /** Throws DEVICE_NOT_FOUND unless the device exists. */
  #deviceExists(db: SqliteDatabase, userId: string, deviceId: number): void {
    if (!this.#prep(db, 'SELECT 1 FROM devices WHERE user_id = ? AND device_id = ?').get(userId, deviceId)) {
      throw deviceNotFound(userId, deviceId);
    }
  }

  async mailboxStats(userId: string, deviceId: number): Promise<MailboxStats> {
    checkUserId('userId', userId);
    checkDeviceId('deviceId', deviceId);
    const row = this.#prep(
      this.#conn(),
      'SELECT queued_count, queued_bytes FROM devices WHERE user_id = ? AND device_id = ?',
    ).get(userId, deviceId) as { queued_count: number; queued_bytes: number } | undefined;
    if (!row) throw deviceNotFound(userId, deviceId);
    return { count: row.queued_count, bytes: row.queued_bytes };
  }

  async purgeExpiredEnvelopes(): Promise<number> {
    const now = this.#clock();
    return this.#tx((db) => this.#purge(db, now));
  }

  // --- roles and grants ----------------------------------------------------------------

  /** The role, built-in or stored, or undefined. */
  #role(db: SqliteDatabase, name: string): Role | undefined {
    const builtin = builtinRole(name);
    if (builtin) return builtin;
    const row = this.#prep(db, 'SELECT name, permissions, created_at FROM roles WHERE name = ?').get(name) as
      | RoleRow
      | undefined;
    return row && toRole(row);
  }

  /** Throws ROLE_NOT_FOUND unless the role exists. */
  #roleExists(db: SqliteDatabase, name: string): void {
    if (!this.#role(db, name)) throw roleNotFound(name);
  }

  #unitExists(db: SqliteDatabase, unitId: string): void {
    if (!this.#prep(db, 'SELECT 1 FROM org_units WHERE id = ?').get(unitId)) {
      throw orgUnitNotFound(unitId);
    }
  }

  #channelRow(db: SqliteDatabase, channelId: string): ChannelRow {
    const row = this.#prep(db, `SELECT ${CHANNEL_COLUMNS} FROM channels c WHERE c.id = ?`).get(channelId) as
      | ChannelRow
      | undefined;
    if (!row) throw channelNotFound(channelId);
    return row;
  }

  async listRoles(): Promise<Role[]> {
    const db = this.#conn();
    const rows = this.#prep(db, 'SELECT name, permissions, created_at FROM roles').all() as RoleRow[];
    return allRoles(rows.map(toRole));
  }

  async getRole(name: string): Promise<Role | undefined> {
    checkRoleName('name', name);
    return this.#role(this.#conn(), name);
  }

  async createRole(input: { readonly name: string; readonly permissions: readonly string[] }): Promise<Role> {
    const { name, permissions } = checkNewRole(input);
    if (builtinRole(name)) throw new ServerError('ROLE_EXISTS', `${name} is a built-in role`);
    const now = this.#clock();
    return this.#tx((db) => {
      if (this.#prep(db, 'SELECT 1 FROM roles WHERE name = ?').get(name)) {
        throw new ServerError('ROLE_EXISTS', `a role named ${name} already exists`);
      }
      this.#prep(db, 'INSERT INTO roles (name, permissions, created_at) VALUES (?, ?, ?)').run(
        name,
        permissionsJson(permissions),
        now,
      );
      return { name, builtin: false, permissions, createdAt: now };
    });
  }

  async deleteRole(name: string): Promise<void> {
    checkRoleName('name', name);
    if (builtinRole(name)) throw new ServerError('ROLE_BUILTIN', `${name} is a built-in role`);
    this.#tx((db) => {
      if (!this.#prep(db, 'SELECT 1 FROM roles WHERE name = ?').get(name)) {
        throw roleNotFound(name);
      }
      if (
        this.#prep(db, 'SELECT 1 FROM user_roles WHERE role = ? LIMIT 1').get(name) ||
        this.#prep(db, 'SELECT 1 FROM grants WHERE role = ? LIMIT 1').get(name)
      ) {
        throw new ServerError('ROLE_IN_USE', `role ${name} is still granted`);
      }
      this.#prep(db, 'DELETE FROM roles WHERE name = ?').run(name);
    });
  }

  async addGrant(grant: Grant): Promise<void> {
    const g = checkGrant('grant', grant);
    this.#tx((db) => {
      this.#userRow(db, g.userId);
      this.#roleExists(db, g.role);
      if (g.scope.kind === 'global') {
        this.#prep(db, 'INSERT OR IGNORE INTO user_roles (user_id, role) VALUES (?, ?)').run(
          g.userId,
          g.role,
        );
        return;
      }
      const { kind, id } = scopeColumns(g.scope);
      if (kind === 'unit') this.#unitExists(db, id);
      else this.#channelRow(db, id);
      this.#prep(
        db,
        'INSERT OR IGNORE INTO grants (user_id, role, scope_kind, scope_id) VALUES (?, ?, ?, ?)',
      ).run(g.userId, g.role, kind, id);
    });
  }

  async removeGrant(grant: Grant): Promise<void> {
    const g = checkGrant('grant', grant);
    this.#tx((db) => {
      if (g.scope.kind === 'global') {
        this.#prep(db, 'DELETE FROM user_roles WHERE user_id = ? AND role = ?').run(g.userId, g.role);
        return;
      }
      const { kind, id } = scopeColumns(g.scope);
      this.#prep(
        db,
        'DELETE FROM grants WHERE user_id = ? AND role = ? AND scope_kind = ? AND scope_id = ?',
      ).run(g.userId, g.role, kind, id);
    });
  }

  async listGrants(filter: { readonly userId?: string } = {}): Promise<Grant[]> {
    const { userId } = checkListGrantsFilter(filter);
    const db = this.#conn();
    const sql = `SELECT user_id, role, 'global' AS kind, '' AS scope_id FROM user_roles${userId ? ' WHERE user_id = ?' : ''}
      UNION ALL SELECT user_id, role, scope_kind, scope_id FROM grants${userId ? ' WHERE user_id = ?' : ''}`;
    const rows = (userId ? this.#prep(db, sql).all(userId, userId) : this.#prep(db, sql).all()) as {
      user_id: string;
      role: string;
      kind: string;
      scope_id: string;
    }[];
    return rows.map((r) => grantFromColumns(r.user_id, r.role, r.kind, r.scope_id)).sort(compareGrants);
  }

  // --- org units -----------------------------------------------------------------------

  async createOrgUnit(input: { readonly name: string; readonly parentId?: string }): Promise<OrgUnit> {
    const { name, parentId } = checkNewOrgUnit(input);
    const now = this.#clock();
    return this.#tx((db) => {
      if (this.#prep(db, 'SELECT 1 FROM org_units WHERE name = ?').get(name)) {
        throw new ServerError('ORG_UNIT_EXISTS', `an org unit named ${name} already exists`);
      }
      if (parentId !== undefined) this.#unitExists(db, parentId);
      const id = newId();
      this.#prep(db, 'INSERT INTO org_units (id, name, parent_id, created_at) VALUES (?, ?, ?, ?)').run(
        id,
        name,
        parentId ?? null,
        now,
      );
      return { id, name, parentId, createdAt: now };
    });
  }

  async getOrgUnit(id: string): Promise<OrgUnit | undefined> {
    checkHexId('id', id);
    const row = this.#prep(this.#conn(), 'SELECT * FROM org_units WHERE id = ?').get(id) as
      | OrgUnitRow
      | undefined;
    return row && toOrgUnit(row);
  }

  async findOrgUnitByName(name: string): Promise<OrgUnit | undefined> {
    checkUserName('name', name);
    const row = this.#prep(this.#conn(), 'SELECT * FROM org_units WHERE name = ?').get(name) as
      | OrgUnitRow
      | undefined;
    return row && toOrgUnit(row);
  }

  async listOrgUnits(): Promise<OrgUnit[]> {
    const rows = this.#prep(this.#conn(), 'SELECT * FROM org_units ORDER BY name').all() as OrgUnitRow[];
    return rows.map(toOrgUnit);
  }

  async removeOrgUnit(id: string): Promise<void> {
    checkHexId('id', id);
    this.#tx((db) => {
      this.#unitExists(db, id);
      const inUse: [string, string][] = [
        ['SELECT 1 FROM org_units WHERE parent_id = ? LIMIT 1', 'sub-units'],
        ['SELECT 1 FROM user_org_units WHERE unit_id = ? LIMIT 1', 'users'],
        ['SELECT 1 FROM channels WHERE unit_id = ? LIMIT 1', 'channels'],
        ["SELECT 1 FROM grants WHERE scope_kind = 'unit' AND scope_id = ? LIMIT 1", 'grants'],
      ];
      for (const [sql, what] of inUse) {
        if (this.#prep(db, sql).get(id)) {
          throw new ServerError('ORG_UNIT_NOT_EMPTY', `org unit ${id} still has ${what}`);
        }
      }
      this.#prep(db, 'DELETE FROM org_units WHERE id = ?').run(id);
    });
  }

  async addUserToOrgUnit(userId: string, unitId: string): Promise<void> {
    checkUserId('userId', userId);
    checkHexId('unitId', unitId);
    this.#tx((db) => {
      this.#userRow(db, userId);
      this.#unitExists(db, unitId);
      this.#prep(db, 'INSERT OR IGNORE INTO user_org_units (user_id, unit_id) VALUES (?, ?)').run(
        userId,
        unitId,
      );
    });
  }

  async removeUserFromOrgUnit(userId: string, unitId: string): Promise<void> {
    checkUserId('userId', userId);
    checkHexId('unitId', unitId);
    this.#tx((db) => {
      this.#prep(db, 'DELETE FROM user_org_units WHERE user_id = ? AND unit_id = ?').run(userId, unitId);
    });
  }

  async listUserOrgUnits(userId: string): Promise<string[]> {
    checkUserId('userId', userId);
    return this.#prep(this.#conn(), 'SELECT unit_id FROM user_org_units WHERE user_id = ? ORDER BY unit_id')
      .pluck()
      .all(userId) as string[];
  }

  async listOrgUnitUsers(unitId: string): Promise<string[]> {
    checkHexId('unitId', unitId);
    return this.#prep(this.#conn(), 'SELECT user_id FROM user_org_units WHERE unit_id = ? ORDER BY user_id')
      .pluck()
      .all(unitId) as string[];
  }

  // --- channels ------------------------------------------------------------------------

  async createChannel(input: {
    readonly id: string;
    readonly name: string;
    readonly unitId?: string;
    readonly createdBy: string;
    readonly genesis: { readonly change: Uint8Array; readonly signature: Uint8Array };
  }): Promise<Channel> {
    const c = checkNewChannel(input);
    const sealed = sealChannelLogEntry(this.#sealer, c.id, { seq: 0, ...c.genesis });
    const now = this.#clock();
    return this.#tx((db) => {
      if (this.#prep(db, 'SELECT 1 FROM channels WHERE id = ? OR name = ?').get(c.id, c.name)) {
        throw new ServerError('CHANNEL_EXISTS', `a channel with id ${c.id} or name ${c.name} already exists`);
      }
      this.#userRow(db, c.createdBy);
      if (c.unitId !== undefined) this.#unitExists(db, c.unitId);
      this.#prep(
        db,
        'INSERT INTO channels (id, name, unit_id, created_by, seq, created_at) VALUES (?, ?, ?, ?, 0, ?)',
      ).run(c.id, c.name, c.unitId ?? null, c.createdBy, now);
      this.#prep(db, 'INSERT INTO channel_log (channel_id, seq, change, signature) VALUES (?, 0, ?, ?)').run(
        c.id,
        sealed.change,
        sealed.signature,
      );
      this.#prep(
        db,
        "INSERT INTO channel_members (channel_id, user_id, role, added_seq) VALUES (?, ?, 'manager', 0)",
      ).run(c.id, c.createdBy);
      return toChannel(this.#channelRow(db, c.id));
    });
  }

  async getChannel(id: string): Promise<Channel | undefined> {
    checkHexId('id', id);
    const row = this.#prep(this.#conn(), `SELECT ${CHANNEL_COLUMNS} FROM channels c WHERE c.id = ?`).get(
      id,
    ) as ChannelRow | undefined;
    return row && toChannel(row);
  }

  async findChannelByName(name: string): Promise<Channel | undefined> {
    checkUserName('name', name);
    const row = this.#prep(this.#conn(), `SELECT ${CHANNEL_COLUMNS} FROM channels c WHERE c.name = ?`).get(
      name,
    ) as ChannelRow | undefined;
    return row && toChannel(row);
  }

  async listChannels(filter: { readonly memberUserId?: string } = {}): Promise<Channel[]> {
    const { memberUserId } = checkListChannelsFilter(filter);
    const db = this.#conn();
    const rows = (
      memberUserId === undefined
        ? this.#prep(db, `SELECT ${CHANNEL_COLUMNS} FROM channels c ORDER BY c.name`).all()
        : this.#prep(
            db,
            `SELECT ${CHANNEL_COLUMNS} FROM channels c
               WHERE c.id IN (SELECT channel_id FROM channel_members WHERE user_id = ?) ORDER BY c.name`,
          ).all(memberUserId)
    ) as ChannelRow[];
    return rows.map(toChannel);
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
    return this.#tx((db) => {
      const ch = this.#channelRow(db, channelId);
      if (e.seq !== ch.seq + 1) {
        throw new ServerError(
          'CHANNEL_CONFLICT',
          `channel ${channelId} is at seq ${ch.seq}; a change for seq ${e.seq} does not follow it`,
        );
      }
      if (fx.kind === 'add') this.#userRow(db, fx.userId);
      this.#prep(db, 'INSERT INTO channel_log (channel_id, seq, change, signature) VALUES (?, ?, ?, ?)').run(
        channelId,
        e.seq,
        sealed.change,
        sealed.signature,
      );
      if (fx.kind === 'add') {
        this.#prep(
          db,
          `INSERT INTO channel_members (channel_id, user_id, role, added_seq) VALUES (?, ?, ?, ?)
             ON CONFLICT (channel_id, user_id) DO UPDATE SET role = excluded.role, added_seq = excluded.added_seq`,
        ).run(channelId, fx.userId, fx.role, e.seq);
      } else {
        this.#prep(db, 'DELETE FROM channel_members WHERE channel_id = ? AND user_id = ?').run(
          channelId,
          fx.userId,
        );
        this.#prep(
          db,
          "DELETE FROM grants WHERE user_id = ? AND scope_kind = 'channel' AND scope_id = ?",
        ).run(fx.userId, channelId);
      }
      this.#prep(db, 'UPDATE channels SET seq = ? WHERE id = ?').run(e.seq, channelId);
      return toChannel(this.#channelRow(db, channelId));
    });
  }

  async channelLog(
    channelId: string,
    options: { readonly afterSeq?: number; readonly limit?: number } = {},
  ): Promise<ChannelLogEntry[]> {
    checkHexId('channelId', channelId);
    const { afterSeq, limit } = checkChannelLogOptions(options);
    return this.#read((db) => {
      this.#channelRow(db, channelId);
      const rows = this.#prep(
        db,
        'SELECT seq, change, signature FROM channel_log WHERE channel_id = ? AND seq > ? ORDER BY seq LIMIT ?',
      ).all(channelId, afterSeq, limit) as ChannelLogRow[];
      return rows.map((r) => openChannelLogEntry(this.#sealer, channelId, r));
    });
  }

  async channelMembers(channelId: string): Promise<ChannelMembership[]> {
    checkHexId('channelId', channelId);
    return this.#read((db) => {
      this.#channelRow(db, channelId);
      const rows = this.#prep(
        db,
        'SELECT user_id, role, added_seq FROM channel_members WHERE channel_id = ? ORDER BY user_id',
      ).all(channelId) as MemberRow[];
      return rows.map(toMembership);
    });
  }

  async channelMembership(channelId: string, userId: string): Promise<ChannelMembership | undefined> {
    checkHexId('channelId', channelId);
    checkUserId('userId', userId);
    const row = this.#prep(
      this.#conn(),
      'SELECT user_id, role, added_seq FROM channel_members WHERE channel_id = ? AND user_id = ?',
    ).get(channelId, userId) as MemberRow | undefined;
    return row && toMembership(row);
  }

  async channelMemberDevices(channelId: string): Promise<{ userId: string; deviceId: number }[]> {
    checkHexId('channelId', channelId);
    return this.#read((db) => {
      this.#channelRow(db, channelId);
      const rows = this.#prep(
        db,
        `SELECT d.user_id, d.device_id FROM channel_members m
           JOIN devices d ON d.user_id = m.user_id
           WHERE m.channel_id = ? ORDER BY d.user_id, d.device_id`,
      ).all(channelId) as { user_id: string; device_id: number }[];
      return rows.map((r) => ({ userId: r.user_id, deviceId: r.device_id }));
    });
  }

  async removeChannel(id: string): Promise<void> {
    checkHexId('id', id);
    this.#tx((db) => {
      this.#channelRow(db, id);
      this.#prep(db, "DELETE FROM grants WHERE scope_kind = 'channel' AND scope_id = ?").run(id);
      // The log and the member table go with it (ON DELETE CASCADE).
      this.#prep(db, 'DELETE FROM channels WHERE id = ?').run(id);
    });
  }

  // --- audit log -----------------------------------------------------------------------

  async appendAudit(entry: AuditEntry): Promise<AuditRecord> {
    const checked = checkAuditEntry(entry);
    return this.#tx((db) => {
      const last = this.#prep(db, 'SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1').get() as
        | { seq: number; hash: string }
        | undefined;
      const head = this.#prep(db, 'SELECT seq, hash FROM audit_head WHERE id = 1').get() as
        | { seq: number; hash: string }
        | undefined;
      const { record, bytes } = chainAuditRecord(auditPredecessor(last, head), checked);
      this.#prep(db, 'INSERT INTO audit_log (seq, at, hash, record) VALUES (?, ?, ?, ?)').run(
        record.seq,
        record.at,
        record.hash,
        sealAuditRecord(this.#sealer, bytes),
      );
      this.#prep(
        db,
        `INSERT INTO audit_head (id, seq, hash, signature) VALUES (1, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, signature = excluded.signature`,
      ).run(record.seq, record.hash, signAuditHead(this.#auditKey, record.seq, record.hash));
      return record;
    });
  }

  async listAudit(
    options: { readonly afterSeq?: number; readonly since?: number; readonly limit?: number } = {},
  ): Promise<AuditRecord[]> {
    const { afterSeq, since, limit } = checkAuditListOptions(options);
    const rows = this.#prep(
      this.#conn(),
      'SELECT seq, record FROM audit_log WHERE seq > ? AND at >= ? ORDER BY seq LIMIT ?',
    ).all(afterSeq, since, limit) as { seq: number; record: Uint8Array }[];
    return rows.map((r) => auditRecordFromBytes(r.seq, openAuditRecord(this.#sealer, r.record)));
  }

  async verifyAudit(): Promise<AuditVerification> {
    const { rows, head } = this.#read((db) => ({
      rows: this.#prep(db, 'SELECT seq, hash, record FROM audit_log ORDER BY seq').all() as {
        seq: number;
        hash: string;
        record: Uint8Array;
      }[],
      head: this.#prep(db, 'SELECT seq, hash, signature FROM audit_head WHERE id = 1').get() as
        | { seq: number; hash: string; signature: Uint8Array }
        | undefined,
    }));
    return verifySealedAudit(this.#sealer, auditPublicKey(this.#auditKey), rows, head);
  }

  // --- files ---------------------------------------------------------------------------

  #fileRow(db: SqliteDatabase, fileId: string): FileRow | undefined {
    return this.#prep(db, 'SELECT * FROM files WHERE id = ?').get(fileId) as FileRow | undefined;
  }

  #fileOf(db: SqliteDatabase, fileId: string): StoredFile {
    const row = this.#fileRow(db, fileId);
    if (!row) throw fileNotFound(fileId);
    return openFileRow(this.#sealer, row);
  }

  #usage(db: SqliteDatabase, userId: string): number {
    return this.#prep(db, 'SELECT coalesce(sum(size), 0) FROM files WHERE owner_id = ?')
      .pluck()
      .get(userId) as number;
  }

  async createFile(file: NewFile, limits: FileLimits): Promise<StoredFile> {
    const f = checkNewFile(file);
    const l = checkFileLimits(limits);
    const recipients = sealFileRecipients(this.#sealer, f.id, f.recipients);
    const now = this.#clock();
    return this.#tx((db) => {
      this.#userRow(db, f.ownerId);
      if (this.#fileRow(db, f.id)) {
        throw new ServerError('INVALID_ARGUMENT', `a file with id ${f.id} already exists`);
      }
      // Under the write lock (BEGIN IMMEDIATE): no other creation can slip in between.
      checkFileFits(f, l, this.#usage(db, f.ownerId));
      this.#prep(
        db,
        `INSERT INTO files (id, owner_id, size, chunk_size, received, recipients, key_id, wrapped_key, created_at, updated_at)
         VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?)`,
      ).run(
        f.id,
        f.ownerId,
        f.size,
        f.chunkSize,
        recipients,
        f.wrappedKey.keyId,
        f.wrappedKey.ciphertext,
        now,
        now,
      );
      return this.#fileOf(db, f.id);
    });
  }

  async getFile(fileId: string): Promise<StoredFile | undefined> {
    checkHexId('fileId', fileId);
    const row = this.#fileRow(this.#conn(), fileId);
    return row && openFileRow(this.#sealer, row);
  }

  /** Removes the blobs of files whose rows were deleted (a failure leaves them to the next start's sweep). */
  async #removeBlobs(fileIds: readonly string[]): Promise<void> {
    for (const id of fileIds) await this.#blobs.remove(id).catch(() => undefined);
  }

  async appendFileChunks(fileId: string, chunks: readonly NewFileChunk[]): Promise<StoredFile> {
    checkHexId('fileId', fileId);
    const list = checkFileChunks(chunks);
    // One append per file at a time in this process: the blob below `received` is never
    // written again once committed (file-blobs.ts).
    return this.#blobs.exclusive(fileId, async () => {
      const row = this.#fileRow(this.#conn(), fileId);
      if (!row) throw fileNotFound(fileId);
      const layout = { size: row.size, chunkSize: row.chunk_size, received: row.received };
      checkNextChunks(fileId, layout, list);
      // The chunks reach stable storage before `received` says they are there.
      try {
        await this.#blobs.write(
          fileId,
          list[0]!.index * chunkStride(row.chunk_size),
          list.map((c) => c.data),
          row.received === 0,
        );
      } catch (err) {
        if (isServerError(err, 'FILE_CORRUPT') && !this.#fileRow(this.#conn(), fileId)) {
          throw fileNotFound(fileId);
        }
        throw err;
      }
      const now = this.#clock();
      try {
        return this.#tx((db) => {
          const r = this.#fileRow(db, fileId);
          if (!r) throw fileNotFound(fileId);
          // Another process may have appended meanwhile: then nothing is committed here.
          const received = checkNextChunks(
            fileId,
            { size: r.size, chunkSize: r.chunk_size, received: r.received },
            list,
          );
          this.#prep(db, 'UPDATE files SET received = ?, updated_at = ? WHERE id = ?').run(
            received,
            now,
            fileId,
          );
          return this.#fileOf(db, fileId);
        });
      } catch (err) {
        // Deleted while its chunks were being written: the blob just written is garbage.
        if (isServerError(err, 'FILE_NOT_FOUND')) await this.#removeBlobs([fileId]);
        throw err;
      }
    });
  }

  async readFileChunks(fileId: string, first: number, count: number): Promise<FileChunk[]> {
    checkHexId('fileId', fileId);
    const r = checkFileRange(first, count);
    const row = this.#fileRow(this.#conn(), fileId);
    if (!row) throw fileNotFound(fileId);
    const cs = row.chunk_size;
    // Only chunks below `received`: past it a blob may hold what a crash left.
    const end = Math.min(r.first + r.count, Math.ceil(row.received / cs));
    if (end <= r.first) return [];
    const stride = chunkStride(cs);
    const lengthOf = (i: number) => Math.min(cs, row.size - i * cs) + FILE_CHUNK_OVERHEAD;
    const total = (end - 1 - r.first) * stride + lengthOf(end - 1);
    const bytes = await this.#blobs.read(fileId, r.first * stride, total);
    const out: FileChunk[] = [];
    for (let i = r.first; i < end; i++) {
      const at = (i - r.first) * stride;
      if (at >= bytes.length) break;
      // A blob cut short gives a short chunk, which does not open: the caller's FILE_CORRUPT.
      out.push({ index: i, data: bytes.subarray(at, Math.min(bytes.length, at + lengthOf(i))) });
    }
    return out;
  }

  async deleteFile(fileId: string, ownerId: string): Promise<void> {
    checkHexId('fileId', fileId);
    checkUserId('ownerId', ownerId);
    this.#tx((db) => {
      if (
        this.#prep(db, 'DELETE FROM files WHERE id = ? AND owner_id = ?').run(fileId, ownerId).changes === 0
      ) {
        throw new ServerError('FILE_NOT_FOUND', `no file with id ${fileId} owned by ${ownerId}`);
      }
    });
    // The row first, then its blob: a crash in between leaves a blob the next start removes.
    await this.#removeBlobs([fileId]);
  }

  async fileUsage(userId: string): Promise<number> {
    checkUserId('userId', userId);
    return this.#usage(this.#conn(), userId);
  }

  async purgeIncompleteFiles(updatedBefore: number): Promise<number> {
    aint('updatedBefore', updatedBefore, 0, Number.MAX_SAFE_INTEGER);
    const ids = this.#tx((db) => {
      const found = this.#prep(db, 'SELECT id FROM files WHERE received < size AND updated_at < ?')
        .pluck()
        .all(updatedBefore) as string[];
      const del = this.#prep(db, 'DELETE FROM files WHERE id = ?');
      for (const id of found) del.run(id);
      return found;
    });
    await this.#removeBlobs(ids);
    return ids.length;
  }

  async fileKeyVersions(): Promise<{ keyId: string; files: number }[]> {
    return this.#prep(
      this.#conn(),
      'SELECT key_id AS keyId, count(*) AS files FROM files GROUP BY key_id ORDER BY key_id',
    ).all() as { keyId: string; files: number }[];
  }

  async listFileKeys(options: {
    readonly exceptKeyId: string;
    readonly afterId?: string;
    readonly limit: number;
  }): Promise<{ fileId: string; wrappedKey: StoredWrappedKey }[]> {
    const o = checkListFileKeys(options);
    const rows = this.#prep(
      this.#conn(),
      'SELECT id, key_id, wrapped_key FROM files WHERE key_id != ? AND id > ? ORDER BY id LIMIT ?',
    ).all(o.exceptKeyId, o.afterId, o.limit) as { id: string; key_id: string; wrapped_key: Buffer }[];
    return rows.map((r) => ({
      fileId: r.id,
      wrappedKey: { keyId: r.key_id, ciphertext: new Uint8Array(r.wrapped_key) },
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
    return this.#tx(
      (db) =>
        this.#prep(db, 'UPDATE files SET key_id = ?, wrapped_key = ? WHERE id = ? AND key_id = ?').run(
          w.keyId,
          w.ciphertext,
          fileId,
          expectedKeyId,
        ).changes === 1,
    );
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    // Queued mailbox writes were accepted before the close: commit them (or reject them) first.
    this.#commitGroup();
    this.#closed = true;
    this.#db.close();
    this.#sealer.destroy();
    this.#lookupKey.fill(0);
    this.#auditKey.fill(0);
  }
}
