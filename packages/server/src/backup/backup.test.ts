/**
 * Backup and restore with real parts: a running server (runServer on a temporary data
 * directory: real SQLCipher, real local KMS file) taking a backup while it keeps writing,
 * restored offline into new directories with the old KMS file and, separately, with the
 * recovery key alone; users, devices, queued envelopes, files (their contents from the
 * files/ directory, one deleted and one appended to while the backup ran) and the TLS
 * identity all intact, and a tampered archive leaving the target untouched. Small segments (4 KiB) give
 * a real backup many segments to reorder.
 */
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from '@qalqon/crypto';
import Database from 'better-sqlite3-multiple-ciphers';
import { afterEach, describe, expect, it } from 'vitest';
import { isServerError } from '../errors.js';
import { FILE_CHUNK_BYTES } from '../files/chunk-format.js';
import { FileStore } from '../files/file-store.js';
import { DEK_FILE, DekRegistry } from '../kms/dek-registry.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { loadTls, readConfig } from '../service/data-dir.js';
import { type RunningServer, runServer } from '../service/run.js';
import { DATABASE_DEK, DATABASE_FILE, openEmbeddedStorage } from '../storage/embedded.js';
import { EC_PUBLIC_KEY_LEN, KYBER_PUBLIC_KEY_LEN } from '../storage/input.js';
import type { NewDevice, Storage } from '../storage/types.js';
import { readArchiveHeader, segmentCount } from './archive.js';
import { type PreparedArchive, prepareBackup, snapshotDatabase } from './backup.js';
import { restoreBackup } from './restore.js';

const SEG = 4096;
const dirs: string[] = [];
const cleanups: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'qalqon-backup-'));
  dirs.push(d);
  return d;
}

function key(len: number, type: number): Uint8Array {
  const k = new Uint8Array(randomBytes(len));
  k[0] = type;
  return k;
}

function device(name: string): NewDevice {
  const sig = () => new Uint8Array(randomBytes(64));
  return {
    name,
    registrationId: 77,
    identityKey: key(EC_PUBLIC_KEY_LEN, 5),
    signedPrekey: { id: 1, publicKey: key(EC_PUBLIC_KEY_LEN, 5), signature: sig() },
    kyberPrekey: { id: 2, publicKey: key(KYBER_PUBLIC_KEY_LEN, 8), signature: sig() },
    oneTimePrekeys: [{ id: 10, publicKey: key(EC_PUBLIC_KEY_LEN, 5) }],
    authKey: key(EC_PUBLIC_KEY_LEN, 5),
  };
}

async function enrolled(storage: Storage, name: string) {
  const user = await storage.createUser({ name });
  const code = Buffer.from(randomBytes(15)).toString('base64url');
  await storage.createEnrolmentCode({ userId: user.id, code, expiresAt: Date.now() + 60_000 });
  const d = await storage.enrolDevice({ code, device: device(`${name}-laptop`) });
  return { user, deviceId: d.deviceId };
}

async function started(): Promise<{ dir: string; data: string; server: RunningServer; kms: LocalKms }> {
  const dir = tempDir();
  const data = join(dir, 'data');
  const server = await runServer({ dataDir: data, listen: '127.0.0.1:0', hostname: 'chat.example' });
  cleanups.push(() => server.close());
  // A second handle on the same key file, as an operator's offline tools would have.
  const kms = await LocalKms.open(join(data, LOCAL_KMS_FILE));
  cleanups.push(() => kms.close());
  return { dir, data, server, kms };
}

async function writeOut(p: PreparedArchive, path: string): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const c of p.chunks()) parts.push(c);
  const bytes = Buffer.concat(parts);
  expect(bytes.length).toBe(p.totalBytes);
  writeFileSync(path, bytes, { mode: 0o600 });
  return bytes;
}

async function* once(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes;
}

async function failsWith(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isServerError(err)) return err.code;
    throw err;
  }
  return 'no error';
}

async function openRestored(data: string) {
  const kms = await LocalKms.open(join(data, LOCAL_KMS_FILE));
  const storage = await openEmbeddedStorage({ dataDir: data, kms });
  cleanups.push(async () => {
    await storage.close();
    await kms.close();
  });
  return { kms, storage };
}

describe('backup and restore', () => {
  it('round-trips a running server: users, devices, queued envelopes, files, TLS identity; by KMS and by recovery key', async () => {
    const { dir, data, server, kms } = await started();
    const storage = server.service.ctx.storage;
    const alice = await enrolled(storage, 'alice');
    const bob = await enrolled(storage, 'bob');
    const bodies = [0, 1, 2].map(() => new Uint8Array(randomBytes(300)));
    await storage.enqueue(
      bodies.map((body) => ({
        recipientUserId: bob.user.id,
        recipientDeviceId: bob.deviceId,
        senderUserId: alice.user.id,
        senderDeviceId: alice.deviceId,
        body,
      })),
    );
    const files = new FileStore({ storage, kms });
    const content = new Uint8Array(randomBytes(150_000));
    const f = await files.create(alice.user.id, content.length, { kind: 'users', userIds: [bob.user.id] });
    await files.upload(
      f,
      0,
      content.length,
      (async function* () {
        yield content;
      })(),
    );

    // The server keeps writing while the snapshot is taken.
    let writing = true;
    const writer = (async () => {
      let n = 0;
      while (writing && n < 200) {
        await storage.enqueue([
          {
            recipientUserId: alice.user.id,
            recipientDeviceId: alice.deviceId,
            senderUserId: bob.user.id,
            senderDeviceId: bob.deviceId,
            body: new Uint8Array(randomBytes(64)),
          },
        ]);
        n++;
      }
    })();
    // A file deleted right after the snapshot (before its contents are linked), and an
    // upload in progress that goes on meanwhile: the archive has the first as deleted and the
    // second exactly as the snapshot's row says, whatever was appended since.
    const CHUNK = FILE_CHUNK_BYTES;
    const doomed = await files.create(alice.user.id, 1000, { kind: 'users', userIds: [bob.user.id] });
    await files.upload(doomed, 0, 1000, once(new Uint8Array(randomBytes(1000))));
    const partial = new Uint8Array(randomBytes(3 * CHUNK + 10));
    const p0 = await files.create(alice.user.id, partial.length, { kind: 'users', userIds: [bob.user.id] });
    const p1 = await files.upload(p0, 0, CHUNK, once(partial.subarray(0, CHUNK)));
    const { formatRecoveryKey, newRecoveryKey, parseRecoveryKey } = await import('./archive.js');
    const recovery = newRecoveryKey();
    const recoveryText = formatRecoveryKey(recovery);
    const prepared = await prepareBackup({
      dataDir: data,
      kms,
      segmentSize: SEG,
      recoveryKey: recovery,
      afterSnapshot: async () => {
        await files.delete(doomed.id, alice.user.id);
        await files.upload(p1, CHUNK, CHUNK, once(partial.subarray(CHUNK, 2 * CHUNK)));
      },
    });
    writing = false;
    await writer;
    const archive = join(dir, 'backup.qarc');
    const bytes = await writeOut(prepared, archive);
    // The snapshot file is gone, and the archive holds no key or recognisable plaintext.
    expect(readdirSync(data).filter((f) => f.startsWith('.backup-'))).toEqual([]);
    const registry = await DekRegistry.open(join(data, DEK_FILE), kms);
    for (const info of registry.list()) {
      const dek = await registry.get(info.name);
      expect(bytes.includes(Buffer.from(dek))).toBe(false);
      expect(bytes.includes(Buffer.from(Buffer.from(dek).toString('base64')))).toBe(false);
    }
    expect(bytes.includes(Buffer.from('BEGIN'))).toBe(false);
    expect(bytes.includes(Buffer.from(content.subarray(0, 32)))).toBe(false);
    const header = readArchiveHeader(archive).header;
    expect(header).toMatchObject({ kind: 'backup', hostname: 'chat.example', segmentSize: SEG });
    expect(segmentCount(header.payloadBytes, SEG)).toBeGreaterThan(10);

    const aliceInbox = (await storage.fetchEnvelopes(alice.user.id, alice.deviceId, { limit: 500 })).length;
    await server.close();

    // Restore with the old KMS key file into a new directory.
    const restored = join(dir, 'restored');
    const phases = new Set<string>();
    const r = await restoreBackup({
      archive,
      dataDir: restored,
      source: { kms },
      target: { provider: 'local' },
      onProgress: (phase, done, total) => {
        phases.add(phase);
        expect(done).toBeLessThanOrEqual(total);
      },
    });
    expect([...phases]).toEqual(['verify', 'restore']);
    expect(r).toMatchObject({
      archiveId: header.archiveId,
      sourceHostname: 'chat.example',
      users: 3,
      keySource: 'kms',
    });
    expect(r.pin).toBe(server.pin);
    expect(loadTls(readConfig(restored).paths).pin).toBe(server.pin);
    expect(readFileSync(join(restored, 'kms-master.key'))).not.toEqual(
      readFileSync(join(data, 'kms-master.key')),
    );

    const check = async (where: string) => {
      const { kms: newKms, storage: s } = await openRestored(where);
      expect((await s.listUsers()).map((u) => u.name).sort()).toEqual(['admin', 'alice', 'bob']);
      const bobAgain = await s.findUserByName('bob');
      expect((await s.listDevices(bobAgain!.id)).map((d) => [d.deviceId, d.name])).toEqual([
        [1, 'bob-laptop'],
      ]);
      const queued = await s.fetchEnvelopes(bob.user.id, bob.deviceId);
      expect(queued.map((e) => Buffer.from(e.body).toString('hex'))).toEqual(
        bodies.map((b) => Buffer.from(b).toString('hex')),
      );
      // The snapshot is one consistent point: some prefix of the concurrent writes, no torn state.
      const inbox = (await s.fetchEnvelopes(alice.user.id, alice.deviceId, { limit: 500 })).length;
      expect(inbox).toBeLessThanOrEqual(aliceInbox);
      // The file opens under the new KMS (its key was re-wrapped) and reads back exactly.
      const store = new FileStore({ storage: s, kms: newKms });
      const got = await store.get(f.id);
      expect(got?.complete).toBe(true);
      const parts: Uint8Array[] = [];
      for await (const c of store.read(got!, 0, content.length - 1)) parts.push(c);
      expect(Buffer.compare(Buffer.concat(parts), Buffer.from(content))).toBe(0);
      const restore = (await s.listAudit({ limit: 10_000 })).filter((a) => a.action === 'restore');
      expect(restore).toHaveLength(1);
      expect(restore[0]!.detail).toMatchObject({
        archiveId: header.archiveId,
        sourceHostname: 'chat.example',
      });
      expect(await s.verifyAudit()).toMatchObject({ ok: true });
      // The file deleted after the snapshot is gone, contents and all.
      expect(await store.get(doomed.id)).toBeUndefined();
      expect(existsSync(join(where, 'files', doomed.id))).toBe(false);
      expect(readdirSync(join(where, 'files')).sort()).toEqual([f.id, p0.id].sort());
      // The upload in progress is as the snapshot had it, and goes on from there.
      const p = await store.get(p0.id);
      expect(p).toMatchObject({ received: CHUNK, complete: false });
      const resumed = await store.upload(p!, CHUNK, partial.length - CHUNK, once(partial.subarray(CHUNK)));
      expect(resumed.complete).toBe(true);
      const all: Uint8Array[] = [];
      for await (const c of store.read(resumed, 0, partial.length - 1)) all.push(c);
      expect(Buffer.concat(all).equals(Buffer.from(partial))).toBe(true);
    };
    await check(restored);

    // The restored directory serves, with the same certificate.
    const again = await runServer({ dataDir: restored, listen: '127.0.0.1:0' });
    expect(again.pin).toBe(server.pin);
    await again.close();

    // Only the recovery key (no KMS at all).
    const viaRecovery = join(dir, 'via-recovery');
    const r2 = await restoreBackup({
      archive,
      dataDir: viaRecovery,
      source: { recoveryKey: parseRecoveryKey(recoveryText) },
      target: { provider: 'local' },
    });
    expect(r2.keySource).toBe('recovery-key');
    await check(viaRecovery);
  });

  it('rejects tampered, truncated, extended, reordered and foreign archives, writing nothing', async () => {
    const { dir, data, server, kms } = await started();
    await enrolled(server.service.ctx.storage, 'carol');
    const archive = join(dir, 'backup.qarc');
    const good = await writeOut(await prepareBackup({ dataDir: data, kms, segmentSize: SEG }), archive);
    const headerLen = readArchiveHeader(archive).headerBytes.length;
    const seg = SEG + 16;
    const attempt = async (name: string, bytes: Buffer, source: { kms?: LocalKms } = { kms }) => {
      const p = join(dir, `${name}.qarc`);
      writeFileSync(p, bytes);
      const target = join(dir, `target-${name}`);
      const code = await failsWith(
        restoreBackup({ archive: p, dataDir: target, source, target: { provider: 'local' } }),
      );
      expect(existsSync(target), name).toBe(false);
      expect(
        readdirSync(dir).filter((f) => f.includes(`target-${name}`)),
        name,
      ).toEqual([]);
      return code;
    };
    const flip = (at: number, mask = 0x80) => {
      const b = Buffer.from(good);
      b[at]! ^= mask;
      return b;
    };
    const hostAt = good.indexOf('chat.example');
    expect(hostAt).toBeGreaterThan(0);
    expect(hostAt).toBeLessThan(headerLen);
    // Still valid JSON with a valid hostname: only the segments' binding to the header catches it.
    expect(await attempt('header', flip(hostAt, 0x01))).toBe('ARCHIVE_CORRUPT');
    // Not JSON any more.
    expect(await attempt('header-json', flip(hostAt))).toBe('ARCHIVE_INVALID');
    // A byte late in the archive: everything before it verifies, and still nothing is written.
    expect(await attempt('late', flip(good.length - 40))).toBe('ARCHIVE_CORRUPT');
    expect(await attempt('middle', flip(headerLen + 5 * seg + 7))).toBe('ARCHIVE_CORRUPT');
    expect(await attempt('truncated', good.subarray(0, good.length - seg))).toBe('ARCHIVE_CORRUPT');
    expect(await attempt('appended', Buffer.concat([good, Buffer.alloc(16)]))).toBe('ARCHIVE_CORRUPT');
    const swapped = Buffer.concat([
      good.subarray(0, headerLen + 2 * seg),
      good.subarray(headerLen + 3 * seg, headerLen + 4 * seg),
      good.subarray(headerLen + 2 * seg, headerLen + 3 * seg),
      good.subarray(headerLen + 4 * seg),
    ]);
    expect(await attempt('swapped', swapped)).toBe('ARCHIVE_CORRUPT');
    const otherKms = await LocalKms.create(join(tempDir(), 'k', 'kms-master.key'));
    cleanups.push(() => otherKms.close());
    expect(await attempt('wrong-kms', good, { kms: otherKms })).toBe('ARCHIVE_KEY_REJECTED');
    expect(await attempt('no-recovery-wrap', good, {})).toBe('ARCHIVE_KEY_REJECTED');

    // A non-empty target is refused before anything is read; its contents stay.
    const busy = join(dir, 'busy');
    mkdirSync(busy);
    writeFileSync(join(busy, 'keep.txt'), 'mine');
    expect(
      await failsWith(
        restoreBackup({ archive, dataDir: busy, source: { kms }, target: { provider: 'local' } }),
      ),
    ).toBe('RESTORE_TARGET_NOT_EMPTY');
    expect(readdirSync(busy)).toEqual(['keep.txt']);
    // An empty existing directory is fine.
    const empty = join(dir, 'empty');
    mkdirSync(empty, { mode: 0o700 });
    const ok = await restoreBackup({
      archive,
      dataDir: empty,
      source: { kms },
      target: { provider: 'local' },
    });
    expect(ok.users).toBe(2);
    expect(readdirSync(empty).sort()).toEqual(
      [
        'config.json',
        'data-keys.json',
        'files',
        'kms-master.key',
        'qalqon.db',
        'tls-cert.pem',
        'tls-key.pem',
      ].sort(),
    );
  });

  it('writes the database snapshot encrypted under the database key, never in the clear', async () => {
    const { dir, data, server, kms } = await started();
    await enrolled(server.service.ctx.storage, 'dave');
    const registry = await DekRegistry.open(join(data, DEK_FILE), kms);
    const dbKey = await registry.get(DATABASE_DEK);
    const out = join(dir, 'snap.db');
    await snapshotDatabase(join(data, DATABASE_FILE), dbKey, out);
    const plain = new Database(out, { readonly: true });
    expect(() => plain.prepare('SELECT count(*) FROM sqlite_master').get()).toThrow();
    plain.close();
    const keyed = new Database(out, { readonly: true });
    keyed.pragma(`cipher='sqlcipher'`);
    keyed.pragma('legacy=4');
    keyed.pragma(`key="x'${Buffer.from(dbKey).toString('hex')}'"`);
    expect((keyed.prepare('SELECT count(*) AS n FROM users').get() as { n: number }).n).toBe(2);
    keyed.close();
    expect(readFileSync(out).subarray(0, 16).toString('latin1')).not.toContain('SQLite format');
    // It refuses to overwrite anything.
    await expect(snapshotDatabase(join(data, DATABASE_FILE), dbKey, out)).rejects.toThrow(/EEXIST/);
  });
});
