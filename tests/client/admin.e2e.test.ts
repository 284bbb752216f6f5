/**
 * Remote administration through the client SDK: a device of a user with the admin role
 * runs the /v1/admin routes over its pinned connection, against a real server over real
 * TLS 1.3; a device of a plain member is refused (FORBIDDEN) and changes nothing.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isClientError, QalqonClient } from '@qalqon/client';
import { spkiPin } from '@qalqon/server';
import { isWireError } from '@qalqon/wire';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Harness, startHarness } from '../../packages/server/src/service/harness.test-util.js';

let h: Harness;
let root: string;
let admin: QalqonClient;
let member: QalqonClient;

async function enroll(name: string, roles?: string[]): Promise<QalqonClient> {
  return QalqonClient.enroll({
    profile: join(root, name),
    passphrase: () => 'admin e2e passphrase',
    keystore: 'passphrase',
    server: `https://127.0.0.1:${h.port}`,
    pin: spkiPin(h.cert),
    code: (await h.addUser(name, roles ? { roles } : {})).code,
  });
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'qalqon-admin-e2e-'));
  h = await startHarness();
  admin = await enroll('root', ['admin']);
  member = await enroll('mia');
});

afterAll(async () => {
  admin?.close();
  member?.close();
  await h?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('remote administration from a client profile', () => {
  it('tells each user who they are and what they may do', async () => {
    const me = await admin.me();
    expect(me).toMatchObject({ userName: 'root', userId: admin.userId, deviceId: admin.deviceId });
    expect(me.permissions).toEqual(expect.arrayContaining(['user.manage', 'role.manage', 'audit.read']));
    const mia = await member.me();
    expect(mia.userName).toBe('mia');
    expect(mia.permissions).not.toContain('user.manage');
  });

  it('manages users, roles, grants and org units', async () => {
    const added = await admin.adminAddUser({ name: 'newbie' });
    expect(added).toMatchObject({ user: 'newbie', roles: ['member'] });
    expect(added.enrollmentCode.length).toBeGreaterThanOrEqual(16);
    const users = await admin.adminListUsers();
    expect(users.users.map((u) => u.name)).toEqual(expect.arrayContaining(['root', 'mia', 'newbie']));
    expect(users.users.find((u) => u.name === 'newbie')).toMatchObject({ enrolled: false, devices: 0 });

    const role = await admin.adminCreateRole({ name: 'reviewer', permissions: ['audit.read'] });
    expect(role).toEqual({ name: 'reviewer', builtin: false, permissions: ['audit.read'] });
    expect((await admin.adminListRoles()).roles.map((r) => r.name)).toEqual(
      expect.arrayContaining(['admin', 'auditor', 'member', 'guest', 'reviewer']),
    );

    const unit = await admin.adminCreateOrgUnit({ name: 'eng' });
    expect(unit).toMatchObject({ name: 'eng', users: [] });
    await admin.adminCreateOrgUnit({ name: 'eng-web', parent: 'eng' });
    await admin.adminAssignOrgUnit('eng', 'mia');
    const units = (await admin.adminListOrgUnits()).units;
    expect(units.find((u) => u.name === 'eng')?.users).toEqual(['mia']);
    expect(units.find((u) => u.name === 'eng-web')?.parent).toBe('eng');

    await admin.adminGrant({ user: 'mia', role: 'reviewer', scope: { kind: 'unit', unit: 'eng' } });
    expect((await admin.adminListGrants('mia')).grants).toContainEqual({
      user: 'mia',
      role: 'reviewer',
      scope: { kind: 'unit', unit: 'eng' },
    });
    expect((await member.me()).grants).toContainEqual({
      role: 'reviewer',
      scope: { kind: 'unit', unit: 'eng' },
    });
    await admin.adminRevoke({ user: 'mia', role: 'reviewer', scope: { kind: 'unit', unit: 'eng' } });
    expect((await admin.adminListGrants('mia')).grants.some((g) => g.role === 'reviewer')).toBe(false);

    await admin.adminUnassignOrgUnit('eng', 'mia');
    await admin.adminRemoveOrgUnit('eng-web');
    await admin.adminDeleteRole('reviewer');
    await admin.adminRemoveUser('newbie');
    expect((await admin.adminListUsers()).users.map((u) => u.name)).not.toContain('newbie');
    expect((await admin.adminListOrgUnits()).units.map((u) => u.name)).toEqual(['eng']);
  });

  it('reads and verifies the audit log', async () => {
    const all = await admin.adminAuditList();
    const actions = all.records.map((r) => r.action);
    expect(actions).toEqual(
      expect.arrayContaining(['user.create', 'role.create', 'grant.add', 'org.create']),
    );
    // Paging by seq.
    const first = all.records[0]!;
    const page = await admin.adminAuditList({ after: first.seq, limit: 2 });
    expect(page.records.map((r) => r.seq)).toEqual([first.seq + 1, first.seq + 2]);
    const verified = await admin.adminAuditVerify();
    expect(verified.ok).toBe(true);
    await expect(admin.adminAuditList({ limit: 0 })).rejects.toSatisfy((e) =>
      isClientError(e, 'INVALID_ARGUMENT'),
    );
  });

  it('refuses a member, and changes nothing', async () => {
    const before = (await admin.adminListUsers()).users.length;
    for (const attempt of [
      () => member.adminListUsers(),
      () => member.adminAddUser({ name: 'sneaky' }),
      () => member.adminCreateRole({ name: 'sneaky', permissions: ['kms.manage'] }),
      () => member.adminGrant({ user: 'mia', role: 'admin', scope: { kind: 'global' } }),
      () => member.adminAuditList(),
    ]) {
      const err = await attempt().catch((e: unknown) => e);
      expect(isWireError(err, 'FORBIDDEN')).toBe(true);
    }
    expect((await admin.adminListUsers()).users).toHaveLength(before);
    expect((await member.me()).permissions).not.toContain('role.manage');
  });
});
