/**
 * Building blocks of the schemas: ids, names, keys, codes. Binary values travel as padded
 * standard base64 strings; each schema checks the string's length before decoding (so a
 * huge string costs nothing) and the decoded length and type byte after. Parsed values are
 * Uint8Arrays; `z.input<>` of a schema is its JSON form, `z.output<>` the decoded one.
 */
import { z } from 'zod';
import { base64Length, decodeBase64 } from './base64.js';
import {
  EC_KEY_TYPE,
  EC_PUBLIC_KEY_LEN,
  KYBER_KEY_TYPE,
  KYBER_PUBLIC_KEY_LEN,
  MAX_CODE_LEN,
  MAX_DEVICE_ID,
  MAX_PREKEY_ID,
  MAX_REGISTRATION_ID,
  MAX_REQUEST_ID_LEN,
  MAX_USER_NAME_LEN,
  MIN_CODE_LEN,
  SIGNATURE_LEN,
} from './limits.js';

/** Base64 of `min`..`max` bytes (optionally with a leading type byte), decoded to a Uint8Array. */
export function bytes(min: number, max: number = min, typeByte?: number) {
  return z
    .string()
    .max(base64Length(max))
    .transform((s, ctx) => {
      const b = decodeBase64(s);
      if (b === undefined) {
        ctx.addIssue({ code: 'custom', message: 'expected canonical padded base64' });
        return z.NEVER;
      }
      if (b.length < min || b.length > max) {
        ctx.addIssue({
          code: 'custom',
          message:
            min === max
              ? `expected ${min} bytes, got ${b.length}`
              : `expected ${min}..${max} bytes, got ${b.length}`,
        });
        return z.NEVER;
      }
      if (typeByte !== undefined && b[0] !== typeByte) {
        ctx.addIssue({ code: 'custom', message: `expected type byte ${typeByte}, got ${b[0]}` });
        return z.NEVER;
      }
      return b;
    });
}

/** Server-generated ids (users, envelopes): 32 lower-case hex digits. */
export const Id = z.string().regex(/^[0-9a-f]{32}$/, 'expected 32 lower-case hex digits');
export const UserId = Id;
export const EnvelopeId = Id;
export const UserName = z
  .string()
  .min(1)
  .max(MAX_USER_NAME_LEN)
  .regex(/^[a-z0-9][a-z0-9._-]*$/, 'expected [a-z0-9][a-z0-9._-]*');
export const RoleName = UserName;
export const DeviceId = z.int().min(1).max(MAX_DEVICE_ID);
export const PrekeyId = z.int().min(0).max(MAX_PREKEY_ID);
export const RegistrationId = z.int().min(1).max(MAX_REGISTRATION_ID);
/** Milliseconds since the epoch. */
export const Timestamp = z.int().min(0);
export const Count = z.int().min(0);
/** Enrolment and link codes: printable ASCII. Never echoed in errors. */
export const Code = z
  .string()
  .min(MIN_CODE_LEN)
  .max(MAX_CODE_LEN)
  .regex(/^[\x21-\x7e]+$/, 'expected printable ASCII');
/** A client's request id, echoed in the reply frame. */
export const RequestId = z.string().min(1).max(MAX_REQUEST_ID_LEN);

/** libsignal's serialised Curve25519 public key: 0x05 ‖ 32 bytes. */
export const EcPublicKey = bytes(EC_PUBLIC_KEY_LEN, EC_PUBLIC_KEY_LEN, EC_KEY_TYPE);
/** libsignal's serialised Kyber1024 public key: 0x08 ‖ 1568 bytes. */
export const KyberPublicKey = bytes(KYBER_PUBLIC_KEY_LEN, KYBER_PUBLIC_KEY_LEN, KYBER_KEY_TYPE);
export const Signature = bytes(SIGNATURE_LEN);

export const SignedPrekey = z.strictObject({ id: PrekeyId, publicKey: EcPublicKey, signature: Signature });
export const KyberPrekey = z.strictObject({ id: PrekeyId, publicKey: KyberPublicKey, signature: Signature });
export const OneTimePrekey = z.strictObject({ id: PrekeyId, publicKey: EcPublicKey });
