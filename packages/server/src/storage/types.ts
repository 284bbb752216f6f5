/**
 * The server's storage contract. The embedded SQLCipher backend (`sqlite.ts`) implements it
 * now; a PostgreSQL backend will implement it next and must pass the same conformance
 * suite (`conformance.ts`).
 *
 * Rules every backend keeps:
 * - every method validates its arguments first; a refused call (coded ServerError) changes
 *   no state, and a multi-row change (enrolment, a fan-out enqueue) is all or nothing;
 * - a method that returns has committed durably: an enqueued envelope survives a crash;
 * - values the server does not route on (device names, public keys, envelope bodies) are
 *   sealed with a FieldSealer before they reach the backend, bound to their row;
 * - enrolment codes are stored only as a keyed hash, expire, and redeem once;
 * - one-time prekeys are consumed atomically: concurrent bundle fetches never share one.
 */

/** A Signal-style signed prekey (EC or Kyber): id, public key with type byte, XEdDSA signature. */
export interface SignedPrekey {
  /** 0..2^24-1, as libsignal's prekey ids. */
  readonly id: number;
  /** EC: 33 bytes (0x05 ‖ X25519). Kyber: 1569 bytes (0x08 ‖ Kyber1024 public key). */
  readonly publicKey: Uint8Array;
  /** 64-byte XEdDSA signature by the identity key (checked by the service layer, not here). */
  readonly signature: Uint8Array;
}

/** A one-time EC prekey. */
export interface OneTimePrekey {
  readonly id: number;
  /** 33 bytes: 0x05 ‖ X25519 public key. */
  readonly publicKey: Uint8Array;
}

export interface User {
  /** 32 hex digits, server-generated. */
  readonly id: string;
  /** Unique login/routing name, `[a-z0-9][a-z0-9._-]{0,63}`. */
  readonly name: string;
  readonly roles: readonly string[];
  /** The user's identity key (33 bytes), shared by all their devices; undefined until first enrolment. */
  readonly identityKey: Uint8Array | undefined;
  readonly createdAt: number;
}

/** What a device uploads when it is enrolled or linked. */
export interface NewDevice {
  /** A label the user chose (sealed at rest). 1..128 characters. */
  readonly name: string;
  /** libsignal registration id, 1..16380. */
  readonly registrationId: number;
  /** 33 bytes. For a linked device it must equal the user's identity key. */
  readonly identityKey: Uint8Array;
  readonly signedPrekey: SignedPrekey;
  readonly kyberPrekey: SignedPrekey;
  readonly oneTimePrekeys: readonly OneTimePrekey[];
  /**
   * The device's own 33-byte (0x05-typed) Curve25519 key for signing authentication
   * challenges. The identity key cannot serve: every device of the user shares it.
   */
  readonly authKey?: Uint8Array;
}

export interface Device {
  readonly userId: string;
  /** 1, 2, ...: assigned by the server and never reused for the same user. */
  readonly deviceId: number;
  readonly name: string;
  readonly registrationId: number;
  readonly signedPrekey: SignedPrekey;
  readonly kyberPrekey: SignedPrekey;
  readonly oneTimePrekeyCount: number;
  /** See NewDevice.authKey; undefined when the device registered without one. */
  readonly authKey: Uint8Array | undefined;
  readonly createdAt: number;
}

/** One device's part of a prekey bundle. */
export interface PrekeyBundle {
  readonly userId: string;
  readonly deviceId: number;
  readonly registrationId: number;
  readonly identityKey: Uint8Array;
  readonly signedPrekey: SignedPrekey;
  readonly kyberPrekey: SignedPrekey;
  /** Consumed by this fetch; undefined when the device has run out. */
  readonly oneTimePrekey: OneTimePrekey | undefined;
  /** How many remain after this fetch, so the caller can tell the device to replenish. */
  readonly oneTimePrekeysRemaining: number;
}

export interface NewEnvelope {
  readonly recipientUserId: string;
  readonly recipientDeviceId: number;
  readonly senderUserId: string;
  readonly senderDeviceId: number;
  /** Opaque ciphertext; the server cannot read it and seals it again at rest. */
  readonly body: Uint8Array;
}

export interface Envelope extends NewEnvelope {
  /** 32 hex digits: what the recipient acknowledges. */
  readonly id: string;
  /** Store-wide increasing sequence: the delivery order, and a cursor for `afterSeq`. */
  readonly seq: number;
  readonly createdAt: number;
}

export interface EnvelopeReceipt {
  readonly id: string;
  readonly seq: number;
  readonly recipientUserId: string;
  readonly recipientDeviceId: number;
}

export interface MailboxStats {
  readonly count: number;
  readonly bytes: number;
}

export interface StorageLimits {
  readonly maxDevicesPerUser: number;
  /** One-time prekeys stored per device (an upload that would exceed it is refused). */
  readonly maxOneTimePrekeysPerDevice: number;
  /** Largest envelope body, bytes. */
  readonly maxEnvelopeBytes: number;
  /** Undelivered envelopes per device. */
  readonly maxQueuedPerDevice: number;
  /** Undelivered envelope bytes per device. */
  readonly maxQueuedBytesPerDevice: number;
  /** Envelopes older than this are never delivered and are purged. */
  readonly maxEnvelopeAgeMs: number;
}

export const DEFAULT_LIMITS: StorageLimits = Object.freeze({
  maxDevicesPerUser: 16,
  maxOneTimePrekeysPerDevice: 1000,
  maxEnvelopeBytes: 256 * 1024,
  maxQueuedPerDevice: 10_000,
  maxQueuedBytesPerDevice: 100 * 1024 * 1024,
  maxEnvelopeAgeMs: 30 * 24 * 3600 * 1000,
});

export interface Storage {
  // --- users ---------------------------------------------------------------------------
  /** USER_EXISTS if the name is taken. */
  createUser(input: { readonly name: string; readonly roles?: readonly string[] }): Promise<User>;
  getUser(userId: string): Promise<User | undefined>;
  findUserByName(name: string): Promise<User | undefined>;
  /** All users, by name. */
  listUsers(): Promise<User[]>;
  /** Removes the user with their devices, prekeys, codes and queued envelopes. USER_NOT_FOUND. */
  removeUser(userId: string): Promise<void>;
  /** Idempotent. USER_NOT_FOUND. */
  grantRole(userId: string, role: string): Promise<void>;
  /** Idempotent. USER_NOT_FOUND. */
  revokeRole(userId: string, role: string): Promise<void>;

  // --- enrolment -----------------------------------------------------------------------
  /**
   * Stores a keyed hash of `code` for the user, valid until `expiresAt`; any earlier unused
   * code of the user stops working. The caller generates the code (high entropy) and shows it once.
   */
  createEnrolmentCode(input: {
    readonly userId: string;
    readonly code: string;
    readonly expiresAt: number;
  }): Promise<void>;
  /**
   * Redeems `code` and registers `device` as the user's first device, atomically. The
   * device's identity key becomes the user's; an enrolment is a new identity, so any
   * devices the user had are removed with their queues. ENROLMENT_CODE_INVALID for an
   * unknown, expired or used code (one code: no hint which).
   */
  enrolDevice(input: { readonly code: string; readonly device: NewDevice }): Promise<Device>;

  // --- devices -------------------------------------------------------------------------
  /** Adds a linked device; its identity key must be the user's (IDENTITY_KEY_MISMATCH). */
  addDevice(userId: string, device: NewDevice): Promise<Device>;
  getDevice(userId: string, deviceId: number): Promise<Device | undefined>;
  listDevices(userId: string): Promise<Device[]>;
  /** Removes the device with its prekeys and queue. DEVICE_NOT_FOUND. */
  removeDevice(userId: string, deviceId: number): Promise<void>;

  // --- prekeys -------------------------------------------------------------------------
  /** Adds one-time prekeys; PREKEY_EXISTS for a repeated id, TOO_MANY_PREKEYS over the limit. Returns the new count. */
  addOneTimePrekeys(userId: string, deviceId: number, prekeys: readonly OneTimePrekey[]): Promise<number>;
  /** Replaces the device's signed EC prekey. */
  setSignedPrekey(userId: string, deviceId: number, prekey: SignedPrekey): Promise<void>;
  /** Replaces the device's signed Kyber (last-resort) prekey. */
  setKyberPrekey(userId: string, deviceId: number, prekey: SignedPrekey): Promise<void>;
  /**
   * One bundle per device of the user (or only `deviceId`), each consuming one one-time
   * prekey, lowest id first, atomically. USER_NOT_FOUND / DEVICE_NOT_FOUND.
   */
  fetchPrekeyBundles(userId: string, options?: { readonly deviceId?: number }): Promise<PrekeyBundle[]>;

  // --- mailbox -------------------------------------------------------------------------
  /**
   * Stores envelopes durably before returning (all or none): ENVELOPE_TOO_LARGE,
   * MAILBOX_FULL (count or bytes, for any recipient), DEVICE_NOT_FOUND.
   */
  enqueue(envelopes: readonly NewEnvelope[]): Promise<EnvelopeReceipt[]>;
  /** Undelivered, unexpired envelopes for one device in `seq` order, after `afterSeq` if given. */
  fetchEnvelopes(
    userId: string,
    deviceId: number,
    options?: { readonly limit?: number; readonly afterSeq?: number },
  ): Promise<Envelope[]>;
  /** Deletes the given envelopes of this device (others' ids are ignored). Idempotent; returns how many were deleted. */
  ackEnvelopes(userId: string, deviceId: number, ids: readonly string[]): Promise<number>;
  mailboxStats(userId: string, deviceId: number): Promise<MailboxStats>;
  /** Deletes every envelope older than the age limit; returns how many. */
  purgeExpiredEnvelopes(): Promise<number>;

  /** Closes the backend; further calls throw CLOSED. Idempotent. */
  close(): Promise<void>;
}
