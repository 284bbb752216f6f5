/**
 * Pkcs11Kms against a real SoftHSM2 token (no mocks): the Kms contract, the KEK's custody
 * inside the token (non-extractable, not exportable by C_WrapKey, not made extractable
 * later), PIN sources and errors, token and module errors, and module sharing.
 *
 * This file creates its own SoftHSM2 token directory (SOFTHSM2_CONF pointing at a temp dir)
 * and a fresh token per test. SoftHSM2 reads SOFTHSM2_CONF at C_Initialize, and every test
 * closes every KMS it opened, so the module is finalised between tests.
 *
 * If SoftHSM2 is missing the suite fails rather than skips: CI installs it, and a skipped
 * HSM suite would let the PKCS#11 KMS go untested unnoticed.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Handle, PKCS11 } from 'pkcs11js';
import pkcs11js from 'pkcs11js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DEK_FILE, DekRegistry } from './dek-registry.js';
import { expectCode, kmsContract } from './kms-contract.test-util.js';
import { PKCS11_WRAPPED_LEN, Pkcs11Kms, type Pkcs11KmsConfig } from './pkcs11-kms.js';

/** Where distributions install the SoftHSM2 module (Debian/Ubuntu first). */
const MODULE_CANDIDATES = [
  '/usr/lib/softhsm/libsofthsm2.so',
  '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so',
  '/usr/lib64/pkcs11/libsofthsm2.so',
  '/usr/local/lib/softhsm/libsofthsm2.so',
];
const INSTALL_HINT =
  'SoftHSM2 is required for the PKCS#11 KMS tests: install it with `apt-get install softhsm2` ' +
  '(it provides /usr/lib/softhsm/libsofthsm2.so and softhsm2-util); .ci/run installs it in CI';

const PIN_ENV = 'QALQON_TEST_HSM_PIN';
const USER_PIN = `user-${randomBytes(6).toString('hex')}`;
const SO_PIN = `so-${randomBytes(6).toString('hex')}`;

const previousConf = process.env.SOFTHSM2_CONF;
let modulePath = '';
let root = '';
let tokenCount = 0;
const open: Pkcs11Kms[] = [];

beforeAll(() => {
  const found = MODULE_CANDIDATES.find((p) => existsSync(p));
  if (!found) throw new Error(`${INSTALL_HINT} (no libsofthsm2.so in ${MODULE_CANDIDATES.join(', ')})`);
  try {
    execFileSync('softhsm2-util', ['--version'], { stdio: 'pipe' });
  } catch {
    throw new Error(`${INSTALL_HINT} (softhsm2-util is not on PATH)`);
  }
  modulePath = found;
  root = mkdtempSync(join(tmpdir(), 'qalqon-softhsm-'));
  mkdirSync(join(root, 'tokens'), { mode: 0o700 });
  const conf = join(root, 'softhsm2.conf');
  writeFileSync(
    conf,
    `directories.tokendir = ${join(root, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`,
  );
  // Read by SoftHSM2 at C_Initialize in this process, and by softhsm2-util below.
  process.env.SOFTHSM2_CONF = conf;
  process.env[PIN_ENV] = USER_PIN;
});

afterEach(async () => {
  // A test that failed halfway must not leave the module initialised for the next one.
  for (const kms of open.splice(0)) await kms.close();
});

afterAll(() => {
  if (root) rmSync(root, { recursive: true, force: true });
  delete process.env[PIN_ENV];
  if (previousConf === undefined) delete process.env.SOFTHSM2_CONF;
  else process.env.SOFTHSM2_CONF = previousConf;
});

/** Initialises a fresh token in the test's token directory and returns its label. */
function newToken(): string {
  const label = `qalqon-test-${++tokenCount}`;
  execFileSync(
    'softhsm2-util',
    ['--init-token', '--free', '--label', label, '--so-pin', SO_PIN, '--pin', USER_PIN],
    { stdio: 'pipe', env: process.env },
  );
  return label;
}

function config(tokenLabel: string, pin: Pkcs11KmsConfig['pin'] = { env: PIN_ENV }): Pkcs11KmsConfig {
  return { module: modulePath, tokenLabel, pin };
}

/** Tracks a KMS so afterEach closes it even if the test fails before it does. */
async function track(p: Promise<Pkcs11Kms>): Promise<Pkcs11Kms> {
  const kms = await p;
  open.push(kms);
  return kms;
}

/**
 * Runs `fn` in a plain pkcs11js session logged in to the token, as an attacker holding the
 * PIN would. Only while no Pkcs11Kms is open: this C_Finalize would end their sessions.
 */
function raw<T>(tokenLabel: string, fn: (lib: PKCS11, session: Handle) => T): T {
  const lib = new pkcs11js.PKCS11();
  lib.load(modulePath);
  lib.C_Initialize();
  try {
    const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === tokenLabel);
    if (!slot) throw new Error(`no token ${tokenLabel}`);
    const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    lib.C_Login(session, pkcs11js.CKU_USER, USER_PIN);
    return fn(lib, session);
  } finally {
    lib.C_Finalize();
    lib.close();
  }
}

function findByLabel(lib: PKCS11, session: Handle, label: string): Handle {
  lib.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_LABEL, value: label }]);
  const found = lib.C_FindObjects(session, 2);
  lib.C_FindObjectsFinal(session);
  expect(found).toHaveLength(1);
  return found[0]!;
}

/** The CKR_ name a raw pkcs11js call fails with. */
function ckrOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  return 'succeeded';
}

const dek = () => new Uint8Array(randomBytes(32));

kmsContract('Pkcs11Kms (SoftHSM2)', () => {
  let label: string | undefined;
  return {
    provider: 'pkcs11',
    create: async (clock) => {
      label = newToken();
      return Pkcs11Kms.create(config(label), clock);
    },
    reopen: async () => Pkcs11Kms.open(config(label!)),
    secrets: () => [USER_PIN, SO_PIN],
  };
});

describe('Pkcs11Kms (SoftHSM2)', () => {
  it('describes the module, the token and the versions; wraps to nonce ‖ ciphertext ‖ tag', async () => {
    const label = newToken();
    const kms = await track(Pkcs11Kms.create(config(label), () => 5));
    const d = await kms.describe();
    expect(d.provider).toBe('pkcs11');
    expect(d.location).toBe(`pkcs11:token=${label}?module-path=${modulePath}`);
    expect(d.activeKeyId).toMatch(/^qalqon-kek-[0-9a-f]{16}$/);
    expect(d.keys).toEqual([{ id: d.activeKeyId, createdAt: 5, active: true }]);
    const w = await kms.wrap(dek(), 'dek:database');
    expect(w.ciphertext).toHaveLength(PKCS11_WRAPPED_LEN);
    expect(PKCS11_WRAPPED_LEN).toBe(60);
  });

  it('keeps the KEK inside the token: sensitive, never extractable, not exportable, not modifiable', async () => {
    const label = newToken();
    const kms = await Pkcs11Kms.create(config(label));
    const { activeKeyId } = await kms.describe();
    const w = await kms.wrap(dek(), 'dek:x');
    await kms.close();
    raw(label, (lib, s) => {
      const kek = findByLabel(lib, s, activeKeyId);
      // v2.40 base section 4.9: CKA_VALUE of a sensitive or unextractable key cannot be read.
      expect(ckrOf(() => lib.C_GetAttributeValue(s, kek, [{ type: pkcs11js.CKA_VALUE }]))).toBe(
        'CKR_ATTRIBUTE_SENSITIVE',
      );
      const attrs = lib.C_GetAttributeValue(s, kek, [
        { type: pkcs11js.CKA_TOKEN },
        { type: pkcs11js.CKA_PRIVATE },
        { type: pkcs11js.CKA_SENSITIVE },
        { type: pkcs11js.CKA_EXTRACTABLE },
        { type: pkcs11js.CKA_ALWAYS_SENSITIVE },
        { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
        { type: pkcs11js.CKA_WRAP },
        { type: pkcs11js.CKA_UNWRAP },
        { type: pkcs11js.CKA_MODIFIABLE },
      ]);
      expect(attrs.map((a) => (a.value as Buffer)[0])).toEqual([1, 1, 1, 0, 1, 1, 0, 0, 0]);
      // Nor can it leave wrapped under another key (v2.40 base section 5.14, C_WrapKey)...
      const exporter = lib.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
        { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        { type: pkcs11js.CKA_TOKEN, value: false },
        { type: pkcs11js.CKA_WRAP, value: true },
      ]);
      expect(
        ckrOf(() =>
          lib.C_WrapKey(s, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD }, exporter, kek, Buffer.alloc(64)),
        ),
      ).toBe('CKR_KEY_UNEXTRACTABLE');
      // ...nor be made extractable or relabelled afterwards.
      expect(
        ckrOf(() => lib.C_SetAttributeValue(s, kek, [{ type: pkcs11js.CKA_EXTRACTABLE, value: true }])),
      ).not.toBe('succeeded');
      expect(
        ckrOf(() => lib.C_SetAttributeValue(s, kek, [{ type: pkcs11js.CKA_LABEL, value: 'qalqon-kek-0' }])),
      ).not.toBe('succeeded');
    });
    // The token is unchanged by all that: the key still unwraps.
    const again = await track(Pkcs11Kms.open(config(label)));
    expect(await again.unwrap(w)).toHaveLength(32);
  });

  it('refuses a KEK that could have left the token, and ignores other applications’ keys', async () => {
    const label = newToken();
    await (await Pkcs11Kms.create(config(label))).close();
    const aes = (extra: { type: number; value: number | boolean | string | Buffer }[]) =>
      raw(label, (lib, s) =>
        lib.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN }, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
          { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_ENCRYPT, value: true },
          { type: pkcs11js.CKA_DECRYPT, value: true },
          ...extra,
        ]),
      );
    // Another application's key: ignored, whatever its attributes.
    aes([
      { type: pkcs11js.CKA_LABEL, value: 'someone-else' },
      { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    ]);
    const kms = await Pkcs11Kms.open(config(label));
    expect((await kms.describe()).keys).toHaveLength(1);
    await kms.close();
    // A key under our naming that was created extractable (its CKA_NEVER_EXTRACTABLE is false
    // for good, whatever is done to it later): refused rather than used, and newer, so it
    // would otherwise have become the active KEK.
    const when = Buffer.alloc(8);
    when.writeBigUInt64BE(BigInt(Date.now() + 60_000));
    aes([
      { type: pkcs11js.CKA_LABEL, value: 'qalqon-kek-00000000000000ff' },
      { type: pkcs11js.CKA_ID, value: when },
      { type: pkcs11js.CKA_SENSITIVE, value: true },
      { type: pkcs11js.CKA_EXTRACTABLE, value: true },
    ]);
    const err = await expectCode(Pkcs11Kms.open(config(label)), 'KMS_KEY_INSECURE');
    expect(err.message).toContain('qalqon-kek-00000000000000ff');
  });

  it('wrong PIN, unset PIN variable, insecure or missing PIN file: coded errors without the PIN', async () => {
    const label = newToken();
    await (await Pkcs11Kms.create(config(label))).close();
    const dir = mkdtempSync(join(root, 'pin-'));
    const wrong = `wrong-${randomBytes(6).toString('hex')}`;
    process.env.QALQON_TEST_WRONG_PIN = wrong;
    try {
      const err = await expectCode(
        Pkcs11Kms.open(config(label, { env: 'QALQON_TEST_WRONG_PIN' })),
        'KMS_PIN_INCORRECT',
      );
      expect(err.message).toContain(label);
      for (const secret of [wrong, USER_PIN, SO_PIN]) expect(err.message).not.toContain(secret);
    } finally {
      delete process.env.QALQON_TEST_WRONG_PIN;
    }
    const unset = await expectCode(
      Pkcs11Kms.open(config(label, { env: 'QALQON_TEST_UNSET_PIN' })),
      'KMS_PIN_UNAVAILABLE',
    );
    expect(unset.message).toContain('QALQON_TEST_UNSET_PIN');
    const file = join(dir, 'pin');
    await expectCode(Pkcs11Kms.open(config(label, { file })), 'KMS_PIN_UNAVAILABLE');
    writeFileSync(file, `${USER_PIN}\n`, { mode: 0o644 });
    chmodSync(file, 0o644);
    const insecure = await expectCode(Pkcs11Kms.open(config(label, { file })), 'KMS_PIN_UNAVAILABLE');
    expect(insecure.message).toContain('chmod 600');
    expect(insecure.message).not.toContain(USER_PIN);
    // The right PIN from a private file (one trailing newline, as `echo` writes it) opens it.
    chmodSync(file, 0o600);
    const kms = await track(Pkcs11Kms.open(config(label, { file })));
    expect((await kms.describe()).keys).toHaveLength(1);
  });

  it('missing token, missing or bogus module, bad configuration: coded errors', async () => {
    await expectCode(Pkcs11Kms.open(config('no-such-token')), 'KMS_TOKEN_NOT_FOUND');
    await expectCode(
      Pkcs11Kms.open({ ...config('x'), module: join(root, 'missing.so') }),
      'KMS_MODULE_UNAVAILABLE',
    );
    const bogus = join(root, 'bogus.so');
    writeFileSync(bogus, 'not a shared library');
    await expectCode(Pkcs11Kms.open({ ...config('x'), module: bogus }), 'KMS_MODULE_UNAVAILABLE');
    await expectCode(Pkcs11Kms.open({ ...config('x'), module: 'libsofthsm2.so' }), 'INVALID_ARGUMENT');
    await expectCode(Pkcs11Kms.open(config('a label longer than thirty-two bytes')), 'INVALID_ARGUMENT');
    await expectCode(Pkcs11Kms.open(config(' padded')), 'INVALID_ARGUMENT');
    await expectCode(Pkcs11Kms.open(config('x', { env: 'NOT A NAME' })), 'INVALID_ARGUMENT');
    await expectCode(Pkcs11Kms.open(config('x', { pin: '1234' } as never)), 'INVALID_ARGUMENT');
    await expectCode(Pkcs11Kms.open(null as never), 'INVALID_ARGUMENT');
  });

  it('create refuses a token already holding KEKs; open refuses one holding none; one opener per process', async () => {
    const label = newToken();
    await expectCode(Pkcs11Kms.open(config(label)), 'KMS_KEY_NOT_FOUND');
    const kms = await track(Pkcs11Kms.create(config(label)));
    await expectCode(Pkcs11Kms.open(config(label)), 'KMS_TOKEN_IN_USE');
    await kms.close();
    await expectCode(Pkcs11Kms.create(config(label)), 'KMS_TOKEN_IN_USE');
    const again = await track(Pkcs11Kms.open(config(label)));
    expect((await again.describe()).keys).toEqual([expect.objectContaining({ active: true })]);
  });

  it('shares the module between tokens: closing one leaves the other working', async () => {
    const [a, b] = [newToken(), newToken()];
    const kmsA = await track(Pkcs11Kms.create(config(a)));
    const kmsB = await track(Pkcs11Kms.create(config(b)));
    const wa = await kmsA.wrap(dek(), 'dek:database');
    const wb = await kmsB.wrap(dek(), 'dek:database');
    // Each token's KEK is its own: B does not hold A's version.
    await expectCode(kmsB.unwrap(wa), 'KMS_KEY_NOT_FOUND');
    await kmsA.close();
    expect(await kmsB.unwrap(wb)).toHaveLength(32);
    await kmsB.close();
  });

  it('a rotation and destroy by a later opener (an admin command) is what the next opener sees', async () => {
    const label = newToken();
    const dir = mkdtempSync(join(root, 'dek-'));
    const kms = await Pkcs11Kms.create(config(label));
    const reg = await DekRegistry.open(join(dir, DEK_FILE), kms);
    const a = await reg.getOrCreate('database');
    const first = (await kms.describe()).activeKeyId;
    await kms.close();
    // Meanwhile an admin command rotates and destroys the old version...
    const admin = await Pkcs11Kms.open(config(label));
    const adminReg = await DekRegistry.open(join(dir, DEK_FILE), admin);
    const second = await admin.rotate();
    expect(await adminReg.rewrapAll()).toBe(1);
    await admin.destroy(first);
    await admin.close();
    // ...and a server started afterwards opens everything under the new one.
    const server = await track(Pkcs11Kms.open(config(label)));
    const serverReg = await DekRegistry.open(join(dir, DEK_FILE), server);
    expect(serverReg.list()).toEqual([expect.objectContaining({ name: 'database', keyId: second })]);
    expect(await serverReg.get('database')).toEqual(a);
  });
});
