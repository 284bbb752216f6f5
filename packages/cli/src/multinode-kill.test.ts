/**
 * Two real `qalqon server start` processes of one deployment (one PostgreSQL database, one
 * NATS server, the same config.json, TLS key and KMS key file) behind a TCP pass-through
 * proxy on 127.0.0.1 port 0 (the load balancer: round robin over the nodes that accept a
 * connection). Two real clients (the SDK, pinning the server's key through the proxy) stream
 * end-to-end encrypted messages; the node holding the receiver's WebSocket is SIGKILLed in
 * the middle of the stream. The receiver reconnects through the proxy to the surviving node,
 * and in the end every message the sender was told was stored has been received exactly
 * once, and no message twice.
 *
 * PostgreSQL (127.0.0.1:5432) and NATS (127.0.0.1:4222) must run; the test fails rather than skips.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { get } from 'node:https';
import { createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { join } from 'node:path';
import { QalqonClient } from '@qalqon/client';
import { afterEach, expect, it } from 'vitest';
import { cliHarness, oneJson, qalqon, type Started, TEST_PASSPHRASE } from './cli-harness.test-util.js';

const { tempDir, runQalqon, startServer } = cliHarness('qalqon-cli-mn-');

const ADMIN_URL = process.env.QALQON_TEST_POSTGRES_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';
const NATS_URL = process.env.QALQON_TEST_NATS_URL ?? 'nats://127.0.0.1:4222';
const DB_ENV = 'QALQON_MN_DATABASE_URL';
const NATS_ENV = 'QALQON_MN_NATS_URL';

const databases: string[] = [];
const proxies: Server[] = [];
afterEach(async () => {
  for (const p of proxies.splice(0)) await new Promise((r) => p.close(r));
  for (const db of databases.splice(0)) psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
});

function psql(sql: string): string {
  try {
    return execFileSync('psql', [ADMIN_URL, '-v', 'ON_ERROR_STOP=1', '-Atc', sql], {
      stdio: 'pipe',
      encoding: 'utf8',
    }).trim();
  } catch (err) {
    throw new Error(`psql failed (${(err as Error).message}): is PostgreSQL running at 127.0.0.1:5432?`);
  }
}

/** A TCP pass-through: each connection goes to the next backend in turn that accepts it. */
function startProxy(backends: number[]): Promise<{ port: number; sockets: Set<Socket> }> {
  let next = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.pause();
    const attempt = (tries: number) => {
      if (tries >= backends.length) {
        client.destroy();
        return;
      }
      const port = backends[next++ % backends.length]!;
      const upstream = tcpConnect({ host: '127.0.0.1', port });
      let connected = false;
      upstream.once('connect', () => {
        connected = true;
        client.pipe(upstream);
        upstream.pipe(client);
        client.resume();
        client.on('error', () => upstream.destroy());
        upstream.on('error', () => client.destroy());
        client.on('close', () => upstream.destroy());
        upstream.on('close', () => client.destroy());
      });
      upstream.once('error', () => {
        // A node that is down refuses the connection: try the next one.
        if (!connected) attempt(tries + 1);
      });
    };
    attempt(0);
  });
  proxies.push(server);
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ port: (server.address() as { port: number }).port, sockets }),
    ),
  );
}

/** The value of `qalqon_devices_online` on a node (asked directly, not through the proxy). */
function devicesOnline(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = get(`${url}/metrics`, { rejectUnauthorized: false }, (res) => {
      let text = '';
      res.on('data', (d: Buffer) => {
        text += d.toString();
      });
      res.on('end', () => resolve(Number(/^qalqon_devices_online (\d+)/m.exec(text)?.[1] ?? Number.NaN)));
    });
    req.on('error', reject);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

it('delivers every stored message exactly once when the receiver’s node is SIGKILLed mid-stream', async () => {
  const db = `qalqon_cli_mn_${randomBytes(8).toString('hex')}`;
  psql(`CREATE DATABASE ${db}`);
  databases.push(db);
  const dbUrl = new URL(ADMIN_URL);
  dbUrl.pathname = `/${db}`;
  const env = { [DB_ENV]: dbUrl.toString(), [NATS_ENV]: NATS_URL };
  const dir = tempDir();
  const first = join(dir, 'first');
  const init = await runQalqon(
    dir,
    ['server', 'init', '--data', first, '--database-url-env', DB_ENV, '--pubsub-url-env', NATS_ENV, '--json'],
    env,
  );
  expect(init.err).toBe('');
  expect(init.code).toBe(0);
  const pin = String(oneJson(init.out).pin);
  // This deployment's own subjects on the shared NATS server.
  const configPath = join(first, 'config.json');
  const config = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
  expect(config.pubsub).toEqual({ provider: 'nats', urlEnv: NATS_ENV });
  config.pubsub = {
    provider: 'nats',
    urlEnv: NATS_ENV,
    subjectPrefix: `qtest.${randomBytes(6).toString('hex')}`,
  };
  writeFileSync(configPath, JSON.stringify(config), { mode: 0o600 });
  const second = join(dir, 'second');
  mkdirSync(second, { mode: 0o700 });
  for (const f of ['config.json', 'tls-key.pem', 'tls-cert.pem', 'kms-master.key']) {
    copyFileSync(join(first, f), join(second, f));
  }
  const nodes: Started[] = [await startServer(dir, first, env), await startServer(dir, second, env)];
  const ports = nodes.map((n) => Number(new URL(n.listening).port));
  const proxy = await startProxy(ports);
  const server = `https://127.0.0.1:${proxy.port}`;

  const enrolClient = async (name: string): Promise<QalqonClient> => {
    const add = await qalqon('admin', '--data', first, 'user', 'add', name, '--json');
    expect(add.code, add.err).toBe(0);
    const profile = join(dir, `profile-${name}`);
    return QalqonClient.enroll({
      profile,
      server,
      pin,
      code: String(oneJson(add.out).enrollmentCode),
      keystore: 'passphrase',
      passphrase: () => TEST_PASSPHRASE,
    });
  };
  const alice = await enrolClient('alice');
  const bob = await enrolClient('bob');

  // The receiver: receive() until the socket drops, then again (through the proxy).
  const got: string[] = [];
  let receiving = true;
  const receiver = (async () => {
    while (receiving) {
      try {
        await bob.receive({ waitMs: 500, onMessage: (m) => got.push(m.text) });
      } catch {
        await sleep(100);
      }
    }
  })();

  // The sender streams; a message counts as stored only when send() returned.
  const stored: string[] = [];
  const TOTAL = 40;
  let killed: number | undefined;
  for (let i = 0; i < TOTAL; i++) {
    if (i === TOTAL / 2) {
      // Kill the node that holds Bob's WebSocket.
      for (let tries = 0; killed === undefined && tries < 100; tries++) {
        for (const [k, n] of nodes.entries()) {
          if ((await devicesOnline(n.listening).catch(() => 0)) === 1) killed = k;
        }
        if (killed === undefined) await sleep(50);
      }
      expect(killed).toBeDefined();
      const dead = nodes[killed!]!;
      const exited = new Promise((r) => dead.child.once('exit', r));
      dead.child.kill('SIGKILL');
      await exited;
    }
    const text = `message ${i}`;
    try {
      await alice.send('bob', text);
      stored.push(text);
    } catch {
      // Lost with the node before it answered: not told stored (it may still arrive, once).
    }
    await sleep(20);
  }
  expect(stored.length).toBeGreaterThanOrEqual(TOTAL - 3);

  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline && !stored.every((t) => got.includes(t))) await sleep(100);
  receiving = false;
  await receiver;
  // Every stored message arrived, none twice; Bob's client came back after the kill.
  for (const t of stored)
    expect(
      got.filter((g) => g === t),
      t,
    ).toHaveLength(1);
  expect(new Set(got).size).toBe(got.length);
  const survivor = nodes[1 - killed!]!;
  expect(await devicesOnline(survivor.listening)).toBeLessThanOrEqual(1);
  alice.close();
  bob.close();
}, 120_000);

interface KmsStatus {
  activeKeyId: string;
  keyVersions: { keyId: string; active: boolean; wrappedKeys: number }[];
}

async function kms(data: string, ...args: string[]): Promise<{ code: number; json: unknown; err: string }> {
  const r = await qalqon('admin', '--data', data, 'kms', ...args, '--json');
  return { code: r.code, json: r.code === 0 ? oneJson(r.out) : undefined, err: r.err };
}

it('admin kms status|rotate|destroy on PostgreSQL count and re-wrap the data_keys table, and a node restarts on the new KEK', async () => {
  const db = `qalqon_cli_kms_${randomBytes(8).toString('hex')}`;
  psql(`CREATE DATABASE ${db}`);
  databases.push(db);
  const dbUrl = new URL(ADMIN_URL);
  dbUrl.pathname = `/${db}`;
  const env = { [DB_ENV]: dbUrl.toString() };
  const dir = tempDir();
  const data = join(dir, 'data');
  const init = await runQalqon(dir, ['server', 'init', '--data', data, '--database-url-env', DB_ENV], env);
  expect(init.code, init.err).toBe(0);
  let node = await startServer(dir, data, env);
  const keysIn = (sql: string) =>
    execFileSync('psql', [dbUrl.toString(), '-Atc', sql], { encoding: 'utf8' }).trim();
  // Four data keys (the session MAC key made at the first start), all under the first KEK.
  expect(keysIn('SELECT name FROM data_keys ORDER BY name')).toBe(
    'audit-signing\nfields-1\nlookup\nsession-mac',
  );
  const before = (await kms(data, 'status')).json as KmsStatus;
  expect(before.keyVersions).toEqual([
    {
      keyId: before.activeKeyId,
      active: true,
      wrappedKeys: 4,
      wrappedFileKeys: 0,
      createdAt: expect.any(Number),
    },
  ]);
  const first = before.activeKeyId;

  const rotated = await kms(data, 'rotate');
  expect(rotated.code, rotated.err).toBe(0);
  const r = rotated.json as { previousKeyId: string; activeKeyId: string; rewrapped: number };
  expect(r.previousKeyId).toBe(first);
  expect(r.rewrapped).toBe(4);
  expect(keysIn('SELECT DISTINCT key_id FROM data_keys')).toBe(r.activeKeyId);
  const after = (await kms(data, 'status')).json as KmsStatus;
  expect(after.keyVersions.map((k) => [k.keyId, k.wrappedKeys])).toEqual(
    expect.arrayContaining([
      [first, 0],
      [r.activeKeyId, 4],
    ]),
  );
  // The active version cannot go; the old one, wrapping nothing now, can.
  expect((await kms(data, 'destroy', r.activeKeyId)).code).toBe(1);
  const destroyed = await kms(data, 'destroy', first);
  expect(destroyed.code, destroyed.err).toBe(0);
  // A restart unwraps every data key under the new version alone, and the data is all there.
  const exited = new Promise((res) => node.child.once('exit', res));
  node.child.kill('SIGTERM');
  await exited;
  node = await startServer(dir, data, env);
  const users = await qalqon('admin', '--data', data, 'user', 'list', '--json');
  expect(users.code, users.err).toBe(0);
  expect((oneJson(users.out) as { users: { name: string }[] }).users.map((u) => u.name)).toEqual(['admin']);
  expect(((await kms(data, 'status')).json as KmsStatus).keyVersions).toHaveLength(1);
  node.child.kill('SIGTERM');
}, 60_000);
