/**
 * 1:1 sessions, wire-compatible with libsignal 0.90.0 (`session.rs`, `session_cipher.rs`):
 * processing a prekey bundle (PQXDH initiator), encrypting, and decrypting SignalMessages
 * and PreKeySignalMessages (PQXDH responder + Double Ratchet).
 *
 * Every function is pure: it takes a `SessionRecord` and returns a new one; the input is
 * never changed. Decryption works on new objects and the new record is only built after
 * the MAC has verified and the ciphertext has decrypted, so a bad message (forged,
 * replayed, truncated, from too far ahead) throws a `ProtocolError` and leaves the caller
 * with exactly the record it had.
 *
 * Trust in the peer's identity key is the caller's decision: pass `isTrustedIdentity` to
 * refuse a key (UNTRUSTED_IDENTITY), and store the `remoteIdentityKey` each call returns.
 *
 * SPQR. libsignal 0.90.0 offers SPQR and accepts a peer without it. We never send field 5
 * and derive every message key with a zero HKDF salt. libsignal does the same with a peer
 * that has never sent it an SPQR message: until it hears from us its messages carry an
 * SPQR v1 header with epoch 1 and key index 0 (SPQR still negotiating, no key mixed in),
 * and after our first message reaches it, it downgrades to "no SPQR" and omits field 5
 * (see ratchet.ts). Any other field 5 would mean an SPQR key we cannot have, so such a
 * message fails like a forgery.
 */
import { aes256CbcDecrypt, aes256CbcEncrypt } from '@qalqon/crypto';
import { parseCurveKey } from './curve.js';
import { ProtocolError, type ProtocolErrorCode } from './errors.js';
import {
  checkCurveKeyPair,
  checkId,
  generateCurveKeyPair,
  type IdentityKeyPair,
  type KyberPreKeyRecord,
  type PreKeyRecord,
  type RandomBytes,
  type SignedPreKeyRecord,
} from './keys.js';
import {
  CiphertextMessageType,
  decodePreKeySignalMessage,
  decodeSignalMessage,
  encodePreKeySignalMessage,
  encodeSignalMessage,
  PQXDH_SESSION_VERSION,
  type SignalMessage,
  verifyMac,
} from './messages.js';
import { agree, pqxdhInitiate, pqxdhRespond } from './pqxdh.js';
import { type PreKeyBundle, verifyPreKeyBundle } from './prekey-bundle.js';
import { deriveMessageKeys, kdfRootKey, messageKeySeed, nextChainKey, parseSpqrHeader } from './ratchet.js';
import {
  archive,
  MAX_FORWARD_JUMPS,
  MAX_MESSAGE_KEYS,
  MAX_RECEIVER_CHAINS,
  MAX_UNACKNOWLEDGED_SESSION_AGE_MS,
  type ReceiverChain,
  SessionRecord,
  type SessionState,
} from './session-record.js';

export type TrustDirection = 'sending' | 'receiving';

/**
 * The caller's trust decision for a peer identity key (33 bytes). Return false to refuse;
 * the operation then throws UNTRUSTED_IDENTITY and changes nothing.
 */
export type IsTrustedIdentity = (identityKey: Uint8Array, direction: TrustDirection) => boolean;

/** Who we are: our identity key pair and our registration id (libsignal puts it in PreKeySignalMessages). */
export interface LocalIdentity {
  readonly identityKeyPair: IdentityKeyPair;
  readonly registrationId: number;
}

export interface CipherOptions {
  readonly isTrustedIdentity?: IsTrustedIdentity | undefined;
  /** Randomness for new key pairs; @qalqon/crypto's CSPRNG by default. */
  readonly rng?: RandomBytes | undefined;
  /** The current time in ms since the Unix epoch; `Date.now()` by default. */
  readonly now?: number | undefined;
}

export interface CiphertextMessage {
  /** 3 (PreKey) until the peer has answered, then 2 (Whisper): libsignal's envelope types. */
  readonly type: CiphertextMessageType;
  readonly body: Uint8Array;
}

/** Prekey lookups for the responder; each returns undefined when the key is gone (INVALID_PREKEY_ID). */
export interface PreKeyLookup {
  getSignedPreKey(id: number): SignedPreKeyRecord | undefined;
  getKyberPreKey(id: number): KyberPreKeyRecord | undefined;
  getPreKey(id: number): PreKeyRecord | undefined;
}

/** Which prekeys a PreKeySignalMessage used, so the caller can delete the one-time ones. */
export interface UsedPreKeys {
  readonly preKeyId: number | undefined;
  readonly signedPreKeyId: number;
  readonly kyberPreKeyId: number;
  /** The initiator's base key (33 bytes): libsignal's `mark_kyber_pre_key_used` takes it to detect reuse of a last-resort key. */
  readonly baseKey: Uint8Array;
}

export interface DecryptResult {
  readonly record: SessionRecord;
  readonly plaintext: Uint8Array;
  /** The peer's identity key (33 bytes), for the caller to store. */
  readonly remoteIdentityKey: Uint8Array;
}

export interface PreKeyDecryptResult extends DecryptResult {
  readonly remoteRegistrationId: number;
  /** Undefined when the message belonged to a session we had already set up (a repeated PreKeySignalMessage). */
  readonly usedPreKeys: UsedPreKeys | undefined;
}

const EMPTY_MAP: ReadonlyMap<number, Uint8Array> = new Map();

function fail(code: ProtocolErrorCode, message: string): never {
  throw new ProtocolError(code, message);
}

function checkLocal(local: LocalIdentity): void {
  if (typeof local !== 'object' || local === null) fail('INVALID_ARGUMENT', '"local" expected an object');
  checkCurveKeyPair(local.identityKeyPair, 'identityKeyPair');
  checkId(local.registrationId, 'registrationId');
}

function checkTrust(options: CipherOptions, identityKey: Uint8Array, direction: TrustDirection): void {
  const cb = options.isTrustedIdentity;
  if (cb !== undefined && cb(identityKey.slice(), direction) !== true) {
    fail('UNTRUSTED_IDENTITY', `the peer's identity key is not trusted for ${direction}`);
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The new record after `state` becomes current and the old current state is archived (libsignal `promote_state`). */
function promote(
  record: SessionRecord,
  state: SessionState,
  previous = record.previousStates,
): SessionRecord {
  const cur = record.currentState;
  return new SessionRecord(state, cur === undefined ? previous : archive(cur, previous));
}

/**
 * Starts a session from the peer's prekey bundle (PQXDH initiator, "Alice"). The bundle's
 * keys and signatures are checked before any secret is used. The new state becomes
 * current (any previous one is archived) and sends PreKeySignalMessages until the peer
 * answers.
 */
export function processPreKeyBundle(
  record: SessionRecord | undefined,
  bundle: PreKeyBundle,
  local: LocalIdentity,
  options: CipherOptions = {},
): { record: SessionRecord; remoteIdentityKey: Uint8Array } {
  checkLocal(local);
  const v = verifyPreKeyBundle(bundle);
  checkTrust(options, bundle.identityKey, 'sending');
  const rec = record ?? SessionRecord.empty();

  const base = generateCurveKeyPair(options.rng);
  const { secrets, kyberCiphertext } = pqxdhInitiate(
    {
      identityPrivateKey: local.identityKeyPair.privateKey,
      basePrivateKey: base.privateKey,
      theirIdentityKey: bundle.identityKey,
      theirSignedPreKey: bundle.signedPreKey,
      theirOneTimePreKey: bundle.preKey,
      theirKyberPreKey: bundle.kyberPreKey,
    },
    options.rng,
  );
  // Alice's first DH ratchet step against Bob's signed prekey, which doubles as his first
  // ratchet key (Double Ratchet section 3.3 RatchetInitAlice).
  const sending = generateCurveKeyPair(options.rng);
  const step = kdfRootKey(secrets.rootKey, agree(sending.privateKey, v.signedPreKeyRaw));
  const state: SessionState = {
    version: PQXDH_SESSION_VERSION,
    localIdentityKey: local.identityKeyPair.publicKey.slice(),
    remoteIdentityKey: bundle.identityKey.slice(),
    localRegistrationId: local.registrationId,
    remoteRegistrationId: bundle.registrationId,
    aliceBaseKey: base.publicKey,
    rootKey: step.rootKey,
    previousCounter: 0,
    senderChain: {
      ratchetKey: sending.publicKey,
      ratchetPrivateKey: sending.privateKey,
      chainKey: step.chainKey,
      index: 0,
    },
    receiverChains: [
      { ratchetKey: bundle.signedPreKey.slice(), chainKey: secrets.chainKey, index: 0, skipped: EMPTY_MAP },
    ],
    pendingPreKey: {
      preKeyId: bundle.preKeyId,
      signedPreKeyId: bundle.signedPreKeyId,
      kyberPreKeyId: bundle.kyberPreKeyId,
      kyberCiphertext,
      timestamp: options.now ?? Date.now(),
    },
  };
  return { record: promote(rec, state), remoteIdentityKey: bundle.identityKey.slice() };
}

/**
 * Encrypts `plaintext` with the current session: a PreKeySignalMessage (type 3) while the
 * peer has not answered, a SignalMessage (type 2) afterwards. NO_SESSION without a current
 * state or when an unanswered session is older than 30 days (libsignal's rule).
 */
export function encryptMessage(
  record: SessionRecord,
  plaintext: Uint8Array,
  options: CipherOptions = {},
): { record: SessionRecord; message: CiphertextMessage; remoteIdentityKey: Uint8Array } {
  if (!(record instanceof SessionRecord)) fail('INVALID_ARGUMENT', '"record" expected a SessionRecord');
  if (!(plaintext instanceof Uint8Array)) fail('INVALID_ARGUMENT', '"plaintext" expected Uint8Array');
  const s = record.currentState;
  if (s === undefined) fail('NO_SESSION', 'no current session to encrypt with');
  const pending = s.pendingPreKey;
  if (
    pending !== undefined &&
    pending.timestamp + MAX_UNACKNOWLEDGED_SESSION_AGE_MS < (options.now ?? Date.now())
  ) {
    fail('NO_SESSION', 'the session was never answered and is stale');
  }
  checkTrust(options, s.remoteIdentityKey, 'sending');
  const sc = s.senderChain;
  if (sc.index >= 0xffffffff) fail('INVALID_STATE', 'sending chain exhausted');

  const keys = deriveMessageKeys(messageKeySeed(sc.chainKey));
  const ciphertext = aes256CbcEncrypt(keys.cipherKey, keys.iv, plaintext);
  const signal = encodeSignalMessage(
    { ratchetKey: sc.ratchetKey, counter: sc.index, previousCounter: s.previousCounter, ciphertext },
    keys.macKey,
    s.localIdentityKey,
    s.remoteIdentityKey,
  );
  let message: CiphertextMessage;
  if (pending !== undefined) {
    const prekey = encodePreKeySignalMessage({
      registrationId: s.localRegistrationId,
      preKeyId: pending.preKeyId,
      signedPreKeyId: pending.signedPreKeyId,
      kyberPreKeyId: pending.kyberPreKeyId,
      kyberCiphertext: pending.kyberCiphertext,
      baseKey: s.aliceBaseKey,
      identityKey: s.localIdentityKey,
      message: signal,
    });
    message = { type: CiphertextMessageType.PreKey, body: prekey.serialized };
  } else {
    message = { type: CiphertextMessageType.Whisper, body: signal.serialized };
  }
  const next: SessionState = {
    ...s,
    senderChain: { ...sc, chainKey: nextChainKey(sc.chainKey), index: sc.index + 1 },
  };
  return {
    record: new SessionRecord(next, record.previousStates),
    message,
    remoteIdentityKey: s.remoteIdentityKey.slice(),
  };
}

/** Decrypts a SignalMessage (type 2) with the current or an archived session state. */
export function decryptSignalMessage(
  record: SessionRecord,
  body: Uint8Array,
  options: CipherOptions = {},
): DecryptResult {
  if (!(record instanceof SessionRecord)) fail('INVALID_ARGUMENT', '"record" expected a SessionRecord');
  const message = decodeSignalMessage(body);
  if (record.currentState === undefined && record.previousStates.length === 0) {
    fail('NO_SESSION', 'no session to decrypt with');
  }
  const out = decryptWithRecord(record, message, false, options.rng);
  const remoteIdentityKey = out.record.currentState!.remoteIdentityKey;
  // libsignal asks the identity store after decrypting (the key is only known for sure then).
  checkTrust(options, remoteIdentityKey, 'receiving');
  return { record: out.record, plaintext: out.plaintext, remoteIdentityKey: remoteIdentityKey.slice() };
}

/**
 * Decrypts a PreKeySignalMessage (type 3), setting up the session as PQXDH responder
 * ("Bob") unless a state for the same initiator base key exists already (the initiator
 * repeats PreKeySignalMessages until we answer). A missing signed, Kyber or one-time
 * prekey is INVALID_PREKEY_ID; `usedPreKeys` tells the caller which ones to delete.
 */
export function decryptPreKeySignalMessage(
  record: SessionRecord | undefined,
  body: Uint8Array,
  local: LocalIdentity,
  prekeys: PreKeyLookup,
  options: CipherOptions = {},
): PreKeyDecryptResult {
  checkLocal(local);
  const rec = record ?? SessionRecord.empty();
  if (!(rec instanceof SessionRecord)) fail('INVALID_ARGUMENT', '"record" expected a SessionRecord');
  const msg = decodePreKeySignalMessage(body);
  checkTrust(options, msg.identityKey, 'receiving');

  let working: SessionRecord;
  let usedPreKeys: UsedPreKeys | undefined;
  const match = findSessionByBaseKey(rec, msg.baseKey);
  if (match === 'current') {
    working = rec;
  } else if (match !== undefined) {
    const previous = rec.previousStates.filter((_, i) => i !== match);
    working = promote(rec, rec.previousState(match), previous);
  } else {
    const spk = prekeys.getSignedPreKey(msg.signedPreKeyId);
    if (spk === undefined) fail('INVALID_PREKEY_ID', `no signed prekey with id ${msg.signedPreKeyId}`);
    const kpk = prekeys.getKyberPreKey(msg.kyberPreKeyId);
    if (kpk === undefined) fail('INVALID_PREKEY_ID', `no Kyber prekey with id ${msg.kyberPreKeyId}`);
    let opk: PreKeyRecord | undefined;
    if (msg.preKeyId !== undefined) {
      opk = prekeys.getPreKey(msg.preKeyId);
      if (opk === undefined) fail('INVALID_PREKEY_ID', `no one-time prekey with id ${msg.preKeyId}`);
    }
    const secrets = pqxdhRespond({
      identityPrivateKey: local.identityKeyPair.privateKey,
      signedPreKeyPrivateKey: spk.keyPair.privateKey,
      oneTimePreKeyPrivateKey: opk?.keyPair.privateKey,
      kyberSecretKey: kpk.secretKey,
      theirIdentityKey: msg.identityKey,
      theirBaseKey: msg.baseKey,
      kyberCiphertext: msg.kyberCiphertext,
    });
    // Bob's signed prekey is his first ratchet key (Double Ratchet section 3.3 RatchetInitBob).
    const state: SessionState = {
      version: PQXDH_SESSION_VERSION,
      localIdentityKey: local.identityKeyPair.publicKey.slice(),
      remoteIdentityKey: msg.identityKey.slice(),
      localRegistrationId: local.registrationId,
      remoteRegistrationId: msg.registrationId,
      aliceBaseKey: msg.baseKey.slice(),
      rootKey: secrets.rootKey,
      previousCounter: 0,
      senderChain: {
        ratchetKey: spk.keyPair.publicKey.slice(),
        ratchetPrivateKey: spk.keyPair.privateKey.slice(),
        chainKey: secrets.chainKey,
        index: 0,
      },
      receiverChains: [],
      pendingPreKey: undefined,
    };
    working = promote(rec, state);
    usedPreKeys = {
      preKeyId: msg.preKeyId,
      signedPreKeyId: msg.signedPreKeyId,
      kyberPreKeyId: msg.kyberPreKeyId,
      baseKey: msg.baseKey.slice(),
    };
  }
  const out = decryptWithRecord(working, msg.message, true, options.rng);
  return {
    record: out.record,
    plaintext: out.plaintext,
    remoteIdentityKey: msg.identityKey.slice(),
    remoteRegistrationId: msg.registrationId,
    usedPreKeys,
  };
}

/** Dispatches on the envelope type (2 or 3). */
export function decryptMessage(
  record: SessionRecord | undefined,
  message: CiphertextMessage,
  local: LocalIdentity,
  prekeys: PreKeyLookup,
  options: CipherOptions = {},
): DecryptResult | PreKeyDecryptResult {
  if (message.type === CiphertextMessageType.PreKey) {
    return decryptPreKeySignalMessage(record, message.body, local, prekeys, options);
  }
  if (message.type === CiphertextMessageType.Whisper) {
    if (record === undefined) fail('NO_SESSION', 'no session to decrypt with');
    return decryptSignalMessage(record, message.body, options);
  }
  return fail('INVALID_ARGUMENT', `unknown message type ${String((message as { type?: unknown }).type)}`);
}

/** libsignal `promote_matching_session`: a state of this version set up from this base key. */
function findSessionByBaseKey(record: SessionRecord, baseKey: Uint8Array): 'current' | number | undefined {
  const cur = record.currentState;
  if (cur !== undefined && cur.version === PQXDH_SESSION_VERSION && equalBytes(cur.aliceBaseKey, baseKey)) {
    return 'current';
  }
  for (let i = 0; i < record.previousStates.length; i++) {
    const st = record.previousState(i);
    if (st.version === PQXDH_SESSION_VERSION && equalBytes(st.aliceBaseKey, baseKey)) return i;
  }
  return undefined;
}

/**
 * libsignal `decrypt_message_with_record`: the current state first, then (for a
 * SignalMessage only) each archived state, newest first; an archived state that decrypts
 * becomes current. A duplicate stops the search at once, as in libsignal.
 */
function decryptWithRecord(
  record: SessionRecord,
  message: SignalMessage,
  isPreKey: boolean,
  rng: RandomBytes | undefined,
): { record: SessionRecord; plaintext: Uint8Array } {
  const codes: ProtocolErrorCode[] = [];
  const current = record.currentState;
  if (current !== undefined) {
    try {
      const r = decryptWithState(current, message, rng);
      return { record: new SessionRecord(r.state, record.previousStates), plaintext: r.plaintext };
    } catch (err) {
      const code = failureCode(err);
      if (code === 'DUPLICATE_MESSAGE') throw err;
      codes.push(code);
      // A PreKeySignalMessage's session was just selected or created: no other state applies.
      if (isPreKey) throw finalError(codes, 1);
    }
  }
  for (let i = 0; i < record.previousStates.length; i++) {
    try {
      const r = decryptWithState(record.previousState(i), message, rng);
      const previous = record.previousStates.filter((_, j) => j !== i);
      return { record: promote(record, r.state, previous), plaintext: r.plaintext };
    } catch (err) {
      const code = failureCode(err);
      if (code === 'DUPLICATE_MESSAGE') throw err;
      codes.push(code);
    }
  }
  throw finalError(codes, codes.length);
}

function failureCode(err: unknown): ProtocolErrorCode {
  if (err instanceof ProtocolError) return err.code;
  // Anything else (a CryptoError from a primitive) is a failure of this state, never a leak.
  return 'DECRYPT_FAILED';
}

/** One opaque error for all states tried; a jump too far ahead keeps its own code, since it is not an authentication failure. */
function finalError(codes: readonly ProtocolErrorCode[], tried: number): ProtocolError {
  if (codes.includes('TOO_MANY_SKIPPED_KEYS')) {
    return new ProtocolError(
      'TOO_MANY_SKIPPED_KEYS',
      `the message is more than ${MAX_FORWARD_JUMPS} messages ahead`,
    );
  }
  return new ProtocolError(
    'DECRYPT_FAILED',
    `the message did not decrypt with any of ${tried} session state(s)`,
  );
}

/**
 * Decrypts with one session state and returns the advanced state. Nothing is written to
 * `state`: new chains, maps and objects are built, so on any failure the caller simply
 * drops them (libsignal decrypts on a clone for the same reason).
 */
function decryptWithState(
  state: SessionState,
  message: SignalMessage,
  rng: RandomBytes | undefined,
): { state: SessionState; plaintext: Uint8Array } {
  if (state.version !== PQXDH_SESSION_VERSION) fail('UNSUPPORTED_VERSION', 'session version mismatch');

  let receiverChains = state.receiverChains;
  let rootKey = state.rootKey;
  let senderChain = state.senderChain;
  let previousCounter = state.previousCounter;

  let ci = -1;
  for (let i = receiverChains.length - 1; i >= 0; i--) {
    if (equalBytes(receiverChains[i]!.ratchetKey, message.ratchetKey)) {
      ci = i;
      break;
    }
  }
  if (ci < 0) {
    // A new ratchet key from the peer: DH ratchet step (Double Ratchet section 3.5,
    // DHRatchet; libsignal `get_or_create_chain_key`).
    const theirs = parseCurveKey(message.ratchetKey, 'ratchetKey');
    const recv = kdfRootKey(rootKey, agree(senderChain.ratchetPrivateKey, theirs));
    const ours = generateCurveKeyPair(rng);
    const send = kdfRootKey(recv.rootKey, agree(ours.privateKey, theirs));
    rootKey = send.rootKey;
    const chain: ReceiverChain = {
      ratchetKey: message.ratchetKey.slice(),
      chainKey: recv.chainKey,
      index: 0,
      skipped: EMPTY_MAP,
    };
    receiverChains = [...receiverChains, chain];
    // libsignal drops the oldest chain beyond MAX_RECEIVER_CHAINS.
    if (receiverChains.length > MAX_RECEIVER_CHAINS) receiverChains = receiverChains.slice(1);
    ci = receiverChains.length - 1;
    // libsignal records "index - 1" (not the spec's PN = index); receivers ignore it.
    previousCounter = senderChain.index > 0 ? senderChain.index - 1 : 0;
    senderChain = {
      ratchetKey: ours.publicKey,
      ratchetPrivateKey: ours.privateKey,
      chainKey: send.chainKey,
      index: 0,
    };
  }

  const chain = receiverChains[ci]!;
  const counter = message.counter;
  let seed: Uint8Array;
  let updated: ReceiverChain;
  if (counter < chain.index) {
    // Double Ratchet section 3.5 TrySkippedMessageKeys; a counter below the chain index
    // without a stored key was delivered before (libsignal `DuplicatedMessage`).
    const stored = chain.skipped.get(counter);
    if (stored === undefined) fail('DUPLICATE_MESSAGE', `message ${counter} was already received`);
    seed = stored;
    const skipped = new Map(chain.skipped);
    skipped.delete(counter);
    updated = { ...chain, skipped };
  } else {
    if (counter - chain.index > MAX_FORWARD_JUMPS) {
      fail('TOO_MANY_SKIPPED_KEYS', `the message is more than ${MAX_FORWARD_JUMPS} messages ahead`);
    }
    if (counter >= 0xffffffff) fail('INVALID_MESSAGE', 'counter out of range');
    let ck = chain.chainKey;
    let skipped = chain.skipped;
    if (counter > chain.index) {
      const m = new Map(chain.skipped);
      // libsignal keeps the MAX_MESSAGE_KEYS most recent skipped keys; the seeds of older
      // indices would be dropped at once, so only their chain keys are computed.
      const firstKept = counter - MAX_MESSAGE_KEYS;
      for (let idx = chain.index; idx < counter; idx++) {
        if (idx >= firstKept) m.set(idx, messageKeySeed(ck));
        ck = nextChainKey(ck);
      }
      for (const k of m.keys()) {
        if (m.size <= MAX_MESSAGE_KEYS) break;
        m.delete(k);
      }
      skipped = m;
    }
    seed = messageKeySeed(ck);
    updated = { ratchetKey: chain.ratchetKey, chainKey: nextChainKey(ck), index: counter + 1, skipped };
  }

  if (message.pqRatchet.length > 0) checkSpqrWithoutKey(message.pqRatchet);

  const keys = deriveMessageKeys(seed);
  if (!verifyMac(message, keys.macKey, state.remoteIdentityKey, state.localIdentityKey)) {
    fail('DECRYPT_FAILED', 'message authentication failed');
  }
  let plaintext: Uint8Array;
  try {
    plaintext = aes256CbcDecrypt(keys.cipherKey, keys.iv, message.ciphertext);
  } catch {
    fail('DECRYPT_FAILED', 'message decryption failed');
  }

  const chains = receiverChains.slice();
  chains[ci] = updated;
  return {
    state: {
      ...state,
      rootKey,
      previousCounter,
      senderChain,
      receiverChains: chains,
      // The peer has answered: stop sending PreKeySignalMessages (libsignal
      // `clear_unacknowledged_pre_key_message`).
      pendingPreKey: undefined,
    },
    plaintext,
  };
}

/**
 * Field 5 from a peer that has not heard SPQR from us: an SPQR v1 header still
 * negotiating (epoch 1, key index 0), which mixes no key into the message keys (spqr
 * v1.5.1 `recv`). Anything else carries an SPQR key we cannot derive.
 */
function checkSpqrWithoutKey(pqRatchet: Uint8Array): void {
  let header: { epoch: number; index: number };
  try {
    header = parseSpqrHeader(pqRatchet);
  } catch {
    fail('DECRYPT_FAILED', 'malformed post-quantum ratchet message');
  }
  if (header.epoch !== 1 || header.index !== 0) {
    fail('DECRYPT_FAILED', 'the message is keyed with a post-quantum ratchet key');
  }
}
