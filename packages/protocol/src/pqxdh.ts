/**
 * PQXDH key agreement (Signal's PQXDH specification, revision 3, sections 3.3 and 3.4), as
 * libsignal 0.90.0 computes it in `ratchet::initialize_alice_session` /
 * `initialize_bob_session`:
 *
 *   IKM = 0xFF×32 ‖ DH(IK_A, SPK_B) ‖ DH(EK_A, IK_B) ‖ DH(EK_A, SPK_B) [‖ DH(EK_A, OPK_B)] ‖ SS
 *   HKDF-SHA256(salt = 0^32, IKM, "WhisperText_X25519_SHA-256_CRYSTALS-KYBER-1024", 96)
 *     = root key (32) ‖ first chain key (32) ‖ SPQR auth key (32)
 *
 * The leading 0xFF bytes are the spec's "F" (curve25519 discontinuity bytes). HKDF output
 * is prefix-consistent, so the first 64 bytes equal what libsignal ≤ 0.73 derived with a
 * 64-byte output; the last 32 seed SPQR and are used here only for SPQR's epoch-0 chain
 * (see ratchet.ts).
 */
import { CryptoError, hkdfSha256, kyber1024Decapsulate, kyber1024Encapsulate, x25519 } from '@qalqon/crypto';
import { parseCurveKey } from './curve.js';
import { ProtocolError } from './errors.js';
import {
  checkBytes,
  KYBER1024_TYPE,
  parseKyberPublicKey,
  type RandomBytes,
  SERIALIZED_KYBER_CIPHERTEXT_LEN,
} from './keys.js';

export const PQXDH_INFO = new TextEncoder().encode('WhisperText_X25519_SHA-256_CRYSTALS-KYBER-1024');
/** Root key ‖ chain key ‖ SPQR auth key. */
export const PQXDH_OUTPUT_LEN = 96;
const DISCONTINUITY = new Uint8Array(32).fill(0xff);
const ZERO_SALT = new Uint8Array(0);

export interface PqxdhSecrets {
  readonly rootKey: Uint8Array;
  readonly chainKey: Uint8Array;
  /** Seeds SPQR (libsignal's `InitialPQRKey`). */
  readonly spqrAuthKey: Uint8Array;
}

/** X25519 with a peer key from the network: a low-order point becomes INVALID_KEY. */
export function agree(privateKey: Uint8Array, publicKeyRaw: Uint8Array): Uint8Array {
  try {
    return x25519(privateKey, publicKeyRaw);
  } catch (err) {
    if (err instanceof CryptoError && err.code === 'INVALID_KEY') {
      throw new ProtocolError('INVALID_KEY', 'a peer public key is a low-order point', { cause: err });
    }
    throw err;
  }
}

/** Splits the 96-byte HKDF output of the concatenated secrets. */
export function deriveInitialSecrets(ikm: Uint8Array): PqxdhSecrets {
  const okm = hkdfSha256(ikm, ZERO_SALT, PQXDH_INFO, PQXDH_OUTPUT_LEN);
  return { rootKey: okm.subarray(0, 32), chainKey: okm.subarray(32, 64), spqrAuthKey: okm.subarray(64, 96) };
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let pos = 0;
  for (const p of parts) {
    out.set(p, pos);
    pos += p.length;
  }
  return out;
}

export interface PqxdhInitiatorInput {
  /** Our identity private key (32 bytes). */
  readonly identityPrivateKey: Uint8Array;
  /** Our fresh ephemeral ("base") private key (32 bytes). */
  readonly basePrivateKey: Uint8Array;
  /** Their keys in serialised form: 33, 33, 33 (optional), 1569 bytes. */
  readonly theirIdentityKey: Uint8Array;
  readonly theirSignedPreKey: Uint8Array;
  readonly theirOneTimePreKey?: Uint8Array | undefined;
  readonly theirKyberPreKey: Uint8Array;
}

/** The initiator's ("Alice's") half: the secrets and the Kyber ciphertext to send (`0x08 ‖ 1568`). */
export function pqxdhInitiate(
  input: PqxdhInitiatorInput,
  rng?: RandomBytes,
): { secrets: PqxdhSecrets; kyberCiphertext: Uint8Array } {
  checkBytes(input.identityPrivateKey, 32, 'identityPrivateKey');
  checkBytes(input.basePrivateKey, 32, 'basePrivateKey');
  const ik = parseCurveKey(input.theirIdentityKey, 'theirIdentityKey');
  const spk = parseCurveKey(input.theirSignedPreKey, 'theirSignedPreKey');
  const opk =
    input.theirOneTimePreKey === undefined
      ? undefined
      : parseCurveKey(input.theirOneTimePreKey, 'theirOneTimePreKey');
  const kyberPk = parseKyberPublicKey(input.theirKyberPreKey, 'theirKyberPreKey');

  const parts = [
    DISCONTINUITY,
    agree(input.identityPrivateKey, spk),
    agree(input.basePrivateKey, ik),
    agree(input.basePrivateKey, spk),
  ];
  if (opk !== undefined) parts.push(agree(input.basePrivateKey, opk));
  const kem = kyber1024Encapsulate(kyberPk, rng?.(32));
  parts.push(kem.sharedSecret);
  const kyberCiphertext = new Uint8Array(SERIALIZED_KYBER_CIPHERTEXT_LEN);
  kyberCiphertext[0] = KYBER1024_TYPE;
  kyberCiphertext.set(kem.ciphertext, 1);
  return { secrets: deriveInitialSecrets(concat(parts)), kyberCiphertext };
}

export interface PqxdhResponderInput {
  readonly identityPrivateKey: Uint8Array;
  readonly signedPreKeyPrivateKey: Uint8Array;
  readonly oneTimePreKeyPrivateKey?: Uint8Array | undefined;
  /** The 3168-byte Kyber1024 secret key. */
  readonly kyberSecretKey: Uint8Array;
  readonly theirIdentityKey: Uint8Array;
  readonly theirBaseKey: Uint8Array;
  /** `0x08 ‖ 1568 bytes`. */
  readonly kyberCiphertext: Uint8Array;
}

/**
 * libsignal refuses a base key that is not a canonical field element (high bit set, or
 * u ≥ 2^255 - 19), so two encodings of one key cannot name two sessions
 * (`PublicKey::is_canonical`). Its additional torsion check needs Edwards arithmetic that
 * the crypto API does not expose; X25519 clamping multiplies any torsion component away,
 * so skipping it changes no shared secret.
 */
export function isCanonicalCurveKey(raw: Uint8Array): boolean {
  if (raw.length !== 32) return false;
  if ((raw[31]! & 0x80) !== 0) return false;
  if (raw[31] !== 0x7f || raw[0]! < 0xed) return true;
  for (let i = 1; i < 31; i++) if (raw[i] !== 0xff) return true;
  return false;
}

/** The responder's ("Bob's") half. */
export function pqxdhRespond(input: PqxdhResponderInput): PqxdhSecrets {
  checkBytes(input.identityPrivateKey, 32, 'identityPrivateKey');
  checkBytes(input.signedPreKeyPrivateKey, 32, 'signedPreKeyPrivateKey');
  if (input.oneTimePreKeyPrivateKey !== undefined) {
    checkBytes(input.oneTimePreKeyPrivateKey, 32, 'oneTimePreKeyPrivateKey');
  }
  const ik = parseCurveKey(input.theirIdentityKey, 'theirIdentityKey');
  const ek = parseCurveKey(input.theirBaseKey, 'theirBaseKey');
  if (!isCanonicalCurveKey(ek)) throw new ProtocolError('INVALID_KEY', 'the base key is not canonical');
  const ct = input.kyberCiphertext;
  if (
    !(ct instanceof Uint8Array) ||
    ct.length !== SERIALIZED_KYBER_CIPHERTEXT_LEN ||
    ct[0] !== KYBER1024_TYPE
  ) {
    throw new ProtocolError('INVALID_KEY', 'the Kyber ciphertext is not a 0x08-typed Kyber1024 ciphertext');
  }

  const parts = [
    DISCONTINUITY,
    agree(input.signedPreKeyPrivateKey, ik),
    agree(input.identityPrivateKey, ek),
    agree(input.signedPreKeyPrivateKey, ek),
  ];
  if (input.oneTimePreKeyPrivateKey !== undefined) parts.push(agree(input.oneTimePreKeyPrivateKey, ek));
  // Kyber decapsulation never fails on a wrong ciphertext (implicit rejection, a
  // pseudo-random secret); the first message's MAC then fails.
  parts.push(kyber1024Decapsulate(input.kyberSecretKey, ct.subarray(1)));
  return deriveInitialSecrets(concat(parts));
}
