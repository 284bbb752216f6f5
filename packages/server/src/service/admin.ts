/**
 * The local admin API: HTTP over a Unix socket inside the data directory, mode 0600, so
 * only the server's own OS user can reach it and it is never on the network. The CLI's
 * `qalqon admin` commands talk to a running server through it (`POST /admin`, body an
 * AdminRequest).
 *
 * The `kms.*` operations work on the KMS the server opened (the local key file or the
 * PKCS#11 token: one process holds a token's login, so the CLI never opens it itself) and
 * on the wrapped-data-key file, which they re-read for every operation. They run one at a
 * time, so two rotations cannot interleave their writes of that file.
 */
import { chmodSync, lstatSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { AdminRequest } from '@qalqon/wire';
import Fastify, { type FastifyInstance } from 'fastify';
import { isServerError, ServerError } from '../errors.js';
import { DekRegistry, rotateKek } from '../kms/dek-registry.js';
import type { Kms } from '../kms/kms.js';
import { PRIVATE_FILE_MODE } from '../secure-file.js';
import * as ops from './admin-ops.js';
import { ApiError, errorBody, toWireFailure } from './api-error.js';
import { OPERATOR } from './authz.js';
import { parse, type ServiceContext } from './context.js';

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

/** What the `kms.*` operations work on. */
export interface AdminKmsAccess {
  /** The server's open KMS. */
  readonly kms: Kms;
  /**
   * The wrapped-data-key file (DekRegistry) of the data directory; undefined with the
   * PostgreSQL backend, whose data keys live in its `data_keys` table: the `kms.*`
   * operations are refused there (a rotation that missed those keys, followed by a destroy,
   * would lose the data).
   */
  readonly dekFile: string | undefined;
}

/** The access with its key file, or the refusal when the data keys are not in a file. */
function withDekFile(access: AdminKmsAccess): AdminKmsAccess & { dekFile: string } {
  if (access.dekFile === undefined) {
    throw new ApiError(
      'BAD_REQUEST',
      409,
      'the kms commands do not support the PostgreSQL backend yet (its data keys live in the database)',
    );
  }
  return access as AdminKmsAccess & { dekFile: string };
}

/**
 * KMS refusals in admin terms. ServerError messages name key versions, token labels and
 * CKR_ values, never PINs or key bytes, so the operator sees them as they are.
 */
function kmsFailure(err: unknown): unknown {
  if (!isServerError(err)) return err;
  switch (err.code) {
    case 'KMS_KEY_ACTIVE':
      return new ApiError('BAD_REQUEST', 409, err.message);
    case 'KMS_KEY_NOT_FOUND':
      return new ApiError('NOT_FOUND', 404, err.message);
    case 'INVALID_ARGUMENT':
      return new ApiError('BAD_REQUEST', 400, err.message);
    default:
      if (err.code.startsWith('KMS_') || err.code.startsWith('DEK_')) {
        return new ApiError('UNAVAILABLE', 503, err.message);
      }
      return err;
  }
}

async function kmsStatus(access: AdminKmsAccess & { dekFile: string }) {
  const d = await access.kms.describe();
  const registry = await DekRegistry.open(access.dekFile, access.kms);
  const counts = new Map<string, number>();
  for (const k of registry.list()) counts.set(k.keyId, (counts.get(k.keyId) ?? 0) + 1);
  return {
    provider: d.provider,
    location: d.location,
    activeKeyId: d.activeKeyId,
    keyVersions: d.keys.map((k) => ({
      keyId: k.id,
      createdAt: k.createdAt,
      active: k.active,
      wrappedKeys: counts.get(k.id) ?? 0,
    })),
  };
}

async function kmsRotate(access: AdminKmsAccess & { dekFile: string }) {
  const previousKeyId = (await access.kms.describe()).activeKeyId;
  const registry = await DekRegistry.open(access.dekFile, access.kms);
  // A new version first, then every data key re-wrapped in one atomic write of the file:
  // a crash in between leaves the old wraps, which the old version (still held) opens.
  const { activeKeyId, rewrapped } = await rotateKek(access.kms, registry);
  return { previousKeyId, activeKeyId, rewrapped };
}

async function kmsDestroy(access: AdminKmsAccess & { dekFile: string }, keyId: string) {
  const d = await access.kms.describe();
  if (!d.keys.some((k) => k.id === keyId)) {
    throw new ApiError('NOT_FOUND', 404, `KEK version ${keyId} is not held by this KMS`);
  }
  if (keyId === d.activeKeyId) {
    throw new ApiError('BAD_REQUEST', 409, `KEK version ${keyId} is active; rotate before destroying it`);
  }
  const registry = await DekRegistry.open(access.dekFile, access.kms);
  const still = registry.list().filter((k) => k.keyId === keyId).length;
  if (still > 0) {
    // Destroying it would lose those data keys, and with them the data: refuse.
    throw new ApiError(
      'BAD_REQUEST',
      409,
      `KEK version ${keyId} still wraps ${still} data key(s); run kms rotate first`,
    );
  }
  await access.kms.destroy(keyId);
  return { keyId, destroyed: true };
}

export async function startAdminSocket(
  path: string,
  ctx: ServiceContext,
  kmsAccess: AdminKmsAccess,
): Promise<FastifyInstance> {
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

  // The tail of the queue the kms.* operations run in, one at a time.
  let kmsTail: Promise<unknown> = Promise.resolve();
  const kmsOp = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = kmsTail.then(fn, fn);
    kmsTail = run.catch(() => undefined);
    return run.catch((err: unknown) => {
      throw kmsFailure(err);
    });
  };

  app.post('/admin', async (req) => {
    const r = parse(AdminRequest, req.body);
    switch (r.op) {
      case 'user.add':
        return ops.addUser(ctx, OPERATOR, r);
      case 'user.code':
        return ops.issueUserCode(ctx, OPERATOR, r.name);
      case 'user.list':
        return ops.listUsers(ctx);
      case 'user.remove': {
        const user = await ops.removeUser(ctx, OPERATOR, r.name);
        return { user: user.name, removed: true };
      }
      case 'device.list': {
        const user = await ops.userByName(ctx, r.name);
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
        const user = await ops.userByName(ctx, r.name);
        await ops.removeDevice(ctx, OPERATOR, user, r.deviceId);
        ctx.log(`admin: device ${r.deviceId} of user ${user.name} removed`);
        return { user: user.name, deviceId: r.deviceId, removed: true };
      }
      case 'kms.status':
        return kmsOp(() => kmsStatus(withDekFile(kmsAccess)));
      case 'kms.rotate': {
        const out = await kmsOp(() => kmsRotate(withDekFile(kmsAccess)));
        ctx.log(
          `admin: KEK rotated from ${out.previousKeyId} to ${out.activeKeyId}; ${out.rewrapped} data key(s) re-wrapped`,
        );
        await ctx.audit({
          actor: { kind: 'operator' },
          action: 'kms.rotate',
          target: `kek:${out.activeKeyId}`,
          outcome: 'ok',
          detail: {
            previousKeyId: out.previousKeyId,
            activeKeyId: out.activeKeyId,
            rewrapped: out.rewrapped,
          },
        });
        return out;
      }
      case 'kms.destroy': {
        const { out, activeKeyId } = await kmsOp(async () => {
          const destroyed = await kmsDestroy(withDekFile(kmsAccess), r.keyId);
          return { out: destroyed, activeKeyId: (await kmsAccess.kms.describe()).activeKeyId };
        });
        ctx.log(`admin: KEK version ${r.keyId} destroyed`);
        await ctx.audit({
          actor: { kind: 'operator' },
          action: 'kms.destroy',
          target: `kek:${r.keyId}`,
          outcome: 'ok',
          detail: { destroyedKeyId: r.keyId, activeKeyId },
        });
        return out;
      }
      case 'role.list':
        return ops.listRoles(ctx);
      case 'role.create':
        return ops.createRole(ctx, OPERATOR, r);
      case 'role.delete':
        return ops.deleteRole(ctx, OPERATOR, r.name);
      case 'role.grant':
        return ops.changeGrant(ctx, OPERATOR, r, true);
      case 'role.revoke':
        return ops.changeGrant(ctx, OPERATOR, r, false);
      case 'role.grants':
        return ops.listGrants(ctx, r.user);
      case 'org.list':
        return ops.listOrg(ctx);
      case 'org.create':
        return ops.createOrg(ctx, OPERATOR, r);
      case 'org.remove':
        return ops.removeOrg(ctx, OPERATOR, r.name);
      case 'org.assign':
        return ops.changeOrgMember(ctx, OPERATOR, r.name, r.user, true);
      case 'org.unassign':
        return ops.changeOrgMember(ctx, OPERATOR, r.name, r.user, false);
      case 'audit.list':
        return ops.listAudit(ctx, r);
      case 'audit.verify':
        return ops.verifyAudit(ctx);
    }
  });

  await app.listen({ path });
  // The data directory is 0700, so nobody else could reach the socket even before this chmod;
  // 0600 keeps it private should the directory's mode ever be loosened.
  chmodSync(path, PRIVATE_FILE_MODE);
  return app;
}
