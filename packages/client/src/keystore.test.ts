/**
 * Where the database key lives: the OS secure store (a real gnome-keyring Secret Service on
 * a private D-Bus, see secret-service.test-util.ts), or sealed under a passphrase with
 * scrypt + AES-256-GCM. And the database itself: SQLCipher, so its bytes carry no plaintext.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeBase64 } from '@qalqon/wire';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isClientError } from './errors.js';
import { createDatabaseKey, loadDatabaseKey, osEntry, SCRYPT_N, unwrapKey, wrapKey } from './keystore.js';
import { type SecretService, startSecretService } from './secret-service.test-util.js';
import { openDatabase } from './store.js';

const KEY_ID = '0123456789abcdef0123456789abcdef';
let root: string;
let secrets: SecretService | undefined;

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'qalqon-keystore-'));
});
afterAll(async () => {
  await secrets?.stop();
  rmSync(root, { recursive: true, force: true });
});

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isClientError(err) ? err.code : `not a ClientError: ${String(err)}`;
  }
  return undefined;
}

describe('passphrase keystore (scrypt + AES-256-GCM)', () => {
  const key = new Uint8Array(32).map((_, i) => i * 7);
  const wrapped = wrapKey(key, 'pass phrase', KEY_ID);

  it('opens with the passphrase, and with nothing else', () => {
    expect(wrapped.N).toBe(SCRYPT_N);
    expect(unwrapKey(wrapped, 'pass phrase', KEY_ID)).toEqual(key);
    expect(codeOf(() => unwrapKey(wrapped, 'pass phrasE', KEY_ID))).toBe('PASSPHRASE_WRONG');
    // Bound to its profile: the same sealed key under another key id does not open.
    expect(codeOf(() => unwrapKey(wrapped, 'pass phrase', 'f'.repeat(32)))).toBe('PASSPHRASE_WRONG');
    const flipped = Buffer.from(wrapped.sealed, 'base64');
    flipped[3]! ^= 1;
    expect(
      codeOf(() => unwrapKey({ ...wrapped, sealed: flipped.toString('base64') }, 'pass phrase', KEY_ID)),
    ).toBe('PASSPHRASE_WRONG');
  });

  it('refuses tampered parameters before deriving anything (no gigabyte scrypt from a settings file)', () => {
    for (const bad of [
      { ...wrapped, N: 2 ** 30 },
      { ...wrapped, N: 3 },
      { ...wrapped, r: 1024 },
      { ...wrapped, salt: 'AAAA' },
      { ...wrapped, nonce: 'not base64!' },
      { ...wrapped, kdf: 'pbkdf2' as 'scrypt' },
    ]) {
      expect(codeOf(() => unwrapKey(bad, 'pass phrase', KEY_ID))).toBe('PROFILE_CORRUPT');
    }
  });

  it('never puts the key or the passphrase in the sealed form', () => {
    const text = JSON.stringify(wrapped);
    expect(text).not.toContain('pass phrase');
    expect(text).not.toContain(encodeBase64(key));
    expect(text).not.toContain(Buffer.from(key).toString('hex'));
  });

  it('asks for a passphrase and says it is the weaker mode', async () => {
    const notices: string[] = [];
    await expect(
      createDatabaseKey(KEY_ID, { kind: 'passphrase', notice: (l) => notices.push(l) }),
    ).rejects.toMatchObject({
      code: 'PASSPHRASE_REQUIRED',
    });
    expect(notices.join()).toMatch(/weaker/);
    const made = await createDatabaseKey(KEY_ID, { kind: 'passphrase', passphrase: () => 'pw' });
    expect(
      await loadDatabaseKey(KEY_ID, 'passphrase', made.wrapped, {
        kind: 'passphrase',
        passphrase: () => 'pw',
      }),
    ).toEqual(made.key);
  });
});

describe('OS secure store', () => {
  // (The refusal without a reachable store is in keystore-unavailable.test.ts: the binding
  // keeps the D-Bus address it first saw for the life of the process.)
  it('keeps the key in gnome-keyring (Secret Service) and nowhere else', async () => {
    secrets = await startSecretService();
    const made = await createDatabaseKey(KEY_ID, { kind: 'os' });
    expect(made.wrapped).toBeUndefined();
    // The Secret Service really holds it (the entry is pinned there, no keyutils fallback).
    expect(osEntry(KEY_ID).getPassword()).toBe(encodeBase64(made.key));
    expect(await loadDatabaseKey(KEY_ID, 'os', undefined, { kind: 'os' })).toEqual(made.key);

    // A database keyed with it: no plaintext in its bytes, and another key does not open it.
    const dir = mkdtempSync(join(root, 'db-'));
    const db = openDatabase(dir, made.key, true);
    db.prepare(
      "INSERT INTO messages VALUES ('u', 'm', 'alice', 1, 'bob', NULL, 'a very secret plaintext marker', 1, 1, 1)",
    ).run();
    db.close();
    const bytes = Buffer.concat(readdirSync(dir).map((f) => readFileSync(join(dir, f))));
    expect(bytes.length).toBeGreaterThan(0);
    expect(bytes.includes(Buffer.from('secret plaintext marker'))).toBe(false);
    expect(bytes.includes(Buffer.from('CREATE TABLE'))).toBe(false);
    expect(() => openDatabase(dir, new Uint8Array(32).fill(1), false)).toThrow(
      expect.objectContaining({ code: 'DATABASE_UNREADABLE' }),
    );
    const reopened = openDatabase(dir, made.key, false);
    expect(reopened.prepare('SELECT text FROM messages').get()).toEqual({
      text: 'a very secret plaintext marker',
    });
    reopened.close();

    // Once the store forgets the key, the profile says so rather than guessing.
    osEntry(KEY_ID).deletePassword();
    await expect(loadDatabaseKey(KEY_ID, 'os', undefined, { kind: 'os' })).rejects.toMatchObject({
      code: 'KEYSTORE_KEY_MISSING',
    });
  });
});
