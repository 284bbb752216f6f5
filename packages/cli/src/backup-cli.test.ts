/**
 * `qalqon admin backup|restore|export|export-read` with real parts: `server start` as a real
 * process on a real data directory (SQLCipher, local KMS key file), clients enrolled with the
 * CLI, a message left queued, the backup streamed over the admin socket, the server stopped,
 * the archive restored offline into new directories (with the old KMS key file and, apart,
 * with the recovery key alone), and the restored server started on the same port, where the
 * client's pinned profile still connects, the queued message arrives and a file sent before
 * the backup downloads intact. Tampered archives
 * and non-empty targets are refused with nothing written; exports carry no keys or bodies.
 */
import { type ChildProcess, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DEK_FILE, DekRegistry, LocalKms, openEmbeddedStorage } from '@qalqon/server';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { firstLine } from '../../../tests/support/ts-child.js';
import { formatProgress, progressLine } from './backup-commands.js';
import {
  addAndEnrol,
  cliHarness,
  oneJson,
  qalqon,
  qalqonTty,
  type Started,
  stopServer,
  TEST_PASSPHRASE,
  userNames,
  withoutKeystoreNotice,
} from './cli-harness.test-util.js';

const { tempDir, spawnQalqon, startServer } = cliHarness('qalqon-cli-backup-');
/** The escape character of the terminal's clear-to-end-of-line sequence. */
const ESC = String.fromCharCode(0x1b);

const previousPassphrase = process.env.QALQON_PASSPHRASE;
beforeAll(() => {
  process.env.QALQON_PASSPHRASE = TEST_PASSPHRASE;
});
afterAll(() => {
  if (previousPassphrase === undefined) delete process.env.QALQON_PASSPHRASE;
  else process.env.QALQON_PASSPHRASE = previousPassphrase;
});

interface Deployment {
  readonly dir: string;
  readonly data: string;
  readonly pin: string;
  readonly server: Started;
  readonly port: number;
}

async function deployment(): Promise<Deployment> {
  const dir = tempDir();
  const data = join(dir, 'data');
  const init = await qalqon('server', 'init', '--data', data, '--hostname', 'chat.example', '--json');
  expect(init.code, init.err).toBe(0);
  const pin = String(oneJson(init.out).pin);
  const server = await startServer(dir, data);
  return { dir, data, pin, server, port: Number(new URL(server.listening).port) };
}

/** `server start` on a given port; resolves with its first JSON line. */
async function startOn(
  dir: string,
  data: string,
  port: number,
): Promise<{ child: ChildProcess; pin: string }> {
  const child = spawnQalqon(dir, [
    'server',
    'start',
    '--data',
    data,
    '--listen',
    `127.0.0.1:${port}`,
    '--json',
  ]);
  const line = JSON.parse(await firstLine(child)) as { pin: string };
  return { child, pin: line.pin };
}

async function stop(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

interface AuditRow {
  action: string;
  outcome: string;
  detail?: Record<string, unknown>;
}

async function auditActions(data: string): Promise<AuditRow[]> {
  const r = await qalqon('admin', '--data', data, 'audit', 'list', '--json');
  expect(r.code, r.err).toBe(0);
  return (oneJson(r.out) as { records: AuditRow[] }).records;
}

describe('qalqon admin backup and restore', () => {
  it('restores users, devices and a queued message into a new directory that serves with the same pin', async () => {
    const d = await deployment();
    const server = { url: d.server.listening, pin: d.pin, data: d.data };
    const alice = join(d.dir, 'alice');
    const bob = join(d.dir, 'bob');
    await addAndEnrol(server, alice, 'alice');
    await addAndEnrol(server, bob, 'bob');
    const sent = await qalqon('send', '--profile', alice, '--to', 'bob', 'kept across a restore', '--json');
    expect(sent.code, sent.err).toBe(0);
    // A file too: its contents live in the data directory's files/, beside the database.
    const fileBytes = randomBytes(1_500_000);
    const filePath = join(d.dir, 'report.bin');
    writeFileSync(filePath, fileBytes);
    const sentFile = await qalqon('file', 'send', '--profile', alice, '--to', 'bob', filePath, '--json');
    expect(sentFile.code, sentFile.err).toBe(0);
    const fileId = String(oneJson(sentFile.out).fileId);
    const getFile = async (name: string) => {
      const target = join(d.dir, name);
      const g = await qalqon('file', 'get', '--profile', bob, fileId, '--out', target, '--json');
      expect(g.code, g.err).toBe(0);
      expect(readFileSync(target).equals(fileBytes)).toBe(true);
    };

    // The backup, with a recovery key; progress on the "terminal", one JSON object on stdout.
    const out = join(d.dir, 'backup.qarc');
    const b = await qalqonTty(
      true,
      'admin',
      '--data',
      d.data,
      'backup',
      '--out',
      out,
      '--recovery-key',
      '--json',
    );
    expect(b.code, b.err).toBe(0);
    const result = oneJson(b.out) as { archiveId: string; bytes: number; recoveryKey: string; kind: string };
    expect(result.kind).toBe('backup');
    expect(result.recoveryKey).toMatch(/^([A-Z2-7]{4}-){13}[A-Z2-7]{4}$/);
    expect(statSync(out).size).toBe(result.bytes);
    expect(statSync(out).mode & 0o777).toBe(0o600);
    expect(b.err).toMatch(new RegExp(`\rbackup: .* of .* \\(100%\\)${ESC}\\[K\n$`));
    expect(b.out).not.toContain('\r');
    expect(readdirSync(d.dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    // The recovery key is nowhere on disk.
    expect(readFileSync(out).includes(result.recoveryKey)).toBe(false);
    const backupRecords = (await auditActions(d.data)).filter((r) => r.action === 'backup');
    expect(backupRecords).toHaveLength(1);
    expect(backupRecords[0]!.detail).toMatchObject({ archiveId: result.archiveId, bytes: result.bytes });
    // An existing file is not overwritten.
    const again = await qalqon('admin', '--data', d.data, 'backup', '--out', out);
    expect(again.code).toBe(1);
    expect(again.err).toContain('already exists');

    await stopServer(d.server);

    // Restore with the old KMS key file (text output).
    const restored = join(d.dir, 'restored');
    const r = await qalqon(
      'admin',
      '--data',
      restored,
      'restore',
      '--in',
      out,
      '--kms-key-file',
      join(d.data, 'kms-master.key'),
    );
    expect(r.code, r.err).toBe(0);
    expect(r.out).toContain(`Restored archive ${result.archiveId} (from chat.example`);
    expect(r.out).toContain(`TLS certificate pin: ${d.pin}`);
    expect(r.err).toBe('');

    // Served on the same port: bob's pinned profile connects and gets the queued message.
    const s = await startOn(d.dir, restored, d.port);
    expect(s.pin).toBe(d.pin);
    expect(await userNames(restored)).toEqual(['admin', 'alice', 'bob']);
    const devices = await qalqon('admin', '--data', restored, 'device', 'list', 'bob', '--json');
    expect((oneJson(devices.out) as { devices: unknown[] }).devices).toHaveLength(1);
    const got = await qalqon('recv', '--profile', bob, '--json');
    expect(got.code, withoutKeystoreNotice(got.err)).toBe(0);
    expect(got.out, got.err).toContain('kept across a restore');
    await getFile('restored-copy.bin');
    const restoreRecords = (await auditActions(restored)).filter((x) => x.action === 'restore');
    expect(restoreRecords).toHaveLength(1);
    expect(restoreRecords[0]!.detail).toMatchObject({
      archiveId: result.archiveId,
      sourceHostname: 'chat.example',
      keySource: 'kms',
    });
    await stop(s.child);

    // Only the recovery key, from an environment variable; JSON output.
    process.env.QALQON_TEST_RECOVERY = result.recoveryKey;
    const viaRecovery = join(d.dir, 'via-recovery');
    try {
      const rr = await qalqon(
        'admin',
        '--data',
        viaRecovery,
        'restore',
        '--in',
        out,
        '--recovery-key-env',
        'QALQON_TEST_RECOVERY',
        '--json',
      );
      expect(rr.code, rr.err).toBe(0);
      expect(oneJson(rr.out)).toMatchObject({
        archiveId: result.archiveId,
        keySource: 'recovery-key',
        pin: d.pin,
        users: 3,
      });
      expect(rr.out).not.toContain(result.recoveryKey);
    } finally {
      delete process.env.QALQON_TEST_RECOVERY;
    }
    const s2 = await startOn(d.dir, viaRecovery, d.port);
    expect(s2.pin).toBe(d.pin);
    expect(await userNames(viaRecovery)).toEqual(['admin', 'alice', 'bob']);
    await getFile('recovered-copy.bin');
    await stop(s2.child);
    // The messages were not acknowledged in this copy (bob's client already has them, and would
    // not show them twice): they are still queued for bob's device, under the new KMS.
    const kms = await LocalKms.open(join(viaRecovery, 'kms-master.key'));
    const storage = await openEmbeddedStorage({ dataDir: viaRecovery, kms });
    try {
      const bobUser = await storage.findUserByName('bob');
      // The text message and the file's message.
      expect(await storage.fetchEnvelopes(bobUser!.id, 1)).toHaveLength(2);
    } finally {
      await storage.close();
      await kms.close();
    }

    // A mistyped recovery key (file) is told apart, and writes nothing.
    const typo = join(d.dir, 'typo.txt');
    writeFileSync(
      typo,
      `${result.recoveryKey.slice(0, -1)}${result.recoveryKey.endsWith('A') ? 'B' : 'A'}\n`,
    );
    const bad = await qalqon(
      'admin',
      '--data',
      join(d.dir, 'x'),
      'restore',
      '--in',
      out,
      '--recovery-key-file',
      typo,
    );
    expect(bad.code).toBe(1);
    expect(bad.err).toContain('(RECOVERY_KEY_INVALID)');
    expect(existsSync(join(d.dir, 'x'))).toBe(false);
  });

  it('refuses tampered archives and non-empty targets, writing nothing', async () => {
    const d = await deployment();
    const out = join(d.dir, 'backup.qarc');
    const b = await qalqon('admin', '--data', d.data, 'backup', '--out', out);
    expect(b.code, b.err).toBe(0);
    expect(b.out).toMatch(/^Backup written to .*: \d+ bytes, archive [0-9a-f]{32}\.\n$/);
    expect(b.err).toBe('');
    await stopServer(d.server);
    const good = readFileSync(out);
    const kmsKey = join(d.data, 'kms-master.key');
    const restore = async (name: string, bytes: Buffer) => {
      const p = join(d.dir, `${name}.qarc`);
      writeFileSync(p, bytes);
      const target = join(d.dir, `t-${name}`);
      const r = await qalqon('admin', '--data', target, 'restore', '--in', p, '--kms-key-file', kmsKey);
      expect(r.code, name).toBe(1);
      expect(existsSync(target), name).toBe(false);
      expect(
        readdirSync(d.dir).filter((f) => f.includes(`t-${name}`)),
        name,
      ).toEqual([]);
      return r.err;
    };
    const flip = (at: number) => {
      const x = Buffer.from(good);
      x[at]! ^= 0x01;
      return x;
    };
    expect(await restore('header', flip(good.indexOf('chat.example')))).toContain('(ARCHIVE_CORRUPT)');
    expect(await restore('middle', flip(Math.floor(good.length / 2)))).toContain('(ARCHIVE_CORRUPT)');
    expect(await restore('truncated', good.subarray(0, good.length - 100))).toContain('(ARCHIVE_CORRUPT)');
    expect(await restore('appended', Buffer.concat([good, Buffer.from('x')]))).toContain('(ARCHIVE_CORRUPT)');
    expect(await restore('magic', flip(0))).toContain('(ARCHIVE_INVALID)');

    const busy = join(d.dir, 'busy');
    mkdirSync(busy);
    writeFileSync(join(busy, 'other'), 'x');
    const r = await qalqon('admin', '--data', busy, 'restore', '--in', out, '--kms-key-file', kmsKey);
    expect(r.code).toBe(1);
    expect(r.err).toContain('(RESTORE_TARGET_NOT_EMPTY)');
    expect(readdirSync(busy)).toEqual(['other']);

    // Usage: no key source, or options that do not belong.
    expect((await qalqon('admin', '--data', join(d.dir, 'y'), 'restore', '--in', out)).code).toBe(2);
    expect((await qalqon('admin', '--data', d.data, 'backup', '--out', out, '--in', out)).code).toBe(2);
    expect((await qalqon('admin', '--data', d.data, 'user', 'list', '--recovery-key')).code).toBe(2);
  });
});

describe('qalqon admin export', () => {
  it('exports the directory, channels and audit log, encrypted, without keys or message bodies', async () => {
    const d = await deployment();
    const server = { url: d.server.listening, pin: d.pin, data: d.data };
    const alice = join(d.dir, 'alice');
    const bob = join(d.dir, 'bob');
    await addAndEnrol(server, alice, 'alice');
    await addAndEnrol(server, bob, 'bob');
    expect((await qalqon('admin', '--data', d.data, 'org', 'create', 'ops')).code).toBe(0);
    expect((await qalqon('admin', '--data', d.data, 'org', 'assign', 'ops', 'alice')).code).toBe(0);
    const ch = await qalqon('channel', 'create', '--profile', alice, 'general', '--json');
    expect(ch.code, withoutKeystoreNotice(ch.err)).toBe(0);
    const add = await qalqon('channel', 'add', '--profile', alice, 'general', 'bob', '--json');
    expect(add.code, withoutKeystoreNotice(add.err)).toBe(0);
    expect((await qalqon('send', '--profile', alice, '--to', 'bob', 'a secret for bob')).code).toBe(0);

    const out = join(d.dir, 'export.qarc');
    const e = await qalqon('admin', '--data', d.data, 'export', '--out', out, '--recovery-key', '--json');
    expect(e.code, e.err).toBe(0);
    const result = oneJson(e.out) as { archiveId: string; parts: string[]; recoveryKey: string };
    expect(result.parts).toEqual(['directory', 'channels', 'audit']);
    // No terminal, no progress.
    expect(e.err).toBe('');
    expect(readFileSync(out).includes('alice')).toBe(false);

    // Read back with the server's own KMS (--data), and with the recovery key alone.
    const read = await qalqon('admin', '--data', d.data, 'export-read', '--in', out, '--json');
    expect(read.code, read.err).toBe(0);
    const doc = oneJson(read.out) as {
      format: string;
      hostname: string;
      directory: {
        users: { name: string; units: string[]; devices: { deviceId: number; name: string }[] }[];
        orgUnits: { name: string; users: string[] }[];
        roles: { name: string }[];
      };
      channels: { name: string; members: { user: string; role: string }[] }[];
      audit: { records: { action: string }[]; verification: { ok: boolean } };
    };
    expect(doc.format).toBe('qalqon-export');
    expect(doc.hostname).toBe('chat.example');
    expect(doc.directory.users.map((u) => u.name).sort()).toEqual(['admin', 'alice', 'bob']);
    expect(doc.directory.users.find((u) => u.name === 'alice')).toMatchObject({ units: ['ops'] });
    expect(doc.directory.users.find((u) => u.name === 'bob')!.devices).toHaveLength(1);
    expect(doc.directory.orgUnits).toEqual([expect.objectContaining({ name: 'ops', users: ['alice'] })]);
    expect(doc.directory.roles.map((r) => r.name)).toContain('admin');
    expect(doc.channels).toEqual([
      expect.objectContaining({
        name: 'general',
        members: expect.arrayContaining([
          expect.objectContaining({ user: 'alice', role: 'manager' }),
          expect.objectContaining({ user: 'bob', role: 'member' }),
        ]),
      }),
    ]);
    expect(doc.audit.records.map((r) => r.action)).toEqual(
      expect.arrayContaining(['user.create', 'enrolment']),
    );
    expect(doc.audit.verification.ok).toBe(true);

    process.env.QALQON_TEST_EXPORT_KEY = result.recoveryKey;
    try {
      const viaRecovery = await qalqonTty(
        true,
        'admin',
        'export-read',
        '--in',
        out,
        '--recovery-key-env',
        'QALQON_TEST_EXPORT_KEY',
      );
      expect(viaRecovery.code, viaRecovery.err).toBe(0);
      expect(JSON.parse(viaRecovery.out)).toEqual(doc);
      expect(viaRecovery.err).toMatch(/\rreading: .*\(100%\)/);
    } finally {
      delete process.env.QALQON_TEST_EXPORT_KEY;
    }

    // Only some parts.
    const part = join(d.dir, 'dir-only.qarc');
    expect((await qalqon('admin', '--data', d.data, 'export', '--out', part, 'directory')).code).toBe(0);
    const partDoc = JSON.parse(
      (
        await qalqon(
          'admin',
          'export-read',
          '--in',
          part,
          '--kms-key-file',
          join(d.data, 'kms-master.key'),
          '--json',
        )
      ).out,
    ) as Record<string, unknown>;
    expect(partDoc.parts).toEqual(['directory']);
    expect(partDoc.channels).toBeUndefined();
    expect(partDoc.audit).toBeUndefined();
    expect(
      (await qalqon('admin', '--data', d.data, 'export', '--out', join(d.dir, 'z'), 'messages')).code,
    ).toBe(2);

    const exportRecords = (await auditActions(d.data)).filter((r) => r.action === 'export');
    expect(exportRecords.map((r) => r.detail?.what)).toEqual(['directory,channels,audit', 'directory']);

    // Search the export for every key and every queued body the server holds.
    await stopServer(d.server);
    const text = read.out;
    const kms = await LocalKms.open(join(d.data, 'kms-master.key'));
    const storage = await openEmbeddedStorage({ dataDir: d.data, kms });
    const secrets: Uint8Array[] = [];
    try {
      const registry = await DekRegistry.open(join(d.data, DEK_FILE), kms);
      for (const k of registry.list()) secrets.push(await registry.get(k.name));
      for (const u of await storage.listUsers()) {
        if (u.identityKey) secrets.push(u.identityKey);
        for (const dev of await storage.listDevices(u.id)) {
          secrets.push(dev.signedPrekey.publicKey, dev.signedPrekey.signature, dev.kyberPrekey.publicKey);
          if (dev.authKey) secrets.push(dev.authKey);
          for (const env of await storage.fetchEnvelopes(u.id, dev.deviceId)) secrets.push(env.body);
        }
      }
    } finally {
      await storage.close();
      await kms.close();
    }
    expect(secrets.length).toBeGreaterThan(8);
    for (const s of secrets) {
      const b = Buffer.from(s);
      for (const form of [
        b.toString('base64'),
        b.toString('hex'),
        b.toString('base64url'),
        b.subarray(1, 17).toString('base64'),
      ]) {
        expect(text.includes(form)).toBe(false);
      }
    }
    expect(text).not.toContain('a secret for bob');
  });

  it('formats progress, and draws it only on a terminal', () => {
    expect(formatProgress('backup', 0, 2048)).toBe('backup: 0 B of 2.0 KiB (0%)');
    expect(formatProgress('backup', 3 * 1024 * 1024, 6 * 1024 * 1024)).toBe(
      'backup: 3.0 MiB of 6.0 MiB (50%)',
    );
    let err = '';
    const io = {
      stdout: () => undefined,
      stderr: (t: string) => {
        err += t;
      },
    };
    const quiet = progressLine(io);
    quiet.update('backup', 1, 2);
    quiet.done();
    expect(err).toBe('');
    let t = 0;
    const p = progressLine({ ...io, stderrIsTTY: true }, () => t);
    p.update('verifying', 0, 100);
    p.update('verifying', 50, 100); // throttled: same time
    t = 500;
    p.update('verifying', 100, 100);
    p.update('restoring', 100, 100);
    p.done();
    expect(err).toBe(
      '\rverifying: 0 B of 100 B (0%)\x1b[K\rverifying: 100 B of 100 B (100%)\x1b[K\n\rrestoring: 100 B of 100 B (100%)\x1b[K\n',
    );
  });
});

describe('qalqon admin backup with PostgreSQL', () => {
  const ADMIN_URL = process.env.QALQON_TEST_POSTGRES_URL ?? 'postgresql://postgres@127.0.0.1:5432/test';
  const databases: string[] = [];
  const psql = (sql: string) =>
    execFileSync('psql', [ADMIN_URL, '-v', 'ON_ERROR_STOP=1', '-Atc', sql], { stdio: 'pipe' });
  afterEach(() => {
    for (const db of databases.splice(0)) psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  });

  it('refuses a backup (pg_dump is the way) but exports', async () => {
    const name = `qalqon_backup_${randomBytes(8).toString('hex')}`;
    psql(`CREATE DATABASE ${name}`);
    databases.push(name);
    const u = new URL(ADMIN_URL);
    u.pathname = `/${name}`;
    const dir = tempDir();
    const data = join(dir, 'data');
    const init = await qalqon('server', 'init', '--data', data, '--database-url', u.toString(), '--json');
    expect(init.code, init.err).toBe(0);
    const server = await startServer(dir, data);
    const out = join(dir, 'backup.qarc');
    const b = await qalqon('admin', '--data', data, 'backup', '--out', out);
    expect(b.code).toBe(1);
    expect(b.err).toContain('pg_dump');
    expect(b.err).toContain('(BAD_REQUEST)');
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    const failed = (await auditActions(data)).filter((r) => r.action === 'backup');
    expect(failed).toEqual([expect.objectContaining({ outcome: 'failed' })]);

    const e = await qalqon(
      'admin',
      '--data',
      data,
      'export',
      '--out',
      join(dir, 'e.qarc'),
      'directory',
      '--json',
    );
    expect(e.code, e.err).toBe(0);
    const read = await qalqon('admin', '--data', data, 'export-read', '--in', join(dir, 'e.qarc'), '--json');
    expect(read.code, read.err).toBe(0);
    expect(
      (oneJson(read.out) as { directory: { users: { name: string }[] } }).directory.users.map((x) => x.name),
    ).toEqual(['admin']);
    await stopServer(server);
  });
});
