/**
 * The two 1:1 wire messages of libsignal 0.90.0 (`protocol.rs`, `proto/wire.proto`):
 *
 *   SignalMessage       = version ‖ protobuf{1 ratchet_key, 2 counter, 3 previous_counter,
 *                         4 ciphertext, 5 pq_ratchet} ‖ mac[0..8]
 *   PreKeySignalMessage = version ‖ protobuf{5 registration_id, 1 pre_key_id,
 *                         6 signed_pre_key_id, 7 kyber_pre_key_id, 8 kyber_ciphertext,
 *                         2 base_key, 3 identity_key, 4 message}
 *
 * with version = (session version << 4) | current version = 0x44 for PQXDH sessions, and
 * MAC = HMAC-SHA256(mac key, sender identity (33) ‖ receiver identity (33) ‖ version ‖ protobuf).
 * libsignal 0.90.0's SignalMessage has no `addresses` field (6); it appears in later
 * versions. We never send field 5 (see session-cipher.ts) but accept it, since libsignal
 * puts its SPQR message there until it hears from us.
 *
 * Decoding is stricter than libsignal's: exactly one version byte value, no unknown,
 * duplicate or non-minimal fields (protobuf.ts), exact key lengths (libsignal tolerates
 * bytes after a 33-byte key), and a ciphertext that can be AES-CBC output. Nothing here
 * needs a secret; the MAC is checked by the session cipher once it has derived the key.
 */
import { constantTimeEqual, hmacSha256Parts } from '@qalqon/crypto';
import { parseCurveKey } from './curve.js';
import { ProtocolError } from './errors.js';
import { KYBER1024_TYPE, SERIALIZED_KYBER_CIPHERTEXT_LEN } from './keys.js';
import {
  decodeMessage,
  encodeMessage,
  type FieldSpec,
  optionalBytes,
  optionalUint,
  requireBytes,
  requireUint,
  WIRE_LEN,
  WIRE_VARINT,
} from './protobuf.js';

/** Session version 4: PQXDH. (3 was X3DH, which libsignal 0.90.0 no longer accepts.) */
export const PQXDH_SESSION_VERSION = 4;
/** The low nibble libsignal writes into every message's version byte. */
export const CIPHERTEXT_MESSAGE_CURRENT_VERSION = 4;
export const MESSAGE_VERSION_BYTE = (PQXDH_SESSION_VERSION << 4) | CIPHERTEXT_MESSAGE_CURRENT_VERSION;
export const MAC_LEN = 8;
const AES_BLOCK = 16;

/** libsignal's `CiphertextMessageType` numbers, which Signal's envelopes carry. */
export const CiphertextMessageType = { Whisper: 2, PreKey: 3 } as const;
export type CiphertextMessageType = (typeof CiphertextMessageType)[keyof typeof CiphertextMessageType];

export interface SignalMessage {
  /** The sender's current ratchet public key, 33 bytes. */
  readonly ratchetKey: Uint8Array;
  readonly counter: number;
  readonly previousCounter: number;
  readonly ciphertext: Uint8Array;
  /** The SPQR message (field 5); empty when absent. */
  readonly pqRatchet: Uint8Array;
  /** The whole message as received or sent. */
  readonly serialized: Uint8Array;
}

export interface PreKeySignalMessage {
  readonly registrationId: number;
  readonly preKeyId: number | undefined;
  readonly signedPreKeyId: number;
  readonly kyberPreKeyId: number;
  /** `0x08 ‖ 1568 bytes`. */
  readonly kyberCiphertext: Uint8Array;
  readonly baseKey: Uint8Array;
  readonly identityKey: Uint8Array;
  readonly message: SignalMessage;
  readonly serialized: Uint8Array;
}

const SIGNAL_SPEC: FieldSpec = { 1: WIRE_LEN, 2: WIRE_VARINT, 3: WIRE_VARINT, 4: WIRE_LEN, 5: WIRE_LEN };
const PREKEY_SPEC: FieldSpec = {
  1: WIRE_VARINT,
  2: WIRE_LEN,
  3: WIRE_LEN,
  4: WIRE_LEN,
  5: WIRE_VARINT,
  6: WIRE_VARINT,
  7: WIRE_VARINT,
  8: WIRE_LEN,
};

function checkVersionByte(b: number | undefined): void {
  if (b === undefined) throw new ProtocolError('INVALID_MESSAGE', 'empty message');
  const version = b >> 4;
  if (version !== PQXDH_SESSION_VERSION) {
    throw new ProtocolError('UNSUPPORTED_VERSION', `message version ${version} is not supported`);
  }
  // libsignal ignores the low nibble; it is MACed in a SignalMessage but not in a
  // PreKeySignalMessage, so only the one value libsignal writes is accepted.
  if (b !== MESSAGE_VERSION_BYTE) throw new ProtocolError('INVALID_MESSAGE', 'bad version byte');
}

/** The MAC over `version ‖ protobuf` (HMAC-SHA256 truncated to 8 bytes). */
export function computeMac(
  macKey: Uint8Array,
  senderIdentityKey: Uint8Array,
  receiverIdentityKey: Uint8Array,
  content: Uint8Array,
): Uint8Array {
  return hmacSha256Parts(macKey, [senderIdentityKey, receiverIdentityKey, content]).subarray(0, MAC_LEN);
}

/** Constant-time check of a SignalMessage's MAC. */
export function verifyMac(
  message: SignalMessage,
  macKey: Uint8Array,
  senderIdentityKey: Uint8Array,
  receiverIdentityKey: Uint8Array,
): boolean {
  const s = message.serialized;
  const ours = computeMac(macKey, senderIdentityKey, receiverIdentityKey, s.subarray(0, s.length - MAC_LEN));
  return constantTimeEqual(ours, s.subarray(s.length - MAC_LEN));
}

function checkU32(v: number, label: string): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) {
    throw new ProtocolError('INVALID_ARGUMENT', `"${label}" expected an integer in [0, 2^32-1]`);
  }
}

/** Builds and MACs a SignalMessage. `pqRatchet` is omitted from the wire when empty, as libsignal does. */
export function encodeSignalMessage(
  fields: {
    ratchetKey: Uint8Array;
    counter: number;
    previousCounter: number;
    ciphertext: Uint8Array;
    pqRatchet?: Uint8Array | undefined;
  },
  macKey: Uint8Array,
  senderIdentityKey: Uint8Array,
  receiverIdentityKey: Uint8Array,
): SignalMessage {
  parseCurveKey(fields.ratchetKey, 'ratchetKey');
  checkU32(fields.counter, 'counter');
  checkU32(fields.previousCounter, 'previousCounter');
  const pq = fields.pqRatchet !== undefined && fields.pqRatchet.length > 0 ? fields.pqRatchet : undefined;
  const proto = encodeMessage([
    [1, fields.ratchetKey],
    [2, fields.counter],
    [3, fields.previousCounter],
    [4, fields.ciphertext],
    [5, pq],
  ]);
  const serialized = new Uint8Array(1 + proto.length + MAC_LEN);
  serialized[0] = MESSAGE_VERSION_BYTE;
  serialized.set(proto, 1);
  const mac = computeMac(
    macKey,
    senderIdentityKey,
    receiverIdentityKey,
    serialized.subarray(0, 1 + proto.length),
  );
  serialized.set(mac, 1 + proto.length);
  return {
    ratchetKey: fields.ratchetKey,
    counter: fields.counter,
    previousCounter: fields.previousCounter,
    ciphertext: fields.ciphertext,
    pqRatchet: pq ?? new Uint8Array(0),
    serialized,
  };
}

/**
 * Parses a SignalMessage without checking its MAC. Views point into `bytes`; the caller
 * passes a private copy if the buffer may change.
 */
export function decodeSignalMessage(bytes: Uint8Array): SignalMessage {
  if (!(bytes instanceof Uint8Array))
    throw new ProtocolError('INVALID_ARGUMENT', '"message" expected Uint8Array');
  checkVersionByte(bytes[0]);
  if (bytes.length < 1 + MAC_LEN) throw new ProtocolError('INVALID_MESSAGE', 'message too short');
  const f = decodeMessage(bytes.subarray(1, bytes.length - MAC_LEN), SIGNAL_SPEC);
  const ratchetKey = requireBytes(f, 1);
  parseCurveKey(ratchetKey, 'ratchetKey');
  const counter = requireUint(f, 2);
  const previousCounter = optionalUint(f, 3) ?? 0;
  const ciphertext = requireBytes(f, 4);
  // AES-256-CBC with PKCS#7 always yields a non-empty multiple of the block size.
  if (ciphertext.length === 0 || ciphertext.length % AES_BLOCK !== 0) {
    throw new ProtocolError('INVALID_MESSAGE', 'ciphertext length is not a multiple of 16');
  }
  const pqRatchet = optionalBytes(f, 5) ?? new Uint8Array(0);
  return { ratchetKey, counter, previousCounter, ciphertext, pqRatchet, serialized: bytes };
}

export function encodePreKeySignalMessage(fields: {
  registrationId: number;
  preKeyId: number | undefined;
  signedPreKeyId: number;
  kyberPreKeyId: number;
  kyberCiphertext: Uint8Array;
  baseKey: Uint8Array;
  identityKey: Uint8Array;
  message: SignalMessage;
}): PreKeySignalMessage {
  checkU32(fields.registrationId, 'registrationId');
  if (fields.preKeyId !== undefined) checkU32(fields.preKeyId, 'preKeyId');
  checkU32(fields.signedPreKeyId, 'signedPreKeyId');
  checkU32(fields.kyberPreKeyId, 'kyberPreKeyId');
  parseCurveKey(fields.baseKey, 'baseKey');
  parseCurveKey(fields.identityKey, 'identityKey');
  // Field-number order, as prost writes it.
  const proto = encodeMessage([
    [1, fields.preKeyId],
    [2, fields.baseKey],
    [3, fields.identityKey],
    [4, fields.message.serialized],
    [5, fields.registrationId],
    [6, fields.signedPreKeyId],
    [7, fields.kyberPreKeyId],
    [8, fields.kyberCiphertext],
  ]);
  const serialized = new Uint8Array(1 + proto.length);
  serialized[0] = MESSAGE_VERSION_BYTE;
  serialized.set(proto, 1);
  return { ...fields, serialized };
}

export function decodePreKeySignalMessage(bytes: Uint8Array): PreKeySignalMessage {
  if (!(bytes instanceof Uint8Array))
    throw new ProtocolError('INVALID_ARGUMENT', '"message" expected Uint8Array');
  checkVersionByte(bytes[0]);
  const f = decodeMessage(bytes.subarray(1), PREKEY_SPEC);
  const baseKey = requireBytes(f, 2);
  parseCurveKey(baseKey, 'baseKey');
  const identityKey = requireBytes(f, 3);
  parseCurveKey(identityKey, 'identityKey');
  const inner = requireBytes(f, 4);
  const signedPreKeyId = requireUint(f, 6);
  // libsignal 0.90.0 requires the Kyber payload for version 4 ("Kyber pre key must be present").
  const kyberPreKeyId = requireUint(f, 7);
  const kyberCiphertext = requireBytes(f, 8);
  if (kyberCiphertext.length !== SERIALIZED_KYBER_CIPHERTEXT_LEN || kyberCiphertext[0] !== KYBER1024_TYPE) {
    throw new ProtocolError(
      'INVALID_MESSAGE',
      'the Kyber ciphertext is not a 0x08-typed Kyber1024 ciphertext',
    );
  }
  return {
    registrationId: optionalUint(f, 5) ?? 0,
    preKeyId: optionalUint(f, 1),
    signedPreKeyId,
    kyberPreKeyId,
    kyberCiphertext,
    baseKey,
    identityKey,
    message: decodeSignalMessage(inner),
    serialized: bytes,
  };
}
