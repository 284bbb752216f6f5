/**
 * Role-based access control: the permissions, the built-in roles, grant scopes, org units,
 * and the request/response bodies of the remote administration routes and the audit log.
 *
 * The server decides every request with one authorisation function over these
 * definitions; clients only display them. A grant gives one role to one user, either
 * everywhere (`global`), within an org unit and all its sub-units (`unit`), or on one
 * channel (`channel`).
 *
 * Routes (all bearer-authenticated; the permission each needs is the server's
 * `ROUTE_RULES` table, and tests/rbac walk every one of them for every built-in role):
 *
 * | route | request | response |
 * |---|---|---|
 * | `GET /v1/me` | — | MeResponse (the caller's user, grants and units) |
 * | `GET /v1/admin/users` | — | AdminUsersResponse |
 * | `POST /v1/admin/users` | AdminUserAddRequest | AdminUserAddResponse |
 * | `DELETE /v1/admin/users/:userName` | — | OkResponse |
 * | `GET /v1/admin/roles` | — | RolesResponse |
 * | `POST /v1/admin/roles` | RoleCreateRequest | RoleInfo |
 * | `DELETE /v1/admin/roles/:roleName` | — | OkResponse |
 * | `GET /v1/admin/grants` | ?user=NAME | GrantsResponse |
 * | `POST /v1/admin/grants` | GrantRequest | OkResponse |
 * | `POST /v1/admin/grants/revoke` | GrantRequest | OkResponse |
 * | `GET /v1/admin/org` | — | OrgUnitsResponse |
 * | `POST /v1/admin/org` | OrgUnitCreateRequest | OrgUnitInfo |
 * | `DELETE /v1/admin/org/:unitName` | — | OkResponse |
 * | `POST /v1/admin/org/:unitName/users` | OrgMemberRequest | OkResponse |
 * | `POST /v1/admin/org/:unitName/users/remove` | OrgMemberRequest | OkResponse |
 * | `GET /v1/admin/audit` | ?since=MS&after=SEQ&limit=N | AuditListResponse |
 * | `GET /v1/admin/audit/verify` | — | AuditVerifyResponse |
 */
import { z } from 'zod';
import { ChannelName } from './channels.js';
import { Count, RoleName, Timestamp, UserId, UserName } from './primitives.js';

export const PERMISSIONS = [
  /** Create, remove and re-code users; assign them to org units. Scoped: the users of a unit. */
  'user.manage',
  /** Create and delete custom roles; grant and revoke roles. Scoped: grants within a unit or channel. */
  'role.manage',
  /** Create, remove and restructure org units. Scoped: the unit's subtree. */
  'org.manage',
  /** Send 1:1 messages. */
  'message.send',
  /** Create channels (in a unit, when scoped). */
  'channel.create',
  /** Manage channels on the server side (list all, see members). Membership changes also need a signature by a channel manager (docs/SECURITY.md). */
  'channel.manage',
  /** Post to channels the user is a member of. */
  'channel.post',
  /** Read and verify the audit log. */
  'audit.read',
  /** Run backups and exports. */
  'backup.run',
  /** Rotate and inspect the KMS. */
  'kms.manage',
] as const;
export type Permission = (typeof PERMISSIONS)[number];
export const PermissionName = z.enum(PERMISSIONS);

/** The built-in roles: present in every organisation, not editable, not deletable. */
export const BUILTIN_ROLES: Readonly<
  Record<'admin' | 'auditor' | 'member' | 'guest', readonly Permission[]>
> = Object.freeze({
  admin: PERMISSIONS,
  auditor: ['audit.read'],
  member: ['message.send', 'channel.create', 'channel.post'],
  guest: ['message.send', 'channel.post'],
});
export type BuiltinRole = keyof typeof BUILTIN_ROLES;
export const BUILTIN_ROLE_NAMES = Object.keys(BUILTIN_ROLES) as BuiltinRole[];
/** The role a user gets when an operator adds them without naming roles. */
export const DEFAULT_ROLE: BuiltinRole = 'member';

/** Org unit names: unique in the organisation, as user names. */
export const OrgUnitName = UserName;
/** Org unit ids: server-generated, 32 hex digits. */
export const OrgUnitId = z.string().regex(/^[0-9a-f]{32}$/);

export const GrantScope = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('global') }),
  z.strictObject({ kind: z.literal('unit'), unit: OrgUnitName }),
  z.strictObject({ kind: z.literal('channel'), channel: ChannelName }),
]);
export type GrantScopeJson = z.input<typeof GrantScope>;

export const RoleInfo = z.strictObject({
  name: RoleName,
  builtin: z.boolean(),
  permissions: z.array(PermissionName),
});
export const RolesResponse = z.strictObject({ roles: z.array(RoleInfo) });
export const RoleCreateRequest = z.strictObject({
  name: RoleName,
  permissions: z.array(PermissionName).min(1).max(PERMISSIONS.length),
});

export const GrantRequest = z.strictObject({ user: UserName, role: RoleName, scope: GrantScope });
export const GrantInfo = z.strictObject({ user: UserName, role: RoleName, scope: GrantScope });
export const GrantsQuery = z.strictObject({ user: UserName.optional() });
export const GrantsResponse = z.strictObject({ grants: z.array(GrantInfo) });

export const OrgUnitInfo = z.strictObject({
  id: OrgUnitId,
  name: OrgUnitName,
  /** Absent for a top-level unit. */
  parent: OrgUnitName.optional(),
  users: z.array(UserName),
  createdAt: Timestamp,
});
export const OrgUnitsResponse = z.strictObject({ units: z.array(OrgUnitInfo) });
export const OrgUnitCreateRequest = z.strictObject({ name: OrgUnitName, parent: OrgUnitName.optional() });
export const OrgUnitNameParam = z.strictObject({ unitName: OrgUnitName });
export const OrgMemberRequest = z.strictObject({ user: UserName });

export const AdminUserInfo = z.strictObject({
  id: UserId,
  name: UserName,
  roles: z.array(RoleName),
  units: z.array(OrgUnitName),
  enrolled: z.boolean(),
  devices: Count,
  createdAt: Timestamp,
});
export const AdminUsersResponse = z.strictObject({ users: z.array(AdminUserInfo) });
export const AdminUserAddRequest = z.strictObject({
  name: UserName,
  /** Global roles; default [DEFAULT_ROLE]. */
  roles: z.array(RoleName).max(32).optional(),
  /** Put the user in this unit (a unit-scoped user.manage suffices then). */
  unit: OrgUnitName.optional(),
});
export const AdminUserAddResponse = z.strictObject({
  user: UserName,
  userId: UserId,
  roles: z.array(RoleName),
  /** Shown once; the new user enrols with it. */
  enrollmentCode: z.string(),
  expiresAt: Timestamp,
});
export const UserNameParamForAdmin = z.strictObject({ userName: UserName });
export const RoleNameParam = z.strictObject({ roleName: RoleName });

export const MeResponse = z.strictObject({
  userId: UserId,
  userName: UserName,
  deviceId: z.int().min(1),
  grants: z.array(z.strictObject({ role: RoleName, scope: GrantScope })),
  units: z.array(OrgUnitName),
  /** Permissions the caller holds globally (scoped ones are in `grants`). */
  permissions: z.array(PermissionName),
});

// --- audit log ----------------------------------------------------------------------------

/** Who did it. Never a key, token, code or message content. */
export const AuditActor = z.discriminatedUnion('kind', [
  /** A device signed in as a user. */
  z.strictObject({ kind: z.literal('device'), userId: UserId, userName: UserName, deviceId: z.int().min(1) }),
  /** The operator, through the local admin socket. */
  z.strictObject({ kind: z.literal('operator') }),
  /** Someone not signed in (an enrolment, a failed sign-in), by network address. */
  z.strictObject({ kind: z.literal('anonymous'), address: z.string().max(64) }),
  /** The server itself (start-up, sweeps). */
  z.strictObject({ kind: z.literal('server') }),
]);
export type AuditActorJson = z.input<typeof AuditActor>;

export const AUDIT_ACTIONS = [
  'user.create',
  'user.remove',
  'user.code',
  'enrolment',
  'identity.change',
  'device.add',
  'device.remove',
  'login.failure',
  'access.denied',
  'role.create',
  'role.delete',
  'grant.add',
  'grant.remove',
  'org.create',
  'org.remove',
  'org.user.add',
  'org.user.remove',
  'channel.create',
  'channel.member.add',
  'channel.member.remove',
  'channel.remove',
  'kms.rotate',
  'kms.destroy',
  'backup',
  'restore',
  'export',
] as const;
export const AuditAction = z.enum(AUDIT_ACTIONS);
export type AuditActionName = (typeof AUDIT_ACTIONS)[number];
export const AuditOutcome = z.enum(['ok', 'denied', 'failed']);

/** One record of the audit log as `audit list` shows it. */
export const AuditRecordInfo = z.strictObject({
  seq: z.int().min(1),
  at: Timestamp,
  actor: AuditActor,
  action: AuditAction,
  /** What it acted on, e.g. `user:alice`, `device:alice/2`, `channel:ops`, `role:reviewer`. */
  target: z.string().max(256),
  outcome: AuditOutcome,
  /** Optional non-secret details (a role name, a key version, a reason code). */
  detail: z.record(z.string(), z.union([z.string().max(256), z.number(), z.boolean()])).optional(),
  /** Hex SHA-256 of the previous record (64 zeros for the first) and of this one. */
  prevHash: z.string().regex(/^[0-9a-f]{64}$/),
  hash: z.string().regex(/^[0-9a-f]{64}$/),
});
export const AuditListResponse = z.strictObject({ records: z.array(AuditRecordInfo) });
export const AuditListQuery = z.strictObject({
  since: z
    .string()
    .regex(/^[0-9]{1,16}$/)
    .optional(),
  after: z
    .string()
    .regex(/^[0-9]{1,16}$/)
    .optional(),
  limit: z
    .string()
    .regex(/^[1-9][0-9]{0,4}$/)
    .optional(),
});

/**
 * The result of walking the chain: ok, or the first record that does not fit, with what
 * was found wrong. `records` counts those checked; `head` is the signed head.
 */
export const AuditVerifyResponse = z.discriminatedUnion('ok', [
  z.strictObject({
    ok: z.literal(true),
    records: Count,
    head: z.strictObject({ seq: Count, hash: z.string().regex(/^[0-9a-f]{64}$/) }),
  }),
  z.strictObject({
    ok: z.literal(false),
    records: Count,
    /** The first sequence number at which the chain fails. */
    seq: Count,
    problem: z.enum(['edited', 'removed', 'inserted', 'reordered', 'truncated', 'head-signature']),
    message: z.string().max(512),
  }),
]);
