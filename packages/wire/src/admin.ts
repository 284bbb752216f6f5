/**
 * Requests on the local admin socket (a Unix socket in the data directory, mode 0600):
 * `POST /admin` with one of these bodies. Only processes of the server's own user can
 * connect, so the socket carries no further authentication.
 */
import { z } from 'zod';
import { DeviceId, RoleName, UserName } from './primitives.js';
import { GrantScope, OrgUnitName, PermissionName } from './rbac.js';

/** A KMS key-encryption-key version id, as the server's KMS names them. */
export const KekVersionId = z.string().regex(/^[A-Za-z0-9._-]{1,64}$/);

export const AdminRequest = z.discriminatedUnion('op', [
  /** Roles default to [DEFAULT_ROLE]; `unit` puts the user in an org unit. */
  z.strictObject({
    op: z.literal('user.add'),
    name: UserName,
    roles: z.array(RoleName).max(32).optional(),
    unit: OrgUnitName.optional(),
  }),
  z.strictObject({ op: z.literal('user.code'), name: UserName }),
  z.strictObject({ op: z.literal('user.list') }),
  z.strictObject({ op: z.literal('user.remove'), name: UserName }),
  z.strictObject({ op: z.literal('device.list'), name: UserName }),
  z.strictObject({ op: z.literal('device.remove'), name: UserName, deviceId: DeviceId }),
  /** Which KMS holds the key-encryption keys, and how many data keys each KEK version wraps. */
  z.strictObject({ op: z.literal('kms.status') }),
  /** A new KEK version becomes active and every data key is re-wrapped under it (data untouched). */
  z.strictObject({ op: z.literal('kms.rotate') }),
  /** Destroys a KEK version that is neither active nor still wrapping a data key. */
  z.strictObject({ op: z.literal('kms.destroy'), keyId: KekVersionId }),
  // Roles and grants (answers: @qalqon/wire RolesResponse, RoleInfo, GrantsResponse, OkResponse).
  z.strictObject({ op: z.literal('role.list') }),
  z.strictObject({
    op: z.literal('role.create'),
    name: RoleName,
    permissions: z.array(PermissionName).min(1).max(16),
  }),
  z.strictObject({ op: z.literal('role.delete'), name: RoleName }),
  z.strictObject({ op: z.literal('role.grant'), user: UserName, role: RoleName, scope: GrantScope }),
  z.strictObject({ op: z.literal('role.revoke'), user: UserName, role: RoleName, scope: GrantScope }),
  z.strictObject({ op: z.literal('role.grants'), user: UserName.optional() }),
  // Org units (answers: OrgUnitsResponse, OrgUnitInfo, OkResponse).
  z.strictObject({ op: z.literal('org.list') }),
  z.strictObject({ op: z.literal('org.create'), name: OrgUnitName, parent: OrgUnitName.optional() }),
  z.strictObject({ op: z.literal('org.remove'), name: OrgUnitName }),
  z.strictObject({ op: z.literal('org.assign'), name: OrgUnitName, user: UserName }),
  z.strictObject({ op: z.literal('org.unassign'), name: OrgUnitName, user: UserName }),
  // Audit log (answers: AuditListResponse, AuditVerifyResponse).
  z.strictObject({
    op: z.literal('audit.list'),
    since: z.int().min(0).optional(),
    after: z.int().min(0).optional(),
    limit: z.int().min(1).max(10_000).optional(),
  }),
  z.strictObject({ op: z.literal('audit.verify') }),
]);
export type AdminRequestJson = z.input<typeof AdminRequest>;

/** One KEK version in a `kms.status` answer. */
export const AdminKmsKeyVersion = z.strictObject({
  keyId: KekVersionId,
  createdAt: z.int(),
  active: z.boolean(),
  /** How many of the server's data keys are wrapped under this version. */
  wrappedKeys: z.int().min(0),
  /** How many per-file keys (files module) are wrapped under this version. */
  wrappedFileKeys: z.int().min(0),
});

/** The answer to `kms.status`. `location` is a file path or a PKCS#11 URI: never a PIN or key. */
export const AdminKmsStatus = z.strictObject({
  provider: z.enum(['local', 'pkcs11']),
  location: z.string().max(8192),
  activeKeyId: KekVersionId,
  keyVersions: z.array(AdminKmsKeyVersion),
});

/** The answer to `kms.rotate`. */
export const AdminKmsRotation = z.strictObject({
  previousKeyId: KekVersionId,
  activeKeyId: KekVersionId,
  /** Data keys re-wrapped under the new version. */
  rewrapped: z.int().min(0),
  /** Per-file keys re-wrapped under the new version. */
  rewrappedFileKeys: z.int().min(0),
});

export const AdminUser = z.strictObject({
  id: z.string(),
  name: UserName,
  roles: z.array(RoleName),
  enrolled: z.boolean(),
  devices: z.int().min(0),
  createdAt: z.int(),
});

/** The parts an export may hold. */
export const EXPORT_PART_NAMES = ['directory', 'channels', 'audit'] as const;

/**
 * `POST /admin/archive` on the local admin socket: a backup or an export. The answer is the
 * archive itself (`application/octet-stream`, its length in Content-Length and its id in
 * `X-Qalqon-Archive-Id`), or a JSON ErrorResponse before the first byte. `recoveryKey`
 * (32 bytes, base64) asks for the archive key to be wrapped under it too; the server uses it
 * for that and forgets it.
 */
export const AdminArchiveRequest = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('backup'),
    recoveryKey: z
      .string()
      .regex(/^[A-Za-z0-9+/]{43}=$/)
      .optional(),
  }),
  z.strictObject({
    kind: z.literal('export'),
    parts: z.array(z.enum(EXPORT_PART_NAMES)).min(1).max(EXPORT_PART_NAMES.length),
    recoveryKey: z
      .string()
      .regex(/^[A-Za-z0-9+/]{43}=$/)
      .optional(),
  }),
]);
export type AdminArchiveRequestJson = z.input<typeof AdminArchiveRequest>;
