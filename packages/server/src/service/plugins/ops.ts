/**
 * `/healthz` and Prometheus `/metrics`. Both are unauthenticated and reveal only aggregate counts.
 *
 * Health with several nodes: the body says `pubsub` (the event bus's status: `connected`,
 * `connecting`, `reconnecting`) when the node runs on a shared bus. A node whose bus is
 * down still answers 200: it serves its own connections correctly from storage (it runs
 * every pump every few seconds while the bus is down, so mail from other nodes arrives late
 * rather than never), and a load balancer that took every node out of service during a
 * NATS restart would turn a degraded deployment into a dead one. Alert on
 * `qalqon_pubsub_connected == 0` instead.
 */
import type { FastifyInstance } from 'fastify';
import type { ServiceContext } from '../context.js';

export async function opsPlugin(app: FastifyInstance, opts: { ctx: ServiceContext }): Promise<void> {
  const { ctx } = opts;
  app.get('/healthz', async () =>
    ctx.cluster.solo ? { status: 'ok' } : { status: 'ok', pubsub: ctx.cluster.bus.status },
  );
  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', ctx.metrics.registry.contentType);
    return ctx.metrics.registry.metrics();
  });
}
