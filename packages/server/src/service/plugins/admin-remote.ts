/**
 * Remote administration (@qalqon/wire rbac.ts): users, roles, grants, org units and the
 * audit log, for signed-in devices. Which permission each route needs, and on what, is in
 * ROUTE_RULES (authz.ts); the handlers only run once that check passed. The work itself is
 * shared with the local admin socket (admin-ops.ts).
 */
import {
  AdminUserAddRequest,
  AuditListQuery,
  GrantRequest,
  GrantsQuery,
  MAX_HTTP_BODY_BYTES,
  OrgMemberRequest,
  OrgUnitCreateRequest,
  OrgUnitNameParam,
  RoleCreateRequest,
  RoleNameParam,
  UserNameParamForAdmin,
} from '@qalqon/wire';
import type { FastifyInstance } from 'fastify';
import * as ops from '../admin-ops.js';
import { deviceSubject, requestIdentity } from '../authz.js';
import { parse, type ServiceContext } from '../context.js';

export async function adminRemotePlugin(app: FastifyInstance, opts: { ctx: ServiceContext }): Promise<void> {
  const { ctx } = opts;
  const limits = { bodyLimit: MAX_HTTP_BODY_BYTES };
  const subjectOf = (req: Parameters<typeof requestIdentity>[0]) => deviceSubject(requestIdentity(req));

  app.get('/v1/admin/users', async () => ops.listUsers(ctx));

  app.post('/v1/admin/users', limits, async (req) => {
    const body = parse(AdminUserAddRequest, req.body);
    return ops.addUser(ctx, subjectOf(req), body);
  });

  app.delete('/v1/admin/users/:userName', async (req) => {
    const { userName } = parse(UserNameParamForAdmin, req.params);
    await ops.removeUser(ctx, subjectOf(req), userName);
    return { ok: true };
  });

  app.get('/v1/admin/roles', async () => ops.listRoles(ctx));

  app.post('/v1/admin/roles', limits, async (req) => {
    const body = parse(RoleCreateRequest, req.body);
    return ops.createRole(ctx, subjectOf(req), body);
  });

  app.delete('/v1/admin/roles/:roleName', async (req) => {
    const { roleName } = parse(RoleNameParam, req.params);
    return ops.deleteRole(ctx, subjectOf(req), roleName);
  });

  app.get('/v1/admin/grants', async (req) => {
    const q = parse(GrantsQuery, req.query);
    return ops.listGrants(ctx, q.user);
  });

  app.post('/v1/admin/grants', limits, async (req) => {
    const body = parse(GrantRequest, req.body);
    return ops.changeGrant(ctx, subjectOf(req), body, true);
  });

  app.post('/v1/admin/grants/revoke', limits, async (req) => {
    const body = parse(GrantRequest, req.body);
    return ops.changeGrant(ctx, subjectOf(req), body, false);
  });

  app.get('/v1/admin/org', async () => ops.listOrg(ctx));

  app.post('/v1/admin/org', limits, async (req) => {
    const body = parse(OrgUnitCreateRequest, req.body);
    return ops.createOrg(ctx, subjectOf(req), body);
  });

  app.delete('/v1/admin/org/:unitName', async (req) => {
    const { unitName } = parse(OrgUnitNameParam, req.params);
    return ops.removeOrg(ctx, subjectOf(req), unitName);
  });

  app.post('/v1/admin/org/:unitName/users', limits, async (req) => {
    const { unitName } = parse(OrgUnitNameParam, req.params);
    const body = parse(OrgMemberRequest, req.body);
    return ops.changeOrgMember(ctx, subjectOf(req), unitName, body.user, true);
  });

  app.post('/v1/admin/org/:unitName/users/remove', limits, async (req) => {
    const { unitName } = parse(OrgUnitNameParam, req.params);
    const body = parse(OrgMemberRequest, req.body);
    return ops.changeOrgMember(ctx, subjectOf(req), unitName, body.user, false);
  });

  app.get('/v1/admin/audit', async (req) => {
    const q = parse(AuditListQuery, req.query);
    return ops.listAudit(ctx, {
      since: q.since === undefined ? undefined : Number(q.since),
      after: q.after === undefined ? undefined : Number(q.after),
      limit: q.limit === undefined ? undefined : Number(q.limit),
    });
  });

  app.get('/v1/admin/audit/verify', async () => ops.verifyAudit(ctx));
}
