/**
 * The embedded backend: the shared conformance suite over real SQLCipher files, plus what
 * only this backend promises — the file is ciphertext throughout, a wrong key fails with a
 * code, sealed fields are bound to their rows, migrations run once, and KEK rotation keeps
 * the data readable without re-encrypting it.
 */
import { randomBytes } from 'node:crypto';
import {
  appendFileSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AUDIT_SIGNING_DEK, auditHash, parseAuditRecordBytes } from '../audit/chain.js';
import { ServerError } from '../errors.js';
import { DEK_FILE, DekRegistry, rotateKek } from '../kms/dek-registry.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { type AuditTamper, runStorageConformance } from './conformance.js';
import {
  DATABASE_DEK,
  DATABASE_FILE,
  FIELD_DEK,
  FIELD_DEK_GENERATION,
  LOOKUP_DEK,
  openEmbeddedStorage,
} from './embedded.js';
import { FieldSealer } from './field-sealer.js';
import { FILES_DIR } from './file-blobs.js';
import { migrate } from './migrations.js';
import { sealAuditRecord } from './sealed-rows.js';
import { openSqlcipher, type SqliteDatabase } from './sqlcipher.js';
import { SqliteStorage } from './sqlite.js';
import { SQLITE_MIGRATIONS } from './sqlite-schema.js';
import { FILE_CHUNK_OVERHEAD, type NewDevice, type NewFile } from './types.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'qalqon-server-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Opens the data directory's database directly, as an attacker holding the keys could. */
async function rawAccess(dataDir: string, kms: LocalKms) {
  const registry = await DekRegistry.open(join(dataDir, DEK_FILE), kms);
  const databaseKey = await registry.get(DATABASE_DEK);
  const fieldKey = await registry.get(FIELD_DEK);
  const sealer = new FieldSealer(new Map([[FIELD_DEK_GENERATION, fieldKey]]), FIELD_DEK_GENERATION);
  const db = openSqlcipher(join(dataDir, DATABASE_FILE), databaseKey);
  databaseKey.fill(0);
  fieldKey.fill(0);
  return {
    db,
    sealer,
    close() {
      db.close();
      sealer.destroy();
    },
  };
}

/** The conformance suite's tamper operations, as direct writes to the SQLCipher file. */
function sqliteAuditTamper(dataDir: string, kms: LocalKms): AuditTamper {
  const withDb = async (fn: (db: SqliteDatabase, sealer: FieldSealer) => void) => {
    const raw = await rawAccess(dataDir, kms);
    try {
      raw.db.transaction(() => fn(raw.db, raw.sealer)).immediate();
    } finally {
      raw.close();
    }
  };
  const one = (changes: number) => expect(changes).toBe(1);
  return {
    deleteRow: (seq) =>
      withDb((db) => one(db.prepare('DELETE FROM audit_log WHERE seq = ?').run(seq).changes)),
    swapSeqs: (a, b) =>
      withDb((db) => {
        const move = db.prepare('UPDATE audit_log SET seq = ? WHERE seq = ?');
        one(move.run(-1, a).changes);
        one(move.run(a, b).changes);
        one(move.run(b, -1).changes);
      }),
    corruptRecord: (seq) =>
      withDb((db) => {
        const rec = db.prepare('SELECT record FROM audit_log WHERE seq = ?').pluck().get(seq) as Buffer;
        const bad = Buffer.from(rec);
        bad[bad.length - 5]! ^= 0x40;
        one(db.prepare('UPDATE audit_log SET record = ? WHERE seq = ?').run(bad, seq).changes);
      }),
    setHash: (seq, hex) =>
      withDb((db) => one(db.prepare('UPDATE audit_log SET hash = ? WHERE seq = ?').run(hex, seq).changes)),
    putRecord: (seq, bytes, options) =>
      withDb((db, sealer) => {
        if (options?.shift) {
          // Two steps, so no intermediate state has two rows on one seq.
          db.prepare('UPDATE audit_log SET seq = -(seq + 1) WHERE seq >= ?').run(seq);
          db.prepare('UPDATE audit_log SET seq = -seq WHERE seq < 0').run();
        }
        db.prepare('INSERT OR REPLACE INTO audit_log (seq, at, hash, record) VALUES (?, ?, ?, ?)').run(
          seq,
          parseAuditRecordBytes(bytes)?.at ?? 0,
          auditHash(bytes),
          sealAuditRecord(sealer, bytes),
        );
      }),
    deleteHead: () => withDb((db) => one(db.prepare('DELETE FROM audit_head').run().changes)),
    corruptHeadSignature: () =>
      withDb((db) => {
        const sig = Buffer.from(db.prepare('SELECT signature FROM audit_head').pluck().get() as Buffer);
        sig[10]! ^= 0x01;
        one(db.prepare('UPDATE audit_head SET signature = ?').run(sig).changes);
      }),
  };
}

runStorageConformance('embedded SQLCipher', async ({ clock, limits }) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'qalqon-conf-'));
  const kms = await LocalKms.create(join(dataDir, LOCAL_KMS_FILE));
  const opts = { dataDir, kms, clock, ...(limits ? { limits } : {}) };
  const storage = await openEmbeddedStorage(opts);
  return {
    storage,
    openPeer: () => openEmbeddedStorage(opts),
    destroy: async () => {
      await kms.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
    auditTamper: sqliteAuditTamper(dataDir, kms),
  };
});

function ecKey(): Uint8Array {
  const k = new Uint8Array(randomBytes(33));
  k[0] = 0x05;
  return k;
}

function device(name: string): NewDevice {
  const kyber = new Uint8Array(randomBytes(1569));
  kyber[0] = 0x08;
  return {
    name,
    registrationId: 7,
    identityKey: ecKey(),
    signedPrekey: { id: 1, publicKey: ecKey(), signature: new Uint8Array(64) },
    kyberPrekey: { id: 2, publicKey: kyber, signature: new Uint8Array(64) },
    oneTimePrekeys: [{ id: 1, publicKey: ecKey() }],
  };
}

async function catchError(p: Promise<unknown> | (() => unknown)): Promise<unknown> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return e;
  }
  return undefined;
}

/** A data directory with a KMS and a storage holding one user, device and envelope. */
async function populated(marker: string) {
  const dataDir = tempDir();
  const kms = await LocalKms.create(join(dataDir, LOCAL_KMS_FILE));
  const storage = await openEmbeddedStorage({ dataDir, kms });
  const user = await storage.createUser({ name: `user-${marker}` });
  await storage.createEnrolmentCode({
    userId: user.id,
    code: `enrolment-code-${marker}`,
    expiresAt: Date.now() + 60_000,
  });
  await storage.enrolDevice({ code: `enrolment-code-${marker}`, device: device(`device-${marker}`) });
  const [receipt] = await storage.enqueue([
    {
      recipientUserId: user.id,
      recipientDeviceId: 1,
      senderUserId: user.id,
      senderDeviceId: 1,
      body: new TextEncoder().encode(`body-${marker}`),
    },
  ]);
  return { dataDir, kms, storage, user, receipt: receipt! };
}

describe('the SQLCipher file', () => {
  it('carries no SQLite header and no plaintext, in the database or its WAL', async () => {
    const marker = randomBytes(8).toString('hex');
    const { dataDir, kms, storage } = await populated(marker);
    const wal = readFileSync(join(dataDir, `${DATABASE_FILE}-wal`));
    await storage.close();
    const db = readFileSync(join(dataDir, DATABASE_FILE));
    expect(db.length).toBeGreaterThan(4096);
    expect(wal.length).toBeGreaterThan(0);
    expect(db.subarray(0, 16).toString('latin1')).not.toBe('SQLite format 3\0');
    for (const bytes of [db, wal]) {
      // The user name is routing metadata (plaintext inside the DB): only page encryption hides it.
      expect(bytes.includes(`user-${marker}`)).toBe(false);
      expect(bytes.includes(`device-${marker}`)).toBe(false);
      expect(bytes.includes(`body-${marker}`)).toBe(false);
      expect(bytes.includes('CREATE TABLE')).toBe(false);
    }
    await kms.close();
  });

  it('is created 0600 beside a 0600 wrapped-key file', async () => {
    const { dataDir, kms, storage } = await populated('mode');
    await storage.close();
    await kms.close();
    for (const f of [DATABASE_FILE, DEK_FILE, LOCAL_KMS_FILE]) {
      expect((statSync(join(dataDir, f)).mode & 0o777).toString(8), f).toBe('600');
    }
  });

  it('refuses a wrong key with DATABASE_UNREADABLE, and the right key still opens it', async () => {
    const { dataDir, kms, storage } = await populated('key');
    await storage.close();
    const wrong = new Uint8Array(randomBytes(32));
    const err = await catchError(() => openSqlcipher(join(dataDir, DATABASE_FILE), wrong));
    expect(err).toBeInstanceOf(ServerError);
    expect((err as ServerError).code).toBe('DATABASE_UNREADABLE');
    expect((err as ServerError).message).not.toContain(Buffer.from(wrong).toString('hex'));
    const err2 = await catchError(
      SqliteStorage.open({
        path: join(dataDir, DATABASE_FILE),
        databaseKey: wrong,
        lookupKey: new Uint8Array(32),
        auditKey: new Uint8Array(32),
        sealer: new FieldSealer(new Map([[1, new Uint8Array(32)]]), 1),
      }),
    );
    expect((err2 as ServerError).code).toBe('DATABASE_UNREADABLE');
    const reopened = await openEmbeddedStorage({ dataDir, kms });
    expect(await reopened.listUsers()).toHaveLength(1);
    await reopened.close();
    await kms.close();
  });

  it('seals fields bound to their rows: a body moved to another row fails with UNSEAL_FAILED', async () => {
    const { dataDir, kms, storage, user } = await populated('swap');
    const [second] = await storage.enqueue([
      {
        recipientUserId: user.id,
        recipientDeviceId: 1,
        senderUserId: user.id,
        senderDeviceId: 1,
        body: new TextEncoder().encode('second'),
      },
    ]);
    await storage.close();
    const registry = await DekRegistry.open(join(dataDir, DEK_FILE), kms);
    const db = openSqlcipher(join(dataDir, DATABASE_FILE), await registry.get('database'));
    const rows = db.prepare('SELECT id, body FROM envelopes ORDER BY seq').all() as {
      id: string;
      body: Buffer;
    }[];
    expect(rows).toHaveLength(2);
    // Inside the decrypted database the body is still ciphertext.
    expect(rows[0]!.body.includes('body-swap')).toBe(false);
    const names = db.prepare('SELECT name FROM devices').pluck().all() as Buffer[];
    expect(names[0]!.includes('device-swap')).toBe(false);
    db.prepare('UPDATE envelopes SET body = ? WHERE id = ?').run(rows[0]!.body, second!.id);
    db.close();
    const reopened = await openEmbeddedStorage({ dataDir, kms });
    const err = await catchError(reopened.fetchEnvelopes(user.id, 1));
    expect((err as ServerError).code).toBe('UNSEAL_FAILED');
    await reopened.close();
    await kms.close();
  });

  it('needs its data keys: a missing wrapped-key file gives DEK_NOT_FOUND, not a new empty key', async () => {
    const { dataDir, kms, storage } = await populated('dek');
    await storage.close();
    rmSync(join(dataDir, DEK_FILE));
    const err = await catchError(openEmbeddedStorage({ dataDir, kms }));
    expect((err as ServerError).code).toBe('DEK_NOT_FOUND');
    await kms.close();
  });

  it('KEK rotation re-wraps the data keys; data stays readable after the old KEK is destroyed', async () => {
    const { dataDir, kms, storage, user, receipt } = await populated('rotate');
    await storage.close();
    const before = readFileSync(join(dataDir, DATABASE_FILE));
    const oldKeyId = (await kms.describe()).activeKeyId;
    const registry = await DekRegistry.open(join(dataDir, DEK_FILE), kms);
    const { activeKeyId, rewrapped } = await rotateKek(kms, registry);
    expect(activeKeyId).not.toBe(oldKeyId);
    expect(rewrapped).toBe(4);
    await kms.destroy(oldKeyId);
    await kms.close();
    // The database itself was not touched.
    expect(readFileSync(join(dataDir, DATABASE_FILE)).equals(before)).toBe(true);
    const kms2 = await LocalKms.open(join(dataDir, LOCAL_KMS_FILE));
    expect((await kms2.describe()).keys.map((k) => k.id)).toEqual([activeKeyId]);
    const reopened = await openEmbeddedStorage({ dataDir, kms: kms2 });
    const [e] = await reopened.fetchEnvelopes(user.id, 1);
    expect(e?.id).toBe(receipt.id);
    expect(new TextDecoder().decode(e?.body)).toBe('body-rotate');
    await reopened.close();
    await kms2.close();
  });
});

describe('file contents beside the database', () => {
  const CHUNK = 4096;
  const newFile = (ownerId: string, size: number): NewFile => ({
    id: randomBytes(16).toString('hex'),
    ownerId,
    size,
    chunkSize: CHUNK,
    recipients: { kind: 'users', userIds: [ownerId] },
    wrappedKey: { keyId: 'kek-1', ciphertext: new Uint8Array(randomBytes(60)) },
  });
  const LIMITS = { maxFileBytes: 1 << 20, quotaBytes: 1 << 22 };
  const sealed = (index: number, bytes: number) => ({
    index,
    bytes,
    data: new Uint8Array(randomBytes(bytes + FILE_CHUNK_OVERHEAD)),
  });

  it('keeps each file in a 0600 blob in a 0700 files/ directory, at fixed offsets, and removes it with its row', async () => {
    const dataDir = tempDir();
    const kms = await LocalKms.create(join(dataDir, LOCAL_KMS_FILE));
    let storage = await openEmbeddedStorage({ dataDir, kms, clock: () => 1000 });
    const files = join(dataDir, FILES_DIR);
    expect(statSync(files).mode & 0o777).toBe(0o700);
    const alice = await storage.createUser({ name: 'alice' });
    const bob = await storage.createUser({ name: 'bob' });
    const f = await storage.createFile(newFile(alice.id, 2 * CHUNK + 5), LIMITS);
    // No blob before the first chunk.
    expect(readdirSync(files)).toEqual([]);
    const run = [sealed(0, CHUNK), sealed(1, CHUNK), sealed(2, 5)];
    await storage.appendFileChunks(f.id, run);
    const blob = join(files, f.id);
    expect(statSync(blob).mode & 0o777).toBe(0o600);
    const stride = CHUNK + FILE_CHUNK_OVERHEAD;
    expect(readFileSync(blob).equals(Buffer.concat(run.map((c) => c.data)))).toBe(true);
    expect(
      readFileSync(blob)
        .subarray(stride, 2 * stride)
        .equals(run[1]!.data),
    ).toBe(true);
    // Garbage past `received` (a crash between the write and the commit) is never read,
    // and the next append writes over it.
    const g = await storage.createFile(newFile(alice.id, 3 * CHUNK), LIMITS);
    await storage.appendFileChunks(g.id, [sealed(0, CHUNK)]);
    appendFileSync(join(files, g.id), randomBytes(stride));
    expect((await storage.readFileChunks(g.id, 0, 3)).map((c) => c.index)).toEqual([0]);
    const next = sealed(1, CHUNK);
    await storage.appendFileChunks(g.id, [next]);
    expect(new Uint8Array((await storage.readFileChunks(g.id, 1, 1))[0]!.data)).toEqual(next.data);

    // Deleting, purging and removing the owner take the blobs with the rows.
    await storage.deleteFile(f.id, alice.id);
    expect(existsSync(blob)).toBe(false);
    const idle = await storage.createFile(newFile(bob.id, 2 * CHUNK), LIMITS);
    await storage.appendFileChunks(idle.id, [sealed(0, CHUNK)]);
    expect(await storage.purgeIncompleteFiles(2000)).toBe(2);
    expect(readdirSync(files)).toEqual([]);
    const h = await storage.createFile(newFile(bob.id, CHUNK), LIMITS);
    await storage.appendFileChunks(h.id, [sealed(0, CHUNK)]);
    expect(readdirSync(files)).toEqual([h.id]);
    await storage.removeUser(bob.id);
    expect(readdirSync(files)).toEqual([]);

    // A blob left without its row (a crash between the two) is removed at the next start;
    // a live file's blob is not.
    const kept = await storage.createFile(newFile(alice.id, CHUNK), LIMITS);
    await storage.appendFileChunks(kept.id, [sealed(0, CHUNK)]);
    const orphan = randomBytes(16).toString('hex');
    writeFileSync(join(files, orphan), randomBytes(100));
    writeFileSync(join(files, 'not-a-blob'), 'left alone');
    await storage.close();
    storage = await openEmbeddedStorage({ dataDir, kms });
    expect(readdirSync(files).sort()).toEqual([kept.id, 'not-a-blob'].sort());
    expect((await storage.readFileChunks(kept.id, 0, 1)).map((c) => c.index)).toEqual([0]);
    await storage.close();
    await kms.close();
  });
});

describe('channels and the audit log at rest', () => {
  it('hold no audit actor or target and no channel change bytes in the clear, in the file or its rows', async () => {
    const marker = randomBytes(8).toString('hex');
    const { dataDir, kms, storage, user } = await populated(`at-rest-${marker}`);
    await storage.appendAudit({
      at: Date.now(),
      actor: { kind: 'anonymous', address: `addr-${marker}` },
      action: 'login.failure',
      target: `target-${marker}`,
      outcome: 'denied',
      detail: { reason: `detail-${marker}` },
    });
    const channelId = randomBytes(16).toString('hex');
    const change = new TextEncoder().encode(`change-${marker}`);
    const signature = new Uint8Array(64).fill(0x5a);
    await storage.createChannel({
      id: channelId,
      name: 'ops',
      createdBy: user.id,
      genesis: { change, signature },
    });
    const wal = readFileSync(join(dataDir, `${DATABASE_FILE}-wal`));
    await storage.close();
    const file = readFileSync(join(dataDir, DATABASE_FILE));
    const secrets = [`addr-${marker}`, `target-${marker}`, `detail-${marker}`, `change-${marker}`];
    for (const bytes of [file, wal]) {
      for (const secret of secrets) expect(bytes.includes(secret), secret).toBe(false);
      expect(bytes.includes(Buffer.from(signature))).toBe(false);
    }
    // Inside the decrypted database the records and changes are still ciphertext.
    const raw = await rawAccess(dataDir, kms);
    const rows = [
      ...(raw.db.prepare('SELECT record FROM audit_log').pluck().all() as Buffer[]),
      ...(raw.db.prepare('SELECT change FROM channel_log').pluck().all() as Buffer[]),
      ...(raw.db.prepare('SELECT signature FROM channel_log').pluck().all() as Buffer[]),
    ];
    expect(rows).toHaveLength(3);
    for (const row of rows) {
      for (const secret of secrets) expect(row.includes(secret), secret).toBe(false);
      expect(row.includes(Buffer.from(signature))).toBe(false);
    }
    // ...which opens only under its own row identity: a change moved to the audit log does not.
    raw.db.prepare('UPDATE audit_log SET record = ?').run(rows[1]);
    raw.close();
    const reopened = await openEmbeddedStorage({ dataDir, kms });
    expect(((await catchError(reopened.listAudit())) as ServerError).code).toBe('UNSEAL_FAILED');
    expect(await reopened.verifyAudit()).toMatchObject({ ok: false, problem: 'edited', seq: 1 });
    const [entry] = await reopened.channelLog(channelId);
    expect(entry?.change).toEqual(change);
    await reopened.close();
    await kms.close();
  });

  it('a data directory from before the audit log gets its signing key on the next start', async () => {
    const dataDir = tempDir();
    const kms = await LocalKms.create(join(dataDir, LOCAL_KMS_FILE));
    // Lay out the directory as the previous release did: three DEKs and the database.
    const registry = await DekRegistry.open(join(dataDir, DEK_FILE), kms);
    const databaseKey = await registry.getOrCreate(DATABASE_DEK);
    const fieldKey = await registry.getOrCreate(FIELD_DEK);
    const lookupKey = await registry.getOrCreate(LOOKUP_DEK);
    const old = openSqlcipher(join(dataDir, DATABASE_FILE), databaseKey);
    migrate(old, SQLITE_MIGRATIONS.slice(0, 2), Date.now);
    old.close();
    for (const k of [databaseKey, fieldKey, lookupKey]) k.fill(0);
    expect(registry.has(AUDIT_SIGNING_DEK)).toBe(false);

    const storage = await openEmbeddedStorage({ dataDir, kms });
    const record = await storage.appendAudit({
      at: 1,
      actor: { kind: 'server' },
      action: 'backup',
      target: 'server',
      outcome: 'ok',
    });
    expect(record.seq).toBe(1);
    await storage.close();
    const after = await DekRegistry.open(join(dataDir, DEK_FILE), kms);
    expect(after.has(AUDIT_SIGNING_DEK)).toBe(true);
    // The key persisted: the head signed at the first start verifies at the next.
    const again = await openEmbeddedStorage({ dataDir, kms });
    expect(await again.verifyAudit()).toEqual({ ok: true, records: 1, head: { seq: 1, hash: record.hash } });
    await again.close();
    await kms.close();
  });

  it('a head signed with another audit key fails verification', async () => {
    const { dataDir, kms, storage } = await populated('other-key');
    await storage.appendAudit({
      at: 1,
      actor: { kind: 'server' },
      action: 'backup',
      target: 'x',
      outcome: 'ok',
    });
    await storage.close();
    const registry = await DekRegistry.open(join(dataDir, DEK_FILE), kms);
    const databaseKey = await registry.get(DATABASE_DEK);
    const fieldKey = await registry.get(FIELD_DEK);
    const lookupKey = await registry.get(LOOKUP_DEK);
    const other = await SqliteStorage.open({
      path: join(dataDir, DATABASE_FILE),
      databaseKey,
      lookupKey,
      auditKey: new Uint8Array(randomBytes(32)),
      sealer: new FieldSealer(new Map([[FIELD_DEK_GENERATION, fieldKey]]), FIELD_DEK_GENERATION),
    });
    expect(await other.verifyAudit()).toMatchObject({ ok: false, problem: 'head-signature', seq: 1 });
    await other.close();
    await kms.close();
  });
});

describe('schema migrations', () => {
  function freshDb() {
    return openSqlcipher(join(tempDir(), 'm.db'), new Uint8Array(randomBytes(32)));
  }

  it('each migration runs once and is recorded', () => {
    const db = freshDb();
    const n = SQLITE_MIGRATIONS.length;
    const all = SQLITE_MIGRATIONS.map((m) => m.version);
    expect(migrate(db, SQLITE_MIGRATIONS, () => 5)).toEqual({ from: 0, to: n, applied: all });
    expect(migrate(db, SQLITE_MIGRATIONS, () => 6)).toEqual({ from: n, to: n, applied: [] });
    expect(db.prepare('SELECT version, name, applied_at FROM schema_migrations').all()).toEqual(
      SQLITE_MIGRATIONS.map((m) => ({ version: m.version, name: m.name, applied_at: 5 })),
    );
    db.close();
  });

  it('a failing migration leaves no trace and the earlier ones in place', () => {
    const db = freshDb();
    const broken = [
      ...SQLITE_MIGRATIONS,
      {
        version: SQLITE_MIGRATIONS.length + 1,
        name: 'broken',
        sql: 'CREATE TABLE half (x INTEGER); INSERT INTO nowhere VALUES (1);',
      },
    ];
    expect(() => migrate(db, broken, Date.now)).toThrow(/nowhere/);
    expect(db.prepare('SELECT max(version) FROM schema_migrations').pluck().get()).toBe(
      SQLITE_MIGRATIONS.length,
    );
    expect(db.prepare("SELECT count(*) FROM sqlite_master WHERE name = 'half'").pluck().get()).toBe(0);
    db.close();
  });

  it('refuses a database from a newer server with SCHEMA_TOO_NEW, and a gapped list', () => {
    const db = freshDb();
    migrate(db, SQLITE_MIGRATIONS, Date.now);
    db.prepare("INSERT INTO schema_migrations VALUES (99, 'future', 0)").run();
    expect(() => migrate(db, SQLITE_MIGRATIONS, Date.now)).toThrow(
      expect.objectContaining({ code: 'SCHEMA_TOO_NEW' }),
    );
    expect(() => migrate(db, [{ version: 2, name: 'gap', sql: '' }], Date.now)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
    db.close();
  });
});
