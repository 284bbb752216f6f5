/**
 * The behaviour every Kms implementation owes its callers, written once and run against
 * each (local-kms.test.ts, pkcs11-kms.test.ts): wrapping bound to key version and context,
 * tamper detection, rotation with coexisting versions, destroy rules, KEK rotation through
 * DekRegistry, argument checks, close, and that no error message carries a secret.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ServerError, type ServerErrorCode } from '../errors.js';
import { DEK_FILE, DekRegistry, rotateKek } from './dek-registry.js';
import type { Kms, KmsProvider } from './kms.js';

export interface KmsContractFixture {
  readonly provider: KmsProvider;
  /** A fresh KMS holding exactly one KEK version, created at time `clock()`. */
  create(clock?: () => number): Promise<Kms>;
  /** Opens again the KMS the last `create` made (which the caller has closed). */
  reopen(): Promise<Kms>;
  /** Strings that must never appear in an error message: KEK bytes, PINs. */
  secrets(): string[];
}

export async function expectCode(p: Promise<unknown>, code: ServerErrorCode): Promise<ServerError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(ServerError);
  expect((err as ServerError).code, (err as Error).message).toBe(code);
  return err as ServerError;
}

const dek = () => new Uint8Array(randomBytes(32));

/** Registers the contract's tests for one implementation. `makeFixture` is called per test. */
export function kmsContract(name: string, makeFixture: () => KmsContractFixture): void {
  describe(`${name}: the Kms contract`, () => {
    const dirs: string[] = [];
    const opened: Kms[] = [];
    afterEach(async () => {
      // A test that failed halfway still closes its KMSs (close is idempotent), so a token
      // module is finalised and the failure does not spill into the next test.
      for (const kms of opened.splice(0)) await kms.close();
      for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
    });
    /** The implementation's fixture, with every KMS it makes tracked for afterEach. */
    function fixture(): KmsContractFixture {
      const f = makeFixture();
      const track = async (p: Promise<Kms>) => {
        const kms = await p;
        opened.push(kms);
        return kms;
      };
      return {
        provider: f.provider,
        create: (clock) => track(f.create(clock)),
        reopen: () => track(f.reopen()),
        secrets: () => f.secrets(),
      };
    }
    function tempDir(): string {
      const d = mkdtempSync(join(tmpdir(), 'qalqon-kms-contract-'));
      dirs.push(d);
      return d;
    }
    function noSecrets(f: KmsContractFixture, err: ServerError): void {
      for (const s of f.secrets()) expect(err.message).not.toContain(s);
    }

    it('wraps and unwraps across a reopen, with a fresh nonce per wrap', async () => {
      const f = fixture();
      const kms = await f.create(() => 42);
      const d = await kms.describe();
      expect(d.provider).toBe(f.provider);
      expect(d.location.length).toBeGreaterThan(0);
      expect(d.keys).toEqual([{ id: d.activeKeyId, createdAt: 42, active: true }]);
      const key = dek();
      const wrapped = await kms.wrap(key, 'dek:database');
      expect(wrapped.keyId).toBe(d.activeKeyId);
      expect(wrapped.context).toBe('dek:database');
      expect(Buffer.from(wrapped.ciphertext).includes(Buffer.from(key))).toBe(false);
      expect((await kms.wrap(key, 'dek:database')).ciphertext).not.toEqual(wrapped.ciphertext);
      expect(await kms.unwrap(wrapped)).toEqual(key);
      await kms.close();
      const again = await f.reopen();
      expect((await again.describe()).activeKeyId).toBe(d.activeKeyId);
      expect(await again.unwrap(wrapped)).toEqual(key);
      await again.close();
    });

    it('binds the key version and the context: any change fails to unwrap', async () => {
      const f = fixture();
      const kms = await f.create();
      const w = await kms.wrap(dek(), 'dek:database');
      noSecrets(f, await expectCode(kms.unwrap({ ...w, context: 'dek:fields-1' }), 'KMS_UNWRAP_FAILED'));
      await expectCode(kms.unwrap({ ...w, keyId: 'absent-0000000000000000' }), 'KMS_KEY_NOT_FOUND');
      const n = w.ciphertext.length;
      // The nonce, the first and last ciphertext bytes, the middle, and the tag's last byte.
      for (const i of [0, 11, 12, n >> 1, n - 17, n - 1]) {
        const ct = Uint8Array.from(w.ciphertext);
        ct[i]! ^= 1;
        noSecrets(f, await expectCode(kms.unwrap({ ...w, ciphertext: ct }), 'KMS_UNWRAP_FAILED'));
      }
      // The untouched original still opens: the failures left the KMS usable.
      expect(await kms.unwrap(w)).toHaveLength(32);
      await kms.close();
    });

    it('rotation: versions coexist until destroyed; the active one cannot be destroyed', async () => {
      const f = fixture();
      let now = 1_000;
      const kms = await f.create(() => now);
      const first = (await kms.describe()).activeKeyId;
      const key = dek();
      const old = await kms.wrap(key, 'dek:x');
      now = 2_000;
      const second = await kms.rotate();
      expect(second).not.toBe(first);
      const d = await kms.describe();
      expect(d.activeKeyId).toBe(second);
      expect(d.keys).toEqual([
        { id: first, createdAt: 1_000, active: false },
        { id: second, createdAt: 2_000, active: true },
      ]);
      expect((await kms.wrap(key, 'dek:x')).keyId).toBe(second);
      expect(await kms.unwrap(old)).toEqual(key);
      await expectCode(kms.destroy(second), 'KMS_KEY_ACTIVE');
      await kms.destroy(first);
      await expectCode(kms.unwrap(old), 'KMS_KEY_NOT_FOUND');
      await expectCode(kms.destroy(first), 'KMS_KEY_NOT_FOUND');
      await kms.close();
      const again = await f.reopen();
      expect((await again.describe()).keys.map((k) => [k.id, k.active])).toEqual([[second, true]]);
      await again.close();
    });

    it('rotateKek re-wraps every DEK; after destroying the old KEK everything still opens', async () => {
      const f = fixture();
      const kms = await f.create();
      const path = join(tempDir(), DEK_FILE);
      const reg = await DekRegistry.open(path, kms);
      const a = await reg.getOrCreate('database');
      const b = await reg.getOrCreate('lookup');
      const old = (await kms.describe()).activeKeyId;
      expect(reg.list().every((i) => i.keyId === old)).toBe(true);
      const { activeKeyId, rewrapped } = await rotateKek(kms, reg);
      expect(activeKeyId).not.toBe(old);
      expect(rewrapped).toBe(2);
      expect(await reg.rewrapAll()).toBe(0);
      expect(reg.list().every((i) => i.keyId === activeKeyId)).toBe(true);
      await kms.destroy(old);
      await kms.close();
      const kms2 = await f.reopen();
      const again = await DekRegistry.open(path, kms2);
      expect(await again.get('database')).toEqual(a);
      expect(await again.get('lookup')).toEqual(b);
      await kms2.close();
    });

    it('serves concurrent calls correctly', async () => {
      const f = fixture();
      const kms = await f.create();
      const keys = Array.from({ length: 8 }, dek);
      const wrapped = await Promise.all(keys.map((k, i) => kms.wrap(k, `dek:k-${i}`)));
      const [unwrapped, description] = await Promise.all([
        Promise.all(wrapped.map((w) => kms.unwrap(w))),
        kms.describe(),
      ]);
      expect(unwrapped).toEqual(keys);
      expect(description.keys).toHaveLength(1);
      await kms.close();
    });

    it('checks arguments and refuses use after close', async () => {
      const f = fixture();
      const kms = await f.create();
      const w = await kms.wrap(dek(), 'dek:x');
      await expectCode(kms.wrap(new Uint8Array(31), 'dek:x'), 'INVALID_ARGUMENT');
      await expectCode(kms.wrap('key' as never, 'dek:x'), 'INVALID_ARGUMENT');
      await expectCode(kms.wrap(dek(), ''), 'INVALID_ARGUMENT');
      await expectCode(kms.wrap(dek(), 'has space'), 'INVALID_ARGUMENT');
      await expectCode(kms.unwrap(null as never), 'INVALID_ARGUMENT');
      await expectCode(
        kms.unwrap({ ...w, ciphertext: w.ciphertext.subarray(0, w.ciphertext.length - 1) }),
        'INVALID_ARGUMENT',
      );
      await expectCode(kms.unwrap({ ...w, keyId: 'a b' }), 'INVALID_ARGUMENT');
      await expectCode(kms.destroy('../etc'), 'INVALID_ARGUMENT');
      await kms.close();
      await kms.close(); // idempotent
      await expectCode(kms.wrap(dek(), 'dek:x'), 'CLOSED');
      await expectCode(kms.unwrap(w), 'CLOSED');
      await expectCode(kms.describe(), 'CLOSED');
      await expectCode(kms.rotate(), 'CLOSED');
      await expectCode(kms.destroy(w.keyId), 'CLOSED');
    });
  });
}
