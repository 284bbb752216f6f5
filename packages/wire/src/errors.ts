/**
 * The error codes a client can receive from the server, in an HTTP error body
 * (`{"error":{"code","message"}}`) or a WebSocket `error` frame. docs/errors.md lists the
 * same codes (tests/error-registry.test.ts keeps the two in step). Authentication failures
 * are one code whichever check failed.
 */
export type WireErrorCode =
  /** The body or frame is not valid JSON or does not match its schema. */
  | 'BAD_REQUEST'
  /** The body or frame exceeds its size limit. */
  | 'PAYLOAD_TOO_LARGE'
  /** The request has a content type other than application/json. */
  | 'UNSUPPORTED_MEDIA_TYPE'
  /** No such route (or method). */
  | 'NOT_FOUND'
  /** Missing, unknown or expired session token, or a failed challenge signature. */
  | 'UNAUTHENTICATED'
  /** Authenticated, but not allowed to do this. */
  | 'FORBIDDEN'
  /** Too many attempts: `retryAfterMs` says when to try again. */
  | 'RATE_LIMITED'
  /** A prekey signature does not verify against the identity key. */
  | 'INVALID_SIGNATURE'
  /** The enrolment code is unknown, expired or used (deliberately not saying which). */
  | 'ENROLMENT_CODE_INVALID'
  /** The link code is unknown, expired, used, or not yet approved. */
  | 'LINK_CODE_INVALID'
  /** A linked device's identity key is not the user's. */
  | 'IDENTITY_KEY_MISMATCH'
  /** No such user. */
  | 'USER_NOT_FOUND'
  /** A user of that name already exists. */
  | 'USER_EXISTS'
  /** No such device. */
  | 'DEVICE_NOT_FOUND'
  /** The user already has the maximum number of devices. */
  | 'TOO_MANY_DEVICES'
  /** A one-time prekey id is already stored or repeated. */
  | 'PREKEY_EXISTS'
  /** The upload would exceed the per-device one-time prekey limit. */
  | 'TOO_MANY_PREKEYS'
  /** An envelope body exceeds the size limit. */
  | 'ENVELOPE_TOO_LARGE'
  /** A recipient's queue is at its count or byte limit. */
  | 'MAILBOX_FULL'
  /** No such channel (or the caller may not see it). */
  | 'CHANNEL_NOT_FOUND'
  /** A channel with that id or name already exists. */
  | 'CHANNEL_EXISTS'
  /** A membership change is malformed, unsigned, out of order or not allowed to its signer. */
  | 'CHANNEL_CHANGE_INVALID'
  /** Another change took that place in the log first: reload the log and sign again. */
  | 'CHANNEL_CONFLICT'
  /** The caller is not a member of the channel. */
  | 'NOT_A_MEMBER'
  /** No such role. */
  | 'ROLE_NOT_FOUND'
  /** A role of that name already exists. */
  | 'ROLE_EXISTS'
  /** Built-in roles cannot be changed or deleted. */
  | 'ROLE_BUILTIN'
  /** The role is still granted to someone. */
  | 'ROLE_IN_USE'
  /** No such org unit. */
  | 'ORG_UNIT_NOT_FOUND'
  /** An org unit of that name already exists. */
  | 'ORG_UNIT_EXISTS'
  /** The org unit still has sub-units, users or channels. */
  | 'ORG_UNIT_NOT_EMPTY'
  /** No such file (or the caller may not read it). */
  | 'FILE_NOT_FOUND'
  /** The file exceeds the server's size limit. */
  | 'FILE_TOO_LARGE'
  /** The upload would exceed the user's storage quota. */
  | 'QUOTA_EXCEEDED'
  /** The upload does not start where the stored bytes end. */
  | 'UPLOAD_OFFSET_MISMATCH'
  /** The file has not been uploaded completely. */
  | 'FILE_INCOMPLETE'
  /** The requested range lies outside the file. */
  | 'RANGE_NOT_SATISFIABLE'
  /** The stored file failed its integrity check on the server (altered or damaged at rest); no wrong byte was sent. */
  | 'FILE_CORRUPT'
  /** The server is shutting down: reconnect later. */
  | 'UNAVAILABLE'
  /** Something failed inside the server. The message says nothing more. */
  | 'INTERNAL';

export const WIRE_ERROR_CODES: readonly WireErrorCode[] = [
  'BAD_REQUEST',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'NOT_FOUND',
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'RATE_LIMITED',
  'INVALID_SIGNATURE',
  'ENROLMENT_CODE_INVALID',
  'LINK_CODE_INVALID',
  'IDENTITY_KEY_MISMATCH',
  'USER_NOT_FOUND',
  'USER_EXISTS',
  'DEVICE_NOT_FOUND',
  'TOO_MANY_DEVICES',
  'PREKEY_EXISTS',
  'TOO_MANY_PREKEYS',
  'ENVELOPE_TOO_LARGE',
  'MAILBOX_FULL',
  'CHANNEL_NOT_FOUND',
  'CHANNEL_EXISTS',
  'CHANNEL_CHANGE_INVALID',
  'CHANNEL_CONFLICT',
  'NOT_A_MEMBER',
  'ROLE_NOT_FOUND',
  'ROLE_EXISTS',
  'ROLE_BUILTIN',
  'ROLE_IN_USE',
  'ORG_UNIT_NOT_FOUND',
  'ORG_UNIT_EXISTS',
  'ORG_UNIT_NOT_EMPTY',
  'FILE_NOT_FOUND',
  'FILE_TOO_LARGE',
  'QUOTA_EXCEEDED',
  'UPLOAD_OFFSET_MISMATCH',
  'FILE_INCOMPLETE',
  'RANGE_NOT_SATISFIABLE',
  'FILE_CORRUPT',
  'UNAVAILABLE',
  'INTERNAL',
];

/** A coded error as a client SDK raises it, built from an error body or frame. */
export class WireError extends Error {
  readonly code: WireErrorCode;
  /** HTTP status when it came from an HTTP response. */
  readonly status: number | undefined;
  readonly retryAfterMs: number | undefined;
  constructor(code: WireErrorCode, message: string, options?: { status?: number; retryAfterMs?: number }) {
    super(message);
    this.name = 'WireError';
    this.code = code;
    this.status = options?.status;
    this.retryAfterMs = options?.retryAfterMs;
  }
}

export function isWireError(err: unknown, code?: WireErrorCode): err is WireError {
  return err instanceof WireError && (code === undefined || err.code === code);
}
