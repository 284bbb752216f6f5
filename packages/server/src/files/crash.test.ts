/**
 * Crash consistency of uploads on the embedded backend, with a real process killed by
 * SIGKILL: a child process streams a file into FileStore (real SQLCipher database, real blob
 * files) and prints the file's `received` each time a batch is stored, which is what a
 * sender would be told. It is killed at an arbitrary moment mid-upload; the parent then
 * opens the same data directory (as a restarted server), finds at least every byte that
 * was acknowledged (a multiple of the chunk size), resumes the upload from `received`
 * (overwriting whatever the kill left past it in the blob) and reads back exactly the
 * source bytes. Also: the data directory never holds a recognisable piece of the upload.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from '@qalqon/crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { childRunner, sourceUrl } from '../../../../tests/support/ts-child.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { openEmbeddedStorage } from '../storage/embedded.js';
import { FILES_DIR } from '../storage/file-blobs.js';
import { FILE_CHUNK_BYTES } from './chunk-format.js';
import { FileStore } from './file-store.js';

const CHUNK = FILE_CHUNK_BYTES;
const dirs: string[] = [];
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** Every file under `dir`, recursively. */
function allFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' })
    .map((f) => join(dir, f))
    .filter((p) => statSync(p).isFile());
}

async function* streamed(data: Uint8Array, from: number): AsyncGenerator<Uint8Array> {
  for (let at = from; at < data.length; at += 300_000)
    yield data.subarray(at, Math.min(data.length, at + 300_000));
}

describe('uploads killed by SIGKILL', () => {
  it('keep every acknowledged byte, resume from received and end with exactly the source', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qalqon-files-crash-'));
    dirs.push(dir);
    const dataDir = join(dir, 'data');
    const data = new Uint8Array(randomBytes(60 * CHUNK + 4321));
    const source = join(dir, 'source.bin');
    writeFileSync(source, data);

    let kms = await LocalKms.create(join(dataDir, LOCAL_KMS_FILE));
    let storage = await openEmbeddedStorage({ dataDir, kms });
    const owner = await storage.createUser({ name: 'alice' });
    const file = await new FileStore({ storage, kms }).create(owner.id, data.length, {
      kind: 'users',
      userIds: [owner.id],
    });
    await storage.close();
    await kms.close();

    const script = `
import { readFileSync } from 'node:fs';
import { LocalKms } from ${JSON.stringify(sourceUrl('server', 'kms/local-kms.ts'))};
import { openEmbeddedStorage } from ${JSON.stringify(sourceUrl('server', 'storage/embedded.ts'))};
import { FileStore } from ${JSON.stringify(sourceUrl('server', 'files/file-store.ts'))};
const [dataDir, fileId, source] = process.argv.slice(2);
const kms = await LocalKms.open(dataDir + '/kms-master.key');
const storage = await openEmbeddedStorage({ dataDir, kms });
const data = readFileSync(source);
let received = 0;
const files = new FileStore({ storage, kms, onBytes: (direction, bytes) => {
  // Called once a batch is stored (synced and committed): the sender's receipt.
  received += bytes;
  process.stdout.write(received + '\\n');
} });
const f = await files.get(fileId);
// Slow pieces, so the kill lands in the middle of the upload.
async function* body() {
  for (let at = 0; at < data.length; at += 256 * 1024) {
    yield data.subarray(at, Math.min(data.length, at + 256 * 1024));
    await new Promise((r) => setTimeout(r, 3));
  }
}
await files.upload(f, 0, data.length, body());
process.stdout.write('done\\n');
`;
    const child = childRunner(dir)(script, [dataDir, file.id, source]);
    children.push(child);
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
    });
    const closed = new Promise<string | null>((resolve) =>
      child.on('close', (_code, signal) => resolve(signal)),
    );
    // Two batches acknowledged, then a kill at an arbitrary moment of the third or later.
    await new Promise<void>((resolve, reject) => {
      const check = () => {
        if (out.split('\n').filter((l) => /^\d+$/.test(l)).length >= 2) {
          child.stdout?.off('data', check);
          resolve();
        }
      };
      child.stdout?.on('data', check);
      child.once('close', () => reject(new Error(`the child ended early: ${out} ${err.slice(0, 800)}`)));
    });
    await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 120)));
    child.kill('SIGKILL');
    expect(await closed).toBe('SIGKILL');
    expect(out).not.toContain('done');
    const acked = Math.max(
      ...out
        .split('\n')
        .filter((l) => /^\d+$/.test(l))
        .map(Number),
    );
    expect(acked).toBeGreaterThan(0);

    // "Restarted": every acknowledged byte is there, and only whole chunks.
    kms = await LocalKms.open(join(dataDir, LOCAL_KMS_FILE));
    storage = await openEmbeddedStorage({ dataDir, kms });
    try {
      const files = new FileStore({ storage, kms });
      const after = (await files.get(file.id))!;
      expect(after.received).toBeGreaterThanOrEqual(acked);
      expect(after.received % CHUNK).toBe(0);
      expect(after.received).toBeLessThan(data.length);
      // The blob may hold more than `received` (what the kill interrupted); resuming overwrites it.
      const done = await files.upload(
        after,
        after.received,
        data.length - after.received,
        streamed(data, after.received),
      );
      expect(done.complete).toBe(true);
      const parts: Buffer[] = [];
      for await (const c of files.read(done, 0, data.length - 1)) parts.push(c);
      expect(Buffer.concat(parts).equals(Buffer.from(data))).toBe(true);

      // Nothing of the plaintext sits in the data directory: no 64-byte piece of it, anywhere.
      const probes = [0, CHUNK - 10, 17 * CHUNK + 5, data.length - 64].map((at) =>
        Buffer.from(data.subarray(at, at + 64)),
      );
      const onDisk = allFiles(dataDir);
      expect(onDisk).toContain(join(dataDir, FILES_DIR, file.id));
      for (const p of onDisk) {
        const bytes = readFileSync(p);
        for (const probe of probes) expect(bytes.includes(probe), p).toBe(false);
      }
    } finally {
      await storage.close();
      await kms.close();
    }
  }, 60_000);
});
