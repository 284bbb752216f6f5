/**
 * Sender-key state: what one member of a group keeps about one sender's chain for one
 * distribution id, and the chain arithmetic both sender-key formats share.
 *
 * The chain is libsignal's (rust/protocol/src/sender_keys.rs, v0.90.0 — unchanged in
 * v0.103.0): a 32-byte chain key at an iteration; the message seed of an iteration is
 * HMAC-SHA256(chainKey, 0x01) and the next chain key HMAC-SHA256(chainKey, 0x02). A record
 * keeps up to five states per (sender, distribution id), most recent first, each keyed by
 * its chain id, as libsignal does (MAX_SENDER_KEY_STATES in consts.rs), and each state
 * keeps up to 2,000 seeds of skipped iterations (MAX_MESSAGE_KEYS).
 *
 * Everything here is a pure function over immutable values: an operation returns a new
 * record and never writes to the one it was given.
 *
 * The serialised record is Qalqon's own format, not libsignal's storage protobuf: it also
 * records the distribution id and the wire format of each state, and it is checksummed so
 * that storage corruption is reported as INVALID_STATE instead of surfacing later as a
 * signature or decryption failure. docs/protocol-formats.md describes it byte by byte.
 */
import { constantTimeEqual, hmacSha256, sha256, x25519PublicKey } from '@qalqon/crypto';
import { parseCurveKey, SERIALIZED_CURVE_KEY_LEN } from './curve.js';
import { ProtocolError } from './errors.js';
import { argError, expectBytes, expectUint32 } from './validate.js';

/**
 * The two wire formats that share this chain. `libsignal` is libsignal's version-3
 * sender-key message (AES-256-CBC), spoken for interoperability; `qalqon` is Qalqon's
 * product format (AES-256-GCM with the header as associated data). A state speaks exactly
 * one of them, fixed when it is created, so a message can never be read in the other.
 */
export type SenderKeyFormat = 'libsignal' | 'qalqon';

export function expectSenderKeyFormat(value: unknown): asserts value is SenderKeyFormat {
  if (value !== 'libsignal' && value !== 'qalqon') {
    argError(
      `"format" expected 'libsignal' or 'qalqon', got ${typeof value === 'string' ? value : typeof value}`,
    );
  }
}

/** Length of a sender chain key and of a message seed (HMAC-SHA256 output). */
export const SENDER_CHAIN_KEY_LEN = 32;
/** Length of a distribution id: a UUID in its 16-byte binary form, as libsignal sends it. */
export const DISTRIBUTION_ID_LEN = 16;
/** Length of the private half of a sender signing key (a raw X25519 scalar). */
export const SENDER_SIGNING_PRIVATE_KEY_LEN = 32;
/** States kept per (sender, distribution id); the oldest is dropped first (libsignal consts.rs). */
export const MAX_SENDER_KEY_STATES = 5;
/** Seeds of skipped iterations kept per state; the oldest is dropped first (libsignal MAX_MESSAGE_KEYS). */
export const SENDER_KEY_MAX_MESSAGE_KEYS = 2000;
/** How far ahead of the chain a message may be (libsignal MAX_FORWARD_JUMPS). */
export const SENDER_KEY_MAX_FORWARD_JUMPS = 25_000;
/** Chain ids and iterations are uint32 on the wire. */

/** The seed of a message key the receiver skipped over and may still need. */
export interface SenderMessageSeed {
  readonly iteration: number;
  /** HMAC-SHA256(chainKey at `iteration`, 0x01); the cipher key is derived from it per format. */
  readonly seed: Uint8Array;
}

export interface SenderKeyState {
  readonly format: SenderKeyFormat;
  /** Picks the state a message belongs to; random 31-bit when we create it (libsignal's choice). */
  readonly chainId: number;
  /** The iteration of `chainKey`: the next message sent or expected. */
  readonly iteration: number;
  readonly chainKey: Uint8Array;
  /** 0x05 ‖ 32 bytes: the key sender-key messages of this chain are signed with. */
  readonly signingPublicKey: Uint8Array;
  /** Only in the sender's own state: the raw, clamped X25519 scalar that signs. */
  readonly signingPrivateKey: Uint8Array | undefined;
  /** Ascending by iteration, all below `iteration`, at most SENDER_KEY_MAX_MESSAGE_KEYS. */
  readonly skippedMessageSeeds: readonly SenderMessageSeed[];
}

export interface SenderKeyRecord {
  /** The distribution (group) this record is for; messages for another one are refused. */
  readonly distributionId: Uint8Array;
  /** Most recent first; at most MAX_SENDER_KEY_STATES; chain ids are unique. */
  readonly states: readonly SenderKeyState[];
}

const MESSAGE_KEY_SEED_LABEL = Uint8Array.of(0x01);
const CHAIN_KEY_SEED_LABEL = Uint8Array.of(0x02);

function expectFormat(value: unknown, label = 'format'): asserts value is SenderKeyFormat {
  if (value !== 'libsignal' && value !== 'qalqon') {
    argError(`"${label}" expected 'libsignal' or 'qalqon', got ${String(value)}`);
  }
}

/** The message seed of the chain key's iteration: HMAC-SHA256(chainKey, 0x01). */
export function senderMessageSeed(chainKey: Uint8Array): Uint8Array {
  expectBytes(chainKey, 'chainKey', SENDER_CHAIN_KEY_LEN);
  return hmacSha256(chainKey, MESSAGE_KEY_SEED_LABEL);
}

/** The chain key of the next iteration: HMAC-SHA256(chainKey, 0x02). */
export function nextSenderChainKey(chainKey: Uint8Array): Uint8Array {
  expectBytes(chainKey, 'chainKey', SENDER_CHAIN_KEY_LEN);
  return hmacSha256(chainKey, CHAIN_KEY_SEED_LABEL);
}

/** A record with no states yet, for a distribution id (16 bytes). */
export function emptySenderKeyRecord(distributionId: Uint8Array): SenderKeyRecord {
  expectBytes(distributionId, 'distributionId', DISTRIBUTION_ID_LEN);
  return { distributionId: distributionId.slice(), states: [] };
}

/**
 * Checks that `record` is a structurally valid record (the shape the types promise, the
 * bounds above, and the invariants deserialisation enforces). Every exported function
 * that takes a record calls it, because records also arrive from callers' own code.
 */
export function ensureValidSenderKeyRecord(
  record: unknown,
  label = 'record',
): asserts record is SenderKeyRecord {
  if (typeof record !== 'object' || record === null) argError(`"${label}" expected a SenderKeyRecord`);
  const r = record as Partial<SenderKeyRecord>;
  expectBytes(r.distributionId, `${label}.distributionId`, DISTRIBUTION_ID_LEN);
  if (!Array.isArray(r.states) || r.states.length > MAX_SENDER_KEY_STATES) {
    argError(`"${label}.states" expected an array of at most ${MAX_SENDER_KEY_STATES} states`);
  }
  const chainIds = new Set<number>();
  r.states.forEach((s: unknown, i: number) => {
    const l = `${label}.states[${i}]`;
    if (typeof s !== 'object' || s === null) argError(`"${l}" expected a SenderKeyState`);
    const st = s as Partial<SenderKeyState>;
    expectFormat(st.format, `${l}.format`);
    expectUint32(st.chainId, `${l}.chainId`);
    expectUint32(st.iteration, `${l}.iteration`);
    expectBytes(st.chainKey, `${l}.chainKey`, SENDER_CHAIN_KEY_LEN);
    expectBytes(st.signingPublicKey, `${l}.signingPublicKey`, SERIALIZED_CURVE_KEY_LEN);
    if (st.signingPrivateKey !== undefined) {
      expectBytes(st.signingPrivateKey, `${l}.signingPrivateKey`, SENDER_SIGNING_PRIVATE_KEY_LEN);
    }
    if (chainIds.has(st.chainId)) argError(`"${l}.chainId" is not unique in the record`);
    chainIds.add(st.chainId);
    const skipped = st.skippedMessageSeeds;
    if (!Array.isArray(skipped) || skipped.length > SENDER_KEY_MAX_MESSAGE_KEYS) {
      argError(
        `"${l}.skippedMessageSeeds" expected an array of at most ${SENDER_KEY_MAX_MESSAGE_KEYS} seeds`,
      );
    }
    const stateIteration = st.iteration;
    let previous = -1;
    skipped.forEach((k: unknown, j: number) => {
      const kl = `${l}.skippedMessageSeeds[${j}]`;
      if (typeof k !== 'object' || k === null) argError(`"${kl}" expected a SenderMessageSeed`);
      const key = k as Partial<SenderMessageSeed>;
      expectUint32(key.iteration, `${kl}.iteration`);
      expectBytes(key.seed, `${kl}.seed`, SENDER_CHAIN_KEY_LEN);
      if (key.iteration <= previous || key.iteration >= stateIteration) {
        argError(`"${kl}.iteration" must ascend and stay below the state's iteration`);
      }
      previous = key.iteration;
    });
  });
}

/** The state with `chainId`, or undefined. */
export function senderKeyStateForChainId(
  record: SenderKeyRecord,
  chainId: number,
): SenderKeyState | undefined {
  ensureValidSenderKeyRecord(record);
  expectUint32(chainId, 'chainId');
  return record.states.find((s) => s.chainId === chainId);
}

/**
 * Adds a state the way libsignal's SenderKeyRecord::add_sender_key_state does: a state with
 * the same chain id, signing key (and format) is kept as it is — its chain may be ahead of the
 * new message's, and rewinding it would re-open used keys — and moved to the front; any
 * other state with that chain id is dropped; the oldest states are dropped to keep at most
 * MAX_SENDER_KEY_STATES; the new (or kept) state goes first. Returns a new record.
 */
export function addSenderKeyState(record: SenderKeyRecord, state: SenderKeyState): SenderKeyRecord {
  ensureValidSenderKeyRecord(record);
  ensureValidSenderKeyRecord({ distributionId: record.distributionId, states: [state] }, 'state');
  const existing = record.states.find(
    (s) =>
      s.chainId === state.chainId &&
      s.format === state.format &&
      constantTimeEqual(s.signingPublicKey, state.signingPublicKey),
  );
  const rest = record.states.filter((s) => s.chainId !== state.chainId);
  const kept = rest.slice(0, MAX_SENDER_KEY_STATES - 1);
  return { distributionId: record.distributionId, states: [existing ?? state, ...kept] };
}

/** Replaces the state with `state.chainId` in place (same position); used after a chain step. */
export function replaceSenderKeyState(record: SenderKeyRecord, state: SenderKeyState): SenderKeyRecord {
  ensureValidSenderKeyRecord(record);
  ensureValidSenderKeyRecord({ distributionId: record.distributionId, states: [state] }, 'state');
  const index = record.states.findIndex((s) => s.chainId === state.chainId);
  if (index < 0) argError(`"state.chainId" is not in the record`);
  const states = record.states.slice();
  states[index] = state;
  return { distributionId: record.distributionId, states };
}

// ---------------------------------------------------------------------------------------
// Serialisation (Qalqon's own record format, version 1; see docs/protocol-formats.md).
// ---------------------------------------------------------------------------------------

/** First byte of a serialised record. A new layout gets a new number; old ones stay readable. */
export const SENDER_KEY_RECORD_VERSION = 0x01;
/** The record ends with the first 16 bytes of SHA-256 over everything before it. */
const RECORD_CHECKSUM_LEN = 16;
/** Format tags in the record: the version byte of the messages the state reads. */
const FORMAT_TAG: Readonly<Record<SenderKeyFormat, number>> = { libsignal: 0x33, qalqon: 0xa1 };

/** Serialises a record (byte layout in docs/protocol-formats.md). */
export function serializeSenderKeyRecord(record: SenderKeyRecord): Uint8Array {
  ensureValidSenderKeyRecord(record);
  let size = 1 + DISTRIBUTION_ID_LEN + 1 + RECORD_CHECKSUM_LEN;
  for (const s of record.states) {
    size += 1 + 4 + 4 + SENDER_CHAIN_KEY_LEN + SERIALIZED_CURVE_KEY_LEN + 1 + 2;
    if (s.signingPrivateKey) size += SENDER_SIGNING_PRIVATE_KEY_LEN;
    size += s.skippedMessageSeeds.length * (4 + SENDER_CHAIN_KEY_LEN);
  }
  const out = new Uint8Array(size);
  const view = new DataView(out.buffer);
  let pos = 0;
  const put = (bytes: Uint8Array) => {
    out.set(bytes, pos);
    pos += bytes.length;
  };
  out[pos++] = SENDER_KEY_RECORD_VERSION;
  put(record.distributionId);
  out[pos++] = record.states.length;
  for (const s of record.states) {
    out[pos++] = FORMAT_TAG[s.format];
    view.setUint32(pos, s.chainId);
    view.setUint32(pos + 4, s.iteration);
    pos += 8;
    put(s.chainKey);
    put(s.signingPublicKey);
    out[pos++] = s.signingPrivateKey ? 1 : 0;
    if (s.signingPrivateKey) put(s.signingPrivateKey);
    view.setUint16(pos, s.skippedMessageSeeds.length);
    pos += 2;
    for (const k of s.skippedMessageSeeds) {
      view.setUint32(pos, k.iteration);
      pos += 4;
      put(k.seed);
    }
  }
  put(sha256(out.subarray(0, pos)).subarray(0, RECORD_CHECKSUM_LEN));
  return out;
}

function corrupt(what: string): never {
  throw new ProtocolError('INVALID_STATE', `corrupt sender-key record: ${what}`);
}

/**
 * Parses a serialised record. Throws UNSUPPORTED_VERSION for an unknown record version and
 * INVALID_STATE for anything else that is wrong: a bad checksum, a truncated or extended
 * record, an out-of-range count, an unknown format tag, a malformed or mismatched signing
 * key, or skipped seeds out of order. The result holds copies, not views of `bytes`.
 */
export function deserializeSenderKeyRecord(bytes: Uint8Array): SenderKeyRecord {
  expectBytes(bytes, 'bytes');
  if (bytes.length < 1 + DISTRIBUTION_ID_LEN + 1 + RECORD_CHECKSUM_LEN) corrupt('too short');
  if (bytes[0] !== SENDER_KEY_RECORD_VERSION) {
    throw new ProtocolError('UNSUPPORTED_VERSION', `unknown sender-key record version ${bytes[0]}`);
  }
  const bodyEnd = bytes.length - RECORD_CHECKSUM_LEN;
  // The checksum guards against storage corruption only (anyone who can write the record
  // can recompute it); constant-time anyway since the record holds secrets.
  if (
    !constantTimeEqual(
      sha256(bytes.subarray(0, bodyEnd)).subarray(0, RECORD_CHECKSUM_LEN),
      bytes.subarray(bodyEnd),
    )
  ) {
    corrupt('checksum mismatch');
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bodyEnd);
  let pos = 1;
  const take = (n: number): Uint8Array => {
    if (n > bodyEnd - pos) corrupt('truncated');
    const v = bytes.slice(pos, pos + n);
    pos += n;
    return v;
  };
  const u8 = (): number => take(1)[0]!;
  const u16 = (): number => {
    if (2 > bodyEnd - pos) corrupt('truncated');
    const v = view.getUint16(pos);
    pos += 2;
    return v;
  };
  const u32 = (): number => {
    if (4 > bodyEnd - pos) corrupt('truncated');
    const v = view.getUint32(pos);
    pos += 4;
    return v;
  };
  const distributionId = take(DISTRIBUTION_ID_LEN);
  const count = u8();
  if (count > MAX_SENDER_KEY_STATES) corrupt('too many states');
  const states: SenderKeyState[] = [];
  const chainIds = new Set<number>();
  for (let i = 0; i < count; i++) {
    const tag = u8();
    const format = (Object.keys(FORMAT_TAG) as SenderKeyFormat[]).find((f) => FORMAT_TAG[f] === tag);
    if (format === undefined) corrupt('unknown format tag');
    const chainId = u32();
    if (chainIds.has(chainId)) corrupt('duplicate chain id');
    chainIds.add(chainId);
    const iteration = u32();
    const chainKey = take(SENDER_CHAIN_KEY_LEN);
    const signingPublicKey = take(SERIALIZED_CURVE_KEY_LEN);
    let rawPublic: Uint8Array;
    try {
      rawPublic = parseCurveKey(signingPublicKey, 'signingPublicKey');
    } catch {
      corrupt('malformed signing key');
    }
    const hasPrivate = u8();
    if (hasPrivate > 1) corrupt('bad private-key flag');
    let signingPrivateKey: Uint8Array | undefined;
    if (hasPrivate === 1) {
      signingPrivateKey = take(SENDER_SIGNING_PRIVATE_KEY_LEN);
      // We store private keys clamped (RFC 7748 section 5), so a flipped clamping bit is
      // detectable; and the public key must be the one the private key gives.
      const p = signingPrivateKey;
      if ((p[0]! & 7) !== 0 || (p[31]! & 0xc0) !== 0x40) corrupt('unclamped signing key');
      if (!constantTimeEqual(x25519PublicKey(p), rawPublic)) corrupt('signing keys do not match');
    }
    const skippedCount = u16();
    if (skippedCount > SENDER_KEY_MAX_MESSAGE_KEYS) corrupt('too many skipped keys');
    const skippedMessageSeeds: SenderMessageSeed[] = [];
    let previous = -1;
    for (let j = 0; j < skippedCount; j++) {
      const it = u32();
      if (it <= previous || it >= iteration) corrupt('skipped keys out of order');
      previous = it;
      skippedMessageSeeds.push({ iteration: it, seed: take(SENDER_CHAIN_KEY_LEN) });
    }
    states.push({
      format,
      chainId,
      iteration,
      chainKey,
      signingPublicKey,
      signingPrivateKey,
      skippedMessageSeeds,
    });
  }
  if (pos !== bodyEnd) corrupt('trailing bytes');
  return { distributionId, states };
}
