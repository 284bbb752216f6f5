/**
 * HTTP request and response bodies (all JSON). Routes, for reference:
 *
 * | route | auth | request | response |
 * |---|---|---|---|
 * | `POST /v1/enrol` | — | EnrolRequest | EnrolResponse |
 * | `POST /v1/auth/challenge` | — | ChallengeRequest | ChallengeResponse |
 * | `POST /v1/auth/session` | — | SessionRequest | SessionResponse |
 * | `GET /v1/devices` | bearer | — | DeviceListResponse |
 * | `DELETE /v1/devices/:deviceId` | bearer | — | OkResponse |
 * | `GET /v1/keys/:userName` | bearer | — | BundlesResponse (consumes one-time prekeys) |
 * | `GET /v1/keys/:userName/devices` | bearer | — | UserDevicesResponse (consumes nothing) |
 * | `GET /v1/keys` | bearer | — | PrekeyStatusResponse |
 * | `POST /v1/keys/one-time` | bearer | PrekeyUploadRequest | PrekeyStatusResponse |
 * | `PUT /v1/keys/signed` | bearer | SignedPrekeyRequest | OkResponse |
 * | `PUT /v1/keys/kyber` | bearer | KyberPrekeyRequest | OkResponse |
 * | `POST /v1/messages` | bearer | SendRequest | SendResponse |
 * | `POST /v1/link` | — | LinkCreateRequest | LinkCreateResponse |
 * | `POST /v1/link/lookup` | bearer | LinkCodeRequest | LinkLookupResponse |
 * | `POST /v1/link/approve` | bearer | LinkApproveRequest | OkResponse |
 * | `POST /v1/link/poll` | — | LinkCodeRequest | LinkPollResponse |
 * | `POST /v1/link/complete` | — | LinkCompleteRequest | EnrolResponse |
 * | `GET /v1/ws` | first frame | WebSocket upgrade (frames.ts) | |
 * | `GET /healthz` | — | — | HealthResponse |
 * | `GET /metrics` | — | — | Prometheus text |
 */
import { z } from 'zod';
import { WIRE_ERROR_CODES } from './errors.js';
import {
  CHALLENGE_LEN,
  EC_KEY_TYPE,
  EC_PUBLIC_KEY_LEN,
  MAX_DEVICE_NAME_LEN,
  MAX_ENVELOPE_BYTES,
  MAX_ERROR_MESSAGE_LEN,
  MAX_LINK_HANDOVER_BYTES,
  MAX_LINK_REQUEST_BYTES,
  MAX_PREKEYS_PER_UPLOAD,
  MAX_SEND_BATCH,
} from './limits.js';
import {
  bytes,
  Code,
  Count,
  DeviceId,
  EcPublicKey,
  EnvelopeId,
  KyberPrekey,
  OneTimePrekey,
  RegistrationId,
  Signature,
  SignedPrekey,
  Timestamp,
  UserId,
  UserName,
} from './primitives.js';

export const ErrorResponse = z.strictObject({
  error: z.strictObject({
    code: z.enum(WIRE_ERROR_CODES as [string, ...string[]]),
    message: z.string().max(MAX_ERROR_MESSAGE_LEN),
    retryAfterMs: z.int().min(0).optional(),
  }),
});

export const OkResponse = z.strictObject({ ok: z.literal(true) });
export const HealthResponse = z.strictObject({ status: z.literal('ok') });

/**
 * A device as it registers (first enrolment or link). `authKey` is the device's own
 * Curve25519 key for signing authentication challenges: unlike the identity key, which
 * all of a user's devices share, it proves which device is speaking.
 */
export const NewDevice = z.strictObject({
  name: z.string().min(1).max(MAX_DEVICE_NAME_LEN),
  registrationId: RegistrationId,
  identityKey: EcPublicKey,
  authKey: bytes(EC_PUBLIC_KEY_LEN, EC_PUBLIC_KEY_LEN, EC_KEY_TYPE),
  signedPrekey: SignedPrekey,
  kyberPrekey: KyberPrekey,
  oneTimePrekeys: z.array(OneTimePrekey).max(MAX_PREKEYS_PER_UPLOAD),
});

export const EnrolRequest = z.strictObject({ code: Code, device: NewDevice });
export const EnrolResponse = z.strictObject({ userId: UserId, userName: UserName, deviceId: DeviceId });

export const ChallengeRequest = z.strictObject({ userId: UserId, deviceId: DeviceId });
export const ChallengeResponse = z.strictObject({ challenge: bytes(CHALLENGE_LEN), expiresAt: Timestamp });
export const SessionRequest = z.strictObject({
  userId: UserId,
  deviceId: DeviceId,
  challenge: bytes(CHALLENGE_LEN),
  signature: Signature,
});
/** `token` goes in `Authorization: Bearer <token>` and in the WebSocket `auth` frame. */
export const SessionToken = z
  .string()
  .min(32)
  .max(128)
  .regex(/^[A-Za-z0-9_-]+$/, 'expected base64url');
export const SessionResponse = z.strictObject({ token: SessionToken, expiresAt: Timestamp });

export const DeviceInfo = z.strictObject({
  deviceId: DeviceId,
  name: z.string().max(MAX_DEVICE_NAME_LEN),
  registrationId: RegistrationId,
  oneTimePrekeys: Count,
  createdAt: Timestamp,
});
export const DeviceListResponse = z.strictObject({ devices: z.array(DeviceInfo) });
export const DeviceIdParam = z.strictObject({ deviceId: z.string().regex(/^[1-9][0-9]{0,9}$/) });
export const UserNameParam = z.strictObject({ userName: UserName });
export const BundleQuery = z.strictObject({
  deviceId: z
    .string()
    .regex(/^[1-9][0-9]{0,9}$/)
    .optional(),
});

export const PrekeyBundle = z.strictObject({
  deviceId: DeviceId,
  registrationId: RegistrationId,
  identityKey: EcPublicKey,
  signedPrekey: SignedPrekey,
  kyberPrekey: KyberPrekey,
  /** Absent when the device has run out; the session then starts without one. */
  oneTimePrekey: OneTimePrekey.optional(),
});
export const BundlesResponse = z.strictObject({
  userId: UserId,
  userName: UserName,
  bundles: z.array(PrekeyBundle),
});

/**
 * A user's identity key and current device ids, without consuming prekeys: a client checks
 * it before every send, so a removed device stops being encrypted to and a new one (or a
 * changed identity key) is noticed without waiting for a message.
 */
export const UserDevicesResponse = z.strictObject({
  userId: UserId,
  userName: UserName,
  /** Absent while the user has never enrolled. */
  identityKey: EcPublicKey.optional(),
  devices: z.array(z.strictObject({ deviceId: DeviceId, registrationId: RegistrationId })),
});

export const PrekeyUploadRequest = z.strictObject({
  oneTimePrekeys: z.array(OneTimePrekey).min(1).max(MAX_PREKEYS_PER_UPLOAD),
});
export const PrekeyStatusResponse = z.strictObject({ oneTimePrekeys: Count, replenish: z.boolean() });
export const SignedPrekeyRequest = z.strictObject({ prekey: SignedPrekey });
export const KyberPrekeyRequest = z.strictObject({ prekey: KyberPrekey });

export const OutgoingEnvelope = z.strictObject({
  recipientUserId: UserId,
  recipientDeviceId: DeviceId,
  body: bytes(1, MAX_ENVELOPE_BYTES),
});
export const SendRequest = z.strictObject({ messages: z.array(OutgoingEnvelope).min(1).max(MAX_SEND_BATCH) });
export const EnvelopeReceipt = z.strictObject({
  id: EnvelopeId,
  recipientUserId: UserId,
  recipientDeviceId: DeviceId,
});
/** Sent only once every envelope of the request is on disk. */
export const SendResponse = z.strictObject({ receipts: z.array(EnvelopeReceipt) });

/** The new device opens a slot, carrying an opaque request (e.g. its ephemeral key for the handover). */
export const LinkCreateRequest = z.strictObject({ request: bytes(1, MAX_LINK_REQUEST_BYTES) });
export const LinkCreateResponse = z.strictObject({ linkCode: Code, expiresAt: Timestamp });
export const LinkCodeRequest = z.strictObject({ linkCode: Code });
export const LinkLookupResponse = z.strictObject({ request: bytes(1, MAX_LINK_REQUEST_BYTES) });
/** An existing device of the user approves, attaching the end-to-end encrypted identity handover. */
export const LinkApproveRequest = z.strictObject({
  linkCode: Code,
  handover: bytes(1, MAX_LINK_HANDOVER_BYTES),
});
export const LinkPollResponse = z.discriminatedUnion('state', [
  z.strictObject({ state: z.literal('pending') }),
  z.strictObject({
    state: z.literal('approved'),
    userId: UserId,
    userName: UserName,
    handover: bytes(1, MAX_LINK_HANDOVER_BYTES),
  }),
]);
export const LinkCompleteRequest = z.strictObject({ linkCode: Code, device: NewDevice });

export type ErrorResponseJson = z.input<typeof ErrorResponse>;
export type NewDeviceJson = z.input<typeof NewDevice>;
export type NewDeviceData = z.output<typeof NewDevice>;
export type PrekeyBundleJson = z.input<typeof PrekeyBundle>;
