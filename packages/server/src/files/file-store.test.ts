/**
 * FileStore on both backends (a real SQLCipher file, and a real PostgreSQL database of its
 * own): streamed uploads from uneven pieces, reads of any range, a chunk swapped directly
 * where the backend stores it (the embedded blob file, PostgreSQL's rows) failing with FILE_CORRUPT, and KEK rotation re-wrapping every file key so
 * the old KEK version can be destroyed without losing a file.
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from '@qalqon/crypto';
import pg from 'pg';
import { afterEach, describe, expect, it } from 'vitest';
import { ServerError } from '../errors.js';
import { DEK_FILE, DekRegistry } from '../kms/dek-registry.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { DATABASE_DEK, DATABASE_FILE, openEmbeddedStorage } from '../storage/embedded.js';
import { FILES_DIR } from '../storage/file-blobs.js';
import { openPostgresStorage } from '../storage/postgres.js';
import { newId } from '../storage/sealed-rows.js';
import { openSqlcipher } from '../storage/sqlcipher.js';
import type { Storage } from '../storage/types.js';
import { CHUNK_OVERHEAD, FILE_CHUNK_BYTES } from './chunk-format.js';
import {
  checkFileServiceLimits,
  DEFAULT_FILE_LIMITS,
  FileStore,
  fileKeyContext,
  fileKeyVersions,
  rewrapFileKeys,
} from './file-store.js';

const CHUNK = FILE_CHUNK_BYTES;
const ADMIN_URL = process.env.QALQON_TEST_POSTGRES_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';

interface Backend {
  readonly storage: Storage;
  readonly kms: LocalKms;
  /** Runs one statement directly on the database (`?` placeholders), as an attacker could. */
  sql(statement: string, params: unknown[]): Promise<void>;
  /** Swaps two stored chunks of a file where the backend keeps them, as an attacker could. */
  swapChunks(fileId: string, a: number, b: number): Promise<void>;
  destroy(): Promise<void>;
}

async function pgAdmin(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: ADMIN_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

const BACKENDS: Record<string, () => Promise<Backend>> = {
  'embedded SQLCipher': async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qalqon-files-'));
    const kms = await LocalKms.create(join(dir, LOCAL_KMS_FILE));
    const storage = await openEmbeddedStorage({ dataDir: dir, kms });
    return {
      storage,
      kms,
      async sql(statement, params) {
        const key = await (await DekRegistry.open(join(dir, DEK_FILE), kms)).get(DATABASE_DEK);
        const db = openSqlcipher(join(dir, DATABASE_FILE), key);
        key.fill(0);
        try {
          db.prepare(statement).run(...params);
        } finally {
          db.close();
        }
      },
      async swapChunks(fileId, a, b) {
        // Whole chunks at fixed offsets in the file's blob (storage/file-blobs.ts).
        const stride = CHUNK + CHUNK_OVERHEAD;
        const fd = openSync(join(dir, FILES_DIR, fileId), 'r+');
        try {
          const ca = Buffer.alloc(stride);
          const cb = Buffer.alloc(stride);
          expect(readSync(fd, ca, 0, stride, a * stride)).toBe(stride);
          expect(readSync(fd, cb, 0, stride, b * stride)).toBe(stride);
          writeSync(fd, cb, 0, stride, a * stride);
          writeSync(fd, ca, 0, stride, b * stride);
        } finally {
          closeSync(fd);
        }
      },
      async destroy() {
        await storage.close();
        await kms.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  PostgreSQL: async () => {
    const name = `qalqon_test_${Buffer.from(randomBytes(8)).toString('hex')}`;
    await pgAdmin(`CREATE DATABASE ${name}`);
    const u = new URL(ADMIN_URL);
    u.pathname = `/${name}`;
    const url = u.toString();
    const dir = mkdtempSync(join(tmpdir(), 'qalqon-files-pg-'));
    const kms = await LocalKms.create(join(dir, LOCAL_KMS_FILE));
    const storage = await openPostgresStorage({ url, kms });
    const backend: Backend = {
      storage,
      kms,
      async sql(statement, params) {
        let n = 0;
        const c = new pg.Client({ connectionString: url });
        await c.connect();
        try {
          await c.query(
            statement.replace(/\?/g, () => `$${++n}`),
            params,
          );
        } finally {
          await c.end();
        }
      },
      async swapChunks(fileId, a, b) {
        const move = (from: number, to: number) =>
          backend.sql('UPDATE file_chunks SET idx = ? WHERE file_id = ? AND idx = ?', [to, fileId, from]);
        await move(a, -1);
        await move(b, a);
        await move(-1, b);
      },
      async destroy() {
        await storage.close();
        await kms.close();
        rmSync(dir, { recursive: true, force: true });
        await pgAdmin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      },
    };
    return backend;
  },
};

/** `data` as a stream of uneven pieces, as a network would deliver it. */
async function* pieces(data: Uint8Array): AsyncGenerator<Uint8Array> {
  let at = 0;
  let n = 1;
  while (at < data.length) {
    const len = Math.min(data.length - at, 1 + ((n * 7919) % 200_000));
    yield data.subarray(at, at + len);
    at += len;
    n++;
  }
}

async function readAll(it: AsyncIterable<Buffer>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const b of it) out.push(b);
  return Buffer.concat(out);
}

for (const [backendName, make] of Object.entries(BACKENDS)) {
  describe(`FileStore on ${backendName}`, () => {
    const open: Backend[] = [];
    afterEach(async () => {
      for (const b of open.splice(0)) await b.destroy();
    });
    const setup = async () => {
      const b = await make();
      open.push(b);
      const owner = await b.storage.createUser({ name: 'alice' });
      const files = new FileStore({ storage: b.storage, kms: b.kms });
      return { b, owner, files };
    };

    it('a file created with the earlier chunk size (1 MiB of plaintext) still uploads and reads', async () => {
      const { b, owner, files } = await setup();
      const chunkSize = 1024 * 1024;
      const id = newId();
      const dek = randomBytes(32);
      const w = await b.kms.wrap(dek, fileKeyContext(id));
      const data = Buffer.from(randomBytes(2 * chunkSize + 99));
      const f = await b.storage.createFile(
        {
          id,
          ownerId: owner.id,
          size: data.length,
          chunkSize,
          recipients: { kind: 'users', userIds: [owner.id] },
          wrappedKey: { keyId: w.keyId, ciphertext: w.ciphertext },
        },
        { maxFileBytes: 1 << 30, quotaBytes: 1 << 30 },
      );
      const done = await files.upload(f, 0, data.length, pieces(data));
      expect(done).toMatchObject({ received: data.length, complete: true, chunkSize });
      expect((await readAll(files.read(done, 0, data.length - 1))).equals(data)).toBe(true);
      expect(
        (await readAll(files.read(done, chunkSize - 5, chunkSize + 5))).equals(
          data.subarray(chunkSize - 5, chunkSize + 6),
        ),
      ).toBe(true);
    });

    it('stores a streamed upload and reads any range of it back', async () => {
      const { owner, files } = await setup();
      const data = Buffer.from(randomBytes(2 * CHUNK + 777));
      const f = await files.create(owner.id, data.length, { kind: 'users', userIds: [owner.id] });
      // The first chunk alone, then the rest.
      const one = await files.upload(f, 0, CHUNK, pieces(data.subarray(0, CHUNK)));
      expect(one).toMatchObject({ received: CHUNK, complete: false });
      const done = await files.upload(one, CHUNK, data.length - CHUNK, pieces(data.subarray(CHUNK)));
      expect(done).toMatchObject({ received: data.length, complete: true });
      expect((await readAll(files.read(done, 0, data.length - 1))).equals(data)).toBe(true);
      for (const [s, e] of [
        [0, 0],
        [CHUNK - 1, CHUNK],
        [10, 2 * CHUNK + 5],
        [data.length - 3, data.length - 1],
      ] as const) {
        expect((await readAll(files.read(done, s, e))).equals(data.subarray(s, e + 1))).toBe(true);
      }
      // An upload from a stale status, or one not ending at a chunk boundary, changes nothing.
      await expect(
        files.upload(one, CHUNK, CHUNK, pieces(data.subarray(CHUNK, 2 * CHUNK))),
      ).rejects.toMatchObject({
        code: 'UPLOAD_OFFSET_MISMATCH',
      });
      const other = await files.create(owner.id, data.length, { kind: 'users', userIds: [owner.id] });
      await expect(files.upload(other, 0, 10, pieces(data.subarray(0, 10)))).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
      });
      expect((await files.get(other.id))?.received).toBe(0);
      // A body longer than announced: refused at the first byte too many, keeping whole chunks before it.
      async function* given(...parts: Uint8Array[]) {
        yield* parts;
      }
      await expect(files.upload(other, 0, CHUNK, given(data.subarray(0, CHUNK + 10)))).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
      });
      expect((await files.get(other.id))?.received).toBe(0);
      await expect(
        files.upload(other, 0, CHUNK, given(data.subarray(0, CHUNK), data.subarray(CHUNK, CHUNK + 10))),
      ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      expect((await files.get(other.id))?.received).toBe(CHUNK);
      // A body shorter than announced keeps its whole chunks and is refused.
      const third = await files.create(owner.id, data.length, { kind: 'users', userIds: [owner.id] });
      await expect(
        files.upload(third, 0, data.length, given(data.subarray(0, CHUNK + 5))),
      ).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      expect((await files.get(third.id))?.received).toBe(CHUNK);
      expect((await readAll(files.read(done, 0, data.length - 1))).equals(data)).toBe(true);
    });

    it('stores pieces of any shape: whole chunks, several chunks, and chunks split across pieces', async () => {
      const { owner, files } = await setup();
      const data = Buffer.from(randomBytes(4 * CHUNK + 321));
      const f = await files.create(owner.id, data.length, { kind: 'users', userIds: [owner.id] });
      // A partial chunk, then a piece holding the rest of it, two whole chunks and a part of
      // the next (sealed where it lies from an offset), then whole chunks as chunkedBody
      // yields them, then the short end.
      async function* shaped() {
        yield data.subarray(0, 10);
        yield data.subarray(10, 3 * CHUNK + 7);
        yield data.subarray(3 * CHUNK + 7, 4 * CHUNK);
        yield data.subarray(4 * CHUNK);
      }
      const done = await files.upload(f, 0, data.length, shaped());
      expect(done).toMatchObject({ received: data.length, complete: true });
      expect((await readAll(files.read(done, 0, data.length - 1))).equals(data)).toBe(true);
      const g = await files.create(owner.id, data.length, { kind: 'users', userIds: [owner.id] });
      async function* wholeChunks() {
        for (let at = 0; at < data.length; at += CHUNK) yield data.subarray(at, at + CHUNK);
      }
      const again = await files.upload(g, 0, data.length, wholeChunks());
      expect((await readAll(files.read(again, 0, data.length - 1))).equals(data)).toBe(true);
    });

    it('fails with FILE_CORRUPT when chunks are swapped where they are stored', async () => {
      const { b, owner, files } = await setup();
      const data = Buffer.from(randomBytes(2 * CHUNK));
      const f = await files.create(owner.id, data.length, { kind: 'users', userIds: [owner.id] });
      const done = await files.upload(f, 0, data.length, pieces(data));
      await b.swapChunks(f.id, 0, 1);
      const err = await readAll(files.read(done, 0, data.length - 1)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ServerError);
      expect((err as ServerError).code).toBe('FILE_CORRUPT');
    });

    it('re-wraps every file key after a KEK rotation, so the old version can be destroyed', async () => {
      const { b, owner, files } = await setup();
      const data = Buffer.from(randomBytes(1000));
      const ids: string[] = [];
      for (let i = 0; i < 3; i++) {
        const f = await files.create(owner.id, data.length, { kind: 'users', userIds: [owner.id] });
        await files.upload(f, 0, data.length, pieces(data));
        ids.push(f.id);
      }
      const oldKey = (await b.kms.describe()).activeKeyId;
      const newKey = await b.kms.rotate();
      expect([...(await fileKeyVersions(b.storage))]).toEqual([[oldKey, 3]]);
      // One file's wrapped key damaged: reported, left alone, the others re-wrapped.
      await b.sql('UPDATE files SET wrapped_key = ? WHERE id = ?', [Buffer.alloc(60, 1), ids[2]]);
      expect(await rewrapFileKeys(b.storage, b.kms)).toEqual({ rewrapped: 2, failed: [ids[2]] });
      expect(await rewrapFileKeys(b.storage, b.kms)).toEqual({ rewrapped: 0, failed: [ids[2]] });
      expect(new Map(await fileKeyVersions(b.storage))).toEqual(
        new Map([
          [newKey, 2],
          [oldKey, 1],
        ]),
      );
      await b.kms.destroy(oldKey);
      for (const id of ids.slice(0, 2)) {
        const f = (await files.get(id))!;
        expect((await readAll(files.read(f, 0, data.length - 1))).equals(data)).toBe(true);
      }
    });
  });
}

describe('file limits of config.json', () => {
  it('completes a partial object with the defaults and keeps what is given', () => {
    expect(checkFileServiceLimits(undefined)).toEqual(DEFAULT_FILE_LIMITS);
    expect(checkFileServiceLimits({ maxConcurrentTransfers: 8, maxConcurrentTransfersPerUser: 2 })).toEqual({
      ...DEFAULT_FILE_LIMITS,
      maxConcurrentTransfers: 8,
      maxConcurrentTransfersPerUser: 2,
    });
  });

  it('refuses malformed, out-of-range and mistyped settings with INVALID_ARGUMENT, naming the field', () => {
    const bad: [Record<string, unknown> | unknown, RegExp][] = [
      ['not an object', /files/],
      [[], /files/],
      [{ maxConcurrentTransfers: 0 }, /files\.maxConcurrentTransfers/],
      [{ maxConcurrentTransfers: 1.5 }, /files\.maxConcurrentTransfers/],
      [{ maxConcurrentTransfers: '64' }, /files\.maxConcurrentTransfers/],
      [{ maxConcurrentTransfers: 100_001 }, /files\.maxConcurrentTransfers/],
      [{ maxConcurrentTransfersPerUser: -1 }, /files\.maxConcurrentTransfersPerUser/],
      [{ maxConcurrentTransfersPerUser: Number.POSITIVE_INFINITY }, /files\.maxConcurrentTransfersPerUser/],
      [{ maxFileBytes: 64 * 1024 ** 3 + 1 }, /files\.maxFileBytes/],
      [{ incompleteTtlMs: 1000 }, /files\.incompleteTtlMs/],
    ];
    for (const [v, field] of bad) {
      let err: unknown;
      try {
        checkFileServiceLimits(v);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(v)).toBeInstanceOf(ServerError);
      expect((err as ServerError).code).toBe('INVALID_ARGUMENT');
      expect((err as Error).message).toMatch(field);
    }
  });
});
