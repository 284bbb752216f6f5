/**
 * The node:crypto backend: OpenSSL for everything it can do, @noble/curves only for the
 * XEdDSA scalar arithmetic OpenSSL does not expose.
 *
 * This is the hot path of the Double Ratchet benchmark, so it avoids work it does not
 * need: raw keys enter OpenSSL as JWKs rather than DER (see `privateKeyObject`), X25519
 * private KeyObjects are cached per key array (see `x25519PrivateKeyObject`), CBC padding
 * is handled here so each call is one `update`, and results are plain Uint8Array views
 * over the exactly-sized Buffers OpenSSL allocated for them (never over Buffer's shared
 * pool or any scratch memory, so `result.buffer` exposes nothing else).
 *
 * Functions never use `this`, so `export const sha256 = nodeBackend.sha256` works.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  type KeyObject,
  randomBytes as nodeRandomBytes,
  sign as nodeSign,
  verify as nodeVerify,
  hash as oneShotHash,
  timingSafeEqual,
} from 'node:crypto';
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
  SHA256_LEN,
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
import { clampScalar, decodeXeddsa, type Sha512Parts, xeddsaSign as xeddsaSignWith } from './xeddsa.js';

/** A plain Uint8Array view over a Buffer's bytes (no copy; the Buffer is not kept). */
function view(buf: Buffer): Uint8Array {
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

// --- Raw keys to KeyObjects ----------------------------------------------------------------
// Raw 32-byte X25519/Ed25519 keys enter OpenSSL as JWKs (RFC 8037 section 2: "OKP" keys,
// base64url of the raw bytes). With node 20's OpenSSL 3.0 this is several times faster
// than the equivalent PKCS#8/SPKI DER (RFC 8410), which goes through OpenSSL 3's generic
// decoder chain (measured: ~360 µs for a PKCS#8 private key, ~85 µs for an SPKI public
// key, against ~40 µs and ~12 µs as JWK). For a private key `x` is ignored (OpenSSL
// derives the public key itself) but node requires the member, so it is left empty.

type OkpCurve = 'X25519' | 'Ed25519';

function b64url(raw: Uint8Array): string {
  return Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('base64url');
}

function privateKeyObject(crv: OkpCurve, raw: Uint8Array): KeyObject {
  return createPrivateKey({ key: { kty: 'OKP', crv, d: b64url(raw), x: '' }, format: 'jwk' });
}

function publicKeyObject(crv: OkpCurve, raw: Uint8Array): KeyObject {
  return createPublicKey({ key: { kty: 'OKP', crv, x: b64url(raw) }, format: 'jwk' });
}

/**
 * The raw public key of a public or private KeyObject, decoded into its own 32 bytes
 * (`Buffer.from(string)` would slice Buffer's shared pool).
 */
function rawPublicKey(key: KeyObject): Uint8Array {
  const { x } = key.export({ format: 'jwk' });
  const out = new Uint8Array(32);
  Buffer.from(out.buffer).write(x!, 'base64url');
  return out;
}

/**
 * Importing an X25519 private key makes OpenSSL derive its public key at once (a full
 * scalar multiplication), which would double the cost of every `x25519` call. So the
 * KeyObject is cached per private-key array, with a copy of the bytes it was made from:
 * a hit is used only if the array still holds those bytes (constant-time comparison), so
 * a caller who overwrites or zeroes the array never gets a stale key. Key pairs from
 * `x25519GenerateKeyPair` enter the cache at birth, so a Double Ratchet step (new key
 * pair, then DH with it) costs one scalar multiplication per operation, as in libsignal.
 *
 * A WeakMap keyed by the array holds the entry no longer than the caller holds the array,
 * so forward secrecy is the caller's as before: drop the array and the key can go. Note
 * that zeroing the array does not erase the cached copy until the array is collected.
 * Callers get the benefit only if they keep passing the same array object for a key.
 */
interface CachedPrivateKey {
  readonly bytes: Buffer;
  readonly key: KeyObject;
}
const x25519PrivateCache = new WeakMap<Uint8Array, CachedPrivateKey>();

function cachePrivateKey(privateKey: Uint8Array, key: KeyObject): void {
  // Buffer.alloc, not Buffer.from: the copy must not sit in Buffer's shared pool.
  const bytes = Buffer.alloc(X25519_KEY_LEN);
  bytes.set(privateKey);
  x25519PrivateCache.set(privateKey, { bytes, key });
}

function x25519PrivateKeyObject(privateKey: Uint8Array): KeyObject {
  const cached = x25519PrivateCache.get(privateKey);
  if (cached !== undefined && timingSafeEqual(cached.bytes, privateKey)) return cached.key;
  const key = privateKeyObject('X25519', privateKey);
  cachePrivateKey(privateKey, key);
  return key;
}

/**
 * Public KeyObjects are cached the same way (an import costs ~12 µs, a third of a DH):
 * a peer's identity or ratchet key is typically used in more than one DH. Public data,
 * so an ordinary comparison suffices.
 */
const x25519PublicCache = new WeakMap<Uint8Array, { readonly bytes: Uint8Array; readonly key: KeyObject }>();

function x25519PublicKeyObject(publicKey: Uint8Array): KeyObject {
  const cached = x25519PublicCache.get(publicKey);
  if (cached !== undefined && Buffer.compare(cached.bytes, publicKey) === 0) return cached.key;
  const key = publicKeyObject('X25519', publicKey);
  x25519PublicCache.set(publicKey, { bytes: Uint8Array.from(publicKey), key });
  return key;
}

// --- Hashes --------------------------------------------------------------------------------

function randomBytes(length: number): Uint8Array {
  aint('length', length, 0, MAX_OUTPUT_LEN);
  return view(nodeRandomBytes(length));
}

function sha256(data: Uint8Array): Uint8Array {
  abytes('data', data);
  return view(oneShotHash('sha256', data, 'buffer'));
}

function sha512(data: Uint8Array): Uint8Array {
  abytes('data', data);
  return view(oneShotHash('sha512', data, 'buffer'));
}

/** Unchecked, for internal callers that have validated their parts. */
const sha512PartsRaw: Sha512Parts = (parts) => {
  const h = createHash('sha512');
  for (const part of parts) h.update(part);
  return view(h.digest());
};

function sha512Parts(parts: readonly Uint8Array[]): Uint8Array {
  abytesArray('parts', parts);
  return sha512PartsRaw(parts);
}

const sha3Raw: Sha3 = {
  sha3_256: (data) => view(oneShotHash('sha3-256', data, 'buffer')),
  shake256: (data, outputLength) => view(createHash('shake256', { outputLength }).update(data).digest()),
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

// --- MACs and KDF --------------------------------------------------------------------------

function hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array {
  abytes('key', key);
  abytes('data', data);
  return view(createHmac('sha256', key).update(data).digest());
}

function hmacSha256Parts(key: Uint8Array, parts: readonly Uint8Array[]): Uint8Array {
  abytes('key', key);
  abytesArray('parts', parts);
  const mac = createHmac('sha256', key);
  for (const part of parts) mac.update(part);
  return view(mac.digest());
}

function hmacSha512(key: Uint8Array, data: Uint8Array): Uint8Array {
  abytes('key', key);
  abytes('data', data);
  return view(createHmac('sha512', key).update(data).digest());
}

/**
 * RFC 5869 HKDF-SHA256 on HMAC directly: extract (section 2.2) then expand (section 2.3),
 * T(i) = HMAC(PRK, T(i-1) ‖ info ‖ i). For the ratchet's short outputs (32 to 96 bytes)
 * this is faster than `hkdfSync` (measured 11.7 against 13 µs for 80 bytes on node 20),
 * which wraps the IKM in a KeyObject on every call, and it has no limit on the length of
 * `info` (node's has 1024 bytes). Assembling HMAC from one-shot `crypto.hash` calls was
 * tried and was no faster.
 */
function hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  abytes('ikm', ikm);
  abytes('salt', salt);
  abytes('info', info);
  aint('length', length, 0, HKDF_SHA256_MAX_LEN);
  // An empty salt is an HMAC key of zero length, which HMAC pads to HashLen zero bytes:
  // exactly the "string of HashLen zeros" the RFC substitutes for a missing salt.
  const prk = createHmac('sha256', salt).update(ikm).digest();
  const out = new Uint8Array(length);
  const counter = new Uint8Array(1);
  let previous: Buffer | undefined;
  for (let offset = 0, i = 1; offset < length; offset += SHA256_LEN, i++) {
    counter[0] = i;
    const mac = createHmac('sha256', prk);
    if (previous !== undefined) mac.update(previous);
    const block = mac.update(info).update(counter).digest();
    previous?.fill(0);
    out.set(length - offset < SHA256_LEN ? block.subarray(0, length - offset) : block, offset);
    previous = block;
  }
  prk.fill(0);
  previous?.fill(0);
  return out;
}

// --- Ciphers -------------------------------------------------------------------------------

function decryptFailed(): CryptoError {
  return new CryptoError('DECRYPT_FAILED', 'decryption failed');
}

/**
 * AES-256-CBC with PKCS#7 padding (RFC 5652 section 6.3). The padding is added here and
 * OpenSSL's disabled, so the whole ciphertext comes out of one `update` in one buffer
 * instead of being concatenated from `update` and `final`.
 */
function aes256CbcEncrypt(key: Uint8Array, iv: Uint8Array, plaintext: Uint8Array): Uint8Array {
  abytes('key', key, AES256_KEY_LEN);
  abytes('iv', iv, AES_BLOCK_LEN);
  abytes('plaintext', plaintext);
  const pad = AES_BLOCK_LEN - (plaintext.length % AES_BLOCK_LEN);
  const padded = Buffer.allocUnsafeSlow(plaintext.length + pad);
  padded.set(plaintext, 0);
  padded.fill(pad, plaintext.length);
  const cipher = createCipheriv('aes-256-cbc', key, iv).setAutoPadding(false);
  const out = cipher.update(padded);
  padded.fill(0);
  return view(out);
}

/**
 * Decrypts without OpenSSL's padding removal and checks the PKCS#7 padding here in
 * constant time (no branch on the padding bytes), returning a view of the unpadded part.
 */
function aes256CbcDecrypt(key: Uint8Array, iv: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  abytes('key', key, AES256_KEY_LEN);
  abytes('iv', iv, AES_BLOCK_LEN);
  abytes('ciphertext', ciphertext);
  if (ciphertext.length === 0 || ciphertext.length % AES_BLOCK_LEN !== 0) throw decryptFailed();
  const decipher = createDecipheriv('aes-256-cbc', key, iv).setAutoPadding(false);
  const padded = decipher.update(ciphertext);
  const unpaddedLength = pkcs7UnpaddedLength(padded);
  if (unpaddedLength < 0) {
    padded.fill(0);
    throw decryptFailed();
  }
  return new Uint8Array(padded.buffer, padded.byteOffset, unpaddedLength);
}

/**
 * Length of the message inside PKCS#7-padded `data` (a non-empty multiple of 16), or -1
 * if the padding is wrong. Looks at all of the last block whatever the padding value, and
 * combines the checks with arithmetic rather than branches.
 */
export function pkcs7UnpaddedLength(data: Uint8Array): number {
  const n = data.length;
  const pad = data[n - 1]!;
  // bad = 1 unless 1 <= pad <= 16
  let bad = ((pad - 1) >>> 31) | ((AES_BLOCK_LEN - pad) >>> 31);
  for (let i = 1; i <= AES_BLOCK_LEN; i++) {
    // inPad = 1 if i <= pad (byte n-i is a padding byte), computed without a branch.
    const inPad = ((pad - i) >>> 31) ^ 1;
    bad |= inPad & (((data[n - i]! ^ pad) + 0xff) >>> 8);
  }
  return bad === 0 ? n - pad : -1;
}

/** AES-256-GCM (NIST SP 800-38D) with a 96-bit nonce and a 128-bit tag appended. */
function aes256GcmEncrypt(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad?: Uint8Array,
): Uint8Array {
  checkGcmEncrypt(key, nonce, plaintext, aad);
  const out = Buffer.allocUnsafeSlow(plaintext.length + GCM_TAG_LEN);
  gcmSealInto(key, nonce, plaintext, aad, out);
  return view(out);
}

function aes256GcmEncryptInto(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array | undefined,
  out: Uint8Array,
): void {
  checkGcmEncryptInto(key, nonce, plaintext, aad, out);
  gcmSealInto(key, nonce, plaintext, aad, out);
}

/** Seals into `out` (plaintext.length + 16 bytes); the arguments are checked by the caller. */
function gcmSealInto(
  key: Uint8Array,
  nonce: Uint8Array,
  plaintext: Uint8Array,
  aad: Uint8Array | undefined,
  out: Uint8Array,
): void {
  const cipher = createCipheriv('aes-256-gcm', key, nonce, { authTagLength: GCM_TAG_LEN });
  if (aad !== undefined && aad.length > 0) cipher.setAAD(aad);
  // node:crypto always returns new memory from `update`: one copy, but no second allocation.
  out.set(cipher.update(plaintext), 0);
  cipher.final();
  out.set(cipher.getAuthTag(), plaintext.length);
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
  // Shorter than a tag cannot authenticate: a decryption failure, not an argument error,
  // since it is what a truncated message from the network looks like.
  if (sealed.length < GCM_TAG_LEN) throw decryptFailed();
  const ctLength = sealed.length - GCM_TAG_LEN;
  const decipher = createDecipheriv('aes-256-gcm', key, nonce, { authTagLength: GCM_TAG_LEN });
  decipher.setAuthTag(sealed.subarray(ctLength));
  if (aad !== undefined && aad.length > 0) decipher.setAAD(aad);
  const plaintext = decipher.update(sealed.subarray(0, ctLength));
  try {
    // `final` checks the tag; the plaintext is released only if it passes.
    decipher.final();
  } catch {
    plaintext.fill(0);
    throw decryptFailed();
  }
  return view(plaintext);
}

// --- X25519 (RFC 7748) ---------------------------------------------------------------------

function x25519GenerateKeyPair(): KeyPair {
  // RFC 7748 section 6.1: 32 random bytes, stored clamped (section 5) as libsignal stores
  // them, so `privateKey` is byte-identical to what its PrivateKey.serialize() gives.
  // Not `generateKeyPairSync('x25519')`: on node 20.20 exporting a key it made as a JWK
  // can deadlock when a GC runs during the export and finalises the key-generation job,
  // whose destructor takes the same key's mutex (seen as a hang in a benchmark loop).
  const privateKey = clampScalar(nodeRandomBytes(X25519_KEY_LEN));
  const key = x25519PrivateKeyObject(privateKey);
  return { privateKey, publicKey: rawPublicKey(key) };
}

function x25519PublicKey(privateKey: Uint8Array): Uint8Array {
  abytes('privateKey', privateKey, X25519_KEY_LEN);
  return rawPublicKey(createPublicKey(x25519PrivateKeyObject(privateKey)));
}

/**
 * X25519 (RFC 7748 section 5). OpenSSL itself refuses an all-zero result, i.e. a
 * low-order peer key (section 6.1); that, and any other refusal of the peer's key,
 * becomes INVALID_KEY. The result is checked here too, so the contract does not rest on
 * an OpenSSL detail.
 */
function x25519(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array {
  abytes('privateKey', privateKey, X25519_KEY_LEN);
  abytes('publicKey', publicKey, X25519_KEY_LEN);
  const priv = x25519PrivateKeyObject(privateKey);
  let shared: Buffer;
  try {
    shared = diffieHellman({ privateKey: priv, publicKey: x25519PublicKeyObject(publicKey) });
  } catch {
    throw new CryptoError('INVALID_KEY', '"publicKey" is a low-order or invalid X25519 point');
  }
  let acc = 0;
  for (let i = 0; i < shared.length; i++) acc |= shared[i]!;
  if (acc === 0) throw new CryptoError('INVALID_KEY', '"publicKey" is a low-order or invalid X25519 point');
  return view(shared);
}

// --- XEdDSA and Ed25519 ----------------------------------------------------------------------

function xeddsaSign(privateKey: Uint8Array, message: Uint8Array, random?: Uint8Array): Uint8Array {
  abytes('privateKey', privateKey, X25519_KEY_LEN);
  abytes('message', message);
  aoptionalBytes('random', random, XEDDSA_RANDOM_LEN);
  return xeddsaSignWith(sha512PartsRaw, privateKey, message, random ?? nodeRandomBytes(XEDDSA_RANDOM_LEN));
}

/**
 * libsignal's checks (see `decodeXeddsa`), then OpenSSL's Ed25519 verification, which is
 * the same cofactorless equation with the same byte comparison of R as curve25519-dalek.
 */
function xeddsaVerify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  abytes('publicKey', publicKey, X25519_KEY_LEN);
  abytes('message', message);
  abytes('signature', signature, XEDDSA_SIGNATURE_LEN);
  const decoded = decodeXeddsa(publicKey, signature);
  if (decoded === undefined) return false;
  return ed25519VerifyRaw(decoded.publicKey, message, decoded.signature);
}

function ed25519PublicKey(seed: Uint8Array): Uint8Array {
  abytes('seed', seed, 32);
  return rawPublicKey(createPublicKey(privateKeyObject('Ed25519', seed)));
}

function ed25519Sign(seed: Uint8Array, message: Uint8Array): Uint8Array {
  abytes('seed', seed, 32);
  abytes('message', message);
  return view(nodeSign(null, message, privateKeyObject('Ed25519', seed)));
}

function ed25519VerifyRaw(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  try {
    return nodeVerify(null, message, publicKeyObject('Ed25519', publicKey), signature);
  } catch {
    // A public key OpenSSL cannot decode.
    return false;
  }
}

function ed25519Verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean {
  abytes('publicKey', publicKey, 32);
  abytes('message', message);
  abytes('signature', signature, ED25519_SIGNATURE_LEN);
  return ed25519VerifyRaw(publicKey, message, signature);
}

// --- Kyber1024 -------------------------------------------------------------------------------

function kyberGenerateKeyPair(seed?: Uint8Array): KeyPair {
  aoptionalBytes('seed', seed, 64);
  return kyber1024GenerateKeyPair(seed ?? nodeRandomBytes(64));
}

function kyberEncapsulate(publicKey: Uint8Array, random?: Uint8Array): KemEncapsulation {
  abytes('publicKey', publicKey, KYBER1024_PUBLIC_KEY_LEN);
  aoptionalBytes('random', random, 32);
  return kyber1024Encapsulate(sha3Raw, publicKey, random ?? nodeRandomBytes(32));
}

function kyberDecapsulate(secretKey: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  abytes('secretKey', secretKey, KYBER1024_SECRET_KEY_LEN);
  abytes('ciphertext', ciphertext, KYBER1024_CIPHERTEXT_LEN);
  return kyber1024Decapsulate(sha3Raw, secretKey, ciphertext);
}

// --- Comparison ------------------------------------------------------------------------------

function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  abytes('a', a);
  abytes('b', b);
  // Lengths are public (they are visible on the wire); timingSafeEqual requires them equal.
  return a.length === b.length && timingSafeEqual(a, b);
}

export const nodeBackend: CryptoBackend = Object.freeze({
  name: 'node',
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
