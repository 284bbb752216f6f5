/**
 * Why a message cannot be read or a session cannot be set up. Every failure of the
 * protocol package is a `ProtocolError` carrying one of these codes, so an application can
 * tell a user (or a log) what happened without parsing messages. Authentication failures
 * are deliberately opaque: one code, no hint which check failed.
 */
export type ProtocolErrorCode =
  /** An API argument had the wrong type or length. */
  | 'INVALID_ARGUMENT'
  /** The bytes are not a well-formed message of the expected kind (truncated, extended, bad field). */
  | 'INVALID_MESSAGE'
  /** A public key in a message or bundle is malformed or unacceptable (e.g. a low-order point). */
  | 'INVALID_KEY'
  /** A signature on a prekey, bundle, sender-key message or membership change does not verify. */
  | 'INVALID_SIGNATURE'
  /** The message failed authentication (MAC or AEAD tag) against every session state we hold. */
  | 'DECRYPT_FAILED'
  /** The message's key was already used: a replay or a redelivery. */
  | 'DUPLICATE_MESSAGE'
  /** Decrypting would skip more message keys than the protocol allows. */
  | 'TOO_MANY_SKIPPED_KEYS'
  /** The peer's identity key is not the one we trust for them. */
  | 'UNTRUSTED_IDENTITY'
  /** There is no session (or no sender key) to decrypt or encrypt with. */
  | 'NO_SESSION'
  /** A message, record or key carries a version this implementation does not speak. */
  | 'UNSUPPORTED_VERSION'
  /** A prekey message names a one-time, signed or Kyber prekey that we do not have (any more). */
  | 'INVALID_PREKEY_ID'
  /** A serialised session or sender-key record is corrupt. */
  | 'INVALID_STATE'
  /** Safety numbers of different versions or for different identities cannot be compared. */
  | 'FINGERPRINT_MISMATCH';

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  constructor(code: ProtocolErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ProtocolError';
    this.code = code;
  }
}

export function isProtocolError(err: unknown, code?: ProtocolErrorCode): err is ProtocolError {
  return err instanceof ProtocolError && (code === undefined || err.code === code);
}
