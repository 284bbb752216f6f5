/**
 * The one synchronous primitive API that Qalqon's protocol code is written against.
 *
 * Two implementations exist: `node.ts` (node:crypto, fast, used in Node) and `noble.ts`
 * (@noble/*, portable, used in browsers). They are differential-tested against each other
 * and both must pass the Wycheproof vectors. Every function checks its arguments on entry
 * and throws a `CryptoError` with a labelled message; no message ever contains key bytes.
 *
 * Byte strings are always `Uint8Array` (a Node `Buffer` is accepted, since it is one);
 * results are always plain `Uint8Array`s the caller owns (possibly views into a buffer
 * allocated for that result alone, never into shared memory).
 *
 * Argument errors: a wrong type, a wrong length of a fixed-length argument (keys, nonces,
 * IVs, signatures, randomness) or an out-of-range number throws `CryptoError` code
 * INVALID_ARGUMENT on entry, in every function, including the `verify` functions: "never
 * throws on a bad signature" below is about the contents of a correctly sized signature.
 */

/** Lengths fixed by the primitives (RFC 7748, RFC 8032, FIPS 197/SP 800-38D, Kyber r3). */
export const X25519_KEY_LEN = 32;
export const ED25519_SIGNATURE_LEN = 64;
export const XEDDSA_SIGNATURE_LEN = 64;
export const XEDDSA_RANDOM_LEN = 64;
export const AES256_KEY_LEN = 32;
export const AES_BLOCK_LEN = 16;
export const GCM_NONCE_LEN = 12;
export const GCM_TAG_LEN = 16;
export const SHA256_LEN = 32;
export const SHA512_LEN = 64;
/** Kyber1024 (round-3, as used by libsignal's key type 0x08) public key, secret key, ciphertext, shared secret. */
export const KYBER1024_PUBLIC_KEY_LEN = 1568;
export const KYBER1024_SECRET_KEY_LEN = 3168;
export const KYBER1024_CIPHERTEXT_LEN = 1568;
export const KYBER_SHARED_SECRET_LEN = 32;

export interface KeyPair {
  /** X25519: 32 bytes, clamped on use. Kyber: 3168 bytes. */
  readonly privateKey: Uint8Array;
  /** X25519: 32 bytes (raw u-coordinate, no 0x05 type byte). Kyber: 1568 bytes (no 0x08 type byte). */
  readonly publicKey: Uint8Array;
}

export interface KemEncapsulation {
  readonly ciphertext: Uint8Array;
  readonly sharedSecret: Uint8Array;
}

export interface CryptoBackend {
  readonly name: 'node' | 'noble';

  /** Cryptographically secure random bytes. */
  randomBytes(length: number): Uint8Array;

  sha256(data: Uint8Array): Uint8Array;
  sha512(data: Uint8Array): Uint8Array;
  /** SHA-512 over the concatenation of the parts, without copying them together. */
  sha512Parts(parts: readonly Uint8Array[]): Uint8Array;
  sha3_256(data: Uint8Array): Uint8Array;
  shake256(data: Uint8Array, outputLength: number): Uint8Array;

  hmacSha256(key: Uint8Array, data: Uint8Array): Uint8Array;
  /** HMAC-SHA256 over the concatenation of the parts, without copying them together. */
  hmacSha256Parts(key: Uint8Array, parts: readonly Uint8Array[]): Uint8Array;
  hmacSha512(key: Uint8Array, data: Uint8Array): Uint8Array;
  /**
   * RFC 5869 HKDF-SHA256. An empty `salt` means HashLen zero bytes, as the RFC says.
   * `length` is 0..8160 (255 * HashLen, section 2.3); `info` has no length limit.
   */
  hkdfSha256(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Uint8Array;

  /** AES-256-CBC with PKCS#7 padding. */
  aes256CbcEncrypt(key: Uint8Array, iv: Uint8Array, plaintext: Uint8Array): Uint8Array;
  /** Throws CryptoError code DECRYPT_FAILED on bad padding or a length that is not a multiple of 16. */
  aes256CbcDecrypt(key: Uint8Array, iv: Uint8Array, ciphertext: Uint8Array): Uint8Array;
  /** AES-256-GCM; returns ciphertext ‖ 16-byte tag. Nonce is 12 bytes. An empty `aad` equals none. */
  aes256GcmEncrypt(key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, aad?: Uint8Array): Uint8Array;
  /**
   * AES-256-GCM like `aes256GcmEncrypt`, written into `out` (exactly plaintext.length + 16
   * bytes: ciphertext ‖ tag) instead of a new array, so that a caller can seal many pieces
   * into one buffer of its own (a header before, the next piece after). `out` must not
   * overlap `plaintext`.
   */
  aes256GcmEncryptInto(
    key: Uint8Array,
    nonce: Uint8Array,
    plaintext: Uint8Array,
    aad: Uint8Array | undefined,
    out: Uint8Array,
  ): void;
  /**
   * Input is ciphertext ‖ tag. Throws CryptoError code DECRYPT_FAILED when authentication
   * fails, including when `sealed` is shorter than a tag (what a truncated message looks like).
   */
  aes256GcmDecrypt(key: Uint8Array, nonce: Uint8Array, sealed: Uint8Array, aad?: Uint8Array): Uint8Array;

  /** A fresh X25519 key pair (raw 32-byte keys; the private key is stored clamped, as libsignal does). */
  x25519GenerateKeyPair(): KeyPair;
  /** The public key of a 32-byte private key. */
  x25519PublicKey(privateKey: Uint8Array): Uint8Array;
  /**
   * X25519(privateKey, publicKey). Throws CryptoError code INVALID_KEY when the result is
   * all zeros, i.e. the peer's key is a low-order point (RFC 7748 section 6.1).
   */
  x25519(privateKey: Uint8Array, publicKey: Uint8Array): Uint8Array;

  /**
   * libsignal's XEdDSA signature with an X25519 private key: 64 bytes, the sign bit of
   * the Edwards public key in bit 7 of byte 63. `random` (64 bytes) defaults to fresh randomness.
   */
  xeddsaSign(privateKey: Uint8Array, message: Uint8Array, random?: Uint8Array): Uint8Array;
  /** Verifies an XEdDSA signature against a raw 32-byte X25519 public key. Never throws on a bad signature. */
  xeddsaVerify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;

  /** RFC 8032 Ed25519 with a 32-byte seed. */
  ed25519PublicKey(seed: Uint8Array): Uint8Array;
  ed25519Sign(seed: Uint8Array, message: Uint8Array): Uint8Array;
  /** Never throws on a bad signature or a malformed public key; returns false. */
  ed25519Verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;

  /**
   * Kyber1024 (round 3, libsignal key type 0x08). `seed` (64 bytes, FIPS 203's d ‖ z) makes
   * it deterministic; it follows FIPS 203 key generation, so the same seed does not give
   * the key pair round-3 reference code would, but every key pair is a valid round-3 one.
   */
  kyber1024GenerateKeyPair(seed?: Uint8Array): KeyPair;
  /**
   * `random` (32 bytes) makes it deterministic, bit-identical to round-3 Kyber with those
   * coins. Throws INVALID_KEY for a public key with a coefficient >= q (FIPS 203 section 7.2).
   */
  kyber1024Encapsulate(publicKey: Uint8Array, random?: Uint8Array): KemEncapsulation;
  /**
   * Never throws for a bad ciphertext (implicit rejection gives an unrelated secret).
   * Throws INVALID_KEY for a secret key whose embedded H(ek) is wrong (FIPS 203 section 7.3).
   */
  kyber1024Decapsulate(secretKey: Uint8Array, ciphertext: Uint8Array): Uint8Array;

  /** Constant-time equality; false (not a throw) for different lengths. */
  constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean;
}
