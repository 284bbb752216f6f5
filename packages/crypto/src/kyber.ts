/**
 * Kyber1024 as libsignal uses it (key type 0x08): round-3 CRYSTALS-Kyber, built from
 * @noble/post-quantum's ML-KEM-1024 (FIPS 203), which is the same lattice scheme with
 * the same key, secret-key and ciphertext encodings but a different final key derivation.
 *
 * Round 3 (Kyber specification v3.02, Algorithms 8 and 9; the reference `crypto_kem_enc`):
 *   m = H(coins); (K̄, r) = G(m ‖ H(pk)); c = Enc(pk, m; r); K = KDF(K̄ ‖ H(c))
 * FIPS 203 ML-KEM.Encaps_internal (Algorithm 17):
 *   (K, r) = G(m ‖ H(ek)); c = K-PKE.Encrypt(ek, m, r); return K
 * with H = SHA3-256, G = SHA3-512 and KDF = SHAKE-256 (32 bytes) in both. So calling
 * ML-KEM with m = SHA3-256(coins) gives round 3's K̄ and c exactly, and
 * K = SHAKE-256(K̄ ‖ SHA3-256(c))[0..32] finishes the round-3 derivation; encapsulation
 * is then bit-identical to round-3 Kyber for the same 32 bytes of coins.
 *
 * Decapsulation of a valid ciphertext re-derives K̄ and gives the same K. The two
 * standards differ only in implicit rejection (an invalid ciphertext yields round 3's
 * KDF(z ‖ H(c)) versus ML-KEM's J(z ‖ c), both pseudorandom), which no honest peer
 * can observe. Key generation from a seed follows FIPS 203 (G(d ‖ k) rather than
 * round 3's G(d)), so a seed does not reproduce round-3 keys, but every key pair is a
 * valid round-3 key pair. ML-KEM's input checks are kept: encapsulation rejects a public
 * key with a coefficient >= q (FIPS 203 section 7.2), decapsulation a secret key whose
 * embedded H(ek) is wrong (section 7.3).
 *
 * The hashes for the adapter are injected so the node backend can use OpenSSL's SHA-3.
 */
import { ml_kem1024 } from '@noble/post-quantum/ml-kem.js';
import { CryptoError } from './errors.js';
import type { KemEncapsulation, KeyPair } from './types.js';
import { KYBER_SHARED_SECRET_LEN } from './types.js';

export interface Sha3 {
  sha3_256(data: Uint8Array): Uint8Array;
  shake256(data: Uint8Array, outputLength: number): Uint8Array;
}

/** Round 3's KDF(K̄ ‖ H(c)), with H = SHA3-256 and KDF = SHAKE-256 to 32 bytes. */
function roundThreeKdf(sha3: Sha3, kBar: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  const input = new Uint8Array(64);
  input.set(kBar, 0);
  input.set(sha3.sha3_256(ciphertext), 32);
  const sharedSecret = sha3.shake256(input, KYBER_SHARED_SECRET_LEN);
  input.fill(0);
  return sharedSecret;
}

/** `seed` is FIPS 203's d ‖ z (64 bytes), already validated. */
export function kyber1024GenerateKeyPair(seed: Uint8Array): KeyPair {
  const { publicKey, secretKey } = ml_kem1024.keygen(seed);
  return { privateKey: secretKey, publicKey };
}

/** `coins` is 32 bytes, already validated, like `publicKey`'s length. */
export function kyber1024Encapsulate(sha3: Sha3, publicKey: Uint8Array, coins: Uint8Array): KemEncapsulation {
  // Round 3 hashes the coins first "to not release system RNG output" (reference kem.c).
  const m = sha3.sha3_256(coins);
  let encapsulated: { cipherText: Uint8Array; sharedSecret: Uint8Array };
  try {
    encapsulated = ml_kem1024.encapsulate(publicKey, m);
  } catch {
    // The only failure left after the length check: FIPS 203 section 7.2 modulus check.
    throw new CryptoError('INVALID_KEY', '"publicKey" is not a valid Kyber1024 public key');
  } finally {
    m.fill(0);
  }
  const sharedSecret = roundThreeKdf(sha3, encapsulated.sharedSecret, encapsulated.cipherText);
  encapsulated.sharedSecret.fill(0);
  return { ciphertext: encapsulated.cipherText, sharedSecret };
}

/** Lengths already validated. */
export function kyber1024Decapsulate(sha3: Sha3, secretKey: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  let kBar: Uint8Array;
  try {
    kBar = ml_kem1024.decapsulate(ciphertext, secretKey);
  } catch {
    // The only failure left after the length checks: FIPS 203 section 7.3 hash check.
    throw new CryptoError('INVALID_KEY', '"secretKey" is not a valid Kyber1024 secret key');
  }
  const sharedSecret = roundThreeKdf(sha3, kBar, ciphertext);
  kBar.fill(0);
  return sharedSecret;
}
