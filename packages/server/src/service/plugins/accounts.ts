/**
 * Accounts and devices: enrolment with a one-time code, device authentication
 * (challenge → signed answer → session token), the device list, presence, and the link
 * slots for adding a further device.
 *
 * Several nodes: challenges and session tokens are MACed with a key all nodes share
 * (sessions.ts), so they work on any node. Link slots are per node (links.ts): the new and
 * the approving device must reach the same node while linking.
 */
import {
  ChallengeRequest,
  DeviceIdParam,
  EnrolRequest,
  encodeBase64,
  type GrantScopeJson,
  LinkApproveRequest,
  LinkCodeRequest,
  LinkCompleteRequest,
  LinkCreateRequest,
  MAX_HTTP_BODY_BYTES,
  PERMISSIONS,
  SessionRequest,
  UserNameParam,
} from '@qalqon/wire';
import type { FastifyInstance } from 'fastify';
import { isServerError } from '../../errors.js';
import { removeDevice } from '../admin-ops.js';
import { ApiError } from '../api-error.js';
import { deviceSubject, requestIdentity } from '../authz.js';
import {
  anonymousActor,
  checkPrekeySignatures,
  clientAddress,
  parse,
  type ServiceContext,
  toNewDevice,
} from '../context.js';

export async function accountsPlugin(app: FastifyInstance, opts: { ctx: ServiceContext }): Promise<void> {
  const { ctx } = opts;
  const limits = { bodyLimit: MAX_HTTP_BODY_BYTES };

  app.post('/v1/enrol', limits, async (req) => {
    const address = clientAddress(req);
    ctx.codeLimiter.check(address);
    const body = parse(EnrolRequest, req.body);
    checkPrekeySignatures(body.device);
    let device: Awaited<ReturnType<typeof ctx.storage.enrolDevice>>;
    try {
      device = await ctx.storage.enrolDevice({ code: body.code, device: toNewDevice(body.device) });
    } catch (err) {
      if (isServerError(err, 'ENROLMENT_CODE_INVALID')) {
        ctx.codeLimiter.fail(address);
        await ctx.audit({
          actor: anonymousActor(address),
          action: 'enrolment',
          target: 'enrolment',
          outcome: 'failed',
          detail: { reason: 'code-invalid' },
        });
      }
      throw err;
    }
    // Enrolment is a new identity: the user's earlier devices were removed with it.
    ctx.sessions.revoke(device.userId, undefined, device.deviceId);
    ctx.hub.disconnect(device.userId, undefined, device.deviceId);
    ctx.authz.invalidateUser(device.userId);
    const user = await ctx.storage.getUser(device.userId);
    const userName = user?.name ?? device.userId;
    ctx.log(`enrolled device ${device.deviceId} of user ${userName}`);
    await ctx.audit({
      actor: anonymousActor(address),
      action: 'enrolment',
      target: `device:${userName}/${device.deviceId}`,
      outcome: 'ok',
    });
    // Device ids are never reused for a user, and the first one comes with the first
    // identity: a later id means an earlier identity key was replaced.
    if (device.deviceId > 1) {
      await ctx.audit({
        actor: anonymousActor(address),
        action: 'identity.change',
        target: `user:${userName}`,
        outcome: 'ok',
        detail: { deviceId: device.deviceId },
      });
    }
    return { userId: device.userId, userName: user?.name ?? '', deviceId: device.deviceId };
  });

  app.post('/v1/auth/challenge', limits, async (req) => {
    const body = parse(ChallengeRequest, req.body);
    const c = ctx.sessions.challenge(body.userId, body.deviceId);
    return { challenge: encodeBase64(c.challenge), expiresAt: c.expiresAt };
  });

  app.post('/v1/auth/session', limits, async (req) => {
    const body = parse(SessionRequest, req.body);
    const address = clientAddress(req);
    try {
      return await ctx.sessions.signIn({ ...body, address });
    } catch (err) {
      if (err instanceof ApiError && (err.code === 'UNAUTHENTICATED' || err.code === 'RATE_LIMITED')) {
        const user = await ctx.storage.getUser(body.userId).catch(() => undefined);
        await ctx.audit({
          actor: anonymousActor(address),
          action: 'login.failure',
          target: user ? `device:${user.name}/${body.deviceId}` : `device:${body.userId}/${body.deviceId}`,
          outcome: err.code === 'RATE_LIMITED' ? 'denied' : 'failed',
          detail: { reason: err.code === 'RATE_LIMITED' ? 'rate-limited' : 'authentication-failed' },
        });
      }
      throw err;
    }
  });

  app.get('/v1/me', async (req) => {
    const me = requestIdentity(req);
    const [grants, permissions, tree] = await Promise.all([
      ctx.authz.grantsOf(me.userId),
      ctx.authz.globalPermissions(me.userId),
      ctx.authz.tree(),
    ]);
    if (grants.name === undefined) throw new ApiError('UNAUTHENTICATED', 401, 'authentication failed');
    const unitName = (id: string) => tree.byId.get(id)?.name;
    const out: { role: string; scope: GrantScopeJson }[] = [];
    for (const g of grants.grants) {
      if (g.scope.kind === 'global') out.push({ role: g.role, scope: { kind: 'global' } });
      else if (g.scope.kind === 'channel')
        out.push({ role: g.role, scope: { kind: 'channel', channel: g.scope.channelId } });
      else {
        const unit = unitName(g.scope.unitId);
        if (unit !== undefined) out.push({ role: g.role, scope: { kind: 'unit', unit } });
      }
    }
    for (const r of grants.globalRoles) {
      if (!out.some((g) => g.role === r && g.scope.kind === 'global'))
        out.push({ role: r, scope: { kind: 'global' } });
    }
    return {
      userId: me.userId,
      userName: grants.name,
      deviceId: me.deviceId,
      grants: out,
      units: grants.units
        .map(unitName)
        .filter((n): n is string => n !== undefined)
        .sort(),
      permissions: PERMISSIONS.filter((p) => permissions.has(p)),
    };
  });

  app.get('/v1/devices', async (req) => {
    const me = requestIdentity(req);
    const devices = await ctx.storage.listDevices(me.userId);
    return {
      devices: devices.map((d) => ({
        deviceId: d.deviceId,
        name: d.name,
        registrationId: d.registrationId,
        oneTimePrekeys: d.oneTimePrekeyCount,
        createdAt: d.createdAt,
      })),
    };
  });

  // Which of a user's devices are connected to any node (ctx.cluster's presence table).
  app.get('/v1/presence/:userName', async (req) => {
    const { userName } = parse(UserNameParam, req.params);
    const user = await ctx.storage.findUserByName(userName);
    if (!user) throw new ApiError('USER_NOT_FOUND', 404, `no user named ${userName}`);
    const devices = await ctx.storage.listDevices(user.id);
    const connected = ctx.cluster.presenceOf(user.id);
    return {
      userId: user.id,
      userName: user.name,
      devices: devices
        .map((d) => ({ deviceId: d.deviceId, connected: connected.has(d.deviceId) }))
        .sort((a, b) => a.deviceId - b.deviceId),
    };
  });

  app.delete('/v1/devices/:deviceId', async (req) => {
    const me = requestIdentity(req);
    const deviceId = Number(parse(DeviceIdParam, req.params).deviceId);
    const name = (await ctx.authz.grantsOf(me.userId)).name ?? me.userId;
    await removeDevice(ctx, deviceSubject(me), { id: me.userId, name }, deviceId);
    ctx.log(`device ${deviceId} of user ${me.userId} removed by device ${me.deviceId}`);
    return { ok: true };
  });

  // --- linking ---------------------------------------------------------------------------

  /** Link-code failures count against the address like enrolment codes: both are guessable secrets. */
  const withCode = async <T>(address: string, fn: () => T | Promise<T>): Promise<T> => {
    ctx.codeLimiter.check(address);
    try {
      return await fn();
    } catch (err) {
      if (err instanceof ApiError && err.code === 'LINK_CODE_INVALID') ctx.codeLimiter.fail(address);
      throw err;
    }
  };

  app.post('/v1/link', limits, async (req) => {
    const address = clientAddress(req);
    ctx.codeLimiter.check(address);
    ctx.linkLimiter.check(address);
    const body = parse(LinkCreateRequest, req.body);
    const slot = ctx.links.create(body.request);
    // Counted like a failure: opening slots is cheap for a client and costs the server memory.
    ctx.linkLimiter.fail(address);
    return slot;
  });

  app.post('/v1/link/lookup', limits, async (req) => {
    const body = parse(LinkCodeRequest, req.body);
    const request = await withCode(clientAddress(req), () => ctx.links.lookup(body.linkCode));
    return { request: encodeBase64(request) };
  });

  app.post('/v1/link/approve', limits, async (req) => {
    const me = requestIdentity(req);
    const body = parse(LinkApproveRequest, req.body);
    const user = await ctx.storage.getUser(me.userId);
    if (!user) throw new ApiError('UNAUTHENTICATED', 401, 'authentication failed');
    await withCode(clientAddress(req), () =>
      ctx.links.approve(body.linkCode, { userId: user.id, userName: user.name }, body.handover),
    );
    return { ok: true };
  });

  app.post('/v1/link/poll', limits, async (req) => {
    const body = parse(LinkCodeRequest, req.body);
    const approved = await withCode(clientAddress(req), () => ctx.links.poll(body.linkCode));
    return approved
      ? {
          state: 'approved',
          userId: approved.userId,
          userName: approved.userName,
          handover: encodeBase64(approved.handover),
        }
      : { state: 'pending' };
  });

  app.post('/v1/link/complete', limits, async (req) => {
    const body = parse(LinkCompleteRequest, req.body);
    checkPrekeySignatures(body.device);
    const device = await withCode(clientAddress(req), () =>
      ctx.links.complete(body.linkCode, (userId) => ctx.storage.addDevice(userId, toNewDevice(body.device))),
    );
    const user = await ctx.storage.getUser(device.userId);
    ctx.log(`linked device ${device.deviceId} of user ${user?.name ?? device.userId}`);
    await ctx.audit({
      actor: anonymousActor(clientAddress(req)),
      action: 'device.add',
      target: `device:${user?.name ?? device.userId}/${device.deviceId}`,
      outcome: 'ok',
    });
    return { userId: device.userId, userName: user?.name ?? '', deviceId: device.deviceId };
  });
}
