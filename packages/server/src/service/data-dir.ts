/**
 * The server's data directory (mode 0700):
 *
 * | file | what | mode |
 * |---|---|---|
 * | `config.json` | hostname, listen address, TLS and KMS file paths; written last by init | 0600 |
 * | `tls-key.pem`, `tls-cert.pem` | generated ECDSA P-256 key and self-signed certificate (unless the operator configured their own) | 0600 |
 * | `kms-master.key` | the local KMS's key-encryption keys (absent with `pkcs11`: they live in the token) | 0600 |
 * | `data-keys.json` | the data keys, wrapped by the KMS | 0600 |
 * | `qalqon.db` (+ `-wal`, `-shm`) | the SQLCipher database | 0600 |
 * | `admin.sock` | the running server's local admin socket | 0600 |
 *
 * `config.json` is written last, atomically: its presence means init completed. A directory
 * with some of the other files but no config is a crashed init, refused rather than guessed at.
 *
 * With the `pkcs11` KMS the config names the module, the token label and where the user PIN
 * comes from (an environment variable or a 0600 file), never the PIN itself.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { randomBytes } from '@qalqon/crypto';
import { ServerError } from '../errors.js';
import { DEK_FILE } from '../kms/dek-registry.js';
import type { Kms, KmsDescription } from '../kms/kms.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { Pkcs11Kms, type Pkcs11KmsConfig, type Pkcs11PinSource } from '../kms/pkcs11-kms.js';
import { ensurePrivateDir, writePrivateFileAtomic } from '../secure-file.js';
import { DATABASE_FILE, openEmbeddedStorage } from '../storage/embedded.js';
import type { Storage } from '../storage/types.js';
import { astring } from '../validate.js';
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
}

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
}

/** A fresh enrolment code: 120 random bits as 20 base64url characters. */
export function newEnrolmentCode(): string {
  return Buffer.from(randomBytes(15)).toString('base64url');
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

export function readConfig(
  dataDir: string,
): ServerConfig & { paths: { cert: string; key: string }; kmsSetting: ResolvedKmsSetting } {
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
  for (const [field, p] of Object.entries(files)) {
    if (!existsSync(p))
      throw new ServerError('CONFIG_INVALID', `${path}: the ${field} file ${p} does not exist`);
  }
  return {
    ...(c as ServerConfig),
    paths: { cert: files.cert!, key: files.key! },
    kmsSetting,
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
    const storage = await openEmbeddedStorage({ dataDir, kms, clock });
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
  };
}
