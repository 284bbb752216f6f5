/**
 * The embedded backend across real processes: several server processes fetching bundles
 * from one database file at once never share a one-time prekey, and an envelope whose
 * enqueue returned survives SIGKILL of the process at an arbitrary moment.
 *
 * The children run this package's TypeScript sources through a tiny module loader that
 * transpiles with the repository's `typescript` (Node 20 cannot strip types itself), so no
 * build is needed, as for every other test.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { childRunner } from '../../../../tests/support/ts-child.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { openEmbeddedStorage } from './embedded.js';
import type { NewDevice } from './types.js';

const storageDir = fileURLToPath(new URL('./', import.meta.url));

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setupDir(): { dir: string; run: (script: string, args: string[]) => ChildProcess } {
  const dir = mkdtempSync(join(tmpdir(), 'qalqon-proc-'));
  dirs.push(dir);
  const spawnChild = childRunner(dir);
  const run = (script: string, args: string[]) => {
    const child = spawnChild(script, args);
    children.push(child);
    return child;
  };
  return { dir, run };
}

function collect(
  child: ChildProcess,
): Promise<{ code: number | null; signal: string | null; out: string; err: string }> {
  let out = '';
  let err = '';
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
  });
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, out, err })));
}

/** Resolves once the child has written at least `n` complete lines to stdout. */
function linesAtLeast(child: ChildProcess, n: number): Promise<void> {
  let lines = 0;
  return new Promise((resolve, reject) => {
    const onData = (d: Buffer) => {
      lines += d.toString().split('\n').length - 1;
      if (lines >= n) {
        child.stdout?.off('data', onData);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.once('close', () => reject(new Error(`child exited after ${lines} lines`)));
  });
}

const imports = `
import { LocalKms } from ${JSON.stringify(pathToFileURL(join(storageDir, '../kms/local-kms.ts')).href)};
import { openEmbeddedStorage } from ${JSON.stringify(pathToFileURL(join(storageDir, 'embedded.ts')).href)};
const [dataDir, userId] = process.argv.slice(2);
const kms = await LocalKms.open(dataDir + '/kms-master.key');
const storage = await openEmbeddedStorage({ dataDir, kms });
`;

function ecKey(): Uint8Array {
  const k = new Uint8Array(randomBytes(33));
  k[0] = 0x05;
  return k;
}

async function userWithPrekeys(dataDir: string, count: number) {
  const kms = await LocalKms.create(join(dataDir, LOCAL_KMS_FILE));
  const s = await openEmbeddedStorage({ dataDir, kms });
  const user = await s.createUser({ name: 'alice' });
  const code = randomBytes(16).toString('hex');
  await s.createEnrolmentCode({ userId: user.id, code, expiresAt: Date.now() + 60_000 });
  const kyber = new Uint8Array(randomBytes(1569));
  kyber[0] = 0x08;
  const device: NewDevice = {
    name: 'd',
    registrationId: 1,
    identityKey: ecKey(),
    signedPrekey: { id: 1, publicKey: ecKey(), signature: new Uint8Array(64) },
    kyberPrekey: { id: 1, publicKey: kyber, signature: new Uint8Array(64) },
    oneTimePrekeys: Array.from({ length: count }, (_, i) => ({ id: i + 1, publicKey: ecKey() })),
  };
  await s.enrolDevice({ code, device });
  await s.close();
  return { kms, userId: user.id };
}

describe('embedded storage across processes', () => {
  it('three processes fetching bundles at once never get the same one-time prekey', async () => {
    const { dir, run } = setupDir();
    const dataDir = join(dir, 'data');
    const total = 300;
    const { kms, userId } = await userWithPrekeys(dataDir, total);
    const script = `${imports}
// Start together: say ready, then wait for the parent's go, so the fetches overlap.
process.stdout.write('ready\\n');
await new Promise((resolve) => process.stdin.once('data', resolve));
const ids = [];
for (;;) {
  const [b] = await storage.fetchPrekeyBundles(userId);
  if (!b.oneTimePrekey) break;
  ids.push(b.oneTimePrekey.id);
  // A real server spaces requests out; without a pause one process can hold the lock
  // back to back while SQLite's busy handler leaves the others asleep.
  await new Promise((resolve) => setTimeout(resolve, 1));
}
await storage.close();
process.stdout.write(JSON.stringify(ids));
process.stdin.destroy();
`;
    const procs = [0, 1, 2].map(() => run(script, [dataDir, userId]));
    const finished = procs.map(collect);
    await Promise.all(procs.map((c) => linesAtLeast(c, 1)));
    for (const c of procs) c.stdin?.write('go\n');
    const results = await Promise.all(finished);
    const all: number[] = [];
    const perProcess: number[][] = [];
    for (const r of results) {
      expect(r.err).toBe('');
      expect(r.code).toBe(0);
      const ids = JSON.parse(r.out.split('\n')[1]!) as number[];
      perProcess.push(ids);
      all.push(...ids);
    }
    expect(all).toHaveLength(total);
    expect(new Set(all).size).toBe(total);
    // Each process really took part (otherwise this proves nothing about concurrency).
    for (const ids of perProcess) expect(ids.length).toBeGreaterThan(0);
    await kms.close();
  });

  it('an envelope whose enqueue returned survives SIGKILL', async () => {
    const { dir, run } = setupDir();
    const dataDir = join(dir, 'data');
    const { kms, userId } = await userWithPrekeys(dataDir, 1);
    const script = `${imports}
for (let i = 0; ; i++) {
  const [r] = await storage.enqueue([{ recipientUserId: userId, recipientDeviceId: 1, senderUserId: userId,
    senderDeviceId: 1, body: new TextEncoder().encode('message ' + i) }]);
  // Acknowledge only after enqueue returned: this line is the sender's receipt.
  process.stdout.write(r.id + '\\n');
}
`;
    const child = run(script, [dataDir, userId]);
    const done = collect(child);
    // Kill mid-stream once a few hundred sends were acknowledged.
    await linesAtLeast(child, 300);
    child.kill('SIGKILL');
    const r = await done;
    expect(r.signal).toBe('SIGKILL');
    const acked = r.out.split('\n').filter((l) => /^[0-9a-f]{32}$/.test(l));
    expect(acked.length).toBeGreaterThanOrEqual(300);
    const s = await openEmbeddedStorage({ dataDir, kms });
    const stored = new Set<string>();
    for (let after = 0; ; ) {
      const page = await s.fetchEnvelopes(userId, 1, { afterSeq: after, limit: 1000 });
      if (page.length === 0) break;
      for (const e of page) stored.add(e.id);
      after = page[page.length - 1]!.seq;
    }
    for (const id of acked) expect(stored.has(id), id).toBe(true);
    const stats = await s.mailboxStats(userId, 1);
    expect(stats.count).toBe(stored.size);
    await s.close();
    await kms.close();
  });
});
