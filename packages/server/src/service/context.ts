/**
 * What every plugin of the service shares: storage, sessions, delivery, link slots,
 * metrics, limiters and a few helpers for parsing input and authenticating requests.
 */
import { xeddsaVerify } from '@qalqon/crypto';
import type { AuditActionName, AuditActorJson, NewDeviceData, z } from '@qalqon/wire';
import type { FastifyRequest } from 'fastify';
import type { NewDevice, Storage } from '../storage/types.js';
import { ApiError } from './api-error.js';
import type { Authorizer } from './authz.js';
import type { Cluster } from './cluster.js';
import type { MailboxHub } from './hub.js';
import type { LinkSlots } from './links.js';
import type { ServerMetrics } from './metrics.js';
import type { FailureLimiter } from './rate-limit.js';
import type { SessionIdentity, SessionManager } from './sessions.js';

/** A device with fewer one-time prekeys left than this is told to upload more. */
export const PREKEY_LOW_WATERMARK = 20;

export interface ServiceContext {
  readonly storage: Storage;
  readonly sessions: SessionManager;
  readonly hub: MailboxHub;
  readonly links: LinkSlots;
  /** The other nodes: events to tell them, presence (a lone node tells no one). */
  readonly cluster: Cluster;
  readonly metrics: ServerMetrics;
  /** Failed enrolment and link codes, per client address. */
  readonly codeLimiter: FailureLimiter;
  /** Link slots opened, per client address (each holds server memory until it expires). */
  readonly linkLimiter: FailureLimiter;
  readonly clock: () => number;
  /** Operator log lines: never carry keys, tokens, codes or bodies. */
  readonly log: (line: string) => void;
  /** The grant cache behind `authorize` (authz.ts): invalidate it after any role, grant, org or channel-membership change. */
  readonly authz: Authorizer;
  /**
   * Appends one record to the audit log. Never throws: a failed append is logged (one line,
   * no details) and the request it belongs to still completes.
   */
  readonly audit: (event: AuditEvent) => Promise<void>;
}

/** What a caller records; `at` is taken from the clock. Never a key, token, code or message content. */
export interface AuditEvent {
  readonly actor: AuditActorJson;
  readonly action: AuditActionName;
  /** What was acted on, e.g. `user:alice`, `device:alice/2`, `channel:ops`, `role:reviewer`. */
  readonly target: string;
  readonly outcome: 'ok' | 'denied' | 'failed';
  readonly detail?: Readonly<Record<string, string | number | boolean>>;
}

/** Builds `ServiceContext.audit` over a storage. */
export function auditWriter(
  storage: Storage,
  clock: () => number,
  log: (line: string) => void,
): (event: AuditEvent) => Promise<void> {
  return async (event) => {
    try {
      await storage.appendAudit({
        at: clock(),
        actor: event.actor as Record<string, string | number>,
        action: event.action,
        target: event.target.length > 256 ? `${event.target.slice(0, 255)}…` : event.target,
        outcome: event.outcome,
        ...(event.detail === undefined ? {} : { detail: event.detail }),
      });
    } catch {
      log(`audit: appending a ${event.action} record failed`);
    }
  };
}

/** An address as an anonymous audit actor holds it (at most 64 characters). */
export function anonymousActor(address: string): AuditActorJson {
  return { kind: 'anonymous', address: address.slice(0, 64) };
}

/** Parses untrusted input against a wire schema; a mismatch is a ZodError (→ BAD_REQUEST). */
export function parse<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  return schema.parse(value) as z.output<S>;
}

/**
 * The session of a request's `Authorization: Bearer` token, or UNAUTHENTICATED. Called only
 * by the central preHandler (authz.ts); handlers read its result with `requestIdentity`.
 */
export function authenticate(ctx: ServiceContext, req: FastifyRequest): Promise<SessionIdentity> {
  const h = req.headers.authorization;
  const m = typeof h === 'string' ? /^Bearer ([A-Za-z0-9_-]{1,128})$/.exec(h) : null;
  return ctx.sessions.authenticate(m?.[1]);
}

/**
 * Checks both prekey signatures of an uploaded device against its identity key
 * (libsignal: XEdDSA by the identity key over the serialised, type-prefixed public key).
 * Done before anything is stored, so a bad upload changes nothing.
 */
export function checkPrekeySignatures(d: {
  identityKey: Uint8Array;
  authKey: Uint8Array;
  signedPrekey: { publicKey: Uint8Array; signature: Uint8Array };
  kyberPrekey: { publicKey: Uint8Array; signature: Uint8Array };
}): void {
  // The auth key must be the device's own: were it the identity key, every device of the
  // user (they all hold the identity key) could sign in as this one.
  if (Buffer.compare(d.authKey, d.identityKey) === 0) {
    throw new ApiError('BAD_REQUEST', 400, 'the device auth key must differ from the identity key');
  }
  const ik = d.identityKey.subarray(1);
  if (!xeddsaVerify(ik, d.signedPrekey.publicKey, d.signedPrekey.signature)) {
    throw new ApiError('INVALID_SIGNATURE', 400, 'the signed prekey signature does not verify');
  }
  if (!xeddsaVerify(ik, d.kyberPrekey.publicKey, d.kyberPrekey.signature)) {
    throw new ApiError('INVALID_SIGNATURE', 400, 'the Kyber prekey signature does not verify');
  }
}

/** Verifies a rotated prekey against the user's stored identity key. */
export async function checkRotatedPrekey(
  ctx: ServiceContext,
  userId: string,
  prekey: { publicKey: Uint8Array; signature: Uint8Array },
): Promise<void> {
  const user = await ctx.storage.getUser(userId);
  if (!user?.identityKey || !xeddsaVerify(user.identityKey.subarray(1), prekey.publicKey, prekey.signature)) {
    throw new ApiError('INVALID_SIGNATURE', 400, 'the prekey signature does not verify');
  }
}

/** A parsed wire device as the storage takes it. */
export function toNewDevice(d: NewDeviceData): NewDevice {
  return {
    name: d.name,
    registrationId: d.registrationId,
    identityKey: d.identityKey,
    authKey: d.authKey,
    signedPrekey: d.signedPrekey,
    kyberPrekey: d.kyberPrekey,
    oneTimePrekeys: d.oneTimePrekeys,
  };
}

/** The client address rate limits are counted against. */
export function clientAddress(req: FastifyRequest): string {
  return req.socket.remoteAddress ?? 'unknown';
}
