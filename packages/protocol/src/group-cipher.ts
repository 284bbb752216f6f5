/**
 * Group messaging with sender keys: create and process distribution messages, encrypt and
 * decrypt. One implementation of the chain (sender-key-record.ts) serves both wire formats;
 * every entry point takes the format explicitly, and a state only ever speaks the format it
 * was created with, so a message in one format is never accepted as the other.
 *
 * The logic follows libsignal's rust/protocol/src/group_cipher.rs (v0.90.0; unchanged in
 * substance in v0.103.0), which is what makes the `libsignal` format interoperate:
 *
 *   decrypt: parse → find the record for the distribution id (NO_SESSION) → find the state
 *   for the chain id (NO_SESSION) → the state's format must be the message's
 *   (UNSUPPORTED_VERSION) → verify the signature (INVALID_SIGNATURE) → take the message key:
 *   an older iteration must be a stored skipped key, else DUPLICATE_MESSAGE; a newer one
 *   may be at most 25,000 ahead (TOO_MANY_SKIPPED_KEYS), the keys in between are stored,
 *   at most 2,000 → decrypt (DECRYPT_FAILED) → only now is the new state returned.
 *
 * Formats differ only in how the message key seed becomes a cipher key:
 *   libsignal: HKDF-SHA256(salt 0^32, seed, "WhisperGroup", 48) → IV 16 ‖ key 32; AES-256-CBC.
 *   qalqon:    HKDF-SHA256(salt 0^32, seed, QALQON_SENDER_KEY_INFO, 44) → key 32 ‖ nonce 12;
 *              AES-256-GCM with the 25-byte header (version, distribution id, chain id,
 *              iteration) as associated data.
 * Both sign everything before the signature with XEdDSA.
 *
 * The caller must store the record an encrypt returns before sending the message: encrypting
 * twice from the same record would use the same message key (and, for GCM, nonce) twice.
 */
import {
  aes256CbcDecrypt,
  aes256CbcEncrypt,
  aes256GcmDecrypt,
  aes256GcmEncrypt,
  hkdfSha256,
  randomBytes,
  XEDDSA_RANDOM_LEN,
  x25519PublicKey,
} from '@qalqon/crypto';
import { serializeCurveKey } from './curve.js';
import { ProtocolError } from './errors.js';
import {
  parseSenderKeyDistributionMessage,
  parseSenderKeyMessage,
  QALQON_SENDER_KEY_HEADER_LEN,
  QALQON_SENDER_KEY_MESSAGE_VERSION,
  qalqonSenderKeyHeader,
  serializeSenderKeyDistributionMessage,
  serializeSenderKeyMessage,
  verifySenderKeyMessageSignature,
} from './sender-key-messages.js';
import {
  addSenderKeyState,
  DISTRIBUTION_ID_LEN,
  emptySenderKeyRecord,
  ensureValidSenderKeyRecord,
  expectSenderKeyFormat,
  nextSenderChainKey,
  replaceSenderKeyState,
  SENDER_CHAIN_KEY_LEN,
  SENDER_KEY_MAX_FORWARD_JUMPS,
  SENDER_KEY_MAX_MESSAGE_KEYS,
  type SenderKeyFormat,
  type SenderKeyRecord,
  type SenderKeyState,
  type SenderMessageSeed,
  senderMessageSeed,
} from './sender-key-record.js';
import { argError, expectBytes, MAX_UINT32 } from './validate.js';

/** Randomness source: returns `length` cryptographically secure random bytes. */
export type SenderKeyRandom = (length: number) => Uint8Array;

/**
 * HKDF info of Qalqon's group message keys. Distinct from libsignal's "WhisperGroup" so the
 * same seed can never yield the same key in both formats (domain separation), and naming
 * the cipher so a future format derives different keys again.
 */
export const QALQON_SENDER_KEY_INFO = 'Qalqon_SenderKey_v1_AES-256-GCM';
const QALQON_INFO_BYTES = new TextEncoder().encode(QALQON_SENDER_KEY_INFO);
/** libsignal's info string (group_cipher.rs / sender_keys.rs, SenderMessageKey::new). */
const LIBSIGNAL_INFO_BYTES = new TextEncoder().encode('WhisperGroup');
/** An empty HKDF salt means 32 zero bytes (RFC 5869 section 2.2), as libsignal's `None`. */
const NO_SALT = new Uint8Array(0);

export interface SenderKeyDistributionResult {
  /** The sender's record: store it (it holds the signing private key). */
  readonly record: SenderKeyRecord;
  /** Send this to each member over their pairwise session. */
  readonly message: Uint8Array;
}

export interface GroupEncryptResult {
  /** Store this before sending `message`. */
  readonly record: SenderKeyRecord;
  readonly message: Uint8Array;
}

export interface GroupDecryptResult {
  readonly record: SenderKeyRecord;
  readonly plaintext: Uint8Array;
}

function expectRng(rng: unknown): void {
  if (rng !== undefined && typeof rng !== 'function')
    argError(`"rng" expected a function, got ${typeof rng}`);
}

function random(rng: SenderKeyRandom | undefined, length: number): Uint8Array {
  const out = (rng ?? randomBytes)(length);
  if (!(out instanceof Uint8Array) || out.length !== length) {
    argError(`"rng" must return a Uint8Array of length ${length}`);
  }
  return out;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** A fresh sender signing key pair: a clamped scalar (RFC 7748 section 5) and 0x05 ‖ its public key. */
function generateSigningKey(rng: SenderKeyRandom | undefined): {
  privateKey: Uint8Array;
  publicKey: Uint8Array;
} {
  const privateKey = random(rng, 32).slice();
  privateKey[0]! &= 248;
  privateKey[31]! &= 127;
  privateKey[31]! |= 64;
  return { privateKey, publicKey: serializeCurveKey(x25519PublicKey(privateKey)) };
}

/**
 * The sender's distribution message for `distributionId`, creating the sender's state
 * first if `record` is undefined or empty: a random 31-bit chain id (libsignal keeps chain
 * ids to 31 bits for libsignal-protocol-java), iteration 0, a random chain key and signing
 * key pair. An existing record is not rotated: its current state is distributed again at its
 * current iteration, as libsignal does. To rotate, start from an empty record.
 */
export function createSenderKeyDistributionMessage(
  format: SenderKeyFormat,
  distributionId: Uint8Array,
  record: SenderKeyRecord | undefined,
  rng?: SenderKeyRandom,
): SenderKeyDistributionResult {
  expectSenderKeyFormat(format);
  expectBytes(distributionId, 'distributionId', DISTRIBUTION_ID_LEN);
  expectRng(rng);
  let current = record === undefined ? emptySenderKeyRecord(distributionId) : record;
  ensureValidSenderKeyRecord(current);
  if (!sameBytes(current.distributionId, distributionId)) {
    argError('"record" belongs to a different distribution id');
  }
  if (current.states.length === 0) {
    const idBytes = random(rng, 4);
    // libsignal keeps chain ids to 31 bits (for libsignal-protocol-java); so do we.
    const chainId = new DataView(idBytes.buffer, idBytes.byteOffset, 4).getUint32(0) >>> 1;
    const chainKey = random(rng, SENDER_CHAIN_KEY_LEN).slice();
    const signing = generateSigningKey(rng);
    current = addSenderKeyState(current, {
      format,
      chainId,
      iteration: 0,
      chainKey,
      signingPublicKey: signing.publicKey,
      signingPrivateKey: signing.privateKey,
      skippedMessageSeeds: [],
    });
  }
  const state = current.states[0]!;
  if (state.format !== format) argError(`"record" holds a ${state.format}-format sender key, not ${format}`);
  const fields = {
    format,
    distributionId: current.distributionId,
    chainId: state.chainId,
    iteration: state.iteration,
    chainKey: state.chainKey,
    signingPublicKey: state.signingPublicKey,
  };
  let message: Uint8Array;
  if (format === 'libsignal') {
    message = serializeSenderKeyDistributionMessage(fields);
  } else {
    if (!state.signingPrivateKey) {
      throw new ProtocolError('NO_SESSION', 'no sender signing key to sign the distribution message with');
    }
    message = serializeSenderKeyDistributionMessage(
      fields,
      state.signingPrivateKey,
      random(rng, XEDDSA_RANDOM_LEN),
    );
  }
  return { record: current, message };
}

/**
 * Adds the sender state a distribution message announces to `record` (the record for this
 * sender and the message's distribution id; undefined if there is none yet) and returns the
 * new record. As in libsignal, a state with the same chain id and signing key is kept as it
 * is (a re-sent distribution message does not rewind the chain), one with the same chain id
 * and another key is replaced, and at most five states are kept, the oldest dropped.
 * Throws what parseSenderKeyDistributionMessage throws; `record` is never modified.
 */
export function processSenderKeyDistributionMessage(
  format: SenderKeyFormat,
  record: SenderKeyRecord | undefined,
  message: Uint8Array,
): SenderKeyRecord {
  expectSenderKeyFormat(format);
  expectBytes(message, 'message');
  if (record !== undefined) ensureValidSenderKeyRecord(record);
  const skdm = parseSenderKeyDistributionMessage(format, message);
  const base = record === undefined ? emptySenderKeyRecord(skdm.distributionId) : record;
  if (!sameBytes(base.distributionId, skdm.distributionId)) {
    argError('"record" belongs to a different distribution id than the message');
  }
  return addSenderKeyState(base, {
    format,
    chainId: skdm.chainId,
    iteration: skdm.iteration,
    chainKey: skdm.chainKey,
    signingPublicKey: skdm.signingPublicKey,
    signingPrivateKey: undefined,
    skippedMessageSeeds: [],
  });
}

interface CipherKeys {
  readonly key: Uint8Array;
  /** 16-byte CBC IV (libsignal) or 12-byte GCM nonce (qalqon). */
  readonly iv: Uint8Array;
}

function messageKeys(format: SenderKeyFormat, seed: Uint8Array): CipherKeys {
  if (format === 'libsignal') {
    const d = hkdfSha256(seed, NO_SALT, LIBSIGNAL_INFO_BYTES, 48);
    return { iv: d.subarray(0, 16), key: d.subarray(16, 48) };
  }
  const d = hkdfSha256(seed, NO_SALT, QALQON_INFO_BYTES, 44);
  return { key: d.subarray(0, 32), iv: d.subarray(32, 44) };
}

function chainExhausted(): never {
  // libsignal: SenderChainKey::next fails with InvalidState "Sender chain is too long".
  throw new ProtocolError('INVALID_STATE', 'sender chain is exhausted (iteration 2^32 - 1)');
}

/**
 * Encrypts `plaintext` with the sender's current state (the first of `record`) and returns
 * the signed message and the record with the chain advanced by one. Throws NO_SESSION when
 * the record has no state or no signing private key (it is not the sender's own record).
 */
export function groupEncrypt(
  format: SenderKeyFormat,
  record: SenderKeyRecord,
  plaintext: Uint8Array,
  rng?: SenderKeyRandom,
): GroupEncryptResult {
  expectSenderKeyFormat(format);
  ensureValidSenderKeyRecord(record);
  expectBytes(plaintext, 'plaintext');
  expectRng(rng);
  const state = record.states[0];
  if (!state) throw new ProtocolError('NO_SESSION', 'no sender key state to encrypt with');
  if (state.format !== format) argError(`"record" holds a ${state.format}-format sender key, not ${format}`);
  if (!state.signingPrivateKey)
    throw new ProtocolError('NO_SESSION', 'no sender signing key to encrypt with');
  if (state.iteration === MAX_UINT32) chainExhausted();
  const keys = messageKeys(format, senderMessageSeed(state.chainKey));
  let ciphertext: Uint8Array;
  if (format === 'libsignal') {
    ciphertext = aes256CbcEncrypt(keys.key, keys.iv, plaintext);
  } else {
    // The signature comes later and covers the header as well; binding the header as AAD
    // too means the GCM layer alone already refuses a message moved to another position.
    // qalqonSenderKeyHeader also writes the header on the wire, so AAD and header cannot drift.
    const header = qalqonSenderKeyHeader(
      QALQON_SENDER_KEY_MESSAGE_VERSION,
      record.distributionId,
      state.chainId,
      state.iteration,
    );
    ciphertext = aes256GcmEncrypt(keys.key, keys.iv, plaintext, header);
  }
  const message = serializeSenderKeyMessage(
    {
      format,
      distributionId: record.distributionId,
      chainId: state.chainId,
      iteration: state.iteration,
      ciphertext,
    },
    state.signingPrivateKey,
    rng ? random(rng, XEDDSA_RANDOM_LEN) : undefined,
  );
  const next: SenderKeyState = {
    ...state,
    iteration: state.iteration + 1,
    chainKey: nextSenderChainKey(state.chainKey),
  };
  return { record: replaceSenderKeyState(record, next), message };
}

/**
 * The message key seed for `iteration`, and the state after taking it (libsignal's
 * get_sender_key). Never touches `state`.
 */
function takeMessageSeed(
  state: SenderKeyState,
  iteration: number,
): { seed: Uint8Array; state: SenderKeyState } {
  if (state.iteration > iteration) {
    const index = state.skippedMessageSeeds.findIndex((k) => k.iteration === iteration);
    const found = state.skippedMessageSeeds[index];
    if (!found) {
      throw new ProtocolError(
        'DUPLICATE_MESSAGE',
        `sender-key message for iteration ${iteration} was already read`,
      );
    }
    const skippedMessageSeeds = state.skippedMessageSeeds.filter((_, i) => i !== index);
    return { seed: found.seed, state: { ...state, skippedMessageSeeds } };
  }
  const jump = iteration - state.iteration;
  if (jump > SENDER_KEY_MAX_FORWARD_JUMPS) {
    throw new ProtocolError(
      'TOO_MANY_SKIPPED_KEYS',
      `sender-key message is ${jump} iterations ahead; at most ${SENDER_KEY_MAX_FORWARD_JUMPS} are allowed`,
    );
  }
  if (iteration === MAX_UINT32) chainExhausted();
  // libsignal stores a key for every skipped iteration and then drops the oldest beyond
  // 2,000; the result is the same if we only derive the seeds that will survive.
  const keepFrom = iteration - SENDER_KEY_MAX_MESSAGE_KEYS;
  const added: SenderMessageSeed[] = [];
  let chainKey = state.chainKey;
  for (let i = state.iteration; i < iteration; i++) {
    if (i >= keepFrom) added.push({ iteration: i, seed: senderMessageSeed(chainKey) });
    chainKey = nextSenderChainKey(chainKey);
  }
  const all = added.length > 0 ? [...state.skippedMessageSeeds, ...added] : state.skippedMessageSeeds;
  const skippedMessageSeeds =
    all.length > SENDER_KEY_MAX_MESSAGE_KEYS ? all.slice(-SENDER_KEY_MAX_MESSAGE_KEYS) : all;
  return {
    seed: senderMessageSeed(chainKey),
    state: {
      ...state,
      iteration: iteration + 1,
      chainKey: nextSenderChainKey(chainKey),
      skippedMessageSeeds,
    },
  };
}

/**
 * Decrypts a sender-key message of `format` with `record`, the record held for the
 * message's sender and distribution id (undefined if there is none; parse the message
 * with parseSenderKeyMessage to learn the distribution id to look it up by). Returns the
 * plaintext and the new record; on any error `record` is untouched and nothing is returned.
 *
 * Codes: INVALID_MESSAGE / UNSUPPORTED_VERSION (not a message of this format), NO_SESSION
 * (no record for its distribution id, or no state for its chain id), UNSUPPORTED_VERSION
 * (the state speaks the other format), INVALID_SIGNATURE, DUPLICATE_MESSAGE,
 * TOO_MANY_SKIPPED_KEYS, DECRYPT_FAILED (CBC padding or GCM tag).
 */
export function groupDecrypt(
  format: SenderKeyFormat,
  record: SenderKeyRecord | undefined,
  message: Uint8Array,
): GroupDecryptResult {
  expectSenderKeyFormat(format);
  expectBytes(message, 'message');
  if (record !== undefined) ensureValidSenderKeyRecord(record);
  const skm = parseSenderKeyMessage(format, message);
  // libsignal looks the record up by the message's distribution id; a record for another
  // distribution is, from the message's point of view, no record at all.
  if (record === undefined || !sameBytes(record.distributionId, skm.distributionId)) {
    throw new ProtocolError('NO_SESSION', 'no sender key for the message distribution id');
  }
  const state = record.states.find((s) => s.chainId === skm.chainId);
  if (!state) throw new ProtocolError('NO_SESSION', 'no sender key state for the message chain id');
  if (state.format !== format) {
    throw new ProtocolError('UNSUPPORTED_VERSION', `the sender key state speaks the ${state.format} format`);
  }
  // The signature is checked before anything else touches the chain or the ciphertext.
  if (!verifySenderKeyMessageSignature(skm, state.signingPublicKey)) {
    throw new ProtocolError('INVALID_SIGNATURE', 'sender-key message signature does not verify');
  }
  const taken = takeMessageSeed(state, skm.iteration);
  const keys = messageKeys(format, taken.seed);
  let plaintext: Uint8Array;
  try {
    plaintext =
      format === 'libsignal'
        ? aes256CbcDecrypt(keys.key, keys.iv, skm.ciphertext)
        : aes256GcmDecrypt(
            keys.key,
            keys.iv,
            skm.ciphertext,
            skm.signedContent.subarray(0, QALQON_SENDER_KEY_HEADER_LEN),
          );
  } catch (cause) {
    throw new ProtocolError('DECRYPT_FAILED', 'sender-key message failed to decrypt', { cause });
  }
  return { record: replaceSenderKeyState(record, taken.state), plaintext };
}
