/**
 * `qalqon admin role|org|user` against a real server (`runServer`: TLS 1.3, SQLCipher, the
 * admin socket), run in-process: first as the operator over the local admin socket
 * (--data), then remotely over the pinned HTTPS connection of enrolled devices
 * (--profile), where an admin-role user's device may and a member's device is refused.
 */
import { join } from 'node:path';
import { BUILTIN_ROLES } from '@qalqon/wire';
import { describe, expect, it } from 'vitest';
import {
  addAndEnrol,
  oneJson,
  qalqon,
  sharedServer,
  TEST_PASSPHRASE,
  withoutKeystoreNotice,
} from './cli-harness.test-util.js';

const server = sharedServer('qalqon-cli-rbac-');

const local = (...args: string[]) => qalqon('admin', '--data', server.data, ...args);
const remote = (profile: string, ...args: string[]) =>
  qalqon('admin', '--profile', join(server.root, profile), ...args);

/** Runs a --json command that must succeed, and returns its one JSON object. */
async function ok(r: Promise<{ code: number; out: string; err: string }>): Promise<Record<string, unknown>> {
  const x = await r;
  expect(withoutKeystoreNotice(x.err)).toBe('');
  expect(x.code).toBe(0);
  return oneJson(x.out);
}

/** A refusal: exit 1, nothing on stdout, one sentence naming `code` on stderr. */
async function refused(
  r: Promise<{ code: number; out: string; err: string }>,
  code: string,
): Promise<string> {
  const x = await r;
  expect(x.out).toBe('');
  expect(withoutKeystoreNotice(x.err)).toMatch(new RegExp(`^qalqon: [^\\n]*\\(${code}\\)\\.\\n$`));
  expect(x.code).toBe(1);
  return x.err;
}

interface Grant {
  user: string;
  role: string;
  scope: { kind: string; unit?: string; channel?: string };
}
const grantsOf = async (user?: string) =>
  (await ok(local('role', 'grants', ...(user === undefined ? [] : [user]), '--json'))).grants as Grant[];
const units = async () =>
  (
    (await ok(local('org', 'list', '--json'))).units as {
      name: string;
      parent?: string;
      users: string[];
    }[]
  ).map((u) => [u.name, u.parent ?? null, u.users]);

describe('qalqon admin role|org over the local admin socket', () => {
  it('lists the built-in roles and creates a custom one; bad permissions are usage errors', async () => {
    const roles = (await ok(local('role', 'list', '--json'))).roles as {
      name: string;
      builtin: boolean;
      permissions: string[];
    }[];
    for (const [name, permissions] of Object.entries(BUILTIN_ROLES)) {
      expect(roles.find((r) => r.name === name)).toEqual({
        name,
        builtin: true,
        permissions: [...permissions].sort(),
      });
    }
    expect(
      await ok(
        local(
          'role',
          'create',
          'reviewer',
          '--permission',
          'user.manage',
          '--permission',
          'audit.read',
          '--json',
        ),
      ),
    ).toEqual({ name: 'reviewer', builtin: false, permissions: ['audit.read', 'user.manage'] });
    const human = await local('role', 'list');
    expect(human.out).toMatch(/^reviewer\tcustom\taudit\.read,user\.manage$/m);
    expect(human.out).toMatch(/^auditor\tbuilt-in\taudit\.read$/m);

    await refused(local('role', 'create', 'reviewer', '--permission', 'audit.read'), 'ROLE_EXISTS');
    await refused(local('role', 'create', 'member', '--permission', 'audit.read'), 'ROLE_EXISTS');
    for (const argv of [
      ['role', 'create', 'nothing'],
      ['role', 'create', 'odd', '--permission', 'world.domination'],
      ['role', 'list', '--permission', 'audit.read'],
      ['role', 'grant', 'x', 'reviewer', '--unit', 'a', '--channel', 'b'],
      ['org', 'create', 'a', 'b'],
      ['audit', 'list', '--since', 'yesterday'],
    ]) {
      const r = await local(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/^qalqon: /);
    }
    // Nothing of the refused commands was created.
    expect(
      ((await ok(local('role', 'list', '--json'))).roles as { name: string }[]).map((r) => r.name).sort(),
    ).toEqual(['admin', 'auditor', 'guest', 'member', 'reviewer']);
  });

  it('builds an org tree, scopes a grant to a unit, and refuses removing what is in use', async () => {
    expect(await ok(local('org', 'create', 'eng', '--json'))).toMatchObject({ name: 'eng', users: [] });
    expect(await ok(local('org', 'create', 'backend', '--parent', 'eng', '--json'))).toMatchObject({
      name: 'backend',
      parent: 'eng',
    });
    await refused(local('org', 'create', 'stray', '--parent', 'nowhere'), 'ORG_UNIT_NOT_FOUND');
    await refused(local('org', 'create', 'eng'), 'ORG_UNIT_EXISTS');

    // user add: the default role is member; --unit puts the user in a unit.
    const carol = await ok(local('user', 'add', 'carol', '--unit', 'backend', '--json'));
    expect(carol).toMatchObject({ user: 'carol', roles: ['member'] });
    expect(await ok(local('user', 'add', 'dan', '--role', 'guest', '--json'))).toMatchObject({
      roles: ['guest'],
    });
    expect(await ok(local('org', 'assign', 'eng', 'dan', '--json'))).toEqual({
      unit: 'eng',
      user: 'dan',
      assigned: true,
    });
    expect(await units()).toEqual([
      ['backend', 'eng', ['carol']],
      ['eng', null, ['dan']],
    ]);
    expect((await local('org', 'list')).out).toBe(
      'backend\tparent=eng\tusers=carol\neng\tparent=-\tusers=dan\n',
    );

    const granted = await local('role', 'grant', 'carol', 'reviewer', '--unit', 'eng');
    expect(granted).toMatchObject({
      code: 0,
      out: 'Granted role "reviewer" to "carol" in org unit "eng" and its sub-units.\n',
    });
    await refused(local('role', 'grant', 'carol', 'reviewer', '--unit', 'nowhere'), 'ORG_UNIT_NOT_FOUND');
    await refused(local('role', 'grant', 'nobody', 'reviewer'), 'USER_NOT_FOUND');
    await refused(local('role', 'grant', 'carol', 'no-such-role'), 'ROLE_NOT_FOUND');
    expect(await grantsOf('carol')).toEqual([
      { user: 'carol', role: 'member', scope: { kind: 'global' } },
      { user: 'carol', role: 'reviewer', scope: { kind: 'unit', unit: 'eng' } },
    ]);
    expect((await local('role', 'grants', 'carol')).out).toBe(
      'carol\tmember\tglobal\ncarol\treviewer\tunit:eng\n',
    );
    // All grants: the first admin's too.
    expect(await grantsOf()).toEqual(
      expect.arrayContaining([
        { user: 'admin', role: 'admin', scope: { kind: 'global' } },
        { user: 'dan', role: 'guest', scope: { kind: 'global' } },
        { user: 'carol', role: 'reviewer', scope: { kind: 'unit', unit: 'eng' } },
      ]),
    );

    // Built-in roles are not deletable; a granted role is in use; the code says which.
    await refused(local('role', 'delete', 'admin'), 'ROLE_BUILTIN');
    await refused(local('role', 'delete', 'reviewer'), 'ROLE_IN_USE');
    // A unit with a sub-unit, users or grants is not removable.
    await refused(local('org', 'remove', 'eng'), 'ORG_UNIT_NOT_EMPTY');
    await refused(local('org', 'remove', 'backend'), 'ORG_UNIT_NOT_EMPTY');
    expect(await units()).toHaveLength(2);

    expect(await ok(local('role', 'revoke', 'carol', 'reviewer', '--unit', 'eng', '--json'))).toEqual({
      user: 'carol',
      role: 'reviewer',
      scope: { kind: 'unit', unit: 'eng' },
      revoked: true,
    });
    expect(await grantsOf('carol')).toEqual([{ user: 'carol', role: 'member', scope: { kind: 'global' } }]);
    expect(await local('role', 'delete', 'reviewer')).toMatchObject({
      code: 0,
      out: 'Deleted role "reviewer".\n',
    });
    await refused(local('role', 'delete', 'reviewer'), 'ROLE_NOT_FOUND');

    expect(await local('org', 'unassign', 'backend', 'carol')).toMatchObject({ code: 0 });
    expect(await ok(local('org', 'remove', 'backend', '--json'))).toEqual({ unit: 'backend', removed: true });
    await refused(local('org', 'remove', 'eng'), 'ORG_UNIT_NOT_EMPTY');
    await ok(local('org', 'unassign', 'eng', 'dan', '--json'));
    await ok(local('org', 'remove', 'eng', '--json'));
    expect(await units()).toEqual([]);
  });
});

describe('qalqon admin --profile: remote administration by permission', () => {
  it("lets an admin-role user's device administer, and refuses a member's device with FORBIDDEN", async () => {
    await addAndEnrol(server, join(server.root, 'boss'), 'boss', '--role', 'admin');
    await addAndEnrol(server, join(server.root, 'mia'), 'mia');
    // A plain member reads and changes nothing administrative.
    for (const argv of [
      ['role', 'list'],
      ['org', 'list'],
      ['user', 'list'],
      ['role', 'grants', 'mia'],
    ]) {
      await refused(remote('mia', ...argv), 'FORBIDDEN');
    }

    // The admin-role device: roles, org units, grants, users, all over HTTPS.
    expect(
      await ok(remote('boss', 'role', 'create', 'helpdesk', '--permission', 'user.manage', '--json')),
    ).toEqual({
      name: 'helpdesk',
      builtin: false,
      permissions: ['user.manage'],
    });
    expect(await ok(remote('boss', 'org', 'create', 'sales', '--json'))).toMatchObject({ name: 'sales' });
    expect(await ok(remote('boss', 'org', 'create', 'emea', '--parent', 'sales', '--json'))).toMatchObject({
      parent: 'sales',
    });
    await ok(remote('boss', 'org', 'assign', 'emea', 'mia', '--json'));
    await ok(remote('boss', 'role', 'grant', 'mia', 'helpdesk', '--unit', 'sales', '--json'));
    expect(await grantsOf('mia')).toEqual([
      { user: 'mia', role: 'helpdesk', scope: { kind: 'unit', unit: 'sales' } },
      { user: 'mia', role: 'member', scope: { kind: 'global' } },
    ]);
    expect((await ok(remote('boss', 'role', 'grants', 'mia', '--json'))).grants).toEqual(
      await grantsOf('mia'),
    );
    expect((await ok(remote('boss', 'org', 'list', '--json'))).units).toEqual(
      (await ok(local('org', 'list', '--json'))).units,
    );
    const added = await ok(remote('boss', 'user', 'add', 'newbie', '--unit', 'emea', '--json'));
    expect(added).toMatchObject({ user: 'newbie', roles: ['member'] });
    expect(added.enrollmentCode).toMatch(/^[A-Za-z0-9_-]{20}$/);
    const users = (await ok(remote('boss', 'user', 'list', '--json'))).users as {
      name: string;
      units: string[];
    }[];
    expect(users.find((u) => u.name === 'newbie')?.units).toEqual(['emea']);
    await refused(remote('boss', 'role', 'delete', 'member'), 'ROLE_BUILTIN');
    await refused(remote('boss', 'role', 'delete', 'helpdesk'), 'ROLE_IN_USE');

    // The member's device: every administrative command refused, nothing changed.
    const before = {
      roles: await ok(local('role', 'list', '--json')),
      grants: await grantsOf(),
      units: await units(),
    };
    for (const argv of [
      ['role', 'list'],
      ['role', 'create', 'mine', '--permission', 'audit.read'],
      ['role', 'grant', 'mia', 'admin'],
      ['role', 'delete', 'helpdesk'],
      ['org', 'create', 'rebels'],
      ['org', 'remove', 'emea'],
      ['user', 'add', 'sock-puppet'],
      // Her helpdesk grant is for the users of sales: carol is in no unit.
      ['user', 'remove', 'carol'],
    ]) {
      const err = await refused(remote('mia', ...argv, '--json'), 'FORBIDDEN');
      expect(err, argv.join(' ')).not.toContain(TEST_PASSPHRASE);
    }
    expect({
      roles: await ok(local('role', 'list', '--json')),
      grants: await grantsOf(),
      units: await units(),
    }).toEqual(before);
    expect(
      ((await ok(local('user', 'list', '--json'))).users as { name: string }[]).map((u) => u.name).sort(),
    ).toEqual(['admin', 'boss', 'carol', 'dan', 'mia', 'newbie']);
    // Within her unit's subtree the scoped grant is enough: add a user to emea and remove them.
    expect(await ok(remote('mia', 'user', 'add', 'temp', '--unit', 'emea', '--json'))).toMatchObject({
      user: 'temp',
    });
    expect(await ok(remote('mia', 'user', 'remove', 'temp', '--json'))).toEqual({
      user: 'temp',
      removed: true,
    });

    // Server-only operations are usage errors remotely, and --data with --profile is too.
    for (const argv of [
      ['admin', '--profile', join(server.root, 'boss'), 'kms', 'status'],
      ['admin', '--profile', join(server.root, 'boss'), 'user', 'code', 'newbie'],
      ['admin', '--data', server.data, '--profile', join(server.root, 'boss'), 'role', 'list'],
      ['admin', 'role', 'list'],
    ]) {
      const r = await qalqon(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.out).toBe('');
    }

    // Removing users remotely, then the role once no longer granted.
    expect(await remote('boss', 'user', 'remove', 'newbie')).toMatchObject({
      code: 0,
      out: 'Removed user "newbie".\n',
    });
    await ok(remote('boss', 'role', 'revoke', 'mia', 'helpdesk', '--unit', 'sales', '--json'));
    expect(await ok(remote('boss', 'role', 'delete', 'helpdesk', '--json'))).toEqual({
      role: 'helpdesk',
      deleted: true,
    });
  });
});
