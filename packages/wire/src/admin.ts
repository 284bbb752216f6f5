/**
 * Requests on the local admin socket (a Unix socket in the data directory, mode 0600):
 * `POST /admin` with one of these bodies. Only processes of the server's own user can
 * connect, so the socket carries no further authentication.
 */
import { z } from 'zod';
import { DeviceId, RoleName, UserName } from './primitives.js';

export const AdminRequest = z.discriminatedUnion('op', [
  z.strictObject({ op: z.literal('user.add'), name: UserName, roles: z.array(RoleName).max(32).optional() }),
  z.strictObject({ op: z.literal('user.code'), name: UserName }),
  z.strictObject({ op: z.literal('user.list') }),
  z.strictObject({ op: z.literal('user.remove'), name: UserName }),
  z.strictObject({ op: z.literal('device.list'), name: UserName }),
  z.strictObject({ op: z.literal('device.remove'), name: UserName, deviceId: DeviceId }),
]);
export type AdminRequestJson = z.input<typeof AdminRequest>;

export const AdminUser = z.strictObject({
  id: z.string(),
  name: UserName,
  roles: z.array(RoleName),
  enrolled: z.boolean(),
  devices: z.int().min(0),
  createdAt: z.int(),
});
