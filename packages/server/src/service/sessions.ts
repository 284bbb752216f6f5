/**
 * Device authentication. A device proves possession of its auth key (a Curve25519 key it
 * registered, distinct from the identity key all of a user's devices share):
 *
 * 1. `challenge(userId, deviceId)` → 32 random bytes, single use, valid CHALLENGE_TTL_MS;
 * 2. the device signs `authChallengeMessage(challenge, userId, deviceId)` with XEdDSA;
 * 3. `signIn(...)` verifies it and returns a random session token valid SESSION_TTL_MS.
 *
 * Only SHA-256 hashes of tokens are kept, so a memory dump of the table yields nothing
 * reusable; looking a token up by its hash also means no comparison of secret bytes ever
 * depends on how much of a guess was right. Sessions and challenges live in memory: a
 * restart signs every device out, and the device signs in again.
 */
import { randomBytes, sha256, xeddsaVerify } from '@qalqon/crypto';
import { authChallengeMessage, CHALLENGE_LEN } from '@qalqon/wire';
import type { Storage } from '../storage/types.js';
import { ApiError } from './api-error.js';
import { FailureLimiter } from './rate-limit.js';

export const CHALLENGE_TTL_MS = 60_000;
export const SESSION_TTL_MS = 60 * 60_000;
/** Outstanding challenges held at once (oldest dropped first): bounds memory under a flood. */
export const MAX_CHALLENGES = 100_000;
/** Failed sign-ins allowed per device and per client address within AUTH_FAILURE_WINDOW_MS. */
export const MAX_AUTH_FAILURES_PER_DEVICE = 5;
export const MAX_AUTH_FAILURES_PER_ADDRESS = 20;
export const AUTH_FAILURE_WINDOW_MS = 60_000;

export interface SessionIdentity {
  readonly userId: string;
  readonly deviceId: number;
}

interface Session extends SessionIdentity {
  readonly expiresAt: number;
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

function unauthenticated(): ApiError {
  // One message whatever failed: unknown device, no auth key, stale challenge, bad signature.
  return new ApiError('UNAUTHENTICATED', 401, 'authentication failed');
}

export class SessionManager {
  readonly #storage: Storage;
  readonly #clock: () => number;
  readonly #sessionTtl: number;
  /** hex(challenge) → who it was issued to and until when. */
  readonly #challenges = new Map<string, SessionIdentity & { expiresAt: number }>();
  /** hex(sha256(token)) → session. */
  readonly #sessions = new Map<string, Session>();
  readonly deviceLimiter: FailureLimiter;
  readonly addressLimiter: FailureLimiter;

  constructor(storage: Storage, options: { clock?: () => number; sessionTtlMs?: number } = {}) {
    this.#storage = storage;
    this.#clock = options.clock ?? Date.now;
    this.#sessionTtl = options.sessionTtlMs ?? SESSION_TTL_MS;
    const clock = this.#clock;
    this.deviceLimiter = new FailureLimiter({
      maxFailures: MAX_AUTH_FAILURES_PER_DEVICE,
      windowMs: AUTH_FAILURE_WINDOW_MS,
      clock,
    });
    this.addressLimiter = new FailureLimiter({
      maxFailures: MAX_AUTH_FAILURES_PER_ADDRESS,
      windowMs: AUTH_FAILURE_WINDOW_MS,
      clock,
    });
  }

  /** Issues a challenge for (userId, deviceId). Issued whether or not the device exists, so it reveals nothing. */
  challenge(userId: string, deviceId: number): { challenge: Uint8Array; expiresAt: number } {
    const now = this.#clock();
    const challenge = randomBytes(CHALLENGE_LEN);
    const expiresAt = now + CHALLENGE_TTL_MS;
    this.#challenges.set(hex(challenge), { userId, deviceId, expiresAt });
    if (this.#challenges.size > MAX_CHALLENGES) {
      const oldest = this.#challenges.keys().next().value;
      if (oldest !== undefined) this.#challenges.delete(oldest);
    }
    return { challenge, expiresAt };
  }

  /**
   * Verifies a signed challenge and opens a session. RATE_LIMITED while the device or the
   * address has failed too often (checked before any work); UNAUTHENTICATED otherwise.
   */
  async signIn(input: {
    readonly userId: string;
    readonly deviceId: number;
    readonly challenge: Uint8Array;
    readonly signature: Uint8Array;
    readonly address: string;
  }): Promise<{ token: string; expiresAt: number }> {
    const deviceKey = `${input.userId}/${input.deviceId}`;
    this.deviceLimiter.check(deviceKey);
    this.addressLimiter.check(input.address);
    const now = this.#clock();
    // A challenge is consumed by its first use, right or wrong: it can never be replayed.
    const issued = this.#challenges.get(hex(input.challenge));
    this.#challenges.delete(hex(input.challenge));
    const device =
      issued && issued.userId === input.userId && issued.deviceId === input.deviceId && issued.expiresAt > now
        ? await this.#storage.getDevice(input.userId, input.deviceId)
        : undefined;
    const ok =
      device?.authKey !== undefined &&
      xeddsaVerify(
        device.authKey.subarray(1),
        authChallengeMessage(input.challenge, input.userId, input.deviceId),
        input.signature,
      );
    if (!ok) {
      this.deviceLimiter.fail(deviceKey);
      this.addressLimiter.fail(input.address);
      throw unauthenticated();
    }
    const token = Buffer.from(randomBytes(32)).toString('base64url');
    const expiresAt = now + this.#sessionTtl;
    this.#sessions.set(hex(sha256(new TextEncoder().encode(token))), {
      userId: input.userId,
      deviceId: input.deviceId,
      expiresAt,
    });
    return { token, expiresAt };
  }

  /** The session a token belongs to, or UNAUTHENTICATED. */
  authenticate(token: string | undefined): SessionIdentity {
    if (token === undefined) throw unauthenticated();
    const key = hex(sha256(new TextEncoder().encode(token)));
    const s = this.#sessions.get(key);
    if (!s) throw unauthenticated();
    if (s.expiresAt <= this.#clock()) {
      this.#sessions.delete(key);
      throw unauthenticated();
    }
    return { userId: s.userId, deviceId: s.deviceId };
  }

  /** Ends every session of a user (or of one device of theirs): after removal or re-enrolment. */
  revoke(userId: string, deviceId?: number, except?: number): void {
    for (const [k, s] of this.#sessions) {
      if (s.userId !== userId) continue;
      if (deviceId !== undefined && s.deviceId !== deviceId) continue;
      if (except !== undefined && s.deviceId === except) continue;
      this.#sessions.delete(k);
    }
  }

  /** Drops expired sessions and challenges (called periodically). */
  sweep(): void {
    const now = this.#clock();
    for (const [k, s] of this.#sessions) if (s.expiresAt <= now) this.#sessions.delete(k);
    for (const [k, c] of this.#challenges) if (c.expiresAt <= now) this.#challenges.delete(k);
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }
}
