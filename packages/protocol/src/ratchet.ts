/**
 * The key derivation functions of the Double Ratchet as libsignal instantiates them
 * (Signal's Double Ratchet specification, sections 2.2-2.4 and 5.2 "Recommended
 * cryptographic algorithms"), plus the one piece of SPQR (Signal's sparse post-quantum
 * ratchet) a peer that does not speak SPQR still needs: the epoch-0 key chain.
 *
 * - KDF_RK: HKDF-SHA256(salt = root key, ikm = DH output, info "WhisperRatchet") → 64
 *   bytes = new root key ‖ new chain key (libsignal `RootKey::create_chain`).
 * - KDF_CK: message key seed = HMAC-SHA256(ck, 0x01), next chain key = HMAC-SHA256(ck, 0x02)
 *   (libsignal `ChainKey`).
 * - Message keys: HKDF-SHA256(salt = zeros, or the SPQR message key when the sender mixed
 *   one in; ikm = seed; info "WhisperMessageKeys") → 80 bytes = AES-256 key ‖ HMAC key ‖ IV
 *   (libsignal `MessageKeys::derive_keys`).
 */
import { hkdfSha256, hmacSha256 } from '@qalqon/crypto';
import { ProtocolError } from './errors.js';

export const ROOT_KEY_LEN = 32;
export const CHAIN_KEY_LEN = 32;
export const MESSAGE_KEY_SEED_LEN = 32;
export const CIPHER_KEY_LEN = 32;
export const MAC_KEY_LEN = 32;
export const IV_LEN = 16;
/** An SPQR message key, used as the message-key HKDF salt by peers that negotiated SPQR. */
export const SPQR_KEY_LEN = 32;

const utf8 = (s: string): Uint8Array => new TextEncoder().encode(s);
const INFO_RATCHET = utf8('WhisperRatchet');
const INFO_MESSAGE_KEYS = utf8('WhisperMessageKeys');
const MESSAGE_KEY_SEED = Uint8Array.of(0x01);
const CHAIN_KEY_SEED = Uint8Array.of(0x02);
const EMPTY = new Uint8Array(0);

function checkLen(value: Uint8Array, length: number, label: string): void {
  if (!(value instanceof Uint8Array) || value.length !== length) {
    throw new ProtocolError(
      'INVALID_ARGUMENT',
      `"${label}" expected Uint8Array of length ${length}, got length=${(value as Uint8Array | undefined)?.length}`,
    );
  }
}

/** KDF_RK: the root-key step of a DH ratchet. Both outputs are fresh arrays. */
export function kdfRootKey(
  rootKey: Uint8Array,
  dhOutput: Uint8Array,
): { rootKey: Uint8Array; chainKey: Uint8Array } {
  checkLen(rootKey, ROOT_KEY_LEN, 'rootKey');
  checkLen(dhOutput, 32, 'dhOutput');
  const okm = hkdfSha256(dhOutput, rootKey, INFO_RATCHET, ROOT_KEY_LEN + CHAIN_KEY_LEN);
  return { rootKey: okm.subarray(0, ROOT_KEY_LEN), chainKey: okm.subarray(ROOT_KEY_LEN) };
}

/** KDF_CK, first half: the seed from which the message keys for this chain index are derived. */
export function messageKeySeed(chainKey: Uint8Array): Uint8Array {
  return hmacSha256(chainKey, MESSAGE_KEY_SEED);
}

/** KDF_CK, second half: the chain key for the next index. */
export function nextChainKey(chainKey: Uint8Array): Uint8Array {
  return hmacSha256(chainKey, CHAIN_KEY_SEED);
}

export interface MessageKeys {
  readonly cipherKey: Uint8Array;
  readonly macKey: Uint8Array;
  readonly iv: Uint8Array;
}

/**
 * The per-message keys from a chain's message-key seed. `spqrKey` is the SPQR message
 * key when the sender mixed one in (libsignal passes it as the HKDF salt); without it the
 * salt is empty, i.e. 32 zero bytes (RFC 5869 section 2.2).
 */
export function deriveMessageKeys(seed: Uint8Array, spqrKey?: Uint8Array): MessageKeys {
  checkLen(seed, MESSAGE_KEY_SEED_LEN, 'seed');
  if (spqrKey !== undefined) checkLen(spqrKey, SPQR_KEY_LEN, 'spqrKey');
  const okm = hkdfSha256(seed, spqrKey ?? EMPTY, INFO_MESSAGE_KEYS, CIPHER_KEY_LEN + MAC_KEY_LEN + IV_LEN);
  return {
    cipherKey: okm.subarray(0, CIPHER_KEY_LEN),
    macKey: okm.subarray(CIPHER_KEY_LEN, CIPHER_KEY_LEN + MAC_KEY_LEN),
    iv: okm.subarray(CIPHER_KEY_LEN + MAC_KEY_LEN),
  };
}

// ---------------------------------------------------------------------------------------
// SPQR, as far as a peer without it needs to know.
//
// libsignal 0.90.0 (spqr v1.5.1) starts every session with SPQR v1 "still negotiating"
// with `min_version: V0`. While negotiating, its SPQR has no key chain yet: every message
// it sends carries an SPQR v1 message with epoch 1 and key index 0, and *no* SPQR key is
// mixed into the message keys (spqr `send`: no chain → index 0, key None; `recv`: epoch 1
// and index 0 → no key). The chain only comes into being when the peer answers with an
// SPQR message of its own, which a Qalqon endpoint never sends; when libsignal instead
// receives a message without field 5 it downgrades to V0 for good and stops sending
// field 5. So from a peer that never heard SPQR from us, field 5 is either absent or a
// v1 header with epoch 1 and index 0, and the message keys never have an SPQR salt.
// ---------------------------------------------------------------------------------------

/** SPQR's protocol version byte for v1 messages (the first byte of a non-empty field 5). */
export const SPQR_V1 = 1;

/**
 * The header of an SPQR v1 message (spqr `v1::chunked::states::Message::serialize`):
 * version byte 1, epoch (LEB128 varint), key index (varint), message type byte, then an
 * optional chunk we never need. Throws INVALID_MESSAGE if it is not a v1 message.
 */
export function parseSpqrHeader(msg: Uint8Array): { epoch: number; index: number } {
  const bad = (): never => {
    throw new ProtocolError('INVALID_MESSAGE', 'malformed post-quantum ratchet message');
  };
  if (msg.length === 0 || msg[0] !== SPQR_V1) bad();
  let pos = 1;
  const varint = (): number => {
    let result = 0;
    let shift = 1;
    // At most 10 bytes in spqr's encoder; anything that does not fit 2^53 is not a key index or epoch we can hold.
    for (let i = 0; i < 8; i++) {
      if (pos >= msg.length) bad();
      const b = msg[pos++]!;
      result += (b & 0x7f) * shift;
      if ((b & 0x80) === 0) return result;
      shift *= 128;
    }
    return bad();
  };
  const epoch = varint();
  const index = varint();
  // The message type byte must follow (spqr rejects a header without it).
  if (pos >= msg.length || epoch === 0 || index > 0xffffffff) bad();
  return { epoch, index };
}
