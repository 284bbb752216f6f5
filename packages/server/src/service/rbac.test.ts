/**
 * Authorisation against a real server (real TLS, real SQLCipher): every route the app
 * registers and every WebSocket operation, called by a user of each built-in role, must
 * be allowed or refused (403 FORBIDDEN) exactly as the literal table below says; a route
 * the table does not know fails the test. Then scoped grants: unit grants reach sub-units
 * and not siblings, channel grants one channel, custom roles, and revocation at once.
 */
import { randomBytes, xeddsaSign } from '@qalqon/crypto';
import {
  channelChangeSigningMessage,
  encodeBase64,
  encodeChannelChange,
  GENESIS_PREV,
  type ServerFrameJson,
  signedChangeJson,
} from '@qalqon/wire';
import Fastify from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Authorizer, installAuthorization, ROUTE_RULES } from './authz.js';
import { auditWriter, type ServiceContext } from './context.js';
import {
  type Enrolled,
  enrol,
  type Harness,
  type HttpResult,
  http,
  signIn,
  startHarness,
  WsClient,
} from './harness.test-util.js';

type Role = 'admin' | 'auditor' | 'member' | 'guest';
const ROLES: readonly Role[] = ['admin', 'auditor', 'member', 'guest'];
const ALL = ROLES;
const ADMIN: readonly Role[] = ['admin'];
const SENDERS: readonly Role[] = ['admin', 'member', 'guest'];

interface Fixture {
  /** A channel none of the role users is a member of. */
  readonly channelId: string;
  readonly owner: string;
}

interface Case {
  readonly allow: readonly Role[];
  readonly path: (f: Fixture) => string;
  readonly body?: unknown;
}

const at = (p: string) => () => p;

/** THE expected table: who may call each route. Allowed calls get anything but 403 FORBIDDEN. */
const EXPECTED: Record<string, Case> = {
  'GET /healthz': { allow: ALL, path: at('/healthz') },
  'GET /metrics': { allow: ALL, path: at('/metrics') },
  'POST /v1/enrol': { allow: ALL, path: at('/v1/enrol'), body: {} },
  'POST /v1/auth/challenge': { allow: ALL, path: at('/v1/auth/challenge'), body: {} },
  'POST /v1/auth/session': { allow: ALL, path: at('/v1/auth/session'), body: {} },
  'POST /v1/link': { allow: ALL, path: at('/v1/link'), body: {} },
  'POST /v1/link/poll': { allow: ALL, path: at('/v1/link/poll'), body: {} },
  'POST /v1/link/complete': { allow: ALL, path: at('/v1/link/complete'), body: {} },
  'GET /v1/me': { allow: ALL, path: at('/v1/me') },
  'GET /v1/devices': { allow: ALL, path: at('/v1/devices') },
  'DELETE /v1/devices/:deviceId': { allow: ALL, path: at('/v1/devices/999') },
  'POST /v1/link/lookup': { allow: ALL, path: at('/v1/link/lookup'), body: {} },
  'POST /v1/link/approve': { allow: ALL, path: at('/v1/link/approve'), body: {} },
  'GET /v1/keys': { allow: ALL, path: at('/v1/keys') },
  'GET /v1/keys/:userName': { allow: ALL, path: at('/v1/keys/nobody') },
  'GET /v1/keys/:userName/devices': { allow: ALL, path: (f) => `/v1/keys/${f.owner}/devices` },
  'GET /v1/presence/:userName': { allow: ALL, path: (f) => `/v1/presence/${f.owner}` },
  'POST /v1/keys/one-time': { allow: ALL, path: at('/v1/keys/one-time'), body: {} },
  'PUT /v1/keys/signed': { allow: ALL, path: at('/v1/keys/signed'), body: {} },
  'PUT /v1/keys/kyber': { allow: ALL, path: at('/v1/keys/kyber'), body: {} },
  'POST /v1/messages': { allow: SENDERS, path: at('/v1/messages'), body: {} },
  'GET /v1/channels': { allow: ALL, path: at('/v1/channels') },
  'POST /v1/channels': { allow: ['admin', 'member'], path: at('/v1/channels'), body: {} },
  'GET /v1/channels/:channelId': { allow: ALL, path: (f) => `/v1/channels/${f.channelId}` },
  'POST /v1/channels/:channelId/changes': {
    allow: ALL,
    path: (f) => `/v1/channels/${f.channelId}/changes`,
    body: {},
  },
  'POST /v1/channels/:channelId/messages': {
    allow: SENDERS,
    path: (f) => `/v1/channels/${f.channelId}/messages`,
    body: {},
  },
  'GET /v1/files': { allow: ALL, path: at('/v1/files') },
  'POST /v1/files': { allow: ALL, path: at('/v1/files'), body: {} },
  'GET /v1/files/:fileId': { allow: ALL, path: at(`/v1/files/${'0'.repeat(32)}`) },
  'DELETE /v1/files/:fileId': { allow: ALL, path: at(`/v1/files/${'0'.repeat(32)}`) },
  'PUT /v1/files/:fileId/content': { allow: ALL, path: at(`/v1/files/${'0'.repeat(32)}/content`), body: {} },
  'GET /v1/files/:fileId/content': { allow: ALL, path: at(`/v1/files/${'0'.repeat(32)}/content`) },
  'GET /v1/admin/users': { allow: ADMIN, path: at('/v1/admin/users') },
  'POST /v1/admin/users': { allow: ADMIN, path: at('/v1/admin/users'), body: {} },
  'DELETE /v1/admin/users/:userName': { allow: ADMIN, path: at('/v1/admin/users/nobody') },
  'GET /v1/admin/roles': { allow: ADMIN, path: at('/v1/admin/roles') },
  'POST /v1/admin/roles': { allow: ADMIN, path: at('/v1/admin/roles'), body: {} },
  'DELETE /v1/admin/roles/:roleName': { allow: ADMIN, path: at('/v1/admin/roles/norole') },
  'GET /v1/admin/grants': { allow: ADMIN, path: at('/v1/admin/grants') },
  'POST /v1/admin/grants': { allow: ADMIN, path: at('/v1/admin/grants'), body: {} },
  'POST /v1/admin/grants/revoke': { allow: ADMIN, path: at('/v1/admin/grants/revoke'), body: {} },
  'GET /v1/admin/org': { allow: ADMIN, path: at('/v1/admin/org') },
  'POST /v1/admin/org': { allow: ADMIN, path: at('/v1/admin/org'), body: {} },
  'DELETE /v1/admin/org/:unitName': { allow: ADMIN, path: at('/v1/admin/org/nounit') },
  'POST /v1/admin/org/:unitName/users': { allow: ADMIN, path: at('/v1/admin/org/nounit/users'), body: {} },
  'POST /v1/admin/org/:unitName/users/remove': {
    allow: ADMIN,
    path: at('/v1/admin/org/nounit/users/remove'),
    body: {},
  },
  'GET /v1/admin/audit': { allow: ['admin', 'auditor'], path: at('/v1/admin/audit') },
  'GET /v1/admin/audit/verify': { allow: ['admin', 'auditor'], path: at('/v1/admin/audit/verify') },
};

const EXPECTED_WS: Record<string, readonly Role[]> = {
  'WS send': SENDERS,
  'WS ack': ALL,
  'WS ping': ALL,
};

function errorCode(r: HttpResult): string | undefined {
  return (r.json as { error?: { code?: string } } | undefined)?.error?.code;
}

interface User extends Enrolled {
  readonly name: string;
  readonly token: string;
}

/** Creates a channel owned by `owner` (a real signed genesis); returns its id. */
async function createChannel(h: Harness, owner: User, name: string): Promise<string> {
  const id = Buffer.from(randomBytes(16)).toString('hex');
  const change = encodeChannelChange({
    v: 1,
    channel: id,
    seq: 0,
    prev: GENESIS_PREV,
    at: Date.now(),
    by: { userId: owner.userId, deviceId: owner.deviceId },
    op: 'create',
    name,
    userName: owner.name,
    identityKey: owner.keys.json.identityKey,
  });
  const entry = signedChangeJson({
    change,
    signature: xeddsaSign(owner.keys.identity.privateKey, channelChangeSigningMessage(change)),
  });
  const r = await http(h, 'POST', '/v1/channels', { entry }, { token: owner.token });
  if (r.status !== 200) throw new Error(`channel creation failed: ${r.status} ${r.text}`);
  return id;
}

async function makeUser(h: Harness, name: string, roles: readonly string[]): Promise<User> {
  const e = await enrol(h, (await h.addUser(name, { roles })).code);
  return { ...e, name, token: await signIn(h, e) };
}

describe('the route rules', () => {
  let h: Harness;
  let users: Record<Role, User>;
  let fixture: Fixture;
  beforeAll(async () => {
    h = await startHarness();
    users = {
      admin: await makeUser(h, 'admin1', ['admin']),
      auditor: await makeUser(h, 'auditor1', ['auditor']),
      member: await makeUser(h, 'member1', ['member']),
      guest: await makeUser(h, 'guest1', ['guest']),
    };
    const owner = await makeUser(h, 'owner', ['member']);
    const channelId = await createChannel(h, owner, 'fixture');
    fixture = { channelId, owner: owner.name };
  });
  afterAll(async () => {
    await h.close();
  });

  it('names every registered route and WebSocket operation in the expected table, and nothing else', () => {
    const registered = [...h.service.routes].sort();
    expect(registered).toEqual(Object.keys(EXPECTED).sort());
    // Every rule is for a registered route or a WebSocket operation: no stale rules.
    const ws = Object.keys(ROUTE_RULES).filter((k) => k.startsWith('WS '));
    expect(ws.sort()).toEqual(Object.keys(EXPECTED_WS).sort());
    expect(Object.keys(ROUTE_RULES).sort()).toEqual([...registered, ...ws].sort());
  });

  it('allows and refuses every route for every built-in role exactly as the table says', async () => {
    const mismatches: string[] = [];
    for (const key of h.service.routes) {
      const c = EXPECTED[key];
      if (!c) {
        mismatches.push(`${key}: not in the expected table`);
        continue;
      }
      const method = key.slice(0, key.indexOf(' '));
      for (const role of ROLES) {
        const r = await http(h, method, c.path(fixture), c.body, { token: users[role].token });
        const denied = r.status === 403 && errorCode(r) === 'FORBIDDEN';
        const allowed = c.allow.includes(role);
        if (allowed === denied) mismatches.push(`${key} as ${role}: ${r.status} ${errorCode(r) ?? ''}`);
        // A signed-in device never gets UNAUTHENTICATED from a route it may call.
        if (allowed && r.status === 401) mismatches.push(`${key} as ${role}: 401`);
      }
    }
    expect(mismatches).toEqual([]);
  });

  it('allows and refuses every WebSocket operation for every built-in role exactly as the table says', async () => {
    const mismatches: string[] = [];
    const target = users.admin;
    for (const role of ROLES) {
      const c = await WsClient.open(h, users[role].token);
      try {
        const outcome: Record<string, 'allowed' | 'denied' | string> = {};
        // send: answered `sent` or `error` with the request id.
        c.send({
          type: 'send',
          id: 's1',
          messages: [
            {
              recipientUserId: target.userId,
              recipientDeviceId: target.deviceId,
              body: encodeBase64(randomBytes(8)),
            },
          ],
        });
        const s = await c.next<ServerFrameJson>(
          (f) => (f.type === 'sent' || f.type === 'error') && f.id === 's1',
        );
        outcome['WS send'] =
          s.type === 'sent'
            ? 'allowed'
            : s.type === 'error' && s.code === 'FORBIDDEN'
              ? 'denied'
              : `error ${s.type === 'error' ? s.code : ''}`;
        // ack: no answer when it works; a ping after it shows whether an error came first.
        c.send({ type: 'ack', ids: ['0'.repeat(32)] });
        c.send({ type: 'ping', id: 'after-ack' });
        const a = await c.next<ServerFrameJson>(
          (f) => f.type === 'error' || (f.type === 'pong' && f.id === 'after-ack'),
        );
        outcome['WS ack'] =
          a.type === 'pong'
            ? 'allowed'
            : a.type === 'error' && a.code === 'FORBIDDEN'
              ? 'denied'
              : `error ${a.type === 'error' ? a.code : ''}`;
        c.send({ type: 'ping', id: 'p1' });
        const p = await c.next<ServerFrameJson>(
          (f) => f.type === 'error' || (f.type === 'pong' && f.id === 'p1'),
        );
        outcome['WS ping'] =
          p.type === 'pong'
            ? 'allowed'
            : p.type === 'error' && p.code === 'FORBIDDEN'
              ? 'denied'
              : `error ${p.type === 'error' ? p.code : ''}`;
        for (const [op, allowedRoles] of Object.entries(EXPECTED_WS)) {
          const want = allowedRoles.includes(role) ? 'allowed' : 'denied';
          if (outcome[op] !== want) mismatches.push(`${op} as ${role}: ${outcome[op]}`);
        }
      } finally {
        c.close();
      }
    }
    expect(mismatches).toEqual([]);
  });

  it('refuses to start with a route that has no rule', async () => {
    const app = Fastify({ logger: false, exposeHeadRoutes: false });
    const ctx = {
      authz: new Authorizer(h.storage),
      audit: auditWriter(h.storage, Date.now, () => {}),
    } as unknown as ServiceContext;
    installAuthorization(app, ctx);
    app.get('/healthz', async () => ({ status: 'ok' }));
    // As createService registers its plugins: the registration (and so the start) fails.
    const start = async () => {
      await app.register(async (child) => {
        child.get('/v1/unruled', async () => ({ ok: true }));
      });
      await app.ready();
    };
    await expect(start()).rejects.toThrow(/GET \/v1\/unruled has no rule/);
    await app.close().catch(() => undefined);
  });
});

describe('scoped grants', () => {
  it('a unit grant covers its sub-units and not a sibling; a channel grant one channel', async () => {
    const h = await startHarness({ adminSocket: true });
    try {
      const admin = async (body: Record<string, unknown>) => {
        const r = await h.admin(body);
        expect(r.status, r.text).toBe(200);
        return r.json;
      };
      await admin({ op: 'org.create', name: 'corp' });
      await admin({ op: 'org.create', name: 'eng', parent: 'corp' });
      await admin({ op: 'org.create', name: 'backend', parent: 'eng' });
      await admin({ op: 'org.create', name: 'sales', parent: 'corp' });
      // A unit administrator of eng (no global roles at all).
      const boss = await makeUser(h, 'boss', []);
      await admin({ op: 'role.grant', user: 'boss', role: 'admin', scope: { kind: 'unit', unit: 'eng' } });
      const add = (name: string, unit?: string) =>
        http(h, 'POST', '/v1/admin/users', { name, ...(unit ? { unit } : {}) }, { token: boss.token });

      expect((await add('in-eng', 'eng')).status).toBe(200);
      expect((await add('in-backend', 'backend')).status).toBe(200);
      const sibling = await add('in-sales', 'sales');
      expect([sibling.status, errorCode(sibling)]).toEqual([403, 'FORBIDDEN']);
      const top = await add('nowhere');
      expect([top.status, errorCode(top)]).toEqual([403, 'FORBIDDEN']);
      expect(await h.storage.findUserByName('in-sales')).toBeUndefined();
      // Giving a global role beyond the default needs role.manage everywhere.
      const escalate = await http(
        h,
        'POST',
        '/v1/admin/users',
        { name: 'x2', unit: 'eng', roles: ['admin'] },
        { token: boss.token },
      );
      expect([escalate.status, errorCode(escalate)]).toEqual([403, 'FORBIDDEN']);
      expect(await h.storage.findUserByName('x2')).toBeUndefined();

      // Removing: a user in a sub-unit yes, one in a sibling unit no.
      await admin({ op: 'user.add', name: 'sam', unit: 'sales' });
      const rmSales = await http(h, 'DELETE', '/v1/admin/users/sam', undefined, { token: boss.token });
      expect([rmSales.status, errorCode(rmSales)]).toEqual([403, 'FORBIDDEN']);
      expect(
        (await http(h, 'DELETE', '/v1/admin/users/in-backend', undefined, { token: boss.token })).status,
      ).toBe(200);
      // Org changes within the subtree, not beside it.
      expect(
        (await http(h, 'POST', '/v1/admin/org', { name: 'infra', parent: 'backend' }, { token: boss.token }))
          .status,
      ).toBe(200);
      expect(
        (await http(h, 'POST', '/v1/admin/org', { name: 'hr', parent: 'sales' }, { token: boss.token }))
          .status,
      ).toBe(403);
      expect(
        (await http(h, 'POST', '/v1/admin/org', { name: 'toplevel' }, { token: boss.token })).status,
      ).toBe(403);
      // Global-only permissions are not reached by a unit grant.
      expect((await http(h, 'GET', '/v1/admin/audit', undefined, { token: boss.token })).status).toBe(403);

      // 1:1 sending by unit: a member grant on eng lets a user in backend send, one in sales not.
      const dev = await makeUser(h, 'dev', []);
      const rep = await makeUser(h, 'rep', []);
      await admin({ op: 'org.assign', name: 'backend', user: 'dev' });
      await admin({ op: 'org.assign', name: 'sales', user: 'rep' });
      await admin({ op: 'role.grant', user: 'dev', role: 'member', scope: { kind: 'unit', unit: 'eng' } });
      await admin({ op: 'role.grant', user: 'rep', role: 'member', scope: { kind: 'unit', unit: 'eng' } });
      const msg = (u: User) =>
        http(
          h,
          'POST',
          '/v1/messages',
          {
            messages: [
              {
                recipientUserId: boss.userId,
                recipientDeviceId: boss.deviceId,
                body: encodeBase64(randomBytes(8)),
              },
            ],
          },
          { token: u.token },
        );
      expect((await msg(dev)).status).toBe(200);
      expect((await msg(rep)).status).toBe(403);

      // A custom role scoped to one channel: channel.manage lets its holder read that log only.
      const owner = await makeUser(h, 'owner', ['member']);
      const chA = await createChannel(h, owner, 'alpha');
      const chB = await createChannel(h, owner, 'beta');
      await admin({ op: 'role.create', name: 'moderator', permissions: ['channel.manage'] });
      const mod = await makeUser(h, 'mod', ['guest']);
      await admin({
        op: 'role.grant',
        user: 'mod',
        role: 'moderator',
        scope: { kind: 'channel', channel: chA },
      });
      expect((await http(h, 'GET', `/v1/channels/${chA}`, undefined, { token: mod.token })).status).toBe(200);
      const b = await http(h, 'GET', `/v1/channels/${chB}`, undefined, { token: mod.token });
      expect([b.status, errorCode(b)]).toEqual([403, 'NOT_A_MEMBER']);
      // Revoked: refused at once on this node.
      await admin({
        op: 'role.revoke',
        user: 'mod',
        role: 'moderator',
        scope: { kind: 'channel', channel: chA },
      });
      const a2 = await http(h, 'GET', `/v1/channels/${chA}`, undefined, { token: mod.token });
      expect([a2.status, errorCode(a2)]).toEqual([403, 'NOT_A_MEMBER']);
    } finally {
      await h.close();
    }
  });

  it('custom roles work, and a revoked grant takes effect at once, also on an open WebSocket', async () => {
    const h = await startHarness({ adminSocket: true });
    try {
      const admin = async (body: Record<string, unknown>) => {
        const r = await h.admin(body);
        expect(r.status, r.text).toBe(200);
        return r.json;
      };
      // A remote administrator creates the custom role and grants it.
      const root = await makeUser(h, 'root', ['admin']);
      const created = await http(
        h,
        'POST',
        '/v1/admin/roles',
        { name: 'sender', permissions: ['message.send'] },
        { token: root.token },
      );
      expect(created.status, created.text).toBe(200);
      expect(created.json).toEqual({ name: 'sender', builtin: false, permissions: ['message.send'] });
      const u = await makeUser(h, 'quiet', []);
      const peer = await makeUser(h, 'peer', []);
      const send = () =>
        http(
          h,
          'POST',
          '/v1/messages',
          {
            messages: [
              {
                recipientUserId: peer.userId,
                recipientDeviceId: peer.deviceId,
                body: encodeBase64(randomBytes(8)),
              },
            ],
          },
          { token: u.token },
        );
      expect((await send()).status).toBe(403);
      const grant = { user: 'quiet', role: 'sender', scope: { kind: 'global' } };
      expect((await http(h, 'POST', '/v1/admin/grants', grant, { token: root.token })).status).toBe(200);
      expect((await send()).status).toBe(200);
      const me = (await http(h, 'GET', '/v1/me', undefined, { token: u.token })).json as {
        permissions: string[];
      };
      expect(me.permissions).toEqual(['message.send']);

      const ws = await WsClient.open(h, u.token);
      try {
        const frame = (id: string) => ({
          type: 'send',
          id,
          messages: [
            {
              recipientUserId: peer.userId,
              recipientDeviceId: peer.deviceId,
              body: encodeBase64(randomBytes(8)),
            },
          ],
        });
        ws.send(frame('w1'));
        expect((await ws.next((f) => (f.type === 'sent' || f.type === 'error') && f.id === 'w1')).type).toBe(
          'sent',
        );
        expect((await http(h, 'POST', '/v1/admin/grants/revoke', grant, { token: root.token })).status).toBe(
          200,
        );
        expect((await send()).status).toBe(403);
        ws.send(frame('w2'));
        const refused = await ws.next<ServerFrameJson>(
          (f) => (f.type === 'sent' || f.type === 'error') && f.id === 'w2',
        );
        expect(refused).toMatchObject({ type: 'error', code: 'FORBIDDEN' });
      } finally {
        ws.close();
      }
      // The role is unused again and can be deleted; built-ins cannot.
      expect(
        (await http(h, 'DELETE', '/v1/admin/roles/sender', undefined, { token: root.token })).status,
      ).toBe(200);
      const builtin = await http(h, 'DELETE', '/v1/admin/roles/member', undefined, { token: root.token });
      expect([builtin.status, errorCode(builtin)]).toEqual([409, 'ROLE_BUILTIN']);
      await admin({ op: 'role.list' });
    } finally {
      await h.close();
    }
  });

  it('authorises a stream of sends from the cache, not the storage', async () => {
    const counted = new Set(['getUser', 'listGrants', 'listUserOrgUnits', 'listRoles', 'listOrgUnits']);
    let reads = 0;
    const h = await startHarness({
      wrapStorage: (st) =>
        new Proxy(st, {
          get(target, prop, receiver) {
            const v = Reflect.get(target, prop, receiver);
            if (typeof v !== 'function') return v;
            return (...args: unknown[]) => {
              if (counted.has(String(prop))) reads++;
              return v.apply(target, args);
            };
          },
        }),
    });
    try {
      const a = await makeUser(h, 'alice', ['member']);
      const b = await makeUser(h, 'bob', ['member']);
      const ws = await WsClient.open(h, a.token);
      try {
        const frame = (id: string) => ({
          type: 'send',
          id,
          messages: [
            { recipientUserId: b.userId, recipientDeviceId: b.deviceId, body: encodeBase64(randomBytes(8)) },
          ],
        });
        ws.send(frame('warm'));
        await ws.next((f) => f.type === 'sent' && f.id === 'warm');
        const before = reads;
        for (let i = 0; i < 100; i++) ws.send(frame(`m${i}`));
        await ws.next((f) => f.type === 'sent' && f.id === 'm99');
        // Within one cache period: no storage read for authorisation at all (the TTL may
        // expire once on a slow machine: one reload of the user, roles and tree at most).
        expect(reads - before).toBeLessThanOrEqual(5);
      } finally {
        ws.close();
      }
    } finally {
      await h.close();
    }
  });
});
