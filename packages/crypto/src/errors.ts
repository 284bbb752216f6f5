/**
 * The one error type of the crypto package. Messages name the argument and what was
 * wrong with its type or length; they never contain key, nonce or plaintext bytes.
 */
export type CryptoErrorCode =
  /** An argument had the wrong type or length (a programming error or hostile input). */
  | 'INVALID_ARGUMENT'
  /** A public key is not acceptable: wrong encoding, or a low-order X25519 point. */
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
