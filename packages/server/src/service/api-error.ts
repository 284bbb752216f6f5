/**
 * The one place any error becomes what a client sees: a wire code, an HTTP status and a
 * message that is safe to send. ServerError messages are written to be loggable (they name
 * arguments and records, never key bytes, codes or bodies), so refusals pass theirs on;
 * anything unexpected becomes a generic INTERNAL with no detail at all.
 */
import { MAX_ERROR_MESSAGE_LEN, type WireErrorCode, z } from '@qalqon/wire';
import { isServerError, type ServerErrorCode } from '../errors.js';

/** A refusal raised by the service layer itself, already in wire terms. */
export class ApiError extends Error {
  readonly code: WireErrorCode;
  readonly status: number;
  readonly retryAfterMs: number | undefined;
  constructor(code: WireErrorCode, status: number, message: string, retryAfterMs?: number) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.status = status;
    this.retryAfterMs = retryAfterMs;
  }
}

export interface WireFailure {
  readonly status: number;
  readonly code: WireErrorCode;
  readonly message: string;
  readonly retryAfterMs?: number;
  /** True when the error was not a deliberate refusal: the caller logs it. */
  readonly unexpected: boolean;
}

/**
 * Storage refusals a client may see, with their status and, where the ServerError's own
 * message would say more than the client may learn (or less than it needs), the message
 * to send instead. Any other ServerError is INTERNAL.
 */
const SERVER_CODES: Partial<
  Record<ServerErrorCode, readonly [number, WireErrorCode, ((message: string) => string)?]>
> = {
  INVALID_ARGUMENT: [400, 'BAD_REQUEST'],
  USER_EXISTS: [409, 'USER_EXISTS'],
  USER_NOT_FOUND: [404, 'USER_NOT_FOUND'],
  DEVICE_NOT_FOUND: [404, 'DEVICE_NOT_FOUND'],
  TOO_MANY_DEVICES: [409, 'TOO_MANY_DEVICES'],
  IDENTITY_KEY_MISMATCH: [409, 'IDENTITY_KEY_MISMATCH'],
  ENROLMENT_CODE_INVALID: [403, 'ENROLMENT_CODE_INVALID'],
  PREKEY_EXISTS: [409, 'PREKEY_EXISTS'],
  TOO_MANY_PREKEYS: [409, 'TOO_MANY_PREKEYS'],
  ENVELOPE_TOO_LARGE: [413, 'ENVELOPE_TOO_LARGE'],
  MAILBOX_FULL: [429, 'MAILBOX_FULL'],
  CHANNEL_NOT_FOUND: [404, 'CHANNEL_NOT_FOUND'],
  CHANNEL_EXISTS: [409, 'CHANNEL_EXISTS'],
  CHANNEL_CONFLICT: [409, 'CHANNEL_CONFLICT'],
  ROLE_NOT_FOUND: [404, 'ROLE_NOT_FOUND'],
  ROLE_EXISTS: [409, 'ROLE_EXISTS'],
  ROLE_BUILTIN: [409, 'ROLE_BUILTIN'],
  ROLE_IN_USE: [409, 'ROLE_IN_USE'],
  ORG_UNIT_NOT_FOUND: [404, 'ORG_UNIT_NOT_FOUND'],
  ORG_UNIT_EXISTS: [409, 'ORG_UNIT_EXISTS'],
  ORG_UNIT_NOT_EMPTY: [409, 'ORG_UNIT_NOT_EMPTY'],
  // Not one file id: an unknown file and one the caller may not see answer alike.
  FILE_NOT_FOUND: [404, 'FILE_NOT_FOUND', () => 'no such file'],
  FILE_TOO_LARGE: [413, 'FILE_TOO_LARGE'],
  QUOTA_EXCEEDED: [413, 'QUOTA_EXCEEDED'],
  UPLOAD_OFFSET_MISMATCH: [409, 'UPLOAD_OFFSET_MISMATCH', (m) => `${m}; resume from "received"`],
  // The details (file, chunk) are for the operator's log (plugins/files.ts), not the client.
  FILE_CORRUPT: [500, 'FILE_CORRUPT', () => 'the stored file failed its integrity check'],
  CLOSED: [503, 'UNAVAILABLE'],
};

/** Fastify's own refusals (body parsing and limits), by its error code. */
const FASTIFY_CODES: Record<string, [number, WireErrorCode, string]> = {
  FST_ERR_CTP_BODY_TOO_LARGE: [413, 'PAYLOAD_TOO_LARGE', 'the request body exceeds the size limit'],
  FST_ERR_CTP_INVALID_MEDIA_TYPE: [
    415,
    'UNSUPPORTED_MEDIA_TYPE',
    'the request body must be application/json',
  ],
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: [400, 'BAD_REQUEST', 'the Content-Length does not match the body'],
  FST_ERR_CTP_EMPTY_JSON_BODY: [400, 'BAD_REQUEST', 'the JSON body is empty'],
  FST_ERR_CTP_INVALID_JSON_BODY: [400, 'BAD_REQUEST', 'the request body is not valid JSON'],
};

function clip(s: string): string {
  return s.length > MAX_ERROR_MESSAGE_LEN ? `${s.slice(0, MAX_ERROR_MESSAGE_LEN - 1)}…` : s;
}

/**
 * Describes schema failures by field path and zod's issue message. Zod's messages for the
 * checks used here state the expectation (type, length, pattern), never the value, so an
 * enrolment code or a key that fails validation is not echoed.
 */
export function describeZodError(err: z.ZodError, what = 'request body'): string {
  const first = err.issues[0];
  if (!first) return `the ${what} does not match its schema`;
  const path = first.path.length ? first.path.map(String).join('.') : '(root)';
  const more = err.issues.length > 1 ? ` (and ${err.issues.length - 1} more)` : '';
  return `the ${what} is invalid at ${path}: ${first.message}${more}`;
}

export function toWireFailure(err: unknown): WireFailure {
  if (err instanceof ApiError) {
    return {
      status: err.status,
      code: err.code,
      message: clip(err.message),
      ...(err.retryAfterMs === undefined ? {} : { retryAfterMs: err.retryAfterMs }),
      unexpected: false,
    };
  }
  if (err instanceof z.ZodError) {
    return { status: 400, code: 'BAD_REQUEST', message: clip(describeZodError(err)), unexpected: false };
  }
  if (isServerError(err)) {
    const m = SERVER_CODES[err.code];
    if (m)
      return {
        status: m[0],
        code: m[1],
        message: clip(m[2]?.(err.message) ?? err.message),
        unexpected: false,
      };
    return { status: 500, code: 'INTERNAL', message: 'internal error', unexpected: true };
  }
  const e = err as { code?: unknown; statusCode?: unknown } | null;
  if (e && typeof e.code === 'string') {
    const f = FASTIFY_CODES[e.code];
    if (f) return { status: f[0], code: f[1], message: f[2], unexpected: false };
    // Other client errors from fastify's parsers (e.g. prototype poisoning): a bad request, said generically.
    if (e.code.startsWith('FST_ERR_') && typeof e.statusCode === 'number' && e.statusCode < 500) {
      return { status: 400, code: 'BAD_REQUEST', message: 'the request is malformed', unexpected: false };
    }
  }
  if (err instanceof SyntaxError && typeof e?.statusCode === 'number' && e.statusCode === 400) {
    return {
      status: 400,
      code: 'BAD_REQUEST',
      message: 'the request body is not valid JSON',
      unexpected: false,
    };
  }
  return { status: 500, code: 'INTERNAL', message: 'internal error', unexpected: true };
}

/** The JSON error body of a failure. */
export function errorBody(f: WireFailure): {
  error: { code: WireErrorCode; message: string; retryAfterMs?: number };
} {
  return {
    error: {
      code: f.code,
      message: f.message,
      ...(f.retryAfterMs === undefined ? {} : { retryAfterMs: f.retryAfterMs }),
    },
  };
}
