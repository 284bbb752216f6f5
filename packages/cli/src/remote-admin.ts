/**
 * The remote side of `qalqon admin --profile DIR ...`: an AdminRequest body carried out
 * through the device's pinned HTTPS connection (the client's admin methods, routes
 * `/v1/admin/...` of @qalqon/wire rbac.ts). The server decides every request by the
 * permissions of the device's user; a refusal comes back as a WireError (FORBIDDEN).
 * Answers have the shapes the local admin socket gives, so one printer serves both; an
 * operation answered with a bare OkResponse returns `{}` (the printer says what was done).
 */
import type { QalqonClient } from '@qalqon/client';
import type { AdminRequestJson } from '@qalqon/wire';
import { UsageError } from './io.js';

export async function remoteAdminRequest(
  client: QalqonClient,
  body: AdminRequestJson,
): Promise<Record<string, unknown>> {
  switch (body.op) {
    case 'user.add':
      return await client.adminAddUser({
        name: body.name,
        ...(body.roles === undefined ? {} : { roles: body.roles }),
        ...(body.unit === undefined ? {} : { unit: body.unit }),
      });
    case 'user.list':
      return await client.adminListUsers();
    case 'user.remove':
      await client.adminRemoveUser(body.name);
      return {};
    case 'role.list':
      return await client.adminListRoles();
    case 'role.create':
      return await client.adminCreateRole({ name: body.name, permissions: body.permissions });
    case 'role.delete':
      await client.adminDeleteRole(body.name);
      return {};
    case 'role.grant':
      await client.adminGrant({ user: body.user, role: body.role, scope: body.scope });
      return {};
    case 'role.revoke':
      await client.adminRevoke({ user: body.user, role: body.role, scope: body.scope });
      return {};
    case 'role.grants':
      return await client.adminListGrants(body.user);
    case 'org.list':
      return await client.adminListOrgUnits();
    case 'org.create':
      return await client.adminCreateOrgUnit({
        name: body.name,
        ...(body.parent === undefined ? {} : { parent: body.parent }),
      });
    case 'org.remove':
      await client.adminRemoveOrgUnit(body.name);
      return {};
    case 'org.assign':
      await client.adminAssignOrgUnit(body.name, body.user);
      return {};
    case 'org.unassign':
      await client.adminUnassignOrgUnit(body.name, body.user);
      return {};
    case 'audit.list':
      return await client.adminAuditList({
        ...(body.since === undefined ? {} : { since: body.since }),
        ...(body.after === undefined ? {} : { after: body.after }),
        ...(body.limit === undefined ? {} : { limit: body.limit }),
      });
    case 'audit.verify':
      return await client.adminAuditVerify();
    default:
      throw new UsageError(`"admin ${body.op.replace('.', ' ')}" works on the server only, with --data DIR`);
  }
}
