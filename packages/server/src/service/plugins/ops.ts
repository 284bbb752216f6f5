/** `/healthz` and Prometheus `/metrics`. Both are unauthenticated and reveal only aggregate counts. */
import type { FastifyInstance } from 'fastify';
import type { ServiceContext } from '../context.js';

export async function opsPlugin(app: FastifyInstance, opts: { ctx: ServiceContext }): Promise<void> {
  const { ctx } = opts;
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
}
