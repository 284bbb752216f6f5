/**
 * The HTTPS + WebSocket service on one TLS 1.3-only port. `createService` builds it on a
 * Storage (any backend) and a TLS certificate; it does not own the storage, which the
 * caller opens and closes (see run.ts for the data-directory wiring).
 */
import type { AddressInfo } from 'node:net';
import { MAX_HTTP_BODY_BYTES } from '@qalqon/wire';
import Fastify, { type FastifyInstance } from 'fastify';
import type { FileServiceLimits } from '../files/file-store.js';
import type { Kms } from '../kms/kms.js';
import type { EventBus } from '../pubsub/bus.js';
import { createLocalBus } from '../pubsub/local-bus.js';
import type { Storage } from '../storage/types.js';
import { errorBody, toWireFailure } from './api-error.js';
import { Authorizer, installAuthorization } from './authz.js';
import { Cluster } from './cluster.js';
import { auditWriter, type ServiceContext } from './context.js';
import { CLOSE_GOING_AWAY, MailboxHub } from './hub.js';
import { LinkSlots } from './links.js';
import { ServerMetrics } from './metrics.js';
import { accountsPlugin } from './plugins/accounts.js';
import { adminRemotePlugin } from './plugins/admin-remote.js';
import { channelsPlugin } from './plugins/channels.js';
import { filesPlugin } from './plugins/files.js';
import { keysPlugin } from './plugins/keys.js';
import { messagesPlugin } from './plugins/messages.js';
import { opsPlugin } from './plugins/ops.js';
import { attachWebSocket, type WebSocketService } from './plugins/websocket.js';
import { FailureLimiter } from './rate-limit.js';
import { SessionManager } from './sessions.js';

/** Failed enrolment or link codes per client address per minute. */
export const MAX_CODE_FAILURES_PER_ADDRESS = 10;
/** Link slots one client address may open per minute. */
export const MAX_LINK_SLOTS_PER_ADDRESS = 10;
/** How long a request may take to arrive (its headers and body), streamed file uploads excepted. */
export const REQUEST_TIMEOUT_MS = 30_000;
/** How often expired envelopes, sessions and link slots are swept. */
export const SWEEP_INTERVAL_MS = 10 * 60_000;

export interface ServiceOptions {
  readonly storage: Storage;
  /** PEM certificate (chain) and private key. */
  readonly tls: { readonly cert: string; readonly key: string };
  readonly clock?: () => number;
  readonly sessionTtlMs?: number;
  /** Operator log lines (never secrets). Default: stderr. */
  readonly log?: (line: string) => void;
  /** Also export process metrics (memory, CPU, event loop) on /metrics. */
  readonly processMetrics?: boolean;
  /**
   * The event bus to the other nodes (owned by the caller: not closed by `close()`).
   * Default: a lone local bus, one node, which publishes nothing.
   */
  readonly bus?: EventBus;
  /**
   * The `session-mac` data key every node shares (32 bytes): sessions and challenges of one
   * node are then valid on all. Default: a random key, sessions valid in this process only.
   */
  readonly sessionKey?: Uint8Array;
  /** How often this node sends its presence heartbeat (default 5 s). */
  readonly presenceIntervalMs?: number;
  /**
   * The KMS that wraps each file's data key. Without it the service has no file routes
   * (`/v1/files...`): only tests create a service without one.
   */
  readonly kms?: Kms;
  /** File size limit, per-user quota and incomplete-upload lifetime (defaults: files/file-store.ts). */
  readonly files?: Partial<FileServiceLimits>;
}

export interface Service {
  readonly app: FastifyInstance;
  readonly ctx: ServiceContext;
  readonly ws: WebSocketService;
  /** Every HTTP route, as its ROUTE_RULES key (`"METHOD /url"`). */
  readonly routes: readonly string[];
  /** Listens on host:port (port 0: any free port) and resolves with the bound address. */
  listen(host: string, port: number): Promise<{ host: string; port: number }>;
  /** Stops accepting, closes every connection, and waits for in-flight requests. Does not close the storage. */
  close(): Promise<void>;
}

export async function createService(options: ServiceOptions): Promise<Service> {
  const clock = options.clock ?? Date.now;
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const metrics = new ServerMetrics({ processMetrics: options.processMetrics ?? false });
  const solo = options.bus === undefined;
  const bus = options.bus ?? createLocalBus();
  // The cluster is made last; the callbacks below run only once requests arrive.
  let cluster: Cluster | undefined;
  const sessions = new SessionManager(options.storage, {
    clock,
    ...(options.sessionTtlMs === undefined ? {} : { sessionTtlMs: options.sessionTtlMs }),
    ...(options.sessionKey === undefined ? {} : { macKey: options.sessionKey }),
    onRevoke: (userId, deviceId) => cluster?.deviceRemoved(userId, deviceId),
    onChallengeUsed: (challenge) => cluster?.challengeUsed(challenge),
  });
  const hub = new MailboxHub(options.storage, metrics, log, clock);
  const authz = new Authorizer(options.storage, { clock });
  cluster = new Cluster({
    bus,
    solo,
    hub,
    sessions,
    authz,
    log,
    clock,
    registry: metrics.registry,
    ...(options.presenceIntervalMs === undefined ? {} : { presenceIntervalMs: options.presenceIntervalMs }),
  });
  authz.setChangeListener((userId) => cluster?.authzChanged(userId));
  const ctx: ServiceContext = {
    storage: options.storage,
    sessions,
    hub,
    links: new LinkSlots(clock),
    cluster,
    metrics,
    codeLimiter: new FailureLimiter({ maxFailures: MAX_CODE_FAILURES_PER_ADDRESS, windowMs: 60_000, clock }),
    linkLimiter: new FailureLimiter({ maxFailures: MAX_LINK_SLOTS_PER_ADDRESS, windowMs: 60_000, clock }),
    clock,
    log,
    authz,
    audit: auditWriter(options.storage, clock, log),
  };

  const app = Fastify({
    https: {
      cert: options.tls.cert,
      key: options.tls.key,
      // TLS 1.3 only: a client offering at most TLS 1.2 fails the handshake (protocol_version alert).
      minVersion: 'TLSv1.3',
      maxVersion: 'TLSv1.3',
    },
    // Fastify's logger would log request details; the service logs what it chooses instead.
    logger: false,
    bodyLimit: MAX_HTTP_BODY_BYTES,
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    return503OnClosing: true,
    forceCloseConnections: true,
    // Short timeouts against slow-loris clients; nothing legitimate takes longer.
    connectionTimeout: 30_000,
    // Off: it would also cut a long streamed file upload. The same 30 s bound on receiving a
    // request is kept per request by the onRequest hook below, for every other route.
    requestTimeout: 0,
    // Every route is listed in ROUTE_RULES: no implicit HEAD twins.
    exposeHeadRoutes: false,
  });
  // JSON only: text/plain would otherwise be accepted as a string body.
  app.removeContentTypeParser('text/plain');

  app.setErrorHandler((err, _req, reply) => {
    const f = toWireFailure(err);
    if (f.unexpected) {
      // Name only: an unexpected error's message might include anything.
      log(`request failed: ${err instanceof Error ? err.name : 'error'}`);
    }
    if (f.retryAfterMs !== undefined) reply.header('retry-after', Math.ceil(f.retryAfterMs / 1000));
    reply.code(f.status).send(errorBody(f));
  });
  app.setNotFoundHandler((_req, reply) => {
    reply.code(404).send({ error: { code: 'NOT_FOUND', message: 'no such route' } });
  });

  // A request still being received REQUEST_TIMEOUT_MS after it began is cut off (Node's own
  // requestTimeout, which cannot exempt one route, is off). A streamed file upload (route
  // config `streamingBody`) is exempt: the idle timeout and its Content-Range bound it.
  app.addHook('onRequest', async (req, reply) => {
    if ((req.routeOptions.config as { streamingBody?: boolean }).streamingBody === true) return;
    const timer = setTimeout(() => {
      if (!req.raw.complete) req.raw.socket.destroy();
    }, REQUEST_TIMEOUT_MS);
    reply.raw.once('close', () => clearTimeout(timer));
  });
  const started = new WeakMap<object, bigint>();
  app.addHook('onRequest', async (req) => {
    started.set(req, process.hrtime.bigint());
  });
  app.addHook('onResponse', async (req, reply) => {
    const t0 = started.get(req);
    if (t0 === undefined) return;
    metrics.requestDuration.observe(
      { method: req.method, route: req.routeOptions.url ?? 'unmatched', status: String(reply.statusCode) },
      Number(process.hrtime.bigint() - t0) / 1e9,
    );
  });

  // Before any route: a route without a rule stops the start; every request is authorised here.
  const routes = installAuthorization(app, ctx);
  await app.register(opsPlugin, { ctx });
  await app.register(accountsPlugin, { ctx });
  await app.register(keysPlugin, { ctx });
  await app.register(messagesPlugin, { ctx });
  await app.register(channelsPlugin, { ctx });
  if (options.kms) await app.register(filesPlugin, { ctx, kms: options.kms, limits: options.files });
  await app.register(adminRemotePlugin, { ctx });
  const ws = attachWebSocket(app, ctx);

  const sweep = setInterval(() => {
    ctx.sessions.sweep();
    ctx.links.sweep();
    ctx.storage.purgeExpiredEnvelopes().catch(() => log('purging expired envelopes failed'));
  }, SWEEP_INTERVAL_MS);
  sweep.unref();

  let closing: Promise<void> | undefined;
  return {
    app,
    ctx,
    ws,
    routes,
    async listen(host, port) {
      await app.listen({ host, port });
      const addr = app.server.address() as AddressInfo;
      return { host: addr.address, port: addr.port };
    },
    close() {
      closing ??= (async () => {
        clearInterval(sweep);
        ctx.hub.closeAll(CLOSE_GOING_AWAY, 'the server is shutting down');
        ws.closeAll(CLOSE_GOING_AWAY, 'the server is shutting down');
        await app.close();
        ws.wss.close();
        ctx.cluster.close();
        if (solo) await bus.close();
      })();
      return closing;
    },
  };
}
