/**
 * Without a reachable OS secure store the client refuses, unless the user chose the
 * passphrase keystore. A file of its own: @napi-rs/keyring keeps the first D-Bus address it
 * sees for the life of the process, so this cannot share a process with a working store.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QalqonClient } from './client.js';
import { createDatabaseKey } from './keystore.js';

let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'qalqon-nostore-'));
  // A session bus address where nothing listens: the Secret Service is unreachable.
  process.env.DBUS_SESSION_BUS_ADDRESS = `unix:path=${join(root, 'no-bus')}`;
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('no OS secure store', () => {
  it('refuses when no secure store is reachable, and a profile is not half-created', async () => {
    const KEY_ID = '0123456789abcdef0123456789abcdef';
    await expect(createDatabaseKey(KEY_ID, { kind: 'os' })).rejects.toMatchObject({
      code: 'KEYSTORE_UNAVAILABLE',
    });
    const dir = join(root, 'refused');
    await expect(
      QalqonClient.enroll({ profile: dir, server: 'https://127.0.0.1:9', code: 'x'.repeat(20) }),
    ).rejects.toMatchObject({ code: 'KEYSTORE_UNAVAILABLE' });
    expect(readdirSync(dir)).toEqual([]);
  });

  it('never falls back to the in-memory kernel keyring (a reboot would lose the profile)', async () => {
    await expect(createDatabaseKey('fedcba9876543210fedcba9876543210', { kind: 'os' })).rejects.toMatchObject(
      {
        code: 'KEYSTORE_UNAVAILABLE',
      },
    );
  });

  it('creates the profile in passphrase mode instead, and says so', async () => {
    const notices: string[] = [];
    const made = await createDatabaseKey('00000000000000000000000000000001', {
      kind: 'passphrase',
      passphrase: () => 'pw',
      notice: (l) => notices.push(l),
    });
    expect(made.wrapped?.kdf).toBe('scrypt');
    expect(notices.join()).toMatch(/weaker than the OS secure store/);
  });
});
