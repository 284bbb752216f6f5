/**
 * A large file streams through the server without being buffered: a 256 MiB upload and its
 * download (QALQON_FILE_MEMORY_TEST_MIB=512 for more), sent and received by a separate client process so
 * only the server's memory is in this one. Every 250 ms this process collects garbage and
 * samples its live heap and external (Buffer) memory: the growth must stay a small multiple
 * of the chunk size, where buffering the file anywhere would show its whole size. The bytes
 * are checked end to end by SHA-256 on both sides.
 */
import { spawn } from 'node:child_process';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { FileStatus } from '@qalqon/wire';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { enrol, type Harness, http, signIn, startHarness } from '../service/harness.test-util.js';
import { FILE_CHUNK_BYTES } from './chunk-format.js';

const MiB = 1024 * 1024;
const SIZE = Number(process.env.QALQON_FILE_MEMORY_TEST_MIB ?? 256) * MiB + 12_345;
/**
 * Allowed growth of live heap + external memory over the baseline while streaming: 32 chunks
 * (an upload holds two batches of UPLOAD_BATCH_BYTES, 8 MiB; a download two reads of four
 * chunks and their copies, 16 MiB; seen: 11-21 MiB, with collected buffers not all freed at
 * each sample), an eighth of the file's size.
 */
const MAX_GROWTH = 32 * FILE_CHUNK_BYTES;

setFlagsFromString('--expose-gc');
/** A full collection, so a sample counts what is live, not garbage awaiting collection. */
const gc = runInNewContext('gc') as () => void;

/** The client: uploads SIZE bytes of a pattern in one PUT, then downloads them; prints both digests. */
const CLIENT = `
const https = require('node:https');
const crypto = require('node:crypto');
const { PORT, CERT, TOKEN, FILE_ID } = process.env;
const size = Number(process.env.SIZE);
const pool = crypto.randomBytes(4 << 20);
const PIECE = 256 * 1024;
const piece = (k, n) => { const off = (k * 131071) % (3 << 20); return pool.subarray(off, off + n); };
const tls = { host: '127.0.0.1', port: Number(PORT), ca: CERT, servername: 'localhost', agent: false };
function upload() {
  const h = crypto.createHash('sha256');
  return new Promise((resolve, reject) => {
    const req = https.request({ ...tls, method: 'PUT', path: '/v1/files/' + FILE_ID + '/content', headers: {
      authorization: 'Bearer ' + TOKEN, 'content-type': 'application/octet-stream',
      'content-range': 'bytes 0-' + (size - 1) + '/' + size, 'content-length': String(size) } }, (res) => {
      let b = ''; res.on('data', (d) => (b += d));
      res.on('end', () => res.statusCode === 200 ? resolve(h.digest('hex')) : reject(new Error(res.statusCode + ' ' + b)));
    });
    req.on('error', reject);
    let sent = 0, k = 0;
    const pump = () => {
      while (sent < size) {
        const p = piece(k++, Math.min(PIECE, size - sent));
        h.update(p); sent += p.length;
        if (!req.write(p)) { req.once('drain', pump); return; }
      }
      req.end();
    };
    pump();
  });
}
function download() {
  const h = crypto.createHash('sha256');
  return new Promise((resolve, reject) => {
    https.get({ ...tls, path: '/v1/files/' + FILE_ID + '/content', headers: { authorization: 'Bearer ' + TOKEN } }, (res) => {
      let n = 0;
      res.on('data', (d) => { h.update(d); n += d.length; });
      res.on('end', () => res.statusCode === 200 && n === size ? resolve(h.digest('hex')) : reject(new Error(res.statusCode + ' ' + n)));
      res.on('error', reject);
    }).on('error', reject);
  });
}
(async () => {
  const t0 = Date.now();
  const sent = await upload();
  const t1 = Date.now();
  const got = await download();
  process.stdout.write(JSON.stringify({ sent, got, uploadMs: t1 - t0, downloadMs: Date.now() - t1 }));
})().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
`;

function runClient(env: Record<string, string>): Promise<{
  sent: string;
  got: string;
  uploadMs: number;
  downloadMs: number;
}> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', CLIENT], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(JSON.parse(out));
      else reject(new Error(`client failed (${code}): ${err.slice(0, 500)}`));
    });
  });
}

describe('streaming a large file', () => {
  let h: Harness;
  beforeAll(async () => {
    h = await startHarness();
  });
  afterAll(async () => {
    await h.close();
  });

  it(`uploads and downloads ${Math.round(SIZE / MiB)} MiB with bounded server memory`, async () => {
    const e = await enrol(h, (await h.addUser('alice')).code);
    const token = await signIn(h, e);
    const transfer = async (size: number) => {
      const r = await http(h, 'POST', '/v1/files', { size, to: ['alice'] }, { token });
      expect(r.status, r.text).toBe(200);
      const id = FileStatus.parse(r.json).id;
      const result = await runClient({
        PORT: String(h.port),
        CERT: h.cert,
        TOKEN: token,
        FILE_ID: id,
        SIZE: String(size),
      });
      expect(result.got).toBe(result.sent);
      const st = FileStatus.parse((await http(h, 'GET', `/v1/files/${id}`, undefined, { token })).json);
      expect(st).toMatchObject({ received: size, complete: true });
      return result;
    };
    const used = () => {
      const m = process.memoryUsage();
      return m.heapUsed + m.external;
    };
    // A small transfer first: what the first one loads and compiles is not the file's cost.
    await transfer(4 * FILE_CHUNK_BYTES + 1);
    gc();
    const baseline = used();
    let peak = baseline;
    let samples = 0;
    const sampler = setInterval(() => {
      gc();
      peak = Math.max(peak, used());
      samples++;
    }, 100);
    let result: Awaited<ReturnType<typeof transfer>>;
    try {
      result = await transfer(SIZE);
    } finally {
      clearInterval(sampler);
    }
    const growth = peak - baseline;
    console.log(
      `streamed ${Math.round(SIZE / MiB)} MiB: upload ${result.uploadMs} ms, download ${result.downloadMs} ms, ` +
        `server live memory growth ${(growth / MiB).toFixed(1)} MiB at most (${samples} samples)`,
    );
    // The sampler must have run during the transfer (at least 0.5 s of it), not only around it.
    expect(samples).toBeGreaterThanOrEqual(5);
    expect(growth).toBeLessThan(MAX_GROWTH);
  }, 60_000);
});
