/**
 * Files against a real server over real TLS on a real SQLCipher store: streamed uploads in
 * one request and in several, resumption after a request cut off mid-chunk, offset and
 * boundary refusals that change nothing, range reads, the access rules (uploader,
 * recipients once complete, channel members at download time, nobody else), size and
 * quota limits, and tampering done directly on disk (in a file's blob: chunks swapped,
 * copied from another file, cut off, altered, the whole blob replaced or removed; in the
 * database: sizes and wrapped keys edited), which must make the download fail with
 * FILE_CORRUPT instead of returning a single wrong byte.
 */
import {
  closeSync,
  copyFileSync,
  openSync,
  readFileSync,
  statSync,
  truncateSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import type { ClientRequest } from 'node:http';
import { request } from 'node:https';
import { join } from 'node:path';
import { randomBytes, sha256, xeddsaSign } from '@qalqon/crypto';
import {
  type ChannelChangeJson,
  channelChangeSigningMessage,
  encodeChannelChange,
  FileStatus,
  FileUsageResponse,
  GENESIS_PREV,
  signedChangeJson,
} from '@qalqon/wire';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEK_FILE, DekRegistry } from '../kms/dek-registry.js';
import {
  type Enrolled,
  enrol,
  type Harness,
  type HttpResult,
  http,
  signIn,
  startHarness,
  tlsOptions,
} from '../service/harness.test-util.js';
import { DATABASE_DEK, DATABASE_FILE } from '../storage/embedded.js';
import { FILES_DIR } from '../storage/file-blobs.js';
import { openSqlcipher, type SqliteDatabase } from '../storage/sqlcipher.js';
import { CHUNK_OVERHEAD, FILE_CHUNK_BYTES } from './chunk-format.js';

const MiB = 1024 * 1024;
const CHUNK = FILE_CHUNK_BYTES;

interface User extends Enrolled {
  readonly name: string;
  readonly token: string;
}

async function makeUser(h: Harness, name: string, roles?: readonly string[]): Promise<User> {
  const e = await enrol(h, (await h.addUser(name, roles ? { roles } : {})).code);
  return { ...e, name, token: await signIn(h, e) };
}

function code(r: HttpResult): string | undefined {
  return (r.json as { error?: { code?: string } } | undefined)?.error?.code;
}

interface RawResult {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: Buffer;
  /** False when the response was cut off before its declared length. */
  readonly complete: boolean;
}

/** One HTTPS request with a raw body (or a function that writes it) and a raw response. */
function raw(
  h: Harness,
  method: string,
  path: string,
  options: {
    token: string;
    headers?: Record<string, string>;
    body?: Buffer;
  },
): Promise<RawResult> {
  const headers: Record<string, string> = { authorization: `Bearer ${options.token}`, ...options.headers };
  if (options.body !== undefined) {
    headers['content-type'] ??= 'application/octet-stream';
    headers['content-length'] ??= String(options.body.length);
  }
  return new Promise((resolve, reject) => {
    const req = request(
      { host: '127.0.0.1', port: h.port, method, path, headers, ...tlsOptions(h), agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', () => undefined);
        res.on('close', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
            complete: res.complete,
          }),
        );
      },
    );
    req.on('error', reject);
    req.end(options.body);
  });
}

const json = (r: RawResult): unknown => JSON.parse(r.body.toString('utf8'));
const errCode = (r: RawResult): string | undefined => (json(r) as { error?: { code?: string } }).error?.code;

/** PUTs `data[start..end]` of a file of `data.length` bytes. */
function put(h: Harness, u: User, id: string, data: Buffer, start: number, end = data.length - 1) {
  return raw(h, 'PUT', `/v1/files/${id}/content`, {
    token: u.token,
    headers: { 'content-range': `bytes ${start}-${end}/${data.length}` },
    body: data.subarray(start, end + 1),
  });
}

function get(h: Harness, u: User, id: string, range?: string) {
  return raw(h, 'GET', `/v1/files/${id}/content`, {
    token: u.token,
    ...(range === undefined ? {} : { headers: { range } }),
  });
}

async function create(
  h: Harness,
  u: User,
  size: number,
  to: { to?: string[]; channel?: string } = {},
): Promise<HttpResult> {
  return http(h, 'POST', '/v1/files', { size, ...to }, { token: u.token });
}

async function createOk(h: Harness, u: User, size: number, to: { to?: string[]; channel?: string } = {}) {
  const r = await create(h, u, size, to.to || to.channel ? to : { to: [u.name] });
  if (r.status !== 200) throw new Error(`create failed: ${r.status} ${r.text}`);
  return FileStatus.parse(r.json);
}

async function status(h: Harness, u: User, id: string): Promise<HttpResult> {
  return http(h, 'GET', `/v1/files/${id}`, undefined, { token: u.token });
}

/** Uploads `data` in one request as a new file; returns its id. */
async function uploaded(h: Harness, u: User, data: Buffer, to: { to?: string[]; channel?: string } = {}) {
  const f = await createOk(h, u, data.length, to);
  const r = await put(h, u, f.id, data, 0);
  expect(r.status, r.body.toString()).toBe(200);
  return f.id;
}

/** The database file opened directly, as an attacker holding the keys (or the disk and the KMS) could. */
async function rawDb<T>(h: Harness, fn: (db: SqliteDatabase) => T): Promise<T> {
  const registry = await DekRegistry.open(join(h.dir, DEK_FILE), h.kms);
  const key = await registry.get(DATABASE_DEK);
  const db = openSqlcipher(join(h.dir, DATABASE_FILE), key);
  key.fill(0);
  try {
    return db.transaction(() => fn(db)).immediate();
  } finally {
    db.close();
  }
}

describe('files over HTTPS', () => {
  let h: Harness;
  let alice: User;
  let bob: User;
  let carol: User;
  beforeAll(async () => {
    h = await startHarness();
    alice = await makeUser(h, 'alice');
    bob = await makeUser(h, 'bob');
    carol = await makeUser(h, 'carol');
  });
  afterAll(async () => {
    await h.close();
  });

  it('uploads in one request, reports status and usage, and downloads the same bytes', async () => {
    const data = Buffer.from(randomBytes(2 * CHUNK + 12345));
    const usageOf = async () =>
      FileUsageResponse.parse((await http(h, 'GET', '/v1/files', undefined, { token: alice.token })).json);
    const before = await usageOf();
    const f = await createOk(h, alice, data.length, { to: ['bob'] });
    expect(f).toMatchObject({ size: data.length, received: 0, complete: false });
    const usage = await usageOf();
    expect(usage.used).toBe(before.used + data.length);
    expect(usage).toMatchObject({ quota: 20 * 1024 ** 3, maxFileBytes: 4 * 1024 ** 3 });
    const r = await put(h, alice, f.id, data, 0);
    expect(r.status).toBe(200);
    expect(FileStatus.parse(json(r))).toMatchObject({ received: data.length, complete: true });
    // Every status names the uploader (by user id), to the uploader and to a recipient alike.
    expect(f.uploaderId).toBe(alice.userId);
    expect(FileStatus.parse(json(r)).uploaderId).toBe(alice.userId);
    expect(FileStatus.parse((await status(h, bob, f.id)).json).uploaderId).toBe(alice.userId);
    const d = await get(h, bob, f.id);
    expect(d.status).toBe(200);
    expect(d.headers['content-length']).toBe(String(data.length));
    expect(d.headers['accept-ranges']).toBe('bytes');
    expect(d.body.equals(data)).toBe(true);
    // The uploader too; and the byte counters moved.
    expect((await get(h, alice, f.id)).body.equals(data)).toBe(true);
    const metrics = (await http(h, 'GET', '/metrics')).text;
    expect(metrics).toMatch(/qalqon_file_bytes_uploaded_total \d+/);
    expect(Number(/qalqon_file_bytes_downloaded_total (\d+)/.exec(metrics)?.[1])).toBeGreaterThanOrEqual(
      2 * data.length,
    );
  });

  it('uploads in several requests, each starting where the stored bytes end', async () => {
    const data = Buffer.from(randomBytes(3 * CHUNK + 7));
    const f = await createOk(h, alice, data.length);
    expect((await put(h, alice, f.id, data, 0, CHUNK - 1)).status).toBe(200);
    expect(FileStatus.parse((await status(h, alice, f.id)).json).received).toBe(CHUNK);
    const two = await put(h, alice, f.id, data, CHUNK, 3 * CHUNK - 1);
    expect(FileStatus.parse(json(two))).toMatchObject({ received: 3 * CHUNK, complete: false });
    const last = await put(h, alice, f.id, data, 3 * CHUNK);
    expect(FileStatus.parse(json(last))).toMatchObject({ received: data.length, complete: true });
    expect((await get(h, alice, f.id)).body.equals(data)).toBe(true);
  });

  it('refuses a wrong offset, a request not ending at a chunk boundary, and a bad Content-Range, changing nothing', async () => {
    const data = Buffer.from(randomBytes(2 * CHUNK + 100));
    const f = await createOk(h, alice, data.length);
    expect((await put(h, alice, f.id, data, 0, CHUNK - 1)).status).toBe(200);
    const cases: [Promise<RawResult>, number, string][] = [
      [put(h, alice, f.id, data, 0, CHUNK - 1), 409, 'UPLOAD_OFFSET_MISMATCH'],
      [put(h, alice, f.id, data, 2 * CHUNK), 409, 'UPLOAD_OFFSET_MISMATCH'],
      [put(h, alice, f.id, data, CHUNK, CHUNK + 999), 400, 'BAD_REQUEST'],
      [
        raw(h, 'PUT', `/v1/files/${f.id}/content`, {
          token: alice.token,
          headers: { 'content-range': `bytes ${CHUNK}-${2 * CHUNK - 1}/${data.length + 1}` },
          body: data.subarray(CHUNK, 2 * CHUNK),
        }),
        400,
        'BAD_REQUEST',
      ],
      [
        raw(h, 'PUT', `/v1/files/${f.id}/content`, {
          token: alice.token,
          headers: { 'content-range': 'bytes 5-1/10' },
          body: data.subarray(0, 10),
        }),
        400,
        'BAD_REQUEST',
      ],
      [
        raw(h, 'PUT', `/v1/files/${f.id}/content`, {
          token: alice.token,
          headers: {
            'content-range': `bytes ${CHUNK}-${2 * CHUNK - 1}/${data.length}`,
            'content-type': 'text/plain',
          },
          body: data.subarray(CHUNK, 2 * CHUNK),
        }),
        415,
        'UNSUPPORTED_MEDIA_TYPE',
      ],
      // Another user's upload to it: as if it did not exist.
      [put(h, bob, f.id, data, CHUNK, 2 * CHUNK - 1), 404, 'FILE_NOT_FOUND'],
    ];
    for (const [p, st, c] of cases) {
      const r = await p;
      expect([r.status, errCode(r)]).toEqual([st, c]);
      expect(r.headers.connection).toBe('close');
    }
    expect(FileStatus.parse((await status(h, alice, f.id)).json)).toMatchObject({
      received: CHUNK,
      complete: false,
    });
    // A body longer than its Content-Range: the whole chunks it announced are kept, nothing more.
    const long = await raw(h, 'PUT', `/v1/files/${f.id}/content`, {
      token: alice.token,
      headers: {
        'content-range': `bytes ${CHUNK}-${2 * CHUNK - 1}/${data.length}`,
        'content-length': String(CHUNK + 10),
      },
      body: data.subarray(CHUNK, 2 * CHUNK + 10),
    });
    expect([long.status, errCode(long)]).toEqual([400, 'BAD_REQUEST']);
    expect(FileStatus.parse((await status(h, alice, f.id)).json).received).toBe(CHUNK);
    // The rest in one go still works, and a complete file takes no more.
    expect((await put(h, alice, f.id, data, CHUNK)).status).toBe(200);
    const more = await put(h, alice, f.id, data, CHUNK);
    expect([more.status, errCode(more)]).toEqual([409, 'UPLOAD_OFFSET_MISMATCH']);
    expect((await get(h, alice, f.id)).body.equals(data)).toBe(true);
  });

  it('resumes from `received` after a request cut off mid-chunk', async () => {
    const data = Buffer.from(randomBytes(3 * CHUNK + 4321));
    const f = await createOk(h, alice, data.length);
    // Send the whole announced range's first 1.5 chunks, then drop the connection.
    await new Promise<void>((resolve) => {
      const req = request({
        host: '127.0.0.1',
        port: h.port,
        method: 'PUT',
        path: `/v1/files/${f.id}/content`,
        headers: {
          authorization: `Bearer ${alice.token}`,
          'content-type': 'application/octet-stream',
          'content-range': `bytes 0-${data.length - 1}/${data.length}`,
          'content-length': String(data.length),
        },
        ...tlsOptions(h),
        agent: false,
      });
      req.on('error', () => resolve());
      req.on('response', () => resolve());
      req.write(data.subarray(0, CHUNK + CHUNK / 2), () => {
        setTimeout(() => req.destroy(), 200);
      });
    });
    // The whole first chunk is kept, the half chunk dropped.
    let received = -1;
    for (let i = 0; i < 100 && received !== CHUNK; i++) {
      await new Promise((r) => setTimeout(r, 50));
      received = FileStatus.parse((await status(h, alice, f.id)).json).received;
    }
    expect(received).toBe(CHUNK);
    const rest = await put(h, alice, f.id, data, received);
    expect(FileStatus.parse(json(rest))).toMatchObject({ received: data.length, complete: true });
    expect((await get(h, alice, f.id)).body.equals(data)).toBe(true);
  });

  it('serves single byte ranges, decrypting only what they touch', async () => {
    const size = 3 * CHUNK + 999;
    const data = Buffer.from(randomBytes(size));
    const id = await uploaded(h, alice, data, { to: ['bob'] });
    const cases: [string, number, number][] = [
      ['bytes=0-99', 0, 99],
      [`bytes=${CHUNK - 10}-${CHUNK + 9}`, CHUNK - 10, CHUNK + 9],
      [`bytes=${CHUNK + 5}-${3 * CHUNK + 5}`, CHUNK + 5, 3 * CHUNK + 5],
      [`bytes=${size - 100}-${size - 1}`, size - 100, size - 1],
      [`bytes=${size - 100}-${size + 5000}`, size - 100, size - 1],
      [`bytes=${2 * CHUNK}-`, 2 * CHUNK, size - 1],
      ['bytes=-1500', size - 1500, size - 1],
      [`bytes=-${size + 10}`, 0, size - 1],
      ['bytes=7-7', 7, 7],
    ];
    for (const [range, start, end] of cases) {
      const r = await get(h, bob, id, range);
      expect(r.status, range).toBe(206);
      expect(r.headers['content-range'], range).toBe(`bytes ${start}-${end}/${size}`);
      expect(r.body.equals(data.subarray(start, end + 1)), range).toBe(true);
    }
    for (const range of [`bytes=${size}-`, `bytes=${size + 10}-${size + 20}`, 'bytes=-0']) {
      const r = await get(h, bob, id, range);
      expect([r.status, errCode(r)], range).toEqual([416, 'RANGE_NOT_SATISFIABLE']);
      expect(r.headers['content-range']).toBe(`bytes */${size}`);
    }
    // Several ranges, or one that is malformed, are ignored: the whole file.
    for (const range of ['bytes=0-1,5-9', 'bytes=9-3', 'items=0-5', 'bytes=abc']) {
      const r = await get(h, bob, id, range);
      expect(r.status, range).toBe(200);
      expect(r.body.equals(data), range).toBe(true);
    }
  });

  it('lets recipients read only once complete, and everyone else not know the file exists', async () => {
    const data = Buffer.from(randomBytes(CHUNK + 10));
    const f = await createOk(h, alice, data.length, { to: ['bob'] });
    const unknown = '0'.repeat(32);
    for (const [who, id] of [
      [carol, f.id],
      [carol, unknown],
      [bob, unknown],
    ] as const) {
      expect(code(await status(h, who, id))).toBe('FILE_NOT_FOUND');
      expect(errCode(await get(h, who, id))).toBe('FILE_NOT_FOUND');
    }
    const early = await status(h, bob, f.id);
    expect([early.status, code(early)]).toEqual([409, 'FILE_INCOMPLETE']);
    expect(errCode(await get(h, bob, f.id))).toBe('FILE_INCOMPLETE');
    // Only the uploader uploads and deletes.
    expect(errCode(await put(h, bob, f.id, data, 0))).toBe('FILE_NOT_FOUND');
    expect((await put(h, alice, f.id, data, 0)).status).toBe(200);
    expect((await get(h, bob, f.id)).body.equals(data)).toBe(true);
    expect(FileStatus.parse((await status(h, bob, f.id)).json).complete).toBe(true);
    expect(errCode(await get(h, carol, f.id))).toBe('FILE_NOT_FOUND');
    const del = await http(h, 'DELETE', `/v1/files/${f.id}`, undefined, { token: bob.token });
    expect([del.status, code(del)]).toEqual([404, 'FILE_NOT_FOUND']);
    expect((await http(h, 'DELETE', `/v1/files/${f.id}`, undefined, { token: alice.token })).status).toBe(
      200,
    );
    expect(errCode(await get(h, alice, f.id))).toBe('FILE_NOT_FOUND');
    expect(errCode(await get(h, bob, f.id))).toBe('FILE_NOT_FOUND');
    // Recipients must exist.
    const r = await create(h, alice, 10, { to: ['nobody'] });
    expect([r.status, code(r)]).toEqual([404, 'USER_NOT_FOUND']);
  });

  it('lets a channel file be read by the channel members of the moment', async () => {
    const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
    const channel = hex(randomBytes(16));
    let seq = 0;
    let head = GENESIS_PREV;
    const sign = async (actor: User, c: ChannelChangeJson, path: string) => {
      const change = encodeChannelChange(c);
      const entry = signedChangeJson({
        change,
        signature: xeddsaSign(actor.keys.identity.privateKey, channelChangeSigningMessage(change)),
      });
      const r = await http(h, 'POST', path, { entry }, { token: actor.token });
      expect(r.status, r.text).toBe(200);
      head = hex(sha256(change));
    };
    const by = { userId: alice.userId, deviceId: alice.deviceId };
    await sign(
      alice,
      {
        v: 1,
        channel,
        seq: 0,
        prev: GENESIS_PREV,
        at: Date.now(),
        by,
        op: 'create',
        name: 'files-chan',
        userName: alice.name,
        identityKey: alice.keys.json.identityKey,
      },
      '/v1/channels',
    );
    const add = async (u: User) =>
      sign(
        alice,
        {
          v: 1,
          channel,
          seq: ++seq,
          prev: head,
          at: Date.now(),
          by,
          op: 'add',
          userId: u.userId,
          userName: u.name,
          identityKey: u.keys.json.identityKey,
          role: 'member',
        },
        `/v1/channels/${channel}/changes`,
      );
    await add(bob);
    // Creating for a channel needs membership.
    const outsider = await create(h, carol, 10, { channel });
    expect([outsider.status, code(outsider)]).toEqual([403, 'NOT_A_MEMBER']);
    const none = await create(h, carol, 10, { channel: '0'.repeat(32) });
    expect([none.status, code(none)]).toEqual([404, 'CHANNEL_NOT_FOUND']);
    const data = Buffer.from(randomBytes(5000));
    const id = await uploaded(h, alice, data, { channel });
    expect((await get(h, bob, id)).body.equals(data)).toBe(true);
    expect(errCode(await get(h, carol, id))).toBe('FILE_NOT_FOUND');
    // Carol joins: she may read it; Bob is removed: he may not any more.
    await add(carol);
    expect((await get(h, carol, id)).body.equals(data)).toBe(true);
    await sign(
      alice,
      { v: 1, channel, seq: ++seq, prev: head, at: Date.now(), by, op: 'remove', userId: bob.userId },
      `/v1/channels/${channel}/changes`,
    );
    expect(errCode(await get(h, bob, id))).toBe('FILE_NOT_FOUND');
    expect(code(await status(h, bob, id))).toBe('FILE_NOT_FOUND');
  });

  it('needs message.send to create a file for users', async () => {
    const mallory = await makeUser(h, 'mallory', ['auditor']);
    const r = await create(h, mallory, 10, { to: ['alice'] });
    expect([r.status, code(r)]).toEqual([403, 'FORBIDDEN']);
    const bad = await create(h, alice, 10, {});
    expect([bad.status, code(bad)]).toEqual([400, 'BAD_REQUEST']);
  });

  describe('tampering on disk', () => {
    const SIZE = 3 * CHUNK + 500;
    const STRIDE = CHUNK + CHUNK_OVERHEAD;
    /** A fresh complete file and its bytes. */
    async function victim(): Promise<{ id: string; data: Buffer }> {
      const data = Buffer.from(randomBytes(SIZE));
      return { id: await uploaded(h, alice, data, { to: ['bob'] }), data };
    }
    /** The file's blob: its sealed chunks at fixed offsets (storage/file-blobs.ts). */
    const blobOf = (id: string) => join(h.dir, FILES_DIR, id);
    const chunk = (id: string, idx: number) =>
      readFileSync(blobOf(id)).subarray(
        idx * STRIDE,
        Math.min((idx + 1) * STRIDE, statSync(blobOf(id)).size),
      );
    const setChunk = (id: string, idx: number, data: Uint8Array) => {
      const fd = openSync(blobOf(id), 'r+');
      try {
        expect(writeSync(fd, data, 0, data.length, idx * STRIDE)).toBe(data.length);
      } finally {
        closeSync(fd);
      }
    };

    /**
     * A read of `range` (or the whole file) fails: a clean FILE_CORRUPT error when the
     * first chunk it needs is bad, otherwise a response cut off after a correct prefix.
     */
    async function fails(id: string, data: Buffer, range?: [number, number]) {
      const r = await get(h, bob, id, range && `bytes=${range[0]}-${range[1]}`);
      const want = range ? data.subarray(range[0], range[1] + 1) : data;
      if (r.status >= 400) {
        expect([r.status, errCode(r)]).toEqual([500, 'FILE_CORRUPT']);
        return 'error';
      }
      expect(r.complete).toBe(false);
      expect(r.body.length).toBeLessThan(want.length);
      expect(r.body.equals(want.subarray(0, r.body.length))).toBe(true);
      return 'aborted';
    }

    it('two chunks swapped', async () => {
      const { id, data } = await victim();
      const a = chunk(id, 0);
      const b = chunk(id, 1);
      setChunk(id, 0, b);
      setChunk(id, 1, a);
      expect(await fails(id, data)).toBe('error');
      expect(await fails(id, data, [CHUNK + 10, CHUNK + 20])).toBe('error');
      // A chunk left alone still reads.
      expect((await get(h, bob, id, `bytes=${2 * CHUNK}-${2 * CHUNK + 9}`)).status).toBe(206);
    });

    it('a chunk copied from another file', async () => {
      const { id, data } = await victim();
      const other = await victim();
      setChunk(id, 2, chunk(other.id, 2));
      expect(await fails(id, data)).toBe('aborted');
      expect(await fails(id, data, [2 * CHUNK, 2 * CHUNK + 1])).toBe('error');
    });

    it("another file's whole blob copied over", async () => {
      const { id, data } = await victim();
      const other = await victim();
      copyFileSync(blobOf(other.id), blobOf(id));
      expect(await fails(id, data)).toBe('error');
      expect(await fails(id, data, [SIZE - 10, SIZE - 1])).toBe('error');
    });

    it('the last chunk cut off, or cut short (truncation)', async () => {
      const { id, data } = await victim();
      truncateSync(blobOf(id), 3 * STRIDE + 100);
      expect(await fails(id, data)).toBe('aborted');
      expect(await fails(id, data, [SIZE - 10, SIZE - 1])).toBe('error');
      truncateSync(blobOf(id), 3 * STRIDE);
      expect(await fails(id, data)).toBe('aborted');
      expect(await fails(id, data, [SIZE - 10, SIZE - 1])).toBe('error');
      // The whole blob gone.
      unlinkSync(blobOf(id));
      expect(await fails(id, data)).toBe('error');
    });

    it('one byte flipped', async () => {
      const { id, data } = await victim();
      const c = Buffer.from(chunk(id, 1));
      c[5000] = (c[5000] ?? 0) ^ 0x01;
      setChunk(id, 1, c);
      expect(await fails(id, data)).toBe('aborted');
      expect(await fails(id, data, [CHUNK + 1, CHUNK + 2])).toBe('error');
    });

    it('the stored size changed', async () => {
      const { id, data } = await victim();
      for (const size of [SIZE - 1, SIZE + 1]) {
        await rawDb(h, (db) =>
          db.prepare('UPDATE files SET size = ?, received = ? WHERE id = ?').run(size, size, id),
        );
        expect(await fails(id, data)).toBe('error');
        expect(await fails(id, data, [0, 9])).toBe('error');
      }
    });

    it('the wrapped keys of two files swapped', async () => {
      const a = await victim();
      const b = await victim();
      await rawDb(h, (db) => {
        const key = db.prepare('SELECT key_id, wrapped_key FROM files WHERE id = ?');
        const ka = key.get(a.id) as { key_id: string; wrapped_key: Buffer };
        const kb = key.get(b.id) as { key_id: string; wrapped_key: Buffer };
        const set = db.prepare('UPDATE files SET key_id = ?, wrapped_key = ? WHERE id = ?');
        set.run(kb.key_id, kb.wrapped_key, a.id);
        set.run(ka.key_id, ka.wrapped_key, b.id);
      });
      expect(await fails(a.id, a.data)).toBe('error');
      expect(await fails(b.id, b.data, [5, 6])).toBe('error');
      expect(h.logs.some((l) => /does not unwrap/.test(l))).toBe(true);
    });
  });
});

describe('file limits', () => {
  let h: Harness;
  let alice: User;
  beforeAll(async () => {
    h = await startHarness({ files: { maxFileBytes: 3 * MiB, quotaBytesPerUser: 5 * MiB } });
    alice = await makeUser(h, 'alice');
  });
  afterAll(async () => {
    await h.close();
  });

  it('refuses a file over the size limit and one over the quota, and a deletion frees the quota', async () => {
    const big = await create(h, alice, 3 * MiB + 1, { to: ['alice'] });
    expect([big.status, code(big)]).toEqual([413, 'FILE_TOO_LARGE']);
    const first = await createOk(h, alice, 3 * MiB);
    const over = await create(h, alice, 2 * MiB + 1, { to: ['alice'] });
    expect([over.status, code(over)]).toEqual([413, 'QUOTA_EXCEEDED']);
    expect(
      FileUsageResponse.parse((await http(h, 'GET', '/v1/files', undefined, { token: alice.token })).json),
    ).toEqual({
      used: 3 * MiB,
      quota: 5 * MiB,
      maxFileBytes: 3 * MiB,
    });
    const metrics = (await http(h, 'GET', '/metrics')).text;
    expect(metrics).toContain('qalqon_file_refusals_total{code="QUOTA_EXCEEDED"} 1');
    expect(metrics).toContain('qalqon_file_refusals_total{code="FILE_TOO_LARGE"} 1');
    expect((await http(h, 'DELETE', `/v1/files/${first.id}`, undefined, { token: alice.token })).status).toBe(
      200,
    );
    await createOk(h, alice, 3 * MiB);
  });
});

describe('concurrent transfers', () => {
  let h: Harness;
  let alice: User;
  let bob: User;
  let carol: User;
  beforeAll(async () => {
    h = await startHarness({ files: { maxConcurrentTransfers: 2, maxConcurrentTransfersPerUser: 1 } });
    alice = await makeUser(h, 'alice');
    bob = await makeUser(h, 'bob');
    carol = await makeUser(h, 'carol');
  });
  afterAll(async () => {
    await h.close();
  });

  const active = async () => {
    const m = /^qalqon_file_transfers_active (\d+)$/m.exec((await http(h, 'GET', '/metrics')).text);
    return Number(m?.[1]);
  };
  const until = async (n: number) => {
    for (let i = 0; i < 200 && (await active()) !== n; i++) await new Promise((r) => setTimeout(r, 25));
    expect(await active()).toBe(n);
  };

  it('refuses transfers over the per-user and the node-wide bound with RATE_LIMITED, until one ends', async () => {
    // Alice's upload, half sent and held open: her one transfer.
    const data = Buffer.from(randomBytes(2 * CHUNK));
    const held = await createOk(h, alice, data.length);
    let heldRequest: ClientRequest | undefined;
    const done = new Promise<RawResult>((resolve, reject) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: h.port,
          method: 'PUT',
          path: `/v1/files/${held.id}/content`,
          headers: {
            authorization: `Bearer ${alice.token}`,
            'content-type': 'application/octet-stream',
            'content-length': String(data.length),
            'content-range': `bytes 0-${data.length - 1}/${data.length}`,
          },
          ...tlsOptions(h),
          agent: false,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              body: Buffer.concat(chunks),
              complete: true,
            }),
          );
        },
      );
      req.on('error', reject);
      req.write(data.subarray(0, CHUNK / 2));
      heldRequest = req;
    });
    await until(1);

    // A second transfer of hers is refused before its body is read, and changes nothing.
    const other = await createOk(h, alice, 1000);
    const refused = await put(h, alice, other.id, Buffer.from(randomBytes(1000)), 0);
    expect([refused.status, errCode(refused)]).toEqual([429, 'RATE_LIMITED']);
    expect((json(refused) as { error: { retryAfterMs?: number } }).error.retryAfterMs).toBeGreaterThan(0);
    expect(FileStatus.parse((await status(h, alice, other.id)).json).received).toBe(0);

    // Bob's transfers are his own: an upload, then a download held open (not read).
    const big = Buffer.from(randomBytes(32 * MiB));
    const bobs = await uploaded(h, bob, big, { to: ['bob', 'carol'] });
    await until(1);
    const slow = request({
      host: '127.0.0.1',
      port: h.port,
      method: 'GET',
      path: `/v1/files/${bobs}/content`,
      headers: { authorization: `Bearer ${bob.token}` },
      ...tlsOptions(h),
      agent: false,
    });
    slow.on('response', (res) => res.pause());
    slow.on('error', () => undefined);
    slow.end();
    await until(2);

    // The node serves two at once: Carol is refused, though she has none.
    const busy = await get(h, carol, bobs, 'bytes=0-9');
    expect([busy.status, errCode(busy)]).toEqual([429, 'RATE_LIMITED']);
    expect((await http(h, 'GET', '/metrics')).text).toContain(
      'qalqon_file_refusals_total{code="RATE_LIMITED"} 2',
    );

    // Bob's reader goes away: his slot comes back, and Carol's download goes through.
    slow.destroy();
    await until(1);
    const fine = await get(h, carol, bobs, 'bytes=5-9');
    expect(fine.status).toBe(206);
    expect(fine.body.equals(big.subarray(5, 10))).toBe(true);

    // Alice's held upload completes; then her other upload is accepted.
    heldRequest!.end(data.subarray(CHUNK / 2));
    const r = await done;
    expect(r.status).toBe(200);
    await until(0);
    const again = await put(h, alice, other.id, Buffer.from(randomBytes(1000)), 0);
    expect(again.status).toBe(200);
  });
});
