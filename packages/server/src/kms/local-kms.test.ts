/**
 * The local KMS and the DEK registry: file custody (0600, refusals) and the file's contents
 * here; the behaviour every KMS owes (wrapping bound to key version and context, rotation,
 * destroy, DekRegistry rotation, no key bytes in errors) in kms-contract.test-util.ts.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { DEK_FILE, DekRegistry } from './dek-registry.js';
import { expectCode, kmsContract } from './kms-contract.test-util.js';
import { LOCAL_KMS_FILE, LocalKms } from './local-kms.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'qalqon-kms-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** The base64 of every KEK in a key file: must never show up in an error message. */
function kekSecrets(path: string): string[] {
  const f = JSON.parse(readFileSync(path, 'utf8')) as { keys: { key: string }[] };
  return f.keys.flatMap((k) => [k.key, Buffer.from(k.key, 'base64').toString('hex')]);
}

const dek = () => new Uint8Array(randomBytes(32));

kmsContract('LocalKms', () => {
  let path: string | undefined;
  return {
    provider: 'local',
    create: async (clock) => {
      path = join(tempDir(), LOCAL_KMS_FILE);
      return LocalKms.create(path, clock);
    },
    reopen: async () => LocalKms.open(path!),
    secrets: () => (path ? kekSecrets(path) : []),
  };
});

describe('LocalKms', () => {
  it('creates a 0600 key file and wraps and unwraps across a reopen', async () => {
    const path = join(tempDir(), LOCAL_KMS_FILE);
    const kms = await LocalKms.create(path, () => 42);
    expect((statSync(path).mode & 0o777).toString(8)).toBe('600');
    const d = await kms.describe();
    expect(d).toMatchObject({ provider: 'local', location: path });
    expect(d.keys).toEqual([{ id: d.activeKeyId, createdAt: 42, active: true }]);
    const key = dek();
    const wrapped = await kms.wrap(key, 'dek:database');
    expect(wrapped.keyId).toBe(d.activeKeyId);
    expect(wrapped.ciphertext).toHaveLength(60);
    expect(Buffer.from(wrapped.ciphertext).includes(Buffer.from(key))).toBe(false);
    // Fresh nonce per wrap: the same key wraps differently each time.
    expect((await kms.wrap(key, 'dek:database')).ciphertext).not.toEqual(wrapped.ciphertext);
    await kms.close();
    const again = await LocalKms.open(path);
    expect(await again.unwrap(wrapped)).toEqual(key);
    await again.close();
  });

  it('refuses to create over an existing key file', async () => {
    const path = join(tempDir(), LOCAL_KMS_FILE);
    await (await LocalKms.create(path)).close();
    const before = readFileSync(path);
    await expectCode(LocalKms.create(path), 'KMS_KEY_FILE_INVALID');
    expect(readFileSync(path).equals(before)).toBe(true);
  });

  it('refuses a key file readable or writable by group or others, a symlink, or an open directory', async () => {
    const dir = tempDir();
    const path = join(dir, LOCAL_KMS_FILE);
    await (await LocalKms.create(path)).close();
    for (const mode of [0o640, 0o604, 0o620, 0o660, 0o644]) {
      chmodSync(path, mode);
      const err = await expectCode(LocalKms.open(path), 'KMS_KEY_FILE_INSECURE');
      expect(err.message).toContain('chmod 600');
    }
    chmodSync(path, 0o600);
    const link = join(dir, 'link.key');
    symlinkSync(path, link);
    await expectCode(LocalKms.open(link), 'KMS_KEY_FILE_INSECURE');
    chmodSync(dir, 0o777);
    await expectCode(LocalKms.open(path), 'KMS_KEY_FILE_INSECURE');
    chmodSync(dir, 0o700);
    await (await LocalKms.open(path)).close();
    await expectCode(LocalKms.open(join(dir, 'missing.key')), 'KMS_KEY_FILE_INVALID');
  });

  it('refuses malformed key files without quoting them', async () => {
    const dir = tempDir();
    const path = join(dir, LOCAL_KMS_FILE);
    const secret = randomBytes(32).toString('base64');
    const cases = [
      `{"format":"qalqon-local-kms","version":1,"active":"a","keys":[{"id":"a","createdAt":0,"key":"${secret}"}`,
      `{"format":"other","version":1,"active":"a","keys":[{"id":"a","createdAt":0,"key":"${secret}"}]}`,
      `{"format":"qalqon-local-kms","version":2,"active":"a","keys":[{"id":"a","createdAt":0,"key":"${secret}"}]}`,
      `{"format":"qalqon-local-kms","version":1,"active":"b","keys":[{"id":"a","createdAt":0,"key":"${secret}"}]}`,
      `{"format":"qalqon-local-kms","version":1,"active":"a","keys":[{"id":"a","createdAt":0,"key":"${secret.slice(4)}"}]}`,
      `{"format":"qalqon-local-kms","version":1,"active":"a","keys":[]}`,
      `{"format":"qalqon-local-kms","version":1,"active":"a","keys":[{"id":"a b","createdAt":0,"key":"${secret}"}]}`,
    ];
    for (const text of cases) {
      writeFileSync(path, text, { mode: 0o600 });
      const err = await expectCode(LocalKms.open(path), 'KMS_KEY_FILE_INVALID');
      expect(err.message).not.toContain(secret);
      expect(err.message).not.toContain(secret.slice(4, 20));
      rmSync(path);
    }
  });

  it('rotation and destroy rewrite the key file, which stays 0600', async () => {
    const path = join(tempDir(), LOCAL_KMS_FILE);
    const kms = await LocalKms.create(path);
    const first = (await kms.describe()).activeKeyId;
    const second = await kms.rotate();
    expect(kekSecrets(path)).toHaveLength(4);
    await kms.destroy(first);
    expect(kekSecrets(path)).toHaveLength(2);
    expect((statSync(path).mode & 0o777).toString(8)).toBe('600');
    expect(JSON.parse(readFileSync(path, 'utf8'))).toMatchObject({ active: second, keys: [{ id: second }] });
    await kms.close();
  });
});

describe('DekRegistry', () => {
  async function setup() {
    const dir = tempDir();
    const kms = await LocalKms.create(join(dir, LOCAL_KMS_FILE));
    return { dir, kms, path: join(dir, DEK_FILE) };
  }

  it('creates random DEKs once, persists them wrapped (0600), and returns the same after reopen', async () => {
    const { kms, path } = await setup();
    const reg = await DekRegistry.open(path, kms, () => 7);
    const a = await reg.getOrCreate('database');
    const b = await reg.getOrCreate('fields-1');
    expect(a).toHaveLength(32);
    expect(a).not.toEqual(b);
    expect(await reg.getOrCreate('database')).toEqual(a);
    expect((statSync(path).mode & 0o777).toString(8)).toBe('600');
    const text = readFileSync(path, 'utf8');
    expect(text).not.toContain(Buffer.from(a).toString('base64'));
    expect(text).not.toContain(Buffer.from(a).toString('hex'));
    const again = await DekRegistry.open(path, kms);
    expect(await again.get('database')).toEqual(a);
    expect(again.list().map((i) => [i.name, i.createdAt])).toEqual([
      ['database', 7],
      ['fields-1', 7],
    ]);
    await expectCode(again.get('lookup'), 'DEK_NOT_FOUND');
    await expectCode(again.get('Bad Name'), 'INVALID_ARGUMENT');
    await kms.close();
  });

  it('entries cannot be swapped between names', async () => {
    const { kms, path } = await setup();
    const reg = await DekRegistry.open(path, kms);
    await reg.getOrCreate('database');
    await reg.getOrCreate('fields-1');
    const f = JSON.parse(readFileSync(path, 'utf8')) as { keys: Record<string, unknown> };
    [f.keys.database, f.keys['fields-1']] = [f.keys['fields-1'], f.keys.database];
    writeFileSync(path, JSON.stringify(f));
    const swapped = await DekRegistry.open(path, kms);
    await expectCode(swapped.get('database'), 'KMS_UNWRAP_FAILED');
    await kms.close();
  });

  it('refuses a malformed file with DEK_FILE_INVALID', async () => {
    const { kms, path } = await setup();
    for (const text of ['not json', '{"format":"qalqon-data-keys","version":1,"keys":{"x y":{}}}', '[]']) {
      writeFileSync(path, text);
      await expectCode(DekRegistry.open(path, kms), 'DEK_FILE_INVALID');
    }
    await kms.close();
  });
});
