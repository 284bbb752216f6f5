/**
 * The PostgreSQL backend against the real PostgreSQL server on this machine: the shared
 * conformance suite, plus what only this backend promises — no plaintext and no unwrapped
 * key anywhere in the database, migrations under a lock with several nodes starting at
 * once, two nodes sharing prekeys and mailboxes correctly, coded connection and TLS errors,
 * and KEK rotation by re-wrapping the keys stored in the database.
 *
 * Every store gets its own database (CREATE DATABASE qalqon_test_<random>, dropped after),
 * so test files and runs can go in parallel. If PostgreSQL is not reachable the tests FAIL
 * with what to start; they never skip.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { AUDIT_SIGNING_DEK, auditHash, parseAuditRecordBytes } from '../audit/chain.js';
import { ServerError } from '../errors.js';
import type { Kms } from '../kms/kms.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { type AuditTamper, runStorageConformance } from './conformance.js';
import { FIELD_DEK, FIELD_DEK_GENERATION, LOOKUP_DEK } from './embedded.js';
import { FieldSealer } from './field-sealer.js';
import {
  createPostgresPool,
  openPostgresStorage,
  type PostgresStorage,
  rewrapPostgresDataKeys,
} from './postgres.js';
import { MIGRATION_LOCK_KEY, migratePostgres, POSTGRES_MIGRATIONS } from './postgres-schema.js';
import { sealAuditRecord } from './sealed-rows.js';
import type { NewDevice, Storage } from './types.js';

const ADMIN_URL = process.env.QALQON_TEST_POSTGRES_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';
const START_HINT =
  'start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` ' +
  '(.ci/run does this in CI), or point QALQON_TEST_POSTGRES_URL at a server with trust auth';

function urlOf(database: string): string {
  const u = new URL(ADMIN_URL);
  u.pathname = `/${database}`;
  return u.toString();
}

/** Runs statements on the admin database; fails with what to start when PostgreSQL is not there. */
async function admin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: ADMIN_URL, connectionTimeoutMillis: 5000 });
  try {
    await c.connect();
  } catch (err) {
    await c.end().catch(() => undefined);
    throw new Error(`PostgreSQL is not reachable at ${ADMIN_URL} (${(err as Error).message}): ${START_HINT}`);
  }
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

interface TestDb {
  readonly url: string;
  readonly name: string;
  drop(): Promise<void>;
}

async function createDb(): Promise<TestDb> {
  const name = `qalqon_test_${randomBytes(8).toString('hex')}`;
  await admin(`CREATE DATABASE ${name}`);
  return { url: urlOf(name), name, drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) };
}

/** A client on a test database, for looking at raw rows the way an attacker with a dump would. */
async function rawClient(url: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  return c;
}

async function newKms(): Promise<{ kms: LocalKms; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'qalqon-pg-kms-'));
  return { kms: await LocalKms.create(join(dir, LOCAL_KMS_FILE)), dir };
}

async function catchError(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  return undefined;
}

function expectCode(err: unknown, code: string): ServerError {
  expect(err, `expected ${code}`).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe(code);
  return err as ServerError;
}

it('PostgreSQL is reachable (CI starts it; this fails rather than skips)', async () => {
  await admin('SELECT 1');
});

/**
 * The conformance suite's audit tampering, as raw SQL on the database: what someone with
 * write access to it can do, and (putRecord) someone who also holds the KMS, which unwraps
 * the field key from `data_keys` exactly as a node does. Each operation is one transaction.
 */
function postgresAuditTamper(url: string, kms: Kms): AuditTamper {
  const withDb = async (fn: (c: pg.Client) => Promise<void>) => {
    const c = await rawClient(url);
    try {
      await c.query('BEGIN');
      await fn(c);
      await c.query('COMMIT');
    } catch (err) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      await c.end();
    }
  };
  const one = async (c: pg.Client, sql: string, params: unknown[]) => {
    expect((await c.query(sql, params)).rowCount).toBe(1);
  };
  const fieldSealer = async (c: pg.Client): Promise<FieldSealer> => {
    const k = await c.query<{ key_id: string; ciphertext: Buffer }>(
      'SELECT key_id, ciphertext FROM data_keys WHERE name = $1',
      [FIELD_DEK],
    );
    const row = k.rows[0]!;
    const key = await kms.unwrap({
      keyId: row.key_id,
      context: `dek:${FIELD_DEK}`,
      ciphertext: row.ciphertext,
    });
    try {
      return new FieldSealer(new Map([[FIELD_DEK_GENERATION, key]]), FIELD_DEK_GENERATION);
    } finally {
      key.fill(0);
    }
  };
  return {
    deleteRow: (seq) => withDb((c) => one(c, 'DELETE FROM audit_log WHERE seq = $1', [seq])),
    swapSeqs: (a, b) =>
      withDb(async (c) => {
        // Through a free seq: the primary key is checked after every row.
        await one(c, 'UPDATE audit_log SET seq = -1 WHERE seq = $1', [a]);
        await one(c, 'UPDATE audit_log SET seq = $1 WHERE seq = $2', [a, b]);
        await one(c, 'UPDATE audit_log SET seq = $1 WHERE seq = -1', [b]);
      }),
    corruptRecord: (seq) =>
      withDb(async (c) => {
        const r = await c.query<{ record: Buffer }>('SELECT record FROM audit_log WHERE seq = $1', [seq]);
        const bad = Buffer.from(r.rows[0]!.record);
        bad[bad.length - 5]! ^= 0x40;
        await one(c, 'UPDATE audit_log SET record = $1 WHERE seq = $2', [bad, seq]);
      }),
    setHash: (seq, hex) => withDb((c) => one(c, 'UPDATE audit_log SET hash = $1 WHERE seq = $2', [hex, seq])),
    putRecord: (seq, bytes, options) =>
      withDb(async (c) => {
        if (options?.shift) {
          // Two steps, so no row ever lands on a seq another row still holds.
          await c.query('UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= $1', [seq]);
          await c.query('UPDATE audit_log SET seq = -seq WHERE seq < 0');
        }
        const sealer = await fieldSealer(c);
        try {
          await one(
            c,
            `INSERT INTO audit_log (seq, at, hash, record) VALUES ($1, $2, $3, $4)
               ON CONFLICT (seq) DO UPDATE SET at = EXCLUDED.at, hash = EXCLUDED.hash, record = EXCLUDED.record`,
            [seq, parseAuditRecordBytes(bytes)?.at ?? 0, auditHash(bytes), sealAuditRecord(sealer, bytes)],
          );
        } finally {
          sealer.destroy();
        }
      }),
    deleteHead: () => withDb((c) => one(c, 'DELETE FROM audit_head', [])),
    corruptHeadSignature: () =>
      withDb(async (c) => {
        const r = await c.query<{ signature: Buffer }>('SELECT signature FROM audit_head');
        const sig = Buffer.from(r.rows[0]!.signature);
        sig[10]! ^= 0x01;
        await one(c, 'UPDATE audit_head SET signature = $1', [sig]);
      }),
  };
}

runStorageConformance('PostgreSQL', async ({ clock, limits }) => {
  const db = await createDb();
  const { kms, dir } = await newKms();
  const opts = { url: db.url, kms, clock, ...(limits ? { limits } : {}) };
  try {
    const storage = await openPostgresStorage(opts);
    return {
      storage,
      openPeer: () => openPostgresStorage(opts),
      auditTamper: postgresAuditTamper(db.url, kms),
      destroy: async () => {
        await kms.close();
        rmSync(dir, { recursive: true, force: true });
        await db.drop();
      },
    };
  } catch (err) {
    await db.drop();
    throw err;
  }
});

function ecKey(): Uint8Array {
  const k = new Uint8Array(randomBytes(33));
  k[0] = 0x05;
  return k;
}

function device(name: string, prekeyIds: readonly number[] = [1], identityKey = ecKey()): NewDevice {
  const kyber = new Uint8Array(randomBytes(1569));
  kyber[0] = 0x08;
  return {
    name,
    registrationId: 7,
    identityKey,
    signedPrekey: { id: 1, publicKey: ecKey(), signature: new Uint8Array(randomBytes(64)) },
    kyberPrekey: { id: 2, publicKey: kyber, signature: new Uint8Array(randomBytes(64)) },
    oneTimePrekeys: prekeyIds.map((id) => ({ id, publicKey: ecKey() })),
    authKey: ecKey(),
  };
}

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A fresh database and KMS, cleaned up after the test; `open()` opens another node on it. */
async function deployment(
  options: { limits?: Parameters<typeof openPostgresStorage>[0]['limits']; clock?: () => number } = {},
) {
  const db = await createDb();
  const { kms, dir } = await newKms();
  const stores: Storage[] = [];
  cleanups.push(async () => {
    for (const s of stores) await s.close();
    await kms.close();
    rmSync(dir, { recursive: true, force: true });
    await db.drop();
  });
  const open = async (k: Kms = kms): Promise<PostgresStorage> => {
    const s = await openPostgresStorage({
      url: db.url,
      kms: k,
      ...(options.limits ? { limits: options.limits } : {}),
      ...(options.clock ? { clock: options.clock } : {}),
    });
    stores.push(s);
    return s;
  };
  return { db, kms, dir, open };
}

async function enrol(s: Storage, name: string, d: NewDevice) {
  const user = await s.createUser({ name });
  const code = `enrolment-code-${randomBytes(12).toString('hex')}`;
  await s.createEnrolmentCode({ userId: user.id, code, expiresAt: Date.now() + 60_000 });
  const dev = await s.enrolDevice({ code, device: d });
  return { user, device: dev, code };
}

/** Everything in the database, column by column, as raw bytes (bytea) or text (everything else). */
async function dumpAll(c: pg.Client): Promise<Buffer> {
  const cols = await c.query<{ table_name: string; column_name: string }>(
    `SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'`,
  );
  expect(cols.rows.length).toBeGreaterThan(20);
  const parts: Buffer[] = [];
  for (const { table_name, column_name } of cols.rows) {
    const r = await c.query(`SELECT "${column_name}" AS v FROM "${table_name}"`);
    for (const row of r.rows as { v: unknown }[]) {
      const v = row.v;
      if (v === null) continue;
      parts.push(Buffer.isBuffer(v) ? v : Buffer.from(Array.isArray(v) ? v.join(',') : String(v)));
    }
  }
  return Buffer.concat(parts);
}

/** Fails if `bytes` appear in `dump` raw, as hex or as base64. */
function expectAbsent(dump: Buffer, what: string, bytes: Uint8Array): void {
  expect(dump.includes(Buffer.from(bytes)), what).toBe(false);
  expect(dump.includes(Buffer.from(Buffer.from(bytes).toString('hex'))), `${what} (hex)`).toBe(false);
  expect(dump.includes(Buffer.from(Buffer.from(bytes).toString('base64'))), `${what} (base64)`).toBe(false);
}

describe('what the database holds', () => {
  it('no plaintext of any sealed field and no unwrapped data key, in any column of any table', async () => {
    const { db, kms, open } = await deployment();
    const s = await open();
    const marker = randomBytes(8).toString('hex');
    const d = device(`device-${marker}`, [1, 2, 3]);
    const { user, code } = await enrol(s, `user-${marker}`, d);
    await s.enqueue([
      {
        recipientUserId: user.id,
        recipientDeviceId: 1,
        senderUserId: user.id,
        senderDeviceId: 1,
        body: new TextEncoder().encode(`body-${marker}`),
      },
    ]);
    const c = await rawClient(db.url);
    try {
      const dump = await dumpAll(c);
      // Routing metadata is plaintext by design: the user name is there, so the dump is real.
      expect(dump.includes(`user-${marker}`)).toBe(true);
      const secrets: [string, Uint8Array][] = [
        ['device name', Buffer.from(`device-${marker}`)],
        ['envelope body', Buffer.from(`body-${marker}`)],
        ['enrolment code', Buffer.from(code)],
        ['identity key', d.identityKey],
        ['auth key', d.authKey!],
        ['signed prekey', d.signedPrekey.publicKey],
        ['signed prekey signature', d.signedPrekey.signature],
        ['kyber prekey', d.kyberPrekey.publicKey.subarray(0, 64)],
        ['kyber signature', d.kyberPrekey.signature],
        ...d.oneTimePrekeys.map((p): [string, Uint8Array] => [`one-time prekey ${p.id}`, p.publicKey]),
      ];
      // The data keys as the KMS unwraps them: they must not be in the database either.
      const keys = await c.query<{ name: string; key_id: string; ciphertext: Buffer }>(
        'SELECT name, key_id, ciphertext FROM data_keys ORDER BY name',
      );
      expect(keys.rows.map((r) => r.name)).toEqual([AUDIT_SIGNING_DEK, FIELD_DEK, LOOKUP_DEK].sort());
      for (const k of keys.rows) {
        const dek = await kms.unwrap({ keyId: k.key_id, context: `dek:${k.name}`, ciphertext: k.ciphertext });
        secrets.push([`data key ${k.name}`, dek]);
      }
      for (const [what, bytes] of secrets) expectAbsent(dump, what, bytes);
    } finally {
      await c.end();
    }
  });

  it('no audit actor, target or detail and no channel change or signature in the clear', async () => {
    const { db, kms, open } = await deployment();
    const s = await open();
    const marker = randomBytes(8).toString('hex');
    const alice = await s.createUser({ name: `alice-${marker}` });
    const bob = await s.createUser({ name: `bob-${marker}` });
    const unit = await s.createOrgUnit({ name: `unit-${marker}` });
    await s.createRole({ name: `role-${marker}`, permissions: ['audit.read'] });
    const channelId = randomBytes(16).toString('hex');
    const text = (t: string) => new TextEncoder().encode(t);
    const genesis = {
      change: text(`{"genesis":"change-0-${marker}"}`),
      signature: new Uint8Array(randomBytes(64)),
    };
    await s.createChannel({
      id: channelId,
      name: `chan-${marker}`,
      unitId: unit.id,
      createdBy: alice.id,
      genesis,
    });
    const add = {
      seq: 1,
      change: text(`{"add":"change-1-${marker}"}`),
      signature: new Uint8Array(randomBytes(64)),
    };
    await s.appendChannelChange(channelId, add, { kind: 'add', userId: bob.id, role: 'member' });
    const address = `203.0.113.${marker.length}`;
    await s.appendAudit({
      at: Date.now(),
      actor: { kind: 'device', userId: alice.id, userName: `actor-${marker}`, deviceId: 1 },
      action: 'channel.member.add',
      target: `target-${marker}`,
      outcome: 'ok',
      detail: { reason: `detail-${marker}` },
    });
    await s.appendAudit({
      at: Date.now(),
      actor: { kind: 'anonymous', address },
      action: 'login.failure',
      target: `other-target-${marker}`,
      outcome: 'denied',
    });
    const c = await rawClient(db.url);
    try {
      const dump = await dumpAll(c);
      // Routing metadata is in the clear by design: names of users, units, roles and channels.
      for (const name of [`alice-${marker}`, `unit-${marker}`, `role-${marker}`, `chan-${marker}`]) {
        expect(dump.includes(name), name).toBe(true);
      }
      const secrets: [string, Uint8Array][] = [
        ['audit actor', text(`actor-${marker}`)],
        ['audit actor address', text(address)],
        ['audit target', text(`target-${marker}`)],
        ['audit detail', text(`detail-${marker}`)],
        ['audit action', text('channel.member.add')],
        ['genesis change', genesis.change],
        ['genesis change marker', text(`change-0-${marker}`)],
        ['genesis signature', genesis.signature],
        ['added change', add.change],
        ['added change marker', text(`change-1-${marker}`)],
        ['added signature', add.signature],
      ];
      const k = await c.query<{ key_id: string; ciphertext: Buffer }>(
        'SELECT key_id, ciphertext FROM data_keys WHERE name = $1',
        [AUDIT_SIGNING_DEK],
      );
      const seed = await kms.unwrap({
        keyId: k.rows[0]!.key_id,
        context: `dek:${AUDIT_SIGNING_DEK}`,
        ciphertext: k.rows[0]!.ciphertext,
      });
      secrets.push(['audit signing key', seed]);
      for (const [what, bytes] of secrets) expectAbsent(dump, what, bytes);
    } finally {
      await c.end();
    }
    // And the store reads back exactly what it was given.
    expect(await s.channelLog(channelId)).toEqual([{ seq: 0, ...genesis }, add]);
    expect((await s.listAudit()).map((r) => r.target)).toEqual([
      `target-${marker}`,
      `other-target-${marker}`,
    ]);
    expect(await s.verifyAudit()).toMatchObject({ ok: true, records: 2 });
  });

  it('binds channel log entries to their row: an entry copied to another seq fails with UNSEAL_FAILED', async () => {
    const { db, open } = await deployment();
    const s = await open();
    const alice = await s.createUser({ name: 'alice' });
    const bob = await s.createUser({ name: 'bob' });
    const id = randomBytes(16).toString('hex');
    const entry = (seq: number) => ({
      seq,
      change: new Uint8Array(randomBytes(50)),
      signature: new Uint8Array(randomBytes(64)),
    });
    await s.createChannel({ id, name: 'ops', createdBy: alice.id, genesis: entry(0) });
    await s.appendChannelChange(id, entry(1), { kind: 'add', userId: bob.id, role: 'member' });
    const c = await rawClient(db.url);
    try {
      await c.query(
        `UPDATE channel_log SET change = (SELECT change FROM channel_log WHERE channel_id = $1 AND seq = 0)
           WHERE channel_id = $1 AND seq = 1`,
        [id],
      );
    } finally {
      await c.end();
    }
    expectCode(await catchError(s.channelLog(id)), 'UNSEAL_FAILED');
    expect(await s.channelLog(id, { limit: 1 })).toHaveLength(1);
  });

  it('a database from before the audit log gains its signing key on first start; other keys stay guarded', async () => {
    const { db, open } = await deployment();
    const s = await open();
    const alice = await s.createUser({ name: 'alice' });
    const c = await rawClient(db.url);
    try {
      await c.query('DELETE FROM data_keys WHERE name = $1', [AUDIT_SIGNING_DEK]);
      const again = await open();
      expect((await again.getUser(alice.id))?.name).toBe('alice');
      await again.appendAudit({
        at: 1,
        actor: { kind: 'server' },
        action: 'backup',
        target: 'db',
        outcome: 'ok',
      });
      expect(await again.verifyAudit()).toMatchObject({ ok: true, records: 1 });
      const k = await c.query('SELECT 1 FROM data_keys WHERE name = $1', [AUDIT_SIGNING_DEK]);
      expect(k.rowCount).toBe(1);
      // The key the first node started with is gone; a node started now shares the new one.
      expect(await (await open()).verifyAudit()).toMatchObject({ ok: true, records: 1 });
      await c.query('DELETE FROM data_keys WHERE name = $1', [LOOKUP_DEK]);
      expectCode(await catchError(open()), 'DEK_NOT_FOUND');
    } finally {
      await c.end();
    }
  });

  it('binds sealed values to their rows: a body moved to another envelope fails with UNSEAL_FAILED', async () => {
    const { db, open } = await deployment();
    const s = await open();
    const { user } = await enrol(s, 'alice', device('laptop'));
    const env = (text: string) => ({
      recipientUserId: user.id,
      recipientDeviceId: 1,
      senderUserId: user.id,
      senderDeviceId: 1,
      body: new TextEncoder().encode(text),
    });
    const [first] = await s.enqueue([env('first')]);
    const [second] = await s.enqueue([env('second')]);
    const c = await rawClient(db.url);
    try {
      await c.query('UPDATE envelopes SET body = (SELECT body FROM envelopes WHERE id = $1) WHERE id = $2', [
        first!.id,
        second!.id,
      ]);
    } finally {
      await c.end();
    }
    expectCode(await catchError(s.fetchEnvelopes(user.id, 1)), 'UNSEAL_FAILED');
  });

  it('refuses to mint new keys for a database that has data: DEK_NOT_FOUND', async () => {
    const { db, open } = await deployment();
    const s = await open();
    await s.createUser({ name: 'alice' });
    const c = await rawClient(db.url);
    try {
      await c.query('DELETE FROM data_keys');
    } finally {
      await c.end();
    }
    expectCode(await catchError(open()), 'DEK_NOT_FOUND');
  });

  it('KEK rotation re-wraps the stored keys; data stays readable after the old KEK is destroyed', async () => {
    const { db, kms, open } = await deployment();
    const s = await open();
    const { user } = await enrol(s, 'alice', device('laptop'));
    const [r] = await s.enqueue([
      {
        recipientUserId: user.id,
        recipientDeviceId: 1,
        senderUserId: user.id,
        senderDeviceId: 1,
        body: new TextEncoder().encode('kept'),
      },
    ]);
    const oldKeyId = (await kms.describe()).activeKeyId;
    const active = await kms.rotate();
    expect(await rewrapPostgresDataKeys({ url: db.url, kms })).toBe(3);
    expect(await rewrapPostgresDataKeys({ url: db.url, kms })).toBe(0);
    await kms.destroy(oldKeyId);
    const c = await rawClient(db.url);
    try {
      const ids = await c.query<{ key_id: string }>('SELECT DISTINCT key_id FROM data_keys');
      expect(ids.rows.map((x) => x.key_id)).toEqual([active]);
    } finally {
      await c.end();
    }
    const again = await open();
    const [e] = await again.fetchEnvelopes(user.id, 1);
    expect(e?.id).toBe(r?.id);
    expect(new TextDecoder().decode(e?.body)).toBe('kept');
  });
});

describe('migrations', () => {
  it('two nodes starting at once: each migration applied once, one set of keys both can use', async () => {
    const { db, open } = await deployment();
    const [a, b] = await Promise.all([open(), open()]);
    const c = await rawClient(db.url);
    try {
      const m = await c.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version');
      expect(m.rows.map((r) => r.version)).toEqual(POSTGRES_MIGRATIONS.map((x) => x.version));
      const k = await c.query<{ n: string }>('SELECT count(*) AS n FROM data_keys');
      expect(Number(k.rows[0]?.n)).toBe(3);
    } finally {
      await c.end();
    }
    const { user } = await enrol(a!, 'alice', device('phone-of-alice'));
    expect((await b!.getDevice(user.id, 1))?.name).toBe('phone-of-alice');
  });

  it('runs under the advisory lock: a node waits while another holds it, then applies nothing twice', async () => {
    const { db, open } = await deployment();
    const holder = await rawClient(db.url);
    try {
      await holder.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
      let settled = false;
      const pending = open().finally(() => {
        settled = true;
      });
      await new Promise((r) => setTimeout(r, 700));
      expect(settled).toBe(false);
      const t = await holder.query<{ t: string | null }>("SELECT to_regclass('public.users')::text AS t");
      expect(t.rows[0]?.t).toBeNull();
      await holder.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
      const s = await pending;
      expect(await s.listUsers()).toEqual([]);
    } finally {
      await holder.end();
    }
    // Run again by hand: nothing left to apply.
    const pool = new pg.Pool({ connectionString: db.url });
    const client = await pool.connect();
    try {
      const n = POSTGRES_MIGRATIONS.length;
      expect(await migratePostgres(client, POSTGRES_MIGRATIONS, Date.now)).toEqual({
        from: n,
        to: n,
        applied: [],
      });
    } finally {
      client.release();
      await pool.end();
    }
  });

  it('refuses a database from a newer server with SCHEMA_TOO_NEW', async () => {
    const { db, open } = await deployment();
    await open();
    const c = await rawClient(db.url);
    try {
      await c.query("INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'future', 0)");
    } finally {
      await c.end();
    }
    expectCode(await catchError(open()), 'SCHEMA_TOO_NEW');
  });
});

describe('two nodes on one database', () => {
  it('concurrent prekey fetches through both nodes hand out every one-time prekey exactly once', async () => {
    const { open } = await deployment();
    const [a, b] = await Promise.all([open(), open()]);
    const ids1 = Array.from({ length: 100 }, (_, i) => i + 1);
    const ids2 = Array.from({ length: 100 }, (_, i) => i + 1001);
    const first = device('one', ids1);
    const { user } = await enrol(a!, 'alice', first);
    await b!.addDevice(user.id, device('two', ids2, first.identityKey));
    const fetches = Array.from({ length: 130 }, (_, i) =>
      (i % 2 === 0 ? a! : b!).fetchPrekeyBundles(user.id),
    );
    const bundles = (await Promise.all(fetches)).flat();
    const handed = (dev: number) =>
      bundles
        .filter((x) => x.deviceId === dev)
        .map((x) => x.oneTimePrekey?.id)
        .filter((id): id is number => id !== undefined)
        .sort((x, y) => x - y);
    expect(handed(1)).toEqual(ids1);
    expect(handed(2)).toEqual(ids2);
    expect((await a!.getDevice(user.id, 1))?.oneTimePrekeyCount).toBe(0);
  });

  it('concurrent enqueues and acks through both nodes keep the limit and the counters exact', async () => {
    const { open } = await deployment({ limits: { maxQueuedPerDevice: 40 } });
    const [a, b] = await Promise.all([open(), open()]);
    const { user } = await enrol(a!, 'alice', device('one'));
    const sends = Array.from({ length: 90 }, (_, i) =>
      (i % 2 === 0 ? a! : b!)
        .enqueue([
          {
            recipientUserId: user.id,
            recipientDeviceId: 1,
            senderUserId: user.id,
            senderDeviceId: 1,
            body: new TextEncoder().encode(`m${i}`),
          },
        ])
        .then(
          (r) => r[0]!,
          (e: unknown) => e,
        ),
    );
    const results = await Promise.all(sends);
    const ok = results.filter((r): r is { id: string; seq: number } => !(r instanceof Error));
    const refused = results.filter((r) => r instanceof Error);
    expect(ok).toHaveLength(40);
    for (const e of refused) expectCode(e, 'MAILBOX_FULL');
    const bytes = (await a!.fetchEnvelopes(user.id, 1, { limit: 1000 })).reduce(
      (n, e) => n + e.body.length,
      0,
    );
    expect(await b!.mailboxStats(user.id, 1)).toEqual({ count: 40, bytes });
    // Delivery order is seq order, and seq order is the order the enqueues committed.
    const fetched = await b!.fetchEnvelopes(user.id, 1, { limit: 1000 });
    expect(fetched.map((e) => e.seq)).toEqual(ok.map((r) => r.seq).sort((x, y) => x - y));
    // Both nodes ack the same ids at once: each envelope is counted off once.
    const ids = fetched.map((e) => e.id);
    const acks = await Promise.all([a!.ackEnvelopes(user.id, 1, ids), b!.ackEnvelopes(user.id, 1, ids)]);
    expect(acks[0]! + acks[1]!).toBe(40);
    expect(await a!.mailboxStats(user.id, 1)).toEqual({ count: 0, bytes: 0 });
  });
});

describe('channels and the audit log across nodes', () => {
  it('three nodes racing on one channel and the audit log: one winner per seq, one unbroken chain', async () => {
    const { open } = await deployment();
    const nodes = await Promise.all([open(), open(), open()]);
    const users = await Promise.all(
      Array.from({ length: 9 }, (_, i) => nodes[0]!.createUser({ name: `u${i}` })),
    );
    const id = randomBytes(16).toString('hex');
    const bytes = (n: number) => new Uint8Array(randomBytes(n));
    await nodes[0]!.createChannel({
      id,
      name: 'ops',
      createdBy: users[0]!.id,
      genesis: { change: bytes(40), signature: bytes(64) },
    });
    // Each node keeps trying to add its next user at the seq it last saw + 1.
    const won: { seq: number; change: Uint8Array; signature: Uint8Array }[] = [];
    await Promise.all(
      nodes.map(async (node, n) => {
        for (let k = 1; k <= 8; k++) {
          if ((k - 1) % 3 !== n) continue;
          const user = users[k]!;
          for (;;) {
            const seq = ((await node.getChannel(id))?.seq ?? 0) + 1;
            const e = { seq, change: bytes(60), signature: bytes(64) };
            try {
              await node.appendChannelChange(id, e, { kind: 'add', userId: user.id, role: 'member' });
              won.push(e);
              break;
            } catch (err) {
              expectCode(err, 'CHANNEL_CONFLICT');
            }
          }
        }
      }),
    );
    const log = await nodes[2]!.channelLog(id);
    expect(log.map((e) => e.seq)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(log.slice(1)).toEqual([...won].sort((a, b) => a.seq - b.seq));
    expect((await nodes[1]!.channelMembers(id)).map((m) => m.userId).sort()).toEqual(
      users.map((u) => u.id).sort(),
    );

    const appends = await Promise.all(
      Array.from({ length: 45 }, (_, i) =>
        nodes[i % 3]!.appendAudit({
          at: 1000 + i,
          actor: { kind: 'server' },
          action: 'backup',
          target: `t${i}`,
          outcome: 'ok',
        }),
      ),
    );
    expect(appends.map((r) => r.seq).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 45 }, (_, i) => i + 1),
    );
    const listed = await nodes[1]!.listAudit();
    for (let i = 1; i < listed.length; i++) expect(listed[i]!.prevHash).toBe(listed[i - 1]!.hash);
    for (const node of nodes) {
      expect(await node.verifyAudit()).toEqual({
        ok: true,
        records: 45,
        head: { seq: 45, hash: listed[44]!.hash },
      });
    }
  });
});

describe('mailbox order', () => {
  it('one call fanning out to several devices draws seq in call order for each device', async () => {
    const { open } = await deployment();
    const s = await open();
    const first = device('one');
    const { user } = await enrol(s, 'alice', first);
    await s.addDevice(user.id, device('two', [5], first.identityKey));
    const batch = Array.from({ length: 200 }, (_, i) => ({
      recipientUserId: user.id,
      recipientDeviceId: (i % 3 === 0 ? 2 : 1) as number,
      senderUserId: user.id,
      senderDeviceId: 1,
      body: new TextEncoder().encode(`m${i}`),
    }));
    const receipts = await s.enqueue(batch);
    expect(receipts.map((r) => r.seq)).toEqual([...receipts.map((r) => r.seq)].sort((x, y) => x - y));
    for (const dev of [1, 2]) {
      const got = await s.fetchEnvelopes(user.id, dev, { limit: 1000 });
      const want = batch
        .filter((e) => e.recipientDeviceId === dev)
        .map((e) => new TextDecoder().decode(e.body));
      expect(got.map((e) => new TextDecoder().decode(e.body))).toEqual(want);
    }
  });
});

/** One envelope from `user`/1 to `to`/`dev`, its body naming `tag`. */
function envelopeTo(from: string, to: string, dev: number, tag: string) {
  return {
    recipientUserId: to,
    recipientDeviceId: dev,
    senderUserId: from,
    senderDeviceId: 1,
    body: new TextEncoder().encode(tag),
  };
}

function settled<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
}

/** Deadlocks PostgreSQL has detected in `db` so far (statistics flushed when the sessions end). */
async function deadlocks(url: string, name: string): Promise<number> {
  const c = await rawClient(url);
  try {
    const r = await c.query<{ n: string }>('SELECT deadlocks AS n FROM pg_stat_database WHERE datname = $1', [
      name,
    ]);
    return Number(r.rows[0]?.n);
  } finally {
    await c.end();
  }
}

describe('mailbox group commit', () => {
  it('one refused request among many concurrent ones fails alone; the others commit, in call order', async () => {
    const { open } = await deployment({ limits: { maxQueuedPerDevice: 100 } });
    const [a, b] = await Promise.all([open(), open()]);
    const first = device('one');
    const { user } = await enrol(a!, 'alice', first);
    await a!.addDevice(user.id, device('two', [5], first.identityKey));
    // Device 2 is full.
    await a!.enqueue(Array.from({ length: 100 }, (_, i) => envelopeTo(user.id, user.id, 2, `f${i}`)));
    // All in one event-loop turn: one group.
    const calls = Array.from({ length: 80 }, (_, i) => {
      if (i === 30)
        return a!.enqueue([envelopeTo(user.id, user.id, 1, 'x30'), envelopeTo(user.id, user.id, 2, 'y30')]);
      if (i === 55) return a!.enqueue([envelopeTo(user.id, user.id, 9, 'z55')]);
      return a!.enqueue([envelopeTo(user.id, user.id, 1, `m${i}`)]);
    });
    const results = await Promise.all(calls.map(settled));
    results.forEach((r, i) => {
      if (i === 30) expect(r.ok ? 'ok' : expectCode(r.error, 'MAILBOX_FULL').code).toBe('MAILBOX_FULL');
      else if (i === 55)
        expect(r.ok ? 'ok' : expectCode(r.error, 'DEVICE_NOT_FOUND').code).toBe('DEVICE_NOT_FOUND');
      else expect(r.ok, `call ${i}`).toBe(true);
    });
    // What the other node reads: exactly the 78 admitted envelopes, in call order, counted once.
    const want = results.flatMap((_, i) => (i === 30 || i === 55 ? [] : [`m${i}`]));
    const got = await b!.fetchEnvelopes(user.id, 1, { limit: 1000 });
    expect(got.map((e) => new TextDecoder().decode(e.body))).toEqual(want);
    const receipts = results.flatMap((r) => (r.ok ? r.value : []));
    expect(got.map((e) => [e.id, e.seq])).toEqual(receipts.map((r) => [r.id, r.seq]));
    expect(await b!.mailboxStats(user.id, 1)).toEqual({
      count: 78,
      bytes: want.reduce((n, t) => n + t.length, 0),
    });
    expect((await b!.mailboxStats(user.id, 2)).count).toBe(100);
    const two = (await b!.fetchEnvelopes(user.id, 2, { limit: 1000 })).map((e) =>
      new TextDecoder().decode(e.body),
    );
    expect(two).toEqual(Array.from({ length: 100 }, (_, i) => `f${i}`));
  });

  it("a refused request's purge of expired envelopes is rolled back; an admitted one's in the same group stays", async () => {
    let now = 1_000_000_000_000;
    const day = 24 * 3600 * 1000;
    const { open } = await deployment({
      limits: { maxQueuedPerDevice: 3, maxEnvelopeAgeMs: day },
      clock: () => now,
    });
    const s = await open();
    const peer = await open();
    const first = device('one');
    const { user } = await enrol(s, 'alice', first);
    await s.addDevice(user.id, device('two', [5], first.identityKey));
    await s.addDevice(user.id, device('three', [6], first.identityKey));
    // Devices 1 and 2 hold 3 envelopes each that will expire; device 3 holds 3 that will not.
    await s.enqueue([1, 1, 1, 2, 2, 2].map((d, i) => envelopeTo(user.id, user.id, d, `old${i}`)));
    now += 2 * day;
    await s.enqueue([3, 3, 3].map((d, i) => envelopeTo(user.id, user.id, d, `new${i}`)));
    // One group: a fan-out to 1 (fits once purged) and 3 (full), then a request to 2 alone.
    const [fan, two] = await Promise.all([
      settled(s.enqueue([envelopeTo(user.id, user.id, 1, 'a'), envelopeTo(user.id, user.id, 3, 'b')])),
      settled(s.enqueue([envelopeTo(user.id, user.id, 2, 'c')])),
    ]);
    expect(fan.ok ? 'ok' : expectCode(fan.error, 'MAILBOX_FULL').code).toBe('MAILBOX_FULL');
    expect(two.ok).toBe(true);
    // Device 1's expired envelopes are still there (the refusal changed nothing); device 2's were purged.
    expect(await peer.mailboxStats(user.id, 1)).toEqual({ count: 3, bytes: 12 });
    expect(await peer.mailboxStats(user.id, 2)).toEqual({ count: 1, bytes: 1 });
    expect(await peer.mailboxStats(user.id, 3)).toEqual({ count: 3, bytes: 12 });
  });

  it('two nodes hammering the same recipients: no deadlock, limits kept, counters exact', async () => {
    const limit = 60;
    const { db, open } = await deployment({ limits: { maxQueuedPerDevice: limit } });
    const [a, b] = await Promise.all([open(), open()]);
    // Recipients of two users, so the lock order spans user ids as well as device ids.
    const [a1, b1] = [device('a1'), device('b1')];
    const alice = await enrol(a!, 'alice', a1);
    const bob = await enrol(a!, 'bob', b1);
    await a!.addDevice(alice.user.id, device('a2', [5], a1.identityKey));
    await a!.addDevice(bob.user.id, device('b2', [5], b1.identityKey));
    const targets = [
      [alice.user.id, 1],
      [alice.user.id, 2],
      [bob.user.id, 1],
      [bob.user.id, 2],
    ] as const;
    const before = await deadlocks(db.url, db.name);
    // Waves of fan-outs in varying (often reversed) recipient order, from both nodes at once,
    // with acks of what each node has seen mixed in: many groups overlap on every device row.
    const admitted = new Map<string, number>();
    let refused = 0;
    let acked = 0;
    for (let wave = 0; wave < 8; wave++) {
      const calls: Promise<unknown>[] = [];
      for (let i = 0; i < 60; i++) {
        const node = (i + wave) % 2 === 0 ? a! : b!;
        const k = (i * 7 + wave) % 4;
        const order = i % 3 === 0 ? [k] : i % 3 === 1 ? [k, (k + 1) % 4] : [(k + 3) % 4, (k + 2) % 4, k];
        const envs = order.map((t) =>
          envelopeTo(alice.user.id, targets[t]![0], targets[t]![1], `w${wave}-${i}-${t}`),
        );
        calls.push(
          settled(node.enqueue(envs)).then((r) => {
            if (!r.ok) {
              expectCode(r.error, 'MAILBOX_FULL');
              refused++;
              return;
            }
            for (const rc of r.value) {
              const key = `${rc.recipientUserId}/${rc.recipientDeviceId}`;
              admitted.set(key, (admitted.get(key) ?? 0) + 1);
            }
          }),
        );
      }
      if (wave % 2 === 1) {
        for (const [t, [u, d]] of targets.entries()) {
          const node = t % 2 === 0 ? b! : a!;
          calls.push(
            node.fetchEnvelopes(u, d, { limit: 25 }).then(async (page) => {
              const n = await node.ackEnvelopes(
                u,
                d,
                page.map((e) => e.id),
              );
              acked += n;
              admitted.set(`${u}/${d}`, (admitted.get(`${u}/${d}`) ?? 0) - n);
            }),
          );
        }
      }
      await Promise.all(calls);
    }
    expect(refused).toBeGreaterThan(0);
    expect(acked).toBeGreaterThan(0);
    for (const [u, d] of targets) {
      const rows = await b!.fetchEnvelopes(u, d, { limit: 1000 });
      expect(rows.length).toBeLessThanOrEqual(limit);
      expect(rows.length).toBe(admitted.get(`${u}/${d}`));
      expect(await a!.mailboxStats(u, d)).toEqual({
        count: rows.length,
        bytes: rows.reduce((n, e) => n + e.body.length, 0),
      });
      // Delivery order is seq order.
      expect(rows.map((e) => e.seq)).toEqual([...rows.map((e) => e.seq)].sort((x, y) => x - y));
    }
    // Sessions flush their statistics when they end.
    await a!.close();
    await b!.close();
    expect(await deadlocks(db.url, db.name)).toBe(before);
  });

  it('one group of acks for several devices: each counts its own, foreign and repeated ids count once', async () => {
    const { open } = await deployment();
    const [a, b] = await Promise.all([open(), open()]);
    const first = device('one');
    const { user } = await enrol(a!, 'alice', first);
    await a!.addDevice(user.id, device('two', [5], first.identityKey));
    await a!.addDevice(user.id, device('three', [6], first.identityKey));
    await a!.enqueue(
      [1, 2, 3].flatMap((d) =>
        Array.from({ length: 10 }, (_, i) => envelopeTo(user.id, user.id, d, `d${d}-${i}`)),
      ),
    );
    const ids = async (d: number) => (await a!.fetchEnvelopes(user.id, d, { limit: 100 })).map((e) => e.id);
    const [one, two, three] = [await ids(1), await ids(2), await ids(3)];
    // All in one turn: one group.
    const results = await Promise.all([
      settled(a!.ackEnvelopes(user.id, 1, one.slice(0, 6))),
      settled(a!.ackEnvelopes(user.id, 2, two)),
      settled(a!.ackEnvelopes(user.id, 3, one.slice(6))), // device 1's ids: a no-op for device 3
      settled(a!.ackEnvelopes(user.id, 1, one.slice(4, 8))), // 4 and 5 acked above already
      settled(a!.ackEnvelopes(user.id, 9, three)),
      settled(a!.ackEnvelopes(user.id, 3, [])),
      settled(a!.enqueue([envelopeTo(user.id, user.id, 3, 'late')])),
      settled(a!.ackEnvelopes(user.id, 3, three.slice(0, 3))),
    ]);
    const values = results.map((r) => (r.ok ? r.value : expectCode(r.error, 'DEVICE_NOT_FOUND').code));
    expect(values[0]).toBe(6);
    expect(values[1]).toBe(10);
    expect(values[2]).toBe(0);
    expect(values[3]).toBe(2);
    expect(values[4]).toBe('DEVICE_NOT_FOUND');
    expect(values[5]).toBe(0);
    expect(values[7]).toBe(3);
    const remaining = async (d: number) =>
      (await b!.fetchEnvelopes(user.id, d, { limit: 100 })).map((e) => e.id);
    expect(await remaining(1)).toEqual(one.slice(8));
    expect(await remaining(2)).toEqual([]);
    const late = (values[6] as { id: string }[])[0]!.id;
    expect(await remaining(3)).toEqual([...three.slice(3), late]);
    expect(await b!.mailboxStats(user.id, 1)).toEqual({ count: 2, bytes: 8 });
    expect(await b!.mailboxStats(user.id, 2)).toEqual({ count: 0, bytes: 0 });
    expect(await b!.mailboxStats(user.id, 3)).toEqual({ count: 8, bytes: 8 * 4 });
  });
});

describe('connections', () => {
  it('an unreachable server is DATABASE_UNAVAILABLE, and the message carries no URL or password', async () => {
    const { kms, dir } = await newKms();
    try {
      const err = expectCode(
        await catchError(
          openPostgresStorage({ url: 'postgresql://qalqon:hunter2-pw@127.0.0.1:1/qalqon', kms }),
        ),
        'DATABASE_UNAVAILABLE',
      );
      expect(err.message).not.toContain('hunter2');
      expect(err.message).not.toContain('127.0.0.1:1');
    } finally {
      await kms.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('every pooled connection commits synchronously, whatever the server default, from its first query', async () => {
    // A database whose own default is off: only the pool's startup option can make it on.
    const name = `qalqon_sync_${randomBytes(6).toString('hex')}`;
    const admin = await rawClient(ADMIN_URL);
    await admin.query(`CREATE DATABASE ${name}`);
    await admin.query(`ALTER DATABASE ${name} SET synchronous_commit = off`);
    const url = new URL(ADMIN_URL);
    url.pathname = `/${name}`;
    const pool = createPostgresPool({ url: url.toString(), maxConnections: 3 });
    try {
      const clients = await Promise.all([pool.connect(), pool.connect(), pool.connect()]);
      try {
        for (const c of clients) {
          // SET LOCAL would not survive; a session default of off must be overridden by the startup option.
          const r = await c.query<{ synchronous_commit: string }>('SHOW synchronous_commit');
          expect(r.rows[0]?.synchronous_commit).toBe('on');
        }
      } finally {
        for (const c of clients) c.release();
      }
    } finally {
      await pool.end();
      await admin.query(`DROP DATABASE ${name}`);
      await admin.end();
    }
  });

  it('required TLS that the server does not give is DATABASE_UNAVAILABLE naming TLS (option or sslmode)', async () => {
    const { db, kms } = await deployment();
    const viaOption = expectCode(
      await catchError(openPostgresStorage({ url: db.url, kms, ssl: true })),
      'DATABASE_UNAVAILABLE',
    );
    expect(viaOption.message).toMatch(/TLS/);
    // verify-full fails both on a server without TLS (here) and on one whose certificate
    // does not verify (Debian's snake-oil default), so the test holds on either.
    const viaUrl = expectCode(
      await catchError(openPostgresStorage({ url: `${db.url}?sslmode=verify-full`, kms })),
      'DATABASE_UNAVAILABLE',
    );
    expect(viaUrl.message).toMatch(/TLS/);
    expectCode(
      await catchError(openPostgresStorage({ url: `${db.url}?sslmode=require`, kms, ssl: true })),
      'INVALID_ARGUMENT',
    );
    expectCode(await catchError(openPostgresStorage({ url: 'mysql://x@y/z', kms })), 'INVALID_ARGUMENT');
  });

  it('a closed store refuses with CLOSED and leaves no connection behind', async () => {
    const { db, open } = await deployment();
    const s = await open();
    await s.createUser({ name: 'alice' });
    await s.close();
    expectCode(await catchError(s.listUsers()), 'CLOSED');
    const c = await rawClient(db.url);
    try {
      const r = await c.query<{ n: string }>(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = 'qalqon-server'",
        [db.name],
      );
      expect(Number(r.rows[0]?.n)).toBe(0);
    } finally {
      await c.end();
    }
  });
});
