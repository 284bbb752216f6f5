/**
 * The end-to-end handover of a user's identity to a new device through the server's link
 * slot. The server relays two opaque values and sees neither secret:
 *
 * 1. the new device puts its ephemeral X25519 public key in the slot (`request`) and shows
 *    the user the link code: the server's slot code, a dot, and a 128-bit commitment to the
 *    request (SHA-256, base64url). The commitment is what stops a server from swapping in a
 *    key of its own: the approving device checks the request it is served against it.
 * 2. the approving device answers with an ephemeral key of its own and the identity sealed
 *    with AES-256-GCM under HKDF-SHA256(X25519(ephemerals)), salted with the request and
 *    bound (as AAD) to both ephemeral keys.
 */
import {
  aes256GcmDecrypt,
  aes256GcmEncrypt,
  constantTimeEqual,
  hkdfSha256,
  randomBytes,
  sha256,
  x25519,
} from '@qalqon/crypto';
import { type CurveKeyPair, generateCurveKeyPair, parseCurveKey } from '@qalqon/protocol';
import { ClientError } from './errors.js';

const HANDOVER_INFO = new TextEncoder().encode('qalqon/link-handover/v1');
const COMMITMENT_DOMAIN = new TextEncoder().encode('qalqon/link-request/v1\0');
const COMMITMENT_LEN = 16;
const NONCE_LEN = 12;
const KEY_LEN = 33;

function commitment(request: Uint8Array): string {
  const h = new Uint8Array(COMMITMENT_DOMAIN.length + request.length);
  h.set(COMMITMENT_DOMAIN);
  h.set(request, COMMITMENT_DOMAIN.length);
  return Buffer.from(sha256(h).subarray(0, COMMITMENT_LEN)).toString('base64url');
}

function invalid(message: string): ClientError {
  return new ClientError('LINK_HANDOVER_INVALID', message);
}

/** The new device's side: an ephemeral key pair and the request to put in the slot. */
export function newLinkRequest(): { ephemeral: CurveKeyPair; request: Uint8Array } {
  const ephemeral = generateCurveKeyPair();
  return { ephemeral, request: ephemeral.publicKey.slice() };
}

/** The code the user carries to the approving device: slot code, '.', commitment to the request. */
export function linkCodeFor(slotCode: string, request: Uint8Array): string {
  return `${slotCode}.${commitment(request)}`;
}

/** Splits a user-typed link code into the server's slot code and the request commitment. */
export function splitLinkCode(linkCode: string): { slotCode: string; commitment: string } {
  const m =
    typeof linkCode === 'string' ? /^([\x21-\x7e]{16,200})\.([A-Za-z0-9_-]{22})$/.exec(linkCode) : null;
  if (!m) {
    throw new ClientError(
      'INVALID_ARGUMENT',
      '"linkCode" expected the code "qalqon link" printed (CODE.CHECK)',
    );
  }
  return { slotCode: m[1]!, commitment: m[2]! };
}

function key(shared: Uint8Array, request: Uint8Array): Uint8Array {
  return hkdfSha256(shared, sha256(request), HANDOVER_INFO, 32);
}

function aad(request: Uint8Array, approverKey: Uint8Array): Uint8Array {
  const out = new Uint8Array(request.length + approverKey.length);
  out.set(request);
  out.set(approverKey, request.length);
  return out;
}

/**
 * The approving device's side: checks the slot's request against the code's commitment,
 * then seals `secret` to it. Returns the handover for the slot.
 */
export function sealHandover(linkCode: string, request: Uint8Array, secret: Uint8Array): Uint8Array {
  const { commitment: expected } = splitLinkCode(linkCode);
  const enc = new TextEncoder();
  if (!constantTimeEqual(enc.encode(commitment(request)), enc.encode(expected))) {
    throw invalid(
      'the link request the server returned does not match the link code (a mistyped code, or a server substituting its own key); nothing was sent',
    );
  }
  if (request.length !== KEY_LEN) throw invalid('the link request is not a key');
  const theirs = parseCurveKey(request, 'request');
  const mine = generateCurveKeyPair();
  const nonce = randomBytes(NONCE_LEN);
  const k = key(x25519(mine.privateKey, theirs), request);
  const sealed = aes256GcmEncrypt(k, nonce, secret, aad(request, mine.publicKey));
  const out = new Uint8Array(KEY_LEN + NONCE_LEN + sealed.length);
  out.set(mine.publicKey);
  out.set(nonce, KEY_LEN);
  out.set(sealed, KEY_LEN + NONCE_LEN);
  return out;
}

/** The new device's side: opens the handover with its ephemeral key. */
export function openHandover(ephemeral: CurveKeyPair, request: Uint8Array, handover: Uint8Array): Uint8Array {
  if (!(handover instanceof Uint8Array) || handover.length < KEY_LEN + NONCE_LEN + 16) {
    throw invalid('the link handover is truncated');
  }
  const approverKey = handover.subarray(0, KEY_LEN);
  let theirs: Uint8Array;
  try {
    theirs = parseCurveKey(approverKey, 'approverKey');
  } catch {
    throw invalid('the link handover carries no valid key');
  }
  const nonce = handover.subarray(KEY_LEN, KEY_LEN + NONCE_LEN);
  try {
    const k = key(x25519(ephemeral.privateKey, theirs), request);
    return aes256GcmDecrypt(k, nonce, handover.subarray(KEY_LEN + NONCE_LEN), aad(request, approverKey));
  } catch {
    throw invalid('the link handover does not authenticate (tampered, or meant for another device)');
  }
}
