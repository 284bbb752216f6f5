/**
 * The HTTPS + WebSocket service on one TLS 1.3-only port. `createService` builds it on a
 * Storage (any backend) and a TLS certificate; it does not own the storage, which the
 * caller opens and closes (see run.ts for the data-directory wiring).
 */
import type { AddressInfo } from 'node:net';
import { MAX_HTTP_BODY_BYTES } from '@qalqon/wire';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Storage } from '../storage/types.js';
import { errorBody, toWireFailure } from './api-error.js';
import { Authorizer, installAuthorization } from './authz.js';
import { auditWriter, type ServiceContext } from './context.js';
import { CLOSE_GOING_AWAY, MailboxHub } from './hub.js';
import { LinkSlots } from './links.js';
import { ServerMetrics } from './metrics.js';
import { accountsPlugin } from './plugins/accounts.js';
import { adminRemotePlugin } from './plugins/admin-remote.js';
import { channelsPlugin } from './plugins/channels.js';
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
  const ctx: ServiceContext = {
    storage: options.storage,
    sessions: new SessionManager(options.storage, {
      clock,
      ...(options.sessionTtlMs === undefined ? {} : { sessionTtlMs: options.sessionTtlMs }),
    }),
    hub: new MailboxHub(options.storage, metrics, log),
    links: new LinkSlots(clock),
    metrics,
    codeLimiter: new FailureLimiter({ maxFailures: MAX_CODE_FAILURES_PER_ADDRESS, windowMs: 60_000, clock }),
    linkLimiter: new FailureLimiter({ maxFailures: MAX_LINK_SLOTS_PER_ADDRESS, windowMs: 60_000, clock }),
    clock,
    log,
    authz: new Authorizer(options.storage, { clock }),
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
    requestTimeout: 30_000,
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
      })();
      return closing;
    },
  };
}
