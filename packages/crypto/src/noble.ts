/**
 * The portable backend: @noble/* only, no node:crypto, so it runs in browsers. It is the
 * reference the node backend is differential-tested against, so where the two libraries
 * differ by design (Ed25519 verification rules, X25519 zero checks) this file pins the
 * behaviour to the node backend's, which in turn follows libsignal and OpenSSL.
 *
 * Functions never use `this`, so `export const sha256 = nobleBackend.sha256` works.
 */
import { cbc, gcm } from '@noble/ciphers/aes.js';
import { ed25519, x25519 as nobleX25519 } from '@noble/curves/ed25519.js';
import { hkdf } from '@noble/hashes/hkdf.js';
import { hmac } from '@noble/hashes/hmac.js';
import { sha256 as nobleSha256, sha512 as nobleSha512 } from '@noble/hashes/sha2.js';
import { sha3_256 as nobleSha3_256, shake256 as nobleShake256 } from '@noble/hashes/sha3.js';
import { randomBytes as nobleRandomBytes } from '@noble/hashes/utils.js';
import { CryptoError } from './errors.js';
import { kyber1024Decapsulate, kyber1024Encapsulate, kyber1024GenerateKeyPair, type Sha3 } from './kyber.js';
import {
  AES_BLOCK_LEN,
  AES256_KEY_LEN,
  type CryptoBackend,
  ED25519_SIGNATURE_LEN,
  GCM_NONCE_LEN,
  GCM_TAG_LEN,
  type KemEncapsulation,
  type KeyPair,
  KYBER1024_CIPHERTEXT_LEN,
  KYBER1024_PUBLIC_KEY_LEN,
  KYBER1024_SECRET_KEY_LEN,
  X25519_KEY_LEN,
  XEDDSA_RANDOM_LEN,
  XEDDSA_SIGNATURE_LEN,
} from './types.js';
import {
  abytes,
  abytesArray,
  aint,
  aoptionalBytes,
  checkGcmEncrypt,
  checkGcmEncryptInto,
  HKDF_SHA256_MAX_LEN,
  MAX_OUTPUT_LEN,
} from './validate.js';
import {
  clampScalar,
  decodeXeddsa,
  type Sha512Parts,
  verifyCofactorless,
  xeddsaSign as xeddsaSignWith,
} from './xeddsa.js';

/** WebCrypto's getRandomValues fills at most 65,536 bytes per call (W3C WebCrypto, 10.1.1). */
const GET_RANDOM_VALUES_MAX = 65536;

function random(length: number): Uint8Array {
  if (length <= GET_RANDOM_VALUES_MAX) return nobleRandomBytes(length);
  const out = new Uint8Array(length);
  for (let offset = 0; offset < length; offset += GET_RANDOM_VALUES_MAX) {
    out.set(nobleRandomBytes(Math.min(GET_RANDOM_VALUES_MAX, length - offset)), offset);
  }
  return out;
}

function randomBytes(length: number): Uint8Array {
  aint('length', length, 0, MAX_OUTPUT_LEN);
  return random(length);
}

function sha256(data: Uint8Array): Uint8Array {
  abytes('data', data);
  return nobleSha256(data);
}

function sha512(data: Uint8Array): Uint8Array {
  abytes('data', data);
  return nobleSha512(data);
}

const sha512PartsRaw: Sha512Parts = (parts) => {
  const h = nobleSha512.create();
  for (const part of parts) h.update(part);
  return h.digest();
};

function sha512Parts(parts: readonly Uint8Array[]): Uint8Array {
  abytesArray('parts', parts);
  return sha512PartsRaw(parts);
}

const sha3Raw: Sha3 = {
  sha3_256: (data) => nobleSha3_256(data),
  shake256: (data, outputLength) => nobleShake256(data, { dkLen: outputLength }),
};

function sha3_256(data: Uint8Array): Uint8Array {
  abytes('data', data);
  return sha3Raw.sha3_256(data);
}

function shake256(data: Uint8Array, outputLength: number): Uint8Array {
  abytes('data', data);
  aint('outputLength', outputLength, 0, MAX_OUTPUT_LEN);
  return sha3Raw.shake256(data, outputLength);
}

function hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array {
  abytes('key', key);
  abytes('data', data);
  return hmac(nobleSha256, key, data);
}

function hmacSha256Parts(key: Uint8Array, parts: readonly Uint8Array[]): Uint8Array {
  abytes('key', key);
  abytesArray('parts', parts);
  const mac = hmac.create(nobleSha256, key);
  for (const part of parts) mac.update(part);
  return mac.digest();
}

function hmacSha512(key: Uint8Array, data: Uint8Array): Uint8Array {
  abytes('key', key);
  abytes('data', data);
  return hmac(nobleSha512, key, data);
}

/** RFC 5869; noble, like the RFC, treats an empty salt as HashLen zero bytes. */
function hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  abytes('ikm', ikm);
  abytes('salt', salt);
  abytes('info', info);
  aint('length', length, 0, HKDF_SHA256_MAX_LEN);
  if (length === 0) return new Uint8Array(0);
  return hkdf(nobleSha256, ikm, salt, info, length);
}

function decryptFailed(): CryptoError {
  return new CryptoError('DECRYPT_FAILED', 'decryption failed');
}

/** AES-256-CBC, PKCS#7 padding (noble's default for CBC). */
function aes256CbcEncrypt(key: Uint8Array, iv: Uint8Array, plaintext: Uint8Array): Uint8Array {
  abytes('key', key, AES256_KEY_LEN);
  abytes('iv', iv, AES_BLOCK_LEN);
  abytes('plaintext', plaintext);
  return cbc(key, iv).encrypt(plaintext);
}

function aes256CbcDecrypt(key: Uint8Array, iv: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  abytes('key', key, AES256_KEY_LEN);
  abytes('iv', iv, AES_BLOCK_LEN);
  abytes('ciphertext', ciphertext);
  if (ciphertext.length === 0 || ciphertext.length % AES_BLOCK_LEN !== 0) throw decryptFailed();
  try {
    return cbc(key, iv).decrypt(ciphertext);
  } catch {
    throw decryptFailed();
  }
}

function aes256GcmEncrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad?: Uint8Array,
): Uint8Array {
  checkGcmEncrypt(key, nonce, plaintext, aad);
  return gcm(key, nonce, aad).encrypt(plaintext);
}

function aes256GcmEncryptInto(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array | undefined,
  out: Uint8Array,
): void {
  checkGcmEncryptInto(key, nonce, plaintext, aad, out);
  // noble's own output buffers must be 4-byte aligned; a copy keeps any `out` acceptable.
  out.set(gcm(key, nonce, aad).encrypt(plaintext), 0);
}

function aes256GcmDecrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  sealed: Uint8Array,
  aad?: Uint8Array,
): Uint8Array {
  abytes('key', key, AES256_KEY_LEN);
  abytes('nonce', nonce, GCM_NONCE_LEN);
  abytes('sealed', sealed);
  aoptionalBytes('aad', aad);
  if (sealed.length < GCM_TAG_LEN) throw decryptFailed();
  try {
    return gcm(key, nonce, aad).decrypt(sealed);
  } catch {
    throw decryptFailed();
  }
}

function x25519GenerateKeyPair(): KeyPair {
  // Stored clamped, like the node backend and libsignal.
  const privateKey = clampScalar(random(X25519_KEY_LEN));
  return { privateKey, publicKey: nobleX25519.getPublicKey(privateKey) };
}

function x25519PublicKey(privateKey: Uint8Array): Uint8Array {
  abytes('privateKey', privateKey, X25519_KEY_LEN);
  return nobleX25519.getPublicKey(privateKey);
}

/**
 * RFC 7748 section 5 (noble clamps the scalar, masks bit 255 of u and reduces u mod p);
 * an all-zero result is refused (section 6.1). noble throws on it itself; the explicit
 * check keeps the contract independent of that.
 */
function x25519(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
  abytes('privateKey', privateKey, X25519_KEY_LEN);
  abytes('publicKey', publicKey, X25519_KEY_LEN);
  let shared: Uint8Array;
  try {
    shared = nobleX25519.getSharedSecret(privateKey, publicKey);
  } catch {
    throw new CryptoError('INVALID_KEY', '"publicKey" is a low-order or invalid X25519 point');
  }
  let acc = 0;
  for (let i = 0; i < shared.length; i++) acc |= shared[i]!;
  if (acc === 0) throw new CryptoError('INVALID_KEY', '"publicKey" is a low-order or invalid X25519 point');
  return shared;
}

function xeddsaSign(privateKey: Uint8Array, message: Uint8Array, randomness?: Uint8Array): Uint8Array {
  abytes('privateKey', privateKey, X25519_KEY_LEN);
  abytes('message', message);
  aoptionalBytes('random', randomness, XEDDSA_RANDOM_LEN);
  return xeddsaSignWith(sha512PartsRaw, privateKey, message, randomness ?? random(XEDDSA_RANDOM_LEN));
}

/** libsignal's checks (`decodeXeddsa`), then the cofactorless equation as dalek does it. */
function xeddsaVerify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  abytes('publicKey', publicKey, X25519_KEY_LEN);
  abytes('message', message);
  abytes('signature', signature, XEDDSA_SIGNATURE_LEN);
  const decoded = decodeXeddsa(publicKey, signature);
  if (decoded === undefined) return false;
  return verifyCofactorless(sha512PartsRaw, decoded.publicKey, message, decoded.signature);
}

function ed25519PublicKey(seed: Uint8Array): Uint8Array {
  abytes('seed', seed, 32);
  return ed25519.getPublicKey(seed);
}

/** RFC 8032 section 5.1.6; deterministic, so identical to OpenSSL's output. */
function ed25519Sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  abytes('seed', seed, 32);
  abytes('message', message);
  return ed25519.sign(message, seed);
}

/**
 * Not noble's `ed25519.verify` (cofactored, ZIP-215 by default) but the cofactorless
 * check OpenSSL does, so that both backends accept exactly the same signatures.
 */
function ed25519Verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  abytes('publicKey', publicKey, 32);
  abytes('message', message);
  abytes('signature', signature, ED25519_SIGNATURE_LEN);
  return verifyCofactorless(sha512PartsRaw, publicKey, message, signature);
}

function kyberGenerateKeyPair(seed?: Uint8Array): KeyPair {
  aoptionalBytes('seed', seed, 64);
  return kyber1024GenerateKeyPair(seed ?? random(64));
}

function kyberEncapsulate(publicKey: Uint8Array, coins?: Uint8Array): KemEncapsulation {
  abytes('publicKey', publicKey, KYBER1024_PUBLIC_KEY_LEN);
  aoptionalBytes('random', coins, 32);
  return kyber1024Encapsulate(sha3Raw, publicKey, coins ?? random(32));
}

function kyberDecapsulate(secretKey: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  abytes('secretKey', secretKey, KYBER1024_SECRET_KEY_LEN);
  abytes('ciphertext', ciphertext, KYBER1024_CIPHERTEXT_LEN);
  return kyber1024Decapsulate(sha3Raw, secretKey, ciphertext);
}

/** Constant time in the contents; the lengths (public) may leak. */
function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  abytes('a', a);
  abytes('b', b);
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

export const nobleBackend: CryptoBackend = Object.freeze({
  name: 'noble',
  randomBytes,
  sha256,
  sha512,
  sha512Parts,
  sha3_256,
  shake256,
  hmacSha256,
  hmacSha256Parts,
  hmacSha512,
  hkdfSha256,
  aes256CbcEncrypt,
  aes256CbcDecrypt,
  aes256GcmEncrypt,
  aes256GcmEncryptInto,
  aes256GcmDecrypt,
  x25519GenerateKeyPair,
  x25519PublicKey,
  x25519,
  xeddsaSign,
  xeddsaVerify,
  ed25519PublicKey,
  ed25519Sign,
  ed25519Verify,
  kyber1024GenerateKeyPair: kyberGenerateKeyPair,
  kyber1024Encapsulate: kyberEncapsulate,
  kyber1024Decapsulate: kyberDecapsulate,
  constantTimeEqual,
});
