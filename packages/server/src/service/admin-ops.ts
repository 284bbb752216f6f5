/**
 * The administration operations, written once for both callers: the remote routes
 * (plugins/admin-remote.ts, a signed-in device whose permission the route rules checked)
 * and the local admin socket (admin.ts, the operator). Each takes the acting subject,
 * records what it changed in the audit log, and invalidates the grant cache it affected.
 * Answers are the @qalqon/wire shapes of the remote routes (rbac.ts).
 */

import type { AdminUserInfo, AuditRecordInfo, GrantInfo, OrgUnitInfo, RoleInfo } from '@qalqon/wire';
import { DEFAULT_ROLE, type GrantScopeJson, type z } from '@qalqon/wire';
import type { Grant, GrantScope, OrgUnit, Role, User } from '../storage/types.js';
import { ApiError } from './api-error.js';
import { actorOf, authorize, GLOBAL, type Subject } from './authz.js';
import type { ServiceContext } from './context.js';
import { issueEnrolmentCode } from './data-dir.js';

type Json<S extends z.ZodType> = z.input<S>;

export async function userByName(ctx: ServiceContext, name: string): Promise<User> {
  const u = await ctx.storage.findUserByName(name);
  if (!u) throw new ApiError('USER_NOT_FOUND', 404, `no user named ${name}`);
  return u;
}

async function unitByName(ctx: ServiceContext, name: string): Promise<OrgUnit> {
  const u = await ctx.storage.findOrgUnitByName(name);
  if (!u) throw new ApiError('ORG_UNIT_NOT_FOUND', 404, `no org unit named ${name}`);
  return u;
}

async function unitNames(ctx: ServiceContext): Promise<Map<string, string>> {
  return new Map((await ctx.storage.listOrgUnits()).map((u) => [u.id, u.name]));
}

// --- users ------------------------------------------------------------------------------------

export async function listUsers(ctx: ServiceContext): Promise<{ users: Json<typeof AdminUserInfo>[] }> {
  const [users, names] = await Promise.all([ctx.storage.listUsers(), unitNames(ctx)]);
  const out: Json<typeof AdminUserInfo>[] = [];
  for (const u of users) {
    const [devices, units] = await Promise.all([
      ctx.storage.listDevices(u.id),
      ctx.storage.listUserOrgUnits(u.id),
    ]);
    out.push({
      id: u.id,
      name: u.name,
      roles: [...u.roles],
      units: units.map((id) => names.get(id)).filter((n): n is string => n !== undefined),
      enrolled: u.identityKey !== undefined,
      devices: devices.length,
      createdAt: u.createdAt,
    });
  }
  return { users: out };
}

/**
 * Adds a user with global roles (default [DEFAULT_ROLE]), optionally in a unit, and issues
 * their enrolment code. Giving any role beyond the default is granting it globally, so a
 * device also needs role.manage everywhere for that.
 */
export async function addUser(
  ctx: ServiceContext,
  subject: Subject,
  input: {
    readonly name: string;
    readonly roles?: readonly string[] | undefined;
    readonly unit?: string | undefined;
  },
): Promise<{ user: string; userId: string; roles: string[]; enrollmentCode: string; expiresAt: number }> {
  const roles = [...new Set(input.roles ?? [DEFAULT_ROLE])].sort();
  if (roles.some((r) => r !== DEFAULT_ROLE)) {
    await authorize(ctx, subject, 'role.manage', GLOBAL, 'user.add with roles');
  }
  const known = await ctx.authz.roles();
  for (const r of roles) if (!known.has(r)) throw new ApiError('ROLE_NOT_FOUND', 404, `no role named ${r}`);
  const unit = input.unit === undefined ? undefined : await unitByName(ctx, input.unit);
  const user = await ctx.storage.createUser({ name: input.name, roles });
  try {
    if (unit) await ctx.storage.addUserToOrgUnit(user.id, unit.id);
  } catch (err) {
    // The unit went away meanwhile: undo, so a refusal leaves nothing behind.
    await ctx.storage.removeUser(user.id).catch(() => undefined);
    throw err;
  }
  const code = await issueEnrolmentCode(ctx.storage, user.id, ctx.clock());
  ctx.authz.invalidateUser(user.id);
  ctx.log(`admin: user ${user.name} created`);
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'user.create',
    target: `user:${user.name}`,
    outcome: 'ok',
    detail: { roles: roles.join(','), ...(unit ? { unit: unit.name } : {}) },
  });
  return { user: user.name, userId: user.id, roles, enrollmentCode: code.code, expiresAt: code.expiresAt };
}

export async function issueUserCode(
  ctx: ServiceContext,
  subject: Subject,
  name: string,
): Promise<{ user: string; userId: string; enrollmentCode: string; expiresAt: number }> {
  const user = await userByName(ctx, name);
  const code = await issueEnrolmentCode(ctx.storage, user.id, ctx.clock());
  ctx.log(`admin: new enrolment code issued for user ${user.name}`);
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'user.code',
    target: `user:${user.name}`,
    outcome: 'ok',
  });
  return { user: user.name, userId: user.id, enrollmentCode: code.code, expiresAt: code.expiresAt };
}

export async function removeUser(ctx: ServiceContext, subject: Subject, name: string): Promise<User> {
  const user = await userByName(ctx, name);
  await ctx.storage.removeUser(user.id);
  ctx.sessions.revoke(user.id);
  ctx.hub.disconnect(user.id);
  ctx.authz.invalidateUser(user.id);
  ctx.log(`admin: user ${user.name} removed`);
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'user.remove',
    target: `user:${user.name}`,
    outcome: 'ok',
  });
  return user;
}

/** Removes one device of a user (its owner, or the operator), ending its sessions and connection. */
export async function removeDevice(
  ctx: ServiceContext,
  subject: Subject,
  user: { readonly id: string; readonly name: string },
  deviceId: number,
): Promise<void> {
  await ctx.storage.removeDevice(user.id, deviceId);
  ctx.sessions.revoke(user.id, deviceId);
  ctx.hub.disconnect(user.id, deviceId);
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'device.remove',
    target: `device:${user.name}/${deviceId}`,
    outcome: 'ok',
  });
}

// --- roles and grants -----------------------------------------------------------------------

function roleInfo(r: Role): Json<typeof RoleInfo> {
  return {
    name: r.name,
    builtin: r.builtin,
    permissions: [...r.permissions] as Json<typeof RoleInfo>['permissions'],
  };
}

export async function listRoles(ctx: ServiceContext): Promise<{ roles: Json<typeof RoleInfo>[] }> {
  return { roles: (await ctx.storage.listRoles()).map(roleInfo) };
}

export async function createRole(
  ctx: ServiceContext,
  subject: Subject,
  input: { readonly name: string; readonly permissions: readonly string[] },
): Promise<Json<typeof RoleInfo>> {
  const role = await ctx.storage.createRole({ name: input.name, permissions: input.permissions });
  ctx.authz.invalidateRoles();
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'role.create',
    target: `role:${role.name}`,
    outcome: 'ok',
    detail: { permissions: role.permissions.join(',') },
  });
  return roleInfo(role);
}

export async function deleteRole(ctx: ServiceContext, subject: Subject, name: string): Promise<{ ok: true }> {
  await ctx.storage.deleteRole(name);
  ctx.authz.invalidateRoles();
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'role.delete',
    target: `role:${name}`,
    outcome: 'ok',
  });
  return { ok: true };
}

function scopeLabel(scope: GrantScopeJson): string {
  switch (scope.kind) {
    case 'global':
      return 'global';
    case 'unit':
      return `unit:${scope.unit}`;
    case 'channel':
      return `channel:${scope.channel}`;
  }
}

async function storageScope(ctx: ServiceContext, scope: GrantScopeJson): Promise<GrantScope> {
  switch (scope.kind) {
    case 'global':
      return { kind: 'global' };
    case 'unit':
      return { kind: 'unit', unitId: (await unitByName(ctx, scope.unit)).id };
    case 'channel':
      return { kind: 'channel', channelId: scope.channel };
  }
}

/** Grants (`add`) or revokes a role in a scope. */
export async function changeGrant(
  ctx: ServiceContext,
  subject: Subject,
  input: { readonly user: string; readonly role: string; readonly scope: GrantScopeJson },
  add: boolean,
): Promise<{ ok: true }> {
  const user = await userByName(ctx, input.user);
  const grant: Grant = { userId: user.id, role: input.role, scope: await storageScope(ctx, input.scope) };
  if (add) await ctx.storage.addGrant(grant);
  else await ctx.storage.removeGrant(grant);
  ctx.authz.invalidateUser(user.id);
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: add ? 'grant.add' : 'grant.remove',
    target: `user:${user.name}`,
    outcome: 'ok',
    detail: { role: input.role, scope: scopeLabel(input.scope) },
  });
  return { ok: true };
}

export async function listGrants(
  ctx: ServiceContext,
  userName: string | undefined,
): Promise<{ grants: Json<typeof GrantInfo>[] }> {
  const only = userName === undefined ? undefined : await userByName(ctx, userName);
  const [grants, users, names] = await Promise.all([
    ctx.storage.listGrants(only ? { userId: only.id } : {}),
    ctx.storage.listUsers(),
    unitNames(ctx),
  ]);
  const userNames = new Map(users.map((u) => [u.id, u.name]));
  const out: Json<typeof GrantInfo>[] = [];
  for (const g of grants) {
    const user = userNames.get(g.userId);
    if (user === undefined) continue;
    let scope: GrantScopeJson;
    if (g.scope.kind === 'global') scope = { kind: 'global' };
    else if (g.scope.kind === 'channel') scope = { kind: 'channel', channel: g.scope.channelId };
    else {
      const unit = names.get(g.scope.unitId);
      if (unit === undefined) continue;
      scope = { kind: 'unit', unit };
    }
    out.push({ user, role: g.role, scope });
  }
  return { grants: out };
}

// --- org units --------------------------------------------------------------------------------

export async function listOrg(ctx: ServiceContext): Promise<{ units: Json<typeof OrgUnitInfo>[] }> {
  const [units, users] = await Promise.all([ctx.storage.listOrgUnits(), ctx.storage.listUsers()]);
  const names = new Map(units.map((u) => [u.id, u.name]));
  const userNames = new Map(users.map((u) => [u.id, u.name]));
  const out: Json<typeof OrgUnitInfo>[] = [];
  for (const u of units) {
    const members = await ctx.storage.listOrgUnitUsers(u.id);
    const parent = u.parentId === undefined ? undefined : names.get(u.parentId);
    out.push({
      id: u.id,
      name: u.name,
      ...(parent === undefined ? {} : { parent }),
      users: members
        .map((id) => userNames.get(id))
        .filter((n): n is string => n !== undefined)
        .sort(),
      createdAt: u.createdAt,
    });
  }
  return { units: out };
}

export async function createOrg(
  ctx: ServiceContext,
  subject: Subject,
  input: { readonly name: string; readonly parent?: string | undefined },
): Promise<Json<typeof OrgUnitInfo>> {
  const parent = input.parent === undefined ? undefined : await unitByName(ctx, input.parent);
  const unit = await ctx.storage.createOrgUnit({
    name: input.name,
    ...(parent ? { parentId: parent.id } : {}),
  });
  ctx.authz.invalidateOrg();
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'org.create',
    target: `unit:${unit.name}`,
    outcome: 'ok',
    ...(parent ? { detail: { parent: parent.name } } : {}),
  });
  return {
    id: unit.id,
    name: unit.name,
    ...(parent ? { parent: parent.name } : {}),
    users: [],
    createdAt: unit.createdAt,
  };
}

export async function removeOrg(ctx: ServiceContext, subject: Subject, name: string): Promise<{ ok: true }> {
  const unit = await unitByName(ctx, name);
  await ctx.storage.removeOrgUnit(unit.id);
  ctx.authz.invalidateOrg();
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: 'org.remove',
    target: `unit:${unit.name}`,
    outcome: 'ok',
  });
  return { ok: true };
}

/** Puts a user into (`add`) or takes them out of a unit. */
export async function changeOrgMember(
  ctx: ServiceContext,
  subject: Subject,
  unitName: string,
  userName: string,
  add: boolean,
): Promise<{ ok: true }> {
  const unit = await unitByName(ctx, unitName);
  const user = await userByName(ctx, userName);
  if (add) await ctx.storage.addUserToOrgUnit(user.id, unit.id);
  else await ctx.storage.removeUserFromOrgUnit(user.id, unit.id);
  ctx.authz.invalidateUser(user.id);
  await ctx.audit({
    actor: await actorOf(ctx, subject),
    action: add ? 'org.user.add' : 'org.user.remove',
    target: `unit:${unit.name}`,
    outcome: 'ok',
    detail: { user: user.name },
  });
  return { ok: true };
}

// --- audit log ----------------------------------------------------------------------------------

export async function listAudit(
  ctx: ServiceContext,
  options: {
    readonly since?: number | undefined;
    readonly after?: number | undefined;
    readonly limit?: number | undefined;
  },
): Promise<{ records: Json<typeof AuditRecordInfo>[] }> {
  const records = await ctx.storage.listAudit({
    ...(options.since === undefined ? {} : { since: options.since }),
    ...(options.after === undefined ? {} : { afterSeq: options.after }),
    ...(options.limit === undefined ? {} : { limit: options.limit }),
  });
  return {
    records: records.map((r) => ({
      seq: r.seq,
      at: r.at,
      actor: r.actor as Json<typeof AuditRecordInfo>['actor'],
      action: r.action as Json<typeof AuditRecordInfo>['action'],
      target: r.target,
      outcome: r.outcome,
      ...(r.detail === undefined ? {} : { detail: { ...r.detail } }),
      prevHash: r.prevHash,
      hash: r.hash,
    })),
  };
}

export async function verifyAudit(ctx: ServiceContext) {
  return ctx.storage.verifyAudit();
}
