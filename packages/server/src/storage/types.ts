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

// --- RBAC, org units, channels, audit (issue 5) ----------------------------------------------

/**
 * Where a grant applies. Global grants are the user's `roles` (grantRole/revokeRole);
 * unit and channel grants live beside them. A unit grant applies to the unit's whole subtree.
 */
export type GrantScope =
  | { readonly kind: 'global' }
  | { readonly kind: 'unit'; readonly unitId: string }
  | { readonly kind: 'channel'; readonly channelId: string };

/** A role: built-in (admin, auditor, member, guest: defined in code, @qalqon/wire BUILTIN_ROLES) or custom (stored). */
export interface Role {
  readonly name: string;
  readonly builtin: boolean;
  /** Sorted, distinct, each one of @qalqon/wire PERMISSIONS. */
  readonly permissions: readonly string[];
  readonly createdAt: number;
}

export interface Grant {
  readonly userId: string;
  readonly role: string;
  readonly scope: GrantScope;
}

export interface OrgUnit {
  /** 32 hex digits, server-generated. */
  readonly id: string;
  /** Unique in the organisation, as user names. */
  readonly name: string;
  /** Undefined for a top-level unit. */
  readonly parentId: string | undefined;
  readonly createdAt: number;
}

export interface Channel {
  /** 32 hex digits, chosen by the creating client (it is inside the signed genesis change). */
  readonly id: string;
  /** Unique in the organisation: a routing name like a user name. */
  readonly name: string;
  readonly unitId: string | undefined;
  readonly createdBy: string;
  /** The seq of the last change in its log (0 after creation). */
  readonly seq: number;
  readonly memberCount: number;
  readonly createdAt: number;
}

export interface ChannelMembership {
  readonly userId: string;
  readonly role: 'member' | 'manager';
  /** The log seq of the change that added them. */
  readonly addedSeq: number;
}

/** One signed change of a channel's membership log, stored as received (sealed at rest). */
export interface ChannelLogEntry {
  readonly seq: number;
  readonly change: Uint8Array;
  readonly signature: Uint8Array;
}

/** How a verified change alters the member table (the service has checked the signature and rules). */
export type ChannelEffect =
  | { readonly kind: 'add'; readonly userId: string; readonly role: 'member' | 'manager' }
  | { readonly kind: 'remove'; readonly userId: string };

/** What is recorded about a security event. Never message content or key material. */
export interface AuditEntry {
  readonly at: number;
  /** @qalqon/wire AuditActor JSON. */
  readonly actor: Readonly<Record<string, string | number>>;
  /** One of @qalqon/wire AUDIT_ACTIONS. */
  readonly action: string;
  /** What it acted on, e.g. `user:alice`. At most 256 characters. */
  readonly target: string;
  readonly outcome: 'ok' | 'denied' | 'failed';
  /** Non-secret details. */
  readonly detail?: Readonly<Record<string, string | number | boolean>> | undefined;
}

export interface AuditRecord extends AuditEntry {
  /** 1, 2, ... with no gaps. */
  readonly seq: number;
  /** Hex SHA-256 of the previous record's canonical bytes; 64 zeros for the first. */
  readonly prevHash: string;
  /** Hex SHA-256 of this record's canonical bytes (audit/chain.ts). */
  readonly hash: string;
}

/** The outcome of walking the audit chain (@qalqon/wire AuditVerifyResponse). */
export type AuditVerification =
  | {
      readonly ok: true;
      readonly records: number;
      readonly head: { readonly seq: number; readonly hash: string };
    }
  | {
      readonly ok: false;
      readonly records: number;
      readonly seq: number;
      readonly problem: 'edited' | 'removed' | 'inserted' | 'reordered' | 'truncated' | 'head-signature';
      readonly message: string;
    };

// --- files (issue 6) ---------------------------------------------------------------------

/** Who may read a file once it is complete (besides its owner). */
export type FileRecipients =
  | { readonly kind: 'users'; readonly userIds: readonly string[] }
  | { readonly kind: 'channel'; readonly channelId: string };

/** A file's data key as the KMS wrapped it (under the context `file:<id>`). */
export interface StoredWrappedKey {
  readonly keyId: string;
  readonly ciphertext: Uint8Array;
}

export interface NewFile {
  /** 32 hex digits, chosen by the caller: the wrapped key is bound to it before the row exists. */
  readonly id: string;
  readonly ownerId: string;
  /** Exact size in bytes of what the client uploads (its ciphertext). */
  readonly size: number;
  /** Bytes per at-rest chunk (the last one may be shorter). */
  readonly chunkSize: number;
  readonly recipients: FileRecipients;
  readonly wrappedKey: StoredWrappedKey;
}

export interface StoredFile extends NewFile {
  /** Bytes stored so far: a multiple of `chunkSize` until it reaches `size`. */
  readonly received: number;
  /** `received === size`. */
  readonly complete: boolean;
  readonly createdAt: number;
  /** The last append (or the creation). */
  readonly updatedAt: number;
}

/** The limits `createFile` enforces, from the service's configuration. */
export interface FileLimits {
  readonly maxFileBytes: number;
  /** The most bytes one user's files (complete and in progress) may add up to. */
  readonly quotaBytes: number;
}

/** One stored chunk: opaque bytes to the storage (files/chunk-format.ts seals them). */
export interface FileChunk {
  readonly index: number;
  readonly data: Uint8Array;
}

/**
 * What every stored chunk adds to its plaintext (files/chunk-format.ts: format byte,
 * nonce, tag): a chunk of `bytes` plaintext bytes is exactly `bytes + FILE_CHUNK_OVERHEAD`
 * bytes of data. Fixed, so the embedded backend keeps chunk `i` at byte
 * `i × (chunkSize + FILE_CHUNK_OVERHEAD)` of the file's blob.
 */
export const FILE_CHUNK_OVERHEAD = 29;

/** A chunk to append: its index, its plaintext length, and its sealed data. */
export interface NewFileChunk {
  readonly index: number;
  /** Plaintext bytes: `chunkSize`, or what is left for the last chunk. */
  readonly bytes: number;
  /** Exactly `bytes + FILE_CHUNK_OVERHEAD` bytes. */
  readonly data: Uint8Array;
}

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

  // --- roles and grants ----------------------------------------------------------------
  /** Built-in roles (from code) and custom roles, by name. */
  listRoles(): Promise<Role[]>;
  getRole(name: string): Promise<Role | undefined>;
  /** A custom role. ROLE_EXISTS (also for a built-in name); INVALID_ARGUMENT for an unknown permission. */
  createRole(input: { readonly name: string; readonly permissions: readonly string[] }): Promise<Role>;
  /** ROLE_NOT_FOUND, ROLE_BUILTIN, ROLE_IN_USE (still granted, in any scope). */
  deleteRole(name: string): Promise<void>;
  /**
   * Idempotent. A global scope is grantRole. USER_NOT_FOUND, ROLE_NOT_FOUND,
   * ORG_UNIT_NOT_FOUND, CHANNEL_NOT_FOUND.
   */
  addGrant(grant: Grant): Promise<void>;
  /** Idempotent; unknown users, roles, units or channels are not an error. */
  removeGrant(grant: Grant): Promise<void>;
  /** Every grant (global ones included), or one user's; ordered by user, role, scope. */
  listGrants(filter?: { readonly userId?: string }): Promise<Grant[]>;

  // --- org units -----------------------------------------------------------------------
  /** ORG_UNIT_EXISTS; ORG_UNIT_NOT_FOUND for an unknown parent. */
  createOrgUnit(input: { readonly name: string; readonly parentId?: string }): Promise<OrgUnit>;
  getOrgUnit(id: string): Promise<OrgUnit | undefined>;
  findOrgUnitByName(name: string): Promise<OrgUnit | undefined>;
  /** All units, by name. */
  listOrgUnits(): Promise<OrgUnit[]>;
  /** ORG_UNIT_NOT_FOUND; ORG_UNIT_NOT_EMPTY while it has sub-units, users, channels or grants. */
  removeOrgUnit(id: string): Promise<void>;
  /** Idempotent. USER_NOT_FOUND, ORG_UNIT_NOT_FOUND. */
  addUserToOrgUnit(userId: string, unitId: string): Promise<void>;
  /** Idempotent. */
  removeUserFromOrgUnit(userId: string, unitId: string): Promise<void>;
  /** The ids of the units the user belongs to directly (not their ancestors), sorted. */
  listUserOrgUnits(userId: string): Promise<string[]>;
  /** The ids of the users directly in the unit, sorted. */
  listOrgUnitUsers(unitId: string): Promise<string[]>;

  // --- channels ------------------------------------------------------------------------
  /**
   * Creates a channel with its signed genesis change (seq 0) and its creator as the only
   * member, a manager. CHANNEL_EXISTS for a taken id or name; USER_NOT_FOUND;
   * ORG_UNIT_NOT_FOUND.
   */
  createChannel(input: {
    readonly id: string;
    readonly name: string;
    readonly unitId?: string;
    readonly createdBy: string;
    readonly genesis: { readonly change: Uint8Array; readonly signature: Uint8Array };
  }): Promise<Channel>;
  getChannel(id: string): Promise<Channel | undefined>;
  findChannelByName(name: string): Promise<Channel | undefined>;
  /** All channels, or those `memberUserId` belongs to; by name. */
  listChannels(filter?: { readonly memberUserId?: string }): Promise<Channel[]>;
  /**
   * Appends a verified change and applies its effect to the member table, atomically.
   * CHANNEL_CONFLICT unless `entry.seq` is the channel's seq + 1 (another change came
   * first); CHANNEL_NOT_FOUND; USER_NOT_FOUND for an added user who does not exist.
   */
  appendChannelChange(channelId: string, entry: ChannelLogEntry, effect: ChannelEffect): Promise<Channel>;
  /** Log entries in seq order, after `afterSeq` if given, at most `limit` (default 500). */
  channelLog(
    channelId: string,
    options?: { readonly afterSeq?: number; readonly limit?: number },
  ): Promise<ChannelLogEntry[]>;
  /** The member table, by user id. CHANNEL_NOT_FOUND. */
  channelMembers(channelId: string): Promise<ChannelMembership[]>;
  /** The user's membership, or undefined. */
  channelMembership(channelId: string, userId: string): Promise<ChannelMembership | undefined>;
  /**
   * Every device of every member, by user id then device id, in one read: what a channel
   * message fans out to (no device fields are opened). CHANNEL_NOT_FOUND.
   */
  channelMemberDevices(channelId: string): Promise<{ userId: string; deviceId: number }[]>;
  /** Removes the channel, its log, members and channel-scoped grants. CHANNEL_NOT_FOUND. */
  removeChannel(id: string): Promise<void>;

  // --- audit log -----------------------------------------------------------------------
  /**
   * Appends one record to the hash chain and re-signs the head with the audit key, in one
   * transaction (several nodes may append at once: each append sees the previous one).
   */
  appendAudit(entry: AuditEntry): Promise<AuditRecord>;
  /** Records in seq order: after `afterSeq`, at or after `since` (ms), at most `limit` (default 1000). */
  listAudit(options?: {
    readonly afterSeq?: number;
    readonly since?: number;
    readonly limit?: number;
  }): Promise<AuditRecord[]>;
  /** Walks the whole chain as stored and checks the signed head (audit/chain.ts). */
  verifyAudit(): Promise<AuditVerification>;

  // --- files ---------------------------------------------------------------------------
  /**
   * Creates an empty file, atomically checking its owner's quota against the sum of the
   * sizes of their files (complete and in progress): FILE_TOO_LARGE over
   * `limits.maxFileBytes`, QUOTA_EXCEEDED over `limits.quotaBytes`; USER_NOT_FOUND for the
   * owner; INVALID_ARGUMENT for a taken id. Recipients are sealed at rest.
   */
  createFile(file: NewFile, limits: FileLimits): Promise<StoredFile>;
  getFile(fileId: string): Promise<StoredFile | undefined>;
  /**
   * Stores the file's next chunks (1..MAX_FILE_CHUNKS_PER_APPEND, consecutive, the first
   * at index `received / chunkSize`) and advances `received` by their `bytes` (each a
   * whole chunk, or exactly what is left for the last one), all or nothing: when this
   * resolves the chunks are on stable storage. UPLOAD_OFFSET_MISMATCH unless the first
   * chunk is the next one (another writer appended first, or the file is complete);
   * FILE_NOT_FOUND; INVALID_ARGUMENT for wrong `bytes` or data lengths.
   *
   * The embedded backend writes the chunks into the file's blob (a file beside the
   * database) and syncs it before it commits `received`, in one commit per call: bytes of
   * a blob past `received` (left by a crash in between) are never read and are
   * overwritten by the resumed upload. PostgreSQL stores them as rows, in one transaction.
   */
  appendFileChunks(fileId: string, chunks: readonly NewFileChunk[]): Promise<StoredFile>;
  /**
   * The stored chunks with index in [first, first + count), in index order; a missing
   * chunk is simply absent from the result, and one stored short comes back short (the
   * caller decides that is corruption). Only chunks below `received` are returned.
   * `count` is at most MAX_FILE_CHUNKS_PER_READ. FILE_NOT_FOUND for no such file.
   */
  readFileChunks(fileId: string, first: number, count: number): Promise<FileChunk[]>;
  /** Deletes the file and its chunks if `ownerId` owns it; FILE_NOT_FOUND otherwise (either way). */
  deleteFile(fileId: string, ownerId: string): Promise<void>;
  /** The sum of the sizes of the user's files, complete and in progress. */
  fileUsage(userId: string): Promise<number>;
  /** Deletes incomplete files last appended to (or created) before `updatedBefore`; returns how many. */
  purgeIncompleteFiles(updatedBefore: number): Promise<number>;
  /** How many files' data keys each KEK version wraps (for KEK rotation and destruction). */
  fileKeyVersions(): Promise<{ readonly keyId: string; readonly files: number }[]>;
  /**
   * Up to `limit` files whose data key is wrapped under another KEK version than
   * `exceptKeyId`, with id greater than `afterId` (a cursor), by id.
   */
  listFileKeys(options: {
    readonly exceptKeyId: string;
    readonly afterId?: string;
    readonly limit: number;
  }): Promise<{ readonly fileId: string; readonly wrappedKey: StoredWrappedKey }[]>;
  /**
   * Replaces a file's wrapped data key if it is still wrapped under `expectedKeyId`
   * (another node may have re-wrapped it meanwhile); returns whether it did.
   */
  replaceFileKey(fileId: string, expectedKeyId: string, wrappedKey: StoredWrappedKey): Promise<boolean>;

  /** Closes the backend; further calls throw CLOSED. Idempotent. */
  close(): Promise<void>;
}
