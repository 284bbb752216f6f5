/**
 * The profile database's schema upgrade, on real SQLCipher files: a version-1 profile (the
 * 1:1 client) opened by this code becomes version 3 (channels, files) with every row kept; an
 * upgrade that fails leaves the file as it was; a version newer than this code is refused.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from '@qalqon/crypto';
import Database from 'better-sqlite3-multiple-ciphers';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isClientError } from './errors.js';
import { DATABASE_FILE, openDatabase, SCHEMA_STEPS, SCHEMA_V1, SCHEMA_VERSION } from './store.js';

let dir: string;
let key: Uint8Array;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'qalqon-store-'));
  key = randomBytes(32);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** Opens the file with the profile's cipher settings but without any schema handling. */
function rawOpen(): Database.Database {
  const db = new Database(join(dir, DATABASE_FILE));
  db.pragma(`cipher='sqlcipher'`);
  db.pragma('legacy=4');
  db.pragma(`key="x'${Buffer.from(key).toString('hex')}'"`);
  return db;
}

/** A profile database as the version-1 client wrote it, with some history in it. */
function writeVersion1(extra?: string): void {
  const db = rawOpen();
  db.exec(SCHEMA_V1);
  if (extra) db.exec(extra);
  db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('user_name', 'alice');
  db.prepare('INSERT INTO contacts (user_id, name, identity_key, verified) VALUES (?, ?, ?, 1)').run(
    'b'.repeat(32),
    'bob',
    Buffer.alloc(33, 5),
  );
  db.prepare(
    'INSERT INTO messages (sender_user_id, message_id, sender_name, sender_device, peer, channel, text, sent_at, received_at, displayed) VALUES (?, ?, ?, 1, ?, NULL, ?, 1, 2, 0)',
  ).run('b'.repeat(32), 'c'.repeat(32), 'bob', 'bob', 'hello from version 1');
  db.pragma('user_version=1');
  db.close();
}

function tables(db: Database.Database): string[] {
  return (
    db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as {
      name: string;
    }[]
  ).map((r) => r.name);
}

describe('profile database schema', () => {
  it('is at version 4 with the channel and file tables', () => {
    expect(SCHEMA_VERSION).toBe(4);
    expect(SCHEMA_STEPS[0]).toBe(SCHEMA_V1);
  });

  it('upgrades a version-1 profile to version 4, keeping every row', () => {
    writeVersion1();
    const db = openDatabase(dir, key, false);
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(4);
      expect(tables(db)).toEqual(
        expect.arrayContaining([
          'meta',
          'contacts',
          'messages',
          'sessions',
          'channels',
          'channel_log',
          'channel_members',
          'channel_own_keys',
          'channel_key_holders',
          'channel_sender_keys',
          'files',
        ]),
      );
      expect(db.prepare('SELECT value FROM meta WHERE key = ?').get('user_name')).toEqual({ value: 'alice' });
      expect(db.prepare('SELECT name, verified FROM contacts').all()).toEqual([{ name: 'bob', verified: 1 }]);
      expect(db.prepare('SELECT text, displayed FROM messages').all()).toEqual([
        { text: 'hello from version 1', displayed: 0 },
      ]);
      // The new tables are usable (STRICT: wrong types are refused).
      db.prepare('INSERT INTO channels (id, name, seq, head, last_remove_seq) VALUES (?, ?, 0, ?, -1)').run(
        'd'.repeat(32),
        'ops',
        'e'.repeat(64),
      );
      expect(() =>
        db
          .prepare('INSERT INTO channels (id, name, seq, head, last_remove_seq) VALUES (?, ?, ?, ?, -1)')
          .run('f'.repeat(32), 'x', 'not a number', 'e'.repeat(64)),
      ).toThrow();
    } finally {
      db.close();
    }
    // Opening again is a no-op: same version, same rows.
    const again = openDatabase(dir, key, false);
    try {
      expect(again.pragma('user_version', { simple: true })).toBe(4);
      expect(again.prepare('SELECT count(*) AS n FROM channels').get()).toEqual({ n: 1 });
      expect(again.prepare('SELECT count(*) AS n FROM messages').get()).toEqual({ n: 1 });
    } finally {
      again.close();
    }
    // Still an encrypted file: no SQLite header, no message text in the clear.
    const bytes = readFileSync(join(dir, DATABASE_FILE));
    expect(bytes.subarray(0, 15).toString('latin1')).not.toBe('SQLite format 3');
    expect(bytes.includes(Buffer.from('hello from version 1'))).toBe(false);
  });

  it('creates a new profile at version 4 directly', () => {
    const db = openDatabase(dir, key, true);
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(4);
      expect(tables(db)).toEqual(expect.arrayContaining(['messages', 'channels', 'channel_sender_keys']));
    } finally {
      db.close();
    }
  });

  it('upgrades a version-3 profile to version 4: file keys kept, and one per (file, sender)', () => {
    const raw = rawOpen();
    for (const step of SCHEMA_STEPS.slice(0, 3)) raw.exec(step);
    const row = (fileId: string, sender: string, keyByte: number, thumbnailOf: string | null) => [
      fileId,
      sender,
      'c'.repeat(32),
      Buffer.alloc(32, keyByte),
      10,
      Buffer.alloc(32, 1),
      'a.png',
      'image/png',
      thumbnailOf,
      null,
      null,
    ];
    const insert =
      'INSERT INTO files (file_id, sender_user_id, message_id, key, size, sha256, name, mime, thumbnail_of, width, height) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)';
    raw.prepare(insert).run(...row('1'.repeat(32), 'a'.repeat(32), 7, null));
    raw.prepare(insert).run(...row('2'.repeat(32), 'a'.repeat(32), 8, '1'.repeat(32)));
    // Version 3: a second sender's claim on the same id was ignored.
    expect(
      raw
        .prepare(insert.replace('INSERT', 'INSERT OR IGNORE'))
        .run(...row('1'.repeat(32), 'b'.repeat(32), 9, null)).changes,
    ).toBe(0);
    raw.pragma('user_version=3');
    raw.close();
    const db = openDatabase(dir, key, false);
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(4);
      const rows = db
        .prepare('SELECT file_id, sender_user_id, key, thumbnail_of FROM files ORDER BY file_id')
        .all() as {
        file_id: string;
        key: Buffer;
        thumbnail_of: string | null;
      }[];
      expect(rows.map((r) => [r.file_id, r.thumbnail_of, Buffer.from(r.key)[0]])).toEqual([
        ['1'.repeat(32), null, 7],
        ['2'.repeat(32), '1'.repeat(32), 8],
      ]);
      // Now another sender's claim is a row of its own, and a sender's own second claim is ignored.
      const ins = db.prepare(insert.replace('INSERT', 'INSERT OR IGNORE'));
      expect(ins.run(...row('1'.repeat(32), 'b'.repeat(32), 9, null)).changes).toBe(1);
      expect(ins.run(...row('1'.repeat(32), 'a'.repeat(32), 10, null)).changes).toBe(0);
      expect(
        (
          db
            .prepare('SELECT key FROM files WHERE file_id = ? AND sender_user_id = ?')
            .get('1'.repeat(32), 'a'.repeat(32)) as {
            key: Buffer;
          }
        ).key[0],
      ).toBe(7);
    } finally {
      db.close();
    }
  });

  it('leaves a version-1 profile untouched when the upgrade fails', () => {
    // A table in the way of the upgrade: the step fails half-way, and nothing of it may stay.
    writeVersion1('CREATE TABLE channel_sender_keys (x INTEGER);');
    let err: unknown;
    try {
      openDatabase(dir, key, false).close();
    } catch (e) {
      err = e;
    }
    expect(err).toBeDefined();
    const db = rawOpen();
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(1);
      expect(tables(db)).not.toContain('channels');
      expect(tables(db)).not.toContain('channel_log');
      expect(db.prepare('SELECT text FROM messages').all()).toEqual([{ text: 'hello from version 1' }]);
    } finally {
      db.close();
    }
  });

  it('refuses a profile of a newer version, without changing it', () => {
    writeVersion1();
    const raw = rawOpen();
    raw.pragma('user_version=5');
    raw.close();
    let err: unknown;
    try {
      openDatabase(dir, key, false).close();
    } catch (e) {
      err = e;
    }
    expect(isClientError(err, 'PROFILE_CORRUPT')).toBe(true);
    expect((err as Error).message).toContain('5');
    const db = rawOpen();
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(5);
      expect(tables(db)).not.toContain('channels');
    } finally {
      db.close();
    }
  });

  it('refuses the wrong key before looking at the schema', () => {
    writeVersion1();
    let err: unknown;
    try {
      openDatabase(dir, randomBytes(32), false).close();
    } catch (e) {
      err = e;
    }
    expect(isClientError(err, 'DATABASE_UNREADABLE')).toBe(true);
  });
});
