/**
 * Two server nodes of one organisation in one process: two services, each with its own
 * PostgresStorage (own pool) on ONE real PostgreSQL database (a fresh database per test),
 * each with its own real NATS event bus (one random subject prefix per test), sharing the
 * TLS identity and the `session-mac` data key read from the database, over real TLS.
 * Nothing is mocked. PostgreSQL (127.0.0.1:5432, db `test`) and NATS (127.0.0.1:4222) must
 * run; the suite fails rather than skips.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, sha256, xeddsaSign } from '@qalqon/crypto';
import {
  authChallengeMessage,
  ChallengeResponse,
  type ChannelChangeJson,
  channelChangeSigningMessage,
  channelEnvelopeHeader,
  encodeBase64,
  encodeChannelChange,
  GENESIS_PREV,
  PresenceResponse,
  signedChangeJson,
} from '@qalqon/wire';
import { connect as natsConnect } from 'nats';
import pg from 'pg';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isServerError } from '../errors.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { waitFor } from '../pubsub/bus.test-util.js';
import { connectNatsBus, type NatsBus } from '../pubsub/nats-bus.js';
import { openPostgresStorage, type PostgresStorage } from '../storage/postgres.js';
import { changeGrant, removeDevice } from './admin-ops.js';
import { createService, type Service } from './app.js';
import { OPERATOR } from './authz.js';
import { initDataDir, issueEnrolmentCode, openSessionKey } from './data-dir.js';
import { type Enrolled, enrol, http, signIn, WsClient } from './harness.test-util.js';
import { CLOSE_REMOVED, CLOSE_REPLACED } from './hub.js';
import { generateSelfSignedIdentity } from './tls.js';

const ADMIN_URL = process.env.QALQON_TEST_POSTGRES_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';
const NATS_URL = process.env.QALQON_TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
/** Fast heartbeats, so expiry is observable in a test. */
const BEAT_MS = 200;

async function adminSql(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: ADMIN_URL, connectionTimeoutMillis: 5000 });
  try {
    await c.connect();
    await c.query(sql);
  } finally {
    await c.end().catch(() => undefined);
  }
}

beforeAll(async () => {
  try {
    await adminSql('SELECT 1');
  } catch (err) {
    throw new Error(`PostgreSQL is not reachable at 127.0.0.1:5432 (${(err as Error).message})`);
  }
  try {
    const nc = await natsConnect({ servers: new URL(NATS_URL).host, timeout: 3000 });
    await nc.close();
  } catch (err) {
    throw new Error(
      `NATS is not reachable (${(err as Error).message}): start nats-server -a 127.0.0.1 -p 4222`,
    );
  }
});

interface Node {
  readonly name: string;
  readonly service: Service;
  readonly storage: PostgresStorage;
  readonly bus: NatsBus;
  readonly port: number;
  readonly cert: string;
  readonly logs: string[];
}

interface Deployment {
  readonly a: Node;
  readonly b: Node;
  addUser(name: string, roles?: string[]): Promise<{ userId: string; code: string }>;
  /** Stops a node (idempotent): its bus, then the service, then the storage. */
  stop(node: Node): Promise<void>;
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f().catch(() => undefined);
});

async function deploy(): Promise<Deployment> {
  const db = `qalqon_mn_${Buffer.from(randomBytes(8)).toString('hex')}`;
  await adminSql(`CREATE DATABASE ${db}`);
  cleanups.push(() => adminSql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`));
  const u = new URL(ADMIN_URL);
  u.pathname = `/${db}`;
  const url = u.toString();
  const dir = mkdtempSync(join(tmpdir(), 'qalqon-mn-'));
  cleanups.push(async () => rmSync(dir, { recursive: true, force: true }));
  const kms = await LocalKms.create(join(dir, LOCAL_KMS_FILE));
  cleanups.push(() => kms.close());
  const tls = generateSelfSignedIdentity('localhost');
  const subjectPrefix = `qtest.${Buffer.from(randomBytes(8)).toString('hex')}`;
  const stopped = new Set<Node>();

  const start = async (name: string): Promise<Node> => {
    const storage = await openPostgresStorage({ url, kms });
    // Each node reads (the first one creates) the shared session key from data_keys.
    const sessionKey = await openSessionKey({ provider: 'postgres', url, ssl: false }, { dataDir: dir, kms });
    const logs: string[] = [];
    const bus = connectNatsBus({
      url: NATS_URL,
      name: `qalqon-test-${name}`,
      subjectPrefix,
      maxReconnectDelayMs: 200,
    });
    expect(await bus.ready(10_000)).toBe(true);
    const service = await createService({
      storage,
      tls: { cert: tls.certPem, key: tls.keyPem },
      bus,
      sessionKey,
      presenceIntervalMs: BEAT_MS,
      log: (l) => logs.push(l),
    });
    const { port } = await service.listen('127.0.0.1', 0);
    const node: Node = { name, service, storage, bus, port, cert: tls.certPem, logs };
    cleanups.push(() => stop(node));
    return node;
  };
  const stop = async (node: Node): Promise<void> => {
    if (stopped.has(node)) return;
    stopped.add(node);
    await node.bus.close();
    await node.service.close();
    await node.storage.close();
  };
  const a = await start('a');
  const b = await start('b');
  return {
    a,
    b,
    stop,
    async addUser(name, roles = ['member']) {
      const user = await a.storage.createUser({ name, roles });
      const { code } = await issueEnrolmentCode(a.storage, user.id, Date.now());
      return { userId: user.id, code };
    },
  };
}

interface Dev extends Enrolled {
  readonly name: string;
}

async function device(d: Deployment, name: string, roles?: string[]): Promise<Dev> {
  const e = await enrol(d.a, (await d.addUser(name, roles)).code);
  return { ...e, name };
}

/** Sends one 1:1 envelope over HTTPS; returns its id. */
async function sendTo(node: Node, token: string, to: Enrolled, body: Uint8Array): Promise<string> {
  const r = await http(
    node,
    'POST',
    '/v1/messages',
    { messages: [{ recipientUserId: to.userId, recipientDeviceId: to.deviceId, body: encodeBase64(body) }] },
    { token },
  );
  expect(r.status).toBe(200);
  return (r.json as { receipts: { id: string }[] }).receipts[0]!.id;
}

/** Waits for the envelope frame with this id; returns how long it took. */
async function receive(ws: WsClient, id: string, timeoutMs = 5000): Promise<number> {
  const t0 = Date.now();
  await ws.next((f) => f.type === 'envelope' && f.id === id, timeoutMs);
  return Date.now() - t0;
}

describe('several nodes on one PostgreSQL database and NATS', () => {
  it('delivers at once to a device on node A what was sent through node B: 1:1 over HTTPS and WebSocket, and channel fan-out', async () => {
    const d = await deploy();
    const alice = await device(d, 'alice');
    const bob = await device(d, 'bob');
    const bobWs = await WsClient.open(d.a, await signIn(d.a, bob));
    const aliceToken = await signIn(d.b, alice);

    // 1:1 over HTTPS through B: pushed by A within well under a second (A polls nothing
    // while its bus is connected: only B's `mail` event can have started A's pump).
    const t0 = Date.now();
    const id1 = await sendTo(d.b, aliceToken, bob, new Uint8Array([1, 2, 3]));
    await receive(bobWs, id1, 1000);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(d.a.bus.counters().delivered).toBeGreaterThan(0);

    // 1:1 over B's WebSocket.
    const aliceWs = await WsClient.open(d.b, aliceToken);
    aliceWs.send({
      type: 'send',
      id: 'r1',
      messages: [
        {
          recipientUserId: bob.userId,
          recipientDeviceId: bob.deviceId,
          body: encodeBase64(new Uint8Array([9])),
        },
      ],
    });
    const sent = await aliceWs.next<{ receipts: { id: string }[] }>((f) => f.type === 'sent');
    await receive(bobWs, sent.receipts[0]!.id, 1000);

    // A channel made and grown through B, posted to through B, fanned out to Bob on A.
    const channelId = Buffer.from(randomBytes(16)).toString('hex');
    const sign = (change: ChannelChangeJson) => {
      const bytes = encodeChannelChange(change);
      const signature = xeddsaSign(alice.keys.identity.privateKey, channelChangeSigningMessage(bytes));
      return { bytes, json: signedChangeJson({ change: bytes, signature }) };
    };
    const genesis = sign({
      v: 1,
      channel: channelId,
      seq: 0,
      prev: GENESIS_PREV,
      at: Date.now(),
      by: { userId: alice.userId, deviceId: alice.deviceId },
      op: 'create',
      name: 'ops',
      userName: 'alice',
      identityKey: alice.keys.json.identityKey,
    });
    expect(
      (await http(d.b, 'POST', '/v1/channels', { entry: genesis.json }, { token: aliceToken })).status,
    ).toBe(200);
    const add = sign({
      v: 1,
      channel: channelId,
      seq: 1,
      prev: Buffer.from(sha256(genesis.bytes)).toString('hex'),
      at: Date.now(),
      by: { userId: alice.userId, deviceId: alice.deviceId },
      op: 'add',
      userId: bob.userId,
      userName: 'bob',
      identityKey: bob.keys.json.identityKey,
      role: 'member',
    });
    const added = await http(
      d.b,
      'POST',
      `/v1/channels/${channelId}/changes`,
      { entry: add.json },
      { token: aliceToken },
    );
    expect(added.status).toBe(200);
    const body = Buffer.concat([channelEnvelopeHeader(channelId), Buffer.from('sealed')]);
    const t1 = Date.now();
    const posted = await http(
      d.b,
      'POST',
      `/v1/channels/${channelId}/messages`,
      { body: encodeBase64(body) },
      { token: aliceToken },
    );
    expect(posted.json).toEqual({ envelopes: 1 });
    const frame = await bobWs.next<{ body: string }>(
      (f) => f.type === 'envelope' && f.senderUserId === alice.userId && f.body === encodeBase64(body),
      1000,
    );
    expect(frame.body).toBe(encodeBase64(body));
    expect(Date.now() - t1).toBeLessThan(1000);
    bobWs.close();
    aliceWs.close();
  });

  it('accepts a session made on A at B (HTTPS and WebSocket), signs in with a challenge from A at B, and refuses its replay on either', async () => {
    const d = await deploy();
    const alice = await device(d, 'alice');
    const tokenA = await signIn(d.a, alice);
    expect((await http(d.b, 'GET', '/v1/devices', undefined, { token: tokenA })).status).toBe(200);
    const ws = await WsClient.open(d.b, tokenA);
    ws.close();

    // The challenge from A, the session at B.
    const c = await http(d.a, 'POST', '/v1/auth/challenge', {
      userId: alice.userId,
      deviceId: alice.deviceId,
    });
    const challenge = ChallengeResponse.parse(c.json).challenge;
    const signature = xeddsaSign(
      alice.keys.auth.privateKey,
      authChallengeMessage(challenge, alice.userId, alice.deviceId),
    );
    const req = {
      userId: alice.userId,
      deviceId: alice.deviceId,
      challenge: encodeBase64(challenge),
      signature: encodeBase64(signature),
    };
    const usedOnA = d.a.service.ctx.sessions.usedChallenges;
    const ok = await http(d.b, 'POST', '/v1/auth/session', req);
    expect(ok.status).toBe(200);
    const token = (ok.json as { token: string }).token;
    expect((await http(d.a, 'GET', '/v1/me', undefined, { token })).status).toBe(200);
    // Replayed on the same node: refused. On the other: refused once the `challenge-used` event arrived.
    expect((await http(d.b, 'POST', '/v1/auth/session', req)).status).toBe(401);
    await waitFor(
      'A to hear of the used challenge',
      () => d.a.service.ctx.sessions.usedChallenges === usedOnA + 1,
      2000,
    );
    expect((await http(d.a, 'POST', '/v1/auth/session', req)).status).toBe(401);
    // A token altered by one character is refused everywhere.
    const forged = `${token.slice(0, 50)}${token[50] === 'A' ? 'B' : 'A'}${token.slice(51)}`;
    expect((await http(d.a, 'GET', '/v1/me', undefined, { token: forged })).status).toBe(401);
  });

  it('removing a device on A closes its socket on B and ends its sessions there at once', async () => {
    const d = await deploy();
    const bob = await device(d, 'bob');
    const token = await signIn(d.b, bob);
    // B has cached "this device exists" (up to 5 s): the event must drop that.
    expect((await http(d.b, 'GET', '/v1/devices', undefined, { token })).status).toBe(200);
    const ws = await WsClient.open(d.b, token);
    await removeDevice(d.a.service.ctx, OPERATOR, { id: bob.userId, name: 'bob' }, bob.deviceId);
    const t0 = Date.now();
    expect((await ws.waitClosed(2000)).code).toBe(CLOSE_REMOVED);
    expect(Date.now() - t0).toBeLessThan(1000);
    expect((await http(d.b, 'GET', '/v1/devices', undefined, { token })).status).toBe(401);
  });

  it('refuses on B a grant revoked on A as soon as the event arrived, well within the cache TTL', async () => {
    const d = await deploy();
    const carol = await device(d, 'carol', ['guest']);
    const token = await signIn(d.b, carol);
    const audit = () => http(d.b, 'GET', '/v1/admin/audit', undefined, { token });
    expect((await audit()).status).toBe(403);
    const grant = { user: 'carol', role: 'auditor', scope: { kind: 'global' as const } };
    await changeGrant(d.a.service.ctx, OPERATOR, grant, true);
    // Granted on A: B sees it without waiting for its cached refusal to expire.
    const t0 = Date.now();
    let status = 0;
    while (Date.now() - t0 < 2000) {
      status = (await audit()).status;
      if (status === 200) break;
    }
    expect(status).toBe(200);
    expect(Date.now() - t0).toBeLessThan(1000);
    // B's cache now holds the grant; revoked on A, refused on B right after the event.
    const before = d.b.bus.counters().delivered;
    await changeGrant(d.a.service.ctx, OPERATOR, grant, false);
    const t1 = Date.now();
    await waitFor('the authz-changed event at B', () => d.b.bus.counters().delivered > before, 2000);
    expect((await audit()).status).toBe(403);
    expect(Date.now() - t1).toBeLessThan(1000);
  });

  it('a device reconnecting on B takes over from its connection on A, and gets again what it had not acknowledged', async () => {
    const d = await deploy();
    const alice = await device(d, 'alice');
    const bob = await device(d, 'bob');
    const bobToken = await signIn(d.a, bob);
    const aliceToken = await signIn(d.a, alice);
    const onA = await WsClient.open(d.a, bobToken);
    const id1 = await sendTo(d.a, aliceToken, bob, new Uint8Array([1]));
    await receive(onA, id1); // delivered, not acknowledged
    const onB = await WsClient.open(d.b, bobToken);
    expect((await onA.waitClosed(2000)).code).toBe(CLOSE_REPLACED);
    // Storage is the truth: the unacknowledged envelope comes again, on B.
    await receive(onB, id1, 2000);
    onB.send({ type: 'ack', ids: [id1] });
    // New mail sent through A reaches the device on B.
    const id2 = await sendTo(d.a, aliceToken, bob, new Uint8Array([2]));
    await receive(onB, id2, 1000);
    onB.send({ type: 'ack', ids: [id2] });
    expect(d.a.service.ctx.hub.connectionOf(bob.userId, bob.deviceId)).toBeUndefined();
    expect(d.b.service.ctx.hub.connectionOf(bob.userId, bob.deviceId)).toBeDefined();
    onB.close();
  });

  it('reports presence from both nodes, and forgets a node that stops heart-beating', async () => {
    const d = await deploy();
    const alice = await device(d, 'alice');
    const bob = await device(d, 'bob');
    const aliceToken = await signIn(d.b, alice);
    const presence = async (node: Node, name: string) => {
      const r = await http(node, 'GET', `/v1/presence/${name}`, undefined, { token: aliceToken });
      expect(r.status).toBe(200);
      return PresenceResponse.parse(r.json);
    };
    expect((await presence(d.b, 'bob')).devices).toEqual([{ deviceId: bob.deviceId, connected: false }]);
    const bobWs = await WsClient.open(d.a, await signIn(d.a, bob));
    const aliceWs = await WsClient.open(d.b, aliceToken);
    await waitFor('B to see bob', () => d.b.service.ctx.cluster.presenceOf(bob.userId).size === 1, 2000);
    expect(await presence(d.b, 'bob')).toEqual({
      userId: bob.userId,
      userName: 'bob',
      devices: [{ deviceId: bob.deviceId, connected: true }],
    });
    expect((await presence(d.a, 'bob')).devices[0]?.connected).toBe(true);
    await waitFor('A to see alice', () => d.a.service.ctx.cluster.presenceOf(alice.userId).size === 1, 2000);
    expect((await presence(d.a, 'alice')).devices[0]?.connected).toBe(true);
    expect((await http(d.b, 'GET', '/v1/presence/nobody', undefined, { token: aliceToken })).status).toBe(
      404,
    );

    // A's bus goes away without a word (as if the node died): B keeps bob for a few
    // heartbeats, then forgets him. Bob's socket on A is still open meanwhile.
    await d.a.bus.close();
    expect((await presence(d.b, 'bob')).devices[0]?.connected).toBe(true);
    const t0 = Date.now();
    await waitFor('B to forget bob', () => d.b.service.ctx.cluster.presenceOf(bob.userId).size === 0, 5000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(BEAT_MS);
    expect((await presence(d.b, 'bob')).devices[0]?.connected).toBe(false);
    // A still knows its own device.
    expect((await presence(d.a, 'bob')).devices[0]?.connected).toBe(true);
    bobWs.close();
    aliceWs.close();
  });

  it('reports the bus on /healthz and its counters on /metrics', async () => {
    const d = await deploy();
    const h = await http(d.a, 'GET', '/healthz');
    expect(h.json).toEqual({ status: 'ok', pubsub: 'connected' });
    const m = await http(d.a, 'GET', '/metrics');
    expect(m.text).toContain('qalqon_pubsub_connected 1');
    expect(m.text).toMatch(/qalqon_pubsub_events\{counter="published"\} \d+/);
  });
});

describe('the pubsub setting of server init', () => {
  it('is refused with the embedded database, and with credentials in a stored URL, before anything is written', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qalqon-mn-init-'));
    try {
      const dataDir = join(dir, 'data');
      const refused = async (options: Parameters<typeof initDataDir>[0]) => {
        try {
          await initDataDir(options);
        } catch (err) {
          return err;
        }
        return undefined;
      };
      const embedded = await refused({ dataDir, pubsub: { provider: 'nats', urlEnv: 'QALQON_NATS' } });
      expect(isServerError(embedded, 'CONFIG_INVALID')).toBe(true);
      expect((embedded as Error).message).toContain('PostgreSQL');
      const creds = await refused({
        dataDir,
        database: { provider: 'postgres', url: ADMIN_URL, ssl: false },
        pubsub: { provider: 'nats', url: 'nats://user:hunter2@127.0.0.1:4222' },
      });
      expect(isServerError(creds, 'CONFIG_INVALID')).toBe(true);
      expect((creds as Error).message).not.toContain('hunter2');
      expect(existsSync(dataDir)).toBe(false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
