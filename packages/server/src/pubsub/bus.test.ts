/**
 * The bus message codec, the in-process bus, and the `pubsub` config setting.
 */
import { describe, expect, it } from 'vitest';
import { isServerError } from '../errors.js';
import {
  BUS_EVENT_TYPES,
  type BusEvent,
  checkBusEvent,
  decodeBusMessage,
  encodeBusMessage,
  MAX_BUS_MESSAGE_BYTES,
  newNodeId,
} from './bus.js';
import { C1, EVERY_EVENT, U1 } from './bus.test-util.js';
import { checkPubsubSetting, openEventBus, resolvePubsub } from './config.js';
import { createLocalBus, LocalBusNetwork } from './local-bus.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isServerError(err) ? err.code : 'not a ServerError';
  }
  return undefined;
}

const te = new TextEncoder();

describe('bus message codec', () => {
  it('round-trips every event type with the sender id, in a few hundred bytes at most', () => {
    const from = newNodeId();
    expect(new Set(EVERY_EVENT.map((e) => e.type))).toEqual(new Set(BUS_EVENT_TYPES));
    for (const event of EVERY_EVENT) {
      const bytes = encodeBusMessage(from, event);
      expect(bytes.length).toBeLessThan(event.type === 'presence' ? MAX_BUS_MESSAGE_BYTES : 256);
      expect(decodeBusMessage(bytes)).toEqual({ ok: true, from, event });
      // Same event, same bytes, whatever the caller's key order.
      const shuffled = Object.fromEntries(Object.entries(event).reverse()) as BusEvent;
      expect(encodeBusMessage(from, shuffled)).toEqual(bytes);
    }
  });

  it('refuses to encode an invalid event with INVALID_ARGUMENT naming the field, not the value', () => {
    const bad: unknown[] = [
      { type: 'mail', userId: U1 },
      { type: 'mail', userId: 'ABCDEF0123456789ABCDEF0123456789', deviceId: 1 },
      { type: 'mail', userId: U1, deviceId: 0 },
      { type: 'mail', userId: U1, deviceId: 1, body: 'secret content' },
      { type: 'channel-changed', channelId: C1, seq: -1 },
      { type: 'nope' },
      null,
    ];
    for (const e of bad) expect(code(() => checkBusEvent(e))).toBe('INVALID_ARGUMENT');
    try {
      checkBusEvent({ type: 'mail', userId: 'not-an-id-but-a-token', deviceId: 1 });
    } catch (err) {
      expect((err as Error).message).toContain('event.userId');
      expect((err as Error).message).not.toContain('not-an-id-but-a-token');
    }
  });

  it('classifies what a bus might carry: oversized before parsing, everything else malformed', () => {
    const from = newNodeId();
    const valid = JSON.stringify({ v: 1, from, event: { type: 'mail', userId: U1, deviceId: 1 } });
    expect(decodeBusMessage(te.encode(valid)).ok).toBe(true);
    expect(decodeBusMessage(te.encode(`${valid}${' '.repeat(MAX_BUS_MESSAGE_BYTES)}`))).toEqual({
      ok: false,
      reason: 'oversized',
    });
    const malformed: Uint8Array[] = [
      new Uint8Array(0),
      new Uint8Array([0xff, 0xfe, 0x7b, 0x7d]),
      te.encode('not json'),
      te.encode('null'),
      te.encode('[]'),
      te.encode(valid.replace('"v":1', '"v":2')),
      te.encode(valid.replace(from, from.toUpperCase())),
      te.encode(valid.replace('"deviceId":1', '"deviceId":1.5')),
      te.encode(valid.replace('"deviceId":1', '"deviceId":1,"body":"x"')),
      te.encode(valid.replace('}}', '},"extra":1}')),
      te.encode(JSON.stringify({ v: 1, from, event: { type: 'resync', userId: U1 } })),
    ];
    for (const m of malformed) expect(decodeBusMessage(m)).toEqual({ ok: false, reason: 'malformed' });
  });
});

describe('local bus', () => {
  it('delivers to the other nodes of its network after a microtask, never to itself', async () => {
    const net = new LocalBusNetwork();
    const a = net.join();
    const b = net.join();
    const c = net.join();
    const got = { a: [] as unknown[], b: [] as unknown[], c: [] as unknown[] };
    a.subscribe((e, from) => got.a.push({ e, from }));
    b.subscribe((e, from) => got.b.push({ e, from }));
    c.subscribe((e, from) => got.c.push({ e, from }));
    for (const e of EVERY_EVENT) a.publish(e);
    // Not inside publish().
    expect(got.b).toEqual([]);
    await Promise.resolve();
    const expected = EVERY_EVENT.map((e) => ({ e, from: a.nodeId }));
    expect(got.b).toEqual(expected);
    expect(got.c).toEqual(expected);
    expect(got.a).toEqual([]);
    expect(a.counters().published).toBe(EVERY_EVENT.length);
    expect(b.counters().delivered).toBe(EVERY_EVENT.length);
    expect(a.counters().delivered).toBe(0);
    await Promise.all([a.close(), b.close(), c.close()]);
  });

  it('a lone bus (the single-node default) checks events and delivers nothing', async () => {
    const bus = createLocalBus();
    const got: unknown[] = [];
    bus.subscribe((e) => got.push(e));
    expect(bus.status).toBe('connected');
    bus.publish({ type: 'mail', userId: U1, deviceId: 1 });
    expect(code(() => bus.publish({ type: 'mail', userId: U1 } as unknown as BusEvent))).toBe(
      'INVALID_ARGUMENT',
    );
    await new Promise((r) => setTimeout(r, 10));
    expect(got).toEqual([]);
    expect(bus.counters()).toMatchObject({ published: 1, delivered: 0 });
    await bus.close();
  });

  it('a throwing handler is counted and the other handlers still run; unsubscribe stops delivery', async () => {
    const log: string[] = [];
    const net = new LocalBusNetwork();
    const a = net.join();
    const b = net.join({ log: (m) => log.push(m) });
    const got: string[] = [];
    b.subscribe(() => {
      throw new Error('handler bug with a secret');
    });
    const off = b.subscribe((e) => got.push(e.type));
    a.publish({ type: 'authz-changed' });
    await Promise.resolve();
    expect(got).toEqual(['authz-changed']);
    expect(b.counters().handlerErrors).toBe(1);
    expect(log.join('\n')).not.toContain('secret');
    off();
    a.publish({ type: 'authz-changed' });
    await Promise.resolve();
    expect(got).toEqual(['authz-changed']);
    await a.close();
    await b.close();
  });

  it('after close(): publish and subscribe throw PUBSUB_CLOSED, and nothing is delivered to it', async () => {
    const net = new LocalBusNetwork();
    const a = net.join();
    const b = net.join();
    const got: unknown[] = [];
    b.subscribe((e) => got.push(e));
    await b.close();
    await b.close();
    expect(b.status).toBe('closed');
    a.publish({ type: 'resync' });
    await Promise.resolve();
    expect(got).toEqual([]);
    expect(code(() => b.publish({ type: 'resync' }))).toBe('PUBSUB_CLOSED');
    expect(code(() => b.subscribe(() => {}))).toBe('PUBSUB_CLOSED');
    await a.close();
  });

  it('refuses a malformed node id', () => {
    expect(code(() => createLocalBus({ nodeId: 'node-1' }))).toBe('INVALID_ARGUMENT');
  });
});

describe('pubsub config setting', () => {
  it('accepts the documented forms', () => {
    expect(checkPubsubSetting(undefined)).toEqual({ provider: 'local' });
    expect(checkPubsubSetting({ provider: 'local' })).toEqual({ provider: 'local' });
    expect(checkPubsubSetting({ provider: 'nats', urlEnv: 'QALQON_NATS_URL' })).toEqual({
      provider: 'nats',
      urlEnv: 'QALQON_NATS_URL',
      subjectPrefix: 'qalqon',
    });
    expect(
      checkPubsubSetting({ provider: 'nats', url: 'tls://nats.internal:4443', subjectPrefix: 'acme.prod' }),
    ).toEqual({ provider: 'nats', url: 'tls://nats.internal:4443', subjectPrefix: 'acme.prod' });
  });

  it('refuses anything else with CONFIG_INVALID, never quoting a URL', () => {
    const bad: unknown[] = [
      null,
      'nats',
      [],
      { provider: 'redis', url: 'redis://x' },
      { provider: 'local', url: 'nats://x' },
      { provider: 'nats' },
      { provider: 'nats', url: 'nats://a', urlEnv: 'X' },
      { provider: 'nats', urlEnv: '1BAD' },
      { provider: 'nats', urlEnv: 'A-B' },
      { provider: 'nats', url: 'http://nats.internal' },
      { provider: 'nats', url: 'nats://nats.internal/path' },
      { provider: 'nats', url: 'nats://nats.internal?x=1' },
      { provider: 'nats', url: 'not a url' },
      { provider: 'nats', url: 'nats://x', subjectPrefix: 'a.*' },
      { provider: 'nats', url: 'nats://x', subjectPrefix: 'a..b' },
      { provider: 'nats', url: 'nats://x', subjectPrefix: '' },
      { provider: 'nats', url: 'nats://x', extra: true },
    ];
    for (const b of bad) expect(code(() => checkPubsubSetting(b))).toBe('CONFIG_INVALID');
    for (const url of [
      'nats://alice:hunter2secret@nats.internal',
      'nats://tokenhunter2secret@nats.internal',
    ]) {
      try {
        checkPubsubSetting({ provider: 'nats', url });
        expect.unreachable();
      } catch (err) {
        expect(isServerError(err, 'CONFIG_INVALID')).toBe(true);
        expect((err as Error).message).toContain('urlEnv');
        expect((err as Error).message).not.toContain('hunter2');
      }
    }
  });

  it('resolves the URL from the named environment variable, naming the variable but not the value', () => {
    const setting = checkPubsubSetting({ provider: 'nats', urlEnv: 'QALQON_TEST_NATS' });
    expect(resolvePubsub(setting, { QALQON_TEST_NATS: 'nats://u:hunter2@127.0.0.1:4222' })).toEqual({
      provider: 'nats',
      url: 'nats://u:hunter2@127.0.0.1:4222',
      subjectPrefix: 'qalqon',
    });
    for (const env of [{}, { QALQON_TEST_NATS: '' }, { QALQON_TEST_NATS: 'https://u:hunter2@x' }]) {
      try {
        resolvePubsub(setting, env);
        expect.unreachable();
      } catch (err) {
        expect(isServerError(err, 'CONFIG_INVALID')).toBe(true);
        expect((err as Error).message).toContain('QALQON_TEST_NATS');
        expect((err as Error).message).not.toContain('hunter2');
      }
    }
  });

  it('opens the local bus for the local setting', async () => {
    const bus = openEventBus(resolvePubsub(checkPubsubSetting(undefined)), { name: 'n' });
    expect(bus.kind).toBe('local');
    await bus.close();
  });
});
