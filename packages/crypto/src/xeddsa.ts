/**
 * libsignal's XEdDSA: Ed25519-style signatures made directly with an X25519 private key.
 *
 * Shared by both backends. node:crypto cannot sign with a raw scalar (it only signs with
 * an RFC 8032 seed, which it hashes), so signing always uses @noble/curves point
 * arithmetic; the hash is injected so the node backend can use its native SHA-512.
 *
 * This follows libsignal (rust/core/src/curve/curve25519.rs), which differs from the
 * XEdDSA paper (https://signal.org/docs/specifications/xeddsa/) in two ways:
 *  - the private scalar is not negated to force the sign bit of A to 0; instead the sign
 *    bit of A is carried in bit 7 of signature byte 63 (always 0 in s, since s < L < 2^253);
 *  - the nonce hash is `SHA-512(0xFE ‖ 0xFF×31 ‖ k ‖ M ‖ Z)` with `k` the clamped private key
 *    bytes (the paper's hash_1 prefix, section 2.5 and 5), and `a = k mod L`.
 * Verification mirrors libsignal check by check; see `decodeXeddsa`.
 *
 * Only functions that take already-validated arguments live here; validation is the
 * backends' job.
 */
import { ed25519 } from '@noble/curves/ed25519.js';
import { bytesToNumberLE, numberToBytesLE } from '@noble/curves/utils.js';

export type Sha512Parts = (parts: readonly Uint8Array[]) => Uint8Array;

const Point = ed25519.Point;
/** The prime of GF(2^255 - 19) (RFC 7748 section 4.1). */
const P = Point.Fp.ORDER;
/** The order L of the prime-order subgroup (RFC 8032 section 5.1). */
const L = Point.Fn.ORDER;

/** hash_1 domain separator: 2^256 - 1 - 1 as 32 little-endian bytes (XEdDSA paper, section 2.5). */
const NONCE_PREFIX = /* @__PURE__ */ (() => {
  const prefix = new Uint8Array(32).fill(0xff);
  prefix[0] = 0xfe;
  return prefix;
})();

/** RFC 7748 section 5 clamping ("decodeScalar25519"), into a fresh copy. */
export function clampScalar(privateKey: Uint8Array): Uint8Array {
  const k = Uint8Array.from(privateKey);
  k[0] = k[0]! & 248;
  k[31] = (k[31]! & 127) | 64;
  return k;
}

function modL(bytes: Uint8Array): bigint {
  return bytesToNumberLE(bytes) % L;
}

/**
 * Signs `message` with the X25519 private key (clamped first, as libsignal stores it).
 * `random` is the 64-byte Z of the paper.
 */
export function xeddsaSign(
  sha512Parts: Sha512Parts,
  privateKey: Uint8Array,
  message: Uint8Array,
  random: Uint8Array,
): Uint8Array {
  const k = clampScalar(privateKey);
  // a = k mod L is never 0: k is in [2^254, 2^255) and a multiple of 8, while the only
  // multiples of the odd L in that range are 4L..7L.
  const a = modL(k);
  const capA = Point.BASE.multiply(a).toBytes();
  const signBit = capA[31]! & 0x80;
  // r = hash_1(k ‖ M ‖ Z) mod L. It is 0 only with probability 2^-252; `multiply` would throw.
  const r = modL(sha512Parts([NONCE_PREFIX, k, message, random]));
  k.fill(0);
  const capR = Point.BASE.multiply(r).toBytes();
  // h = SHA-512(R ‖ A ‖ M) mod L; s = r + h·a mod L (RFC 8032 section 5.1.6 steps 4-5).
  const h = modL(sha512Parts([capR, capA, message]));
  const s = (r + h * a) % L;
  const signature = new Uint8Array(64);
  signature.set(capR, 0);
  signature.set(numberToBytesLE(s, 32), 32);
  signature[63] = (signature[63]! & 0x7f) | signBit;
  return signature;
}

/** An XEdDSA signature and public key, turned into an ordinary Ed25519 verification problem. */
export interface DecodedXeddsa {
  /** Canonical encoding of the Edwards public key A (what is hashed). */
  readonly publicKey: Uint8Array;
  /** R ‖ s with the sign bit removed and s reduced mod L. */
  readonly signature: Uint8Array;
}

/**
 * Applies libsignal's pre-checks and conversions, or returns undefined where libsignal
 * rejects before doing any curve arithmetic:
 *  - u is read as a field element the way curve25519-dalek does: bit 255 ignored, values
 *    >= p reduced (RFC 7748 section 5 says the same for X25519 inputs);
 *  - u = -1 has no Edwards image (the denominator of y = (u-1)/(u+1) is 0) → reject;
 *  - the Edwards y is (u-1)/(u+1) (RFC 7748 section 4.1 birational map) with the sign bit
 *    taken from signature bit 511;
 *  - u = 0 maps to y = -1, whose x is 0: libsignal decodes that with either sign bit and
 *    hashes the canonical re-encoding (sign 0), so the sign bit is dropped here;
 *  - the sign bit is cleared from s; libsignal then rejects s >= 2^253 but, unlike
 *    RFC 8032, accepts L <= s < 2^253 and reduces it mod L, so it is reduced here.
 * Whether y is on the curve at all (u may be on the twist) is left to the Ed25519 decoder.
 */
export function decodeXeddsa(montgomeryU: Uint8Array, signature: Uint8Array): DecodedXeddsa | undefined {
  const uBytes = Uint8Array.from(montgomeryU);
  uBytes[31] = uBytes[31]! & 0x7f;
  const u = bytesToNumberLE(uBytes) % P;
  if (u === P - 1n) return undefined;
  const y = Point.Fp.div(Point.Fp.sub(u, 1n), Point.Fp.add(u, 1n));
  const publicKey = numberToBytesLE(y, 32);
  const signBit = signature[63]! & 0x80;
  if (u !== 0n) publicKey[31] = publicKey[31]! | signBit;

  const out = Uint8Array.from(signature);
  out[63] = out[63]! & 0x7f;
  if ((out[63] & 0xe0) !== 0) return undefined;
  const s = bytesToNumberLE(out.subarray(32));
  if (s >= L) out.set(numberToBytesLE(s % L, 32), 32);
  return { publicKey, signature: out };
}

/**
 * Cofactorless Ed25519 verification with a byte comparison of R, which is what both
 * libsignal's XEdDSA (curve25519-dalek) and OpenSSL's Ed25519 do (RFC 8032 section 5.1.7
 * notes the cofactorless check is sufficient): require s < L, decode A as ref10 does (see
 * `decodePointLikeRef10`), hash R ‖ A ‖ M with A's bytes as given, and accept iff
 * encode([s]B - [h]A) equals the R bytes. A non-canonical or off-curve R can never equal a
 * canonical encoding, so it is rejected without being decoded. Used by the noble backend
 * for both XEdDSA and Ed25519, so that it accepts exactly what OpenSSL accepts (checked by
 * Wycheproof and by a table of small-order and non-canonical keys in xeddsa.test.ts).
 */
export function verifyCofactorless(
  sha512Parts: Sha512Parts,
  publicKey: Uint8Array,
  message: Uint8Array,
  signature: Uint8Array,
): boolean {
  const capRBytes = signature.subarray(0, 32);
  const s = bytesToNumberLE(signature.subarray(32, 64));
  if (s >= L) return false;
  let capA: InstanceType<typeof Point>;
  try {
    capA = decodePointLikeRef10(publicKey);
  } catch {
    return false;
  }
  const h = modL(sha512Parts([capRBytes, publicKey, message]));
  const check = Point.BASE.multiplyUnsafe(s).subtract(capA.multiplyUnsafe(h)).toBytes();
  let diff = 0;
  for (let i = 0; i < 32; i++) diff |= check[i]! ^ capRBytes[i]!;
  return diff === 0;
}

/**
 * Point decoding as ref10-derived code (OpenSSL, curve25519-dalek) does it: bit 255 is the
 * sign of x, the other 255 bits are y reduced mod p (so y >= p is accepted), y must give a
 * square x^2, and x = 0 with the sign bit set is accepted as x = 0. That is exactly noble's
 * ZIP-215 decoding, which is stricter than nothing and laxer than RFC 8032 section 5.1.3.
 * The challenge hash still uses the bytes as given, as OpenSSL does.
 */
function decodePointLikeRef10(bytes: Uint8Array): InstanceType<typeof Point> {
  return Point.fromBytes(bytes, true);
}
