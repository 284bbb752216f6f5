/**
 * The local admin API: HTTP over a Unix socket inside the data directory, mode 0600, so
 * only the server's own OS user can reach it and it is never on the network. The CLI's
 * `qalqon admin` commands talk to a running server through it (`POST /admin`, body an
 * AdminRequest).
 *
 * The `kms.*` operations work on the KMS the server opened (the local key file or the
 * PKCS#11 token: one process holds a token's login, so the CLI never opens it itself) and
 * on the wrapped data keys — the data directory's key file, or PostgreSQL's `data_keys`
 * table — which they re-read for every operation. They run one at a time, so two rotations
 * cannot interleave their writes. Several PostgreSQL nodes: the rotation re-wraps the shared
 * table in one transaction; running nodes keep working (their data keys are unchanged), but
 * with the local KMS every node needs the rotated kms-master.key before it next starts.
 */
import { chmodSync, lstatSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import { Readable } from 'node:stream';
import { AdminArchiveRequest, AdminRequest } from '@qalqon/wire';
import Fastify, { type FastifyInstance } from 'fastify';
import { type PreparedArchive, prepareBackup } from '../backup/backup.js';
import { prepareExport } from '../backup/export.js';
import { isServerError, ServerError } from '../errors.js';
import { fileKeyVersions, rewrapFileKeys } from '../files/file-store.js';
import { DekRegistry } from '../kms/dek-registry.js';
import type { Kms } from '../kms/kms.js';
import { PRIVATE_FILE_MODE } from '../secure-file.js';
import { listPostgresDataKeys, rewrapPostgresDataKeys } from '../storage/postgres.js';
import type { Storage } from '../storage/types.js';
import * as ops from './admin-ops.js';
import { ApiError, errorBody, toWireFailure } from './api-error.js';
import { OPERATOR } from './authz.js';
import { parse, type ServiceContext } from './context.js';
import { readConfig } from './data-dir.js';

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
   * PostgreSQL backend, whose data keys live in its `data_keys` table (`postgres`).
   */
  readonly dekFile: string | undefined;
  /** The PostgreSQL database whose `data_keys` table holds the wrapped data keys. */
  readonly postgres?: { readonly url: string; readonly ssl: boolean } | undefined;
}

/** The wrapped data keys the kms.* operations count and re-wrap: the key file or the `data_keys` table. */
interface WrappedKeys {
  list(): Promise<{ keyId: string }[]>;
  /** Re-wraps every key not under the active KEK version (one atomic write, or one transaction). */
  rewrap(): Promise<number>;
}

/**
 * The access's wrapped keys, or a refusal when it names none (a rotation that missed the
 * data keys, followed by a destroy, would lose the data).
 */
function withDekFile(access: AdminKmsAccess): AdminKmsAccess & { keys: WrappedKeys } {
  const { dekFile, postgres, kms } = access;
  if (dekFile !== undefined) {
    return {
      ...access,
      keys: {
        list: async () => (await DekRegistry.open(dekFile, kms)).list(),
        rewrap: async () => (await DekRegistry.open(dekFile, kms)).rewrapAll(),
      },
    };
  }
  if (postgres !== undefined) {
    const db = { url: postgres.url, ...(postgres.ssl ? { ssl: true } : {}) };
    return {
      ...access,
      keys: { list: () => listPostgresDataKeys(db), rewrap: () => rewrapPostgresDataKeys({ ...db, kms }) },
    };
  }
  throw new ApiError('BAD_REQUEST', 409, 'this server names no wrapped data keys for the kms commands');
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

async function kmsStatus(access: AdminKmsAccess & { keys: WrappedKeys }, storage: Storage) {
  const d = await access.kms.describe();
  const counts = new Map<string, number>();
  for (const k of await access.keys.list()) counts.set(k.keyId, (counts.get(k.keyId) ?? 0) + 1);
  const fileCounts = await fileKeyVersions(storage);
  return {
    provider: d.provider,
    location: d.location,
    activeKeyId: d.activeKeyId,
    keyVersions: d.keys.map((k) => ({
      keyId: k.id,
      createdAt: k.createdAt,
      active: k.active,
      wrappedKeys: counts.get(k.id) ?? 0,
      wrappedFileKeys: fileCounts.get(k.id) ?? 0,
    })),
  };
}

async function kmsRotate(access: AdminKmsAccess & { keys: WrappedKeys }, storage: Storage) {
  const previousKeyId = (await access.kms.describe()).activeKeyId;
  // A new version first, then every data key re-wrapped in one atomic write of the file (or
  // one transaction on data_keys): a crash in between leaves the old wraps, which the old
  // version (still held) opens. (As rotateKek in dek-registry.ts.)
  const activeKeyId = await access.kms.rotate();
  const rewrapped = await access.keys.rewrap();
  // Then every file's key, row by row (compare-and-set: a file deleted meanwhile is skipped).
  // One that fails stays under the old version, which is still held; destroy refuses it.
  const files = await rewrapFileKeys(storage, access.kms);
  if (files.failed.length > 0) {
    throw new ApiError(
      'UNAVAILABLE',
      503,
      `the KEK was rotated and ${rewrapped} data key(s) re-wrapped, but ${files.failed.length} file key(s) could not be re-wrapped; run kms rotate again`,
    );
  }
  return { previousKeyId, activeKeyId, rewrapped, rewrappedFileKeys: files.rewrapped };
}

async function kmsDestroy(access: AdminKmsAccess & { keys: WrappedKeys }, storage: Storage, keyId: string) {
  const d = await access.kms.describe();
  if (!d.keys.some((k) => k.id === keyId)) {
    throw new ApiError('NOT_FOUND', 404, `KEK version ${keyId} is not held by this KMS`);
  }
  if (keyId === d.activeKeyId) {
    throw new ApiError('BAD_REQUEST', 409, `KEK version ${keyId} is active; rotate before destroying it`);
  }
  const still = (await access.keys.list()).filter((k) => k.keyId === keyId).length;
  const stillFiles = (await fileKeyVersions(storage)).get(keyId) ?? 0;
  if (still > 0 || stillFiles > 0) {
    // Destroying it would lose those keys, and with them the data: refuse.
    throw new ApiError(
      'BAD_REQUEST',
      409,
      `KEK version ${keyId} still wraps ${still} data key(s) and ${stillFiles} file key(s); run kms rotate first`,
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
        return kmsOp(() => kmsStatus(withDekFile(kmsAccess), ctx.storage));
      case 'kms.rotate': {
        const out = await kmsOp(() => kmsRotate(withDekFile(kmsAccess), ctx.storage));
        ctx.log(
          `admin: KEK rotated from ${out.previousKeyId} to ${out.activeKeyId}; ${out.rewrapped} data key(s) and ${out.rewrappedFileKeys} file key(s) re-wrapped`,
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
            rewrappedFileKeys: out.rewrappedFileKeys,
          },
        });
        return out;
      }
      case 'kms.destroy': {
        const { out, activeKeyId } = await kmsOp(async () => {
          const destroyed = await kmsDestroy(withDekFile(kmsAccess), ctx.storage, r.keyId);
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

  // Backups and exports (backup/): one at a time, the archive streamed as the answer. The data
  // directory is the socket's (run.ts puts the socket there).
  const dataDir = dirname(path);
  let archiveBusy = false;
  app.post('/admin/archive', async (req, reply) => {
    const r = parse(AdminArchiveRequest, req.body);
    if (archiveBusy)
      throw new ApiError('BAD_REQUEST', 409, 'another backup or export is running on this server');
    archiveBusy = true;
    const action = r.kind;
    const recoveryKey =
      r.recoveryKey === undefined ? undefined : new Uint8Array(Buffer.from(r.recoveryKey, 'base64'));
    let prepared: PreparedArchive;
    try {
      prepared = await kmsOp(() => {
        if (r.kind === 'backup') {
          if (kmsAccess.dekFile === undefined) {
            throw new ServerError(
              'BACKUP_UNSUPPORTED',
              'backup covers the embedded database only; for PostgreSQL use pg_dump and keep the KMS apart (docs/DEPLOYMENT.md)',
            );
          }
          return prepareBackup({ dataDir, kms: kmsAccess.kms, ...(recoveryKey ? { recoveryKey } : {}) });
        }
        return prepareExport({
          storage: ctx.storage,
          kms: kmsAccess.kms,
          hostname: readConfig(dataDir).hostname,
          parts: r.parts,
          ...(recoveryKey ? { recoveryKey } : {}),
        });
      });
    } catch (err) {
      archiveBusy = false;
      recoveryKey?.fill(0);
      await ctx.audit({
        actor: { kind: 'operator' },
        action,
        target: 'archive',
        outcome: 'failed',
        detail: { reason: isServerError(err) ? err.code : err instanceof ApiError ? err.code : 'INTERNAL' },
      });
      if (isServerError(err, 'BACKUP_UNSUPPORTED')) throw new ApiError('BAD_REQUEST', 409, err.message);
      throw err;
    }
    recoveryKey?.fill(0);
    const p = prepared;
    ctx.log(`admin: ${action} ${p.archiveId} started (${p.totalBytes} bytes)`);
    reply.raw.once('close', () => {
      archiveBusy = false;
      p.dispose();
      const ok = reply.raw.writableFinished;
      ctx.log(`admin: ${action} ${p.archiveId} ${ok ? 'sent' : 'aborted'}`);
      void ctx.audit({
        actor: { kind: 'operator' },
        action,
        target: `archive:${p.archiveId}`,
        outcome: ok ? 'ok' : 'failed',
        detail: {
          archiveId: p.archiveId,
          what: p.what,
          bytes: p.totalBytes,
          recoveryKey: recoveryKey !== undefined,
        },
      });
    });
    reply
      .header('content-type', 'application/octet-stream')
      .header('content-length', String(p.totalBytes))
      .header('x-qalqon-archive-id', p.archiveId);
    return reply.send(Readable.from(p.chunks(), { objectMode: false }));
  });

  await app.listen({ path });
  // The data directory is 0700, so nobody else could reach the socket even before this chmod;
  // 0600 keeps it private should the directory's mode ever be loosened.
  chmodSync(path, PRIVATE_FILE_MODE);
  return app;
}
