/**
 * `qalqon admin ...`: users, devices, the KMS, roles and grants, org units and the audit
 * log. With `--data DIR` a command goes to the running server's local admin socket (the
 * operator: every operation allowed); with `--profile DIR` the user, role, org and audit
 * commands go instead through that device's pinned HTTPS connection to `/v1/admin/...`,
 * where the server allows them only if the device's user holds the permission (a refusal
 * is FORBIDDEN, exit 1).
 *
 * Both paths build the same AdminRequest body and print the same answers; the remote path
 * maps the body onto the client's admin methods (remote-admin.ts).
 */
import {
  AdminKmsRotation,
  AdminKmsStatus,
  type AdminRequestJson,
  AuditListResponse,
  AuditVerifyResponse,
  type GrantScopeJson,
  GrantsResponse,
  OrgUnitsResponse,
  PERMISSIONS,
  RoleInfo,
  RolesResponse,
  type z,
} from '@qalqon/wire';
import { adminRequest } from './admin-client.js';
import { type ClientValues, withClient } from './client-commands.js';
import { type CliIo, EXIT_OK, EXIT_REFUSED, UsageError } from './io.js';
import { remoteAdminRequest } from './remote-admin.js';

export const ADMIN_USAGE = `  qalqon admin (--data DIR | --profile DIR) user add NAME [--role ROLE ...] [--unit UNIT] [--json]
  qalqon admin --data DIR user code NAME [--json]
  qalqon admin (--data DIR | --profile DIR) user list [--json]
  qalqon admin (--data DIR | --profile DIR) user remove NAME [--json]
  qalqon admin --data DIR device list NAME [--json]
  qalqon admin --data DIR device remove NAME DEVICE_ID [--json]
  qalqon admin --data DIR kms status [--json]
  qalqon admin --data DIR kms rotate [--json]
  qalqon admin --data DIR kms destroy KEY_ID [--json]
  qalqon admin (--data DIR | --profile DIR) role list [--json]
  qalqon admin (--data DIR | --profile DIR) role create NAME --permission P [--permission P ...] [--json]
  qalqon admin (--data DIR | --profile DIR) role delete NAME [--json]
  qalqon admin (--data DIR | --profile DIR) role grant USER ROLE [--unit UNIT | --channel CHANNEL] [--json]
  qalqon admin (--data DIR | --profile DIR) role revoke USER ROLE [--unit UNIT | --channel CHANNEL] [--json]
  qalqon admin (--data DIR | --profile DIR) role grants [USER] [--json]
  qalqon admin (--data DIR | --profile DIR) org list [--json]
  qalqon admin (--data DIR | --profile DIR) org create NAME [--parent PARENT] [--json]
  qalqon admin (--data DIR | --profile DIR) org remove NAME [--json]
  qalqon admin (--data DIR | --profile DIR) org assign NAME USER [--json]
  qalqon admin (--data DIR | --profile DIR) org unassign NAME USER [--json]
  qalqon admin (--data DIR | --profile DIR) audit list [--since ISO-DATE-OR-MS] [--json]
  qalqon admin (--data DIR | --profile DIR) audit verify [--json]
      (--data: the local admin socket; --profile: over HTTPS as that device's user,
       allowed only if the user holds the permission)
`;

/** The options the admin commands read (a subset of cli.ts's). */
export interface AdminValues extends ClientValues {
  data?: string;
  role?: string[];
  unit?: string;
  permission?: string[];
  parent?: string;
  since?: string;
}

/** Operations that exist on the local admin socket only. */
const LOCAL_ONLY = new Set<AdminRequestJson['op']>([
  'user.code',
  'device.list',
  'device.remove',
  'kms.status',
  'kms.rotate',
  'kms.destroy',
]);

/** Records asked for per `audit.list` request; `audit list` pages until a page is short. */
export const AUDIT_PAGE = 1000;

function exactly(args: string[], n: number, what: string): void {
  if (args.length !== n) throw new UsageError(`expected ${what}`);
}

/** The grant scope from --unit / --channel (neither: global). */
function scopeOf(values: AdminValues): GrantScopeJson {
  if (values.unit !== undefined && values.channel !== undefined) {
    throw new UsageError('give at most one of --unit UNIT and --channel CHANNEL');
  }
  if (values.unit !== undefined) return { kind: 'unit', unit: values.unit };
  if (values.channel !== undefined) return { kind: 'channel', channel: values.channel };
  return { kind: 'global' };
}

/**
 * `--since WHEN`: whole milliseconds since the epoch, or an ISO-8601 date or date-time
 * (a date alone is midnight UTC; a time without an offset is local time).
 */
export function parseSince(when: string): number {
  if (/^[0-9]{1,16}$/.test(when)) {
    const ms = Number(when);
    if (Number.isSafeInteger(ms)) return ms;
  } else if (
    /^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,3})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?$/.test(
      when,
    )
  ) {
    const ms = Date.parse(when);
    if (Number.isSafeInteger(ms) && ms >= 0) return ms;
  }
  throw new UsageError('--since expected an ISO-8601 date or date-time, or milliseconds since 1970');
}

/** The option each admin command may take besides --data/--profile/--json, checked in one place. */
const OPTION_USE: Readonly<Record<string, readonly string[]>> = {
  role: ['user.add'],
  unit: ['user.add', 'role.grant', 'role.revoke'],
  channel: ['role.grant', 'role.revoke'],
  permission: ['role.create'],
  parent: ['org.create'],
  since: ['audit.list'],
};

const OPTION_LABEL: Readonly<Record<string, string>> = {
  role: '--role',
  unit: '--unit',
  channel: '--channel',
  permission: '--permission',
  parent: '--parent',
  since: '--since',
};

/** The AdminRequest for `admin AREA VERB ARGS...` and its options. */
export function adminBody(rest: string[], values: AdminValues): AdminRequestJson {
  const body = adminBodyOf(rest, values);
  for (const [opt, ops] of Object.entries(OPTION_USE)) {
    if (values[opt as keyof AdminValues] !== undefined && !ops.includes(body.op)) {
      const where = ops.map((o) => `"${o.replace('.', ' ')}"`).join(', ');
      throw new UsageError(`${OPTION_LABEL[opt]} applies to ${where} only`);
    }
  }
  for (const o of ['to', 'wait', 'server', 'code', 'pin', 'device-name', 'keystore', 'manager'] as const) {
    if (values[o] !== undefined) throw new UsageError(`--${o} does not apply to "admin"`);
  }
  return body;
}

function adminBodyOf(rest: string[], values: AdminValues): AdminRequestJson {
  const [area, verb, ...args] = rest;
  const key = `${area ?? ''} ${verb ?? ''}`.trim();
  switch (key) {
    case 'user add':
      exactly(args, 1, 'a user name: user add NAME');
      return {
        op: 'user.add',
        name: args[0]!,
        ...(values.role === undefined ? {} : { roles: values.role }),
        ...(values.unit === undefined ? {} : { unit: values.unit }),
      };
    case 'user code':
      exactly(args, 1, 'a user name: user code NAME');
      return { op: 'user.code', name: args[0]! };
    case 'user list':
      exactly(args, 0, 'no arguments after "user list"');
      return { op: 'user.list' };
    case 'user remove':
      exactly(args, 1, 'a user name: user remove NAME');
      return { op: 'user.remove', name: args[0]! };
    case 'device list':
      exactly(args, 1, 'a user name: device list NAME');
      return { op: 'device.list', name: args[0]! };
    case 'device remove': {
      exactly(args, 2, 'a user name and device id: device remove NAME DEVICE_ID');
      const id = args[1]!;
      if (!/^[1-9][0-9]{0,9}$/.test(id)) throw new UsageError('DEVICE_ID must be a positive integer');
      return { op: 'device.remove', name: args[0]!, deviceId: Number(id) };
    }
    case 'kms status':
      exactly(args, 0, 'no arguments after "kms status"');
      return { op: 'kms.status' };
    case 'kms rotate':
      exactly(args, 0, 'no arguments after "kms rotate"');
      return { op: 'kms.rotate' };
    case 'kms destroy': {
      exactly(args, 1, 'a key version: kms destroy KEY_ID');
      const keyId = args[0]!;
      if (!/^[A-Za-z0-9._-]{1,64}$/.test(keyId)) {
        throw new UsageError('KEY_ID must be a key version id as "kms status" shows it');
      }
      return { op: 'kms.destroy', keyId };
    }
    case 'role list':
      exactly(args, 0, 'no arguments after "role list"');
      return { op: 'role.list' };
    case 'role create': {
      exactly(args, 1, 'a role name: role create NAME --permission P');
      const permissions = values.permission ?? [];
      if (permissions.length === 0) throw new UsageError('role create needs at least one --permission P');
      const unknown = permissions.find((p) => !(PERMISSIONS as readonly string[]).includes(p));
      if (unknown !== undefined) {
        throw new UsageError(
          `unknown permission "${unknown}"; the permissions are ${PERMISSIONS.join(', ')}`,
        );
      }
      return {
        op: 'role.create',
        name: args[0]!,
        permissions: permissions as (typeof PERMISSIONS)[number][],
      };
    }
    case 'role delete':
      exactly(args, 1, 'a role name: role delete NAME');
      return { op: 'role.delete', name: args[0]! };
    case 'role grant':
    case 'role revoke':
      exactly(args, 2, `a user and a role: role ${verb} USER ROLE`);
      return {
        op: verb === 'grant' ? 'role.grant' : 'role.revoke',
        user: args[0]!,
        role: args[1]!,
        scope: scopeOf(values),
      };
    case 'role grants':
      if (args.length > 1) throw new UsageError('expected at most a user name: role grants [USER]');
      return args.length === 1 ? { op: 'role.grants', user: args[0]! } : { op: 'role.grants' };
    case 'org list':
      exactly(args, 0, 'no arguments after "org list"');
      return { op: 'org.list' };
    case 'org create':
      exactly(args, 1, 'a unit name: org create NAME [--parent PARENT]');
      return {
        op: 'org.create',
        name: args[0]!,
        ...(values.parent === undefined ? {} : { parent: values.parent }),
      };
    case 'org remove':
      exactly(args, 1, 'a unit name: org remove NAME');
      return { op: 'org.remove', name: args[0]! };
    case 'org assign':
    case 'org unassign':
      exactly(args, 2, `a unit and a user: org ${verb} NAME USER`);
      return { op: verb === 'assign' ? 'org.assign' : 'org.unassign', name: args[0]!, user: args[1]! };
    case 'audit list':
      exactly(args, 0, 'no arguments after "audit list" (use --since WHEN)');
      return values.since === undefined
        ? { op: 'audit.list' }
        : { op: 'audit.list', since: parseSince(values.since) };
    case 'audit verify':
      exactly(args, 0, 'no arguments after "audit verify"');
      return { op: 'audit.verify' };
    default:
      throw new UsageError(`unknown command "admin ${key}"`.trimEnd());
  }
}

type Send = (body: AdminRequestJson) => Promise<Record<string, unknown>>;

/** Every record since the body's `since`, paging by sequence number. */
async function auditRecords(
  send: Send,
  body: Extract<AdminRequestJson, { op: 'audit.list' }>,
): Promise<z.output<typeof AuditListResponse>['records']> {
  const records: z.output<typeof AuditListResponse>['records'] = [];
  let after: number | undefined;
  for (;;) {
    const page = AuditListResponse.parse(
      await send({ ...body, limit: AUDIT_PAGE, ...(after === undefined ? {} : { after }) }),
    ).records;
    records.push(...page);
    const last = page.at(-1)?.seq;
    // A short page is the end; so is a page that does not move forward (never loop).
    if (page.length < AUDIT_PAGE || last === undefined || (after !== undefined && last <= after)) {
      return records;
    }
    after = last;
  }
}

/** Runs `qalqon admin ...` and returns its exit status. */
export async function adminCommand(io: CliIo, values: AdminValues, rest: string[]): Promise<number> {
  const data = values.data;
  const profile = values.profile;
  if ((data === undefined || data === '') === (profile === undefined || profile === '')) {
    throw new UsageError('admin needs exactly one of --data DIR (on the server) and --profile DIR (remote)');
  }
  const body = adminBody(rest, values);
  const json = values.json === true;
  if (data !== undefined && data !== '') {
    return await answer(io, body, (b) => adminRequest(data, b), json);
  }
  if (LOCAL_ONLY.has(body.op)) {
    throw new UsageError(`"admin ${body.op.replace('.', ' ')}" works on the server only, with --data DIR`);
  }
  return await withClient(io, values, (client) =>
    answer(io, body, (b) => remoteAdminRequest(client, b), json),
  );
}

async function answer(io: CliIo, body: AdminRequestJson, send: Send, json: boolean): Promise<number> {
  if (body.op === 'audit.list') {
    const records = await auditRecords(send, body);
    printAdmin(io, body, { records }, json);
    return EXIT_OK;
  }
  const r = await send(body);
  const done = doneResult(body);
  if (done !== undefined) {
    // The server answers these with a bare {ok: true}: say what was done instead.
    printAdmin(io, body, done, json);
    return EXIT_OK;
  }
  if (body.op === 'audit.verify') {
    const v = AuditVerifyResponse.parse(r);
    if (json) io.stdout(`${JSON.stringify(v)}\n`);
    if (v.ok) {
      if (!json) io.stdout(`audit log ok: ${v.records} records, head ${v.head.seq} ${v.head.hash}\n`);
      return EXIT_OK;
    }
    io.stderr(
      `qalqon: the audit log fails at record ${v.seq} (${v.problem}): ${v.message.replace(/\.$/, '')}.\n`,
    );
    return EXIT_REFUSED;
  }
  printAdmin(io, body, r, json);
  return EXIT_OK;
}

/** The JSON printed for an operation the server answers with a bare OkResponse. */
function doneResult(body: AdminRequestJson): Record<string, unknown> | undefined {
  switch (body.op) {
    case 'user.remove':
      return { user: body.name, removed: true };
    case 'role.delete':
      return { role: body.name, deleted: true };
    case 'role.grant':
      return { user: body.user, role: body.role, scope: body.scope, granted: true };
    case 'role.revoke':
      return { user: body.user, role: body.role, scope: body.scope, revoked: true };
    case 'org.remove':
      return { unit: body.name, removed: true };
    case 'org.assign':
      return { unit: body.name, user: body.user, assigned: true };
    case 'org.unassign':
      return { unit: body.name, user: body.user, unassigned: true };
    default:
      return undefined;
  }
}

function scopeText(s: GrantScopeJson): string {
  switch (s.kind) {
    case 'global':
      return 'global';
    case 'unit':
      return `unit:${s.unit}`;
    case 'channel':
      return `channel:${s.channel}`;
  }
}

function scopeWords(s: GrantScopeJson): string {
  switch (s.kind) {
    case 'global':
      return 'everywhere';
    case 'unit':
      return `in org unit "${s.unit}" and its sub-units`;
    case 'channel':
      return `on channel #${s.channel}`;
  }
}

function actorText(a: z.output<typeof AuditListResponse>['records'][number]['actor']): string {
  switch (a.kind) {
    case 'device':
      return `${a.userName}/${a.deviceId}`;
    case 'operator':
      return 'operator';
    case 'anonymous':
      return `anonymous@${a.address}`;
    case 'server':
      return 'server';
  }
}

function printAdmin(io: CliIo, body: AdminRequestJson, r: Record<string, unknown>, json: boolean): void {
  if (json) {
    io.stdout(`${JSON.stringify(r)}\n`);
    return;
  }
  const out = (s: string) => io.stdout(s);
  switch (body.op) {
    case 'user.add':
    case 'user.code':
      out(
        `One-time enrolment code for user "${String(r.user)}" (valid until ${new Date(Number(r.expiresAt)).toISOString()}): ${String(r.enrollmentCode)}\n`,
      );
      return;
    case 'user.list':
      for (const u of r.users as {
        name: string;
        roles: string[];
        units?: string[];
        enrolled: boolean;
        devices: number;
      }[]) {
        out(
          `${u.name}\troles=${u.roles.join(',') || '-'}${u.units === undefined ? '' : `\tunits=${u.units.join(',') || '-'}`}\t${u.enrolled ? 'enrolled' : 'not enrolled'}\tdevices=${u.devices}\n`,
        );
      }
      return;
    case 'device.list':
      for (const d of r.devices as { deviceId: number; name: string; oneTimePrekeys: number }[]) {
        out(`${d.deviceId}\t${d.name}\tone-time prekeys=${d.oneTimePrekeys}\n`);
      }
      return;
    case 'user.remove':
      out(`Removed user "${body.name}".\n`);
      return;
    case 'device.remove':
      out(`Removed device ${body.deviceId} of user "${body.name}".\n`);
      return;
    case 'kms.status': {
      const s = AdminKmsStatus.parse(r);
      out(`KMS: ${s.provider} at ${s.location}\n`);
      for (const k of s.keyVersions) {
        out(
          `${k.keyId}\t${k.active ? 'active' : 'inactive'}\tcreated ${new Date(k.createdAt).toISOString()}\twraps ${k.wrappedKeys} data key(s), ${k.wrappedFileKeys} file key(s)\n`,
        );
      }
      return;
    }
    case 'kms.rotate': {
      const x = AdminKmsRotation.parse(r);
      out(
        `Rotated the key-encryption key from ${x.previousKeyId} to ${x.activeKeyId}; re-wrapped ${x.rewrapped} data key(s) and ${x.rewrappedFileKeys} file key(s).\n` +
          `Once no backup needs it, destroy the old version: kms destroy ${x.previousKeyId}\n`,
      );
      return;
    }
    case 'kms.destroy':
      out(`Destroyed key-encryption key version ${body.keyId}.\n`);
      return;
    case 'role.list':
      for (const role of RolesResponse.parse(r).roles) {
        out(`${role.name}\t${role.builtin ? 'built-in' : 'custom'}\t${role.permissions.join(',')}\n`);
      }
      return;
    case 'role.create': {
      const role = RoleInfo.parse(r);
      out(`Created role "${role.name}" with ${role.permissions.join(', ')}.\n`);
      return;
    }
    case 'role.delete':
      out(`Deleted role "${body.name}".\n`);
      return;
    case 'role.grant':
      out(`Granted role "${body.role}" to "${body.user}" ${scopeWords(body.scope)}.\n`);
      return;
    case 'role.revoke':
      out(`Revoked role "${body.role}" from "${body.user}" ${scopeWords(body.scope)}.\n`);
      return;
    case 'role.grants':
      for (const g of GrantsResponse.parse(r).grants) out(`${g.user}\t${g.role}\t${scopeText(g.scope)}\n`);
      return;
    case 'org.list':
      for (const u of OrgUnitsResponse.parse(r).units) {
        out(`${u.name}\tparent=${u.parent ?? '-'}\tusers=${u.users.join(',') || '-'}\n`);
      }
      return;
    case 'org.create':
      out(`Created org unit "${body.name}"${body.parent === undefined ? '' : ` under "${body.parent}"`}.\n`);
      return;
    case 'org.remove':
      out(`Removed org unit "${body.name}".\n`);
      return;
    case 'org.assign':
      out(`Put "${body.user}" in org unit "${body.name}".\n`);
      return;
    case 'org.unassign':
      out(`Took "${body.user}" out of org unit "${body.name}".\n`);
      return;
    case 'audit.list':
      for (const x of AuditListResponse.parse(r).records) {
        out(
          `${x.seq}\t${new Date(x.at).toISOString()}\t${actorText(x.actor)}\t${x.action}\t${x.target}\t${x.outcome}\n`,
        );
      }
      return;
    case 'audit.verify':
      // Printed by `answer` (it decides the exit status).
      return;
  }
}
