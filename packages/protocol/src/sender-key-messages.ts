/**
 * Codecs for the two sender-key wire formats. Byte layouts: docs/protocol-formats.md.
 *
 * libsignal's format (rust/protocol/src/protocol.rs and proto/wire.proto, v0.90.0 — the
 * same in v0.103.0):
 *   SenderKeyMessage             = 0x33 ‖ protobuf{1 distribution uuid, 2 chain id,
 *                                  3 iteration, 4 ciphertext} ‖ XEdDSA signature (64)
 *   SenderKeyDistributionMessage = 0x33 ‖ protobuf{1 distribution uuid, 2 chain id,
 *                                  3 iteration, 4 chain key, 5 signing key}
 * The signature covers every byte before it. Fields are written in field-number order, as
 * prost writes them, so our output is byte-identical to libsignal's apart from the
 * (randomised) signature. Parsing is stricter than libsignal's: the version byte must be
 * exactly 0x33 (libsignal looks only at its high nibble) and unknown, repeated or
 * non-minimal protobuf fields are refused, so every message has exactly one encoding.
 *
 * Qalqon's format uses fixed-width big-endian fields instead of protobuf — every field is
 * required and fixed in size, so a fixed layout is simpler to audit and has one encoding —
 * and its own version bytes (see QALQON_SENDER_KEY_MESSAGE_VERSION). Its distribution
 * message is signed too, which libsignal's is not; see parseSenderKeyDistributionMessage.
 */
import {
  GCM_TAG_LEN,
  XEDDSA_RANDOM_LEN,
  XEDDSA_SIGNATURE_LEN,
  xeddsaSign,
  xeddsaVerify,
} from '@qalqon/crypto';
import { parseCurveKey, SERIALIZED_CURVE_KEY_LEN } from './curve.js';
import { ProtocolError } from './errors.js';
import {
  decodeMessage,
  encodeMessage,
  requireBytes,
  requireUint,
  WIRE_LEN,
  WIRE_VARINT,
} from './protobuf.js';
import {
  DISTRIBUTION_ID_LEN,
  expectSenderKeyFormat,
  SENDER_CHAIN_KEY_LEN,
  SENDER_SIGNING_PRIVATE_KEY_LEN,
  type SenderKeyFormat,
} from './sender-key-record.js';
import { argError, expectBytes, expectUint32 } from './validate.js';

/**
 * libsignal's sender-key version byte: (message version 3 << 4) | current version 3
 * (SENDERKEY_MESSAGE_CURRENT_VERSION in protocol.rs). Used for both message kinds.
 */
export const LIBSIGNAL_SENDER_KEY_VERSION = 0x33;

/**
 * Version byte of Qalqon's sender-key message. libsignal reads the high nibble of its
 * version bytes as the protocol version (3 for sender keys, 3 or 4 for pairwise messages)
 * and refuses anything above what it knows; 0xA_ (10) is far outside the 0x3_/0x4_ range it
 * uses or is likely to use, so libsignal rejects our messages as an unrecognised version,
 * and we reject its. The low nibble tells the two Qalqon message kinds apart, so a
 * distribution message can never be parsed as a message or the other way round.
 */
export const QALQON_SENDER_KEY_MESSAGE_VERSION = 0xa1;
/** Version byte of Qalqon's sender-key distribution message (see QALQON_SENDER_KEY_MESSAGE_VERSION). */
export const QALQON_SENDER_KEY_DISTRIBUTION_VERSION = 0xa2;

/** Qalqon message header: version ‖ distribution id ‖ chain id (u32 BE) ‖ iteration (u32 BE). */
export const QALQON_SENDER_KEY_HEADER_LEN = 1 + DISTRIBUTION_ID_LEN + 4 + 4;
/** Smallest Qalqon message: header, an empty plaintext's tag, signature. */
export const QALQON_SENDER_KEY_MESSAGE_MIN_LEN =
  QALQON_SENDER_KEY_HEADER_LEN + GCM_TAG_LEN + XEDDSA_SIGNATURE_LEN;
/** Qalqon distribution message: header ‖ chain key ‖ signing key (33) ‖ signature. */
export const QALQON_SENDER_KEY_DISTRIBUTION_LEN =
  QALQON_SENDER_KEY_HEADER_LEN + SENDER_CHAIN_KEY_LEN + SERIALIZED_CURVE_KEY_LEN + XEDDSA_SIGNATURE_LEN;

/** The fields of a sender-key message, before signing. */
export interface SenderKeyMessageFields {
  readonly format: SenderKeyFormat;
  readonly distributionId: Uint8Array;
  readonly chainId: number;
  readonly iteration: number;
  /** libsignal: AES-256-CBC ciphertext. Qalqon: AES-256-GCM ciphertext ‖ 16-byte tag. */
  readonly ciphertext: Uint8Array;
}

/** A parsed sender-key message. All byte fields are views into the parsed input. */
export interface SenderKeyMessage extends SenderKeyMessageFields {
  /** Every byte before the signature: what the signature covers. */
  readonly signedContent: Uint8Array;
  readonly signature: Uint8Array;
}

/** The fields of a sender-key distribution message. */
export interface SenderKeyDistributionMessage {
  readonly format: SenderKeyFormat;
  readonly distributionId: Uint8Array;
  readonly chainId: number;
  readonly iteration: number;
  readonly chainKey: Uint8Array;
  /** 0x05 ‖ 32 bytes. */
  readonly signingPublicKey: Uint8Array;
}

const SKM_SPEC = { 1: WIRE_LEN, 2: WIRE_VARINT, 3: WIRE_VARINT, 4: WIRE_LEN } as const;
const SKDM_SPEC = { 1: WIRE_LEN, 2: WIRE_VARINT, 3: WIRE_VARINT, 4: WIRE_LEN, 5: WIRE_LEN } as const;

function invalid(what: string): never {
  throw new ProtocolError('INVALID_MESSAGE', `malformed sender-key message: ${what}`);
}

function unsupported(kind: string, version: number | undefined): never {
  throw new ProtocolError('UNSUPPORTED_VERSION', `${kind} has unsupported version byte ${version}`);
}

/** version ‖ distribution id ‖ chain id ‖ iteration: the Qalqon header, also the GCM AAD. */
export function qalqonSenderKeyHeader(
  version: number,
  distributionId: Uint8Array,
  chainId: number,
  iteration: number,
): Uint8Array {
  if (version !== QALQON_SENDER_KEY_MESSAGE_VERSION && version !== QALQON_SENDER_KEY_DISTRIBUTION_VERSION) {
    argError(`"version" expected a Qalqon sender-key version byte, got ${String(version)}`);
  }
  expectBytes(distributionId, 'distributionId', DISTRIBUTION_ID_LEN);
  expectUint32(chainId, 'chainId');
  expectUint32(iteration, 'iteration');
  const out = new Uint8Array(QALQON_SENDER_KEY_HEADER_LEN);
  out[0] = version;
  out.set(distributionId, 1);
  const view = new DataView(out.buffer);
  view.setUint32(1 + DISTRIBUTION_ID_LEN, chainId);
  view.setUint32(1 + DISTRIBUTION_ID_LEN + 4, iteration);
  return out;
}

function readQalqonHeader(bytes: Uint8Array): {
  distributionId: Uint8Array;
  chainId: number;
  iteration: number;
} {
  const view = new DataView(bytes.buffer, bytes.byteOffset, QALQON_SENDER_KEY_HEADER_LEN);
  return {
    distributionId: bytes.subarray(1, 1 + DISTRIBUTION_ID_LEN),
    chainId: view.getUint32(1 + DISTRIBUTION_ID_LEN),
    iteration: view.getUint32(1 + DISTRIBUTION_ID_LEN + 4),
  };
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/**
 * Builds and signs a sender-key message: the format's encoding of `fields`, then the
 * XEdDSA signature of `signingPrivateKey` (raw 32-byte scalar) over those bytes.
 * `random` (64 bytes) is the XEdDSA nonce randomness; it defaults to fresh randomness.
 */
export function serializeSenderKeyMessage(
  fields: SenderKeyMessageFields,
  signingPrivateKey: Uint8Array,
  random?: Uint8Array,
): Uint8Array {
  if (typeof fields !== 'object' || fields === null) argError('"fields" expected SenderKeyMessageFields');
  expectSenderKeyFormat(fields.format);
  expectBytes(fields.distributionId, 'fields.distributionId', DISTRIBUTION_ID_LEN);
  expectUint32(fields.chainId, 'fields.chainId');
  expectUint32(fields.iteration, 'fields.iteration');
  expectBytes(fields.ciphertext, 'fields.ciphertext');
  expectBytes(signingPrivateKey, 'signingPrivateKey', SENDER_SIGNING_PRIVATE_KEY_LEN);
  if (random !== undefined) expectBytes(random, 'random', XEDDSA_RANDOM_LEN);
  let content: Uint8Array;
  if (fields.format === 'libsignal') {
    const body = encodeMessage([
      [1, fields.distributionId],
      [2, fields.chainId],
      [3, fields.iteration],
      [4, fields.ciphertext],
    ]);
    content = concat(Uint8Array.of(LIBSIGNAL_SENDER_KEY_VERSION), body);
  } else {
    if (fields.ciphertext.length < GCM_TAG_LEN) argError('"fields.ciphertext" is shorter than a GCM tag');
    const header = qalqonSenderKeyHeader(
      QALQON_SENDER_KEY_MESSAGE_VERSION,
      fields.distributionId,
      fields.chainId,
      fields.iteration,
    );
    content = concat(header, fields.ciphertext);
  }
  return concat(content, xeddsaSign(signingPrivateKey, content, random));
}

/**
 * Parses a sender-key message of `format`. Checks structure only: the signature is
 * verified by the caller against the state's signing key (group-cipher.ts), because only
 * the state says which key that is. Throws INVALID_MESSAGE (truncated, extended, bad field)
 * or UNSUPPORTED_VERSION (any other version byte, including the other format's).
 */
export function parseSenderKeyMessage(format: SenderKeyFormat, bytes: Uint8Array): SenderKeyMessage {
  expectSenderKeyFormat(format);
  expectBytes(bytes, 'bytes');
  if (format === 'libsignal') {
    // libsignal: CiphertextMessageTooShort below 1 + 64 bytes, then the version checks.
    if (bytes.length < 1 + XEDDSA_SIGNATURE_LEN) invalid(`too short (${bytes.length} bytes)`);
    if (bytes[0] !== LIBSIGNAL_SENDER_KEY_VERSION) unsupported('sender-key message', bytes[0]);
    const bodyEnd = bytes.length - XEDDSA_SIGNATURE_LEN;
    const fields = decodeMessage(bytes.subarray(1, bodyEnd), SKM_SPEC);
    return {
      format,
      distributionId: requireBytes(fields, 1, DISTRIBUTION_ID_LEN),
      chainId: requireUint(fields, 2),
      iteration: requireUint(fields, 3),
      ciphertext: requireBytes(fields, 4),
      signedContent: bytes.subarray(0, bodyEnd),
      signature: bytes.subarray(bodyEnd),
    };
  }
  if (bytes.length < 1) invalid('empty');
  if (bytes[0] !== QALQON_SENDER_KEY_MESSAGE_VERSION) unsupported('sender-key message', bytes[0]);
  if (bytes.length < QALQON_SENDER_KEY_MESSAGE_MIN_LEN) invalid(`too short (${bytes.length} bytes)`);
  const bodyEnd = bytes.length - XEDDSA_SIGNATURE_LEN;
  return {
    format,
    ...readQalqonHeader(bytes),
    ciphertext: bytes.subarray(QALQON_SENDER_KEY_HEADER_LEN, bodyEnd),
    signedContent: bytes.subarray(0, bodyEnd),
    signature: bytes.subarray(bodyEnd),
  };
}

/** Whether the message's signature verifies under `signingPublicKey` (0x05 ‖ 32). */
export function verifySenderKeyMessageSignature(
  message: SenderKeyMessage,
  signingPublicKey: Uint8Array,
): boolean {
  if (typeof message !== 'object' || message === null)
    argError('"message" expected a parsed SenderKeyMessage');
  expectBytes(message.signedContent, 'message.signedContent');
  expectBytes(message.signature, 'message.signature', XEDDSA_SIGNATURE_LEN);
  return xeddsaVerify(
    parseCurveKey(signingPublicKey, 'signingPublicKey'),
    message.signedContent,
    message.signature,
  );
}

/**
 * Builds a distribution message. For the Qalqon format `signingPrivateKey` is required: the
 * message is signed with it (see parseSenderKeyDistributionMessage); `random` (64 bytes) is
 * the XEdDSA randomness. For the libsignal format both are ignored and must be absent.
 */
export function serializeSenderKeyDistributionMessage(
  message: SenderKeyDistributionMessage,
  signingPrivateKey?: Uint8Array,
  random?: Uint8Array,
): Uint8Array {
  if (typeof message !== 'object' || message === null)
    argError('"message" expected SenderKeyDistributionMessage');
  expectSenderKeyFormat(message.format);
  expectBytes(message.distributionId, 'message.distributionId', DISTRIBUTION_ID_LEN);
  expectUint32(message.chainId, 'message.chainId');
  expectUint32(message.iteration, 'message.iteration');
  expectBytes(message.chainKey, 'message.chainKey', SENDER_CHAIN_KEY_LEN);
  parseCurveKey(message.signingPublicKey, 'message.signingPublicKey');
  if (message.format === 'libsignal') {
    if (signingPrivateKey !== undefined || random !== undefined) {
      argError('"signingPrivateKey" must be absent: libsignal distribution messages are not signed');
    }
    const body = encodeMessage([
      [1, message.distributionId],
      [2, message.chainId],
      [3, message.iteration],
      [4, message.chainKey],
      [5, message.signingPublicKey],
    ]);
    return concat(Uint8Array.of(LIBSIGNAL_SENDER_KEY_VERSION), body);
  }
  expectBytes(signingPrivateKey, 'signingPrivateKey', SENDER_SIGNING_PRIVATE_KEY_LEN);
  if (random !== undefined) expectBytes(random, 'random', XEDDSA_RANDOM_LEN);
  const header = qalqonSenderKeyHeader(
    QALQON_SENDER_KEY_DISTRIBUTION_VERSION,
    message.distributionId,
    message.chainId,
    message.iteration,
  );
  const content = new Uint8Array(QALQON_SENDER_KEY_DISTRIBUTION_LEN - XEDDSA_SIGNATURE_LEN);
  content.set(header);
  content.set(message.chainKey, QALQON_SENDER_KEY_HEADER_LEN);
  content.set(message.signingPublicKey, QALQON_SENDER_KEY_HEADER_LEN + SENDER_CHAIN_KEY_LEN);
  const signature = xeddsaSign(signingPrivateKey, content, random);
  // A signature that does not verify under the key it announces means the private key is
  // not the public key's; better to refuse here than to send a message nobody can read.
  if (!xeddsaVerify(parseCurveKey(message.signingPublicKey), content, signature)) {
    argError('"signingPrivateKey" does not match "message.signingPublicKey"');
  }
  return concat(content, signature);
}

/**
 * Parses a distribution message of `format`. Throws INVALID_MESSAGE, UNSUPPORTED_VERSION,
 * INVALID_KEY (signing key not 0x05 ‖ 32 bytes) or, for the Qalqon format,
 * INVALID_SIGNATURE. Returned byte fields are copies.
 *
 * A Qalqon distribution message is signed by the signing key it announces. That does not
 * authenticate the sender — anyone can sign with a key of their own; the pairwise session
 * that carries the message does that — but it makes the message tamper-evident on its
 * own: a corrupted chain key or signing key is refused here instead of producing a state
 * that silently fails on every later message. libsignal's distribution message has no
 * such check (any 32 bytes are a chain key), so for that format a corrupted field is only
 * caught where it is structurally invalid.
 */
export function parseSenderKeyDistributionMessage(
  format: SenderKeyFormat,
  bytes: Uint8Array,
): SenderKeyDistributionMessage {
  expectSenderKeyFormat(format);
  expectBytes(bytes, 'bytes');
  if (format === 'libsignal') {
    // libsignal: at least a version byte, an X25519 key and a chain key.
    if (bytes.length < 1 + 32 + 32) invalid(`too short (${bytes.length} bytes)`);
    if (bytes[0] !== LIBSIGNAL_SENDER_KEY_VERSION) unsupported('sender-key distribution message', bytes[0]);
    const fields = decodeMessage(bytes.subarray(1), SKDM_SPEC);
    const distributionId = requireBytes(fields, 1, DISTRIBUTION_ID_LEN).slice();
    const chainId = requireUint(fields, 2);
    const iteration = requireUint(fields, 3);
    const chainKey = requireBytes(fields, 4, SENDER_CHAIN_KEY_LEN).slice();
    const signingPublicKey = requireBytes(fields, 5, SERIALIZED_CURVE_KEY_LEN).slice();
    parseCurveKey(signingPublicKey, 'signingKey');
    return { format, distributionId, chainId, iteration, chainKey, signingPublicKey };
  }
  if (bytes.length < 1) invalid('empty');
  if (bytes[0] !== QALQON_SENDER_KEY_DISTRIBUTION_VERSION)
    unsupported('sender-key distribution message', bytes[0]);
  if (bytes.length !== QALQON_SENDER_KEY_DISTRIBUTION_LEN) invalid(`wrong length (${bytes.length} bytes)`);
  const contentEnd = QALQON_SENDER_KEY_DISTRIBUTION_LEN - XEDDSA_SIGNATURE_LEN;
  const keyStart = QALQON_SENDER_KEY_HEADER_LEN + SENDER_CHAIN_KEY_LEN;
  const signingPublicKey = bytes.slice(keyStart, contentEnd);
  const rawKey = parseCurveKey(signingPublicKey, 'signingKey');
  if (!xeddsaVerify(rawKey, bytes.subarray(0, contentEnd), bytes.subarray(contentEnd))) {
    throw new ProtocolError('INVALID_SIGNATURE', 'sender-key distribution message signature does not verify');
  }
  const header = readQalqonHeader(bytes);
  return {
    format,
    distributionId: header.distributionId.slice(),
    chainId: header.chainId,
    iteration: header.iteration,
    chainKey: bytes.slice(QALQON_SENDER_KEY_HEADER_LEN, keyStart),
    signingPublicKey,
  };
}
