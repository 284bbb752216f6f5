/**
 * Size and count limits of the client↔server contract. Both sides use the same constants:
 * the server refuses anything larger before parsing it further, and a client never sends
 * what the server would refuse.
 */

/** Largest JSON body of an ordinary HTTP request (enrolment with a full prekey batch fits). */
export const MAX_HTTP_BODY_BYTES = 64 * 1024;
/** Largest JSON body of `POST /v1/messages` (a batch of envelopes, base64-encoded). */
export const MAX_SEND_BODY_BYTES = 2 * 1024 * 1024;
/** Largest WebSocket frame either side accepts. */
export const MAX_FRAME_BYTES = 2 * 1024 * 1024;
/** Largest envelope body (ciphertext), bytes after base64 decoding. Matches the storage limit. */
export const MAX_ENVELOPE_BYTES = 256 * 1024;
/** Envelopes in one send (one per recipient device, so a message to a user with many devices fits). */
export const MAX_SEND_BATCH = 64;
/** Envelope ids in one ack frame. */
export const MAX_ACK_IDS = 1000;
/** One-time prekeys in one upload (enrolment, linking or replenishment). */
export const MAX_PREKEYS_PER_UPLOAD = 100;
/** Device label, UTF-16 code units. */
export const MAX_DEVICE_NAME_LEN = 128;
/** User and role names, `[a-z0-9][a-z0-9._-]*`. */
export const MAX_USER_NAME_LEN = 64;
/** Enrolment and link codes: printable ASCII. */
export const MIN_CODE_LEN = 16;
export const MAX_CODE_LEN = 256;
/** Client request ids echoed in replies. */
export const MAX_REQUEST_ID_LEN = 64;
/** The linking handshake's opaque blobs: the new device's request and the end-to-end encrypted handover. */
export const MAX_LINK_REQUEST_BYTES = 4 * 1024;
export const MAX_LINK_HANDOVER_BYTES = 16 * 1024;
/** Error messages the server sends are truncated to this many characters. */
export const MAX_ERROR_MESSAGE_LEN = 512;

/** Key and signature sizes of libsignal's serialised forms. */
export const EC_PUBLIC_KEY_LEN = 33;
export const EC_KEY_TYPE = 0x05;
export const KYBER_PUBLIC_KEY_LEN = 1569;
export const KYBER_KEY_TYPE = 0x08;
export const SIGNATURE_LEN = 64;
/** Device-authentication challenges, bytes. */
export const CHALLENGE_LEN = 32;
/** libsignal ids. */
export const MAX_PREKEY_ID = 0xffffff;
export const MAX_REGISTRATION_ID = 16380;
export const MAX_DEVICE_ID = 0x7fffffff;

/**
 * What a device signs to authenticate: this domain string, then the challenge, the user id
 * and the device id (see `authChallengeMessage`). The domain keeps an auth signature from
 * ever being valid as a prekey signature or anything else the same key might sign.
 */
export const AUTH_SIGNATURE_DOMAIN = 'qalqon/device-auth/v1';

/**
 * The bytes a device signs to authenticate (XEdDSA with its auth key):
 * AUTH_SIGNATURE_DOMAIN ‖ 0x00 ‖ challenge ‖ userId (ASCII hex) ‖ deviceId (uint32 big-endian).
 * Binding the user and device stops a signature for one device being replayed for another.
 */
export function authChallengeMessage(challenge: Uint8Array, userId: string, deviceId: number): Uint8Array {
  if (!(challenge instanceof Uint8Array) || challenge.length !== CHALLENGE_LEN) {
    throw new TypeError(`"challenge" expected Uint8Array of length ${CHALLENGE_LEN}`);
  }
  if (typeof userId !== 'string' || !/^[0-9a-f]{32}$/.test(userId)) {
    throw new TypeError('"userId" expected 32 lower-case hex digits');
  }
  if (!Number.isSafeInteger(deviceId) || deviceId < 1 || deviceId > MAX_DEVICE_ID) {
    throw new TypeError(`"deviceId" expected integer in [1, ${MAX_DEVICE_ID}]`);
  }
  const enc = new TextEncoder();
  const domain = enc.encode(AUTH_SIGNATURE_DOMAIN);
  const user = enc.encode(userId);
  const out = new Uint8Array(domain.length + 1 + CHALLENGE_LEN + user.length + 4);
  out.set(domain, 0);
  let o = domain.length + 1;
  out.set(challenge, o);
  o += CHALLENGE_LEN;
  out.set(user, o);
  o += user.length;
  new DataView(out.buffer).setUint32(o, deviceId, false);
  return out;
}
