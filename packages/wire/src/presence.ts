/**
 * Presence: which of a user's devices are connected (hold a live WebSocket) to any node of
 * the deployment, right now.
 *
 * | route | auth | request | response |
 * |---|---|---|---|
 * | `GET /v1/presence/:userName` | device | UserNameParam | PresenceResponse |
 *
 * Every device of the user that storage holds is listed, connected or not; nothing says
 * which node, when, or from where. Across nodes the answer is as fresh as the nodes'
 * events: a device that just connected elsewhere shows within the event bus's latency, and
 * one whose node died stops showing within a few heartbeats (the server's setting).
 */
import { z } from 'zod';
import { DeviceId, UserId, UserName } from './primitives.js';

export const PresenceDevice = z.strictObject({ deviceId: DeviceId, connected: z.boolean() });

export const PresenceResponse = z.strictObject({
  userId: UserId,
  userName: UserName,
  /** In device id order. */
  devices: z.array(PresenceDevice).max(10_000),
});
export type PresenceResponseJson = z.input<typeof PresenceResponse>;
