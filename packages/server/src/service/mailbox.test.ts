/** The mailbox over a real WSS connection: durable send, ordered delivery, delete only on ack, limits. */
import { randomBytes } from 'node:crypto';
import { decodeBase64, encodeBase64 } from '@qalqon/wire';
import { afterEach, describe, expect, it } from 'vitest';
import type { StorageLimits } from '../storage/types.js';
import { enrol, type Harness, http, signIn, startHarness, WsClient } from './harness.test-util.js';
import { MAX_IN_FLIGHT } from './hub.js';

const harnesses: Harness[] = [];
const sockets: WsClient[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.close();
  for (const h of harnesses.splice(0)) await h.close();
});

async function setup(limits?: Partial<StorageLimits>) {
  const h = await startHarness(limits ? { limits } : {});
  harnesses.push(h);
  const alice = await enrol(h, (await h.addUser('alice')).code);
  const bob = await enrol(h, (await h.addUser('bob')).code);
  return { h, alice, bob, aliceToken: await signIn(h, alice), bobToken: await signIn(h, bob) };
}

async function open(h: Harness, token: string): Promise<WsClient> {
  const ws = await WsClient.open(h, token);
  sockets.push(ws);
  return ws;
}

const text = (s: string) => encodeBase64(new TextEncoder().encode(s));
const untext = (b: string) => new TextDecoder().decode(decodeBase64(b));

describe('mailbox', () => {
  it('queues for an offline device, delivers in order on connect, and deletes only what was acked', async () => {
    const { h, alice, bob, aliceToken, bobToken } = await setup();
    const a = await open(h, aliceToken);
    // Pipelined sends on one socket: receipts come back in order, each after its envelope is on disk.
    for (let i = 0; i < 50; i++) {
      a.send({
        type: 'send',
        id: `r${i}`,
        messages: [{ recipientUserId: bob.userId, recipientDeviceId: 1, body: text(`m${i}`) }],
      });
    }
    for (let i = 0; i < 50; i++) {
      const sent = await a.next<{ type: 'sent'; id: string; receipts: { id: string }[] }>(
        (f) => f.type === 'sent',
      );
      expect(sent.id).toBe(`r${i}`);
    }
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(50);

    const b1 = await open(h, bobToken);
    const got: { id: string; body: string }[] = [];
    for (let i = 0; i < 50; i++) {
      const e = await b1.next<{
        type: 'envelope';
        id: string;
        body: string;
        senderUserId: string;
        senderDeviceId: number;
      }>((f) => f.type === 'envelope');
      expect(e.senderUserId).toBe(alice.userId);
      expect(e.senderDeviceId).toBe(1);
      got.push({ id: e.id, body: untext(e.body) });
    }
    expect(got.map((g) => g.body)).toEqual(Array.from({ length: 50 }, (_, i) => `m${i}`));
    b1.send({ type: 'ack', ids: got.slice(0, 20).map((g) => g.id) });
    b1.send({ type: 'ping', id: 'p' });
    await b1.next((f) => f.type === 'pong');
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(30);
    b1.close();
    await b1.waitClosed();

    // Unacknowledged envelopes come again on the next connection, still in order.
    const b2 = await open(h, bobToken);
    const again: string[] = [];
    for (let i = 0; i < 30; i++) {
      const e = await b2.next<{ type: 'envelope'; id: string; body: string }>((f) => f.type === 'envelope');
      again.push(untext(e.body));
      b2.send({ type: 'ack', ids: [e.id] });
    }
    expect(again).toEqual(Array.from({ length: 30 }, (_, i) => `m${i + 20}`));
    b2.send({ type: 'ping' });
    await b2.next((f) => f.type === 'pong');
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(0);
    const metrics = (await http(h, 'GET', '/metrics')).text;
    expect(metrics).toMatch(/qalqon_messages_queued_total 50/);
    expect(metrics).toMatch(/qalqon_messages_delivered_total 50/);
  });

  it('keeps at most MAX_IN_FLIGHT unacknowledged envelopes on the wire, and sends more as acks come', async () => {
    const { h, bob, aliceToken, bobToken } = await setup();
    const total = MAX_IN_FLIGHT + 20;
    for (let i = 0; i < total; i += 64) {
      const messages = Array.from({ length: Math.min(64, total - i) }, (_, j) => ({
        recipientUserId: bob.userId,
        recipientDeviceId: 1,
        body: text(`m${i + j}`),
      }));
      expect((await http(h, 'POST', '/v1/messages', { messages }, { token: aliceToken })).status).toBe(200);
    }
    const b = await open(h, bobToken);
    const first: { id: string; body: string }[] = [];
    for (let i = 0; i < MAX_IN_FLIGHT; i++) {
      first.push(await b.next<{ id: string; body: string }>((f) => f.type === 'envelope'));
    }
    // Nothing beyond the window arrives while nothing is acknowledged.
    await expect(b.next((f) => f.type === 'envelope', 300)).rejects.toThrow(/timed out/);
    b.send({ type: 'ack', ids: first.slice(0, 5).map((e) => e.id) });
    const more: string[] = [];
    for (let i = 0; i < 5; i++)
      more.push(untext((await b.next<{ body: string }>((f) => f.type === 'envelope')).body));
    expect(more).toEqual(Array.from({ length: 5 }, (_, i) => `m${MAX_IN_FLIGHT + i}`));
    await expect(b.next((f) => f.type === 'envelope', 200)).rejects.toThrow(/timed out/);
  });

  it('pushes to an online device at once, whether sent over HTTP or WebSocket', async () => {
    const { h, bob, aliceToken, bobToken } = await setup();
    const b = await open(h, bobToken);
    const r = await http(
      h,
      'POST',
      '/v1/messages',
      { messages: [{ recipientUserId: bob.userId, recipientDeviceId: 1, body: text('over http') }] },
      { token: aliceToken },
    );
    expect(r.status).toBe(200);
    const receipt = (r.json as { receipts: { id: string }[] }).receipts[0]!;
    const e = await b.next<{ type: 'envelope'; id: string; body: string }>((f) => f.type === 'envelope');
    expect(e.id).toBe(receipt.id);
    expect(untext(e.body)).toBe('over http');
  });

  it('a second connection of the same device takes over from the first', async () => {
    const { h, bobToken } = await setup();
    const first = await open(h, bobToken);
    await open(h, bobToken);
    expect((await first.waitClosed()).code).toBe(4000);
  });

  it('refuses sends over the queue limit with MAILBOX_FULL and stores none of the batch', async () => {
    const { h, bob, aliceToken } = await setup({ maxQueuedPerDevice: 3 });
    const send = (n: number) =>
      http(
        h,
        'POST',
        '/v1/messages',
        {
          messages: Array.from({ length: n }, () => ({
            recipientUserId: bob.userId,
            recipientDeviceId: 1,
            body: encodeBase64(randomBytes(10)),
          })),
        },
        { token: aliceToken },
      );
    expect((await send(2)).status).toBe(200);
    const full = await send(2);
    expect(full.status).toBe(429);
    expect((full.json as { error: { code: string } }).error.code).toBe('MAILBOX_FULL');
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(2);
  });

  it('refuses a body over the envelope limit and an unknown recipient device', async () => {
    const { h, bob, aliceToken } = await setup({ maxEnvelopeBytes: 1000 });
    const big = await http(
      h,
      'POST',
      '/v1/messages',
      {
        messages: [
          { recipientUserId: bob.userId, recipientDeviceId: 1, body: encodeBase64(randomBytes(1001)) },
        ],
      },
      { token: aliceToken },
    );
    expect(big.status).toBe(413);
    expect((big.json as { error: { code: string } }).error.code).toBe('ENVELOPE_TOO_LARGE');
    const nobody = await http(
      h,
      'POST',
      '/v1/messages',
      { messages: [{ recipientUserId: bob.userId, recipientDeviceId: 5, body: text('x') }] },
      { token: aliceToken },
    );
    expect((nobody.json as { error: { code: string } }).error.code).toBe('DEVICE_NOT_FOUND');
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(0);
  });

  it('pushes several envelopes per `envelopes` frame to a device that asked with `batch`, in order', async () => {
    const { h, alice, bob, aliceToken, bobToken } = await setup();
    const a = await open(h, aliceToken);
    for (let i = 0; i < 5; i++) {
      a.send({
        type: 'send',
        id: `r${i}`,
        messages: Array.from({ length: 60 }, (_, j) => ({
          recipientUserId: bob.userId,
          recipientDeviceId: 1,
          body: text(`m${i * 60 + j}`),
        })),
      });
    }
    for (let i = 0; i < 5; i++)
      expect((await a.next<{ id: string }>((f) => f.type === 'sent')).id).toBe(`r${i}`);
    const b = await WsClient.connect(h);
    sockets.push(b);
    b.send({ type: 'auth', token: bobToken, batch: true });
    await b.next((f) => f.type === 'ready');
    type Pushed = { id: string; body: string; senderUserId: string };
    const got: Pushed[] = [];
    let frames = 0;
    while (got.length < MAX_IN_FLIGHT) {
      const f = await b.next<{ envelopes: Pushed[] }>((x) => x.type === 'envelopes');
      frames++;
      got.push(...f.envelopes);
    }
    // Flow control holds per envelope, not per frame; no single `envelope` frames were sent.
    expect(got).toHaveLength(MAX_IN_FLIGHT);
    expect(frames).toBeLessThan(got.length / 10);
    expect(b.frames.some((f) => f.type === 'envelope')).toBe(false);
    expect(got.every((e) => e.senderUserId === alice.userId)).toBe(true);
    b.send({ type: 'ack', ids: got.map((e) => e.id) });
    while (got.length < 300)
      got.push(...(await b.next<{ envelopes: Pushed[] }>((x) => x.type === 'envelopes')).envelopes);
    expect(got.map((e) => untext(e.body))).toEqual(Array.from({ length: 300 }, (_, i) => `m${i}`));
    b.send({ type: 'ack', ids: got.slice(MAX_IN_FLIGHT).map((e) => e.id) });
    b.send({ type: 'ping', id: 'p' });
    await b.next((f) => f.type === 'pong');
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(0);
  });
});
