/**
 * Serialised Curve25519 keys as libsignal puts them on the wire: a type byte 0x05
 * ("DJB") followed by the 32-byte u-coordinate. Signatures in the protocol cover these
 * 33-byte forms, so every public key crosses the API in this shape.
 */
import { ProtocolError } from './errors.js';

export const DJB_TYPE = 0x05;
export const CURVE_KEY_LEN = 32;
export const SERIALIZED_CURVE_KEY_LEN = 33;

/** 32 raw bytes → 0x05 ‖ 32 bytes. */
export function serializeCurveKey(raw: Uint8Array): Uint8Array {
  if (!(raw instanceof Uint8Array) || raw.length !== CURVE_KEY_LEN) {
    throw new ProtocolError(
      'INVALID_ARGUMENT',
      `"publicKey" expected Uint8Array of length ${CURVE_KEY_LEN}, got length=${raw?.length}`,
    );
  }
  const out = new Uint8Array(SERIALIZED_CURVE_KEY_LEN);
  out[0] = DJB_TYPE;
  out.set(raw, 1);
  return out;
}

/**
 * 0x05 ‖ 32 bytes → the 32 raw bytes (a view, no copy). Throws INVALID_KEY for any other
 * length or type byte: this is the first check on a key that came from the network.
 */
export function parseCurveKey(serialized: Uint8Array, label = 'publicKey'): Uint8Array {
  if (!(serialized instanceof Uint8Array)) {
    throw new ProtocolError('INVALID_ARGUMENT', `"${label}" expected Uint8Array`);
  }
  if (serialized.length !== SERIALIZED_CURVE_KEY_LEN || serialized[0] !== DJB_TYPE) {
    throw new ProtocolError(
      'INVALID_KEY',
      `"${label}" expected a 33-byte Curve25519 key with type byte 0x05, got length=${serialized.length}`,
    );
  }
  return serialized.subarray(1);
}
