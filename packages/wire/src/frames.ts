/**
 * WebSocket frames on `GET /v1/ws` (text frames, one JSON object each, at most
 * MAX_FRAME_BYTES). The first client frame must be `auth`; the server answers `ready` and
 * then pushes every queued envelope in order. An envelope stays queued until the device
 * sends `ack` for it: a device that disconnects before acking gets it again.
 */
import { z } from 'zod';
import { WIRE_ERROR_CODES } from './errors.js';
import { EnvelopeReceipt, OutgoingEnvelope, SessionToken } from './http.js';
import { MAX_ACK_IDS, MAX_ENVELOPE_BYTES, MAX_ERROR_MESSAGE_LEN, MAX_SEND_BATCH } from './limits.js';
import { bytes, Count, DeviceId, EnvelopeId, RequestId, Timestamp, UserId } from './primitives.js';

/**
 * Upper bounds of one `envelopes` frame: envelopes, and base64 body characters (a frame may
 * exceed the latter by one envelope, so it stays under MAX_FRAME_BYTES: 1 MiB plus one
 * 256 KiB body's 342 KiB of base64 and the JSON around it).
 */
export const MAX_PUSH_BATCH = 256;
export const MAX_PUSH_BATCH_BODY_CHARS = 1024 * 1024;

export const AuthFrame = z.strictObject({
  type: z.literal('auth'),
  token: SessionToken,
  /**
   * `true`: push queued envelopes as `envelopes` frames (several per frame) instead of one
   * `envelope` frame each. Absent or false: `envelope` frames only.
   */
  batch: z.boolean().optional(),
});
/** Like `POST /v1/messages`; answered by `sent` (or `error`) with the same id. */
export const SendFrame = z.strictObject({
  type: z.literal('send'),
  id: RequestId,
  messages: z.array(OutgoingEnvelope).min(1).max(MAX_SEND_BATCH),
});
export const AckFrame = z.strictObject({
  type: z.literal('ack'),
  ids: z.array(EnvelopeId).min(1).max(MAX_ACK_IDS),
});
export const PingFrame = z.strictObject({ type: z.literal('ping'), id: RequestId.optional() });

export const ClientFrame = z.discriminatedUnion('type', [AuthFrame, SendFrame, AckFrame, PingFrame]);

export const ReadyFrame = z.strictObject({
  type: z.literal('ready'),
  userId: UserId,
  deviceId: DeviceId,
  /** One-time prekeys the device has left on the server, and whether it should upload more. */
  oneTimePrekeys: Count,
  replenish: z.boolean(),
});
/** One pushed envelope; acknowledge its id with `ack`. */
export const PushedEnvelope = z.strictObject({
  id: EnvelopeId,
  senderUserId: UserId,
  senderDeviceId: DeviceId,
  createdAt: Timestamp,
  body: bytes(1, MAX_ENVELOPE_BYTES),
});
export const EnvelopeFrame = z.strictObject({
  type: z.literal('envelope'),
  ...PushedEnvelope.shape,
});
/**
 * Several queued envelopes at once, in delivery order (only to a device that sent
 * `batch: true` in its `auth` frame). Each is acknowledged by id as if it came alone.
 */
export const EnvelopesFrame = z.strictObject({
  type: z.literal('envelopes'),
  envelopes: z.array(PushedEnvelope).min(1).max(MAX_PUSH_BATCH),
});
export const SentFrame = z.strictObject({
  type: z.literal('sent'),
  id: RequestId,
  receipts: z.array(EnvelopeReceipt).max(MAX_SEND_BATCH),
});
export const PongFrame = z.strictObject({ type: z.literal('pong'), id: RequestId.optional() });
/** Sent when a bundle fetch leaves this device low on one-time prekeys. */
export const PrekeysLowFrame = z.strictObject({ type: z.literal('prekeys-low'), oneTimePrekeys: Count });
export const ErrorFrame = z.strictObject({
  type: z.literal('error'),
  /** The request id of the frame it answers, when that frame had one and could be read. */
  id: RequestId.optional(),
  code: z.enum(WIRE_ERROR_CODES as [string, ...string[]]),
  message: z.string().max(MAX_ERROR_MESSAGE_LEN),
});

export const ServerFrame = z.discriminatedUnion('type', [
  ReadyFrame,
  EnvelopeFrame,
  EnvelopesFrame,
  SentFrame,
  PongFrame,
  PrekeysLowFrame,
  ErrorFrame,
]);

export type ClientFrameJson = z.input<typeof ClientFrame>;
export type ServerFrameJson = z.input<typeof ServerFrame>;
