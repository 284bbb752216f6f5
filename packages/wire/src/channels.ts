/**
 * Channels: the signed membership log and the channel routes.
 *
 * A channel's membership is a hash chain of changes, each signed (XEdDSA) with the identity
 * key of the user whose device made it. The first change creates the channel and makes its
 * creator a manager; later ones add or remove members and must be signed by a manager the
 * log itself names (a member may also remove themself: leaving). Each `add` binds the
 * member's identity key, so a key the server swaps in later is noticed.
 *
 * Clients replay the log with `replayChannelLog` before they hand a sender key to anyone,
 * so a member the server inserts on its own — without a manager's signature — never gets
 * a key. The server replays the same rules before it stores a change, and keeps its own
 * member table (for fan-out and authorisation) as a projection of the log.
 *
 * The rules need SHA-256 and XEdDSA verification; this package has no crypto of its own, so
 * the caller passes them in (`ChannelLogCrypto`), the server and the client from
 * @qalqon/crypto.
 *
 * Routes (bearer-authenticated):
 *
 * | route | request | response |
 * |---|---|---|
 * | `GET /v1/channels` | — | ChannelsResponse (the caller's channels) |
 * | `POST /v1/channels` | ChannelCreateRequest | ChannelInfo |
 * | `GET /v1/channels/:channelId` | ?after=SEQ | ChannelLogResponse |
 * | `POST /v1/channels/:channelId/changes` | ChannelChangeRequest | ChannelInfo |
 * | `POST /v1/channels/:channelId/messages` | ChannelSendRequest | ChannelSendResponse |
 *
 * A channel message's envelope body is `CHANNEL_ENVELOPE_TYPE ‖ channel id (16 bytes) ‖
 * Qalqon sender-key message (0xA1 …)`; the server checks the prefix against the route and
 * fans the body out unchanged to every member device except the sender's.
 */
import { z } from 'zod';
import { decodeBase64, encodeBase64 } from './base64.js';
import { MAX_ENVELOPE_BYTES } from './limits.js';
import { bytes, EcPublicKey, Signature, Timestamp, UserId, UserName } from './primitives.js';

/** Client-generated: 16 random bytes as 32 lower-case hex digits. */
export const ChannelId = z.string().regex(/^[0-9a-f]{32}$/, 'expected 32 lower-case hex digits');
/** Unique in the organisation; shown to members. As user names. */
export const ChannelName = UserName;
export const ChannelRole = z.enum(['member', 'manager']);
export type ChannelRoleName = z.infer<typeof ChannelRole>;

/** Most members a channel may have. */
export const MAX_CHANNEL_MEMBERS = 1000;
/** Largest encoded change. */
export const MAX_CHANNEL_CHANGE_BYTES = 2048;
/** Most log entries one `GET /v1/channels/:id` returns; page with `?after=`. */
export const MAX_CHANNEL_LOG_PAGE = 500;
/** The first byte of a channel envelope body ('G'). 1:1 bodies start with 2 or 3. */
export const CHANNEL_ENVELOPE_TYPE = 0x47;
/** Type byte + channel id. */
export const CHANNEL_ENVELOPE_HEADER_LEN = 17;
/** `prev` of the first change. */
export const GENESIS_PREV = '0'.repeat(64);
/** Domain separation for the signature: XEdDSA over this prefix ‖ the change bytes. */
export const CHANNEL_CHANGE_SIGNING_PREFIX = 'qalqon/channel-change/v1\0';

const Hex64 = z.string().regex(/^[0-9a-f]{64}$/);
const By = z.strictObject({ userId: UserId, deviceId: z.int().min(1) });

/** One membership change, as signed. JSON in UTF-8; the signature covers the exact bytes sent. */
export const ChannelChange = z.discriminatedUnion('op', [
  z.strictObject({
    v: z.literal(1),
    channel: ChannelId,
    seq: z.literal(0),
    prev: z.literal(GENESIS_PREV),
    at: Timestamp,
    by: By,
    op: z.literal('create'),
    name: ChannelName,
    /** The creator's user name and identity key: the creator is the first manager. */
    userName: UserName,
    identityKey: EcPublicKey,
  }),
  z.strictObject({
    v: z.literal(1),
    channel: ChannelId,
    seq: z.int().min(1),
    prev: Hex64,
    at: Timestamp,
    by: By,
    op: z.literal('add'),
    userId: UserId,
    userName: UserName,
    /** The identity key the signer verified (or trusted on first use) for the new member. */
    identityKey: EcPublicKey,
    role: ChannelRole,
  }),
  z.strictObject({
    v: z.literal(1),
    channel: ChannelId,
    seq: z.int().min(1),
    prev: Hex64,
    at: Timestamp,
    by: By,
    op: z.literal('remove'),
    userId: UserId,
  }),
]);
export type ChannelChangeJson = z.input<typeof ChannelChange>;
export type ChannelChangeData = z.output<typeof ChannelChange>;

/** A change as it travels and is stored: its exact bytes and the signature over them. */
export const SignedChannelChange = z.strictObject({
  change: bytes(1, MAX_CHANNEL_CHANGE_BYTES),
  signature: Signature,
});
export type SignedChannelChangeJson = z.input<typeof SignedChannelChange>;
export interface SignedChannelChangeData {
  readonly change: Uint8Array;
  readonly signature: Uint8Array;
}

export interface ChannelMember {
  readonly userId: string;
  readonly userName: string;
  /** 33 bytes, 0x05-typed: as the log bound it. */
  readonly identityKey: Uint8Array;
  readonly role: ChannelRoleName;
  /** The seq of the change that added them. */
  readonly addedSeq: number;
}

/** What a replayed log says about a channel. */
export interface ChannelState {
  readonly channelId: string;
  readonly name: string;
  /** The seq of the last change. */
  readonly seq: number;
  /** Hex SHA-256 of the last change's bytes: the next change's `prev`. */
  readonly head: string;
  readonly members: ReadonlyMap<string, ChannelMember>;
}

/** The primitives the rules need, from the caller's crypto. */
export interface ChannelLogCrypto {
  /** XEdDSA verification with a 32-byte Curve25519 public key (no type byte). */
  xeddsaVerify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
  sha256(data: Uint8Array): Uint8Array;
}

/** Why a change was refused; `seq` is the change's position when it could be read. */
export type ChannelLogProblem =
  | 'malformed'
  | 'wrong-channel'
  | 'out-of-order'
  | 'broken-chain'
  | 'bad-signature'
  | 'not-allowed'
  | 'not-a-member'
  | 'already-member'
  | 'too-many-members';

export class ChannelLogError extends Error {
  readonly code = 'CHANNEL_CHANGE_INVALID' as const;
  readonly problem: ChannelLogProblem;
  readonly seq: number | undefined;
  constructor(problem: ChannelLogProblem, message: string, seq?: number) {
    super(message);
    this.name = 'ChannelLogError';
    this.problem = problem;
    this.seq = seq;
  }
}

export function isChannelLogError(err: unknown): err is ChannelLogError {
  return err instanceof ChannelLogError;
}

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

/** The bytes of a change, ready to sign. Fields in the order given; the bytes are what is signed. */
export function encodeChannelChange(change: ChannelChangeJson): Uint8Array {
  const parsed = ChannelChange.safeParse(change);
  if (!parsed.success) throw new ChannelLogError('malformed', 'the change does not match the change schema');
  const bytesOut = utf8.encode(JSON.stringify(change));
  if (bytesOut.length > MAX_CHANNEL_CHANGE_BYTES) {
    throw new ChannelLogError('malformed', `a change is at most ${MAX_CHANNEL_CHANGE_BYTES} bytes`);
  }
  return bytesOut;
}

/** What the signer signs: the domain prefix followed by the change bytes. */
export function channelChangeSigningMessage(change: Uint8Array): Uint8Array {
  const prefix = utf8.encode(CHANNEL_CHANGE_SIGNING_PREFIX);
  const out = new Uint8Array(prefix.length + change.length);
  out.set(prefix, 0);
  out.set(change, prefix.length);
  return out;
}

function hex(b: Uint8Array): string {
  let s = '';
  for (const x of b) s += x.toString(16).padStart(2, '0');
  return s;
}

/** Parses a change's bytes (strict: valid UTF-8 JSON matching the schema). */
export function decodeChannelChange(change: Uint8Array, seq?: number): ChannelChangeData {
  let json: unknown;
  try {
    json = JSON.parse(utf8Decoder.decode(change));
  } catch {
    throw new ChannelLogError('malformed', 'the change is not UTF-8 JSON', seq);
  }
  const parsed = ChannelChange.safeParse(json);
  if (!parsed.success)
    throw new ChannelLogError('malformed', 'the change does not match the change schema', seq);
  return parsed.data;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= (a[i] ?? 0) ^ (b[i] ?? 0);
  return d === 0;
}

/**
 * Applies one signed change to a channel's state (undefined before the first) and returns
 * the new state; throws ChannelLogError and changes nothing when the change is not
 * well-formed, not next in the chain, not signed by its signer's bound identity key, or not
 * allowed to its signer.
 */
export function applyChannelChange(
  state: ChannelState | undefined,
  entry: SignedChannelChangeData,
  crypto: ChannelLogCrypto,
  expectedChannelId?: string,
): { state: ChannelState; change: ChannelChangeData } {
  const expectedSeq = state === undefined ? 0 : state.seq + 1;
  const c = decodeChannelChange(entry.change, expectedSeq);
  const channelId = state?.channelId ?? expectedChannelId ?? c.channel;
  if (c.channel !== channelId)
    throw new ChannelLogError('wrong-channel', 'the change names another channel', c.seq);
  if (c.seq !== expectedSeq) {
    throw new ChannelLogError('out-of-order', `expected change ${expectedSeq}, got ${c.seq}`, c.seq);
  }
  if (c.prev !== (state?.head ?? GENESIS_PREV)) {
    throw new ChannelLogError('broken-chain', `change ${c.seq} does not follow the previous change`, c.seq);
  }
  // The signer's key: for the creation, the key the change itself names; afterwards, the
  // key the log bound when the signer was added.
  let signerKey: Uint8Array;
  if (c.op === 'create') {
    signerKey = c.identityKey;
  } else {
    const signer = state?.members.get(c.by.userId);
    if (!signer)
      throw new ChannelLogError('not-allowed', `the signer of change ${c.seq} is not a member`, c.seq);
    signerKey = signer.identityKey;
  }
  if (
    !crypto.xeddsaVerify(signerKey.subarray(1), channelChangeSigningMessage(entry.change), entry.signature)
  ) {
    throw new ChannelLogError(
      'bad-signature',
      `change ${c.seq} is not signed by its signer's identity key`,
      c.seq,
    );
  }
  const head = hex(crypto.sha256(entry.change));
  if (c.op === 'create') {
    const members = new Map<string, ChannelMember>([
      [
        c.by.userId,
        {
          userId: c.by.userId,
          userName: c.userName,
          identityKey: c.identityKey,
          role: 'manager',
          addedSeq: 0,
        },
      ],
    ]);
    return { state: { channelId, name: c.name, seq: 0, head, members }, change: c };
  }
  const prior = state as ChannelState;
  const signer = prior.members.get(c.by.userId) as ChannelMember;
  const members = new Map(prior.members);
  if (c.op === 'add') {
    if (signer.role !== 'manager') {
      throw new ChannelLogError('not-allowed', `only a manager may add members (change ${c.seq})`, c.seq);
    }
    const existing = members.get(c.userId);
    if (existing) throw new ChannelLogError('already-member', `${c.userName} is already a member`, c.seq);
    if (members.size >= MAX_CHANNEL_MEMBERS) {
      throw new ChannelLogError(
        'too-many-members',
        `a channel has at most ${MAX_CHANNEL_MEMBERS} members`,
        c.seq,
      );
    }
    members.set(c.userId, {
      userId: c.userId,
      userName: c.userName,
      identityKey: c.identityKey,
      role: c.role,
      addedSeq: c.seq,
    });
  } else {
    if (!members.has(c.userId)) throw new ChannelLogError('not-a-member', 'that user is not a member', c.seq);
    if (signer.role !== 'manager' && c.userId !== c.by.userId) {
      throw new ChannelLogError('not-allowed', `only a manager may remove others (change ${c.seq})`, c.seq);
    }
    members.delete(c.userId);
  }
  return { state: { channelId, name: prior.name, seq: c.seq, head, members }, change: c };
}

/** Replays a whole log from its first change; throws at the first change that fails. */
export function replayChannelLog(
  entries: readonly SignedChannelChangeData[],
  crypto: ChannelLogCrypto,
  expectedChannelId?: string,
): ChannelState {
  let state: ChannelState | undefined;
  for (const e of entries) state = applyChannelChange(state, e, crypto, expectedChannelId).state;
  if (!state) throw new ChannelLogError('malformed', 'the log is empty');
  return state;
}

/** True when both identity keys are the same 33 bytes. */
export function sameIdentityKey(a: Uint8Array, b: Uint8Array): boolean {
  return sameBytes(a, b);
}

/** The envelope header of a channel message for `channelId`. */
export function channelEnvelopeHeader(channelId: string): Uint8Array {
  const out = new Uint8Array(CHANNEL_ENVELOPE_HEADER_LEN);
  out[0] = CHANNEL_ENVELOPE_TYPE;
  for (let i = 0; i < 16; i++) out[1 + i] = Number.parseInt(channelId.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** The channel id of a channel envelope body, or undefined for any other body. */
export function channelIdOfEnvelope(body: Uint8Array): string | undefined {
  if (body.length <= CHANNEL_ENVELOPE_HEADER_LEN || body[0] !== CHANNEL_ENVELOPE_TYPE) return undefined;
  return hex(body.subarray(1, CHANNEL_ENVELOPE_HEADER_LEN));
}

// --- HTTP bodies ---------------------------------------------------------------------------

export const ChannelIdParam = z.strictObject({ channelId: ChannelId });
export const ChannelLogQuery = z.strictObject({
  after: z
    .string()
    .regex(/^(0|[1-9][0-9]{0,8})$/)
    .optional(),
});

export const ChannelInfo = z.strictObject({
  id: ChannelId,
  name: ChannelName,
  /** The org unit the channel belongs to (unit-scoped grants apply to it). */
  unit: UserName.optional(),
  /** The seq of the last change. */
  seq: z.int().min(0),
  members: z.int().min(0),
  createdAt: Timestamp,
});
export const ChannelsResponse = z.strictObject({ channels: z.array(ChannelInfo) });
export const ChannelCreateRequest = z.strictObject({
  /** The signed genesis change (op `create`, seq 0); its `channel` is the new id. */
  entry: SignedChannelChange,
  unit: UserName.optional(),
});
export const ChannelChangeRequest = z.strictObject({ entry: SignedChannelChange });
export const ChannelLogResponse = z.strictObject({
  channel: ChannelInfo,
  /** Changes in seq order, after `?after=` when given (from 0 otherwise). */
  entries: z.array(SignedChannelChange).max(MAX_CHANNEL_LOG_PAGE),
});
export const ChannelSendRequest = z.strictObject({
  body: bytes(CHANNEL_ENVELOPE_HEADER_LEN + 1, MAX_ENVELOPE_BYTES),
});
/** Sent once every member device's copy is on disk. */
export const ChannelSendResponse = z.strictObject({ envelopes: z.int().min(0) });

/** A signed change as JSON, for a client building a request. */
export function signedChangeJson(entry: SignedChannelChangeData): SignedChannelChangeJson {
  return { change: encodeBase64(entry.change), signature: encodeBase64(entry.signature) };
}

/** The raw bytes of a JSON signed change (undefined if not canonical base64). */
export function signedChangeBytes(json: SignedChannelChangeJson): SignedChannelChangeData | undefined {
  const change = decodeBase64(json.change);
  const signature = decodeBase64(json.signature);
  return change && signature ? { change, signature } : undefined;
}
