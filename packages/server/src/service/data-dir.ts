/**
 * The server's data directory (mode 0700):
 *
 * | file | what | mode |
 * |---|---|---|
 * | `config.json` | hostname, listen address, TLS and KMS file paths; written last by init | 0600 |
 * | `tls-key.pem`, `tls-cert.pem` | generated ECDSA P-256 key and self-signed certificate (unless the operator configured their own) | 0600 |
 * | `kms-master.key` | the local KMS's key-encryption keys (absent with `pkcs11`: they live in the token) | 0600 |
 * | `data-keys.json` | the data keys, wrapped by the KMS (absent with `postgres`: they live in its `data_keys` table) | 0600 |
 * | `qalqon.db` (+ `-wal`, `-shm`) | the SQLCipher database (absent with `postgres`) | 0600 |
 * | `files/<id>` | each file's sealed chunks (storage/file-blobs.ts; the directory 0700, created by the embedded storage; absent with `postgres`) | 0600 |
 * | `admin.sock` | the running server's local admin socket | 0600 |
 *
 * `config.json` is written last, atomically: its presence means init completed. A directory
 * with some of the other files but no config is a crashed init, refused rather than guessed at.
 *
 * With the `pkcs11` KMS the config names the module, the token label and where the user PIN
 * PIN comes from (an environment variable or a 0600 file), never the PIN itself.
 *
 * Database: `database` in the config is `{ provider: 'embedded' }` (the default; an older
 * config without the field means the same) or `{ provider: 'postgres', urlEnv | url, ssl }`.
 * A URL with a password is never stored: the config names the environment variable that
 * holds the URL (`urlEnv`), or stores a URL that carries no password (`url`, for peer,
 * certificate or .pgpass authentication). `ssl: true` requires TLS with certificate
 * verification (or put `sslmode=verify-full&sslrootcert=...` in the URL instead).
 *
 * Several nodes on one PostgreSQL database (the multi-node flow): init ONE data directory
 * against the database. Every other node gets a copy of that directory's config.json, its
 * TLS certificate and key (clients pin that key, so all nodes must present it) and access
 * to the same KMS (a copy of kms-master.key with the local KMS, or the same token with
 * PKCS#11), plus the database URL in the named environment variable; then `server start`.
 * Each node keeps its own admin socket. Running `init` a second time against a database
 * that already holds a deployment is refused (ALREADY_INITIALISED): a fresh KMS could not
 * unwrap the data keys there, and two directories sharing a database by accident must
 * not happen silently.
 *
 * Event bus: `pubsub` in the config (pubsub/config.ts) is absent (one node) or
 * `{ provider: 'nats', urlEnv | url, subjectPrefix? }`, set by `init --pubsub-url-env VAR`
 * or `--pubsub-url URL` (a URL without credentials). It is only allowed with PostgreSQL:
 * several nodes need a shared database. Nodes of one deployment share the config, so they
 * share the bus and its subject prefix.
 *
 * Session key: sessions and sign-in challenges are MACed with the `session-mac` data key
 * (openSessionKey), wrapped by the KMS like the other data keys (in `data-keys.json`, or
 * PostgreSQL's `data_keys` table, which every node reads), so a session made on one node is
 * valid on all and survives a restart.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { ServerError } from '../errors.js';
import { checkFileServiceLimits, type FileServiceLimits } from '../files/file-store.js';
import { DEK_FILE, DekRegistry } from '../kms/dek-registry.js';
import type { Kms, KmsDescription } from '../kms/kms.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { Pkcs11Kms, type Pkcs11KmsConfig, type Pkcs11PinSource } from '../kms/pkcs11-kms.js';
import { checkPubsubSetting, type PubsubSetting } from '../pubsub/config.js';
import { DEFAULT_SUBJECT_PREFIX } from '../pubsub/nats-bus.js';
import { ensurePrivateDir, writePrivateFileAtomic } from '../secure-file.js';
import { DATABASE_FILE, openEmbeddedStorage } from '../storage/embedded.js';
import { loadPostgresExtraKey, openPostgresStorage, withPostgresConnection } from '../storage/postgres.js';
import type { Storage, StorageLimits } from '../storage/types.js';
import { astring } from '../validate.js';
import { newOneTimeCode } from './links.js';
import { SESSION_MAC_DEK } from './sessions.js';
import { checkHostname, checkTlsPair, generateSelfSignedIdentity, spkiPin } from './tls.js';

export const CONFIG_FILE = 'config.json';
export const TLS_KEY_FILE = 'tls-key.pem';
export const TLS_CERT_FILE = 'tls-cert.pem';
export const ADMIN_SOCKET_FILE = 'admin.sock';
export const DEFAULT_LISTEN = '127.0.0.1:8443';
export const DEFAULT_HOSTNAME = 'localhost';
/** The first administrator's user name and role. */
export const FIRST_ADMIN_NAME = 'admin';
export const ADMIN_ROLE = 'admin';
/** How long an enrolment code stays valid. */
export const ENROLMENT_CODE_TTL_MS = 7 * 24 * 3600_000;

const CONFIG_FORMAT = 'qalqon-server-config';
const CONFIG_VERSION = 1;

export interface ServerConfig {
  readonly format: typeof CONFIG_FORMAT;
  readonly version: typeof CONFIG_VERSION;
  readonly hostname: string;
  /** Default listen address, `HOST:PORT`. */
  readonly listen: string;
  /** Paths relative to the data directory, or absolute (operator-supplied files). */
  readonly tls: { readonly certFile: string; readonly keyFile: string };
  readonly kms: LocalKmsSetting | Pkcs11KmsSetting;
  /** Absent in configs written before the PostgreSQL backend: embedded. */
  readonly database?: DatabaseSetting;
  /** The event bus to the other nodes; absent: one node (pubsub/config.ts). */
  readonly pubsub?: PubsubConfigJson;
  /** File limits (files/file-store.ts): `maxFileBytes`, `quotaBytesPerUser`, `incompleteTtlMs`; each optional. */
  readonly files?: Partial<FileServiceLimits>;
}

/** `pubsub` as config.json holds it (subjectPrefix only when not the default). */
export type PubsubConfigJson =
  | { readonly provider: 'local' }
  | { readonly provider: 'nats'; readonly urlEnv: string; readonly subjectPrefix?: string }
  | { readonly provider: 'nats'; readonly url: string; readonly subjectPrefix?: string };

/**
 * Where the data lives. The PostgreSQL URL comes from the named environment variable
 * (`urlEnv`, the way to pass a password) or is stored as is (`url`, only without a password).
 */
export type DatabaseSetting =
  | { readonly provider: 'embedded' }
  | { readonly provider: 'postgres'; readonly urlEnv: string; readonly ssl: boolean }
  | { readonly provider: 'postgres'; readonly url: string; readonly ssl: boolean };

/** What `openDatabase` needs: the embedded store, or the PostgreSQL URL as read at start. */
export type ResolvedDatabase =
  | { readonly provider: 'embedded' }
  | { readonly provider: 'postgres'; readonly url: string; readonly ssl: boolean };

/** The local KMS: its master-key file, relative to the data directory or absolute. */
export interface LocalKmsSetting {
  readonly provider: 'local';
  readonly keyFile: string;
}

/** A PKCS#11 token: module path, token label and the PIN's source (never the PIN). */
export interface Pkcs11KmsSetting extends Pkcs11KmsConfig {
  readonly provider: 'pkcs11';
}

/** Which KMS `init` sets up. */
export type KmsChoice = { readonly provider: 'local' } | Pkcs11KmsSetting;

export interface InitOptions {
  readonly dataDir: string;
  readonly hostname?: string;
  readonly listen?: string;
  /** Use the operator's certificate and key (PEM files) instead of generating them. Both or neither. */
  readonly tlsCertFile?: string;
  readonly tlsKeyFile?: string;
  /** Default: the local KMS (a master-key file in the data directory). */
  readonly kms?: KmsChoice;
  /** Default: the embedded (SQLCipher) database in the data directory. */
  readonly database?: DatabaseSetting;
  /** The event bus to other nodes (PostgreSQL only). Default: none, one node. */
  readonly pubsub?: PubsubConfigJson;
  readonly clock?: () => number;
}

export interface InitResult {
  readonly dataDir: string;
  readonly hostname: string;
  readonly listen: string;
  /** `sha256/<base64>` of the certificate's SubjectPublicKeyInfo. */
  readonly pin: string;
  readonly adminUser: string;
  /** The first administrator's one-time enrolment code: shown once, stored only as a keyed hash. */
  readonly enrollmentCode: string;
  readonly enrollmentCodeExpiresAt: number;
  readonly certFile: string;
  /** The KMS as it was set up: provider, location and the first KEK version. Never secret. */
  readonly kms: KmsDescription;
  readonly database: 'embedded' | 'postgres';
}

function pubsubJson(p: Extract<PubsubSetting, { provider: 'nats' }>): PubsubConfigJson {
  const prefix = p.subjectPrefix === DEFAULT_SUBJECT_PREFIX ? {} : { subjectPrefix: p.subjectPrefix };
  return 'url' in p
    ? { provider: 'nats', url: p.url, ...prefix }
    : { provider: 'nats', urlEnv: p.urlEnv, ...prefix };
}

/** A fresh enrolment code (links.ts `newOneTimeCode`: 120 random bits, never starting with "-"). */
export function newEnrolmentCode(): string {
  return newOneTimeCode();
}

/** Issues a new enrolment code for a user (revoking any earlier unused one). */
export async function issueEnrolmentCode(
  storage: Storage,
  userId: string,
  now: number,
): Promise<{ code: string; expiresAt: number }> {
  const code = newEnrolmentCode();
  const expiresAt = now + ENROLMENT_CODE_TTL_MS;
  await storage.createEnrolmentCode({ userId, code, expiresAt });
  return { code, expiresAt };
}

/** Parses `HOST:PORT` (IPv6 as `[::1]:8443`). */
export function parseListen(label: string, value: unknown): { host: string; port: number } {
  const s = astring(label, value, 3, 300);
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535) throw new ServerError('INVALID_ARGUMENT', `"${label}" expected HOST:PORT`);
  return { host: (m[1] ?? m[2])!, port };
}

export function isInitialised(dataDir: string): boolean {
  return existsSync(join(dataDir, CONFIG_FILE));
}

function resolveIn(dataDir: string, p: string): string {
  return isAbsolute(p) ? p : join(dataDir, p);
}

/** What `openKms` needs: the checked KMS setting, with a local key file's path resolved. */
export type ResolvedKmsSetting = LocalKmsSetting | Pkcs11KmsSetting;

const ENV_NAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;

function checkPinSource(pin: unknown): pin is Pkcs11PinSource {
  if (typeof pin !== 'object' || pin === null) return false;
  const keys = Object.keys(pin);
  if (keys.length !== 1) return false;
  const p = pin as { env?: unknown; file?: unknown };
  if (keys[0] === 'env') return typeof p.env === 'string' && ENV_NAME_PATTERN.test(p.env);
  if (keys[0] === 'file') return typeof p.file === 'string' && isAbsolute(p.file);
  return false;
}

/**
 * Checks a `pubsub` setting against the database: NATS (several nodes) needs PostgreSQL.
 * Throws CONFIG_INVALID.
 */
export function checkPubsubChoice(label: string, value: unknown, database: DatabaseSetting): PubsubSetting {
  const setting = checkPubsubSetting(value, label);
  if (setting.provider === 'nats' && database.provider !== 'postgres') {
    throw new ServerError(
      'CONFIG_INVALID',
      `"${label}": the NATS event bus joins several nodes, which must share a PostgreSQL database; this one is embedded`,
    );
  }
  return setting;
}

export function readConfig(dataDir: string): ServerConfig & {
  paths: { cert: string; key: string };
  kmsSetting: ResolvedKmsSetting;
  databaseSetting: DatabaseSetting;
  pubsubSetting: PubsubSetting;
  filesSetting: FileServiceLimits;
} {
  const path = join(dataDir, CONFIG_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'does not exist' : 'is not valid JSON';
    throw new ServerError('CONFIG_INVALID', `${path} ${why}`);
  }
  const c = raw as Partial<ServerConfig> | null;
  const bad = (field: string) =>
    new ServerError('CONFIG_INVALID', `${path}: "${field}" is missing or invalid`);
  if (!c || typeof c !== 'object' || c.format !== CONFIG_FORMAT) throw bad('format');
  if (c.version !== CONFIG_VERSION) throw bad('version');
  if (typeof c.hostname !== 'string') throw bad('hostname');
  if (typeof c.listen !== 'string') throw bad('listen');
  try {
    parseListen('listen', c.listen);
  } catch {
    throw bad('listen');
  }
  if (typeof c.tls?.certFile !== 'string' || typeof c.tls.keyFile !== 'string') throw bad('tls');
  const k = c.kms as Partial<LocalKmsSetting> | Partial<Pkcs11KmsSetting> | undefined;
  let kmsSetting: ResolvedKmsSetting;
  const files: Record<string, string> = {
    cert: resolveIn(dataDir, c.tls.certFile),
    key: resolveIn(dataDir, c.tls.keyFile),
  };
  if (k?.provider === 'local') {
    if (typeof k.keyFile !== 'string') throw bad('kms.keyFile');
    kmsSetting = { provider: 'local', keyFile: resolveIn(dataDir, k.keyFile) };
    files.kms = kmsSetting.keyFile;
  } else if (k?.provider === 'pkcs11') {
    if (typeof k.module !== 'string' || !isAbsolute(k.module)) throw bad('kms.module');
    if (typeof k.tokenLabel !== 'string' || k.tokenLabel === '') throw bad('kms.tokenLabel');
    if (!checkPinSource(k.pin)) throw bad('kms.pin');
    kmsSetting = { provider: 'pkcs11', module: k.module, tokenLabel: k.tokenLabel, pin: k.pin };
  } else {
    throw bad('kms');
  }
  let databaseSetting: DatabaseSetting;
  try {
    databaseSetting = checkDatabaseChoice('database', c.database ?? { provider: 'embedded' });
  } catch {
    throw bad('database');
  }
  let pubsubSetting: PubsubSetting;
  try {
    pubsubSetting = checkPubsubChoice('pubsub', c.pubsub, databaseSetting);
  } catch (err) {
    throw new ServerError('CONFIG_INVALID', `${path}: ${(err as Error).message}`);
  }
  let filesSetting: FileServiceLimits;
  try {
    filesSetting = checkFileServiceLimits(c.files, 'files');
  } catch (err) {
    throw new ServerError('CONFIG_INVALID', `${path}: ${(err as Error).message}`);
  }
  for (const [field, p] of Object.entries(files)) {
    if (!existsSync(p))
      throw new ServerError('CONFIG_INVALID', `${path}: the ${field} file ${p} does not exist`);
  }
  return {
    ...(c as ServerConfig),
    paths: { cert: files.cert!, key: files.key! },
    kmsSetting,
    databaseSetting,
    pubsubSetting,
    filesSetting,
  };
}

/**
 * Opens the KMS a data directory's config names: the local master-key file, or the PKCS#11
 * token (the user PIN read from its configured source, never from the config).
 */
export async function openKms(setting: ResolvedKmsSetting): Promise<Kms> {
  if (setting.provider === 'local') return LocalKms.open(setting.keyFile);
  return Pkcs11Kms.open({ module: setting.module, tokenLabel: setting.tokenLabel, pin: setting.pin });
}

/** URL parameters that libpq and node-postgres read a password from. */
const URL_SECRET_PARAMS = ['password', 'sslpassword'];

function checkDatabaseUrl(label: string, value: unknown): URL {
  if (typeof value !== 'string' || value.length === 0 || value.length > 4096) {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected a postgres:// URL`);
  }
  let parsed: URL;
  try {
    parsed = new URL(value);
  } catch {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" is not a URL`);
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected a postgres:// or postgresql:// URL`);
  }
  return parsed;
}

/** True when the URL carries a password (in its user info or a parameter). */
export function urlHasPassword(url: string): boolean {
  try {
    const parsed = new URL(url);
    return parsed.password !== '' || URL_SECRET_PARAMS.some((p) => parsed.searchParams.has(p));
  } catch {
    return false;
  }
}

/**
 * Checks a database setting (from init's options or from config.json). Messages never quote
 * the URL: it may carry a password, and a refused one must not end up in a log.
 */
export function checkDatabaseChoice(label: string, choice: unknown): DatabaseSetting {
  const d = choice as Partial<{ provider: string; urlEnv: unknown; url: unknown; ssl: unknown }> | null;
  if (typeof d !== 'object' || d === null) {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected { provider }`);
  }
  if (d.provider === 'embedded') {
    if (Object.keys(d).length !== 1) {
      throw new ServerError('INVALID_ARGUMENT', `"${label}" with the embedded provider takes no other field`);
    }
    return { provider: 'embedded' };
  }
  if (d.provider !== 'postgres') {
    throw new ServerError('INVALID_ARGUMENT', `"${label}.provider" expected embedded or postgres`);
  }
  const ssl = d.ssl ?? false;
  if (typeof ssl !== 'boolean') throw new ServerError('INVALID_ARGUMENT', `"${label}.ssl" expected boolean`);
  if ((d.urlEnv === undefined) === (d.url === undefined)) {
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected exactly one of urlEnv and url`);
  }
  if (d.urlEnv !== undefined) {
    const urlEnv = astring(`${label}.urlEnv`, d.urlEnv, 1, 128, ENV_NAME_PATTERN);
    return { provider: 'postgres', urlEnv, ssl };
  }
  checkDatabaseUrl(`${label}.url`, d.url);
  const url = d.url as string;
  if (urlHasPassword(url)) {
    throw new ServerError(
      'INVALID_ARGUMENT',
      `"${label}.url" carries a password, which would be stored in config.json; pass the URL in an environment variable (urlEnv) instead`,
    );
  }
  return { provider: 'postgres', url, ssl };
}

/** Reads the database URL from where the setting says (the environment at start, or the config). */
export function resolveDatabase(setting: DatabaseSetting): ResolvedDatabase {
  if (setting.provider === 'embedded') return setting;
  if ('url' in setting) return { provider: 'postgres', url: setting.url, ssl: setting.ssl };
  const url = process.env[setting.urlEnv];
  if (url === undefined || url === '') {
    throw new ServerError(
      'DATABASE_UNAVAILABLE',
      `the PostgreSQL URL is expected in environment variable ${setting.urlEnv}, which is not set`,
    );
  }
  try {
    checkDatabaseUrl('database URL', url);
  } catch {
    throw new ServerError(
      'DATABASE_UNAVAILABLE',
      `environment variable ${setting.urlEnv} does not hold a postgres:// or postgresql:// URL`,
    );
  }
  return { provider: 'postgres', url, ssl: setting.ssl };
}

/**
 * Opens the storage the config names: the SQLCipher file in the data directory, or the
 * PostgreSQL database (migrated under its lock; data keys unwrapped from its table).
 */
export async function openDatabase(
  db: ResolvedDatabase,
  options: {
    readonly dataDir: string;
    readonly kms: Kms;
    readonly clock?: () => number;
    readonly limits?: Partial<StorageLimits>;
  },
): Promise<Storage> {
  const { dataDir, kms, clock, limits } = options;
  if (db.provider === 'embedded') {
    return openEmbeddedStorage({
      dataDir,
      kms,
      synchronous: 'FULL',
      ...(clock ? { clock } : {}),
      ...(limits ? { limits } : {}),
    });
  }
  return openPostgresStorage({
    url: db.url,
    kms,
    ...(db.ssl ? { ssl: true } : {}),
    ...(clock ? { clock } : {}),
    ...(limits ? { limits } : {}),
  });
}

/**
 * The `session-mac` data key (sessions.ts), created on first use: from the data directory's
 * key file (embedded) or the database's `data_keys` table (PostgreSQL, shared by all nodes).
 * Call after openDatabase.
 */
export async function openSessionKey(
  db: ResolvedDatabase,
  options: { readonly dataDir: string; readonly kms: Kms; readonly clock?: () => number },
): Promise<Uint8Array> {
  if (db.provider === 'embedded') {
    const registry = await DekRegistry.open(join(options.dataDir, DEK_FILE), options.kms, options.clock);
    return registry.getOrCreate(SESSION_MAC_DEK);
  }
  return loadPostgresExtraKey({
    url: db.url,
    kms: options.kms,
    ...(db.ssl ? { ssl: true } : {}),
    ...(options.clock ? { clock: options.clock } : {}),
    name: SESSION_MAC_DEK,
  });
}

/**
 * Refuses (ALREADY_INITIALISED) a database that already holds a deployment: users, or data
 * keys a fresh KMS could not unwrap. Run before anything is created, so an unreachable
 * database also leaves the data directory untouched. (Two inits racing past this check
 * still cannot share: the loser's KMS cannot unwrap the winner's data keys.)
 */
async function checkDatabaseUnused(db: ResolvedDatabase): Promise<void> {
  if (db.provider === 'embedded') return;
  // One client, its queries in turn (pool.query would race the pool's own SET on connect).
  const used = await withPostgresConnection(
    { url: db.url, ...(db.ssl ? { ssl: true } : {}) },
    async (client) => {
      const t = await client.query<{ users: string | null; keys: string | null }>(
        "SELECT to_regclass('users')::text AS users, to_regclass('data_keys')::text AS keys",
      );
      const row = t.rows[0]!;
      for (const [table, exists] of [
        ['users', row.users],
        ['data_keys', row.keys],
      ] as const) {
        if (exists !== null && (await client.query(`SELECT 1 FROM ${table} LIMIT 1`)).rowCount !== 0)
          return true;
      }
      return false;
    },
  );
  if (used) {
    throw new ServerError(
      'ALREADY_INITIALISED',
      'the PostgreSQL database already holds a Qalqon deployment; to add a node, copy the first ' +
        "node's config.json, TLS certificate and key and KMS access instead of running init",
    );
  }
}

function readPem(label: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    throw new ServerError('TLS_INVALID', `the ${label} file ${path} cannot be read`);
  }
}

/** Reads and checks the configured certificate and key. */
export function loadTls(paths: { cert: string; key: string }): { cert: string; key: string; pin: string } {
  const cert = readPem('TLS certificate', paths.cert);
  const key = readPem('TLS key', paths.key);
  checkTlsPair(cert, key);
  return { cert, key, pin: spkiPin(cert) };
}

/** Checks the KMS choice and makes its paths absolute, before anything is written. */
function checkKmsChoice(choice: KmsChoice | undefined): KmsChoice {
  if (choice === undefined || choice.provider === 'local') return { provider: 'local' };
  if (choice.provider !== 'pkcs11') {
    throw new ServerError('INVALID_ARGUMENT', '"options.kms.provider" expected local or pkcs11');
  }
  const module = astring('options.kms.module', choice.module, 1, 4096);
  if (!isAbsolute(module)) {
    // A bare name would be searched along LD_LIBRARY_PATH at every start.
    throw new ServerError('INVALID_ARGUMENT', '"options.kms.module" expected an absolute path');
  }
  const tokenLabel = astring('options.kms.tokenLabel', choice.tokenLabel, 1, 32);
  const pin = choice.pin as Partial<{ env: string; file: string }> | null;
  if (typeof pin !== 'object' || pin === null || (pin.env === undefined) === (pin.file === undefined)) {
    throw new ServerError('INVALID_ARGUMENT', '"options.kms.pin" expected { env } or { file }');
  }
  if (pin.env !== undefined) {
    astring('options.kms.pin.env', pin.env, 1, 128, ENV_NAME_PATTERN);
    return { provider: 'pkcs11', module, tokenLabel, pin: { env: pin.env } };
  }
  // The server may start from another working directory: keep the file's absolute path.
  const file = resolve(astring('options.kms.pin.file', pin.file, 1, 4096));
  return { provider: 'pkcs11', module, tokenLabel, pin: { file } };
}

/**
 * Creates a data directory: KMS (a master-key file, or the first KEK generated inside a
 * PKCS#11 token), TLS identity, encrypted database, the first administrator with a one-time
 * enrolment code, and finally the config. Refuses (ALREADY_INITIALISED) a directory that
 * has any of these already. The KMS comes before any file is written, so a wrong PIN or
 * token label leaves the directory as it was and init can simply be run again.
 */
export async function initDataDir(options: InitOptions): Promise<InitResult> {
  const dataDir = resolve(astring('options.dataDir', options.dataDir, 1, 4096));
  const hostname = checkHostname('options.hostname', options.hostname ?? DEFAULT_HOSTNAME);
  const listen = options.listen ?? DEFAULT_LISTEN;
  parseListen('options.listen', listen);
  if ((options.tlsCertFile === undefined) !== (options.tlsKeyFile === undefined)) {
    throw new ServerError('INVALID_ARGUMENT', '"options.tlsCertFile" and "options.tlsKeyFile" go together');
  }
  const kmsChoice = checkKmsChoice(options.kms);
  const databaseSetting = checkDatabaseChoice(
    'options.database',
    options.database ?? { provider: 'embedded' },
  );
  const pubsub = checkPubsubChoice('options.pubsub', options.pubsub, databaseSetting);
  const database = resolveDatabase(databaseSetting);
  const clock = options.clock ?? Date.now;
  ensurePrivateDir(dataDir);
  for (const f of [CONFIG_FILE, LOCAL_KMS_FILE, DEK_FILE, DATABASE_FILE, TLS_KEY_FILE]) {
    if (existsSync(join(dataDir, f))) {
      throw new ServerError(
        'ALREADY_INITIALISED',
        `${dataDir} already holds ${f}; it is initialised (or an init was interrupted)`,
      );
    }
  }

  // Operator-supplied TLS files are checked, and a self-signed identity made, before the KMS
  // is created: a token KEK cannot be taken back, so nothing that may still fail goes first.
  let tls: ServerConfig['tls'];
  let pin: string;
  let generated: { keyPem: string; certPem: string } | undefined;
  if (options.tlsCertFile !== undefined && options.tlsKeyFile !== undefined) {
    const certFile = resolve(options.tlsCertFile);
    const keyFile = resolve(options.tlsKeyFile);
    pin = loadTls({ cert: certFile, key: keyFile }).pin;
    tls = { certFile, keyFile };
  } else {
    generated = generateSelfSignedIdentity(hostname, new Date(clock()));
    pin = spkiPin(generated.certPem);
    tls = { certFile: TLS_CERT_FILE, keyFile: TLS_KEY_FILE };
  }
  // Reachable, and not another deployment's: checked before the KMS key exists.
  await checkDatabaseUnused(database);

  let kmsSetting: ServerConfig['kms'];
  let kms: Kms;
  if (kmsChoice.provider === 'pkcs11') {
    const { module, tokenLabel, pin: pinSource } = kmsChoice;
    kms = await Pkcs11Kms.create({ module, tokenLabel, pin: pinSource }, clock);
    kmsSetting = { provider: 'pkcs11', module, tokenLabel, pin: pinSource };
  } else {
    kms = await LocalKms.create(join(dataDir, LOCAL_KMS_FILE), clock);
    kmsSetting = { provider: 'local', keyFile: LOCAL_KMS_FILE };
  }
  let code: { code: string; expiresAt: number };
  let kmsDescription: KmsDescription;
  try {
    if (generated) {
      writePrivateFileAtomic(join(dataDir, TLS_KEY_FILE), new TextEncoder().encode(generated.keyPem), {
        exclusive: true,
        existsCode: 'ALREADY_INITIALISED',
      });
      writePrivateFileAtomic(join(dataDir, TLS_CERT_FILE), new TextEncoder().encode(generated.certPem), {
        exclusive: true,
        existsCode: 'ALREADY_INITIALISED',
      });
    }
    const storage = await openDatabase(database, { dataDir, kms, clock });
    try {
      const admin = await storage.createUser({ name: FIRST_ADMIN_NAME, roles: [ADMIN_ROLE] });
      code = await issueEnrolmentCode(storage, admin.id, clock());
    } finally {
      await storage.close();
    }
    kmsDescription = await kms.describe();
  } finally {
    await kms.close();
  }

  const config: ServerConfig = {
    format: CONFIG_FORMAT,
    version: CONFIG_VERSION,
    hostname,
    listen,
    tls,
    kms: kmsSetting,
    database: databaseSetting,
    ...(pubsub.provider === 'nats' ? { pubsub: pubsubJson(pubsub) } : {}),
  };
  writePrivateFileAtomic(
    join(dataDir, CONFIG_FILE),
    new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`),
    {
      exclusive: true,
      existsCode: 'ALREADY_INITIALISED',
    },
  );
  return {
    dataDir,
    hostname,
    listen,
    pin,
    adminUser: FIRST_ADMIN_NAME,
    enrollmentCode: code.code,
    enrollmentCodeExpiresAt: code.expiresAt,
    certFile: resolveIn(dataDir, tls.certFile),
    kms: kmsDescription,
    database: database.provider,
  };
}
