/**
 * Sending: `POST /v1/messages` (and the WebSocket `send` frame, which shares `sendEnvelopes`).
 * The receipt goes out only after the storage's enqueue returned, i.e. after the envelopes
 * are committed to disk: an acknowledged message survives a crash.
 */
import { MAX_SEND_BODY_BYTES, SendRequest, type z } from '@qalqon/wire';
import type { FastifyInstance } from 'fastify';
import { requestIdentity } from '../authz.js';
import { parse, type ServiceContext } from '../context.js';
import type { SessionIdentity } from '../sessions.js';

export async function sendEnvelopes(
  ctx: ServiceContext,
  me: SessionIdentity,
  messages: z.output<typeof SendRequest>['messages'],
): Promise<{ id: string; recipientUserId: string; recipientDeviceId: number }[]> {
  const receipts = await ctx.storage.enqueue(
    messages.map((m) => ({
      recipientUserId: m.recipientUserId,
      recipientDeviceId: m.recipientDeviceId,
      senderUserId: me.userId,
      senderDeviceId: me.deviceId,
      body: m.body,
    })),
  );
  ctx.metrics.messagesQueued.inc(receipts.length);
  for (const r of receipts) ctx.hub.notify(r.recipientUserId, r.recipientDeviceId);
  return receipts.map((r) => ({
    id: r.id,
    recipientUserId: r.recipientUserId,
    recipientDeviceId: r.recipientDeviceId,
  }));
}

export async function messagesPlugin(app: FastifyInstance, opts: { ctx: ServiceContext }): Promise<void> {
  const { ctx } = opts;
  app.post('/v1/messages', { bodyLimit: MAX_SEND_BODY_BYTES }, async (req) => {
    const me = requestIdentity(req);
    const body = parse(SendRequest, req.body);
    return { receipts: await sendEnvelopes(ctx, me, body.messages) };
  });
}
