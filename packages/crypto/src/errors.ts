/**
 * The one error type of the crypto package. Messages name the argument and what was
 * wrong with its type or length; they never contain key, nonce or plaintext bytes.
 */
export type CryptoErrorCode =
  /** An argument had the wrong type or length (a programming error or hostile input). */
  | 'INVALID_ARGUMENT'
  /**
   * A key is not acceptable: a low-order X25519 peer key (all-zero shared secret), a Kyber
   * public key with out-of-range coefficients, or a Kyber secret key that fails its hash check.
   */
  | 'INVALID_KEY'
  /** Authenticated decryption failed, or CBC padding was wrong. Deliberately says no more. */
  | 'DECRYPT_FAILED';

export class CryptoError extends Error {
  readonly code: CryptoErrorCode;
  constructor(code: CryptoErrorCode, message: string) {
    super(message);
    this.name = 'CryptoError';
    this.code = code;
  }
}
