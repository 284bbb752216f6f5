/**
 * @qalqon/crypto for Node: the API of `types.ts` bound to the node:crypto backend.
 * Bundlers resolving the `browser` condition get `browser.ts` instead, with the same
 * names bound to the @noble backend. Both backends are exported by name as well, for
 * tests and for callers who want to choose.
 */
import { nodeBackend } from './node.js';
import type { CryptoBackend } from './types.js';

export * from './errors.js';
export { nobleBackend } from './noble.js';
export { nodeBackend } from './node.js';
export * from './types.js';

/** The backend the named functions below are bound to. */
export const backend: CryptoBackend = nodeBackend;

export const randomBytes = nodeBackend.randomBytes;
export const sha256 = nodeBackend.sha256;
export const sha512 = nodeBackend.sha512;
export const sha512Parts = nodeBackend.sha512Parts;
export const sha3_256 = nodeBackend.sha3_256;
export const shake256 = nodeBackend.shake256;
export const hmacSha256 = nodeBackend.hmacSha256;
export const hmacSha256Parts = nodeBackend.hmacSha256Parts;
export const hmacSha512 = nodeBackend.hmacSha512;
export const hkdfSha256 = nodeBackend.hkdfSha256;
export const aes256CbcEncrypt = nodeBackend.aes256CbcEncrypt;
export const aes256CbcDecrypt = nodeBackend.aes256CbcDecrypt;
export const aes256GcmEncrypt = nodeBackend.aes256GcmEncrypt;
export const aes256GcmEncryptInto = nodeBackend.aes256GcmEncryptInto;
export const aes256GcmDecrypt = nodeBackend.aes256GcmDecrypt;
export const x25519GenerateKeyPair = nodeBackend.x25519GenerateKeyPair;
export const x25519PublicKey = nodeBackend.x25519PublicKey;
export const x25519 = nodeBackend.x25519;
export const xeddsaSign = nodeBackend.xeddsaSign;
export const xeddsaVerify = nodeBackend.xeddsaVerify;
export const ed25519PublicKey = nodeBackend.ed25519PublicKey;
export const ed25519Sign = nodeBackend.ed25519Sign;
export const ed25519Verify = nodeBackend.ed25519Verify;
export const kyber1024GenerateKeyPair = nodeBackend.kyber1024GenerateKeyPair;
export const kyber1024Encapsulate = nodeBackend.kyber1024Encapsulate;
export const kyber1024Decapsulate = nodeBackend.kyber1024Decapsulate;
export const constantTimeEqual = nodeBackend.constantTimeEqual;
