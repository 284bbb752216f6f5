/**
 * The local admin API: HTTP over a Unix socket inside the data directory, mode 0600, so
 * only the server's own OS user can reach it and it is never on the network. The CLI's
 * `qalqon admin` commands talk to a running server through it (`POST /admin`, body an
 * AdminRequest).
 */
import { chmodSync, lstatSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { AdminRequest } from '@qalqon/wire';
import Fastify, { type FastifyInstance } from 'fastify';
import { ServerError } from '../errors.js';
import { PRIVATE_FILE_MODE } from '../secure-file.js';
import type { User } from '../storage/types.js';
import { ApiError, errorBody, toWireFailure } from './api-error.js';
import { parse, type ServiceContext } from './context.js';
import { issueEnrolmentCode } from './data-dir.js';

/** Resolves true when something accepts connections on the socket path. */
function socketAnswers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function userByName(ctx: ServiceContext, name: string): Promise<User> {
  const u = await ctx.storage.findUserByName(name);
  if (!u) throw new ApiError('USER_NOT_FOUND', 404, `no user named ${name}`);
  return u;
}

export async function startAdminSocket(path: string, ctx: ServiceContext): Promise<FastifyInstance> {
  const st = lstatSync(path, { throwIfNoEntry: false });
  if (st) {
    if (!st.isSocket()) throw new ServerError('CONFIG_INVALID', `${path} exists and is not a socket`);
    if (await socketAnswers(path)) {
      throw new ServerError(
        'SERVER_RUNNING',
        `another server is already running on this data directory (${path})`,
      );
    }
    // Left behind by a server that was killed: nothing listens on it any more.
    rmSync(path);
  }
  const app = Fastify({ logger: false, bodyLimit: 16 * 1024 });
  app.setErrorHandler((err, _req, reply) => {
    const f = toWireFailure(err);
    if (f.unexpected) ctx.log(`admin request failed: ${err instanceof Error ? err.name : 'error'}`);
    reply.code(f.status).send(errorBody(f));
  });
  app.setNotFoundHandler((_req, reply) => {
    reply.code(404).send({ error: { code: 'NOT_FOUND', message: 'no such route' } });
  });

  app.post('/admin', async (req) => {
    const r = parse(AdminRequest, req.body);
    switch (r.op) {
      case 'user.add': {
        const user = await ctx.storage.createUser({ name: r.name, roles: r.roles ?? [] });
        const code = await issueEnrolmentCode(ctx.storage, user.id, ctx.clock());
        ctx.log(`admin: user ${user.name} created`);
        return {
          user: user.name,
          userId: user.id,
          roles: user.roles,
          enrollmentCode: code.code,
          expiresAt: code.expiresAt,
        };
      }
      case 'user.code': {
        const user = await userByName(ctx, r.name);
        const code = await issueEnrolmentCode(ctx.storage, user.id, ctx.clock());
        ctx.log(`admin: new enrolment code issued for user ${user.name}`);
        return { user: user.name, userId: user.id, enrollmentCode: code.code, expiresAt: code.expiresAt };
      }
      case 'user.list': {
        const users = await ctx.storage.listUsers();
        const out = [];
        for (const u of users) {
          const devices = await ctx.storage.listDevices(u.id);
          out.push({
            name: u.name,
            id: u.id,
            roles: [...u.roles],
            enrolled: u.identityKey !== undefined,
            devices: devices.length,
            createdAt: u.createdAt,
          });
        }
        return { users: out };
      }
      case 'user.remove': {
        const user = await userByName(ctx, r.name);
        await ctx.storage.removeUser(user.id);
        ctx.sessions.revoke(user.id);
        ctx.hub.disconnect(user.id);
        ctx.log(`admin: user ${user.name} removed`);
        return { user: user.name, removed: true };
      }
      case 'device.list': {
        const user = await userByName(ctx, r.name);
        const devices = await ctx.storage.listDevices(user.id);
        return {
          user: user.name,
          devices: devices.map((d) => ({
            deviceId: d.deviceId,
            name: d.name,
            oneTimePrekeys: d.oneTimePrekeyCount,
            createdAt: d.createdAt,
          })),
        };
      }
      case 'device.remove': {
        const user = await userByName(ctx, r.name);
        await ctx.storage.removeDevice(user.id, r.deviceId);
        ctx.sessions.revoke(user.id, r.deviceId);
        ctx.hub.disconnect(user.id, r.deviceId);
        ctx.log(`admin: device ${r.deviceId} of user ${user.name} removed`);
        return { user: user.name, deviceId: r.deviceId, removed: true };
      }
    }
  });

  await app.listen({ path });
  // The data directory is 0700, so nobody else could reach the socket even before this chmod;
  // 0600 keeps it private should the directory's mode ever be loosened.
  chmodSync(path, PRIVATE_FILE_MODE);
  return app;
}
