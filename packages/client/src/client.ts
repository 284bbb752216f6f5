/**
 * One device of a user: its profile (settings + SQLCipher database), its connection to the
 * pinned server, and the end-to-end sessions with every device it talks to.
 *
 * The protocol package is pure (record in, new record out), so the order of writes is this
 * module's job, and it is what keeps a message from being lost or shown twice:
 *
 * - sending: every new session record is committed BEFORE the ciphertext leaves; encrypting
 *   twice from one stored record would reuse a message key.
 * - receiving: decrypt → commit the new session record, the used one-time prekey's
 *   deletion, the message and the envelope id in one transaction → show → acknowledge. A
 *   redelivered envelope is recognised by its id; a second copy of the same message (its id
 *   is the sender's, shared by all copies) is stored once and shown once.
 * - channels keep both rules: a sender key's handovers (1:1) and its advanced chain are
 *   committed before anything leaves; a received sender key is committed with the session
 *   record that carried it, and a channel message with the sender key state it advanced.
 *
 * Trust: a device is encrypted to only if its prekeys verify under the user's identity key
 * and that key is the one this profile knows for the user (trust on first use, then a
 * change is announced; after `verify`, a change blocks sending until verified again).
 */
import { rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import { constantTimeEqual, randomBytes, sha256, xeddsaSign, xeddsaVerify } from '@qalqon/crypto';
import {
  CiphertextMessageType,
  computeFingerprint,
  createSenderKeyDistributionMessage,
  DISTRIBUTION_ID_LEN,
  decryptMessage,
  deserializeIdentityKeyPair,
  deserializeKyberPreKeyRecord,
  deserializePreKeyRecord,
  deserializeSessionRecord,
  deserializeSignedPreKeyRecord,
  encryptMessage,
  formatSafetyNumber,
  generateCurveKeyPair,
  generateIdentityKeyPair,
  generateKyberPreKey,
  generatePreKeys,
  generateSignedPreKey,
  groupDecrypt,
  groupEncrypt,
  type IdentityKeyPair,
  isProtocolError,
  type LocalIdentity,
  type PreKeyBundle,
  type PreKeyLookup,
  type PreKeyRecord,
  parseSenderKeyDistributionMessage,
  parseSenderKeyMessage,
  processPreKeyBundle,
  processSenderKeyDistributionMessage,
  type SessionRecord,
  serializeIdentityKeyPair,
  serializeKyberPreKeyRecord,
  serializePreKeyRecord,
  serializeSignedPreKeyRecord,
  verifyPreKeyBundle,
} from '@qalqon/protocol';
import {
  AdminUserAddResponse,
  AdminUsersResponse,
  AuditListResponse,
  AuditVerifyResponse,
  applyChannelChange,
  authChallengeMessage,
  BundlesResponse,
  CHANNEL_ENVELOPE_TYPE,
  ChallengeResponse,
  type ChannelChangeJson,
  ChannelId,
  ChannelInfo,
  type ChannelLogCrypto,
  ChannelLogResponse,
  type ChannelMember,
  ChannelName,
  ChannelSendResponse,
  type ChannelState,
  ChannelsResponse,
  channelChangeSigningMessage,
  channelEnvelopeHeader,
  channelIdOfEnvelope,
  DeviceListResponse,
  decodeBase64,
  EnrolResponse,
  encodeBase64,
  encodeChannelChange,
  FileId,
  FileStatus,
  FileUsageResponse,
  GENESIS_PREV,
  type GrantScopeJson,
  GrantsResponse,
  isChannelLogError,
  isWireError,
  LinkCreateResponse,
  LinkLookupResponse,
  LinkPollResponse,
  MAX_CHANNEL_LOG_PAGE,
  MAX_DEVICE_NAME_LEN,
  MAX_PREKEYS_PER_UPLOAD,
  MAX_REGISTRATION_ID,
  MAX_SEND_BATCH,
  MeResponse,
  type NewDeviceJson,
  OkResponse,
  OrgUnitInfo,
  OrgUnitsResponse,
  PrekeyStatusResponse,
  RoleInfo,
  RolesResponse,
  SendResponse,
  ServerFrame,
  SessionResponse,
  signedChangeJson,
  UserDevicesResponse,
  UserName,
  z,
} from '@qalqon/wire';
import type WebSocket from 'ws';
import { type CachedChannel, ChannelStore } from './channel-store.js';
import { ClientError } from './errors.js';
import { MAX_FILE_PLAINTEXT_BYTES } from './file-crypto.js';
import {
  downloadFile,
  type FileSecret,
  makeThumbnail,
  memorySource,
  openSource,
  type ProgressListener,
  readFileRange,
  sniffMime,
  THUMBNAIL_MAX_SIDE,
  uploadFile,
} from './files.js';
import {
  createDatabaseKey,
  deleteOsKey,
  type KeystoreAccess,
  type KeystoreKind,
  loadDatabaseKey,
  type WrappedKey,
} from './keystore.js';
import { linkCodeFor, newLinkRequest, openHandover, sealHandover, splitLinkCode } from './link-handover.js';
import {
  type ClientDatabase,
  createProfileDir,
  DATABASE_FILE,
  Meta,
  openDatabase,
  type ProfileSettings,
  readSettings,
  SETTINGS_FILE,
  writeSettings,
} from './store.js';
import { testHooks } from './test-hooks.js';
import { checkPin, parseServerUrl, ServerConnection } from './transport.js';

/** One-time prekeys a device keeps on the server; topped up when the server says it is low. */
export const ONE_TIME_PREKEY_TARGET = 100;
/** Signed and Kyber prekeys are replaced after this long (Signal rotates weekly-to-monthly). */
export const PREKEY_ROTATION_MS = 7 * 24 * 60 * 60 * 1000;
/** Replaced prekeys are kept this long, for PreKeySignalMessages still in flight. */
export const OLD_PREKEY_GRACE_MS = 30 * 24 * 60 * 60 * 1000;
/** Largest message text, bytes of UTF-8. */
export const MAX_TEXT_BYTES = 64 * 1024;
/** `receive` without a wait returns after the server has been quiet this long. */
export const DRAIN_QUIET_MS = 1000;
/** Link approval is awaited this long by default (the server's slot lives 10 minutes). */
export const LINK_WAIT_MS = 10 * 60_000;
const LINK_POLL_MS = 1000;
/** How long a handled envelope's id is remembered (see `receive`). */
const SEEN_ENVELOPE_TTL_MS = 30 * 24 * 60 * 60 * 1000;
/** libsignal's prekey id space as the wire allows it. */
const MAX_WIRE_PREKEY_ID = 0xffffff;
const FINGERPRINT_VERSION = 2;

/** What the sender encrypts: the text and what every copy of it needs to be shown once, in the right conversation. */
const Content = z.strictObject({
  v: z.literal(1),
  id: z.string().regex(/^[0-9a-f]{32}$/),
  sentAt: z.int().min(0),
  from: UserName,
  /** The conversation: the recipient user (for a copy to the sender's own devices, the peer). */
  to: UserName,
  text: z.string().max(MAX_TEXT_BYTES),
});
type Content = z.output<typeof Content>;

/**
 * A sender key handed over a 1:1 session: the sender device's current sender key for a
 * channel (a Qalqon-format SenderKeyDistributionMessage, base64). The 1:1 plaintext is
 * `Content` when it has no `kind`, so text from older clients stays readable.
 */
const SenderKeyContent = z.strictObject({
  v: z.literal(1),
  kind: z.literal('sender-key'),
  sentAt: z.int().min(0),
  from: UserName,
  channel: ChannelId,
  distribution: z.string().max(512),
});
type SenderKeyContent = z.output<typeof SenderKeyContent>;

/** What a channel message encrypts (with the sender key): bound to its channel and sender. */
const ChannelContent = z.strictObject({
  v: z.literal(1),
  id: z.string().regex(/^[0-9a-f]{32}$/),
  sentAt: z.int().min(0),
  from: UserName,
  channel: ChannelId,
  text: z.string().max(MAX_TEXT_BYTES),
});
type ChannelContent = z.output<typeof ChannelContent>;

/** A file's name as a message may carry it: a single path component, at most 255 characters. */
export const MAX_FILE_NAME_LEN = 255;
/** The largest thumbnail a message may announce (bytes of the image). */
export const MAX_THUMBNAIL_BYTES = 1024 * 1024;
const FileName = z
  .string()
  .min(1)
  .max(MAX_FILE_NAME_LEN)
  .refine((n) => !/[/\0]/.test(n) && n !== '.' && n !== '..', 'expected a file name without "/"');
const FileKey = z.string().regex(/^[A-Za-z0-9+/]{43}=$/, 'expected 32 bytes of base64');
const Sha256Hex = z.string().regex(/^[0-9a-f]{64}$/);
const MimeType = z.string().regex(/^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$/);

/**
 * An end-to-end encrypted file as its message announces it: the server's id for the
 * ciphertext, the key and the plaintext's SHA-256 to open and check it, and what only the
 * message tells (the name, type and size); optionally a thumbnail, uploaded as a file of its own.
 */
const FileRef = z.strictObject({
  fileId: FileId,
  key: FileKey,
  name: FileName,
  size: z.int().min(0).max(MAX_FILE_PLAINTEXT_BYTES),
  mime: MimeType,
  sha256: Sha256Hex,
  thumbnail: z
    .strictObject({
      fileId: FileId,
      key: FileKey,
      size: z.int().min(1).max(MAX_THUMBNAIL_BYTES),
      width: z.int().min(1).max(THUMBNAIL_MAX_SIDE),
      height: z.int().min(1).max(THUMBNAIL_MAX_SIDE),
      mime: z.enum(['image/png', 'image/jpeg']),
      sha256: Sha256Hex,
    })
    .optional(),
});
type FileRef = z.output<typeof FileRef>;

/** A file sent 1:1: `Content` with `kind: 'file'` and the file instead of text. */
const FileContent = z.strictObject({
  v: z.literal(1),
  kind: z.literal('file'),
  id: z.string().regex(/^[0-9a-f]{32}$/),
  sentAt: z.int().min(0),
  from: UserName,
  to: UserName,
  file: FileRef,
});
type FileContent = z.output<typeof FileContent>;

/** A file sent to a channel (with the sender key, as `ChannelContent`). */
const ChannelFileContent = z.strictObject({
  v: z.literal(1),
  kind: z.literal('file'),
  id: z.string().regex(/^[0-9a-f]{32}$/),
  sentAt: z.int().min(0),
  from: UserName,
  channel: ChannelId,
  file: FileRef,
});
type ChannelFileContent = z.output<typeof ChannelFileContent>;

/** The primitives the channel log rules need (@qalqon/wire has no crypto of its own). */
const LOG_CRYPTO: ChannelLogCrypto = { xeddsaVerify, sha256 };
/** Sender-key messages and distribution messages of channels use Qalqon's format (AES-256-GCM). */
const SENDER_KEY_FORMAT = 'qalqon';
/** How often a membership change is signed afresh when another change took its place (CHANNEL_CONFLICT). */
export const CHANNEL_CHANGE_ATTEMPTS = 5;

/** A channel as the server lists it (GET /v1/channels). */
export type ChannelSummary = z.output<typeof ChannelInfo>;

/** A member of a channel as its verified log names them. */
export interface ChannelMemberInfo {
  readonly userId: string;
  readonly user: string;
  readonly role: 'member' | 'manager';
  /** The seq of the change that added them. */
  readonly addedSeq: number;
  /**
   * How the identity key the log binds for them compares with the one this profile knows:
   * `self` (you), `trusted` (equal), `mismatch` (another key: they get no sender key from
   * you), `unknown` (never looked up; the next `sendChannel` learns it through the directory).
   */
  readonly identity: 'self' | 'trusted' | 'mismatch' | 'unknown';
}

/** A file a message carries, as `recv` shows it (fetch it with `getFile(id, path)`). */
export interface ReceivedFile {
  readonly id: string;
  readonly name: string;
  /** Plaintext bytes. */
  readonly size: number;
  readonly mime: string;
  /** The plaintext's SHA-256, hex; `getFile` checks it. */
  readonly sha256: string;
  readonly thumbnail?: {
    readonly id: string;
    readonly width: number;
    readonly height: number;
    readonly mime: string;
    readonly size: number;
  };
}

/** A message as `recv` shows it. */
export interface ReceivedMessage {
  readonly from: string;
  readonly device: number;
  readonly channel: string | null;
  /** The 1:1 conversation it belongs to, named by the other user: the sender, or for a copy of this user's own message (from another of their devices), its recipient. */
  readonly conversation: string;
  /** The text ("" for a file). */
  readonly text: string;
  readonly sentAt: number;
  readonly id: string;
  /** Set when the message carries a file. */
  readonly file?: ReceivedFile;
}

/** What `sendFile` reports. */
export interface SentFile {
  /** The message's id. */
  readonly id: string;
  readonly sentAt: number;
  readonly fileId: string;
  readonly name: string;
  readonly size: number;
  readonly mime: string;
  readonly thumbnail?: { readonly fileId: string; readonly width: number; readonly height: number };
}

/** An envelope that could not be read: why (a protocol or client code), and from whom. */
export interface ReceiveFailure {
  readonly code: string;
  /** The sender's user name if this profile knows it (the server names only the account id). */
  readonly from: string | undefined;
  readonly envelopeId: string;
  readonly senderUserId: string;
  readonly senderDeviceId: number;
  /** For a channel message or sender-key handover: the channel's id. */
  readonly channelId?: string | undefined;
}

export interface ClientOptions {
  readonly profile: string;
  /** Asked for the passphrase of a passphrase-protected profile. */
  readonly passphrase?: (() => string | Promise<string>) | undefined;
  /** Informational lines (first-use pin, weaker keystore). */
  readonly notice?: ((line: string) => void) | undefined;
  /** Security warnings (identity key changed, untrusted device skipped). */
  readonly warning?: ((line: string) => void) | undefined;
  /** The clock, injectable so tests can age prekeys. */
  readonly now?: (() => number) | undefined;
}

export interface NewProfileOptions extends ClientOptions {
  readonly server: string;
  readonly pin?: string | undefined;
  readonly keystore?: KeystoreKind | undefined;
  readonly deviceName?: string | undefined;
}

interface PreparedProfile {
  readonly server: string;
  readonly pin: string | undefined;
  readonly deviceName: string;
  readonly kind: KeystoreKind;
  readonly keyId: string;
  readonly key: Uint8Array;
  readonly wrapped: WrappedKey | undefined;
}

interface PairwiseEnvelope {
  readonly recipientUserId: string;
  readonly recipientDeviceId: number;
  /** Base64 of type byte ‖ message. */
  readonly body: string;
}

interface Contact {
  readonly userId: string;
  readonly name: string;
  readonly identityKey: Uint8Array;
  readonly verified: boolean;
  readonly blocked: boolean;
}

function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && constantTimeEqual(a, b);
}

function randomRegistrationId(): number {
  const b = randomBytes(2);
  return 1 + (((b[0]! << 8) | b[1]!) % MAX_REGISTRATION_ID);
}

function checkUserName(name: string, label: string): string {
  if (!UserName.safeParse(name).success) {
    throw new ClientError(
      'INVALID_ARGUMENT',
      `"${label}" expected a user name ([a-z0-9][a-z0-9._-]*, at most 64)`,
    );
  }
  return name;
}

function checkDeviceName(name: string | undefined): string {
  const n = name ?? 'qalqon cli';
  if (typeof n !== 'string' || n.length < 1 || n.length > MAX_DEVICE_NAME_LEN) {
    throw new ClientError('INVALID_ARGUMENT', `"deviceName" expected 1..${MAX_DEVICE_NAME_LEN} characters`);
  }
  return n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class QalqonClient {
  static {
    testHooks.announceFile = (client, to, fileId, override = {}) => {
      const row = client.#db.prepare('SELECT * FROM files WHERE file_id = ?').get(fileId) as
        | FileRow
        | undefined;
      if (!row) throw new ClientError('FILE_UNKNOWN', `no message carries a file with the id ${fileId}`);
      const file: FileRef = {
        fileId: row.file_id,
        key: encodeBase64(new Uint8Array(row.key)),
        name: row.name,
        size: row.size,
        mime: row.mime,
        sha256: Buffer.from(row.sha256).toString('hex'),
        ...override,
      };
      return client.#sendPairwiseContent(to, { text: '', file });
    };
  }

  readonly #dir: string;
  readonly #db: ClientDatabase;
  /** Who uploaded each file asked for (FileStatus.uploaderId; fixed for a file's life). */
  readonly #fileUploaders = new Map<string, string>();
  readonly #meta: Meta;
  readonly #channels: ChannelStore;
  readonly #conn: ServerConnection;
  readonly #opts: ClientOptions;
  readonly #identity: IdentityKeyPair;
  readonly #registrationId: number;
  #settings: ProfileSettings;
  #closed = false;

  private constructor(dir: string, db: ClientDatabase, settings: ProfileSettings, opts: ClientOptions) {
    this.#dir = dir;
    this.#db = db;
    this.#meta = new Meta(db);
    this.#channels = new ChannelStore(db);
    this.#opts = opts;
    this.#settings = settings;
    this.#conn = new ServerConnection(parseServerUrl(settings.server), this.#pinStore());
    const id = this.#meta.bytes('identity');
    const reg = this.#meta.number('registration_id');
    if (!id || reg === undefined)
      throw new ClientError('PROFILE_CORRUPT', 'the profile database holds no identity');
    this.#identity = deserializeIdentityKeyPair(id);
    this.#registrationId = reg;
  }

  #pinStore() {
    // A getter, so a pin recorded on first use is the one every later connection checks.
    const self = this;
    return {
      get pin() {
        return self.#settings.pin;
      },
      onFirstUse(pin: string) {
        self.#settings = { ...self.#settings, pin };
        writeSettings(self.#dir, self.#settings);
        self.#opts.notice?.(`pinned the server's key ${pin} on first use`);
      },
    };
  }

  #now(): number {
    return this.#opts.now?.() ?? Date.now();
  }

  get userId(): string {
    return this.#meta.string('user_id') ?? '';
  }
  get userName(): string {
    return this.#meta.string('user_name') ?? '';
  }
  get deviceId(): number {
    return this.#meta.number('device_id') ?? 0;
  }
  get pin(): string | undefined {
    return this.#settings.pin;
  }

  // --- opening and creating profiles -------------------------------------------------------

  /** Opens an existing profile (unlocking its database key). */
  static async open(opts: ClientOptions): Promise<QalqonClient> {
    const settings = readSettings(opts.profile);
    const key = await loadDatabaseKey(
      settings.keyId,
      settings.keystore,
      settings.wrappedKey,
      access(opts, settings.keystore),
    );
    const db = openDatabase(opts.profile, key, false);
    key.fill(0);
    try {
      const c = new QalqonClient(opts.profile, db, settings, opts);
      if (c.deviceId === 0)
        throw new ClientError('PROFILE_STATE', `${opts.profile} holds no registered device`);
      return c;
    } catch (err) {
      db.close();
      throw err;
    }
  }

  /**
   * Creates the profile's files and keys, runs `register` (which talks to the server and
   * returns the device's ids), and on any failure removes what it created, so the same
   * directory can be used again.
   */
  /**
   * Checks the options, creates the profile directory and its database key (refusing
   * without a reachable secure store unless in passphrase mode). Done before anything is
   * asked of the server, so a link is never approved for a device that cannot store it.
   */
  static async #prepare(opts: NewProfileOptions): Promise<PreparedProfile> {
    const server = parseServerUrl(opts.server);
    const pin = opts.pin === undefined ? undefined : checkPin(opts.pin);
    const deviceName = checkDeviceName(opts.deviceName);
    const kind = opts.keystore ?? 'os';
    if (kind !== 'os' && kind !== 'passphrase') {
      throw new ClientError('INVALID_ARGUMENT', '"keystore" expected os or passphrase');
    }
    createProfileDir(opts.profile);
    const keyId = Buffer.from(randomBytes(16)).toString('hex');
    const { key, wrapped } = await createDatabaseKey(keyId, access(opts, kind));
    return { server: server.url, pin, deviceName, kind, keyId, key, wrapped };
  }

  /** Undoes `#prepare` and whatever `#create` wrote, so the directory can be used again. */
  static #discard(profile: string, p: PreparedProfile): void {
    p.key.fill(0);
    if (p.kind === 'os') deleteOsKey(p.keyId);
    for (const f of [SETTINGS_FILE, DATABASE_FILE, `${DATABASE_FILE}-wal`, `${DATABASE_FILE}-shm`]) {
      rmSync(join(profile, f), { force: true });
    }
  }

  /**
   * Writes the profile's settings and database, runs `register` (which talks to the server
   * and returns the device's ids), and on any failure removes what was created.
   */
  static async #create(
    opts: NewProfileOptions,
    p: PreparedProfile,
    identity: IdentityKeyPair | undefined,
    register: (
      c: QalqonClient,
      device: NewDeviceJson,
    ) => Promise<{ userId: string; userName: string; deviceId: number }>,
  ): Promise<QalqonClient> {
    let db: ClientDatabase | undefined;
    try {
      const settings: ProfileSettings = {
        format: 1,
        server: p.server,
        pin: p.pin,
        keystore: p.kind,
        keyId: p.keyId,
        wrappedKey: p.wrapped,
      };
      writeSettings(opts.profile, settings);
      db = openDatabase(opts.profile, p.key, true);
      p.key.fill(0);
      const meta = new Meta(db);
      const ident = identity ?? generateIdentityKeyPair();
      meta.set('identity', serializeIdentityKeyPair(ident));
      meta.set('registration_id', randomRegistrationId());
      const client = new QalqonClient(opts.profile, db, settings, opts);
      const device = client.#newDeviceKeys(p.deviceName);
      const ids = await register(client, device);
      db.transaction(() => {
        meta.set('user_id', ids.userId);
        meta.set('user_name', ids.userName);
        meta.set('device_id', ids.deviceId);
      })();
      return client;
    } catch (err) {
      db?.close();
      QalqonClient.#discard(opts.profile, p);
      throw err;
    }
  }

  /** `qalqon enroll`: a new identity for the user named by the administrator's code. */
  static async enroll(opts: NewProfileOptions & { readonly code: string }): Promise<QalqonClient> {
    if (typeof opts.code !== 'string' || !/^[\x21-\x7e]{16,256}$/.test(opts.code)) {
      throw new ClientError(
        'INVALID_ARGUMENT',
        '"code" expected the enrolment code an administrator gave you',
      );
    }
    const p = await QalqonClient.#prepare(opts);
    return QalqonClient.#create(opts, p, undefined, async (c, device) =>
      c.#conn.request('POST', '/v1/enrol', EnrolResponse, { code: opts.code, device }),
    );
  }

  /**
   * `qalqon link`: opens a link slot, hands the printable link code to `onLinkCode`, waits
   * for an existing device to approve, takes over the identity from the handover and
   * registers this device with it.
   */
  static async link(
    opts: NewProfileOptions & { readonly onLinkCode: (code: string) => void; readonly waitMs?: number },
  ): Promise<QalqonClient> {
    // The profile and its key first: a link must not be approved for a device that cannot keep it.
    const p = await QalqonClient.#prepare(opts);
    let creating = false;
    try {
      // The slot is opened through a connection pinned the same way (the settings come later).
      let pin = p.pin;
      const conn = new ServerConnection(parseServerUrl(p.server), {
        get pin() {
          return pin;
        },
        onFirstUse(seen: string) {
          pin = seen;
          opts.notice?.(`pinned the server's key ${seen} on first use`);
        },
      });
      const { ephemeral, request } = newLinkRequest();
      const slot = await conn.request('POST', '/v1/link', LinkCreateResponse, {
        request: encodeBase64(request),
      });
      opts.onLinkCode(linkCodeFor(slot.linkCode, request));
      const deadline = Date.now() + (opts.waitMs ?? LINK_WAIT_MS);
      for (;;) {
        const poll = await conn.request('POST', '/v1/link/poll', LinkPollResponse, {
          linkCode: slot.linkCode,
        });
        if (poll.state === 'approved') {
          const secret = openHandover(ephemeral, request, poll.handover);
          const handed = HandoverSecret.safeParse(safeJson(secret));
          secret.fill(0);
          if (
            !handed.success ||
            handed.data.userId !== poll.userId ||
            handed.data.userName !== poll.userName
          ) {
            throw new ClientError(
              'LINK_HANDOVER_INVALID',
              'the link handover does not match the approving user',
            );
          }
          let identity: IdentityKeyPair;
          try {
            identity = deserializeIdentityKeyPair(decodeBase64(handed.data.identity) ?? new Uint8Array());
          } catch {
            throw new ClientError('LINK_HANDOVER_INVALID', 'the link handover carries no valid identity');
          }
          creating = true;
          return await QalqonClient.#create(opts, { ...p, pin }, identity, async (c, device) => {
            const r = await c.#conn.request('POST', '/v1/link/complete', EnrolResponse, {
              linkCode: slot.linkCode,
              device,
            });
            if (r.userId !== poll.userId) {
              throw new ClientError(
                'LINK_HANDOVER_INVALID',
                'the server registered the device to another user',
              );
            }
            return r;
          });
        }
        if (Date.now() + LINK_POLL_MS > deadline) {
          throw new ClientError(
            'LINK_TIMEOUT',
            'no existing device approved the link in time; run "qalqon link" again',
          );
        }
        await sleep(LINK_POLL_MS);
      }
    } catch (err) {
      // #create cleans up after itself; before it, the prepared key and directory are ours to undo.
      if (!creating) QalqonClient.#discard(opts.profile, p);
      throw err;
    }
  }

  /** Writes a new pin into a profile: the one way to accept a changed server key. */
  static repin(profile: string, pin: string): { previous: string | undefined; pin: string } {
    checkPin(pin);
    const s = readSettings(profile);
    writeSettings(profile, { ...s, pin });
    return { previous: s.pin, pin };
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#db.close();
  }

  // --- keys ------------------------------------------------------------------------------

  #local(): LocalIdentity {
    return { identityKeyPair: this.#identity, registrationId: this.#registrationId };
  }

  #nextId(name: string): number {
    const id = this.#meta.number(name) ?? 1;
    this.#meta.set(name, id >= MAX_WIRE_PREKEY_ID ? 1 : id + 1);
    return id;
  }

  #storeSigned(now: number): { id: number; publicKey: string; signature: string } {
    const spk = generateSignedPreKey(this.#identity, this.#nextId('next_signed_id'), { timestamp: now });
    this.#db
      .prepare('INSERT OR REPLACE INTO signed_prekeys (id, record, created_at) VALUES (?, ?, ?)')
      .run(spk.id, Buffer.from(serializeSignedPreKeyRecord(spk)), now);
    return {
      id: spk.id,
      publicKey: encodeBase64(spk.keyPair.publicKey),
      signature: encodeBase64(spk.signature),
    };
  }

  #storeKyber(now: number): { id: number; publicKey: string; signature: string } {
    const kpk = generateKyberPreKey(this.#identity, this.#nextId('next_kyber_id'), { timestamp: now });
    this.#db
      .prepare('INSERT OR REPLACE INTO kyber_prekeys (id, record, created_at) VALUES (?, ?, ?)')
      .run(kpk.id, Buffer.from(serializeKyberPreKeyRecord(kpk)), now);
    return { id: kpk.id, publicKey: encodeBase64(kpk.publicKey), signature: encodeBase64(kpk.signature) };
  }

  #storeOneTime(count: number): { id: number; publicKey: string }[] {
    const first = this.#meta.number('next_prekey_id') ?? 1;
    const n = Math.min(count, MAX_WIRE_PREKEY_ID - first + 1);
    const keys: PreKeyRecord[] = generatePreKeys(first, n);
    this.#meta.set('next_prekey_id', first + n > MAX_WIRE_PREKEY_ID ? 1 : first + n);
    const ins = this.#db.prepare('INSERT OR REPLACE INTO prekeys (id, record) VALUES (?, ?)');
    for (const k of keys) ins.run(k.id, Buffer.from(serializePreKeyRecord(k)));
    return keys.map((k) => ({ id: k.id, publicKey: encodeBase64(k.keyPair.publicKey) }));
  }

  /** Keys for registration, stored before they are uploaded. */
  #newDeviceKeys(name: string): NewDeviceJson {
    const auth = generateCurveKeyPair();
    const now = this.#now();
    return this.#db.transaction(() => {
      this.#meta.set('auth_private', auth.privateKey);
      const signedPrekey = this.#storeSigned(now);
      const kyberPrekey = this.#storeKyber(now);
      const oneTimePrekeys = this.#storeOneTime(ONE_TIME_PREKEY_TARGET);
      // Published by the registration itself (a failed registration discards the profile).
      this.#meta.set('signed_prekeys_published', signedPrekey.id);
      this.#meta.set('kyber_prekeys_published', kyberPrekey.id);
      return {
        name,
        registrationId: this.#registrationId,
        identityKey: encodeBase64(this.#identity.publicKey),
        authKey: encodeBase64(auth.publicKey),
        signedPrekey,
        kyberPrekey,
        oneTimePrekeys,
      };
    })();
  }

  #prekeyLookup(): PreKeyLookup {
    const row = (table: string, id: number) =>
      (
        this.#db.prepare(`SELECT record FROM ${table} WHERE id = ?`).get(id) as
          | { record: Uint8Array }
          | undefined
      )?.record;
    return {
      getSignedPreKey: (id) => {
        const r = row('signed_prekeys', id);
        return r ? deserializeSignedPreKeyRecord(new Uint8Array(r)) : undefined;
      },
      getKyberPreKey: (id) => {
        const r = row('kyber_prekeys', id);
        return r ? deserializeKyberPreKeyRecord(new Uint8Array(r)) : undefined;
      },
      getPreKey: (id) => {
        const r = row('prekeys', id);
        return r ? deserializePreKeyRecord(new Uint8Array(r)) : undefined;
      },
    };
  }

  /**
   * Without user action: tops up one-time prekeys when the server reports fewer than its
   * watermark, and replaces the signed and Kyber prekeys once they are PREKEY_ROTATION_MS
   * old (the old ones stay for OLD_PREKEY_GRACE_MS, for messages still in flight).
   * Every new key is committed before it is uploaded.
   */
  async maintainPrekeys(): Promise<{ uploaded: number; rotatedSigned: boolean; rotatedKyber: boolean }> {
    await this.#signIn();
    const now = this.#now();
    const status = await this.#conn.request('GET', '/v1/keys', PrekeyStatusResponse);
    let uploaded = 0;
    if (status.replenish) {
      const want = Math.min(
        MAX_PREKEYS_PER_UPLOAD,
        Math.max(0, ONE_TIME_PREKEY_TARGET - status.oneTimePrekeys),
      );
      if (want > 0) {
        const keys = this.#db.transaction(() => this.#storeOneTime(want))();
        await this.#conn.request('POST', '/v1/keys/one-time', PrekeyStatusResponse, { oneTimePrekeys: keys });
        uploaded = keys.length;
      }
    }
    const rotate = async (table: 'signed_prekeys' | 'kyber_prekeys'): Promise<boolean> => {
      const newest = this.#db
        .prepare(`SELECT id, created_at FROM ${table} ORDER BY created_at DESC, id DESC LIMIT 1`)
        .get() as { id: number; created_at: number } | undefined;
      const published = this.#meta.number(`${table}_published`);
      let rotated = false;
      let prekey: { id: number; publicKey: string; signature: string } | undefined;
      if (newest === undefined || now - newest.created_at >= PREKEY_ROTATION_MS) {
        prekey = this.#db.transaction(() =>
          table === 'signed_prekeys' ? this.#storeSigned(now) : this.#storeKyber(now),
        )();
        rotated = true;
      } else if (published !== undefined && published !== newest.id) {
        // A rotation whose upload failed last time: publish the key we already made.
        const row = this.#prekeyLookup();
        const r = table === 'signed_prekeys' ? row.getSignedPreKey(newest.id) : undefined;
        const k = table === 'kyber_prekeys' ? row.getKyberPreKey(newest.id) : undefined;
        if (r)
          prekey = {
            id: r.id,
            publicKey: encodeBase64(r.keyPair.publicKey),
            signature: encodeBase64(r.signature),
          };
        if (k)
          prekey = { id: k.id, publicKey: encodeBase64(k.publicKey), signature: encodeBase64(k.signature) };
      }
      if (prekey) {
        await this.#conn.request(
          'PUT',
          table === 'signed_prekeys' ? '/v1/keys/signed' : '/v1/keys/kyber',
          OkResponse,
          {
            prekey,
          },
        );
        this.#meta.set(`${table}_published`, prekey.id);
      }
      // A replaced key goes once its successor has been published for OLD_PREKEY_GRACE_MS:
      // until then PreKeySignalMessages made from the old bundle may still arrive.
      this.#db
        .prepare(
          `DELETE FROM ${table} WHERE EXISTS (SELECT 1 FROM ${table} AS newer WHERE newer.created_at > ${table}.created_at AND newer.created_at <= ?)`,
        )
        .run(now - OLD_PREKEY_GRACE_MS);
      return rotated;
    };
    const rotatedSigned = await rotate('signed_prekeys');
    const rotatedKyber = await rotate('kyber_prekeys');
    return { uploaded, rotatedSigned, rotatedKyber };
  }

  // --- server session -------------------------------------------------------------------

  async #signIn(): Promise<void> {
    if (this.#conn.token !== undefined) return;
    const who = { userId: this.userId, deviceId: this.deviceId };
    const c = await this.#conn.request('POST', '/v1/auth/challenge', ChallengeResponse, who);
    const priv = this.#meta.bytes('auth_private');
    if (!priv) throw new ClientError('PROFILE_CORRUPT', 'the profile database holds no device key');
    const signature = xeddsaSign(priv, authChallengeMessage(c.challenge, who.userId, who.deviceId));
    const s = await this.#conn.request('POST', '/v1/auth/session', SessionResponse, {
      ...who,
      challenge: encodeBase64(c.challenge),
      signature: encodeBase64(signature),
    });
    this.#conn.token = s.token;
  }

  // --- contacts and trust -----------------------------------------------------------------

  #contactById(userId: string): Contact | undefined {
    const r = this.#db.prepare('SELECT * FROM contacts WHERE user_id = ?').get(userId) as
      | { user_id: string; name: string; identity_key: Uint8Array; verified: number; blocked: number }
      | undefined;
    return r
      ? {
          userId: r.user_id,
          name: r.name,
          identityKey: new Uint8Array(r.identity_key),
          verified: r.verified === 1,
          blocked: r.blocked === 1,
        }
      : undefined;
  }

  /**
   * Records `identityKey` for the user. A new contact is trusted on first use; a changed key
   * is announced, ends the old sessions, and if the contact had been verified blocks sending
   * until the new safety number is verified.
   */
  #learnIdentity(userId: string, name: string, identityKey: Uint8Array): Contact {
    const known = this.#contactById(userId);
    if (known && equal(known.identityKey, identityKey)) {
      if (known.name !== name)
        this.#db.prepare('UPDATE contacts SET name = ? WHERE user_id = ?').run(name, userId);
      return { ...known, name };
    }
    this.#db.transaction(() => {
      // A name now belonging to another user id (a removed and re-created account) is a different person.
      this.#db.prepare('DELETE FROM contacts WHERE name = ? AND user_id <> ?').run(name, userId);
      if (!known) {
        this.#db
          .prepare('INSERT INTO contacts (user_id, name, identity_key) VALUES (?, ?, ?)')
          .run(userId, name, Buffer.from(identityKey));
        return;
      }
      this.#db
        .prepare(
          'UPDATE contacts SET name = ?, identity_key = ?, verified = 0, blocked = ? WHERE user_id = ?',
        )
        .run(name, Buffer.from(identityKey), known.verified || known.blocked ? 1 : 0, userId);
      this.#db.prepare('DELETE FROM sessions WHERE user_id = ?').run(userId);
    })();
    if (known) {
      this.#opts.warning?.(
        known.verified || known.blocked
          ? `the identity key of ${name} has changed since you verified it: their safety number is new, and sending to ${name} is refused until you compare it and run "qalqon verify" again`
          : `the identity key of ${name} has changed (a new safety number); compare it with "qalqon safety-number ${name}" if that is unexpected`,
      );
    }
    return this.#contactById(userId)!;
  }

  /** Fetches the user's identity key and device ids (consumes no prekeys) and reconciles the contact. */
  async #refreshUser(name: string): Promise<{ contact: Contact; devices: number[] }> {
    await this.#signIn();
    const u = await this.#conn.request(
      'GET',
      `/v1/keys/${encodeURIComponent(name)}/devices`,
      UserDevicesResponse,
    );
    if (u.userName !== name) throw new ClientError('SERVER_PROTOCOL', 'the server answered for another user');
    if (!u.identityKey) throw new ClientError('NO_TRUSTED_DEVICE', `${name} has not enrolled a device yet`);
    if (u.userId === this.userId) {
      if (!equal(u.identityKey, this.#identity.publicKey)) {
        throw new ClientError(
          'IDENTITY_CHANGED',
          'the server lists another identity key for your own account (it was enrolled afresh elsewhere); this device is no longer current',
        );
      }
      return {
        contact: {
          userId: u.userId,
          name,
          identityKey: this.#identity.publicKey,
          verified: true,
          blocked: false,
        },
        devices: u.devices.map((d) => d.deviceId),
      };
    }
    const contact = this.#learnIdentity(u.userId, name, u.identityKey);
    return { contact, devices: u.devices.map((d) => d.deviceId) };
  }

  #loadSession(userId: string, deviceId: number): SessionRecord | undefined {
    const r = this.#db
      .prepare('SELECT record FROM sessions WHERE user_id = ? AND device_id = ?')
      .get(userId, deviceId) as { record: Uint8Array } | undefined;
    return r ? deserializeSessionRecord(new Uint8Array(r.record)) : undefined;
  }

  #saveSession(userId: string, deviceId: number, record: SessionRecord): void {
    this.#db
      .prepare(
        'INSERT INTO sessions (user_id, device_id, record) VALUES (?, ?, ?) ON CONFLICT (user_id, device_id) DO UPDATE SET record = excluded.record',
      )
      .run(userId, deviceId, Buffer.from(record.serialize()));
  }

  /**
   * Prekey bundles for the devices that have no usable session yet (the network half of
   * setting up sessions). A device whose bundle does not carry the user's known identity
   * key, or whose prekey signatures do not verify under it, is left out with a warning: the
   * server alone cannot add a device that this client encrypts to.
   */
  async #bundlesFor(contact: Contact, deviceIds: number[]): Promise<Map<number, PreKeyBundle>> {
    const out = new Map<number, PreKeyBundle>();
    for (const deviceId of deviceIds) {
      if (this.#loadSession(contact.userId, deviceId)?.hasUsableSenderChain(this.#now())) continue;
      const r = await this.#conn.request(
        'GET',
        `/v1/keys/${encodeURIComponent(contact.name)}?deviceId=${deviceId}`,
        BundlesResponse,
      );
      const b = r.bundles.find((x) => x.deviceId === deviceId);
      if (r.userId !== contact.userId || !b) continue;
      const bundle: PreKeyBundle = {
        registrationId: b.registrationId,
        deviceId: b.deviceId,
        preKeyId: b.oneTimePrekey?.id,
        preKey: b.oneTimePrekey?.publicKey,
        signedPreKeyId: b.signedPrekey.id,
        signedPreKey: b.signedPrekey.publicKey,
        signedPreKeySignature: b.signedPrekey.signature,
        identityKey: b.identityKey,
        kyberPreKeyId: b.kyberPrekey.id,
        kyberPreKey: b.kyberPrekey.publicKey,
        kyberPreKeySignature: b.kyberPrekey.signature,
      };
      let trusted = equal(b.identityKey, contact.identityKey);
      if (trusted) {
        try {
          verifyPreKeyBundle(bundle);
        } catch (err) {
          if (!isProtocolError(err)) throw err;
          trusted = false;
        }
      }
      if (trusted) out.set(deviceId, bundle);
      else {
        this.#opts.warning?.(
          `device ${deviceId} of ${contact.name} is not signed by ${contact.name}'s identity key; not encrypting to it`,
        );
      }
    }
    return out;
  }

  // --- sending ----------------------------------------------------------------------------

  /**
   * Encrypts `text` to every device of `to` and to this user's other devices, and hands the
   * ciphertexts to the server. Refused (IDENTITY_CHANGED) while a verified contact's new
   * identity key is unverified.
   */
  async send(to: string, text: string): Promise<{ id: string; sentAt: number; devices: number }> {
    checkUserName(to, 'to');
    if (typeof text !== 'string' || text.length === 0 || utf8(text).length > MAX_TEXT_BYTES) {
      throw new ClientError('INVALID_ARGUMENT', `"text" expected 1..${MAX_TEXT_BYTES} bytes of text`);
    }
    return this.#sendPairwiseContent(to, { text });
  }

  /** `send` of a text or (with `file`) of a file's message: see `send`. */
  async #sendPairwiseContent(
    to: string,
    body: { text: string; file?: FileRef },
  ): Promise<{ id: string; sentAt: number; devices: number }> {
    await this.maintainPrekeys();
    const peer = await this.#refreshUser(to);
    if (peer.contact.blocked) {
      throw new ClientError(
        'IDENTITY_CHANGED',
        `${to}'s identity key changed after you verified it; compare the new safety number and run "qalqon verify" before sending`,
      );
    }
    const self = to === this.userName ? peer : await this.#refreshUser(this.userName);
    const targets: { contact: Contact; deviceIds: number[] }[] = [
      {
        contact: peer.contact,
        deviceIds: peer.devices.filter((d) => to !== this.userName || d !== this.deviceId),
      },
    ];
    if (to !== this.userName) {
      targets.push({ contact: self.contact, deviceIds: self.devices.filter((d) => d !== this.deviceId) });
    }
    const base = {
      v: 1 as const,
      id: Buffer.from(randomBytes(16)).toString('hex'),
      sentAt: this.#now(),
      from: this.userName,
      to,
    };
    const content: Content | FileContent =
      body.file === undefined ? { ...base, text: body.text } : { ...base, kind: 'file', file: body.file };
    const text = body.text;
    const plaintext = utf8(JSON.stringify(content));
    const plans: { contact: Contact; deviceIds: number[]; bundles: Map<number, PreKeyBundle> }[] = [];
    for (const t of targets) plans.push({ ...t, bundles: await this.#bundlesFor(t.contact, t.deviceIds) });
    // Load, encrypt and store in one IMMEDIATE transaction: another process on this profile
    // (a `recv --wait`, say) cannot advance a session between our read and our write, and the
    // new records are committed before anything leaves (a second encrypt from the old
    // records would reuse message keys).
    const envelopes = this.#db
      .transaction(() => {
        const out: PairwiseEnvelope[] = [];
        for (const p of plans) {
          for (const deviceId of p.deviceIds) {
            const e = this.#sealPairwise(p.contact, deviceId, p.bundles.get(deviceId), plaintext);
            if (e) out.push(e);
          }
          // Sessions with devices the user no longer has are dropped: never encrypted to again.
          const keep = new Set(p.deviceIds);
          const rows = this.#db
            .prepare('SELECT device_id FROM sessions WHERE user_id = ?')
            .all(p.contact.userId) as {
            device_id: number;
          }[];
          for (const r of rows) {
            if (!keep.has(r.device_id)) {
              this.#db
                .prepare('DELETE FROM sessions WHERE user_id = ? AND device_id = ?')
                .run(p.contact.userId, r.device_id);
            }
          }
        }
        if (to !== this.userName && !out.some((e) => e.recipientUserId === peer.contact.userId)) {
          // Thrown inside the transaction, so nothing of this attempt is kept.
          throw new ClientError('NO_TRUSTED_DEVICE', `${to} has no device this client can encrypt to`);
        }
        this.#db
          .prepare(
            'INSERT OR IGNORE INTO messages (sender_user_id, message_id, sender_name, sender_device, peer, channel, text, sent_at, received_at, displayed) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, 1)',
          )
          .run(
            this.userId,
            content.id,
            this.userName,
            this.deviceId,
            to,
            text,
            content.sentAt,
            content.sentAt,
          );
        if (body.file !== undefined) this.#storeFileRef(this.userId, content.id, body.file);
        return out;
      })
      .immediate();
    await this.#postPairwise(envelopes);
    return { id: content.id, sentAt: content.sentAt, devices: envelopes.length };
  }

  /**
   * Inside a transaction: encrypts `plaintext` to one device of `contact` (setting up the
   * session from `bundle` when there is no usable one) and stores the new session record,
   * which must be committed before the envelope leaves. Undefined when there is neither a
   * session nor a trusted bundle.
   */
  #sealPairwise(
    contact: Contact,
    deviceId: number,
    bundle: PreKeyBundle | undefined,
    plaintext: Uint8Array,
  ): PairwiseEnvelope | undefined {
    let record = this.#loadSession(contact.userId, deviceId);
    if (!record?.hasUsableSenderChain(this.#now())) {
      if (!bundle) return undefined;
      record = processPreKeyBundle(record, bundle, this.#local(), { now: this.#now() }).record;
    }
    const e = encryptMessage(record, plaintext, { now: this.#now() });
    this.#saveSession(contact.userId, deviceId, e.record);
    const body = new Uint8Array(1 + e.message.body.length);
    body[0] = e.message.type;
    body.set(e.message.body, 1);
    return { recipientUserId: contact.userId, recipientDeviceId: deviceId, body: encodeBase64(body) };
  }

  async #postPairwise(envelopes: readonly PairwiseEnvelope[]): Promise<void> {
    for (let i = 0; i < envelopes.length; i += MAX_SEND_BATCH) {
      await this.#conn.request('POST', '/v1/messages', SendResponse, {
        messages: envelopes.slice(i, i + MAX_SEND_BATCH),
      });
    }
  }

  // --- channels ---------------------------------------------------------------------------
  //
  // A channel's membership is the signed log in @qalqon/wire channels.ts. This device keeps
  // a verified copy of it (channel-store.ts) and acts only on what it verifies: keys go to
  // members the log names, with the identity key the log binds for them equal to the one this
  // profile trusts; messages are shown only from members. Messages use sender keys (Qalqon
  // format, AES-256-GCM): each device has one per channel, hands it to every member device
  // over their 1:1 sessions, and replaces it whenever a device that holds it stops being a
  // recipient, or after any removal, so a removed member cannot read what comes after.

  /** The id of the caller's channel named `name` (from GET /v1/channels). */
  async #channelId(name: string): Promise<string> {
    if (!ChannelName.safeParse(name).success) {
      throw new ClientError(
        'INVALID_ARGUMENT',
        '"channel" expected a channel name ([a-z0-9][a-z0-9._-]*, at most 64)',
      );
    }
    await this.#signIn();
    const r = await this.#conn.request('GET', '/v1/channels', ChannelsResponse);
    const c = r.channels.find((x) => x.name === name);
    if (!c) throw new ClientError('CHANNEL_NOT_FOUND', `you are not a member of a channel named ${name}`);
    return c.id;
  }

  /**
   * Brings this device's verified copy of a channel's log up to date: fetches the changes
   * after the cached head (`?after=`), applies each with the log rules, and stores them with
   * the new state in one transaction. A change that does not verify, or a server that
   * serves less than this device already verified, is CHANNEL_LOG_INVALID and changes nothing.
   */
  async #syncChannel(channelId: string, expectName?: string): Promise<CachedChannel> {
    await this.#signIn();
    const invalid = (why: string) =>
      new ClientError('CHANNEL_LOG_INVALID', `the membership log of the channel does not verify: ${why}`);
    for (let attempt = 0; ; attempt++) {
      const cached = this.#channels.cached(channelId);
      let state: ChannelState | undefined = cached?.state;
      let lastRemoveSeq = cached?.lastRemoveSeq ?? -1;
      const fresh: { seq: number; entry: { change: Uint8Array; signature: Uint8Array } }[] = [];
      let serverSeq = 0;
      let serverName = '';
      for (let page = 0; ; page++) {
        const after = state === undefined ? '' : `?after=${state.seq}`;
        const r = await this.#conn.request('GET', `/v1/channels/${channelId}${after}`, ChannelLogResponse);
        if (r.channel.id !== channelId) throw invalid('the server answered for another channel');
        serverSeq = r.channel.seq;
        serverName = r.channel.name;
        for (const e of r.entries) {
          try {
            const applied = applyChannelChange(state, e, LOG_CRYPTO, channelId);
            state = applied.state;
            if (applied.change.op === 'remove') lastRemoveSeq = applied.change.seq;
            fresh.push({ seq: applied.change.seq, entry: e });
          } catch (err) {
            if (isChannelLogError(err)) throw invalid(err.message);
            throw err;
          }
        }
        if (state === undefined) throw invalid('the server served no changes');
        if (state.seq >= serverSeq || r.entries.length < MAX_CHANNEL_LOG_PAGE) break;
        if (page > 1 + Math.ceil(serverSeq / MAX_CHANNEL_LOG_PAGE)) throw invalid('the log does not end');
      }
      // The server's own account of the channel must agree with the log it served: fewer
      // changes than this device verified before is a rollback, more than it served is
      // withholding. (More served than reported is a change that landed between the two
      // reads of one request: every one of them verified, so it is kept.)
      const startSeq = cached?.state.seq;
      if (state.seq < serverSeq) {
        throw invalid(`the server reports change ${serverSeq} as the last but serves up to ${state.seq}`);
      }
      if (startSeq !== undefined && startSeq > serverSeq) {
        throw invalid(
          `the server reports change ${serverSeq} as the last; this device verified up to ${startSeq}`,
        );
      }
      if (serverName !== state.name) throw invalid('the server names the channel differently from its log');
      if (expectName !== undefined && state.name !== expectName) {
        throw invalid(`the server gave the log of "${state.name}" for "${expectName}"`);
      }
      const done = this.#db
        .transaction(() => {
          // Another process on this profile may have stored changes meanwhile: start again from them.
          if (this.#channels.cached(channelId)?.state.seq !== startSeq) return false;
          if (fresh.length > 0) this.#channels.saveVerified(state as ChannelState, lastRemoveSeq, fresh);
          return true;
        })
        .immediate();
      if (done) return { state, lastRemoveSeq };
      if (attempt >= 3)
        throw new ClientError('PROFILE_STATE', 'the channel log kept changing under this device');
    }
  }

  /**
   * Signs a membership change built from the verified state, checks it against the log
   * rules, and submits it. When another change took its place (CHANNEL_CONFLICT) the log is
   * reloaded and the change built and signed again, up to CHANNEL_CHANGE_ATTEMPTS times.
   */
  async #submitChange(
    channelId: string,
    build: (cached: CachedChannel) => ChannelChangeJson,
  ): Promise<ChannelChangeJson> {
    for (let attempt = 1; ; attempt++) {
      const cached = await this.#syncChannel(channelId);
      const json = build(cached);
      const change = encodeChannelChange(json);
      const signature = xeddsaSign(this.#identity.privateKey, channelChangeSigningMessage(change));
      try {
        applyChannelChange(cached.state, { change, signature }, LOG_CRYPTO, channelId);
      } catch (err) {
        if (isChannelLogError(err)) {
          throw new ClientError(
            'CHANNEL_NOT_MANAGER',
            `the channel log does not allow this change: ${err.message}`,
          );
        }
        throw err;
      }
      try {
        await this.#conn.request('POST', `/v1/channels/${channelId}/changes`, ChannelInfo, {
          entry: signedChangeJson({ change, signature }),
        });
        return json;
      } catch (err) {
        if (isWireError(err, 'CHANNEL_CONFLICT') && attempt < CHANNEL_CHANGE_ATTEMPTS) continue;
        throw err;
      }
    }
  }

  #changeBase(state: ChannelState): {
    v: 1;
    channel: string;
    seq: number;
    prev: string;
    at: number;
    by: { userId: string; deviceId: number };
  } {
    return {
      v: 1,
      channel: state.channelId,
      seq: state.seq + 1,
      prev: state.head,
      at: this.#now(),
      by: { userId: this.userId, deviceId: this.deviceId },
    };
  }

  /** `channel create`: a new channel with this user as its first manager (optionally in an org unit). */
  async createChannel(name: string, options: { unit?: string | undefined } = {}): Promise<ChannelSummary> {
    if (!ChannelName.safeParse(name).success) {
      throw new ClientError(
        'INVALID_ARGUMENT',
        '"name" expected a channel name ([a-z0-9][a-z0-9._-]*, at most 64)',
      );
    }
    if (options.unit !== undefined && !UserName.safeParse(options.unit).success) {
      throw new ClientError('INVALID_ARGUMENT', '"unit" expected an org unit name');
    }
    await this.#signIn();
    const id = Buffer.from(randomBytes(16)).toString('hex');
    const change = encodeChannelChange({
      v: 1,
      channel: id,
      seq: 0,
      prev: GENESIS_PREV,
      at: this.#now(),
      by: { userId: this.userId, deviceId: this.deviceId },
      op: 'create',
      name,
      userName: this.userName,
      identityKey: encodeBase64(this.#identity.publicKey),
    });
    const signature = xeddsaSign(this.#identity.privateKey, channelChangeSigningMessage(change));
    const info = await this.#conn.request('POST', '/v1/channels', ChannelInfo, {
      entry: signedChangeJson({ change, signature }),
      ...(options.unit !== undefined ? { unit: options.unit } : {}),
    });
    if (info.id !== id || info.name !== name) {
      throw new ClientError('SERVER_PROTOCOL', 'the server created another channel than the one asked for');
    }
    await this.#syncChannel(id, name);
    return info;
  }

  /** The channels this user is a member of, as the server lists them. */
  async listChannels(): Promise<ChannelSummary[]> {
    await this.#signIn();
    return (await this.#conn.request('GET', '/v1/channels', ChannelsResponse)).channels;
  }

  /** The members of a channel by its verified log (not by the server's say-so). */
  async channelMembers(channel: string): Promise<ChannelMemberInfo[]> {
    const id = await this.#channelId(channel);
    const { state } = await this.#syncChannel(id, channel);
    return [...state.members.values()]
      .sort((a, b) => (a.userName < b.userName ? -1 : a.userName > b.userName ? 1 : 0))
      .map((m) => ({
        userId: m.userId,
        user: m.userName,
        role: m.role,
        addedSeq: m.addedSeq,
        identity: this.#memberTrust(m),
      }));
  }

  #memberTrust(m: ChannelMember): ChannelMemberInfo['identity'] {
    if (m.userId === this.userId) return equal(m.identityKey, this.#identity.publicKey) ? 'self' : 'mismatch';
    const c = this.#contactById(m.userId);
    if (!c) return 'unknown';
    return equal(c.identityKey, m.identityKey) && !c.blocked ? 'trusted' : 'mismatch';
  }

  /**
   * `channel add`: signs an `add` of `user` binding the identity key this profile trusts for
   * them (looked up as for a 1:1 send). Refused (IDENTITY_CHANGED) while their verified key
   * changed and is unverified, or when their key changed just now (compare the safety number, then run again).
   */
  async addChannelMember(
    channel: string,
    user: string,
    options: { manager?: boolean | undefined } = {},
  ): Promise<{ seq: number }> {
    checkUserName(user, 'user');
    const id = await this.#channelId(channel);
    const before = await this.#syncChannel(id, channel);
    if (!before.state.members.has(this.userId)) {
      throw new ClientError('CHANNEL_NOT_MEMBER', `you are not a member of ${channel} by its log`);
    }
    const known = this.#db.prepare('SELECT identity_key FROM contacts WHERE name = ?').get(user) as
      | { identity_key: Uint8Array }
      | undefined;
    const { contact } = await this.#refreshUser(user);
    if (contact.blocked) {
      throw new ClientError(
        'IDENTITY_CHANGED',
        `${user}'s identity key changed after you verified it; compare the new safety number and run "qalqon verify" before adding them`,
      );
    }
    if (known && !equal(new Uint8Array(known.identity_key), contact.identityKey)) {
      throw new ClientError(
        'IDENTITY_CHANGED',
        `${user}'s identity key has just changed; compare the new safety number ("qalqon safety-number ${user}") and run the command again`,
      );
    }
    const done = await this.#submitChange(id, ({ state }) => {
      const me = state.members.get(this.userId);
      if (!me) throw new ClientError('CHANNEL_NOT_MEMBER', `you are not a member of ${channel} by its log`);
      if (me.role !== 'manager') {
        throw new ClientError('CHANNEL_NOT_MANAGER', `only a manager of ${channel} may add members`);
      }
      if (state.members.has(contact.userId)) {
        throw new ClientError('INVALID_ARGUMENT', `${user} is already a member of ${channel}`);
      }
      return {
        ...this.#changeBase(state),
        op: 'add',
        userId: contact.userId,
        userName: user,
        identityKey: encodeBase64(contact.identityKey),
        role: options.manager ? 'manager' : 'member',
      };
    });
    await this.#syncChannel(id, channel);
    return { seq: done.seq };
  }

  /**
   * `channel remove`: signs a `remove` of `user` (a manager removing anyone, or anyone
   * removing themself: leaving). Every member's next message uses a new sender key.
   */
  async removeChannelMember(channel: string, user: string): Promise<{ seq: number }> {
    checkUserName(user, 'user');
    const id = await this.#channelId(channel);
    await this.#syncChannel(id, channel);
    const done = await this.#submitChange(id, ({ state }) => {
      const me = state.members.get(this.userId);
      if (!me) throw new ClientError('CHANNEL_NOT_MEMBER', `you are not a member of ${channel} by its log`);
      const target = [...state.members.values()].find((m) => m.userName === user);
      if (!target) throw new ClientError('CHANNEL_NOT_MEMBER', `${user} is not a member of ${channel}`);
      if (target.userId !== this.userId && me.role !== 'manager') {
        throw new ClientError('CHANNEL_NOT_MANAGER', `only a manager of ${channel} may remove others`);
      }
      return { ...this.#changeBase(state), op: 'remove', userId: target.userId };
    });
    if (user === this.userName) {
      // Left: the server no longer serves the log to us, and our keys are of no further use.
      this.#db.transaction(() => this.#channels.forgetKeys(id))();
    } else {
      await this.#syncChannel(id, channel);
    }
    return { seq: done.seq };
  }

  /**
   * The devices a channel message goes to: every device of every member whose identity key,
   * as the verified log binds it, is the one this profile trusts (learnt through the
   * directory on first use, as for 1:1), and this user's other devices. Members that fail
   * the check get nothing, with a warning.
   */
  async #channelRecipients(state: ChannelState): Promise<{ contact: Contact; deviceIds: number[] }[]> {
    const out: { contact: Contact; deviceIds: number[] }[] = [];
    for (const m of state.members.values()) {
      let peer: { contact: Contact; devices: number[] };
      try {
        peer = await this.#refreshUser(m.userName);
      } catch (err) {
        if (
          (isWireError(err) && err.code === 'USER_NOT_FOUND') ||
          (err instanceof ClientError && err.code === 'NO_TRUSTED_DEVICE')
        ) {
          this.#opts.warning?.(`${m.userName} (a member of ${state.name}) has no device; they get no key`);
          continue;
        }
        throw err;
      }
      const c = peer.contact;
      if (c.userId !== m.userId) {
        this.#opts.warning?.(
          `the name ${m.userName} belongs to another account than the member of ${state.name}; they get no key`,
        );
        continue;
      }
      if (c.blocked || !equal(c.identityKey, m.identityKey)) {
        this.#opts.warning?.(
          c.blocked
            ? `${m.userName}'s identity key changed after you verified it; they get no key for ${state.name} until you verify them again`
            : `the log of ${state.name} binds another identity key for ${m.userName} than the one you trust; they get no key (compare the safety number)`,
        );
        continue;
      }
      const deviceIds = peer.devices.filter((d) => m.userId !== this.userId || d !== this.deviceId);
      if (deviceIds.length > 0) out.push({ contact: c, deviceIds });
    }
    return out;
  }

  /**
   * `channel send`: encrypts `text` once with this device's sender key for the channel and
   * posts it for every member device. First, from the verified log: the recipients (see
   * #channelRecipients); a new sender key if any device holding the current one is no
   * longer a recipient or a member was removed since it was made; the current key handed
   * over 1:1 to every recipient device that lacks it. Session records and the advanced
   * sender key are committed before anything leaves.
   */
  async sendChannel(
    channel: string,
    text: string,
  ): Promise<{ id: string; sentAt: number; distributionId: string; rotated: boolean; keysSent: number }> {
    if (typeof text !== 'string' || text.length === 0 || utf8(text).length > MAX_TEXT_BYTES) {
      throw new ClientError('INVALID_ARGUMENT', `"text" expected 1..${MAX_TEXT_BYTES} bytes of text`);
    }
    const channelId = await this.#channelId(channel);
    return this.#sendChannelContent(channel, channelId, { text });
  }

  /** `sendChannel` of a text or (with `file`) of a file's message: see `sendChannel`. */
  async #sendChannelContent(
    channel: string,
    channelId: string,
    body: { text: string; file?: FileRef },
  ): Promise<{ id: string; sentAt: number; distributionId: string; rotated: boolean; keysSent: number }> {
    const text = body.text;
    const file = body.file;
    await this.maintainPrekeys();
    const { state, lastRemoveSeq } = await this.#syncChannel(channelId, channel);
    const me = state.members.get(this.userId);
    if (!me) throw new ClientError('CHANNEL_NOT_MEMBER', `you are not a member of ${channel} by its log`);
    if (!equal(me.identityKey, this.#identity.publicKey)) {
      throw new ClientError(
        'IDENTITY_CHANGED',
        `the log of ${channel} binds another identity key to you (your account was enrolled afresh); ask a manager to add you again`,
      );
    }
    const targets = await this.#channelRecipients(state);
    const recipients = new Set<string>();
    for (const t of targets) for (const d of t.deviceIds) recipients.add(`${t.contact.userId}/${d}`);
    const mustRotate = (own: ReturnType<ChannelStore['ownKey']>): boolean => {
      if (!own || own.createdSeq < lastRemoveSeq) return true;
      for (const h of this.#channels.holders(channelId, own.distributionId))
        if (!recipients.has(h)) return true;
      return false;
    };
    // Bundles (the network half) for the devices that will need the key and have no session.
    const own = this.#channels.ownKey(channelId);
    const held =
      own && !mustRotate(own) ? this.#channels.holders(channelId, own.distributionId) : new Set<string>();
    const plans: { contact: Contact; deviceIds: number[]; bundles: Map<number, PreKeyBundle> }[] = [];
    for (const t of targets) {
      const need = t.deviceIds.filter((d) => !held.has(`${t.contact.userId}/${d}`));
      plans.push({
        contact: t.contact,
        deviceIds: t.deviceIds,
        bundles: await this.#bundlesFor(t.contact, need),
      });
    }
    const base = {
      v: 1 as const,
      id: Buffer.from(randomBytes(16)).toString('hex'),
      sentAt: this.#now(),
      from: this.userName,
      channel: channelId,
    };
    const content: ChannelContent | ChannelFileContent =
      file === undefined ? { ...base, text } : { ...base, kind: 'file', file };
    const now = this.#now();
    const out = this.#db
      .transaction(() => {
        let key = this.#channels.ownKey(channelId);
        let rotated = false;
        if (mustRotate(key)) {
          const fresh = createSenderKeyDistributionMessage(
            SENDER_KEY_FORMAT,
            randomBytes(DISTRIBUTION_ID_LEN),
            undefined,
          );
          this.#channels.replaceOwnKey(channelId, fresh.record, state.seq, now);
          key = this.#channels.ownKey(channelId)!;
          rotated = true;
        }
        const current = key!;
        const holders = this.#channels.holders(channelId, current.distributionId);
        // The key at its current iteration: a device that gets it now cannot read earlier messages.
        const skdm = createSenderKeyDistributionMessage(
          SENDER_KEY_FORMAT,
          current.distributionId,
          current.record,
        );
        const handover: SenderKeyContent = {
          v: 1,
          kind: 'sender-key',
          sentAt: now,
          from: this.userName,
          channel: channelId,
          distribution: encodeBase64(skdm.message),
        };
        const handoverBytes = utf8(JSON.stringify(handover));
        const pairwise: PairwiseEnvelope[] = [];
        const given: { userId: string; deviceId: number }[] = [];
        for (const p of plans) {
          for (const d of p.deviceIds) {
            if (holders.has(`${p.contact.userId}/${d}`)) continue;
            const e = this.#sealPairwise(p.contact, d, p.bundles.get(d), handoverBytes);
            if (e) {
              pairwise.push(e);
              given.push({ userId: p.contact.userId, deviceId: d });
            } else {
              this.#opts.warning?.(
                `device ${d} of ${p.contact.name} has no session or trusted prekeys; it gets no key`,
              );
            }
          }
        }
        const g = groupEncrypt(SENDER_KEY_FORMAT, current.record, utf8(JSON.stringify(content)));
        this.#channels.updateOwnRecord(channelId, g.record);
        this.#db
          .prepare(
            'INSERT OR IGNORE INTO messages (sender_user_id, message_id, sender_name, sender_device, peer, channel, text, sent_at, received_at, displayed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)',
          )
          .run(
            this.userId,
            content.id,
            this.userName,
            this.deviceId,
            state.name,
            state.name,
            text,
            content.sentAt,
            now,
          );
        if (file !== undefined) this.#storeFileRef(this.userId, content.id, file);
        const header = channelEnvelopeHeader(channelId);
        const body = new Uint8Array(header.length + g.message.length);
        body.set(header);
        body.set(g.message, header.length);
        return { pairwise, given, body, distributionId: current.distributionId, rotated };
      })
      .immediate();
    // The keys first: the server queues in order, so every device reads the key before the message.
    await this.#postPairwise(out.pairwise);
    // Recorded only once delivered to the server: a key whose handover failed is handed over again next time.
    this.#channels.addHolders(channelId, out.distributionId, out.given);
    await this.#conn.request('POST', `/v1/channels/${channelId}/messages`, ChannelSendResponse, {
      body: encodeBase64(out.body),
    });
    return {
      id: content.id,
      sentAt: content.sentAt,
      distributionId: Buffer.from(out.distributionId).toString('hex'),
      rotated: out.rotated,
      keysSent: out.pairwise.length,
    };
  }

  // --- receiving --------------------------------------------------------------------------

  /**
   * Receives queued messages: with `waitMs` 0 until the server has been quiet for
   * DRAIN_QUIET_MS, otherwise for `waitMs`. Each new message is stored, handed to
   * `onMessage`, then acknowledged. Unreadable envelopes go to `onFailure` with their code
   * and are acknowledged (they would never become readable); the session is unchanged.
   */
  async receive(options: {
    waitMs?: number;
    onMessage: (m: ReceivedMessage) => void;
    onFailure?: (f: ReceiveFailure) => void;
  }): Promise<{ received: number; failed: number }> {
    const waitMs = options.waitMs ?? 0;
    if (!Number.isFinite(waitMs) || waitMs < 0)
      throw new ClientError('INVALID_ARGUMENT', '"waitMs" expected a non-negative number');
    await this.maintainPrekeys();
    // The server redelivers only what was never acknowledged, so an envelope id is needed
    // only until its ack has landed; a month is far beyond that.
    this.#db.prepare('DELETE FROM envelopes_seen WHERE at < ?').run(this.#now() - SEEN_ENVELOPE_TTL_MS);
    let received = 0;
    let failed = 0;
    // Stored but not yet shown (a crash between commit and display): shown first.
    for (const m of this.#undisplayed()) {
      options.onMessage(m.message);
      this.#markDisplayed(m.senderUserId, m.message.id);
      received++;
    }
    const ws = await this.#conn.openSocket();
    try {
      let chain = Promise.resolve();
      let lastActivity = Date.now();
      let readyResolve: () => void = () => undefined;
      const ready = new Promise<void>((r) => {
        readyResolve = r;
      });
      let socketError: Error | undefined;
      let handlerError: unknown;
      const keep = (err: unknown) => {
        handlerError ??= err;
      };
      let closed = false;
      let closeCode = 0;
      ws.on('close', (code: number) => {
        closed = true;
        closeCode = code;
        readyResolve();
      });
      ws.on('error', () => undefined);
      ws.on('message', (data: WebSocket.RawData) => {
        lastActivity = Date.now();
        let json: unknown;
        try {
          json = JSON.parse(String(data));
        } catch {
          json = undefined;
        }
        const parsed = ServerFrame.safeParse(json);
        if (!parsed.success) {
          socketError = new ClientError('SERVER_PROTOCOL', 'the server sent a frame off the wire contract');
          ws.close();
          return;
        }
        const f = parsed.data;
        if (f.type === 'ready') readyResolve();
        else if (f.type === 'error') {
          socketError = new ClientError('SERVER_PROTOCOL', `the server refused a frame (${f.code})`);
        } else if (f.type === 'prekeys-low') {
          chain = chain
            .then(() =>
              handlerError === undefined ? this.maintainPrekeys().then(() => undefined) : undefined,
            )
            .catch(keep);
        } else if (f.type === 'envelope') {
          chain = chain
            .then(async () => {
              // After a failure nothing more is processed: unacknowledged envelopes come again next time.
              if (handlerError !== undefined) return;
              const r = await this.#handleEnvelope(f);
              if (r.message) {
                options.onMessage(r.message);
                this.#markDisplayed(f.senderUserId, r.message.id);
                received++;
              }
              if (r.failure) {
                options.onFailure?.(r.failure);
                failed++;
              }
              ws.send(JSON.stringify({ type: 'ack', ids: [f.id] }));
              lastActivity = Date.now();
            })
            .catch(keep);
        }
      });
      ws.send(JSON.stringify({ type: 'auth', token: this.#conn.token }));
      await ready;
      if (closed && socketError === undefined) {
        throw new ClientError('SERVER_UNREACHABLE', 'the server closed the connection before it was ready');
      }
      const start = Date.now();
      for (;;) {
        await sleep(100);
        await chain;
        if (handlerError !== undefined) throw handlerError;
        if (socketError) throw socketError;
        // No silent reconnect: the caller decides whether to run again.
        if (closed) {
          throw new ClientError(
            'SERVER_UNREACHABLE',
            `the server closed the connection (WebSocket close code ${closeCode}${closeCode === 4000 ? ': another connection of this device took over' : ''})`,
          );
        }
        if (waitMs > 0 ? Date.now() - start >= waitMs : Date.now() - lastActivity >= DRAIN_QUIET_MS) break;
      }
      await chain;
      if (handlerError !== undefined) throw handlerError;
    } finally {
      ws.close();
    }
    return { received, failed };
  }

  #undisplayed(): { senderUserId: string; message: ReceivedMessage }[] {
    const rows = this.#db
      .prepare('SELECT * FROM messages WHERE displayed = 0 ORDER BY received_at')
      .all() as {
      sender_user_id: string;
      message_id: string;
      sender_name: string;
      sender_device: number;
      peer: string;
      channel: string | null;
      text: string;
      sent_at: number;
    }[];
    return rows.map((r) => {
      const file = this.#fileOfMessage(r.sender_user_id, r.message_id);
      return {
        senderUserId: r.sender_user_id,
        message: {
          from: r.sender_name,
          device: r.sender_device,
          channel: r.channel,
          conversation: r.peer,
          text: r.text,
          sentAt: r.sent_at,
          id: r.message_id,
          ...(file ? { file } : {}),
        },
      };
    });
  }

  #markDisplayed(senderUserId: string, id: string): void {
    this.#db
      .prepare('UPDATE messages SET displayed = 1 WHERE sender_user_id = ? AND message_id = ?')
      .run(senderUserId, id);
  }

  async #handleEnvelope(f: {
    id: string;
    senderUserId: string;
    senderDeviceId: number;
    body: Uint8Array;
  }): Promise<{ message?: ReceivedMessage; failure?: ReceiveFailure }> {
    if (this.#db.prepare('SELECT 1 FROM envelopes_seen WHERE id = ?').get(f.id)) return {};
    let failureChannel: string | undefined;
    const fail = (code: string) => {
      this.#db.prepare('INSERT OR IGNORE INTO envelopes_seen (id, at) VALUES (?, ?)').run(f.id, this.#now());
      return {
        failure: {
          code,
          from: f.senderUserId === this.userId ? this.userName : this.#contactById(f.senderUserId)?.name,
          envelopeId: f.id,
          senderUserId: f.senderUserId,
          senderDeviceId: f.senderDeviceId,
          ...(failureChannel !== undefined ? { channelId: failureChannel } : {}),
        },
      };
    };
    const type = f.body[0];
    if (type === CHANNEL_ENVELOPE_TYPE) {
      failureChannel = channelIdOfEnvelope(f.body);
      return this.#handleChannelEnvelope(f, fail);
    }
    if (type !== CiphertextMessageType.PreKey && type !== CiphertextMessageType.Whisper)
      return fail('INVALID_MESSAGE');
    const record = this.#loadSession(f.senderUserId, f.senderDeviceId);
    let result: ReturnType<typeof decryptMessage>;
    try {
      result = decryptMessage(
        record,
        { type, body: f.body.subarray(1) },
        this.#local(),
        this.#prekeyLookup(),
        {
          now: this.#now(),
        },
      );
    } catch (err) {
      if (isProtocolError(err)) return fail(err.code);
      throw err;
    }
    const json = safeJson(result.plaintext);
    const kind = typeof json === 'object' && json !== null && 'kind' in json ? json.kind : undefined;
    let c: Content | SenderKeyContent | FileContent;
    if (kind === 'sender-key') {
      const parsed = SenderKeyContent.safeParse(json);
      if (!parsed.success) return fail('INVALID_CONTENT');
      c = parsed.data;
      failureChannel = c.channel;
    } else if (kind === 'file') {
      const parsed = FileContent.safeParse(json);
      if (!parsed.success) return fail('INVALID_CONTENT');
      c = parsed.data;
    } else {
      // No kind: text, as every client has sent it from the start.
      const parsed = Content.safeParse(json);
      if (!parsed.success) return fail('INVALID_CONTENT');
      c = parsed.data;
    }
    // Who sent it: the server names the account, the session proves the identity key, and
    // the two must agree with what this profile knows (or, for a stranger, with the directory).
    let contact: Contact;
    if (f.senderUserId === this.userId) {
      if (!equal(result.remoteIdentityKey, this.#identity.publicKey) || c.from !== this.userName) {
        return fail('UNTRUSTED_IDENTITY');
      }
      contact = {
        userId: this.userId,
        name: this.userName,
        identityKey: this.#identity.publicKey,
        verified: true,
        blocked: false,
      };
    } else {
      const known = this.#contactById(f.senderUserId);
      if (known && known.name === c.from && equal(known.identityKey, result.remoteIdentityKey)) {
        contact = known;
      } else {
        const u = await this.#conn
          .request('GET', `/v1/keys/${encodeURIComponent(c.from)}/devices`, UserDevicesResponse)
          .catch(() => undefined);
        if (
          !u ||
          u.userId !== f.senderUserId ||
          !u.identityKey ||
          !equal(u.identityKey, result.remoteIdentityKey) ||
          !u.devices.some((d) => d.deviceId === f.senderDeviceId)
        ) {
          return fail('UNTRUSTED_IDENTITY');
        }
        contact = this.#learnIdentity(f.senderUserId, c.from, result.remoteIdentityKey);
      }
      if ('to' in c && c.to !== this.userName) return fail('INVALID_CONTENT');
    }
    // A sender key is taken only from a member the verified log names, with the identity
    // key the log binds for them, from one of their current devices.
    let distribution: Uint8Array | undefined;
    if (isHandover(c)) {
      const refused = await this.#checkHandover(f, c, result.remoteIdentityKey);
      if (typeof refused === 'string') return fail(refused);
      distribution = refused;
    }
    const now = this.#now();
    // The checks above ran on a decryption outside any transaction (they may need the
    // network). The one that counts runs again inside an IMMEDIATE transaction on the record
    // as stored now, so a concurrent process on this profile (a `send`) cannot have its
    // ratchet step overwritten, and the record, the prekey deletion, the message (or the
    // sender key) and the envelope id are committed together.
    const outcome = this.#db
      .transaction((): 'fresh' | 'repeat' | { code: string } => {
        if (this.#db.prepare('SELECT 1 FROM envelopes_seen WHERE id = ?').get(f.id)) return 'repeat';
        let final: ReturnType<typeof decryptMessage>;
        try {
          final = decryptMessage(
            this.#loadSession(f.senderUserId, f.senderDeviceId),
            { type, body: f.body.subarray(1) },
            this.#local(),
            this.#prekeyLookup(),
            { now },
          );
        } catch (err) {
          if (isProtocolError(err)) return { code: err.code };
          throw err;
        }
        if (!equal(final.remoteIdentityKey, result.remoteIdentityKey)) return { code: 'UNTRUSTED_IDENTITY' };
        if (!equal(final.plaintext, result.plaintext)) return { code: 'INVALID_CONTENT' };
        this.#saveSession(f.senderUserId, f.senderDeviceId, final.record);
        const used = 'usedPreKeys' in final ? final.usedPreKeys : undefined;
        if (used?.preKeyId !== undefined)
          this.#db.prepare('DELETE FROM prekeys WHERE id = ?').run(used.preKeyId);
        this.#db.prepare('INSERT OR IGNORE INTO envelopes_seen (id, at) VALUES (?, ?)').run(f.id, now);
        if (isHandover(c)) {
          const skdm = distribution as Uint8Array;
          const { distributionId } = parseSenderKeyDistributionMessage(SENDER_KEY_FORMAT, skdm);
          const existing = this.#channels.senderKey(
            c.channel,
            f.senderUserId,
            f.senderDeviceId,
            distributionId,
          );
          const next = processSenderKeyDistributionMessage(SENDER_KEY_FORMAT, existing, skdm);
          this.#channels.saveSenderKey(c.channel, f.senderUserId, f.senderDeviceId, next, now);
          return 'repeat';
        }
        const inserted = this.#db
          .prepare(
            'INSERT OR IGNORE INTO messages (sender_user_id, message_id, sender_name, sender_device, peer, channel, text, sent_at, received_at, displayed) VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, 0)',
          )
          .run(
            f.senderUserId,
            c.id,
            contact.name,
            f.senderDeviceId,
            f.senderUserId === this.userId ? c.to : c.from,
            'text' in c ? c.text : '',
            c.sentAt,
            now,
          ).changes;
        if (inserted === 1 && 'file' in c) this.#storeFileRef(f.senderUserId, c.id, c.file);
        return inserted === 1 ? 'fresh' : 'repeat';
      })
      .immediate();
    if (typeof outcome === 'object') return fail(outcome.code);
    const fresh = outcome === 'fresh';
    if (!fresh || isHandover(c)) return {};
    return {
      message: {
        from: contact.name,
        device: f.senderDeviceId,
        channel: null,
        conversation: f.senderUserId === this.userId ? c.to : c.from,
        text: 'text' in c ? c.text : '',
        sentAt: c.sentAt,
        id: c.id,
        ...('file' in c ? { file: receivedFile(c.file) } : {}),
      },
    };
  }

  /**
   * Checks a sender-key handover before it is stored: the log (refreshed) names its sender
   * as a member with the identity key their session proved, the sending device is one of the
   * sender's current devices, and the distribution message parses. Returns the distribution
   * message, or the failure code.
   */
  async #checkHandover(
    f: { senderUserId: string; senderDeviceId: number },
    c: SenderKeyContent,
    remoteIdentityKey: Uint8Array,
  ): Promise<Uint8Array | string> {
    const verified = await this.#verifiedForReceive(c.channel);
    if (typeof verified === 'string') return verified;
    const member = verified.state.members.get(f.senderUserId);
    if (!member || member.userName !== c.from) return 'CHANNEL_NOT_MEMBER';
    if (!equal(member.identityKey, remoteIdentityKey)) return 'UNTRUSTED_IDENTITY';
    const u = await this.#conn
      .request('GET', `/v1/keys/${encodeURIComponent(c.from)}/devices`, UserDevicesResponse)
      .catch((err: unknown) => {
        if (isWireError(err)) return undefined;
        throw err;
      });
    if (!u || u.userId !== f.senderUserId || !u.devices.some((d) => d.deviceId === f.senderDeviceId)) {
      return 'UNTRUSTED_IDENTITY';
    }
    const skdm = decodeBase64(c.distribution);
    if (!skdm) return 'CHANNEL_MESSAGE_INVALID';
    try {
      // Parses and checks the distribution message's own signature; the record is built again in the transaction.
      processSenderKeyDistributionMessage(SENDER_KEY_FORMAT, undefined, skdm);
    } catch (err) {
      if (isProtocolError(err)) return err.code;
      throw err;
    }
    return skdm;
  }

  /**
   * The verified state of a channel for the receive path: a refusal by the server (the
   * channel is gone, or this user is no member) or a log that does not verify becomes a
   * failure code; only an unreachable server is thrown (the envelope then comes again).
   */
  async #verifiedForReceive(channelId: string): Promise<CachedChannel | string> {
    try {
      return await this.#syncChannel(channelId);
    } catch (err) {
      if (err instanceof ClientError && err.code === 'CHANNEL_LOG_INVALID') {
        this.#opts.warning?.(`${err.message} (channel ${channelId}); its messages are not shown`);
        return 'CHANNEL_LOG_INVALID';
      }
      if (isWireError(err)) {
        const cached = this.#channels.cached(channelId);
        // Removed from the channel: the server no longer serves its log; what this device verified before still holds.
        if (
          cached &&
          (err.code === 'NOT_A_MEMBER' || err.code === 'FORBIDDEN' || err.code === 'CHANNEL_NOT_FOUND')
        )
          return cached;
        return 'CHANNEL_NOT_FOUND';
      }
      throw err;
    }
  }

  /**
   * A channel envelope: decrypted with the sender key this device holds for the sending
   * device, shown only if the verified log names the sender as a member and the content
   * names this channel and that sender. Stored and committed as a 1:1 message is.
   */
  async #handleChannelEnvelope(
    f: { id: string; senderUserId: string; senderDeviceId: number; body: Uint8Array },
    fail: (code: string) => { failure: ReceiveFailure },
  ): Promise<{ message?: ReceivedMessage; failure?: ReceiveFailure }> {
    const channelId = channelIdOfEnvelope(f.body);
    if (channelId === undefined) return fail('INVALID_MESSAGE');
    const sealed = f.body.subarray(channelEnvelopeHeader(channelId).length);
    let distributionId: Uint8Array;
    try {
      distributionId = parseSenderKeyMessage(SENDER_KEY_FORMAT, sealed).distributionId.slice();
    } catch (err) {
      if (isProtocolError(err)) return fail(err.code);
      throw err;
    }
    const verified = await this.#verifiedForReceive(channelId);
    if (typeof verified === 'string') return fail(verified);
    const { state } = verified;
    const member = state.members.get(f.senderUserId);
    if (!member) return fail('CHANNEL_NOT_MEMBER');
    const decrypt = ():
      | { record: ReturnType<typeof groupDecrypt>['record']; content: ChannelContent | ChannelFileContent }
      | string => {
      const record = this.#channels.senderKey(channelId, f.senderUserId, f.senderDeviceId, distributionId);
      if (!record) return 'NO_SENDER_KEY';
      let r: ReturnType<typeof groupDecrypt>;
      try {
        r = groupDecrypt(SENDER_KEY_FORMAT, record, sealed);
      } catch (err) {
        if (isProtocolError(err)) return err.code === 'NO_SESSION' ? 'NO_SENDER_KEY' : err.code;
        throw err;
      }
      const json = safeJson(r.plaintext);
      const isFile = typeof json === 'object' && json !== null && 'kind' in json && json.kind === 'file';
      const parsed = (isFile ? ChannelFileContent : ChannelContent).safeParse(json);
      if (!parsed.success) return 'CHANNEL_MESSAGE_INVALID';
      if (parsed.data.channel !== channelId || parsed.data.from !== member.userName)
        return 'CHANNEL_MESSAGE_INVALID';
      return { record: r.record, content: parsed.data };
    };
    const first = decrypt();
    if (typeof first === 'string') return fail(first);
    const now = this.#now();
    // Again on the record as stored now, inside the transaction that commits its successor,
    // the message and the envelope id together (a concurrent process may have moved it).
    const outcome = this.#db
      .transaction(
        ():
          | 'fresh'
          | 'repeat'
          | { code: string; content?: undefined }
          | { content: ChannelContent | ChannelFileContent } => {
          if (this.#db.prepare('SELECT 1 FROM envelopes_seen WHERE id = ?').get(f.id)) return 'repeat';
          const r = decrypt();
          if (typeof r === 'string') return { code: r };
          this.#channels.updateSenderKey(channelId, f.senderUserId, f.senderDeviceId, r.record);
          this.#db.prepare('INSERT OR IGNORE INTO envelopes_seen (id, at) VALUES (?, ?)').run(f.id, now);
          const inserted = this.#db
            .prepare(
              'INSERT OR IGNORE INTO messages (sender_user_id, message_id, sender_name, sender_device, peer, channel, text, sent_at, received_at, displayed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)',
            )
            .run(
              f.senderUserId,
              r.content.id,
              member.userName,
              f.senderDeviceId,
              state.name,
              state.name,
              'text' in r.content ? r.content.text : '',
              r.content.sentAt,
              now,
            ).changes;
          if (inserted === 1 && 'file' in r.content)
            this.#storeFileRef(f.senderUserId, r.content.id, r.content.file);
          return inserted === 1 ? { content: r.content } : 'repeat';
        },
      )
      .immediate();
    if (outcome === 'repeat' || outcome === 'fresh') return {};
    if ('code' in outcome && outcome.code !== undefined) return fail(outcome.code);
    const c = (outcome as { content: ChannelContent | ChannelFileContent }).content;
    return {
      message: {
        from: member.userName,
        device: f.senderDeviceId,
        channel: state.name,
        conversation: state.name,
        text: 'text' in c ? c.text : '',
        sentAt: c.sentAt,
        id: c.id,
        ...('file' in c ? { file: receivedFile(c.file) } : {}),
      },
    };
  }

  // --- files ------------------------------------------------------------------------------
  //
  // A file is encrypted on this device under a key of its own (file-crypto.ts), uploaded
  // as ciphertext (files.ts), and announced by an ordinary 1:1 or channel message whose
  // content (`kind: 'file'`) carries the file's id, key, name, type, size and SHA-256: the
  // server learns none of them but the ciphertext's size. The keys of files that arrived
  // (and of this device's own) are kept in the `files` table, committed with their message.

  /** Inside a transaction: records the file (and its thumbnail) a message carried. */
  #storeFileRef(senderUserId: string, messageId: string, f: FileRef): void {
    const ins = this.#db.prepare(
      'INSERT OR IGNORE INTO files (file_id, sender_user_id, message_id, key, size, sha256, name, mime, thumbnail_of, width, height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    const key = (b64: string) => Buffer.from(decodeBase64(b64) ?? new Uint8Array());
    ins.run(
      f.fileId,
      senderUserId,
      messageId,
      key(f.key),
      f.size,
      Buffer.from(f.sha256, 'hex'),
      f.name,
      f.mime,
      null,
      null,
      null,
    );
    const t = f.thumbnail;
    if (t) {
      ins.run(
        t.fileId,
        senderUserId,
        messageId,
        key(t.key),
        t.size,
        Buffer.from(t.sha256, 'hex'),
        `${f.name} (thumbnail)`,
        t.mime,
        f.fileId,
        t.width,
        t.height,
      );
    }
  }

  #fileOfMessage(senderUserId: string, messageId: string): ReceivedFile | undefined {
    const rows = this.#db
      .prepare('SELECT * FROM files WHERE sender_user_id = ? AND message_id = ?')
      .all(senderUserId, messageId) as FileRow[];
    const main = rows.find((r) => r.thumbnail_of === null);
    if (!main) return undefined;
    const t = rows.find((r) => r.thumbnail_of === main.file_id);
    return {
      id: main.file_id,
      name: main.name,
      size: main.size,
      mime: main.mime,
      sha256: Buffer.from(main.sha256).toString('hex'),
      ...(t
        ? {
            thumbnail: {
              id: t.file_id,
              width: t.width ?? 0,
              height: t.height ?? 0,
              mime: t.mime,
              size: t.size,
            },
          }
        : {}),
    };
  }

  /**
   * The key and checks of a file that arrived in (or was sent with) a message:
   * FILE_UNKNOWN otherwise. Several senders' messages may name the same file id (anyone
   * who learned an id can send one); only the message of the user who uploaded the file
   * is its own, so the row is chosen by the server's FileStatus.uploaderId (remembered
   * per id: it never changes). What a lying server can do with that is in SECURITY.md
   * (Files): never make the client accept bytes that no message's key and SHA-256 bind.
   */
  async #fileSecret(fileId: string): Promise<{ secret: FileSecret; row: FileRow }> {
    if (!FileId.safeParse(fileId).success) {
      throw new ClientError('INVALID_ARGUMENT', '"fileId" expected 32 lower-case hex digits');
    }
    const claims = this.#db.prepare('SELECT * FROM files WHERE file_id = ?').all(fileId) as FileRow[];
    if (claims.length === 0) {
      throw new ClientError(
        'FILE_UNKNOWN',
        `no message in this profile carries a file with the id ${fileId}`,
      );
    }
    let uploaderId = this.#fileUploaders.get(fileId);
    if (uploaderId === undefined) {
      const st = await this.fileStatus(fileId);
      if (st.id !== fileId) throw new ClientError('SERVER_PROTOCOL', 'the server answered for another file');
      uploaderId = st.uploaderId;
      if (this.#fileUploaders.size >= 1000) this.#fileUploaders.clear();
      this.#fileUploaders.set(fileId, uploaderId);
    }
    const row = claims.find((c) => c.sender_user_id === uploaderId);
    if (!row) {
      throw new ClientError(
        'FILE_UNKNOWN',
        `no message from the user who uploaded file ${fileId} carries it (another sender's message names its id)`,
      );
    }
    return {
      row,
      secret: {
        id: row.file_id,
        key: new Uint8Array(row.key),
        size: row.size,
        sha256: new Uint8Array(row.sha256),
      },
    };
  }

  /**
   * Sends the file at `path` to a user (`{to}`: readable by them and by this user's
   * devices) or to a channel (`{channel}`: readable by its members at download time):
   * encrypts and uploads it (and, for a PNG or JPEG, a thumbnail of at most 256 px), then
   * sends a message carrying its key, name, type, size and SHA-256 by the usual 1:1 or
   * channel path. The name and type are never sent to the server in the clear.
   */
  async sendFile(
    target: { to: string } | { channel: string },
    path: string,
    options: {
      onProgress?: ProgressListener | undefined;
      /** Shown to recipients instead of the path's last component. */
      name?: string | undefined;
      /** The type; by default sniffed from the first bytes. */
      mime?: string | undefined;
    } = {},
  ): Promise<SentFile> {
    const toUser = 'to' in target ? target.to : undefined;
    const channel = 'channel' in target ? target.channel : undefined;
    if ((toUser === undefined) === (channel === undefined)) {
      throw new ClientError('INVALID_ARGUMENT', '"target" expected exactly one of to and channel');
    }
    if (typeof path !== 'string' || path === '')
      throw new ClientError('INVALID_ARGUMENT', '"path" expected a file path');
    const name = options.name ?? basename(path);
    if (!FileName.safeParse(name).success) {
      throw new ClientError(
        'INVALID_ARGUMENT',
        `"name" expected 1..${MAX_FILE_NAME_LEN} characters without "/"`,
      );
    }
    if (options.mime !== undefined && !MimeType.safeParse(options.mime).success) {
      throw new ClientError('INVALID_ARGUMENT', '"mime" expected a media type like text/plain');
    }
    await this.#signIn();
    // Who may read it, and the checks the message will need, before anything is uploaded.
    let readers: { to: string[] } | { channel: string };
    let channelId: string | undefined;
    if (toUser !== undefined) {
      checkUserName(toUser, 'to');
      const peer = await this.#refreshUser(toUser);
      if (peer.contact.blocked) {
        throw new ClientError(
          'IDENTITY_CHANGED',
          `${toUser}'s identity key changed after you verified it; compare the new safety number and run "qalqon verify" before sending`,
        );
      }
      readers = { to: toUser === this.userName ? [toUser] : [toUser, this.userName] };
    } else {
      channelId = await this.#channelId(channel!);
      readers = { channel: channelId };
    }
    const src = await openSource(path);
    try {
      const mime = options.mime ?? sniffMime(src.head);
      const thumb = await makeThumbnail(src, mime);
      let thumbnail: FileRef['thumbnail'];
      if (thumb) {
        const t = await uploadFile(
          this.#conn,
          memorySource(thumb.bytes),
          readers,
          'thumbnail',
          options.onProgress,
        );
        thumbnail = {
          fileId: t.id,
          key: encodeBase64(t.key),
          size: t.size,
          width: thumb.width,
          height: thumb.height,
          mime: thumb.mime,
          sha256: Buffer.from(t.sha256).toString('hex'),
        };
        t.key.fill(0);
      }
      const up = await uploadFile(this.#conn, src, readers, 'upload', options.onProgress);
      const file: FileRef = {
        fileId: up.id,
        key: encodeBase64(up.key),
        name,
        size: up.size,
        mime,
        sha256: Buffer.from(up.sha256).toString('hex'),
        ...(thumbnail ? { thumbnail } : {}),
      };
      up.key.fill(0);
      const sent =
        toUser !== undefined
          ? await this.#sendPairwiseContent(toUser, { text: '', file })
          : await this.#sendChannelContent(channel!, channelId!, { text: '', file });
      return {
        id: sent.id,
        sentAt: sent.sentAt,
        fileId: up.id,
        name,
        size: up.size,
        mime,
        ...(thumbnail
          ? { thumbnail: { fileId: thumbnail.fileId, width: thumbnail.width, height: thumbnail.height } }
          : {}),
      };
    } finally {
      await src.close();
    }
  }

  /**
   * Downloads the file `fileId` (a file or a thumbnail some message carried) into
   * `outPath`, which must not exist: decrypted and verified as it arrives, resumed after a
   * broken connection, and renamed into place only once the whole file verifies.
   */
  async getFile(
    fileId: string,
    outPath: string,
    options: { onProgress?: ProgressListener | undefined } = {},
  ): Promise<{ id: string; name: string; size: number; mime: string; sha256: string; path: string }> {
    const { secret, row } = await this.#fileSecret(fileId);
    try {
      await this.#signIn();
      await downloadFile(this.#conn, secret, outPath, options.onProgress);
    } finally {
      secret.key.fill(0);
    }
    return {
      id: row.file_id,
      name: row.name,
      size: row.size,
      mime: row.mime,
      sha256: Buffer.from(row.sha256).toString('hex'),
      path: outPath,
    };
  }

  /** Bytes [offset, offset + length) of the file `fileId`, fetching and verifying only the segments that hold them. */
  async readFile(fileId: string, offset: number, length: number): Promise<Uint8Array> {
    const { secret } = await this.#fileSecret(fileId);
    try {
      await this.#signIn();
      return await readFileRange(this.#conn, secret, offset, length);
    } finally {
      secret.key.fill(0);
    }
  }

  /** This user's storage on the server: bytes used by their files, their quota, the largest file accepted. */
  async fileUsage(): Promise<z.output<typeof FileUsageResponse>> {
    await this.#signIn();
    return this.#conn.request('GET', '/v1/files', FileUsageResponse);
  }

  /** The server's view of a file: its ciphertext size and how much of it has arrived. */
  async fileStatus(fileId: string): Promise<z.output<typeof FileStatus>> {
    if (!FileId.safeParse(fileId).success) {
      throw new ClientError('INVALID_ARGUMENT', '"fileId" expected 32 lower-case hex digits');
    }
    await this.#signIn();
    return this.#conn.request('GET', `/v1/files/${fileId}`, FileStatus);
  }

  // --- devices ----------------------------------------------------------------------------

  /** `device approve`: hands this user's identity to the device that showed `linkCode`. */
  async approveLink(linkCode: string): Promise<void> {
    const { slotCode } = splitLinkCode(linkCode);
    await this.#signIn();
    const slot = await this.#conn.request('POST', '/v1/link/lookup', LinkLookupResponse, {
      linkCode: slotCode,
    });
    const secret = utf8(
      JSON.stringify({
        v: 1,
        userId: this.userId,
        userName: this.userName,
        identity: encodeBase64(serializeIdentityKeyPair(this.#identity)),
      }),
    );
    const handover = sealHandover(linkCode, slot.request, secret);
    secret.fill(0);
    await this.#conn.request('POST', '/v1/link/approve', OkResponse, {
      linkCode: slotCode,
      handover: encodeBase64(handover),
    });
  }

  async listDevices(): Promise<{ deviceId: number; name: string; createdAt: number; current: boolean }[]> {
    await this.#signIn();
    const r = await this.#conn.request('GET', '/v1/devices', DeviceListResponse);
    return r.devices.map((d) => ({
      deviceId: d.deviceId,
      name: d.name,
      createdAt: d.createdAt,
      current: d.deviceId === this.deviceId,
    }));
  }

  async removeDevice(deviceId: number): Promise<void> {
    if (!Number.isSafeInteger(deviceId) || deviceId < 1)
      throw new ClientError('INVALID_ARGUMENT', '"deviceId" expected a positive integer');
    await this.#signIn();
    await this.#conn.request('DELETE', `/v1/devices/${deviceId}`, OkResponse);
    this.#db.prepare('DELETE FROM sessions WHERE user_id = ? AND device_id = ?').run(this.userId, deviceId);
  }

  // --- verification -----------------------------------------------------------------------

  #safetyDigits(contact: Contact): string {
    return computeFingerprint({
      version: FINGERPRINT_VERSION,
      localStableId: utf8(this.userId),
      localIdentityKey: this.#identity.publicKey,
      remoteStableId: utf8(contact.userId),
      remoteIdentityKey: contact.identityKey,
    }).displayable;
  }

  /** The 60-digit safety number with `user` (12 groups of 5), from the identity key the server lists now. */
  async safetyNumber(user: string): Promise<{ safetyNumber: string; verified: boolean }> {
    checkUserName(user, 'user');
    if (user === this.userName) throw new ClientError('INVALID_ARGUMENT', '"user" must be someone else');
    const { contact } = await this.#refreshUser(user);
    return { safetyNumber: formatSafetyNumber(this.#safetyDigits(contact)), verified: contact.verified };
  }

  /** Marks `user` verified if `number` (spaces allowed) equals the current safety number; compared in constant time. */
  async verify(user: string, number: string): Promise<void> {
    checkUserName(user, 'user');
    const digits = typeof number === 'string' ? number.replace(/\s+/g, '') : '';
    if (!/^[0-9]{60}$/.test(digits))
      throw new ClientError('INVALID_ARGUMENT', '"number" expected 60 digits (spaces allowed)');
    if (user === this.userName) throw new ClientError('INVALID_ARGUMENT', '"user" must be someone else');
    const { contact } = await this.#refreshUser(user);
    if (!constantTimeEqual(utf8(this.#safetyDigits(contact)), utf8(digits))) {
      throw new ClientError(
        'SAFETY_NUMBER_MISMATCH',
        `that is not the safety number with ${user}; do not trust this conversation until the numbers match`,
      );
    }
    this.#db.prepare('UPDATE contacts SET verified = 1, blocked = 0 WHERE user_id = ?').run(contact.userId);
  }
  // --- remote administration --------------------------------------------------------------
  //
  // The routes of @qalqon/wire rbac.ts over this device's pinned, signed-in connection. The
  // server decides every request by the caller's roles (FORBIDDEN otherwise). Each answer is
  // parsed with its wire schema and returned as that schema's output (the shapes the local
  // admin socket answers with); routes that answer OkResponse return nothing.

  /** `GET /v1/me`: this user's id, name, device, grants, org units and global permissions. */
  async me(): Promise<z.output<typeof MeResponse>> {
    await this.#signIn();
    return this.#conn.request('GET', '/v1/me', MeResponse);
  }

  async adminListUsers(): Promise<z.output<typeof AdminUsersResponse>> {
    await this.#signIn();
    return this.#conn.request('GET', '/v1/admin/users', AdminUsersResponse);
  }

  /** Creates a user and returns their one-time enrolment code (shown once). */
  async adminAddUser(input: {
    name: string;
    roles?: readonly string[] | undefined;
    unit?: string | undefined;
  }): Promise<z.output<typeof AdminUserAddResponse>> {
    checkUserName(input.name, 'name');
    await this.#signIn();
    return this.#conn.request('POST', '/v1/admin/users', AdminUserAddResponse, {
      name: input.name,
      ...(input.roles !== undefined ? { roles: [...input.roles] } : {}),
      ...(input.unit !== undefined ? { unit: input.unit } : {}),
    });
  }

  async adminRemoveUser(name: string): Promise<void> {
    checkUserName(name, 'name');
    await this.#signIn();
    await this.#conn.request('DELETE', `/v1/admin/users/${encodeURIComponent(name)}`, OkResponse);
  }

  async adminListRoles(): Promise<z.output<typeof RolesResponse>> {
    await this.#signIn();
    return this.#conn.request('GET', '/v1/admin/roles', RolesResponse);
  }

  async adminCreateRole(input: {
    name: string;
    permissions: readonly string[];
  }): Promise<z.output<typeof RoleInfo>> {
    checkUserName(input.name, 'name');
    await this.#signIn();
    return this.#conn.request('POST', '/v1/admin/roles', RoleInfo, {
      name: input.name,
      permissions: [...input.permissions],
    });
  }

  async adminDeleteRole(name: string): Promise<void> {
    checkUserName(name, 'name');
    await this.#signIn();
    await this.#conn.request('DELETE', `/v1/admin/roles/${encodeURIComponent(name)}`, OkResponse);
  }

  /** Every grant, or one user's. */
  async adminListGrants(user?: string): Promise<z.output<typeof GrantsResponse>> {
    if (user !== undefined) checkUserName(user, 'user');
    await this.#signIn();
    const q = user === undefined ? '' : `?user=${encodeURIComponent(user)}`;
    return this.#conn.request('GET', `/v1/admin/grants${q}`, GrantsResponse);
  }

  /** Gives `role` to `user` in `scope` (`{kind:'global'}`, `{kind:'unit', unit}` or `{kind:'channel', channel}`). */
  async adminGrant(input: { user: string; role: string; scope: GrantScopeJson }): Promise<void> {
    checkUserName(input.user, 'user');
    checkUserName(input.role, 'role');
    await this.#signIn();
    await this.#conn.request('POST', '/v1/admin/grants', OkResponse, {
      user: input.user,
      role: input.role,
      scope: input.scope,
    });
  }

  async adminRevoke(input: { user: string; role: string; scope: GrantScopeJson }): Promise<void> {
    checkUserName(input.user, 'user');
    checkUserName(input.role, 'role');
    await this.#signIn();
    await this.#conn.request('POST', '/v1/admin/grants/revoke', OkResponse, {
      user: input.user,
      role: input.role,
      scope: input.scope,
    });
  }

  async adminListOrgUnits(): Promise<z.output<typeof OrgUnitsResponse>> {
    await this.#signIn();
    return this.#conn.request('GET', '/v1/admin/org', OrgUnitsResponse);
  }

  async adminCreateOrgUnit(input: {
    name: string;
    parent?: string | undefined;
  }): Promise<z.output<typeof OrgUnitInfo>> {
    checkUserName(input.name, 'name');
    if (input.parent !== undefined) checkUserName(input.parent, 'parent');
    await this.#signIn();
    return this.#conn.request('POST', '/v1/admin/org', OrgUnitInfo, {
      name: input.name,
      ...(input.parent !== undefined ? { parent: input.parent } : {}),
    });
  }

  async adminRemoveOrgUnit(name: string): Promise<void> {
    checkUserName(name, 'name');
    await this.#signIn();
    await this.#conn.request('DELETE', `/v1/admin/org/${encodeURIComponent(name)}`, OkResponse);
  }

  /** Puts `user` in the org unit `unit`. */
  async adminAssignOrgUnit(unit: string, user: string): Promise<void> {
    checkUserName(unit, 'unit');
    checkUserName(user, 'user');
    await this.#signIn();
    await this.#conn.request('POST', `/v1/admin/org/${encodeURIComponent(unit)}/users`, OkResponse, { user });
  }

  /** Takes `user` out of the org unit `unit`. */
  async adminUnassignOrgUnit(unit: string, user: string): Promise<void> {
    checkUserName(unit, 'unit');
    checkUserName(user, 'user');
    await this.#signIn();
    await this.#conn.request('POST', `/v1/admin/org/${encodeURIComponent(unit)}/users/remove`, OkResponse, {
      user,
    });
  }

  /** Audit records in seq order: after `after`, at or after `since` (ms), at most `limit`. */
  async adminAuditList(
    options: { since?: number | undefined; after?: number | undefined; limit?: number | undefined } = {},
  ): Promise<z.output<typeof AuditListResponse>> {
    const q: string[] = [];
    for (const [k, v] of [
      ['since', options.since],
      ['after', options.after],
      ['limit', options.limit],
    ] as const) {
      if (v === undefined) continue;
      if (!Number.isSafeInteger(v) || v < (k === 'limit' ? 1 : 0)) {
        throw new ClientError(
          'INVALID_ARGUMENT',
          `"${k}" expected a ${k === 'limit' ? 'positive' : 'non-negative'} integer`,
        );
      }
      q.push(`${k}=${v}`);
    }
    await this.#signIn();
    return this.#conn.request(
      'GET',
      `/v1/admin/audit${q.length > 0 ? `?${q.join('&')}` : ''}`,
      AuditListResponse,
    );
  }

  /** Walks the server's audit chain and checks its signed head. */
  async adminAuditVerify(): Promise<z.output<typeof AuditVerifyResponse>> {
    await this.#signIn();
    return this.#conn.request('GET', '/v1/admin/audit/verify', AuditVerifyResponse);
  }
}

interface FileRow {
  file_id: string;
  sender_user_id: string;
  message_id: string;
  key: Uint8Array;
  size: number;
  sha256: Uint8Array;
  name: string;
  mime: string;
  thumbnail_of: string | null;
  width: number | null;
  height: number | null;
}

const HandoverSecret = z.strictObject({
  v: z.literal(1),
  userId: z.string(),
  userName: z.string(),
  identity: z.string(),
});

function isHandover(c: Content | SenderKeyContent | FileContent): c is SenderKeyContent {
  return 'kind' in c && c.kind === 'sender-key';
}

function receivedFile(f: FileRef): ReceivedFile {
  return {
    id: f.fileId,
    name: f.name,
    size: f.size,
    mime: f.mime,
    sha256: f.sha256,
    ...(f.thumbnail
      ? {
          thumbnail: {
            id: f.thumbnail.fileId,
            width: f.thumbnail.width,
            height: f.thumbnail.height,
            mime: f.thumbnail.mime,
            size: f.thumbnail.size,
          },
        }
      : {}),
  };
}

function safeJson(bytes: Uint8Array): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return undefined;
  }
}

function access(opts: ClientOptions, kind: KeystoreKind): KeystoreAccess {
  return { kind, passphrase: opts.passphrase, notice: opts.notice };
}
