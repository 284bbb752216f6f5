/**
 * Device authentication, valid on every node of a deployment. A device proves possession of
 * its auth key (a Curve25519 key it registered, distinct from the identity key all of a
 * user's devices share):
 *
 * 1. `challenge(userId, deviceId)` → 32 bytes: an 8-byte nonce, the 6-byte expiry (ms) and
 *    an 18-byte HMAC-SHA-256 tag over (nonce, expiry, user, device) under the challenge key.
 *    Nothing is stored: any node that holds the key recognises its own deployment's
 *    challenges, so the challenge and the session request may land on different nodes.
 * 2. the device signs `authChallengeMessage(challenge, userId, deviceId)` with XEdDSA;
 * 3. `signIn(...)` checks the tag and the expiry (CHALLENGE_TTL_MS), that the challenge was
 *    not used before, and the signature, and returns a session token valid SESSION_TTL_MS.
 *
 * Replay: a challenge is consumed by its first use, right or wrong, in a per-node replay
 * cache (until it expires), and the node tells the others (`onChallengeUsed`, carried by the
 * event bus as `challenge-used`) so they add it to theirs. The residual window: an attacker
 * who obtained a device's signed answer (it crosses the TLS connection only) could redeem it
 * once more on another node before that node heard of the first use (the bus latency,
 * milliseconds; or, while the bus is down, until the challenge expires, at most 60 s).
 *
 * Session token: base64url(version ‖ random id ‖ user ‖ device ‖ expiry ‖ HMAC-SHA-256) under
 * the token key; verified on any node with one MAC (compared in constant time). Both keys are
 * derived (HKDF) from the `session-mac` data key all nodes share (wrapped by the KMS like the
 * other data keys); without one, a random key: sessions then hold in this process only.
 * Revocation: every authentication also checks that the device still exists in storage
 * (device ids are never reused), cached per device for at most DEVICE_CACHE_TTL_MS and
 * dropped at once on a local removal (`revoke`, which also tells the other nodes through
 * `onRevoke`) or a `device-removed` event (`forget`). A session therefore outlives a
 * restart, and ends on every node within DEVICE_CACHE_TTL_MS of its device's removal (at
 * once where the event arrived).
 */
import { constantTimeEqual, hkdfSha256, hmacSha256, randomBytes, xeddsaVerify } from '@qalqon/crypto';
import { authChallengeMessage, CHALLENGE_LEN } from '@qalqon/wire';
import { ServerError } from '../errors.js';
import type { Storage } from '../storage/types.js';
import { ApiError } from './api-error.js';
import { FailureLimiter } from './rate-limit.js';

export const CHALLENGE_TTL_MS = 60_000;
export const SESSION_TTL_MS = 60 * 60_000;
/** Used challenges remembered at once (refusing sign-ins beyond that): bounds memory under a flood. */
export const MAX_CHALLENGES = 100_000;
/** Failed sign-ins allowed per device and per client address within AUTH_FAILURE_WINDOW_MS. */
export const MAX_AUTH_FAILURES_PER_DEVICE = 5;
export const MAX_AUTH_FAILURES_PER_ADDRESS = 20;
export const AUTH_FAILURE_WINDOW_MS = 60_000;
/** How long "this device exists" is trusted without reading the storage again. */
export const DEVICE_CACHE_TTL_MS = 5000;
const MAX_CACHED_DEVICES = 100_000;
/** The data key both MAC keys are derived from (wrapped like the other data keys). */
export const SESSION_MAC_DEK = 'session-mac';

const NONCE_LEN = 8;
const EXPIRY_LEN = 6;
const CHALLENGE_TAG_LEN = CHALLENGE_LEN - NONCE_LEN - EXPIRY_LEN;
const TOKEN_VERSION = 1;
const TOKEN_ID_LEN = 16;
const TOKEN_TAG_LEN = 32;
/** version, id, user (16 bytes), device (u32), expiry (u64), tag. */
const TOKEN_LEN = 1 + TOKEN_ID_LEN + 16 + 4 + 8 + TOKEN_TAG_LEN;
const TOKEN_CHARS = Math.ceil((TOKEN_LEN * 4) / 3);

export interface SessionIdentity {
  readonly userId: string;
  readonly deviceId: number;
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

function unauthenticated(): ApiError {
  // One message whatever failed: unknown device, no auth key, stale challenge, bad signature.
  return new ApiError('UNAUTHENTICATED', 401, 'authentication failed');
}

function u32(n: number): Uint8Array {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

export interface SessionManagerOptions {
  readonly clock?: () => number;
  readonly sessionTtlMs?: number;
  /** The shared `session-mac` data key (32 bytes); default: a random one (this process only). */
  readonly macKey?: Uint8Array;
  /** Called after a local revocation (to tell the other nodes). */
  readonly onRevoke?: (userId: string, deviceId: number | undefined) => void;
  /** Called when a challenge was redeemed here (hex), to tell the other nodes. */
  readonly onChallengeUsed?: (challengeHex: string) => void;
}

interface CachedDevice {
  readonly expires: number;
  readonly exists: Promise<boolean>;
}

export class SessionManager {
  readonly #storage: Storage;
  readonly #clock: () => number;
  readonly #sessionTtl: number;
  readonly #challengeKey: Uint8Array;
  readonly #tokenKey: Uint8Array;
  readonly #onRevoke: SessionManagerOptions['onRevoke'];
  readonly #onChallengeUsed: SessionManagerOptions['onChallengeUsed'];
  /** hex(challenge) → when it expires: challenges used on this node (or reported by others). */
  readonly #used = new Map<string, number>();
  /** `user/device` → whether the device exists, for at most DEVICE_CACHE_TTL_MS. */
  readonly #devices = new Map<string, CachedDevice>();
  readonly deviceLimiter: FailureLimiter;
  readonly addressLimiter: FailureLimiter;

  constructor(storage: Storage, options: SessionManagerOptions = {}) {
    this.#storage = storage;
    this.#clock = options.clock ?? Date.now;
    this.#sessionTtl = options.sessionTtlMs ?? SESSION_TTL_MS;
    const key = options.macKey ?? randomBytes(32);
    if (!(key instanceof Uint8Array) || key.length !== 32) {
      throw new ServerError('INVALID_ARGUMENT', '"options.macKey" expected 32 bytes');
    }
    const info = (label: string) => new TextEncoder().encode(`qalqon/session/${label}/v1`);
    this.#challengeKey = hkdfSha256(key, new Uint8Array(32), info('challenge'), 32);
    this.#tokenKey = hkdfSha256(key, new Uint8Array(32), info('token'), 32);
    this.#onRevoke = options.onRevoke;
    this.#onChallengeUsed = options.onChallengeUsed;
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

  #challengeTag(nonceAndExpiry: Uint8Array, userId: string, deviceId: number): Uint8Array {
    const msg = Buffer.concat([nonceAndExpiry, Buffer.from(userId, 'utf8'), u32(deviceId)]);
    return hmacSha256(this.#challengeKey, msg).subarray(0, CHALLENGE_TAG_LEN);
  }

  /** Issues a challenge for (userId, deviceId). Issued whether or not the device exists, so it reveals nothing. */
  challenge(userId: string, deviceId: number): { challenge: Uint8Array; expiresAt: number } {
    const expiresAt = this.#clock() + CHALLENGE_TTL_MS;
    const head = Buffer.alloc(NONCE_LEN + EXPIRY_LEN);
    head.set(randomBytes(NONCE_LEN), 0);
    head.writeUIntBE(expiresAt, NONCE_LEN, EXPIRY_LEN);
    const challenge = new Uint8Array(CHALLENGE_LEN);
    challenge.set(head, 0);
    challenge.set(this.#challengeTag(head, userId, deviceId), head.length);
    return { challenge, expiresAt };
  }

  /** The challenge's expiry if its tag is ours for (user, device) and it has not expired. */
  #checkChallenge(challenge: Uint8Array, userId: string, deviceId: number, now: number): number | undefined {
    if (!(challenge instanceof Uint8Array) || challenge.length !== CHALLENGE_LEN) return undefined;
    const head = challenge.subarray(0, NONCE_LEN + EXPIRY_LEN);
    const tag = challenge.subarray(NONCE_LEN + EXPIRY_LEN);
    if (!constantTimeEqual(tag, this.#challengeTag(head, userId, deviceId))) return undefined;
    const expiresAt = Buffer.from(head).readUIntBE(NONCE_LEN, EXPIRY_LEN);
    // A tag that verifies was made by a node; the bound on the far side guards against a clock jump.
    if (expiresAt <= now || expiresAt > now + 2 * CHALLENGE_TTL_MS) return undefined;
    return expiresAt;
  }

  /** Marks a challenge used (reported by another node). Idempotent. */
  challengeUsed(challengeHex: string, expiresAt?: number): void {
    if (!/^[0-9a-f]{64}$/.test(challengeHex)) return;
    const at = expiresAt ?? Buffer.from(challengeHex, 'hex').readUIntBE(NONCE_LEN, EXPIRY_LEN);
    // An unauthenticated hint: keep it no longer than any real challenge could live.
    const bounded = Math.min(at, this.#clock() + 2 * CHALLENGE_TTL_MS);
    if (bounded <= this.#clock()) return;
    if (this.#used.size >= MAX_CHALLENGES) this.#sweepUsed();
    if (this.#used.size >= MAX_CHALLENGES) return;
    this.#used.set(challengeHex, bounded);
  }

  #sweepUsed(): void {
    const now = this.#clock();
    for (const [k, exp] of this.#used) if (exp <= now) this.#used.delete(k);
  }

  /**
   * Verifies a signed challenge and opens a session. RATE_LIMITED while the device or the
   * address has failed too often (checked before any work), or while this node remembers
   * MAX_CHALLENGES unexpired used challenges; UNAUTHENTICATED otherwise.
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
    const challengeHex = hex(input.challenge);
    const expiry = this.#checkChallenge(input.challenge, input.userId, input.deviceId, now);
    let fresh = false;
    if (expiry !== undefined && !this.#used.has(challengeHex)) {
      if (this.#used.size >= MAX_CHALLENGES) this.#sweepUsed();
      if (this.#used.size >= MAX_CHALLENGES) {
        throw new ApiError('RATE_LIMITED', 429, 'too many sign-ins right now', 10_000);
      }
      // Consumed by its first use, right or wrong: it can never be replayed on this node.
      this.#used.set(challengeHex, expiry);
      this.#onChallengeUsed?.(challengeHex);
      fresh = true;
    }
    const device = fresh ? await this.#storage.getDevice(input.userId, input.deviceId) : undefined;
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
    const expiresAt = now + this.#sessionTtl;
    const body = Buffer.alloc(TOKEN_LEN - TOKEN_TAG_LEN);
    body.writeUInt8(TOKEN_VERSION, 0);
    body.set(randomBytes(TOKEN_ID_LEN), 1);
    body.write(input.userId, 1 + TOKEN_ID_LEN, 'hex');
    body.writeUInt32BE(input.deviceId, 1 + TOKEN_ID_LEN + 16);
    body.writeBigUInt64BE(BigInt(expiresAt), 1 + TOKEN_ID_LEN + 16 + 4);
    const token = Buffer.concat([body, hmacSha256(this.#tokenKey, body)]).toString('base64url');
    this.#devices.delete(deviceKey);
    return { token, expiresAt };
  }

  /** The identity a token carries, if its MAC verifies and it has not expired (no storage read). */
  #verifyToken(token: string | undefined): SessionIdentity | undefined {
    if (typeof token !== 'string' || token.length !== TOKEN_CHARS || !/^[A-Za-z0-9_-]+$/.test(token)) {
      return undefined;
    }
    const raw = Buffer.from(token, 'base64url');
    if (raw.length !== TOKEN_LEN || raw[0] !== TOKEN_VERSION) return undefined;
    const body = raw.subarray(0, TOKEN_LEN - TOKEN_TAG_LEN);
    const tag = raw.subarray(TOKEN_LEN - TOKEN_TAG_LEN);
    if (!constantTimeEqual(tag, hmacSha256(this.#tokenKey, body))) return undefined;
    const o = 1 + TOKEN_ID_LEN;
    const userId = body.subarray(o, o + 16).toString('hex');
    const deviceId = body.readUInt32BE(o + 16);
    const expiresAt = Number(body.readBigUInt64BE(o + 20));
    if (expiresAt <= this.#clock()) return undefined;
    return { userId, deviceId };
  }

  /** Whether the device still exists (cached at most DEVICE_CACHE_TTL_MS). */
  #deviceExists(userId: string, deviceId: number): Promise<boolean> {
    const key = `${userId}/${deviceId}`;
    const now = this.#clock();
    const hit = this.#devices.get(key);
    if (hit && hit.expires > now) return hit.exists;
    const exists = this.#storage.getDevice(userId, deviceId).then((d) => d !== undefined);
    const entry = { expires: now + DEVICE_CACHE_TTL_MS, exists };
    this.#devices.delete(key);
    this.#devices.set(key, entry);
    if (this.#devices.size > MAX_CACHED_DEVICES) {
      const oldest = this.#devices.keys().next().value;
      if (oldest !== undefined) this.#devices.delete(oldest);
    }
    exists.catch(() => {
      if (this.#devices.get(key) === entry) this.#devices.delete(key);
    });
    return exists;
  }

  /** The session a token belongs to, or UNAUTHENTICATED (also when its device was removed). */
  async authenticate(token: string | undefined): Promise<SessionIdentity> {
    const me = this.#verifyToken(token);
    if (!me) throw unauthenticated();
    if (!(await this.#deviceExists(me.userId, me.deviceId))) throw unauthenticated();
    return me;
  }

  /**
   * Ends the sessions of a user's devices (all, one, or all but `except`) after removal or
   * re-enrolment: storage no longer holds those devices, so dropping the cached answers is
   * enough here; the other nodes are told through `onRevoke`.
   */
  revoke(userId: string, deviceId?: number, except?: number): void {
    this.forget(userId, deviceId, except);
    this.#onRevoke?.(userId, deviceId);
  }

  /** Drops cached device answers (a `device-removed` event from another node, or a resync without userId). */
  forget(userId?: string, deviceId?: number, except?: number): void {
    if (userId === undefined) {
      this.#devices.clear();
      return;
    }
    for (const k of [...this.#devices.keys()]) {
      const [u, d] = k.split('/');
      if (u !== userId) continue;
      if (deviceId !== undefined && Number(d) !== deviceId) continue;
      if (except !== undefined && Number(d) === except) continue;
      this.#devices.delete(k);
    }
  }

  /** Drops expired used challenges and device answers (called periodically). */
  sweep(): void {
    this.#sweepUsed();
    const now = this.#clock();
    for (const [k, c] of this.#devices) if (c.expires <= now) this.#devices.delete(k);
  }

  /** Used challenges this node remembers (for tests and metrics). */
  get usedChallenges(): number {
    return this.#used.size;
  }
}
