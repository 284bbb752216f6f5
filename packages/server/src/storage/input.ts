/**
 * Argument checks shared by every storage backend, so each one refuses exactly the same
 * input with exactly the same codes before touching its database. Shapes only: prekey
 * signatures are verified by the service layer, which knows the identity key's meaning.
 */
import { KYBER1024_PUBLIC_KEY_LEN, X25519_KEY_LEN, XEDDSA_SIGNATURE_LEN } from '@qalqon/crypto';
import { ServerError } from '../errors.js';
import { aarray, abytes, aint, aobject, astring, ID_LEN, ID_PATTERN, NAME_PATTERN } from '../validate.js';
import type { NewDevice, NewEnvelope, OneTimePrekey, SignedPrekey, StorageLimits } from './types.js';

/** libsignal's type byte before a serialised Curve25519 public key. */
export const EC_KEY_TYPE = 0x05;
/** libsignal's type byte before a serialised Kyber1024 public key. */
export const KYBER_KEY_TYPE = 0x08;
export const EC_PUBLIC_KEY_LEN = 1 + X25519_KEY_LEN;
export const KYBER_PUBLIC_KEY_LEN = 1 + KYBER1024_PUBLIC_KEY_LEN;
/** libsignal prekey ids are 24-bit. */
export const MAX_PREKEY_ID = 0xffffff;
/** libsignal registration ids: 14 bits, 0 reserved. */
export const MAX_REGISTRATION_ID = 16380;
export const MAX_DEVICE_ID = 0x7fffffff;
export const MAX_NAME_LEN = 64;
export const MAX_ROLES = 32;
export const MAX_DEVICE_NAME_LEN = 128;
/** Enrolment codes: printable ASCII, long enough to carry >= 80 bits in any sane alphabet. */
export const MIN_CODE_LEN = 16;
export const MAX_CODE_LEN = 256;
export const CODE_PATTERN = /^[\x21-\x7e]+$/;
/** Envelopes per enqueue call (a fan-out larger than this is split by the caller). */
export const MAX_ENQUEUE_BATCH = 10_000;
/** Envelopes per fetch, and ids per ack. */
export const MAX_FETCH = 1000;
export const DEFAULT_FETCH = 100;

export function checkUserId(label: string, v: unknown): string {
  return astring(label, v, ID_LEN, ID_LEN, ID_PATTERN);
}

export function checkDeviceId(label: string, v: unknown): number {
  return aint(label, v, 1, MAX_DEVICE_ID);
}

export function checkUserName(label: string, v: unknown): string {
  return astring(label, v, 1, MAX_NAME_LEN, NAME_PATTERN);
}

export function checkRoles(label: string, v: unknown): string[] {
  const roles = aarray(label, v, 0, MAX_ROLES).map((r, i) => checkUserName(`${label}[${i}]`, r));
  return [...new Set(roles)].sort();
}

function typedKey(label: string, v: unknown, len: number, type: number): Uint8Array {
  const b = abytes(label, v, len);
  if (b[0] !== type)
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected type byte ${type}, got ${b[0]}`);
  return b;
}

export function checkIdentityKey(label: string, v: unknown): Uint8Array {
  return typedKey(label, v, EC_PUBLIC_KEY_LEN, EC_KEY_TYPE);
}

export function checkSignedPrekey(label: string, v: unknown, kind: 'ec' | 'kyber'): SignedPrekey {
  const o = aobject(label, v);
  return {
    id: aint(`${label}.id`, o.id, 0, MAX_PREKEY_ID),
    publicKey:
      kind === 'ec'
        ? typedKey(`${label}.publicKey`, o.publicKey, EC_PUBLIC_KEY_LEN, EC_KEY_TYPE)
        : typedKey(`${label}.publicKey`, o.publicKey, KYBER_PUBLIC_KEY_LEN, KYBER_KEY_TYPE),
    signature: abytes(`${label}.signature`, o.signature, XEDDSA_SIGNATURE_LEN),
  };
}

/** Checks a prekey upload; a repeated id within it is PREKEY_EXISTS, like one already stored. */
export function checkOneTimePrekeys(label: string, v: unknown, min: number, max: number): OneTimePrekey[] {
  const list = aarray(label, v, min, max);
  const seen = new Set<number>();
  return list.map((p, i) => {
    const o = aobject(`${label}[${i}]`, p);
    const id = aint(`${label}[${i}].id`, o.id, 0, MAX_PREKEY_ID);
    if (seen.has(id)) throw new ServerError('PREKEY_EXISTS', `"${label}" repeats prekey id ${id}`);
    seen.add(id);
    return {
      id,
      publicKey: typedKey(`${label}[${i}].publicKey`, o.publicKey, EC_PUBLIC_KEY_LEN, EC_KEY_TYPE),
    };
  });
}

export function checkNewDevice(label: string, v: unknown, limits: StorageLimits): NewDevice {
  const o = aobject(label, v);
  return {
    name: astring(`${label}.name`, o.name, 1, MAX_DEVICE_NAME_LEN),
    registrationId: aint(`${label}.registrationId`, o.registrationId, 1, MAX_REGISTRATION_ID),
    identityKey: checkIdentityKey(`${label}.identityKey`, o.identityKey),
    signedPrekey: checkSignedPrekey(`${label}.signedPrekey`, o.signedPrekey, 'ec'),
    kyberPrekey: checkSignedPrekey(`${label}.kyberPrekey`, o.kyberPrekey, 'kyber'),
    oneTimePrekeys: checkOneTimePrekeys(
      `${label}.oneTimePrekeys`,
      o.oneTimePrekeys,
      0,
      limits.maxOneTimePrekeysPerDevice,
    ),
    ...(o.authKey === undefined ? {} : { authKey: checkIdentityKey(`${label}.authKey`, o.authKey) }),
  };
}

export function checkEnvelopes(label: string, v: unknown, limits: StorageLimits): NewEnvelope[] {
  return aarray(label, v, 1, MAX_ENQUEUE_BATCH).map((e, i) => {
    const l = `${label}[${i}]`;
    const o = aobject(l, e);
    const body = abytes(`${l}.body`, o.body);
    if (body.length === 0) throw new ServerError('INVALID_ARGUMENT', `"${l}.body" is empty`);
    if (body.length > limits.maxEnvelopeBytes) {
      throw new ServerError(
        'ENVELOPE_TOO_LARGE',
        `"${l}.body" is ${body.length} bytes; the limit is ${limits.maxEnvelopeBytes}`,
      );
    }
    return {
      recipientUserId: checkUserId(`${l}.recipientUserId`, o.recipientUserId),
      recipientDeviceId: checkDeviceId(`${l}.recipientDeviceId`, o.recipientDeviceId),
      senderUserId: checkUserId(`${l}.senderUserId`, o.senderUserId),
      senderDeviceId: checkDeviceId(`${l}.senderDeviceId`, o.senderDeviceId),
      body,
    };
  });
}

export function checkEnvelopeIds(label: string, v: unknown): string[] {
  return aarray(label, v, 0, MAX_FETCH).map((id, i) =>
    astring(`${label}[${i}]`, id, ID_LEN, ID_LEN, ID_PATTERN),
  );
}

/** Merges caller limits over the defaults, each a positive safe integer. */
export function checkLimits(defaults: StorageLimits, v: Partial<StorageLimits> | undefined): StorageLimits {
  if (v === undefined) return defaults;
  const o = aobject('limits', v);
  const out: Record<string, number> = { ...defaults };
  for (const k of Object.keys(o)) {
    if (!(k in defaults)) throw new ServerError('INVALID_ARGUMENT', `"limits.${k}" is not a known limit`);
    if (o[k] !== undefined) out[k] = aint(`limits.${k}`, o[k], 1, Number.MAX_SAFE_INTEGER);
  }
  return out as unknown as StorageLimits;
}

/** The arguments of `createEnrolmentCode`, checked: a code of the right shape that expires after `now`. */
export function checkNewEnrolmentCode(
  input: unknown,
  now: number,
): { userId: string; code: string; expiresAt: number } {
  const o = aobject('input', input);
  return {
    userId: checkUserId('input.userId', o.userId),
    code: astring('input.code', o.code, MIN_CODE_LEN, MAX_CODE_LEN, CODE_PATTERN),
    expiresAt: aint('input.expiresAt', o.expiresAt, now + 1, Number.MAX_SAFE_INTEGER),
  };
}

/** The one answer for every code that does not enrol: unknown, expired, used or malformed alike. */
export function enrolmentCodeInvalid(): ServerError {
  return new ServerError('ENROLMENT_CODE_INVALID', 'the enrolment code is not valid');
}

/**
 * The arguments of `enrolDevice`, checked. A code of the wrong shape is simply not a valid
 * code: it gets the same opaque ENROLMENT_CODE_INVALID as any other, not an argument error.
 */
export function checkEnrolment(input: unknown, limits: StorageLimits): { code: string; device: NewDevice } {
  const o = aobject('input', input);
  const code = astring('input.code', o.code, 0, 4096);
  const device = checkNewDevice('input.device', o.device, limits);
  if (code.length < MIN_CODE_LEN || code.length > MAX_CODE_LEN || !CODE_PATTERN.test(code)) {
    throw enrolmentCodeInvalid();
  }
  return { code, device };
}

/** Whether a device queue holding `queued` may take `add` more envelopes within the limits. */
export function fitsQueueLimits(
  limits: StorageLimits,
  queued: { readonly queued_count: number; readonly queued_bytes: number },
  add: { readonly count: number; readonly bytes: number },
): boolean {
  return (
    queued.queued_count + add.count <= limits.maxQueuedPerDevice &&
    queued.queued_bytes + add.bytes <= limits.maxQueuedBytesPerDevice
  );
}
