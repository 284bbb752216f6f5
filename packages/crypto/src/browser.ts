/**
 * @qalqon/crypto for browsers (the `browser` export condition): the same named functions
 * as `index.ts`, bound to the @noble backend, and no node:crypto import anywhere.
 * `nodeBackend` is deliberately absent here.
 */
import { nobleBackend } from './noble.js';
import type { CryptoBackend } from './types.js';

export * from './errors.js';
export { nobleBackend } from './noble.js';
export * from './types.js';

/** The backend the named functions below are bound to. */
export const backend: CryptoBackend = nobleBackend;

export const randomBytes = nobleBackend.randomBytes;
export const sha256 = nobleBackend.sha256;
export const sha512 = nobleBackend.sha512;
export const sha512Parts = nobleBackend.sha512Parts;
export const sha3_256 = nobleBackend.sha3_256;
export const shake256 = nobleBackend.shake256;
export const hmacSha256 = nobleBackend.hmacSha256;
export const hmacSha256Parts = nobleBackend.hmacSha256Parts;
export const hmacSha512 = nobleBackend.hmacSha512;
export const hkdfSha256 = nobleBackend.hkdfSha256;
export const aes256CbcEncrypt = nobleBackend.aes256CbcEncrypt;
export const aes256CbcDecrypt = nobleBackend.aes256CbcDecrypt;
export const aes256GcmEncrypt = nobleBackend.aes256GcmEncrypt;
export const aes256GcmEncryptInto = nobleBackend.aes256GcmEncryptInto;
export const aes256GcmDecrypt = nobleBackend.aes256GcmDecrypt;
export const x25519GenerateKeyPair = nobleBackend.x25519GenerateKeyPair;
export const x25519PublicKey = nobleBackend.x25519PublicKey;
export const x25519 = nobleBackend.x25519;
export const xeddsaSign = nobleBackend.xeddsaSign;
export const xeddsaVerify = nobleBackend.xeddsaVerify;
export const ed25519PublicKey = nobleBackend.ed25519PublicKey;
export const ed25519Sign = nobleBackend.ed25519Sign;
export const ed25519Verify = nobleBackend.ed25519Verify;
export const kyber1024GenerateKeyPair = nobleBackend.kyber1024GenerateKeyPair;
export const kyber1024Encapsulate = nobleBackend.kyber1024Encapsulate;
export const kyber1024Decapsulate = nobleBackend.kyber1024Decapsulate;
export const constantTimeEqual = nobleBackend.constantTimeEqual;
