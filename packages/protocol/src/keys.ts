/**
 * Long-term and medium-term keys of one endpoint, in libsignal's shapes:
 *
 * - the identity key pair (Curve25519; the public half is the 33-byte `0x05 ‖ u` form
 *   that signatures and MACs cover);
 * - one-time prekeys (Curve25519);
 * - the signed prekey: Curve25519, signed with XEdDSA by the identity key over its
 *   serialised 33-byte form;
 * - Kyber prekeys: pre-standard Kyber1024, serialised as `0x08 ‖ 1568 bytes`, signed with
 *   XEdDSA over that 1569-byte form (PQXDH specification section 2.3, libsignal
 *   `KyberPreKeyRecord`).
 *
 * Each record has a compact binary serialisation with a format byte first. Randomness is
 * injectable: every generator takes an optional `rng` (length → bytes).
 */
import {
  KYBER1024_CIPHERTEXT_LEN,
  KYBER1024_PUBLIC_KEY_LEN,
  KYBER1024_SECRET_KEY_LEN,
  kyber1024GenerateKeyPair,
  XEDDSA_SIGNATURE_LEN,
  x25519GenerateKeyPair,
  x25519PublicKey,
  xeddsaSign,
  xeddsaVerify,
} from '@qalqon/crypto';
import { CURVE_KEY_LEN, parseCurveKey, SERIALIZED_CURVE_KEY_LEN, serializeCurveKey } from './curve.js';
import { ProtocolError } from './errors.js';

/** A source of cryptographically secure random bytes; `randomBytes` from @qalqon/crypto by default. */
export type RandomBytes = (length: number) => Uint8Array;

/** Key type byte of pre-standard Kyber1024 keys and ciphertexts in libsignal (`kem::KeyType::Kyber1024`). */
export const KYBER1024_TYPE = 0x08;
export const SERIALIZED_KYBER_PUBLIC_KEY_LEN = 1 + KYBER1024_PUBLIC_KEY_LEN;
export const SERIALIZED_KYBER_CIPHERTEXT_LEN = 1 + KYBER1024_CIPHERTEXT_LEN;
export const SIGNATURE_LEN = XEDDSA_SIGNATURE_LEN;
/** libsignal prekey ids are u32 (PreKeyId, SignedPreKeyId, KyberPreKeyId). */
export const MAX_PREKEY_ID = 0xffffffff;

/** Format byte of the record serialisations below. */
const KEY_RECORD_FORMAT = 1;
const TAG_IDENTITY = 0x49; // 'I'
const TAG_PREKEY = 0x50; // 'P'
const TAG_SIGNED_PREKEY = 0x53; // 'S'
const TAG_KYBER_PREKEY = 0x4b; // 'K'

/** A Curve25519 key pair: `publicKey` is the 33-byte serialised form, `privateKey` the 32-byte scalar. */
export interface CurveKeyPair {
  readonly publicKey: Uint8Array;
  readonly privateKey: Uint8Array;
}

export type IdentityKeyPair = CurveKeyPair;

export interface PreKeyRecord {
  readonly id: number;
  readonly keyPair: CurveKeyPair;
}

export interface SignedPreKeyRecord {
  readonly id: number;
  /** Creation time, milliseconds since the Unix epoch (informational, as in libsignal). */
  readonly timestamp: number;
  readonly keyPair: CurveKeyPair;
  /** XEdDSA signature by the identity key over `keyPair.publicKey` (33 bytes). */
  readonly signature: Uint8Array;
}

export interface KyberPreKeyRecord {
  readonly id: number;
  readonly timestamp: number;
  /** `0x08 ‖ 1568 bytes`. */
  readonly publicKey: Uint8Array;
  /** The 3168-byte Kyber1024 secret key. */
  readonly secretKey: Uint8Array;
  /** XEdDSA signature by the identity key over `publicKey` (1569 bytes). */
  readonly signature: Uint8Array;
}

function arg(ok: boolean, message: string): void {
  if (!ok) throw new ProtocolError('INVALID_ARGUMENT', message);
}

export function checkBytes(value: unknown, length: number, label: string): asserts value is Uint8Array {
  if (!(value instanceof Uint8Array) || value.length !== length) {
    throw new ProtocolError(
      'INVALID_ARGUMENT',
      `"${label}" expected Uint8Array of length ${length}, got length=${(value as { length?: number } | null)?.length}`,
    );
  }
}

export function checkId(id: unknown, label: string): asserts id is number {
  arg(
    typeof id === 'number' && Number.isInteger(id) && id >= 0 && id <= MAX_PREKEY_ID,
    `"${label}" expected an integer in [0, 2^32-1]`,
  );
}

function checkTimestamp(ts: unknown): asserts ts is number {
  arg(
    typeof ts === 'number' && Number.isSafeInteger(ts) && ts >= 0,
    '"timestamp" expected a non-negative integer',
  );
}

/** Generates a Curve25519 key pair; with `rng`, the private key is `rng(32)` (clamped on use). */
export function generateCurveKeyPair(rng?: RandomBytes): CurveKeyPair {
  if (rng === undefined) {
    const kp = x25519GenerateKeyPair();
    return { publicKey: serializeCurveKey(kp.publicKey), privateKey: kp.privateKey };
  }
  const privateKey = rng(CURVE_KEY_LEN);
  checkBytes(privateKey, CURVE_KEY_LEN, 'rng output');
  return { publicKey: serializeCurveKey(x25519PublicKey(privateKey)), privateKey };
}

export function generateIdentityKeyPair(rng?: RandomBytes): IdentityKeyPair {
  return generateCurveKeyPair(rng);
}

/** Checks that a key pair is well-formed and that its halves belong together. */
export function checkCurveKeyPair(kp: CurveKeyPair, label: string): void {
  arg(typeof kp === 'object' && kp !== null, `"${label}" expected a key pair`);
  checkBytes(kp.privateKey, CURVE_KEY_LEN, `${label}.privateKey`);
  checkBytes(kp.publicKey, SERIALIZED_CURVE_KEY_LEN, `${label}.publicKey`);
  parseCurveKey(kp.publicKey, `${label}.publicKey`);
}

export function generatePreKey(id: number, rng?: RandomBytes): PreKeyRecord {
  checkId(id, 'id');
  return { id, keyPair: generateCurveKeyPair(rng) };
}

/** `count` one-time prekeys with consecutive ids `startId`, `startId + 1`, …  */
export function generatePreKeys(startId: number, count: number, rng?: RandomBytes): PreKeyRecord[] {
  checkId(startId, 'startId');
  arg(
    Number.isInteger(count) && count >= 0 && count <= 100_000,
    '"count" expected an integer in [0, 100000]',
  );
  checkId(startId + count - (count > 0 ? 1 : 0), 'startId + count - 1');
  const out: PreKeyRecord[] = [];
  for (let i = 0; i < count; i++) out.push(generatePreKey(startId + i, rng));
  return out;
}

export function generateSignedPreKey(
  identity: IdentityKeyPair,
  id: number,
  options: { timestamp?: number; rng?: RandomBytes } = {},
): SignedPreKeyRecord {
  checkCurveKeyPair(identity, 'identity');
  checkId(id, 'id');
  const timestamp = options.timestamp ?? Date.now();
  checkTimestamp(timestamp);
  const keyPair = generateCurveKeyPair(options.rng);
  const signature = xeddsaSign(identity.privateKey, keyPair.publicKey, options.rng?.(64));
  return { id, timestamp, keyPair, signature };
}

export function generateKyberPreKey(
  identity: IdentityKeyPair,
  id: number,
  options: { timestamp?: number; rng?: RandomBytes } = {},
): KyberPreKeyRecord {
  checkCurveKeyPair(identity, 'identity');
  checkId(id, 'id');
  const timestamp = options.timestamp ?? Date.now();
  checkTimestamp(timestamp);
  const kp = kyber1024GenerateKeyPair(options.rng?.(64));
  const publicKey = serializeKyberPublicKey(kp.publicKey);
  const signature = xeddsaSign(identity.privateKey, publicKey, options.rng?.(64));
  return { id, timestamp, publicKey, secretKey: kp.privateKey, signature };
}

/** 1568 raw bytes → `0x08 ‖ 1568 bytes`. */
export function serializeKyberPublicKey(raw: Uint8Array): Uint8Array {
  checkBytes(raw, KYBER1024_PUBLIC_KEY_LEN, 'kyberPublicKey');
  const out = new Uint8Array(SERIALIZED_KYBER_PUBLIC_KEY_LEN);
  out[0] = KYBER1024_TYPE;
  out.set(raw, 1);
  return out;
}

/**
 * `0x08 ‖ 1568 bytes` → the raw key (a view). INVALID_KEY for any other type byte or
 * length: 0x0A (ML-KEM-1024) is not accepted by libsignal 0.90.0 either.
 */
export function parseKyberPublicKey(serialized: Uint8Array, label = 'kyberPublicKey'): Uint8Array {
  arg(serialized instanceof Uint8Array, `"${label}" expected Uint8Array`);
  if (serialized.length !== SERIALIZED_KYBER_PUBLIC_KEY_LEN || serialized[0] !== KYBER1024_TYPE) {
    throw new ProtocolError(
      'INVALID_KEY',
      `"${label}" expected a ${SERIALIZED_KYBER_PUBLIC_KEY_LEN}-byte Kyber1024 key with type byte 0x08, got length=${serialized.length}`,
    );
  }
  return serialized.subarray(1);
}

/** Verifies the identity key's XEdDSA signature over a serialised (typed) public key. */
export function verifyPreKeySignature(
  identityKey: Uint8Array,
  serializedPublicKey: Uint8Array,
  signature: Uint8Array,
): boolean {
  const raw = parseCurveKey(identityKey, 'identityKey');
  if (!(signature instanceof Uint8Array) || signature.length !== SIGNATURE_LEN) return false;
  return xeddsaVerify(raw, serializedPublicKey, signature);
}

// ---------------------------------------------------------------------------------------
// Record serialisation: FORMAT(1) ‖ TAG(1) ‖ fixed-layout fields, big-endian integers.
// ---------------------------------------------------------------------------------------

function corrupt(what: string): never {
  throw new ProtocolError('INVALID_STATE', `corrupt key record: ${what}`);
}

function header(bytes: Uint8Array, tag: number, length: number): Uint8Array {
  if (!(bytes instanceof Uint8Array))
    throw new ProtocolError('INVALID_ARGUMENT', '"bytes" expected Uint8Array');
  if (bytes.length < 2 || bytes[0] !== KEY_RECORD_FORMAT) corrupt('unknown format');
  if (bytes[1] !== tag) corrupt('wrong record type');
  if (bytes.length !== length) corrupt(`length ${bytes.length}, expected ${length}`);
  // One copy, so later changes to the caller's buffer cannot reach the record.
  return bytes.slice();
}

function u32(b: Uint8Array, pos: number): number {
  return ((b[pos]! << 24) | (b[pos + 1]! << 16) | (b[pos + 2]! << 8) | b[pos + 3]!) >>> 0;
}
function putU32(b: Uint8Array, pos: number, v: number): void {
  b[pos] = v >>> 24;
  b[pos + 1] = v >>> 16;
  b[pos + 2] = v >>> 8;
  b[pos + 3] = v;
}
function u64(b: Uint8Array, pos: number): number {
  const v = u32(b, pos) * 2 ** 32 + u32(b, pos + 4);
  if (!Number.isSafeInteger(v)) corrupt('timestamp out of range');
  return v;
}
function putU64(b: Uint8Array, pos: number, v: number): void {
  putU32(b, pos, Math.floor(v / 2 ** 32));
  putU32(b, pos + 4, v % 2 ** 32);
}

function checkPublic(b: Uint8Array): void {
  if (b[0] !== 0x05) corrupt('bad public key type');
}

const IDENTITY_LEN = 2 + SERIALIZED_CURVE_KEY_LEN + CURVE_KEY_LEN;

export function serializeIdentityKeyPair(kp: IdentityKeyPair): Uint8Array {
  checkCurveKeyPair(kp, 'identity');
  const out = new Uint8Array(IDENTITY_LEN);
  out[0] = KEY_RECORD_FORMAT;
  out[1] = TAG_IDENTITY;
  out.set(kp.publicKey, 2);
  out.set(kp.privateKey, 2 + SERIALIZED_CURVE_KEY_LEN);
  return out;
}

export function deserializeIdentityKeyPair(bytes: Uint8Array): IdentityKeyPair {
  const b = header(bytes, TAG_IDENTITY, IDENTITY_LEN);
  const publicKey = b.subarray(2, 2 + SERIALIZED_CURVE_KEY_LEN);
  checkPublic(publicKey);
  return { publicKey, privateKey: b.subarray(2 + SERIALIZED_CURVE_KEY_LEN) };
}

const PREKEY_LEN = 2 + 4 + SERIALIZED_CURVE_KEY_LEN + CURVE_KEY_LEN;

export function serializePreKeyRecord(r: PreKeyRecord): Uint8Array {
  checkId(r.id, 'id');
  checkCurveKeyPair(r.keyPair, 'keyPair');
  const out = new Uint8Array(PREKEY_LEN);
  out[0] = KEY_RECORD_FORMAT;
  out[1] = TAG_PREKEY;
  putU32(out, 2, r.id);
  out.set(r.keyPair.publicKey, 6);
  out.set(r.keyPair.privateKey, 6 + SERIALIZED_CURVE_KEY_LEN);
  return out;
}

export function deserializePreKeyRecord(bytes: Uint8Array): PreKeyRecord {
  const b = header(bytes, TAG_PREKEY, PREKEY_LEN);
  const publicKey = b.subarray(6, 6 + SERIALIZED_CURVE_KEY_LEN);
  checkPublic(publicKey);
  return { id: u32(b, 2), keyPair: { publicKey, privateKey: b.subarray(6 + SERIALIZED_CURVE_KEY_LEN) } };
}

const SIGNED_PREKEY_LEN = 2 + 4 + 8 + SERIALIZED_CURVE_KEY_LEN + CURVE_KEY_LEN + SIGNATURE_LEN;

export function serializeSignedPreKeyRecord(r: SignedPreKeyRecord): Uint8Array {
  checkId(r.id, 'id');
  checkTimestamp(r.timestamp);
  checkCurveKeyPair(r.keyPair, 'keyPair');
  checkBytes(r.signature, SIGNATURE_LEN, 'signature');
  const out = new Uint8Array(SIGNED_PREKEY_LEN);
  out[0] = KEY_RECORD_FORMAT;
  out[1] = TAG_SIGNED_PREKEY;
  putU32(out, 2, r.id);
  putU64(out, 6, r.timestamp);
  let pos = 14;
  out.set(r.keyPair.publicKey, pos);
  pos += SERIALIZED_CURVE_KEY_LEN;
  out.set(r.keyPair.privateKey, pos);
  pos += CURVE_KEY_LEN;
  out.set(r.signature, pos);
  return out;
}

export function deserializeSignedPreKeyRecord(bytes: Uint8Array): SignedPreKeyRecord {
  const b = header(bytes, TAG_SIGNED_PREKEY, SIGNED_PREKEY_LEN);
  let pos = 14;
  const publicKey = b.subarray(pos, pos + SERIALIZED_CURVE_KEY_LEN);
  checkPublic(publicKey);
  pos += SERIALIZED_CURVE_KEY_LEN;
  const privateKey = b.subarray(pos, pos + CURVE_KEY_LEN);
  pos += CURVE_KEY_LEN;
  return {
    id: u32(b, 2),
    timestamp: u64(b, 6),
    keyPair: { publicKey, privateKey },
    signature: b.subarray(pos, pos + SIGNATURE_LEN),
  };
}

const KYBER_PREKEY_LEN =
  2 + 4 + 8 + SERIALIZED_KYBER_PUBLIC_KEY_LEN + KYBER1024_SECRET_KEY_LEN + SIGNATURE_LEN;

export function serializeKyberPreKeyRecord(r: KyberPreKeyRecord): Uint8Array {
  checkId(r.id, 'id');
  checkTimestamp(r.timestamp);
  parseKyberPublicKey(r.publicKey, 'publicKey');
  checkBytes(r.secretKey, KYBER1024_SECRET_KEY_LEN, 'secretKey');
  checkBytes(r.signature, SIGNATURE_LEN, 'signature');
  const out = new Uint8Array(KYBER_PREKEY_LEN);
  out[0] = KEY_RECORD_FORMAT;
  out[1] = TAG_KYBER_PREKEY;
  putU32(out, 2, r.id);
  putU64(out, 6, r.timestamp);
  let pos = 14;
  out.set(r.publicKey, pos);
  pos += SERIALIZED_KYBER_PUBLIC_KEY_LEN;
  out.set(r.secretKey, pos);
  pos += KYBER1024_SECRET_KEY_LEN;
  out.set(r.signature, pos);
  return out;
}

export function deserializeKyberPreKeyRecord(bytes: Uint8Array): KyberPreKeyRecord {
  const b = header(bytes, TAG_KYBER_PREKEY, KYBER_PREKEY_LEN);
  let pos = 14;
  const publicKey = b.subarray(pos, pos + SERIALIZED_KYBER_PUBLIC_KEY_LEN);
  if (publicKey[0] !== KYBER1024_TYPE) corrupt('bad Kyber key type');
  pos += SERIALIZED_KYBER_PUBLIC_KEY_LEN;
  const secretKey = b.subarray(pos, pos + KYBER1024_SECRET_KEY_LEN);
  pos += KYBER1024_SECRET_KEY_LEN;
  return {
    id: u32(b, 2),
    timestamp: u64(b, 6),
    publicKey,
    secretKey,
    signature: b.subarray(pos, pos + SIGNATURE_LEN),
  };
}
