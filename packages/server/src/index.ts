/**
 * @qalqon/server: key custody, encrypted storage, and the HTTPS + WebSocket service.
 * The server handles ciphertext envelopes and public keys only; it never imports the
 * protocol package and has no code that could decrypt a message.
 */
export * from './backup/index.js';
export * from './errors.js';
export * from './kms/dek-registry.js';
export * from './kms/kms.js';
export * from './kms/local-kms.js';
export * from './kms/pkcs11-kms.js';
export { ApiError, toWireFailure, type WireFailure } from './service/api-error.js';
export { createService, type Service, type ServiceOptions } from './service/app.js';
export {
  AUTHZ_CACHE_TTL_MS,
  authorize,
  type Resource,
  ROUTE_RULES,
  type RouteRule,
  type Subject,
} from './service/authz.js';
export {
  ADMIN_SOCKET_FILE,
  CONFIG_FILE,
  type DatabaseSetting,
  DEFAULT_HOSTNAME,
  DEFAULT_LISTEN,
  ENROLMENT_CODE_TTL_MS,
  FIRST_ADMIN_NAME,
  type InitOptions,
  type InitResult,
  initDataDir,
  isInitialised,
  type Pkcs11KmsSetting,
  parseListen,
  readConfig,
  type ServerConfig,
  urlHasPassword,
} from './service/data-dir.js';
export { type RunningServer, type RunOptions, runServer } from './service/run.js';
export { generateSelfSignedIdentity, spkiPin, type TlsIdentity } from './service/tls.js';
export * from './storage/embedded.js';
export { type FieldRef, FieldSealer, SEAL_OVERHEAD } from './storage/field-sealer.js';
export { type Migration, type MigrationResult, migrate } from './storage/migrations.js';
export {
  openPostgresStorage,
  PostgresStorage,
  type PostgresStorageOptions,
  rewrapPostgresDataKeys,
} from './storage/postgres.js';
export { type OpenSqlcipherOptions, openSqlcipher, type SqliteDatabase } from './storage/sqlcipher.js';
export { SqliteStorage, type SqliteStorageOptions } from './storage/sqlite.js';
export * from './storage/types.js';
