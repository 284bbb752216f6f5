/**
 * The NATS event bus against the real NATS server on this machine (127.0.0.1:4222, or
 * QALQON_TEST_NATS_URL). Every test uses its own random subject prefix, so test files and
 * runs can go in parallel. The shared NATS server is never stopped: losing the connection is
 * simulated with a TCP proxy on 127.0.0.1 port 0 that the test cuts and restores. If NATS is
 * not reachable the tests FAIL with what to start; they never skip.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { type NatsConnection, connect as natsConnect } from 'nats';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isServerError } from '../errors.js';
import { type BusEvent, encodeBusMessage, MAX_BUS_MESSAGE_BYTES } from './bus.js';
import { EVERY_EVENT, U1, waitFor } from './bus.test-util.js';
import { checkPubsubSetting, openEventBus, resolvePubsub } from './config.js';
import { connectNatsBus, MAX_REPLAY_EVENTS, type NatsBus, type NatsBusOptions } from './nats-bus.js';

const NATS_URL = process.env.QALQON_TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
const NATS = new URL(NATS_URL);
const START_HINT =
  'start it with `nats-server -a 127.0.0.1 -p 4222 &` (package nats-server; .ci/run does this in CI), ' +
  'or point QALQON_TEST_NATS_URL at a NATS server';

const open: { close(): Promise<unknown> }[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((o) => o.close().catch(() => {})));
});

beforeAll(async () => {
  try {
    const nc = await natsConnect({ servers: NATS.host, timeout: 3000 });
    await nc.close();
  } catch (err) {
    throw new Error(`NATS is not reachable at ${NATS.host} (${(err as Error).message}): ${START_HINT}`);
  }
});

function prefix(): string {
  return `qtest.${randomBytes(8).toString('hex')}`;
}

interface Node {
  readonly bus: NatsBus;
  /** Events from other nodes (the bus's own local `resync`s are in `resyncs`). */
  readonly got: { event: BusEvent; from: string }[];
  readonly logs: string[];
  resyncs: number;
}

function node(options: Partial<NatsBusOptions> & { subjectPrefix: string }): Node {
  const logs: string[] = [];
  const bus = connectNatsBus({
    url: NATS_URL,
    name: 'qalqon-test',
    maxReconnectDelayMs: 200,
    log: (m) => logs.push(m),
    ...options,
  });
  open.push(bus);
  const n: Node = { bus, got: [], logs, resyncs: 0 };
  bus.subscribe((event, from) => {
    if (from === bus.nodeId && event.type === 'resync') n.resyncs++;
    else n.got.push({ event, from });
  });
  return n;
}

async function connected(...nodes: Node[]): Promise<void> {
  for (const n of nodes) expect(await n.bus.ready(10_000)).toBe(true);
}

async function raw(): Promise<NatsConnection> {
  const nc = await natsConnect({ servers: NATS.host });
  open.push(nc);
  return nc;
}

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isServerError(err) ? err.code : 'not a ServerError';
  }
  return undefined;
}

/** A TCP proxy to NATS that can be cut (every connection dropped, new ones refused) and restored. */
class CuttableProxy {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #cut = false;
  port = 0;

  constructor() {
    this.#server = createServer((client) => {
      if (this.#cut) {
        client.destroy();
        return;
      }
      const upstream = tcpConnect(Number(NATS.port || 4222), NATS.hostname);
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => {
          this.#sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.port = (this.#server.address() as { port: number }).port;
    return this.port;
  }

  sever(): void {
    this.#cut = true;
    for (const s of this.#sockets) s.destroy();
  }

  restore(): void {
    this.#cut = false;
  }

  get connections(): number {
    return this.#sockets.size / 2;
  }

  async close(): Promise<void> {
    this.sever();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

/** A port on 127.0.0.1 with nothing listening. */
async function deadPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address() as { port: number };
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

describe('NATS event bus', () => {
  it('two nodes exchange every event type, each tagged with the sender, and never see their own', async () => {
    const p = prefix();
    const a = node({ subjectPrefix: p });
    const b = node({ subjectPrefix: p });
    await connected(a, b);
    expect(a.bus.status).toBe('connected');
    expect(a.resyncs).toBe(1);
    for (const e of EVERY_EVENT) a.bus.publish(e);
    for (const e of EVERY_EVENT) b.bus.publish(e);
    await waitFor(
      'both directions',
      () => a.got.length === EVERY_EVENT.length && b.got.length === EVERY_EVENT.length,
    );
    expect(b.got).toEqual(EVERY_EVENT.map((event) => ({ event, from: a.bus.nodeId })));
    expect(a.got).toEqual(EVERY_EVENT.map((event) => ({ event, from: b.bus.nodeId })));
    // Nothing of their own came back (noEcho), so nothing was even dropped as an echo.
    expect(a.bus.counters()).toMatchObject({
      published: EVERY_EVENT.length,
      delivered: EVERY_EVENT.length,
      echoes: 0,
      malformed: 0,
    });
    // One subscription per node, however many devices the events named.
    for (let d = 1; d <= 50; d++) a.bus.publish({ type: 'mail', userId: U1, deviceId: d });
    await waitFor('50 mails', () => b.got.length === EVERY_EVENT.length + 50);
    expect(a.bus.subscriptions).toBe(1);
    expect(b.bus.subscriptions).toBe(1);
  });

  it('drops a message carrying its own node id (an echo), which other nodes still get', async () => {
    const p = prefix();
    const a = node({ subjectPrefix: p });
    const b = node({ subjectPrefix: p });
    await connected(a, b);
    const nc = await raw();
    nc.publish(`${p}.mail`, encodeBusMessage(a.bus.nodeId, { type: 'mail', userId: U1, deviceId: 9 }));
    await waitFor('b to get it', () => b.got.length === 1);
    await waitFor('a to drop it', () => a.bus.counters().echoes === 1);
    expect(a.got).toEqual([]);
    expect(b.got[0]).toEqual({ event: { type: 'mail', userId: U1, deviceId: 9 }, from: a.bus.nodeId });
  });

  it('drops and counts oversized, malformed and mis-addressed messages, and keeps working', async () => {
    const p = prefix();
    const a = node({ subjectPrefix: p });
    await connected(a);
    const other = randomBytes(16).toString('hex');
    const te = new TextEncoder();
    const valid = (type: string, event: object) =>
      te.encode(JSON.stringify({ v: 1, from: other, event: { type, ...event } }));
    const nc = await raw();
    const oversized = [
      new Uint8Array(MAX_BUS_MESSAGE_BYTES + 1).fill(0x7b),
      randomBytes(1024 * 1024 - 1024),
      te.encode(JSON.stringify({ v: 1, from: other, event: { type: 'resync' }, pad: 'x'.repeat(600) })),
    ];
    const malformed: [string, Uint8Array][] = [
      ['mail', new Uint8Array(0)],
      ['mail', randomBytes(64)],
      ['mail', new Uint8Array([0xc3, 0x28, 0x7b, 0x7d])],
      ['mail', te.encode('{"v":1')],
      ['mail', te.encode('"just a string"')],
      ['mail', valid('mail', { userId: U1 })],
      ['mail', valid('mail', { userId: U1.toUpperCase(), deviceId: 1 })],
      ['mail', valid('mail', { userId: U1, deviceId: 1, body: 'content' })],
      ['mail', te.encode(JSON.stringify({ v: 2, from: other, event: { type: 'resync' } }))],
      ['mail', te.encode(JSON.stringify({ v: 1, from: 'node-b', event: { type: 'resync' } }))],
      // A valid event on the wrong subject, or on a subject of no event type.
      ['device-removed', valid('mail', { userId: U1, deviceId: 1 })],
      ['bogus', valid('mail', { userId: U1, deviceId: 1 })],
      ['channel-changed', valid('channel-changed', { channelId: U1, seq: -5 })],
    ];
    for (const m of oversized) nc.publish(`${p}.mail`, m);
    for (const [type, m] of malformed) nc.publish(`${p}.${type}`, m);
    // Not our subscription's subjects at all.
    nc.publish(`${p}.mail.extra`, valid('mail', { userId: U1, deviceId: 1 }));
    nc.publish(`${p}`, valid('mail', { userId: U1, deviceId: 1 }));
    // NATS keeps one publisher's order, so once this arrives everything above has been handled.
    nc.publish(`${p}.mail`, valid('mail', { userId: U1, deviceId: 4 }));
    await waitFor('the valid message', () => a.got.length === 1);
    expect(a.got).toEqual([{ event: { type: 'mail', userId: U1, deviceId: 4 }, from: other }]);
    expect(a.bus.counters()).toMatchObject({
      oversized: oversized.length,
      malformed: malformed.length,
      delivered: 1,
      echoes: 0,
    });
    expect(a.bus.status).toBe('connected');
  });

  it('close() drains what was published; afterwards publish and subscribe throw PUBSUB_CLOSED', async () => {
    const p = prefix();
    const a = node({ subjectPrefix: p });
    const b = node({ subjectPrefix: p });
    await connected(a, b);
    for (let d = 1; d <= 300; d++) a.bus.publish({ type: 'mail', userId: U1, deviceId: d });
    await a.bus.close();
    expect(a.bus.status).toBe('closed');
    await waitFor('all 300 after close', () => b.got.length === 300);
    expect(b.got.map((g) => (g.event as { deviceId: number }).deviceId)).toEqual(
      Array.from({ length: 300 }, (_, i) => i + 1),
    );
    expect(code(() => a.bus.publish({ type: 'resync' }))).toBe('PUBSUB_CLOSED');
    expect(code(() => a.bus.subscribe(() => {}))).toBe('PUBSUB_CLOSED');
    await a.bus.close();
    expect(await a.bus.ready(10)).toBe(false);
    // b no longer hears a: its connection is gone, not just muted.
    const c = node({ subjectPrefix: p });
    await connected(c);
    c.bus.publish({ type: 'authz-changed' });
    await waitFor('b to hear c', () => b.got.length === 301);
    expect(a.got).toEqual([]);
  });

  it('subject prefixes keep concurrent deployments (and tests) apart', async () => {
    const [p1, p2] = [prefix(), prefix()];
    const a1 = node({ subjectPrefix: p1 });
    const b1 = node({ subjectPrefix: p1 });
    const a2 = node({ subjectPrefix: p2 });
    const b2 = node({ subjectPrefix: p2 });
    await connected(a1, b1, a2, b2);
    a1.bus.publish({ type: 'mail', userId: U1, deviceId: 1 });
    a2.bus.publish({ type: 'mail', userId: U1, deviceId: 2 });
    const nc = await raw();
    nc.publish(`${p1}.authz-changed`, encodeBusMessage(a1.bus.nodeId, { type: 'authz-changed' }));
    await waitFor('b1', () => b1.got.length === 2);
    await waitFor('b2', () => b2.got.length === 1);
    // A round trip on p2 after p1's raw publish: had it leaked to p2 it would be there by now.
    b2.bus.publish({ type: 'resync' });
    await waitFor('a2', () => a2.got.length === 1);
    expect(b1.got.map((g) => g.event)).toEqual([
      { type: 'mail', userId: U1, deviceId: 1 },
      { type: 'authz-changed' },
    ]);
    expect(b2.got.map((g) => g.event)).toEqual([{ type: 'mail', userId: U1, deviceId: 2 }]);
    expect(a2.got.map((g) => g.event)).toEqual([{ type: 'resync' }]);
    for (const n of [a1, b1, a2, b2]) expect(n.bus.counters().malformed).toBe(0);
  });

  it('with NATS unreachable: not connected, publish does not throw, close() is prompt, no credentials logged', async () => {
    const port = await deadPort();
    const logs: string[] = [];
    const bus = connectNatsBus({
      url: `nats://alice:hunter2secret@127.0.0.1:${port}`,
      name: 'qalqon-test',
      subjectPrefix: prefix(),
      maxReconnectDelayMs: 100,
      log: (m) => logs.push(m),
    });
    open.push(bus);
    expect(bus.url).toBe(`nats://127.0.0.1:${port}`);
    expect(await bus.ready(500)).toBe(false);
    expect(bus.status).toBe('connecting');
    expect(bus.lastError).toBe('CONNECTION_REFUSED');
    bus.publish({ type: 'mail', userId: U1, deviceId: 1 });
    expect(bus.counters()).toMatchObject({ published: 1, deferred: 1 });
    const t0 = Date.now();
    await bus.close();
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(logs.length).toBeGreaterThan(0);
    expect(logs.join('\n')).not.toContain('hunter2');
    expect(logs.join('\n')).not.toContain('alice');
  });

  it('credentials in the URL go to NATS, not to the logs; the config path opens the same bus', async () => {
    const p = prefix();
    const host = NATS.host;
    // This NATS has no authorisation configured, so it accepts any user and password.
    const setting = checkPubsubSetting({
      provider: 'nats',
      urlEnv: 'QALQON_TEST_NATS_BUS',
      subjectPrefix: p,
    });
    const resolved = resolvePubsub(setting, { QALQON_TEST_NATS_BUS: `nats://alice:hunter2secret@${host}` });
    const logs: string[] = [];
    const a = openEventBus(resolved, { name: 'qalqon-test', log: (m) => logs.push(m) }) as NatsBus;
    open.push(a);
    const b = node({ subjectPrefix: p });
    expect(await a.ready(10_000)).toBe(true);
    await connected(b);
    a.publish({ type: 'device-removed', userId: U1 });
    await waitFor('b', () => b.got.length === 1);
    expect(a.url).toBe(`nats://${host}`);
    expect(logs.join('\n')).toContain(`nats://${host}`);
    expect(logs.join('\n')).not.toContain('hunter2');
  });

  it('tls:// never falls back to plaintext: against a server without TLS it does not connect', async () => {
    const logs: string[] = [];
    const bus = connectNatsBus({
      url: `tls://${NATS.host}`,
      name: 'qalqon-test',
      subjectPrefix: prefix(),
      maxReconnectDelayMs: 100,
      log: (m) => logs.push(m),
    });
    open.push(bus);
    expect(await bus.ready(1000)).toBe(false);
    expect(bus.status).toBe('connecting');
    expect(bus.lastError).toBe('SERVER_OPT_NA');
    expect(code(() => connectNatsBus({ url: `nats://${NATS.host}`, name: 'x', ca: 'PEM' }))).toBe(
      'INVALID_ARGUMENT',
    );
  });

  it('reconnects after the link is cut, replays what it published meanwhile, and tells its node to resync', async () => {
    const proxy = new CuttableProxy();
    open.push(proxy);
    const port = await proxy.listen();
    const p = prefix();
    const a = node({ subjectPrefix: p, url: `nats://127.0.0.1:${port}` });
    const b = node({ subjectPrefix: p });
    await connected(a, b);
    expect(a.resyncs).toBe(1);
    const statuses: string[] = [];
    a.bus.onStatus((s) => statuses.push(s));

    a.bus.publish({ type: 'mail', userId: U1, deviceId: 1 });
    await waitFor('before the cut', () => b.got.length === 1);

    proxy.sever();
    await waitFor('a to notice', () => a.bus.status === 'reconnecting');
    // While down: publishing is quiet and kept; a repeat coalesces.
    a.bus.publish({ type: 'mail', userId: U1, deviceId: 2 });
    a.bus.publish({ type: 'mail', userId: U1, deviceId: 2 });
    a.bus.publish({ type: 'authz-changed', userId: U1 });
    expect(a.bus.counters().deferred).toBe(3);
    // What b publishes now is lost for a (at most once); a's resync makes up for it.
    b.bus.publish({ type: 'channel-changed', channelId: U1, seq: 3 });
    await new Promise((r) => setTimeout(r, 300));
    expect(a.bus.status).toBe('reconnecting');

    proxy.restore();
    await waitFor('a to reconnect', () => a.bus.status === 'connected');
    expect(statuses).toEqual(['reconnecting', 'connected']);
    expect(a.resyncs).toBe(2);
    // b gets what a published while down (and, as a harmless repeat, the event from before the cut).
    await waitFor('replay', () =>
      b.got.some((g) => g.event.type === 'authz-changed' && g.event.userId === U1),
    );
    const mailsTo = (d: number) =>
      b.got.filter((g) => g.event.type === 'mail' && g.event.deviceId === d).length;
    expect(mailsTo(2)).toBe(1);
    expect(mailsTo(1)).toBeLessThanOrEqual(2);
    expect(a.got.some((g) => g.event.type === 'channel-changed')).toBe(false);

    // And live delivery works both ways again.
    b.bus.publish({ type: 'mail', userId: U1, deviceId: 5 });
    a.bus.publish({ type: 'mail', userId: U1, deviceId: 6 });
    await waitFor('b→a after reconnect', () => a.got.some((g) => g.event.type === 'mail'));
    await waitFor('a→b after reconnect', () => mailsTo(6) === 1);
    expect(a.logs.join('\n')).toContain('reconnected');
  });
  it('NATS down at start: connects when it comes up and sends what was published before', async () => {
    const proxy = new CuttableProxy();
    open.push(proxy);
    const port = await proxy.listen();
    proxy.sever();
    const p = prefix();
    const b = node({ subjectPrefix: p });
    await connected(b);
    const a = node({ subjectPrefix: p, url: `nats://127.0.0.1:${port}` });
    a.bus.publish({ type: 'device-removed', userId: U1, deviceId: 7 });
    expect(await a.bus.ready(400)).toBe(false);
    expect(a.bus.status).toBe('connecting');
    expect(a.resyncs).toBe(0);
    proxy.restore();
    expect(await a.bus.ready(10_000)).toBe(true);
    expect(a.resyncs).toBe(1);
    await waitFor('the early event', () => b.got.length === 1);
    expect(b.got[0]).toEqual({
      event: { type: 'device-removed', userId: U1, deviceId: 7 },
      from: a.bus.nodeId,
    });
  });

  it('too much published while down to replay: one resync asks every node to re-read instead', async () => {
    const proxy = new CuttableProxy();
    open.push(proxy);
    const port = await proxy.listen();
    const p = prefix();
    const a = node({ subjectPrefix: p, url: `nats://127.0.0.1:${port}` });
    const b = node({ subjectPrefix: p });
    await connected(a, b);
    proxy.sever();
    await waitFor('a to notice', () => a.bus.status === 'reconnecting');
    for (let i = 0; i <= MAX_REPLAY_EVENTS; i++) {
      a.bus.publish({ type: 'mail', userId: randomBytes(16).toString('hex'), deviceId: 1 });
    }
    proxy.restore();
    await waitFor('a to reconnect', () => a.bus.status === 'connected');
    await waitFor('the resync', () => b.got.length === 1);
    // A round trip after it: no replayed mail follows.
    a.bus.publish({ type: 'authz-changed' });
    await waitFor('the round trip', () => b.got.length === 2);
    expect(b.got.map((g) => g.event)).toEqual([{ type: 'resync' }, { type: 'authz-changed' }]);
    expect(a.logs.join('\n')).toContain('resync');
  });
});
