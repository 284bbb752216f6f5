/**
 * @qalqon/client: the SDK a device runs (the CLI's client commands are a thin layer over
 * it). A profile directory is one device: an SQLCipher database whose key lives in the OS
 * secure store (or sealed under a passphrase), a server pinned by its key, and end-to-end
 * sessions from @qalqon/protocol with every device it talks to.
 */
export * from './client.js';
export * from './errors.js';
export {
  ciphertextSize,
  FILE_SEGMENT_BYTES,
  MAX_FILE_PLAINTEXT_BYTES,
} from './file-crypto.js';
export { type FileProgress, type ProgressListener, sniffMime } from './files.js';
export {
  createDatabaseKey,
  KEYRING_SERVICE,
  type KeystoreAccess,
  type KeystoreKind,
  loadDatabaseKey,
  SCRYPT_N,
  unwrapKey,
  type WrappedKey,
  wrapKey,
} from './keystore.js';
export { linkCodeFor, splitLinkCode } from './link-handover.js';
export { DATABASE_FILE, type ProfileSettings, readSettings, SETTINGS_FILE } from './store.js';
export {
  checkPin,
  connectPinned,
  type PinStore,
  parseServerUrl,
  type ServerAddress,
  ServerConnection,
  spkiPinOfCertificate,
} from './transport.js';
