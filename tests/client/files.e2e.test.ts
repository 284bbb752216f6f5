/**
 * End-to-end encrypted files: real profiles (SQLCipher, passphrase keystore) against a real
 * server over real TLS 1.3, nothing mocked.
 *
 * The clients reach the server through a relay this test runs (`Relay`): it holds the
 * server's own TLS key (so the pin matches: it plays the server, or someone who stole the
 * server's key), terminates TLS, and passes each HTTP exchange on to the real server over a
 * second TLS connection. Normally it changes nothing; on request it cuts a connection in the
 * middle of an upload or a download (a network failure), or flips a byte of, or cuts short,
 * a file's content on its way to the client (a malicious server). That is the only way to
 * alter what a pinned client receives, and it leaves the real server's storage untouched.
 */
import {
  appendFileSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import type { Server as NetServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer, type TLSSocket, connect as tlsConnect } from 'node:tls';
import {
  type ClientOptions,
  FILE_SEGMENT_BYTES,
  isClientError,
  QalqonClient,
  type ReceivedMessage,
  type ReceiveFailure,
} from '@qalqon/client';
import { randomBytes } from '@qalqon/crypto';
import {
  DATABASE_DEK,
  DEK_FILE,
  DekRegistry,
  LOCAL_KMS_FILE,
  LocalKms,
  openSqlcipher,
  DATABASE_FILE as SERVER_DATABASE_FILE,
  spkiPin,
} from '@qalqon/server';
import { isWireError } from '@qalqon/wire';
import { Jimp } from 'jimp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UPLOAD_PART_BYTES } from '../../packages/client/src/files.js';
import { testHooks } from '../../packages/client/src/test-hooks.js';
import { FILE_CHUNK_BYTES } from '../../packages/server/src/files/chunk-format.js';
import { FileStore } from '../../packages/server/src/files/file-store.js';
import { type Harness, startHarness } from '../../packages/server/src/service/harness.test-util.js';

const S = FILE_SEGMENT_BYTES;
const announceFile: NonNullable<typeof testHooks.announceFile> = (...args) =>
  testHooks.announceFile!(...args);
const PASSPHRASE = 'files e2e passphrase';

let h: Harness;
let root: string;
let relay: Relay;

/** What the relay does to the next matching exchange (each fault fires once unless `always`). */
interface Faults {
  /** Cut the connection after this many bytes of a PUT of file content have come from the client. */
  cutUploadAfter?: number;
  /** Cut the connection after this many bytes of a file-content answer's body. */
  cutDownloadAfter?: number;
  /** Flip one bit of this byte of a file-content answer's body. */
  flipDownloadByte?: number;
  /** Keep the fault for every matching exchange. */
  always?: boolean;
}

/** A TLS-terminating relay in front of the real server, holding the server's key. */
class Relay {
  readonly requests: string[] = [];
  faults: Faults = {};
  cuts = 0;
  readonly #server: NetServer;
  readonly #sockets = new Set<Socket>();
  port = 0;

  constructor(
    private readonly upstreamPort: number,
    tls: { certPem: string; keyPem: string },
  ) {
    this.#server = createTlsServer({ cert: tls.certPem, key: tls.keyPem, minVersion: 'TLSv1.3' }, (down) =>
      this.#relay(down),
    );
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    this.port = (this.#server.address() as { port: number }).port;
  }

  close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    return new Promise((r) => this.#server.close(() => r()));
  }

  #take(kind: keyof Faults): number | undefined {
    const v = this.faults[kind];
    if (typeof v !== 'number') return undefined;
    if (!this.faults.always) delete this.faults[kind];
    return v;
  }

  #relay(down: TLSSocket): void {
    const up = tlsConnect({ host: '127.0.0.1', port: this.upstreamPort, rejectUnauthorized: false });
    this.#sockets.add(down);
    this.#sockets.add(up);
    const cut = () => {
      this.cuts++;
      down.destroy();
      up.destroy();
    };
    down.on('close', () => {
      this.#sockets.delete(down);
      up.destroy();
    });
    up.on('close', () => {
      this.#sockets.delete(up);
      down.destroy();
    });
    down.on('error', () => undefined);
    up.on('error', () => undefined);
    // Client → server: note the request line; count the bytes of a content upload.
    let head = '';
    let isUpload = false;
    let isDownload = false;
    let uploadCut: number | undefined;
    let sentUp = 0;
    let downloadCut: number | undefined;
    let flipAt: number | undefined;
    down.on('data', (chunk: Buffer) => {
      if (head.indexOf('\r\n') < 0) {
        head += chunk.toString('latin1');
        const line = head.split('\r\n')[0]!;
        if (head.includes('\r\n')) {
          const range = /\r\n(?:content-)?range: ([^\r]*)/i.exec(head)?.[1];
          this.requests.push(range ? `${line} [${range}]` : line);
          isUpload = /^PUT \/v1\/files\/[0-9a-f]{32}\/content /.test(line);
          isDownload = /^GET \/v1\/files\/[0-9a-f]{32}\/content /.test(line);
          if (isUpload) uploadCut = this.#take('cutUploadAfter');
          if (isDownload) {
            downloadCut = this.#take('cutDownloadAfter');
            flipAt = this.#take('flipDownloadByte');
          }
        }
      }
      sentUp += chunk.length;
      if (isUpload && uploadCut !== undefined && sentUp > uploadCut) {
        up.write(chunk.subarray(0, chunk.length - (sentUp - uploadCut)), () => setTimeout(cut, 50));
        uploadCut = undefined;
        down.pause();
        return;
      }
      up.write(chunk);
    });
    // Server → client: find the body of a content answer and apply the download faults.
    let answerHead = Buffer.alloc(0);
    let bodySeen = -1;
    up.on('data', (chunk: Buffer) => {
      if (!isDownload || (downloadCut === undefined && flipAt === undefined)) {
        down.write(chunk);
        return;
      }
      let data = chunk;
      if (bodySeen < 0) {
        answerHead = Buffer.concat([answerHead, chunk]);
        const end = answerHead.indexOf('\r\n\r\n');
        if (end < 0) return;
        // Only successful answers carry file bytes.
        const ok = /^HTTP\/1\.1 20[06] /.test(answerHead.toString('latin1'));
        down.write(answerHead.subarray(0, end + 4));
        data = Buffer.from(answerHead.subarray(end + 4));
        bodySeen = 0;
        if (!ok) {
          downloadCut = undefined;
          flipAt = undefined;
        }
      }
      if (flipAt !== undefined && flipAt >= bodySeen && flipAt < bodySeen + data.length) {
        data = Buffer.from(data);
        data[flipAt - bodySeen]! ^= 0x01;
        flipAt = undefined;
      }
      if (downloadCut !== undefined && bodySeen + data.length > downloadCut) {
        down.write(data.subarray(0, downloadCut - bodySeen), () => setTimeout(cut, 50));
        downloadCut = undefined;
        up.pause();
        return;
      }
      bodySeen += data.length;
      down.write(data);
    });
  }
}

function opts(name: string): ClientOptions & { keystore: 'passphrase' } {
  return { profile: join(root, name), passphrase: () => PASSPHRASE, keystore: 'passphrase' };
}

async function enroll(name: string): Promise<QalqonClient> {
  return QalqonClient.enroll({
    ...opts(name),
    server: `https://127.0.0.1:${relay.port}`,
    pin: spkiPin(h.cert),
    code: (await h.addUser(name)).code,
  });
}

async function drain(c: QalqonClient): Promise<{ messages: ReceivedMessage[]; failures: ReceiveFailure[] }> {
  const messages: ReceivedMessage[] = [];
  const failures: ReceiveFailure[] = [];
  await c.receive({ onMessage: (m) => messages.push(m), onFailure: (f) => failures.push(f) });
  return { messages, failures };
}

let fileNo = 0;
/** A file of `size` bytes under a fresh directory; returns its path. */
function makeFile(size: number, name = `file-${++fileNo}.bin`, bytes?: Uint8Array): string {
  const dir = mkdtempSync(join(root, 'src-'));
  const path = join(dir, name);
  writeFileSync(path, bytes ?? randomBytes(size));
  return path;
}

function outPath(name = 'out.bin'): { dir: string; path: string } {
  const dir = mkdtempSync(join(root, 'out-'));
  return { dir, path: join(dir, name) };
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'qalqon-files-'));
  h = await startHarness();
  relay = new Relay(h.port, h.tls);
  await relay.listen();
});

afterAll(async () => {
  await relay?.close();
  await h?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('end-to-end encrypted files over real TLS with real profiles', () => {
  let alice: QalqonClient;
  let bob: QalqonClient;
  let carol: QalqonClient;

  afterAll(() => {
    for (const c of [alice, bob, carol]) c?.close();
  });

  it('enrols three users', async () => {
    alice = await enroll('alice');
    bob = await enroll('bob');
    carol = await enroll('carol');
  });

  it('sends files 1:1 of sizes around segment boundaries, which arrive and verify byte for byte', async () => {
    const sizes = [0, 1, S - 1, S, S + 1, 3 * S + 7, 1024 * 1024 + 5];
    const sent = [];
    for (const size of sizes) {
      const path = makeFile(size);
      const r = await alice.sendFile({ to: 'bob' }, path);
      expect(r).toMatchObject({ size, mime: 'application/octet-stream' });
      sent.push({ size, path, r });
    }
    const got = await drain(bob);
    expect(got.failures).toEqual([]);
    expect(got.messages.map((m) => m.file?.size)).toEqual(sizes);
    for (const [i, m] of got.messages.entries()) {
      const { path, r } = sent[i]!;
      expect(m).toMatchObject({ from: 'alice', channel: null, conversation: 'alice', text: '', id: r.id });
      expect(m.file).toMatchObject({ id: r.fileId, name: r.name, mime: 'application/octet-stream' });
      const out = outPath();
      const done = await bob.getFile(m.file!.id, out.path);
      expect(done).toMatchObject({ id: r.fileId, size: sent[i]!.size, path: out.path });
      expect(readFileSync(out.path).equals(readFileSync(path))).toBe(true);
      // Only the output: no temporary file is left beside it.
      expect(readdirSync(out.dir)).toEqual(['out.bin']);
      expect(statSync(out.path).mode & 0o777).toBe(0o600);
    }
    // The sender may fetch her own file too; a file nobody sent this profile is unknown.
    const own = outPath();
    await alice.getFile(sent[1]!.r.fileId, own.path);
    expect(readFileSync(own.path).equals(readFileSync(sent[1]!.path))).toBe(true);
    const unknown = await rejection(carol.getFile(sent[1]!.r.fileId, outPath().path));
    expect(isClientError(unknown, 'FILE_UNKNOWN')).toBe(true);
    // And the server does not let her have the ciphertext either.
    expect(isWireError(await rejection(carol.fileStatus(sent[1]!.r.fileId)), 'FILE_NOT_FOUND')).toBe(true);
    // An existing output path is never overwritten.
    const existing = outPath();
    writeFileSync(existing.path, 'mine');
    expect(
      isClientError(await rejection(bob.getFile(sent[1]!.r.fileId, existing.path)), 'INVALID_ARGUMENT'),
    ).toBe(true);
    expect(readFileSync(existing.path, 'utf8')).toBe('mine');
  });

  it('sends a file to a channel; a member removed before it was sent can neither read nor fetch it', async () => {
    await alice.createChannel('ops');
    await alice.addChannelMember('ops', 'bob');
    await alice.addChannelMember('ops', 'carol');
    const first = makeFile(2 * S + 3, 'plan.txt', new TextEncoder().encode('x'.repeat(2 * S + 3)));
    const r1 = await alice.sendFile({ channel: 'ops' }, first);
    expect(r1).toMatchObject({ name: 'plan.txt', size: 2 * S + 3 });
    for (const c of [bob, carol]) {
      const got = await drain(c);
      expect(got.failures).toEqual([]);
      const m = got.messages.find((x) => x.file !== undefined)!;
      expect(m).toMatchObject({ from: 'alice', channel: 'ops', file: { id: r1.fileId, name: 'plan.txt' } });
      const out = outPath();
      await c.getFile(m.file!.id, out.path);
      expect(readFileSync(out.path).equals(readFileSync(first))).toBe(true);
    }

    await alice.removeChannelMember('ops', 'carol');
    const second = makeFile(5000, 'after.bin');
    const r2 = await alice.sendFile({ channel: 'ops' }, second);
    const bobs = await drain(bob);
    expect(bobs.messages.map((m) => m.file?.id)).toEqual([r2.fileId]);
    const out = outPath();
    await bob.getFile(r2.fileId, out.path);
    expect(readFileSync(out.path).equals(readFileSync(second))).toBe(true);
    // Carol gets no message she can read, so no key ...
    const carols = await drain(carol);
    expect(carols.messages.filter((m) => m.file !== undefined)).toEqual([]);
    expect(isClientError(await rejection(carol.getFile(r2.fileId, outPath().path)), 'FILE_UNKNOWN')).toBe(
      true,
    );
    // ... and the server refuses her the ciphertext: she is no longer a member. The file
    // sent while she was one stays readable to her (she holds its key).
    expect(isWireError(await rejection(carol.fileStatus(r2.fileId)), 'FILE_NOT_FOUND')).toBe(true);
    expect((await bob.fileStatus(r2.fileId)).complete).toBe(true);
  });

  it("takes a file's key from its uploader's message, not from another sender who named its id first", async () => {
    // Carol learns a file's id and key as a channel member, and before its uploader
    // announces it to Bob, sends Bob a message naming the same id with a key of her own.
    await alice.createChannel('race');
    await alice.addChannelMember('race', 'carol');
    const path = makeFile(3 * S + 11, 'report.pdf');
    const r = await alice.sendFile({ channel: 'race' }, path);
    const carols = await drain(carol);
    expect(carols.messages.map((m) => m.file?.id)).toContain(r.fileId);
    const forgedKey = Buffer.from(randomBytes(32)).toString('base64');
    await announceFile(carol, 'bob', r.fileId, { key: forgedKey, name: 'invoice.pdf' });
    const first = await drain(bob);
    expect(first.failures).toEqual([]);
    expect(first.messages.find((m) => m.from === 'carol')?.file).toMatchObject({
      id: r.fileId,
      name: 'invoice.pdf',
    });
    // Carol's claim alone: the file is Alice's, so Bob has no key for it (and the server
    // does not let him have the ciphertext yet either).
    const before = await rejection(bob.getFile(r.fileId, outPath().path));
    expect(isClientError(before) || isWireError(before), String(before)).toBe(true);
    // Alice lets Bob in: the server now lets him read the file and names Alice as its
    // uploader, but the only claim he holds is Carol's. Refused by its code before any
    // content is fetched (Carol's key is never tried), and nothing is written.
    await alice.addChannelMember('race', 'bob');
    relay.requests.length = 0;
    const claimOnly = outPath();
    const refused = await rejection(bob.getFile(r.fileId, claimOnly.path));
    expect(isClientError(refused, 'FILE_UNKNOWN'), String(refused)).toBe(true);
    expect(relay.requests.some((l) => l.startsWith(`GET /v1/files/${r.fileId}/content`))).toBe(false);
    expect(readdirSync(claimOnly.dir)).toEqual([]);
    // Alice announces her file to him; her message arrives after Carol's.
    await announceFile(alice, 'bob', r.fileId);
    const second = await drain(bob);
    expect(second.failures).toEqual([]);
    expect(second.messages.find((m) => m.from === 'alice')?.file).toMatchObject({
      id: r.fileId,
      name: 'report.pdf',
    });
    const out = outPath();
    const got = await bob.getFile(r.fileId, out.path);
    expect(got).toMatchObject({ id: r.fileId, name: 'report.pdf', size: 3 * S + 11 });
    expect(readFileSync(out.path).equals(readFileSync(path))).toBe(true);
    expect(
      Buffer.from(await bob.readFile(r.fileId, S, 10)).equals(readFileSync(path).subarray(S, S + 10)),
    ).toBe(true);
    // The server names the uploader; a claim of someone else never supplies the key.
    expect((await bob.fileStatus(r.fileId)).uploaderId).toBe(alice.userId);
  });

  it('resumes an upload cut off mid-stream, from what the server holds', async () => {
    const size = 3 * 1024 * 1024 + 11;
    const path = makeFile(size);
    relay.requests.length = 0;
    const cutsBefore = relay.cuts;
    relay.faults = { cutUploadAfter: 1_500_000 };
    const r = await alice.sendFile({ to: 'bob' }, path);
    expect(relay.cuts).toBe(cutsBefore + 1);
    const puts = relay.requests.filter((l) => l.startsWith('PUT '));
    expect(puts.length).toBeGreaterThanOrEqual(2);
    // After the cut the client asked the server where to go on.
    expect(relay.requests.some((l) => l.startsWith(`GET /v1/files/${r.fileId} `))).toBe(true);
    const got = await drain(bob);
    expect(got.messages.map((m) => m.file?.id)).toEqual([r.fileId]);
    const out = outPath();
    await bob.getFile(r.fileId, out.path);
    expect(readFileSync(out.path).equals(readFileSync(path))).toBe(true);
  });

  it('sends a file larger than one request in parts that each end on a chunk boundary of the server', async () => {
    // Just over UPLOAD_PART_BYTES of ciphertext: two PUTs.
    const size = UPLOAD_PART_BYTES + 3 * 1024 * 1024;
    const path = makeFile(size);
    relay.requests.length = 0;
    const r = await alice.sendFile({ to: 'bob' }, path);
    const puts = relay.requests.filter((l) => l.startsWith(`PUT /v1/files/${r.fileId}/content `));
    expect(puts).toHaveLength(2);
    const ranges = puts.map((l) => /\[bytes (\d+)-(\d+)\/(\d+)\]$/.exec(l)!.slice(1).map(Number));
    const [[s0, e0, total], [s1, e1]] = ranges as [[number, number, number], [number, number]];
    expect(s0).toBe(0);
    expect((e0 + 1) % FILE_CHUNK_BYTES).toBe(0);
    expect(e0 + 1).toBeLessThanOrEqual(UPLOAD_PART_BYTES);
    expect([s1, e1 + 1]).toEqual([e0 + 1, total]);
    await drain(bob);
    const out = outPath();
    await bob.getFile(r.fileId, out.path);
    expect(readFileSync(out.path).equals(readFileSync(path))).toBe(true);
    rmSync(path);
    rmSync(out.dir, { recursive: true, force: true });
  }, 120_000);

  it('resumes a download cut off mid-stream with a Range request', async () => {
    const size = 2 * 1024 * 1024 + 100;
    const path = makeFile(size);
    const r = await alice.sendFile({ to: 'bob' }, path);
    await drain(bob);
    relay.requests.length = 0;
    relay.faults = { cutDownloadAfter: 700_000 };
    const out = outPath();
    const progress: number[] = [];
    await bob.getFile(r.fileId, out.path, { onProgress: (p) => progress.push(p.done) });
    expect(readFileSync(out.path).equals(readFileSync(path))).toBe(true);
    const gets = relay.requests.filter((l) => l.startsWith(`GET /v1/files/${r.fileId}/content`));
    expect(gets).toHaveLength(2);
    // Resumed at the first segment not yet verified (whole segments only), to the end.
    const m = /\[bytes=(\d+)-(\d+)\]$/.exec(gets[1]!);
    expect(m).not.toBeNull();
    expect(Number(m![1]) % (S + 16)).toBe(0);
    expect(Number(m![1])).toBeGreaterThan(0);
    expect(Number(m![1])).toBeLessThanOrEqual(700_000);
    expect(progress.at(-1)).toBe(size + 16 * Math.ceil(size / S));
  });

  it('refuses a download whose bytes were altered or cut short, leaving no output file', async () => {
    const path = makeFile(3 * S + 99);
    const r = await alice.sendFile({ to: 'bob' }, path);
    await drain(bob);
    // One flipped bit in the third segment.
    relay.faults = { flipDownloadByte: 2 * (S + 16) + 5 };
    const flipped = outPath();
    const err = await rejection(bob.getFile(r.fileId, flipped.path));
    expect(isClientError(err, 'FILE_INVALID'), String(err)).toBe(true);
    expect(readdirSync(flipped.dir)).toEqual([]);
    // Every answer cut short (a server that withholds the end): refused after the retries.
    relay.faults = { cutDownloadAfter: 10, always: true };
    const cut = outPath();
    const err2 = await rejection(bob.getFile(r.fileId, cut.path));
    relay.faults = {};
    expect(isClientError(err2), String(err2)).toBe(true);
    expect(readdirSync(cut.dir)).toEqual([]);
    // A range read of the altered part is refused as well, and the intact file still verifies.
    relay.faults = { flipDownloadByte: 10 };
    expect(isClientError(await rejection(bob.readFile(r.fileId, 2 * S, 100)), 'FILE_INVALID')).toBe(true);
    expect(
      Buffer.from(await bob.readFile(r.fileId, 2 * S, 100)).equals(
        readFileSync(path).subarray(2 * S, 2 * S + 100),
      ),
    ).toBe(true);
    const ok = outPath();
    await bob.getFile(r.fileId, ok.path);
    expect(readFileSync(ok.path).equals(readFileSync(path))).toBe(true);
  }, 30_000);

  it('abandons an upload whose source changes while it is read', async () => {
    const path = makeFile(4 * 1024 * 1024);
    const before = await alice.fileUsage();
    let touched = false;
    const err = await rejection(
      alice.sendFile({ to: 'bob' }, path, {
        onProgress: (p) => {
          if (!touched && p.phase === 'upload' && p.done > 0) {
            touched = true;
            appendFileSync(path, 'more');
          }
        },
      }),
    );
    expect(isClientError(err, 'FILE_CHANGED'), String(err)).toBe(true);
    // The partial upload was deleted: it holds none of her quota.
    expect((await alice.fileUsage()).used).toBe(before.used);
    // No message announced it.
    const got = await drain(bob);
    expect(got.messages).toEqual([]);
  });

  it('makes, uploads and announces a thumbnail of a PNG', async () => {
    const image = new Jimp({ width: 600, height: 400, color: 0x3366ccff });
    for (let x = 0; x < 600; x += 7) for (let y = 0; y < 400; y += 5) image.setPixelColor(0xff0000ff, x, y);
    const png = await image.getBuffer('image/png');
    const path = makeFile(png.length, 'photo.png', png);
    const r = await alice.sendFile({ to: 'bob' }, path);
    expect(r.mime).toBe('image/png');
    expect(r.thumbnail).toMatchObject({ width: 256, height: 171 });
    const got = await drain(bob);
    const m = got.messages[0]!;
    expect(m.file).toMatchObject({
      name: 'photo.png',
      mime: 'image/png',
      size: png.length,
      thumbnail: { id: r.thumbnail!.fileId, width: 256, height: 171, mime: 'image/png' },
    });
    const thumb = outPath('thumb.png');
    await bob.getFile(m.file!.thumbnail!.id, thumb.path);
    const decoded = await Jimp.read(thumb.path);
    expect([decoded.width, decoded.height]).toEqual([256, 171]);
    const full = outPath('photo.png');
    await bob.getFile(m.file!.id, full.path);
    expect(readFileSync(full.path).equals(png)).toBe(true);
    // Not an image: no thumbnail.
    const notImage = makeFile(1000, 'notes.png');
    expect((await alice.sendFile({ to: 'bob' }, notImage)).thumbnail).toBeUndefined();
    await drain(bob);
  });

  it('leaves neither the name nor any plaintext of a file in what the server stores', async () => {
    const marker = 'QALQON-PLAINTEXT-MARKER-7f3a9c';
    const name = 'secret-merger-plan-4b1d.txt';
    const text = `${marker}\n`.repeat(20_000);
    const path = makeFile(0, name, new TextEncoder().encode(text));
    const r = await alice.sendFile({ to: 'bob' }, path);
    expect(r.name).toBe(name);
    const got = await drain(bob);
    expect(got.messages[0]!.file).toMatchObject({ name, size: text.length });
    // What the client uploaded (its ciphertext), as the server's file store hands it back: the
    // server seals it again at rest, so not even that may appear on disk.
    const stored = (await h.storage.getFile(r.fileId))!;
    const uploaded: Buffer[] = [];
    for await (const c of new FileStore({ storage: h.storage, kms: h.kms }).read(stored, 0, 4095))
      uploaded.push(c);
    const ciphertextPrefix = Buffer.concat(uploaded).subarray(0, 64);
    expect(ciphertextPrefix.includes(Buffer.from(marker))).toBe(false);
    // Every file the server wrote (the database, the blobs in files/), raw ...
    const needles = [Buffer.from(marker), Buffer.from(name), Buffer.from('merger-plan'), ciphertextPrefix];
    const scan = (dir: string) => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const p = join(dir, e.name);
        if (e.isDirectory()) scan(p);
        else if (e.isFile()) {
          const bytes = readFileSync(p);
          for (const n of needles) expect(bytes.includes(n), `${p} holds ${n.toString('hex')}`).toBe(false);
        }
      }
    };
    scan(h.dir);
    expect(readdirSync(join(h.dir, 'files'))).toContain(r.fileId);
    // ... and its database opened with its key, every value of every table.
    const kms = await LocalKms.open(join(h.dir, LOCAL_KMS_FILE));
    try {
      const registry = await DekRegistry.open(join(h.dir, DEK_FILE), kms);
      const dbKey = await registry.get(DATABASE_DEK);
      const db = openSqlcipher(join(h.dir, SERVER_DATABASE_FILE), dbKey);
      dbKey.fill(0);
      try {
        const tables = (
          db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]
        ).map((t) => t.name);
        expect(tables.some((t) => t.includes('file'))).toBe(true);
        for (const t of tables) {
          for (const row of db.prepare(`SELECT * FROM "${t}"`).all() as Record<string, unknown>[]) {
            for (const v of Object.values(row)) {
              const bytes =
                typeof v === 'string' ? Buffer.from(v) : v instanceof Uint8Array ? Buffer.from(v) : undefined;
              if (!bytes) continue;
              for (const n of needles)
                expect(bytes.includes(n), `${t} holds ${n.toString('hex')}`).toBe(false);
            }
          }
        }
      } finally {
        db.close();
      }
    } finally {
      await kms.close();
    }
    for (const line of h.logs) expect(line.includes(name)).toBe(false);
  });
});
