/**
 * The one error type of the server package. Every refusal carries a code from the closed
 * union below; docs/errors.md lists the same codes (tests/error-registry.test.ts keeps the
 * two in step). Messages name the argument or record and what was wrong; they never
 * contain key bytes, wrapped keys, enrolment codes or message bodies, so any message may
 * be logged.
 */
export type ServerErrorCode =
  /** An argument had the wrong type, length or range (a programming error or hostile input). */
  | 'INVALID_ARGUMENT'
  /** The KMS master-key file is readable or writable by group/others, not a regular file, or not ours. */
  | 'KMS_KEY_FILE_INSECURE'
  /** The KMS master-key file is missing, malformed, or already exists when creating one. */
  | 'KMS_KEY_FILE_INVALID'
  /** A wrapped key names a KEK version this KMS does not hold (destroyed, or another KMS). */
  | 'KMS_KEY_NOT_FOUND'
  /** An operation would destroy the KEK version that new keys are wrapped with. */
  | 'KMS_KEY_ACTIVE'
  /** A wrapped key failed authentication: corrupted, tampered with, or bound to another context. */
  | 'KMS_UNWRAP_FAILED'
  /** The PKCS#11 module path does not exist, cannot be loaded, or its C_Initialize failed. */
  | 'KMS_MODULE_UNAVAILABLE'
  /** No token (or more than one) carries the configured label, or it is not initialised. */
  | 'KMS_TOKEN_NOT_FOUND'
  /** The token already holds Qalqon KEKs (create), or is already open in this process. */
  | 'KMS_TOKEN_IN_USE'
  /** The PKCS#11 token refused an operation or lacks a needed mechanism (the message names the CKR_ value). */
  | 'KMS_TOKEN_FAILED'
  /** The token's user PIN is not where the configuration says (unset variable, missing or insecure file). */
  | 'KMS_PIN_UNAVAILABLE'
  /** The token rejected the user PIN, or the PIN is locked. */
  | 'KMS_PIN_INCORRECT'
  /** A KEK in the token is not a non-extractable, always-sensitive AES-256 key, so it may have left the token. */
  | 'KMS_KEY_INSECURE'
  /** The wrapped data-key file is malformed. */
  | 'DEK_FILE_INVALID'
  /** No data key of that name is registered. */
  | 'DEK_NOT_FOUND'
  /** The encrypted database could not be opened: wrong key, or not a Qalqon database. */
  | 'DATABASE_UNREADABLE'
  /** The database server cannot be reached, refused the connection, or does not offer the TLS the configuration requires. */
  | 'DATABASE_UNAVAILABLE'
  /** A database statement failed unexpectedly (the message names its SQLSTATE, never row values). */
  | 'DATABASE_FAILED'
  /** The database was migrated by a newer server than this one. */
  | 'SCHEMA_TOO_NEW'
  /** A sealed field failed authentication: tampered with, moved between rows, or sealed under another key. */
  | 'UNSEAL_FAILED'
  /** A storage or KMS object was used after close(). */
  | 'CLOSED'
  /** A user of that name already exists. */
  | 'USER_EXISTS'
  /** No such user. */
  | 'USER_NOT_FOUND'
  /** No such device. */
  | 'DEVICE_NOT_FOUND'
  /** The user already has the maximum number of devices. */
  | 'TOO_MANY_DEVICES'
  /** A linked device's identity key differs from the user's. */
  | 'IDENTITY_KEY_MISMATCH'
  /** An enrolment code is unknown, expired or already used. Deliberately says no more. */
  | 'ENROLMENT_CODE_INVALID'
  /** A one-time prekey id is already stored for the device (or repeated in one upload). */
  | 'PREKEY_EXISTS'
  /** Storing the prekeys would exceed the per-device limit. */
  | 'TOO_MANY_PREKEYS'
  /** An envelope body exceeds the size limit. */
  | 'ENVELOPE_TOO_LARGE'
  /** A recipient's mailbox is at its message-count or byte limit. */
  | 'MAILBOX_FULL'
  /** No such channel. */
  | 'CHANNEL_NOT_FOUND'
  /** A channel with that id or name exists. */
  | 'CHANNEL_EXISTS'
  /** Another change took that place in the channel log. */
  | 'CHANNEL_CONFLICT'
  /** No such role. */
  | 'ROLE_NOT_FOUND'
  /** A role of that name exists (built-in names included). */
  | 'ROLE_EXISTS'
  /** Built-in roles are defined in code and cannot change. */
  | 'ROLE_BUILTIN'
  /** The role is still granted. */
  | 'ROLE_IN_USE'
  /** No such org unit. */
  | 'ORG_UNIT_NOT_FOUND'
  /** An org unit of that name exists. */
  | 'ORG_UNIT_EXISTS'
  /** The unit still has sub-units, users, channels or grants. */
  | 'ORG_UNIT_NOT_EMPTY'
  /** The TLS certificate or key is unreadable, malformed, or the two do not match. */
  | 'TLS_INVALID'
  /** `init` found a data directory that is already initialised (or half-initialised). */
  | 'ALREADY_INITIALISED'
  /** The data directory's config file is missing, malformed, or names files that are not there. */
  | 'CONFIG_INVALID'
  /** Another server process already serves this data directory (its admin socket answers). */
  | 'SERVER_RUNNING'
  /** The cross-node event bus was used after close() (a programming error in shutdown order). */
  | 'PUBSUB_CLOSED'
  /** No such file (or, to the service, one the caller may not see). */
  | 'FILE_NOT_FOUND'
  /** A file is larger than the configured maximum. */
  | 'FILE_TOO_LARGE'
  /** Creating the file would take its owner's files over their quota. */
  | 'QUOTA_EXCEEDED'
  /** An upload chunk is not the file's next one (another writer appended first, or the offset is wrong). */
  | 'UPLOAD_OFFSET_MISMATCH'
  /** A stored file chunk (or its wrapped key) does not authenticate: altered, moved, reordered, missing or truncated. */
  | 'FILE_CORRUPT'
  /** A file is not a Qalqon archive: wrong magic, unsupported version or kind, or a malformed header. */
  | 'ARCHIVE_INVALID'
  /** An archive fails authentication: edited, truncated, extended, reordered, or its header swapped. */
  | 'ARCHIVE_CORRUPT'
  /** Neither the KMS nor the recovery key given opens the archive's key (another KMS, a destroyed KEK version, the wrong recovery key, or no recovery wrap). */
  | 'ARCHIVE_KEY_REJECTED'
  /** A recovery key is malformed or mistyped (its check characters do not match). */
  | 'RECOVERY_KEY_INVALID'
  /** A restore's target data directory exists and is not empty (or is not a directory). */
  | 'RESTORE_TARGET_NOT_EMPTY'
  /** A backup of this deployment cannot be taken by the server (the PostgreSQL backend: use pg_dump). */
  | 'BACKUP_UNSUPPORTED';

export class ServerError extends Error {
  readonly code: ServerErrorCode;
  constructor(code: ServerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ServerError';
    this.code = code;
  }
}

/** Is `err` a ServerError (optionally of one code)? */
export function isServerError(err: unknown, code?: ServerErrorCode): err is ServerError {
  return err instanceof ServerError && (code === undefined || err.code === code);
}
