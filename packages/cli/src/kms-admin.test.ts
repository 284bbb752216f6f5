/**
 * `server init --kms pkcs11` and the `admin kms status|rotate|destroy` commands with real
 * parts: a SoftHSM2 token made with softhsm2-util in a temporary SOFTHSM2_CONF directory,
 * `server init` and `server start` as real processes of the CLI's own entry point (they
 * inherit SOFTHSM2_CONF and the PIN variable from this process's environment), and the
 * admin commands reaching the running server through its Unix socket. The same commands
 * are checked with the local KMS.
 *
 * If SoftHSM2 is missing the suite fails rather than skips, as pkcs11-kms.test.ts does.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cliHarness, healthz, oneJson, qalqon, stopServer, userNames } from './cli-harness.test-util.js';

const { tempDir, runQalqon, startServer } = cliHarness('qalqon-cli-kms-');

const MODULE_CANDIDATES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib64/pkcs11/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
];
const INSTALL_HINT =
  'SoftHSM2 is required for the PKCS#11 KMS tests: install it with `apt-get install softhsm2`';

const PIN_ENV = 'QALQON_CLI_TEST_HSM_PIN';
const USER_PIN = `user-${randomBytes(6).toString('hex')}`;
const SO_PIN = `so-${randomBytes(6).toString('hex')}`;
const DEK_NAMES = ['audit-signing', 'database', 'fields-1', 'lookup', 'session-mac'];

const previousConf = process.env.SOFTHSM2_CONF;
let modulePath = '';
let hsmRoot = '';
let tokenCount = 0;

beforeAll(() => {
  const found = MODULE_CANDIDATES.find((p) => existsSync(p));
  if (!found) throw new Error(`${INSTALL_HINT} (no libsofthsm2.so in ${MODULE_CANDIDATES.join(', ')})`);
  modulePath = found;
  hsmRoot = mkdtempSync(join(tmpdir(), 'qalqon-cli-softhsm-'));
  mkdirSync(join(hsmRoot, 'tokens'), { mode: 0o700 });
  const conf = join(hsmRoot, 'softhsm2.conf');
  writeFileSync(
    conf,
    `directories.tokendir = ${join(hsmRoot, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`,
  );
  // Inherited by softhsm2-util and by every child process spawned below.
  process.env.SOFTHSM2_CONF = conf;
  process.env[PIN_ENV] = USER_PIN;
});

afterAll(() => {
  if (hsmRoot) rmSync(hsmRoot, { recursive: true, force: true });
  delete process.env[PIN_ENV];
  if (previousConf === undefined) delete process.env.SOFTHSM2_CONF;
  else process.env.SOFTHSM2_CONF = previousConf;
});

function newToken(): string {
  const label = `qalqon-cli-${++tokenCount}`;
  try {
    execFileSync(
      'softhsm2-util',
      ['--init-token', '--free', '--label', label, '--so-pin', SO_PIN, '--pin', USER_PIN],
      { stdio: 'pipe', env: process.env },
    );
  } catch (err) {
    throw new Error(`${INSTALL_HINT} (softhsm2-util --init-token failed: ${(err as Error).message})`);
  }
  return label;
}

interface KmsStatus {
  provider: string;
  location: string;
  activeKeyId: string;
  keyVersions: { keyId: string; createdAt: number; active: boolean; wrappedKeys: number }[];
}

async function kmsStatus(data: string): Promise<KmsStatus> {
  const r = await qalqon('admin', '--data', data, 'kms', 'status', '--json');
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  const j = oneJson(r.out) as unknown as KmsStatus;
  expect(Object.keys(j).sort()).toEqual(['activeKeyId', 'keyVersions', 'location', 'provider']);
  return j;
}

async function kmsRotate(
  data: string,
): Promise<{ previousKeyId: string; activeKeyId: string; rewrapped: number }> {
  const r = await qalqon('admin', '--data', data, 'kms', 'rotate', '--json');
  expect(r.err).toBe('');
  expect(r.code).toBe(0);
  const j = oneJson(r.out) as { previousKeyId: string; activeKeyId: string; rewrapped: number };
  expect(Object.keys(j).sort()).toEqual(['activeKeyId', 'previousKeyId', 'rewrapped', 'rewrappedFileKeys']);
  return j;
}

/** The KEK version each data key in data-keys.json is wrapped under, by name. */
function wrappedUnder(data: string): Record<string, string> {
  const f = JSON.parse(readFileSync(join(data, 'data-keys.json'), 'utf8')) as {
    keys: Record<string, { keyId: string }>;
  };
  return Object.fromEntries(Object.entries(f.keys).map(([name, e]) => [name, e.keyId]));
}

/** Every data key under `keyId`; before the first start, `session-mac` does not exist yet. */
function allUnder(keyId: string, started = true): Record<string, string> {
  return Object.fromEntries(DEK_NAMES.filter((n) => started || n !== 'session-mac').map((n) => [n, keyId]));
}

describe('qalqon server init --kms pkcs11 (SoftHSM2) and admin kms', () => {
  it('keeps the KEK in the token, rotates and destroys versions over the admin socket, and restarts', async () => {
    const dir = tempDir();
    const data = join(dir, 'data');
    const label = newToken();

    const init = await runQalqon(dir, [
      'server',
      'init',
      '--data',
      data,
      '--kms',
      'pkcs11',
      '--pkcs11-module',
      modulePath,
      '--pkcs11-token',
      label,
      '--pkcs11-pin-env',
      PIN_ENV,
      '--json',
    ]);
    expect(init.err).toBe('');
    expect(init.code).toBe(0);
    const initJson = oneJson(init.out) as {
      kms: { provider: string; location: string; activeKeyId: string };
    };
    expect(initJson.kms.provider).toBe('pkcs11');
    expect(initJson.kms.location).toBe(`pkcs11:token=${label}?module-path=${modulePath}`);
    expect(initJson.kms.activeKeyId).toMatch(/^qalqon-kek-[0-9a-f]{16}$/);
    const firstKek = initJson.kms.activeKeyId;

    // The config names the token and where the PIN comes from, never the PIN; no key file exists.
    const configText = readFileSync(join(data, 'config.json'), 'utf8');
    expect(JSON.parse(configText).kms).toEqual({
      provider: 'pkcs11',
      module: modulePath,
      tokenLabel: label,
      pin: { env: PIN_ENV },
    });
    expect(existsSync(join(data, 'kms-master.key'))).toBe(false);
    expect(wrappedUnder(data)).toEqual(allUnder(firstKek, false));

    let server = await startServer(dir, data);
    expect(await healthz(server.listening)).toBe(200);

    const before = await kmsStatus(data);
    expect(before.provider).toBe('pkcs11');
    expect(before.location).toBe(initJson.kms.location);
    expect(before.activeKeyId).toBe(firstKek);
    expect(before.keyVersions).toEqual([
      { keyId: firstKek, createdAt: expect.any(Number), active: true, wrappedKeys: 5, wrappedFileKeys: 0 },
    ]);
    expect((await qalqon('admin', '--data', data, 'user', 'add', 'bob', '--json')).code).toBe(0);

    const rotated = await kmsRotate(data);
    expect(rotated.previousKeyId).toBe(firstKek);
    expect(rotated.activeKeyId).toMatch(/^qalqon-kek-[0-9a-f]{16}$/);
    expect(rotated.activeKeyId).not.toBe(firstKek);
    expect(rotated.rewrapped).toBe(5);
    const secondKek = rotated.activeKeyId;

    const after = await kmsStatus(data);
    expect(after.activeKeyId).toBe(secondKek);
    expect(after.keyVersions.map((k) => [k.keyId, k.active, k.wrappedKeys])).toEqual([
      [firstKek, false, 0],
      [secondKek, true, 5],
    ]);
    expect(wrappedUnder(data)).toEqual(allUnder(secondKek));
    const human = await qalqon('admin', '--data', data, 'kms', 'status');
    expect(human.out).toContain(`${secondKek}\tactive\t`);
    expect(human.out).toContain('wraps 5 data key(s), 0 file key(s)');

    // The active version is never destroyed; an unknown one is reported as such.
    const active = await qalqon('admin', '--data', data, 'kms', 'destroy', secondKek, '--json');
    expect(active.code).toBe(1);
    expect(active.out).toBe('');
    expect(active.err).toBe(
      `qalqon: KEK version ${secondKek} is active; rotate before destroying it (BAD_REQUEST).\n`,
    );
    const unknown = await qalqon('admin', '--data', data, 'kms', 'destroy', 'qalqon-kek-0000000000000000');
    expect(unknown.code).toBe(1);
    expect(unknown.err).toMatch(
      /^qalqon: KEK version qalqon-kek-0{16} is not held by this KMS \(NOT_FOUND\)\.\n$/,
    );

    const destroyed = await qalqon('admin', '--data', data, 'kms', 'destroy', firstKek, '--json');
    expect(destroyed.err).toBe('');
    expect(oneJson(destroyed.out)).toEqual({ keyId: firstKek, destroyed: true });
    expect((await kmsStatus(data)).keyVersions.map((k) => k.keyId)).toEqual([secondKek]);

    await stopServer(server);
    expect(server.stderr()).toContain(`admin: KEK rotated from ${firstKek} to ${secondKek}`);
    expect(server.stderr()).not.toContain(USER_PIN);

    // With the first version gone from the token, the server opens with the second and serves.
    server = await startServer(dir, data);
    expect(await healthz(server.listening)).toBe(200);
    expect(await userNames(data)).toEqual(['admin', 'bob']);
    expect((await kmsStatus(data)).activeKeyId).toBe(secondKek);
    await stopServer(server);

    // A wrong PIN: refused with one sentence, exit 1, and neither PIN anywhere in the output.
    const wrongPin = `wrong-${randomBytes(6).toString('hex')}`;
    const wrong = await runQalqon(
      dir,
      ['server', 'start', '--data', data, '--listen', '127.0.0.1:0', '--json'],
      {
        [PIN_ENV]: wrongPin,
      },
    );
    expect(wrong.code).toBe(1);
    expect(wrong.out).toBe('');
    expect(wrong.err).toBe(`qalqon: the user PIN of token ${label} is incorrect.\n`);
    for (const s of [wrong.out, wrong.err]) {
      expect(s).not.toContain(wrongPin);
      expect(s).not.toContain(USER_PIN);
    }
    // No PIN at all: says where it was expected.
    const unset = await runQalqon(dir, ['server', 'start', '--data', data, '--listen', '127.0.0.1:0'], {
      [PIN_ENV]: undefined,
    });
    expect(unset.code).toBe(1);
    expect(unset.out).toBe('');
    expect(unset.err).toBe(
      `qalqon: the PKCS#11 user PIN is expected in environment variable ${PIN_ENV}, which is not set.\n`,
    );
  });

  it('reads the PIN from a 0600 file, refuses a wrong PIN at init without leaving files, and checks usage', async () => {
    const dir = tempDir();
    const label = newToken();
    const pinFile = join(dir, 'token.pin');
    const badPinFile = join(dir, 'bad.pin');
    writeFileSync(pinFile, `${USER_PIN}\n`, { mode: 0o600 });
    const badPin = `bad-${randomBytes(6).toString('hex')}`;
    writeFileSync(badPinFile, `${badPin}\n`, { mode: 0o600 });
    const pkcs11 = (data: string, file: string) => [
      'server',
      'init',
      '--data',
      data,
      '--kms',
      'pkcs11',
      '--pkcs11-module',
      modulePath,
      '--pkcs11-token',
      label,
      '--pkcs11-pin-file',
      file,
      '--json',
    ];

    // A wrong PIN at init: refused before anything is written, so init can be run again.
    const data = join(dir, 'data');
    const bad = await runQalqon(dir, pkcs11(data, badPinFile));
    expect(bad.code).toBe(1);
    expect(bad.out).toBe('');
    expect(bad.err).toBe(`qalqon: the user PIN of token ${label} is incorrect.\n`);
    expect(bad.err).not.toContain(badPin);
    expect(existsSync(join(data, 'config.json'))).toBe(false);
    expect(existsSync(join(data, 'tls-key.pem'))).toBe(false);

    const ok = await runQalqon(dir, pkcs11(data, pinFile));
    expect(ok.err).toBe('');
    expect(ok.code).toBe(0);
    expect(ok.out).not.toContain(USER_PIN);
    expect(JSON.parse(readFileSync(join(data, 'config.json'), 'utf8')).kms.pin).toEqual({ file: pinFile });

    // A second data directory cannot take over a token that already holds Qalqon KEKs.
    const other = await runQalqon(dir, pkcs11(join(dir, 'other'), pinFile));
    expect(other.code).toBe(1);
    expect(other.err).toMatch(/^qalqon: token qalqon-cli-\d+ already holds 1 Qalqon KEK version\(s\).*\.\n$/);

    const server = await startServer(dir, data);
    expect(await healthz(server.listening)).toBe(200);
    const status = await kmsStatus(data);
    expect(status.provider).toBe('pkcs11');
    expect(status.keyVersions.map((k) => [k.active, k.wrappedKeys])).toEqual([[true, 5]]);
    await stopServer(server);

    // Bad usage exits 2 without touching anything; there is no option that takes the PIN itself.
    const base = ['server', 'init', '--data', join(dir, 'never')];
    for (const argv of [
      [...base, '--kms', 'pkcs11'],
      [...base, '--kms', 'pkcs11', '--pkcs11-module', modulePath, '--pkcs11-token', label],
      [
        ...base,
        '--kms',
        'pkcs11',
        '--pkcs11-module',
        modulePath,
        '--pkcs11-token',
        label,
        '--pkcs11-pin-env',
        PIN_ENV,
        '--pkcs11-pin-file',
        pinFile,
      ],
      [...base, '--kms', 'pkcs11', '--pkcs11-module', 'libsofthsm2.so', '--pkcs11-token', label],
      [
        ...base,
        '--kms',
        'pkcs11',
        '--pkcs11-module',
        modulePath,
        '--pkcs11-token',
        label,
        '--pkcs11-pin',
        badPin,
      ],
      [...base, '--pkcs11-token', label],
      [...base, '--kms', 'hsm'],
      ['server', 'start', '--data', data, '--kms', 'pkcs11'],
      ['admin', '--data', data, 'kms', 'destroy'],
      ['admin', '--data', data, 'kms', 'destroy', 'no/such'],
      ['admin', '--data', data, 'kms', 'rotate', 'now'],
    ]) {
      const r = await qalqon(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/^qalqon: [^\n]*\.\n/);
      expect(r.err).not.toContain(badPin);
    }
    expect(existsSync(join(dir, 'never'))).toBe(false);
  });
});

describe('qalqon admin kms with the local KMS', () => {
  it('rotates, refuses to destroy a version that still wraps data keys, destroys the old one, and restarts', async () => {
    const dir = tempDir();
    const data = join(dir, 'data');
    const init = await qalqon('server', 'init', '--data', data, '--json');
    expect(init.code).toBe(0);
    const firstKek = (oneJson(init.out) as { kms: { provider: string; activeKeyId: string } }).kms;
    expect(firstKek.provider).toBe('local');

    const server = await startServer(dir, data);
    const before = await kmsStatus(data);
    expect(before.provider).toBe('local');
    expect(before.location).toBe(join(data, 'kms-master.key'));
    expect(before.keyVersions.map((k) => [k.keyId, k.active, k.wrappedKeys])).toEqual([
      [firstKek.activeKeyId, true, 5],
    ]);
    expect((await qalqon('admin', '--data', data, 'user', 'add', 'carol', '--json')).code).toBe(0);

    const oldDekFile = readFileSync(join(data, 'data-keys.json'));
    const r1 = await kmsRotate(data);
    expect(r1).toEqual({
      previousKeyId: firstKek.activeKeyId,
      activeKeyId: expect.any(String),
      rewrapped: 5,
      rewrappedFileKeys: 0,
    });
    expect(r1.activeKeyId).not.toBe(firstKek.activeKeyId);
    expect(wrappedUnder(data)).toEqual(allUnder(r1.activeKeyId));
    expect((await kmsStatus(data)).keyVersions.map((k) => [k.keyId, k.active, k.wrappedKeys])).toEqual([
      [firstKek.activeKeyId, false, 0],
      [r1.activeKeyId, true, 5],
    ]);

    // Put back the data-key file from before the rotation (as a restore would): the old
    // version wraps them all again, so destroying it would lose the data and is refused.
    writeFileSync(join(data, 'data-keys.json'), oldDekFile, { mode: 0o600 });
    expect((await kmsStatus(data)).keyVersions.map((k) => k.wrappedKeys)).toEqual([5, 0]);
    const refused = await qalqon('admin', '--data', data, 'kms', 'destroy', firstKek.activeKeyId);
    expect(refused.code).toBe(1);
    expect(refused.err).toBe(
      `qalqon: KEK version ${firstKek.activeKeyId} still wraps 5 data key(s) and 0 file key(s); run kms rotate first (BAD_REQUEST).\n`,
    );
    const r2 = await kmsRotate(data);
    expect(r2.previousKeyId).toBe(r1.activeKeyId);
    expect(r2.rewrapped).toBe(5);
    expect(wrappedUnder(data)).toEqual(allUnder(r2.activeKeyId));

    for (const old of [firstKek.activeKeyId, r1.activeKeyId]) {
      const d = await qalqon('admin', '--data', data, 'kms', 'destroy', old);
      expect(d.err).toBe('');
      expect(d.out).toBe(`Destroyed key-encryption key version ${old}.\n`);
    }
    const keyFile = JSON.parse(readFileSync(join(data, 'kms-master.key'), 'utf8')) as {
      active: string;
      keys: { id: string }[];
    };
    expect(keyFile.active).toBe(r2.activeKeyId);
    expect(keyFile.keys.map((k) => k.id)).toEqual([r2.activeKeyId]);
    await stopServer(server);

    const again = await startServer(dir, data);
    expect(await healthz(again.listening)).toBe(200);
    expect(await userNames(data)).toEqual(['admin', 'carol']);
    const human = await qalqon('admin', '--data', data, 'kms', 'rotate');
    expect(human.code).toBe(0);
    expect(human.out).toMatch(
      new RegExp(
        `^Rotated the key-encryption key from ${r2.activeKeyId} to local-[0-9a-f]{16}; re-wrapped 5 data key\\(s\\) and 0 file key\\(s\\)\\.\n`,
      ),
    );
    await stopServer(again);
  });
});
