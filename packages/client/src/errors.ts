/**
 * Why a client operation was refused. Every failure of the client package that a user or an
 * application must act on is a `ClientError` carrying one of these codes; the message is one
 * sentence that says why and never contains a key, a passphrase, a token or message text.
 */
export type ClientErrorCode =
  /** An API argument had the wrong type, length or form (the message names it). */
  | 'INVALID_ARGUMENT'
  /** The profile directory holds no device yet, or already holds one. */
  | 'PROFILE_STATE'
  /** The profile's settings file or database is malformed or of an unknown version. */
  | 'PROFILE_CORRUPT'
  /** No OS secure store (Secret Service, Keychain, Credential Manager) answered, and `--keystore passphrase` was not chosen. */
  | 'KEYSTORE_UNAVAILABLE'
  /** The OS secure store has no key for this profile (deleted, or another user's store). */
  | 'KEYSTORE_KEY_MISSING'
  /** No passphrase was given (QALQON_PASSPHRASE or a prompt) for a passphrase-protected profile. */
  | 'PASSPHRASE_REQUIRED'
  /** The passphrase does not unwrap the database key. Nothing was changed. */
  | 'PASSPHRASE_WRONG'
  /** The database key does not open the database (the key in the store belongs to another database). */
  | 'DATABASE_UNREADABLE'
  /** The server presented a public key other than the pinned one: possibly an impostor. */
  | 'SERVER_KEY_CHANGED'
  /** The server could not be reached, or the TLS handshake failed. */
  | 'SERVER_UNREACHABLE'
  /** The server answered off its wire contract (bad JSON, unexpected shape). */
  | 'SERVER_PROTOCOL'
  /** A contact's identity key changed after it had been verified: sending is refused until the new safety number is verified. */
  | 'IDENTITY_CHANGED'
  /** The safety number given to `verify` does not match the contact's current one. */
  | 'SAFETY_NUMBER_MISMATCH'
  /** The user has no device this client may encrypt to (none enrolled, or none whose prekeys verify). */
  | 'NO_TRUSTED_DEVICE'
  /** The link handover could not be opened or does not match the link code (tampered, or another slot). */
  | 'LINK_HANDOVER_INVALID'
  /** Waiting for a link approval ran past its deadline. */
  | 'LINK_TIMEOUT'
  /** No channel of that name is among yours (you are not a member, or it does not exist). */
  | 'CHANNEL_NOT_FOUND'
  /** A channel's membership log, as the server serves it, does not verify (a forged, altered, reordered or withheld change). */
  | 'CHANNEL_LOG_INVALID'
  /** The verified log does not name that user (or you) as a member of the channel; as a receive failure, the sender is not a member. */
  | 'CHANNEL_NOT_MEMBER'
  /** Only a manager of the channel (by its verified log) may add members or remove others. */
  | 'CHANNEL_NOT_MANAGER'
  /** Receive failure: no sender key for a channel message (never handed to this device: sent before you joined or after you left). */
  | 'NO_SENDER_KEY'
  /** Receive failure: a channel message or sender-key handover is malformed, or names another channel or sender than its envelope. */
  | 'CHANNEL_MESSAGE_INVALID'
  /** No file of that id is in this profile's messages (the key to it arrived in none). */
  | 'FILE_UNKNOWN'
  /** A downloaded file does not decrypt or verify (altered, truncated or mixed up by the server); nothing was written. */
  | 'FILE_INVALID'
  /** The file being sent changed (size or modification time) while it was read; the upload was abandoned. */
  | 'FILE_CHANGED';

export class ClientError extends Error {
  readonly code: ClientErrorCode;
  constructor(code: ClientErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ClientError';
    this.code = code;
  }
}

export function isClientError(err: unknown, code?: ClientErrorCode): err is ClientError {
  return err instanceof ClientError && (code === undefined || err.code === code);
}
