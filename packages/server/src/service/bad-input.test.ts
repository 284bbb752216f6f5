/**
 * Untrusted input (SPEC section 4): malformed, oversized, unauthenticated or hostile HTTP
 * bodies and WebSocket frames get a coded error and change nothing; an unexpected failure is
 * a generic 500 that leaks nothing; a burst of garbage frames neither crashes the server nor
 * disturbs another connection.
 */
import { randomBytes } from 'node:crypto';
import { encodeBase64, MAX_FRAME_BYTES, MAX_HTTP_BODY_BYTES } from '@qalqon/wire';
import { afterEach, describe, expect, it } from 'vitest';
import type { Storage } from '../storage/types.js';
import {
  enrol,
  type Harness,
  http,
  makeDevice,
  signIn,
  startHarness,
  WsClient,
} from './harness.test-util.js';

const harnesses: Harness[] = [];
const sockets: WsClient[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.close();
  for (const h of harnesses.splice(0)) await h.close();
});

async function setup(options: Parameters<typeof startHarness>[0] = {}) {
  const h = await startHarness(options);
  harnesses.push(h);
  const alice = await enrol(h, (await h.addUser('alice')).code);
  const bob = await enrol(h, (await h.addUser('bob')).code);
  return { h, alice, bob, aliceToken: await signIn(h, alice), bobToken: await signIn(h, bob) };
}

function code(r: { json: unknown }): string | undefined {
  return (r.json as { error?: { code?: string } } | undefined)?.error?.code;
}

describe('bad HTTP input', () => {
  it('answers malformed, oversized, mistyped and unauthenticated requests with coded errors and changes nothing', async () => {
    const { h, bob, aliceToken } = await setup();
    const { code: enrolCode, userId } = await h.addUser('carol');
    const send = { messages: [{ recipientUserId: bob.userId, recipientDeviceId: 1, body: 'aGk=' }] };
    const cases: [string, Promise<{ status: number; json: unknown }>, number, string][] = [
      [
        'not JSON',
        http(h, 'POST', '/v1/enrol', '{"code":', { contentType: 'application/json' }),
        400,
        'BAD_REQUEST',
      ],
      [
        'empty JSON body',
        http(h, 'POST', '/v1/enrol', '', { contentType: 'application/json' }),
        400,
        'BAD_REQUEST',
      ],
      [
        'wrong content type',
        http(h, 'POST', '/v1/enrol', 'code=1', { contentType: 'text/plain' }),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      ],
      [
        'form body',
        http(h, 'POST', '/v1/enrol', 'code=1', { contentType: 'application/x-www-form-urlencoded' }),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      ],
      ['wrong types', http(h, 'POST', '/v1/enrol', { code: 5, device: [] }), 400, 'BAD_REQUEST'],
      [
        'unknown field',
        http(h, 'POST', '/v1/enrol', { code: enrolCode, device: { ...makeDevice().json, admin: true } }),
        400,
        'BAD_REQUEST',
      ],
      [
        'prototype poisoning',
        http(h, 'POST', '/v1/enrol', `{"code":"${enrolCode}","__proto__":{"x":1}}`),
        400,
        'BAD_REQUEST',
      ],
      [
        'truncated key',
        http(h, 'POST', '/v1/enrol', {
          code: enrolCode,
          device: { ...makeDevice().json, identityKey: encodeBase64(randomBytes(32)) },
        }),
        400,
        'BAD_REQUEST',
      ],
      [
        'non-canonical base64',
        http(h, 'POST', '/v1/enrol', {
          code: enrolCode,
          device: { ...makeDevice().json, identityKey: 'BQ' },
        }),
        400,
        'BAD_REQUEST',
      ],
      [
        'oversized body',
        http(h, 'POST', '/v1/enrol', { code: enrolCode, pad: 'x'.repeat(MAX_HTTP_BODY_BYTES) }),
        413,
        'PAYLOAD_TOO_LARGE',
      ],
      ['no session', http(h, 'POST', '/v1/messages', send), 401, 'UNAUTHENTICATED'],
      [
        'bogus session',
        http(h, 'POST', '/v1/messages', send, { token: 'A'.repeat(43) }),
        401,
        'UNAUTHENTICATED',
      ],
      [
        'malformed auth header',
        http(h, 'GET', '/v1/devices', undefined, { token: 'bad token!' }),
        401,
        'UNAUTHENTICATED',
      ],
      [
        'bad route param',
        http(h, 'DELETE', '/v1/devices/0', undefined, { token: aliceToken }),
        400,
        'BAD_REQUEST',
      ],
      [
        'bad user name',
        http(h, 'GET', '/v1/keys/Bob%20Smith', undefined, { token: aliceToken }),
        400,
        'BAD_REQUEST',
      ],
      ['unknown route', http(h, 'GET', '/v1/nothing'), 404, 'NOT_FOUND'],
      ['wrong method', http(h, 'PUT', '/v1/enrol', {}), 404, 'NOT_FOUND'],
      [
        'too many messages',
        http(
          h,
          'POST',
          '/v1/messages',
          { messages: Array(65).fill(send.messages[0]) },
          { token: aliceToken },
        ),
        400,
        'BAD_REQUEST',
      ],
    ];
    for (const [what, p, status, c] of cases) {
      const r = await p;
      expect(r.status, what).toBe(status);
      expect(code(r), what).toBe(c);
      expect(Object.keys(r.json as object), what).toEqual(['error']);
    }
    // Nothing changed: carol's code still works, bob's queue is empty, no stray devices.
    expect(await h.storage.listDevices(userId)).toEqual([]);
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(0);
    expect((await http(h, 'POST', '/v1/enrol', { code: enrolCode, device: makeDevice().json })).status).toBe(
      200,
    );
  });

  it('never echoes an enrolment code or key material in an error', async () => {
    const { h } = await setup();
    const secret = `${'S'.repeat(20)}\u0001`;
    const r = await http(h, 'POST', '/v1/enrol', { code: secret, device: makeDevice().json });
    expect(code(r)).toBe('BAD_REQUEST');
    expect(JSON.stringify(r.json)).not.toContain('SSSS');
  });

  it('rate-limits guessing enrolment codes per address', async () => {
    const { h } = await setup();
    const { code: good } = await h.addUser('carol');
    for (let i = 0; i < 10; i++) {
      const r = await http(h, 'POST', '/v1/enrol', {
        code: randomBytes(15).toString('base64url'),
        device: makeDevice().json,
      });
      expect(code(r)).toBe('ENROLMENT_CODE_INVALID');
    }
    const limited = await http(h, 'POST', '/v1/enrol', { code: good, device: makeDevice().json });
    expect(limited.status).toBe(429);
    expect(code(limited)).toBe('RATE_LIMITED');
  });

  it('turns an unexpected failure into a generic 500 that leaks nothing', async () => {
    const secretDetail = 'database path /secret/x and key 0xdeadbeef';
    const wrap = (s: Storage): Storage =>
      new Proxy(s, {
        get(target, prop, receiver) {
          if (prop === 'fetchPrekeyBundles') return () => Promise.reject(new Error(secretDetail));
          const v = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
    const { h, aliceToken } = await setup({ wrapStorage: wrap });
    const r = await http(h, 'GET', '/v1/keys/bob', undefined, { token: aliceToken });
    expect(r.status).toBe(500);
    expect(r.json).toEqual({ error: { code: 'INTERNAL', message: 'internal error' } });
    expect(h.logs.join('\n')).not.toContain('deadbeef');
    expect((await http(h, 'GET', '/healthz')).status).toBe(200);
  });
});

describe('bad WebSocket input', () => {
  it('refuses frames before authentication and a bad token', async () => {
    const { h, bob } = await setup();
    const ws = await WsClient.connect(h);
    sockets.push(ws);
    ws.send({
      type: 'send',
      id: 'x',
      messages: [{ recipientUserId: bob.userId, recipientDeviceId: 1, body: 'aGk=' }],
    });
    expect(await ws.next((f) => f.type === 'error')).toEqual({
      type: 'error',
      id: 'x',
      code: 'UNAUTHENTICATED',
      message: 'authenticate first',
    });
    ws.send({ type: 'auth', token: 'A'.repeat(43) });
    const err = await ws.next((f) => f.type === 'error');
    expect(err).toMatchObject({ code: 'UNAUTHENTICATED' });
    expect((await ws.waitClosed()).code).toBe(4401);
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(0);
  });

  it('answers each kind of bad frame with a coded error frame', async () => {
    const { h, aliceToken } = await setup();
    const ws = await WsClient.open(h, aliceToken);
    sockets.push(ws);
    const expectError = async (frame: string | Buffer, c: string) => {
      if (Buffer.isBuffer(frame)) ws.ws.send(frame, { binary: true });
      else ws.send(frame);
      const e = await ws.next((f) => f.type === 'error');
      expect(e).toMatchObject({ code: c });
    };
    await expectError('not json', 'BAD_REQUEST');
    await expectError('{"type":"nope"}', 'BAD_REQUEST');
    await expectError('{"type":"ack","ids":[]}', 'BAD_REQUEST');
    await expectError('{"type":"ack","ids":["zz"],"extra":1}', 'BAD_REQUEST');
    await expectError(Buffer.from([1, 2, 3]), 'BAD_REQUEST');
    await expectError(`{"type":"ping","id":"${'x'.repeat(MAX_FRAME_BYTES)}"}`, 'PAYLOAD_TOO_LARGE');
    await expectError(JSON.stringify({ type: 'auth', token: aliceToken }), 'BAD_REQUEST');
    // Still usable afterwards.
    ws.send({ type: 'ping', id: 'ok' });
    expect(await ws.next((f) => f.type === 'pong')).toEqual({ type: 'pong', id: 'ok' });
  });

  it('survives a burst of random garbage frames without disturbing another connection', async () => {
    const { h, alice, bob, aliceToken, bobToken } = await setup();
    const b = await WsClient.open(h, bobToken);
    sockets.push(b);
    // Phase 1: well-formed WebSocket frames with garbage inside: each gets an error frame.
    const garbage = await WsClient.open(h, aliceToken);
    sockets.push(garbage);
    const junk = [
      () => randomBytes(1 + Math.floor(Math.random() * 200)),
      () => randomBytes(50).toString('hex'),
      () =>
        `{"type":"send","id":"g","messages":[{"recipientUserId":"${bob.userId}","recipientDeviceId":1,"body":"%${randomBytes(4).toString('hex')}"}]}`,
      () => JSON.stringify({ type: 'ack', ids: [randomBytes(3).toString('hex')] }),
      () => '['.repeat(5000),
      () => JSON.stringify({ type: 'send', id: 'g', messages: 'x'.repeat(100) }),
      () => '{"__proto__":{"type":"ping"}}',
    ];
    const n = 100;
    for (let i = 0; i < n; i++) {
      const f = junk[i % junk.length]!();
      if (Buffer.isBuffer(f)) garbage.ws.send(f, { binary: true });
      else garbage.ws.send(f);
    }
    for (let i = 0; i < n; i++) await garbage.next((f) => f.type === 'error');
    // Phase 2: raw random bytes as text frames on a not yet authenticated connection (invalid
    // UTF-8 is a protocol violation): the server fails that connection alone.
    const hostile = await WsClient.connect(h);
    sockets.push(hostile);
    for (let i = 0; i < 300; i++)
      hostile.ws.send(randomBytes(1 + Math.floor(Math.random() * 300)), { binary: false });
    const closed = await hostile.waitClosed();
    expect([1007, 1008]).toContain(closed.code);

    // The other connections are unaffected: a message to bob arrives as usual, alice's first socket still answers.
    const sent = await http(
      h,
      'POST',
      '/v1/messages',
      {
        messages: [{ recipientUserId: bob.userId, recipientDeviceId: 1, body: 'aGVsbG8=' }],
      },
      { token: await signIn(h, alice) },
    );
    expect(sent.status).toBe(200);
    const e = await b.next<{ type: 'envelope'; body: string }>((f) => f.type === 'envelope');
    expect(e.body).toBe('aGVsbG8=');
    garbage.send({ type: 'ping', id: 'still here' });
    expect(await garbage.next((f) => f.type === 'pong')).toEqual({ type: 'pong', id: 'still here' });
    // Only the legitimate message was stored.
    expect((await h.storage.mailboxStats(bob.userId, 1)).count).toBe(1);
    expect((await http(h, 'GET', '/healthz')).status).toBe(200);
    const metrics = (await http(h, 'GET', '/metrics')).text;
    expect(metrics).toMatch(/qalqon_websocket_frame_errors_total\{code="BAD_REQUEST"\} \d+/);
  });
});
