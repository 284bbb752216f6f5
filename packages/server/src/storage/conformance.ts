/**
 * The storage conformance suite, written once and run against every backend: the embedded
 * SQLCipher backend (sqlite.test.ts) now, PostgreSQL next. It uses only the `Storage`
 * interface, so whatever passes it behaves the same to the service above.
 *
 * A backend provides `makeStorage`, which returns a fresh, empty store plus a way to open
 * a second independent handle on the same store (another connection, as a second server
 * node would have), used for the concurrency and durability tests, and optionally an
 * `AuditTamper` (direct writes to its audit tables) for the audit tamper-detection tests.
 *
 * Orders the suite pins for every backend: names by code unit (roles, units, channels),
 * grants by user id, role, scope kind ('channel' < 'global' < 'unit'), scope id; channel
 * members and unit members by user id.
 */
import { randomBytes } from 'node:crypto';
import { BUILTIN_ROLES } from '@qalqon/wire';
import { afterEach, describe, expect, it } from 'vitest';
import { chainAuditRecord, checkAuditEntry } from '../audit/chain.js';
import { ServerError, type ServerErrorCode } from '../errors.js';
import { EC_PUBLIC_KEY_LEN, KYBER_PUBLIC_KEY_LEN } from './input.js';
import type {
  AuditEntry,
  AuditRecord,
  NewDevice,
  NewEnvelope,
  NewFile,
  OneTimePrekey,
  SignedPrekey,
  Storage,
  StorageLimits,
} from './types.js';
import { FILE_CHUNK_OVERHEAD } from './types.js';

export interface StorageFactoryOptions {
  /** The store must read time only from this clock. */
  readonly clock: () => number;
  readonly limits?: Partial<StorageLimits>;
}

/**
 * Direct writes to a backend's audit tables, bypassing `Storage`: what an attacker with
 * database access (and, for `putRecord`, the keys) could do. Each operation names rows by
 * their stored seq column. The tamper tests of the conformance suite run when a fixture
 * provides it and are skipped (visibly) otherwise.
 */
export interface AuditTamper {
  /** Deletes the row whose seq column is `seq`. */
  deleteRow(seq: number): Promise<void>;
  /** Swaps the seq columns of two rows; each row keeps its hash and sealed record. */
  swapSeqs(a: number, b: number): Promise<void>;
  /** Flips one byte of row `seq`'s sealed record (so it no longer opens). */
  corruptRecord(seq: number): Promise<void>;
  /** Overwrites row `seq`'s hash column. */
  setHash(seq: number, hex: string): Promise<void>;
  /**
   * Stores canonical record `bytes` at row `seq`, sealed exactly as the backend seals a
   * record and with their correct hash (an attacker holding the keys): replaces the row if
   * one has that seq, else inserts it. With `shift`, first moves every row at or after `seq`
   * up by one, so the record is inserted in the middle. The `at` column is taken from the
   * record.
   */
  putRecord(seq: number, bytes: Uint8Array, options?: { readonly shift?: boolean }): Promise<void>;
  /** Deletes the signed head. */
  deleteHead(): Promise<void>;
  /** Flips one byte of the head's signature. */
  corruptHeadSignature(): Promise<void>;
}

export interface StorageFixture {
  readonly storage: Storage;
  /** Opens another independent handle on the same store. */
  openPeer(): Promise<Storage>;
  /** Deletes the store; called after every handle has been closed. */
  destroy(): Promise<void>;
  /** Direct access to the audit tables for the tamper tests; optional. */
  readonly auditTamper?: AuditTamper;
}

export type MakeStorage = (options: StorageFactoryOptions) => Promise<StorageFixture>;

const T0 = 1_750_000_000_000;
const DAY = 24 * 3600 * 1000;

function ecKey(): Uint8Array {
  const k = new Uint8Array(randomBytes(EC_PUBLIC_KEY_LEN));
  k[0] = 0x05;
  return k;
}

function kyberKey(): Uint8Array {
  const k = new Uint8Array(randomBytes(KYBER_PUBLIC_KEY_LEN));
  k[0] = 0x08;
  return k;
}

function signed(id: number, kind: 'ec' | 'kyber' = 'ec'): SignedPrekey {
  return { id, publicKey: kind === 'ec' ? ecKey() : kyberKey(), signature: new Uint8Array(randomBytes(64)) };
}

function oneTime(ids: readonly number[]): OneTimePrekey[] {
  return ids.map((id) => ({ id, publicKey: ecKey() }));
}

function newDevice(overrides: Partial<NewDevice> = {}): NewDevice {
  return {
    name: 'laptop',
    registrationId: 1234,
    identityKey: ecKey(),
    signedPrekey: signed(1),
    kyberPrekey: signed(2, 'kyber'),
    oneTimePrekeys: oneTime([10, 11, 12]),
    ...overrides,
  };
}

function code(): string {
  return randomBytes(20).toString('base64url');
}

/** Awaits `p` and checks it rejects with a ServerError of `code`. */
async function rejectsWith(p: Promise<unknown>, code: ServerErrorCode): Promise<ServerError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected ${code}`).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe(code);
  return err as ServerError;
}

export function runStorageConformance(backend: string, makeStorage: MakeStorage): void {
  describe(`Storage conformance: ${backend}`, () => {
    let now = T0;
    const clock = () => now;
    const open: Storage[] = [];
    const fixtures: StorageFixture[] = [];

    async function fresh(limits?: Partial<StorageLimits>): Promise<{ s: Storage; fx: StorageFixture }> {
      now = T0;
      const fx = await makeStorage(limits ? { clock, limits } : { clock });
      fixtures.push(fx);
      open.push(fx.storage);
      return { s: fx.storage, fx };
    }

    async function peer(fx: StorageFixture): Promise<Storage> {
      const p = await fx.openPeer();
      open.push(p);
      return p;
    }

    afterEach(async () => {
      for (const s of open.splice(0)) await s.close();
      for (const fx of fixtures.splice(0)) await fx.destroy();
    });

    /** A user with an enrolled first device. */
    async function enrolled(s: Storage, name = 'alice', device = newDevice()) {
      const user = await s.createUser({ name });
      const c = code();
      await s.createEnrolmentCode({ userId: user.id, code: c, expiresAt: now + DAY });
      const dev = await s.enrolDevice({ code: c, device });
      return { user, device: dev, identityKey: device.identityKey };
    }

    function envelope(
      to: { userId: string; deviceId: number },
      from: { id: string },
      body: string,
    ): NewEnvelope {
      return {
        recipientUserId: to.userId,
        recipientDeviceId: to.deviceId,
        senderUserId: from.id,
        senderDeviceId: 1,
        body: new TextEncoder().encode(body),
      };
    }

    const text = (b: Uint8Array) => new TextDecoder().decode(b);

    describe('users', () => {
      it('creates, finds and lists users, with sorted distinct roles', async () => {
        const { s } = await fresh();
        const bob = await s.createUser({ name: 'bob', roles: ['member', 'admin', 'member'] });
        const alice = await s.createUser({ name: 'alice' });
        expect(bob.id).toMatch(/^[0-9a-f]{32}$/);
        expect(bob.id).not.toBe(alice.id);
        expect(bob.roles).toEqual(['admin', 'member']);
        expect(bob.identityKey).toBeUndefined();
        expect(bob.createdAt).toBe(T0);
        expect(await s.getUser(bob.id)).toEqual(bob);
        expect(await s.findUserByName('alice')).toEqual(alice);
        expect(await s.findUserByName('carol')).toBeUndefined();
        expect(await s.getUser('0'.repeat(32))).toBeUndefined();
        expect((await s.listUsers()).map((u) => u.name)).toEqual(['alice', 'bob']);
      });

      it('refuses a taken name with USER_EXISTS and keeps one user', async () => {
        const { s } = await fresh();
        await s.createUser({ name: 'alice' });
        await rejectsWith(s.createUser({ name: 'alice', roles: ['admin'] }), 'USER_EXISTS');
        expect(await s.listUsers()).toHaveLength(1);
        expect((await s.findUserByName('alice'))?.roles).toEqual([]);
      });

      it('refuses malformed names and roles with INVALID_ARGUMENT and creates nothing', async () => {
        const { s } = await fresh();
        const bad: unknown[] = [
          { name: '' },
          { name: 'Alice' },
          { name: 'a b' },
          { name: '-alice' },
          { name: 'a'.repeat(65) },
          { name: 42 },
          { name: 'alice', roles: 'admin' },
          { name: 'alice', roles: ['Admin'] },
          null,
          'alice',
        ];
        for (const input of bad) {
          await rejectsWith(s.createUser(input as never), 'INVALID_ARGUMENT');
        }
        expect(await s.listUsers()).toEqual([]);
      });

      it('grants and revokes roles idempotently', async () => {
        const { s } = await fresh();
        const u = await s.createUser({ name: 'alice' });
        await s.grantRole(u.id, 'auditor');
        await s.grantRole(u.id, 'auditor');
        await s.grantRole(u.id, 'admin');
        expect((await s.getUser(u.id))?.roles).toEqual(['admin', 'auditor']);
        await s.revokeRole(u.id, 'auditor');
        await s.revokeRole(u.id, 'auditor');
        expect((await s.getUser(u.id))?.roles).toEqual(['admin']);
        await rejectsWith(s.grantRole('f'.repeat(32), 'admin'), 'USER_NOT_FOUND');
        await rejectsWith(s.grantRole(u.id, 'Not A Role'), 'INVALID_ARGUMENT');
      });

      it('removes a user with their devices, prekeys and queues', async () => {
        const { s } = await fresh();
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        await s.enqueue([envelope(a.device, b.user, 'hello')]);
        await s.removeUser(a.user.id);
        expect(await s.getUser(a.user.id)).toBeUndefined();
        await rejectsWith(s.fetchPrekeyBundles(a.user.id), 'USER_NOT_FOUND');
        await rejectsWith(s.fetchEnvelopes(a.user.id, 1), 'DEVICE_NOT_FOUND');
        await rejectsWith(s.removeUser(a.user.id), 'USER_NOT_FOUND');
        expect(await s.listDevices(b.user.id)).toHaveLength(1);
      });
    });

    describe('enrolment codes', () => {
      it('redeem once: the first device gets id 1 and sets the identity key', async () => {
        const { s } = await fresh();
        const u = await s.createUser({ name: 'alice' });
        const c = code();
        await s.createEnrolmentCode({ userId: u.id, code: c, expiresAt: now + DAY });
        const d = newDevice({ name: 'Телефон 📱' });
        const dev = await s.enrolDevice({ code: c, device: d });
        expect(dev).toMatchObject({ userId: u.id, deviceId: 1, name: 'Телефон 📱', registrationId: 1234 });
        expect(dev.signedPrekey).toEqual(d.signedPrekey);
        expect(dev.kyberPrekey).toEqual(d.kyberPrekey);
        expect(dev.oneTimePrekeyCount).toBe(3);
        expect((await s.getUser(u.id))?.identityKey).toEqual(d.identityKey);
        await rejectsWith(s.enrolDevice({ code: c, device: newDevice() }), 'ENROLMENT_CODE_INVALID');
        expect(await s.listDevices(u.id)).toHaveLength(1);
      });

      it('refuses expired, unknown and malformed codes with the same code', async () => {
        const { s } = await fresh();
        const u = await s.createUser({ name: 'alice' });
        const c = code();
        await s.createEnrolmentCode({ userId: u.id, code: c, expiresAt: now + 1000 });
        now += 1000;
        const errors = [
          await rejectsWith(s.enrolDevice({ code: c, device: newDevice() }), 'ENROLMENT_CODE_INVALID'),
          await rejectsWith(s.enrolDevice({ code: code(), device: newDevice() }), 'ENROLMENT_CODE_INVALID'),
          await rejectsWith(s.enrolDevice({ code: 'short', device: newDevice() }), 'ENROLMENT_CODE_INVALID'),
        ];
        // Opaque: the three failures are indistinguishable, and the code never appears.
        expect(new Set(errors.map((e) => e.message)).size).toBe(1);
        expect(errors[0]?.message).not.toContain(c);
        expect(await s.listDevices(u.id)).toEqual([]);
      });

      it('a new code revokes the unused earlier one', async () => {
        const { s } = await fresh();
        const u = await s.createUser({ name: 'alice' });
        const first = code();
        const second = code();
        await s.createEnrolmentCode({ userId: u.id, code: first, expiresAt: now + DAY });
        await s.createEnrolmentCode({ userId: u.id, code: second, expiresAt: now + DAY });
        await rejectsWith(s.enrolDevice({ code: first, device: newDevice() }), 'ENROLMENT_CODE_INVALID');
        expect((await s.enrolDevice({ code: second, device: newDevice() })).deviceId).toBe(1);
      });

      it('bad device input does not consume the code', async () => {
        const { s } = await fresh();
        const u = await s.createUser({ name: 'alice' });
        const c = code();
        await s.createEnrolmentCode({ userId: u.id, code: c, expiresAt: now + DAY });
        const bad = newDevice({ identityKey: new Uint8Array(32) });
        await rejectsWith(s.enrolDevice({ code: c, device: bad }), 'INVALID_ARGUMENT');
        await rejectsWith(
          s.enrolDevice({ code: c, device: newDevice({ oneTimePrekeys: oneTime([5, 5]) }) }),
          'PREKEY_EXISTS',
        );
        expect((await s.enrolDevice({ code: c, device: newDevice() })).deviceId).toBe(1);
      });

      it('refuses codes for unknown users, past expiry, or of bad shape', async () => {
        const { s } = await fresh();
        const u = await s.createUser({ name: 'alice' });
        await rejectsWith(
          s.createEnrolmentCode({ userId: 'a'.repeat(32), code: code(), expiresAt: now + DAY }),
          'USER_NOT_FOUND',
        );
        await rejectsWith(
          s.createEnrolmentCode({ userId: u.id, code: code(), expiresAt: now }),
          'INVALID_ARGUMENT',
        );
        await rejectsWith(
          s.createEnrolmentCode({ userId: u.id, code: 'short', expiresAt: now + 1 }),
          'INVALID_ARGUMENT',
        );
        await rejectsWith(
          s.createEnrolmentCode({ userId: u.id, code: 'has space in it!!', expiresAt: now + 1 }),
          'INVALID_ARGUMENT',
        );
      });

      it('re-enrolment is a new identity: old devices and queues go, device ids are not reused', async () => {
        const { s } = await fresh();
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        await s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey, name: 'second' }));
        await s.enqueue([envelope(a.device, b.user, 'old')]);
        const c = code();
        await s.createEnrolmentCode({ userId: a.user.id, code: c, expiresAt: now + DAY });
        const fresh2 = newDevice();
        const dev = await s.enrolDevice({ code: c, device: fresh2 });
        expect(dev.deviceId).toBe(3);
        expect((await s.listDevices(a.user.id)).map((d) => d.deviceId)).toEqual([3]);
        expect((await s.getUser(a.user.id))?.identityKey).toEqual(fresh2.identityKey);
        await rejectsWith(s.fetchEnvelopes(a.user.id, 1), 'DEVICE_NOT_FOUND');
      });
    });

    describe('devices', () => {
      it('links devices with the same identity key and lists them in order', async () => {
        const { s } = await fresh();
        const a = await enrolled(s);
        const d2 = await s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey, name: 'phone' }));
        expect(d2.deviceId).toBe(2);
        expect(await s.getDevice(a.user.id, 2)).toEqual(d2);
        expect(await s.getDevice(a.user.id, 9)).toBeUndefined();
        expect((await s.listDevices(a.user.id)).map((d) => d.name)).toEqual(['laptop', 'phone']);
      });

      it("keeps a device's own authentication key, and refuses a malformed one", async () => {
        const { s } = await fresh();
        const a = await enrolled(s);
        const authKey = ecKey();
        const d2 = await s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey, authKey }));
        expect(d2.authKey).toEqual(authKey);
        expect((await s.getDevice(a.user.id, d2.deviceId))?.authKey).toEqual(authKey);
        expect((await s.getDevice(a.user.id, 1))?.authKey).toBeUndefined();
        const bad = new Uint8Array(authKey);
        bad[0] = 0x08;
        await rejectsWith(
          s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey, authKey: bad })),
          'INVALID_ARGUMENT',
        );
        expect(await s.listDevices(a.user.id)).toHaveLength(2);
      });

      it('refuses a different identity key, and any device before enrolment', async () => {
        const { s } = await fresh();
        const a = await enrolled(s);
        await rejectsWith(s.addDevice(a.user.id, newDevice()), 'IDENTITY_KEY_MISMATCH');
        const b = await s.createUser({ name: 'bob' });
        await rejectsWith(s.addDevice(b.id, newDevice()), 'IDENTITY_KEY_MISMATCH');
        await rejectsWith(s.addDevice('b'.repeat(32), newDevice()), 'USER_NOT_FOUND');
        expect(await s.listDevices(a.user.id)).toHaveLength(1);
        expect(await s.listDevices(b.id)).toEqual([]);
      });

      it('enforces the device limit', async () => {
        const { s } = await fresh({ maxDevicesPerUser: 2 });
        const a = await enrolled(s);
        await s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey }));
        await rejectsWith(
          s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey })),
          'TOO_MANY_DEVICES',
        );
        expect(await s.listDevices(a.user.id)).toHaveLength(2);
      });

      it('removes a device and never reuses its id', async () => {
        const { s } = await fresh();
        const a = await enrolled(s);
        await s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey }));
        await s.removeDevice(a.user.id, 2);
        await rejectsWith(s.removeDevice(a.user.id, 2), 'DEVICE_NOT_FOUND');
        const d3 = await s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey }));
        expect(d3.deviceId).toBe(3);
      });

      it('refuses malformed device uploads with labelled INVALID_ARGUMENT errors', async () => {
        const { s } = await fresh();
        const a = await enrolled(s);
        const ik = a.identityKey;
        const cases: [Partial<NewDevice> | Record<string, unknown>, string][] = [
          [{ name: '' }, 'device.name'],
          [{ name: 'x'.repeat(129) }, 'device.name'],
          [{ registrationId: 0 }, 'device.registrationId'],
          [{ registrationId: 16381 }, 'device.registrationId'],
          [{ registrationId: 1.5 }, 'device.registrationId'],
          [
            { signedPrekey: { ...signed(1), publicKey: new Uint8Array(33) } },
            'device.signedPrekey.publicKey',
          ],
          [
            { signedPrekey: { ...signed(1), signature: new Uint8Array(63) } },
            'device.signedPrekey.signature',
          ],
          [{ signedPrekey: { ...signed(1), id: 0x1000000 } }, 'device.signedPrekey.id'],
          [{ kyberPrekey: signed(2, 'ec') }, 'device.kyberPrekey.publicKey'],
          [{ oneTimePrekeys: [{ id: 1, publicKey: 'key' }] }, 'device.oneTimePrekeys[0].publicKey'],
          [{ oneTimePrekeys: 'none' }, 'device.oneTimePrekeys'],
        ];
        for (const [patch, label] of cases) {
          const err = await rejectsWith(
            s.addDevice(a.user.id, { ...newDevice({ identityKey: ik }), ...patch } as NewDevice),
            'INVALID_ARGUMENT',
          );
          expect(err.message).toContain(`"${label}"`);
        }
        expect(await s.listDevices(a.user.id)).toHaveLength(1);
      });
    });

    describe('prekey directory', () => {
      it('a bundle consumes the lowest one-time prekey; an exhausted device gets none', async () => {
        const { s } = await fresh();
        const d = newDevice({ oneTimePrekeys: oneTime([30, 10, 20]) });
        const a = await enrolled(s, 'alice', d);
        const ids: (number | undefined)[] = [];
        const remaining: number[] = [];
        for (let i = 0; i < 4; i++) {
          const [b] = await s.fetchPrekeyBundles(a.user.id);
          ids.push(b?.oneTimePrekey?.id);
          remaining.push(b!.oneTimePrekeysRemaining);
          expect(b).toMatchObject({ userId: a.user.id, deviceId: 1, registrationId: 1234 });
          expect(b?.identityKey).toEqual(d.identityKey);
          expect(b?.signedPrekey).toEqual(d.signedPrekey);
          expect(b?.kyberPrekey).toEqual(d.kyberPrekey);
        }
        expect(ids).toEqual([10, 20, 30, undefined]);
        expect(remaining).toEqual([2, 1, 0, 0]);
        const [b0] = await s.fetchPrekeyBundles(a.user.id);
        expect(b0?.oneTimePrekey).toBeUndefined();
        expect(b0?.signedPrekey).toEqual(d.signedPrekey);
        const pk10 = d.oneTimePrekeys.find((p) => p.id === 10)!;
        expect(pk10.publicKey).toHaveLength(33);
      });

      it('returns one bundle per device, or only the one asked for', async () => {
        const { s } = await fresh();
        const a = await enrolled(s);
        await s.addDevice(a.user.id, newDevice({ identityKey: a.identityKey, oneTimePrekeys: oneTime([7]) }));
        const all = await s.fetchPrekeyBundles(a.user.id);
        expect(all.map((b) => [b.deviceId, b.oneTimePrekey?.id])).toEqual([
          [1, 10],
          [2, 7],
        ]);
        const only = await s.fetchPrekeyBundles(a.user.id, { deviceId: 1 });
        expect(only.map((b) => [b.deviceId, b.oneTimePrekey?.id])).toEqual([[1, 11]]);
        await rejectsWith(s.fetchPrekeyBundles(a.user.id, { deviceId: 5 }), 'DEVICE_NOT_FOUND');
        await rejectsWith(s.fetchPrekeyBundles('c'.repeat(32)), 'USER_NOT_FOUND');
        expect(await s.fetchPrekeyBundles((await s.createUser({ name: 'nodevice' })).id)).toEqual([]);
      });

      it('adds one-time prekeys; a repeated id or an overflow adds none', async () => {
        const { s } = await fresh({ maxOneTimePrekeysPerDevice: 6 });
        const a = await enrolled(s);
        expect(await s.addOneTimePrekeys(a.user.id, 1, oneTime([1, 2]))).toBe(5);
        await rejectsWith(s.addOneTimePrekeys(a.user.id, 1, oneTime([3, 10])), 'PREKEY_EXISTS');
        await rejectsWith(s.addOneTimePrekeys(a.user.id, 1, oneTime([3, 3])), 'PREKEY_EXISTS');
        await rejectsWith(s.addOneTimePrekeys(a.user.id, 1, oneTime([3, 4])), 'TOO_MANY_PREKEYS');
        await rejectsWith(s.addOneTimePrekeys(a.user.id, 1, []), 'INVALID_ARGUMENT');
        await rejectsWith(s.addOneTimePrekeys(a.user.id, 2, oneTime([3])), 'DEVICE_NOT_FOUND');
        expect((await s.getDevice(a.user.id, 1))?.oneTimePrekeyCount).toBe(5);
        expect(await s.addOneTimePrekeys(a.user.id, 1, oneTime([3]))).toBe(6);
      });

      it('rotates the signed and Kyber prekeys; bad ones change nothing', async () => {
        const { s } = await fresh();
        const a = await enrolled(s);
        const spk = signed(40);
        const kpk = signed(41, 'kyber');
        await s.setSignedPrekey(a.user.id, 1, spk);
        await s.setKyberPrekey(a.user.id, 1, kpk);
        await rejectsWith(s.setSignedPrekey(a.user.id, 1, signed(42, 'kyber')), 'INVALID_ARGUMENT');
        await rejectsWith(s.setKyberPrekey(a.user.id, 1, signed(43)), 'INVALID_ARGUMENT');
        await rejectsWith(s.setSignedPrekey(a.user.id, 3, signed(44)), 'DEVICE_NOT_FOUND');
        const [b] = await s.fetchPrekeyBundles(a.user.id);
        expect(b?.signedPrekey).toEqual(spk);
        expect(b?.kyberPrekey).toEqual(kpk);
      });

      it('concurrent fetches on two handles never hand out the same one-time prekey', async () => {
        const { s, fx } = await fresh();
        const ids = Array.from({ length: 60 }, (_, i) => i + 1);
        const a = await enrolled(s, 'alice', newDevice({ oneTimePrekeys: oneTime(ids) }));
        const other = await peer(fx);
        const fetches = Array.from({ length: 80 }, (_, i) =>
          (i % 2 === 0 ? s : other).fetchPrekeyBundles(a.user.id),
        );
        const got = (await Promise.all(fetches)).map((bs) => bs[0]?.oneTimePrekey?.id);
        const handed = got.filter((id): id is number => id !== undefined);
        expect(handed).toHaveLength(60);
        expect(new Set(handed).size).toBe(60);
        expect(handed.sort((x, y) => x - y)).toEqual(ids);
        expect((await other.getDevice(a.user.id, 1))?.oneTimePrekeyCount).toBe(0);
      });
    });

    describe('mailbox', () => {
      it('delivers in order per device, pages with afterSeq, and deletes on ack', async () => {
        const { s } = await fresh();
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        const receipts = [];
        for (let i = 0; i < 5; i++)
          receipts.push(...(await s.enqueue([envelope(a.device, b.user, `m${i}`)])));
        expect(receipts.map((r) => r.seq)).toEqual([...receipts.map((r) => r.seq)].sort((x, y) => x - y));
        const page1 = await s.fetchEnvelopes(a.user.id, 1, { limit: 3 });
        expect(page1.map((e) => text(e.body))).toEqual(['m0', 'm1', 'm2']);
        expect(page1[0]).toMatchObject({
          id: receipts[0]?.id,
          senderUserId: b.user.id,
          senderDeviceId: 1,
          recipientUserId: a.user.id,
          recipientDeviceId: 1,
          createdAt: T0,
        });
        const page2 = await s.fetchEnvelopes(a.user.id, 1, { afterSeq: page1[2]!.seq });
        expect(page2.map((e) => text(e.body))).toEqual(['m3', 'm4']);
        expect(await s.mailboxStats(a.user.id, 1)).toEqual({ count: 5, bytes: 10 });
        expect(
          await s.ackEnvelopes(
            a.user.id,
            1,
            page1.map((e) => e.id),
          ),
        ).toBe(3);
        expect(
          await s.ackEnvelopes(
            a.user.id,
            1,
            page1.map((e) => e.id),
          ),
        ).toBe(0);
        expect((await s.fetchEnvelopes(a.user.id, 1)).map((e) => text(e.body))).toEqual(['m3', 'm4']);
        expect(await s.mailboxStats(a.user.id, 1)).toEqual({ count: 2, bytes: 4 });
      });

      it("a device cannot ack another device's envelopes", async () => {
        const { s } = await fresh();
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        const [r] = await s.enqueue([envelope(a.device, b.user, 'private')]);
        expect(await s.ackEnvelopes(b.user.id, 1, [r!.id])).toBe(0);
        expect(await s.fetchEnvelopes(a.user.id, 1)).toHaveLength(1);
        await rejectsWith(s.ackEnvelopes(a.user.id, 1, ['not-an-id']), 'INVALID_ARGUMENT');
      });

      it('a fan-out is all or nothing', async () => {
        const { s } = await fresh();
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        const ghost = { userId: a.user.id, deviceId: 7 };
        await rejectsWith(
          s.enqueue([envelope(a.device, b.user, 'x'), envelope(ghost, b.user, 'y')]),
          'DEVICE_NOT_FOUND',
        );
        expect(await s.fetchEnvelopes(a.user.id, 1)).toEqual([]);
        expect(await s.mailboxStats(a.user.id, 1)).toEqual({ count: 0, bytes: 0 });
        const ok = await s.enqueue([envelope(a.device, b.user, 'x'), envelope(b.device, a.user, 'y')]);
        expect(ok).toHaveLength(2);
      });

      it('concurrent mailbox writes succeed or fail each on its own', async () => {
        // A backend may commit concurrent calls together (the embedded one does): a failing
        // call must still change nothing and reject alone, and the others must commit.
        const { s } = await fresh({ maxQueuedPerDevice: 3 });
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        const c = await enrolled(s, 'carol');
        const ghost = { userId: a.user.id, deviceId: 7 };
        const [old] = await s.enqueue([envelope(b.device, a.user, 'old')]);
        await s.enqueue([1, 2, 3].map((i) => envelope(c.device, a.user, `c${i}`)));
        const settled = await Promise.allSettled<unknown>([
          s.enqueue([envelope(a.device, b.user, 'm1')]),
          s.enqueue([envelope(b.device, a.user, 'x'), envelope(ghost, b.user, 'y')]),
          s.ackEnvelopes(b.user.id, 1, [old!.id]),
          s.enqueue([envelope(a.device, b.user, 'm2'), envelope(a.device, b.user, 'm3')]),
          s.enqueue([envelope(c.device, a.user, 'z')]),
          s.ackEnvelopes(ghost.userId, ghost.deviceId, [old!.id]),
          s.enqueue([envelope(b.device, a.user, 'for-bob')]),
        ]);
        const outcome = settled.map((r) =>
          r.status === 'fulfilled' ? 'ok' : ((r.reason as ServerError).code ?? 'unexpected'),
        );
        expect(outcome).toEqual([
          'ok',
          'DEVICE_NOT_FOUND',
          'ok',
          'ok',
          'MAILBOX_FULL',
          'DEVICE_NOT_FOUND',
          'ok',
        ]);
        expect((settled[2] as PromiseFulfilledResult<number>).value).toBe(1);
        const toAlice = (await s.fetchEnvelopes(a.user.id, 1)).map((e) => text(e.body));
        expect([...toAlice].sort()).toEqual(['m1', 'm2', 'm3']);
        // One call's envelopes keep their order.
        expect(toAlice.indexOf('m2')).toBeLessThan(toAlice.indexOf('m3'));
        expect(await s.mailboxStats(a.user.id, 1)).toEqual({ count: 3, bytes: 6 });
        expect((await s.fetchEnvelopes(b.user.id, 1)).map((e) => text(e.body))).toEqual(['for-bob']);
        expect(await s.mailboxStats(b.user.id, 1)).toEqual({ count: 1, bytes: 7 });
        expect(await s.mailboxStats(c.user.id, 1)).toEqual({ count: 3, bytes: 6 });
      });

      it('enforces envelope size, queue length and queue bytes with coded errors', async () => {
        const { s } = await fresh({
          maxEnvelopeBytes: 8,
          maxQueuedPerDevice: 3,
          maxQueuedBytesPerDevice: 10,
        });
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        await rejectsWith(s.enqueue([envelope(a.device, b.user, '123456789')]), 'ENVELOPE_TOO_LARGE');
        await s.enqueue([envelope(a.device, b.user, '12345678')]);
        await rejectsWith(s.enqueue([envelope(a.device, b.user, '123')]), 'MAILBOX_FULL');
        await s.enqueue([envelope(a.device, b.user, '1'), envelope(a.device, b.user, '2')]);
        await rejectsWith(s.enqueue([envelope(a.device, b.user, '')]), 'INVALID_ARGUMENT');
        expect(await s.mailboxStats(a.user.id, 1)).toEqual({ count: 3, bytes: 10 });
        await rejectsWith(s.enqueue([envelope(a.device, b.user, '3')]), 'MAILBOX_FULL');
        // Other queues are unaffected by a full one.
        await s.enqueue([envelope(b.device, a.user, '3')]);
        const all = await s.fetchEnvelopes(a.user.id, 1);
        expect(all.map((e) => text(e.body))).toEqual(['12345678', '1', '2']);
        await s.ackEnvelopes(a.user.id, 1, [all[0]!.id]);
        await s.enqueue([envelope(a.device, b.user, '3')]);
      });

      it('expires envelopes past the age limit, and purges them', async () => {
        const { s } = await fresh({ maxEnvelopeAgeMs: 1000, maxQueuedPerDevice: 2 });
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        await s.enqueue([envelope(a.device, b.user, 'old1'), envelope(a.device, b.user, 'old2')]);
        now += 500;
        await rejectsWith(s.enqueue([envelope(a.device, b.user, 'x')]), 'MAILBOX_FULL');
        now += 501;
        expect(await s.fetchEnvelopes(a.user.id, 1)).toEqual([]);
        // A full queue of expired envelopes makes room on demand.
        await s.enqueue([envelope(a.device, b.user, 'new')]);
        expect((await s.fetchEnvelopes(a.user.id, 1)).map((e) => text(e.body))).toEqual(['new']);
        await s.enqueue([envelope(b.device, a.user, 'for-bob')]);
        now += 1001;
        expect(await s.purgeExpiredEnvelopes()).toBe(2);
        expect(await s.mailboxStats(a.user.id, 1)).toEqual({ count: 0, bytes: 0 });
        expect(await s.mailboxStats(b.user.id, 1)).toEqual({ count: 0, bytes: 0 });
        expect(await s.purgeExpiredEnvelopes()).toBe(0);
      });

      it('an enqueued envelope is durable: another handle sees it after the first is closed', async () => {
        const { s, fx } = await fresh();
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        const body = new Uint8Array(randomBytes(1000));
        const [r] = await s.enqueue([{ ...envelope(a.device, b.user, ''), body }]);
        await s.close();
        const again = await peer(fx);
        const [e] = await again.fetchEnvelopes(a.user.id, 1);
        expect(e?.id).toBe(r?.id);
        expect(e?.body).toEqual(body);
      });

      it('refuses bad mailbox arguments with INVALID_ARGUMENT', async () => {
        const { s } = await fresh();
        const a = await enrolled(s, 'alice');
        const calls: Promise<unknown>[] = [
          s.enqueue([]),
          s.enqueue('x' as never),
          s.enqueue([{ ...envelope(a.device, a.user, 'x'), recipientDeviceId: 0 }]),
          s.enqueue([{ ...envelope(a.device, a.user, 'x'), senderUserId: 'nope' }]),
          s.enqueue([{ ...envelope(a.device, a.user, 'x'), body: 'text' as never }]),
          s.fetchEnvelopes(a.user.id, 1, { limit: 0 }),
          s.fetchEnvelopes(a.user.id, 1, { limit: 1001 }),
          s.fetchEnvelopes(a.user.id, 1, { afterSeq: -1 }),
          s.fetchEnvelopes(a.user.id, -1),
          s.ackEnvelopes(a.user.id, 1, 'id' as never),
          s.mailboxStats('x', 1),
        ];
        for (const c of calls) await rejectsWith(c, 'INVALID_ARGUMENT');
        expect(await s.mailboxStats(a.user.id, 1)).toEqual({ count: 0, bytes: 0 });
      });
    });

    // --- RBAC, org units, channels, audit ---------------------------------------------

    /** A client-chosen channel id. */
    const channelId = () => randomBytes(16).toString('hex');
    /** An opaque signed change: storage keeps the bytes as given and does not parse them. */
    const change = (label: string) => ({
      change: new TextEncoder().encode(`{"change":"${label}","nonce":"${randomBytes(8).toString('hex')}"}`),
      signature: new Uint8Array(randomBytes(64)),
    });
    const entryAt = (seq: number, label = `c${seq}`) => ({ seq, ...change(label) });

    async function newChannel(s: Storage, createdBy: string, name = 'ops', unitId?: string) {
      const id = channelId();
      const genesis = change('genesis');
      const ch = await s.createChannel({ id, name, createdBy, genesis, ...(unitId ? { unitId } : {}) });
      return { id, genesis, ch };
    }

    describe('roles', () => {
      it('lists the built-in roles with sorted permissions, and custom roles by name', async () => {
        const { s } = await fresh();
        const builtins = await s.listRoles();
        expect(builtins.map((r) => r.name)).toEqual(['admin', 'auditor', 'guest', 'member']);
        for (const r of builtins) {
          expect(r.builtin).toBe(true);
          expect(r.createdAt).toBe(0);
          expect(r.permissions).toEqual(
            [...new Set(BUILTIN_ROLES[r.name as keyof typeof BUILTIN_ROLES])].sort(),
          );
        }
        expect(await s.getRole('admin')).toEqual(builtins[0]);
        now += 5;
        const reviewer = await s.createRole({
          name: 'reviewer',
          permissions: ['message.send', 'audit.read', 'message.send'],
        });
        expect(reviewer).toEqual({
          name: 'reviewer',
          builtin: false,
          permissions: ['audit.read', 'message.send'],
          createdAt: T0 + 5,
        });
        const bot = await s.createRole({ name: 'bot', permissions: ['message.send'] });
        expect(await s.getRole('reviewer')).toEqual(reviewer);
        expect(await s.getRole('nobody')).toBeUndefined();
        const all = await s.listRoles();
        expect(all.map((r) => r.name)).toEqual(['admin', 'auditor', 'bot', 'guest', 'member', 'reviewer']);
        expect(all[2]).toEqual(bot);
      });

      it('refuses taken or built-in names, unknown permissions and bad input, creating nothing', async () => {
        const { s } = await fresh();
        await s.createRole({ name: 'reviewer', permissions: ['audit.read'] });
        await rejectsWith(s.createRole({ name: 'reviewer', permissions: ['message.send'] }), 'ROLE_EXISTS');
        await rejectsWith(s.createRole({ name: 'admin', permissions: ['audit.read'] }), 'ROLE_EXISTS');
        await rejectsWith(s.createRole({ name: 'guest', permissions: ['audit.read'] }), 'ROLE_EXISTS');
        const bad: unknown[] = [
          { name: 'x', permissions: ['fly.plane'] },
          { name: 'x', permissions: [] },
          { name: 'x', permissions: 'audit.read' },
          { name: 'x', permissions: [7] },
          { name: 'X', permissions: ['audit.read'] },
          { name: '', permissions: ['audit.read'] },
          { name: 'a'.repeat(65), permissions: ['audit.read'] },
          null,
        ];
        for (const input of bad) await rejectsWith(s.createRole(input as never), 'INVALID_ARGUMENT');
        await rejectsWith(s.getRole('Bad Name'), 'INVALID_ARGUMENT');
        expect((await s.listRoles()).map((r) => r.name)).toEqual([
          'admin',
          'auditor',
          'guest',
          'member',
          'reviewer',
        ]);
        expect((await s.getRole('reviewer'))?.permissions).toEqual(['audit.read']);
      });

      it('deletes an unused custom role; refuses unknown, built-in and granted ones', async () => {
        const { s } = await fresh();
        const u = await s.createUser({ name: 'alice' });
        const unit = await s.createOrgUnit({ name: 'sales' });
        await s.createRole({ name: 'reviewer', permissions: ['audit.read'] });
        await rejectsWith(s.deleteRole('nobody'), 'ROLE_NOT_FOUND');
        await rejectsWith(s.deleteRole('member'), 'ROLE_BUILTIN');
        await rejectsWith(s.deleteRole('admin'), 'ROLE_BUILTIN');
        await rejectsWith(s.deleteRole('Bad'), 'INVALID_ARGUMENT');
        await s.grantRole(u.id, 'reviewer');
        await rejectsWith(s.deleteRole('reviewer'), 'ROLE_IN_USE');
        await s.revokeRole(u.id, 'reviewer');
        await s.addGrant({ userId: u.id, role: 'reviewer', scope: { kind: 'unit', unitId: unit.id } });
        await rejectsWith(s.deleteRole('reviewer'), 'ROLE_IN_USE');
        await s.removeGrant({ userId: u.id, role: 'reviewer', scope: { kind: 'unit', unitId: unit.id } });
        const { id } = await newChannel(s, u.id);
        await s.addGrant({ userId: u.id, role: 'reviewer', scope: { kind: 'channel', channelId: id } });
        await rejectsWith(s.deleteRole('reviewer'), 'ROLE_IN_USE');
        expect(await s.getRole('reviewer')).toBeDefined();
        await s.removeGrant({ userId: u.id, role: 'reviewer', scope: { kind: 'channel', channelId: id } });
        await s.deleteRole('reviewer');
        expect(await s.getRole('reviewer')).toBeUndefined();
        await rejectsWith(s.deleteRole('reviewer'), 'ROLE_NOT_FOUND');
        await rejectsWith(s.grantRole(u.id, 'reviewer'), 'ROLE_NOT_FOUND');
      });

      it('createUser and grantRole refuse a role that does not exist, changing nothing', async () => {
        const { s } = await fresh();
        await rejectsWith(s.createUser({ name: 'alice', roles: ['member', 'wizard'] }), 'ROLE_NOT_FOUND');
        expect(await s.listUsers()).toEqual([]);
        await s.createRole({ name: 'wizard', permissions: ['kms.manage'] });
        const u = await s.createUser({ name: 'alice', roles: ['member', 'wizard'] });
        expect(u.roles).toEqual(['member', 'wizard']);
        await rejectsWith(s.grantRole(u.id, 'sorcerer'), 'ROLE_NOT_FOUND');
        expect((await s.getUser(u.id))?.roles).toEqual(['member', 'wizard']);
      });
    });

    describe('grants', () => {
      it('adds global, unit and channel grants idempotently and lists them in order', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob', roles: ['member'] });
        const unit = await s.createOrgUnit({ name: 'sales' });
        const { id: ch } = await newChannel(s, a.id);
        const global = { userId: a.id, role: 'auditor', scope: { kind: 'global' } } as const;
        const inUnit = { userId: a.id, role: 'admin', scope: { kind: 'unit', unitId: unit.id } } as const;
        const inChannel = { userId: a.id, role: 'admin', scope: { kind: 'channel', channelId: ch } } as const;
        for (let i = 0; i < 2; i++) {
          await s.addGrant(global);
          await s.addGrant(inUnit);
          await s.addGrant(inChannel);
        }
        // A global grant is a role of the user.
        expect((await s.getUser(a.id))?.roles).toEqual(['auditor']);
        const forA = [inChannel, inUnit, global];
        expect(await s.listGrants({ userId: a.id })).toEqual(forA);
        const forB = [{ userId: b.id, role: 'member', scope: { kind: 'global' } }];
        expect(await s.listGrants({ userId: b.id })).toEqual(forB);
        const byUser = [a.id, b.id].sort();
        expect(await s.listGrants()).toEqual(byUser[0] === a.id ? [...forA, ...forB] : [...forB, ...forA]);
        expect(await s.listGrants({ userId: 'e'.repeat(32) })).toEqual([]);
        // grantRole is a global grant too.
        await s.grantRole(b.id, 'guest');
        expect(await s.listGrants({ userId: b.id })).toEqual([
          { userId: b.id, role: 'guest', scope: { kind: 'global' } },
          ...forB,
        ]);
        for (let i = 0; i < 2; i++) {
          await s.removeGrant(inUnit);
          await s.removeGrant(global);
        }
        expect(await s.listGrants({ userId: a.id })).toEqual([inChannel]);
        expect((await s.getUser(a.id))?.roles).toEqual([]);
      });

      it('refuses unknown users, roles, units and channels, and bad input, granting nothing', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const unit = await s.createOrgUnit({ name: 'sales' });
        const ghost = 'd'.repeat(32);
        await rejectsWith(
          s.addGrant({ userId: ghost, role: 'admin', scope: { kind: 'global' } }),
          'USER_NOT_FOUND',
        );
        await rejectsWith(
          s.addGrant({ userId: ghost, role: 'admin', scope: { kind: 'unit', unitId: unit.id } }),
          'USER_NOT_FOUND',
        );
        await rejectsWith(
          s.addGrant({ userId: a.id, role: 'wizard', scope: { kind: 'global' } }),
          'ROLE_NOT_FOUND',
        );
        await rejectsWith(
          s.addGrant({ userId: a.id, role: 'wizard', scope: { kind: 'unit', unitId: unit.id } }),
          'ROLE_NOT_FOUND',
        );
        await rejectsWith(
          s.addGrant({ userId: a.id, role: 'admin', scope: { kind: 'unit', unitId: ghost } }),
          'ORG_UNIT_NOT_FOUND',
        );
        await rejectsWith(
          s.addGrant({ userId: a.id, role: 'admin', scope: { kind: 'channel', channelId: ghost } }),
          'CHANNEL_NOT_FOUND',
        );
        const bad: unknown[] = [
          null,
          { userId: 'x', role: 'admin', scope: { kind: 'global' } },
          { userId: a.id, role: 'Admin', scope: { kind: 'global' } },
          { userId: a.id, role: 'admin', scope: { kind: 'planet' } },
          { userId: a.id, role: 'admin', scope: { kind: 'unit', unitId: 'sales' } },
          { userId: a.id, role: 'admin', scope: { kind: 'channel', channelId: 'ABC' } },
          { userId: a.id, role: 'admin', scope: { kind: 'channel' } },
          { userId: a.id, role: 'admin' },
        ];
        for (const g of bad) {
          await rejectsWith(s.addGrant(g as never), 'INVALID_ARGUMENT');
          await rejectsWith(s.removeGrant(g as never), 'INVALID_ARGUMENT');
        }
        await rejectsWith(s.listGrants({ userId: 'nope' }), 'INVALID_ARGUMENT');
        expect(await s.listGrants()).toEqual([]);
        // Removing what does not exist is not an error.
        await s.removeGrant({ userId: ghost, role: 'wizard', scope: { kind: 'unit', unitId: ghost } });
        await s.removeGrant({ userId: ghost, role: 'wizard', scope: { kind: 'channel', channelId: ghost } });
        await s.removeGrant({ userId: ghost, role: 'wizard', scope: { kind: 'global' } });
        await s.removeGrant({ userId: a.id, role: 'admin', scope: { kind: 'global' } });
      });
    });

    describe('org units', () => {
      it('creates a tree of units and finds and lists them', async () => {
        const { s } = await fresh();
        const sales = await s.createOrgUnit({ name: 'sales' });
        now += 1;
        const east = await s.createOrgUnit({ name: 'east', parentId: sales.id });
        expect(sales.id).toMatch(/^[0-9a-f]{32}$/);
        expect(sales).toEqual({ id: sales.id, name: 'sales', parentId: undefined, createdAt: T0 });
        expect(east).toEqual({ id: east.id, name: 'east', parentId: sales.id, createdAt: T0 + 1 });
        expect(await s.getOrgUnit(east.id)).toEqual(east);
        expect(await s.findOrgUnitByName('sales')).toEqual(sales);
        expect(await s.findOrgUnitByName('west')).toBeUndefined();
        expect(await s.getOrgUnit('0'.repeat(32))).toBeUndefined();
        expect(await s.listOrgUnits()).toEqual([east, sales]);
      });

      it('refuses a taken name, an unknown parent and bad input, creating nothing', async () => {
        const { s } = await fresh();
        const sales = await s.createOrgUnit({ name: 'sales' });
        await rejectsWith(s.createOrgUnit({ name: 'sales' }), 'ORG_UNIT_EXISTS');
        await rejectsWith(s.createOrgUnit({ name: 'sales', parentId: sales.id }), 'ORG_UNIT_EXISTS');
        await rejectsWith(s.createOrgUnit({ name: 'east', parentId: 'a'.repeat(32) }), 'ORG_UNIT_NOT_FOUND');
        const bad: unknown[] = [
          null,
          { name: 'East' },
          { name: '' },
          { name: 'east', parentId: 'sales' },
          {},
        ];
        for (const input of bad) await rejectsWith(s.createOrgUnit(input as never), 'INVALID_ARGUMENT');
        await rejectsWith(s.getOrgUnit('x'), 'INVALID_ARGUMENT');
        await rejectsWith(s.findOrgUnitByName('A B'), 'INVALID_ARGUMENT');
        expect(await s.listOrgUnits()).toEqual([sales]);
      });

      it('assigns users to units idempotently and lists both ways', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob' });
        const sales = await s.createOrgUnit({ name: 'sales' });
        const east = await s.createOrgUnit({ name: 'east', parentId: sales.id });
        for (let i = 0; i < 2; i++) {
          await s.addUserToOrgUnit(a.id, sales.id);
          await s.addUserToOrgUnit(a.id, east.id);
          await s.addUserToOrgUnit(b.id, sales.id);
        }
        expect(await s.listUserOrgUnits(a.id)).toEqual([sales.id, east.id].sort());
        expect(await s.listUserOrgUnits(b.id)).toEqual([sales.id]);
        expect(await s.listOrgUnitUsers(sales.id)).toEqual([a.id, b.id].sort());
        expect(await s.listOrgUnitUsers(east.id)).toEqual([a.id]);
        await rejectsWith(s.addUserToOrgUnit('f'.repeat(32), sales.id), 'USER_NOT_FOUND');
        await rejectsWith(s.addUserToOrgUnit(a.id, 'f'.repeat(32)), 'ORG_UNIT_NOT_FOUND');
        await rejectsWith(s.addUserToOrgUnit(a.id, 'sales'), 'INVALID_ARGUMENT');
        await rejectsWith(s.removeUserFromOrgUnit('alice', sales.id), 'INVALID_ARGUMENT');
        await rejectsWith(s.listUserOrgUnits('alice'), 'INVALID_ARGUMENT');
        await rejectsWith(s.listOrgUnitUsers('sales'), 'INVALID_ARGUMENT');
        for (let i = 0; i < 2; i++) await s.removeUserFromOrgUnit(a.id, sales.id);
        await s.removeUserFromOrgUnit('f'.repeat(32), 'f'.repeat(32));
        expect(await s.listUserOrgUnits(a.id)).toEqual([east.id]);
        expect(await s.listOrgUnitUsers(sales.id)).toEqual([b.id]);
        expect(await s.listOrgUnitUsers('f'.repeat(32))).toEqual([]);
        expect(await s.listUserOrgUnits('f'.repeat(32))).toEqual([]);
      });

      it('removes only an empty unit: not while it has sub-units, users, channels or grants', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const sales = await s.createOrgUnit({ name: 'sales' });
        await rejectsWith(s.removeOrgUnit('a'.repeat(32)), 'ORG_UNIT_NOT_FOUND');
        await rejectsWith(s.removeOrgUnit('sales'), 'INVALID_ARGUMENT');
        const east = await s.createOrgUnit({ name: 'east', parentId: sales.id });
        await rejectsWith(s.removeOrgUnit(sales.id), 'ORG_UNIT_NOT_EMPTY');
        await s.removeOrgUnit(east.id);
        await s.addUserToOrgUnit(a.id, sales.id);
        await rejectsWith(s.removeOrgUnit(sales.id), 'ORG_UNIT_NOT_EMPTY');
        await s.removeUserFromOrgUnit(a.id, sales.id);
        const { id: ch } = await newChannel(s, a.id, 'ops', sales.id);
        expect((await s.getChannel(ch))?.unitId).toBe(sales.id);
        await rejectsWith(s.removeOrgUnit(sales.id), 'ORG_UNIT_NOT_EMPTY');
        await s.removeChannel(ch);
        const grant = { userId: a.id, role: 'admin', scope: { kind: 'unit', unitId: sales.id } } as const;
        await s.addGrant(grant);
        await rejectsWith(s.removeOrgUnit(sales.id), 'ORG_UNIT_NOT_EMPTY');
        expect(await s.getOrgUnit(sales.id)).toBeDefined();
        expect(await s.listGrants()).toEqual([grant]);
        await s.removeGrant(grant);
        await s.removeOrgUnit(sales.id);
        expect(await s.listOrgUnits()).toEqual([]);
        await rejectsWith(s.removeOrgUnit(sales.id), 'ORG_UNIT_NOT_FOUND');
        // The name is free again.
        expect((await s.createOrgUnit({ name: 'sales' })).id).not.toBe(sales.id);
      });
    });

    describe('channels', () => {
      it('creates a channel with its genesis entry and its creator as the only manager', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const { id, genesis, ch } = await newChannel(s, a.id, 'ops');
        expect(ch).toEqual({
          id,
          name: 'ops',
          unitId: undefined,
          createdBy: a.id,
          seq: 0,
          memberCount: 1,
          createdAt: T0,
        });
        expect(await s.getChannel(id)).toEqual(ch);
        expect(await s.findChannelByName('ops')).toEqual(ch);
        expect(await s.findChannelByName('dev')).toBeUndefined();
        expect(await s.getChannel('0'.repeat(32))).toBeUndefined();
        expect(await s.channelMembers(id)).toEqual([{ userId: a.id, role: 'manager', addedSeq: 0 }]);
        expect(await s.channelMembership(id, a.id)).toEqual({ userId: a.id, role: 'manager', addedSeq: 0 });
        expect(await s.channelMembership(id, 'b'.repeat(32))).toBeUndefined();
        // A member without devices has nothing to fan out to.
        expect(await s.channelMemberDevices(id)).toEqual([]);
        const log = await s.channelLog(id);
        expect(log).toEqual([{ seq: 0, change: genesis.change, signature: genesis.signature }]);
        expect(log[0]?.change).toBeInstanceOf(Uint8Array);
        expect(await s.listChannels()).toEqual([ch]);
      });

      it('lists every device of every member in one read, and nobody else', async () => {
        const { s } = await fresh();
        const a = await enrolled(s, 'alice');
        const b = await enrolled(s, 'bob');
        const outsider = await enrolled(s, 'mallory');
        await s.addDevice(b.user.id, newDevice({ identityKey: b.identityKey, name: 'phone' }));
        const { id } = await newChannel(s, a.user.id);
        await s.appendChannelChange(id, entryAt(1, 'add bob'), {
          kind: 'add',
          userId: b.user.id,
          role: 'member',
        });
        const expected = [
          { userId: a.user.id, deviceId: 1 },
          { userId: b.user.id, deviceId: 1 },
          { userId: b.user.id, deviceId: 2 },
        ].sort((x, y) => (x.userId < y.userId ? -1 : x.userId > y.userId ? 1 : x.deviceId - y.deviceId));
        expect(await s.channelMemberDevices(id)).toEqual(expected);
        expect((await s.channelMemberDevices(id)).some((d) => d.userId === outsider.user.id)).toBe(false);
        await s.appendChannelChange(id, entryAt(2, 'remove bob'), { kind: 'remove', userId: b.user.id });
        expect(await s.channelMemberDevices(id)).toEqual([{ userId: a.user.id, deviceId: 1 }]);
        await rejectsWith(s.channelMemberDevices(channelId()), 'CHANNEL_NOT_FOUND');
        await rejectsWith(s.channelMemberDevices('not-hex'), 'INVALID_ARGUMENT');
      });

      it('refuses a taken id or name, unknown creator or unit, and bad input, creating nothing', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const { id, ch } = await newChannel(s, a.id, 'ops');
        const g = change('g');
        await rejectsWith(
          s.createChannel({ id, name: 'dev', createdBy: a.id, genesis: g }),
          'CHANNEL_EXISTS',
        );
        await rejectsWith(
          s.createChannel({ id: channelId(), name: 'ops', createdBy: a.id, genesis: g }),
          'CHANNEL_EXISTS',
        );
        await rejectsWith(
          s.createChannel({ id: channelId(), name: 'dev', createdBy: 'b'.repeat(32), genesis: g }),
          'USER_NOT_FOUND',
        );
        await rejectsWith(
          s.createChannel({
            id: channelId(),
            name: 'dev',
            createdBy: a.id,
            unitId: 'b'.repeat(32),
            genesis: g,
          }),
          'ORG_UNIT_NOT_FOUND',
        );
        const ok = { id: channelId(), name: 'dev', createdBy: a.id, genesis: g };
        const bad: unknown[] = [
          null,
          { ...ok, id: 'A'.repeat(32) },
          { ...ok, id: 'abc' },
          { ...ok, name: 'Dev' },
          { ...ok, name: '' },
          { ...ok, createdBy: 'alice' },
          { ...ok, unitId: 'sales' },
          { ...ok, genesis: undefined },
          { ...ok, genesis: { change: 'text', signature: g.signature } },
          { ...ok, genesis: { change: new Uint8Array(0), signature: g.signature } },
          { ...ok, genesis: { change: new Uint8Array(4096), signature: g.signature } },
          { ...ok, genesis: { change: g.change, signature: new Uint8Array(63) } },
        ];
        for (const input of bad) await rejectsWith(s.createChannel(input as never), 'INVALID_ARGUMENT');
        await rejectsWith(s.getChannel('x'), 'INVALID_ARGUMENT');
        await rejectsWith(s.findChannelByName('Ops'), 'INVALID_ARGUMENT');
        expect(await s.listChannels()).toEqual([ch]);
        expect(await s.listChannels({ memberUserId: a.id })).toEqual([ch]);
      });

      it('appends changes in order and applies their effects to the member table', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob' });
        const c = await s.createUser({ name: 'carol' });
        const { id, genesis } = await newChannel(s, a.id);
        now += 10;
        const e1 = entryAt(1);
        const after1 = await s.appendChannelChange(id, e1, { kind: 'add', userId: b.id, role: 'member' });
        expect(after1).toMatchObject({ id, seq: 1, memberCount: 2, createdAt: T0 });
        const e2 = entryAt(2);
        await s.appendChannelChange(id, e2, { kind: 'add', userId: c.id, role: 'manager' });
        expect(await s.channelMembers(id)).toEqual(
          [
            { userId: a.id, role: 'manager', addedSeq: 0 },
            { userId: b.id, role: 'member', addedSeq: 1 },
            { userId: c.id, role: 'manager', addedSeq: 2 },
          ].sort((x, y) => (x.userId < y.userId ? -1 : 1)),
        );
        // An add for a member already there sets their role (the service decides whether it may).
        const e3 = entryAt(3);
        await s.appendChannelChange(id, e3, { kind: 'add', userId: b.id, role: 'manager' });
        expect(await s.channelMembership(id, b.id)).toEqual({ userId: b.id, role: 'manager', addedSeq: 3 });
        const e4 = entryAt(4);
        const after4 = await s.appendChannelChange(id, e4, { kind: 'remove', userId: c.id });
        expect(after4).toMatchObject({ seq: 4, memberCount: 2 });
        expect(await s.getChannel(id)).toEqual(after4);
        expect(await s.channelMembership(id, c.id)).toBeUndefined();
        // Removing someone who is not a member only appends the entry.
        const e5 = entryAt(5);
        expect(await s.appendChannelChange(id, e5, { kind: 'remove', userId: c.id })).toMatchObject({
          seq: 5,
          memberCount: 2,
        });
        expect(await s.channelLog(id)).toEqual([{ seq: 0, ...genesis }, e1, e2, e3, e4, e5]);
      });

      it('a removal also drops the member\u2019s grants on that channel, and only those', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob' });
        const { id } = await newChannel(s, a.id, 'ops');
        const { id: other } = await newChannel(s, a.id, 'dev');
        await s.appendChannelChange(id, entryAt(1), { kind: 'add', userId: b.id, role: 'manager' });
        await s.appendChannelChange(other, entryAt(1), { kind: 'add', userId: b.id, role: 'member' });
        const here = { userId: b.id, role: 'admin', scope: { kind: 'channel', channelId: id } } as const;
        const there = { userId: b.id, role: 'admin', scope: { kind: 'channel', channelId: other } } as const;
        const mine = { userId: a.id, role: 'admin', scope: { kind: 'channel', channelId: id } } as const;
        await s.addGrant(here);
        await s.addGrant(there);
        await s.addGrant(mine);
        await s.appendChannelChange(id, entryAt(2), { kind: 'remove', userId: b.id });
        expect(await s.listGrants({ userId: b.id })).toEqual([there]);
        expect(await s.listGrants({ userId: a.id })).toEqual([mine]);
        expect(await s.channelMembership(other, b.id)).toMatchObject({ role: 'member' });
      });

      it('refuses an out-of-place seq, an unknown channel or user, and bad input, changing nothing', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob' });
        const { id } = await newChannel(s, a.id);
        await s.appendChannelChange(id, entryAt(1), { kind: 'add', userId: b.id, role: 'member' });
        const before = {
          ch: await s.getChannel(id),
          log: await s.channelLog(id),
          members: await s.channelMembers(id),
        };
        const add = { kind: 'add', userId: b.id, role: 'manager' } as const;
        for (const seq of [0, 1, 3, 100]) {
          await rejectsWith(s.appendChannelChange(id, entryAt(seq), add), 'CHANNEL_CONFLICT');
        }
        await rejectsWith(s.appendChannelChange('c'.repeat(32), entryAt(1), add), 'CHANNEL_NOT_FOUND');
        await rejectsWith(
          s.appendChannelChange(id, entryAt(2), { kind: 'add', userId: 'c'.repeat(32), role: 'member' }),
          'USER_NOT_FOUND',
        );
        const e = entryAt(2);
        const bad: [unknown, unknown, unknown][] = [
          ['nope', e, add],
          [id, null, add],
          [id, { ...e, seq: -1 }, add],
          [id, { ...e, seq: 1.5 }, add],
          [id, { ...e, change: new Uint8Array(0) }, add],
          [id, { ...e, change: 'x' }, add],
          [id, { ...e, signature: new Uint8Array(65) }, add],
          [id, e, null],
          [id, e, { kind: 'ban', userId: b.id }],
          [id, e, { kind: 'add', userId: b.id, role: 'owner' }],
          [id, e, { kind: 'add', userId: b.id }],
          [id, e, { kind: 'remove', userId: 'bob' }],
        ];
        for (const [cid, entry, effect] of bad) {
          await rejectsWith(
            s.appendChannelChange(cid as never, entry as never, effect as never),
            'INVALID_ARGUMENT',
          );
        }
        expect(await s.getChannel(id)).toEqual(before.ch);
        expect(await s.channelLog(id)).toEqual(before.log);
        expect(await s.channelMembers(id)).toEqual(before.members);
      });

      it('two handles appending the same seq: exactly one wins, the other gets CHANNEL_CONFLICT', async () => {
        const { s, fx } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob' });
        const c = await s.createUser({ name: 'carol' });
        const other = await peer(fx);
        const { id } = await newChannel(s, a.id);
        for (let seq = 1; seq <= 6; seq++) {
          const e1 = entryAt(seq, `one-${seq}`);
          const e2 = entryAt(seq, `two-${seq}`);
          const settled = await Promise.allSettled([
            s.appendChannelChange(id, e1, { kind: 'add', userId: b.id, role: 'member' }),
            other.appendChannelChange(id, e2, { kind: 'add', userId: c.id, role: 'member' }),
          ]);
          const won = settled.filter((r) => r.status === 'fulfilled');
          const lost = settled.filter((r) => r.status === 'rejected') as PromiseRejectedResult[];
          expect(won).toHaveLength(1);
          expect(lost).toHaveLength(1);
          expect((lost[0]!.reason as ServerError).code).toBe('CHANNEL_CONFLICT');
          const winner = settled[0]?.status === 'fulfilled' ? e1 : e2;
          const [stored] = await other.channelLog(id, { afterSeq: seq - 1 });
          expect(stored).toEqual(winner);
        }
        expect((await s.channelLog(id)).map((e) => e.seq)).toEqual([0, 1, 2, 3, 4, 5, 6]);
        expect((await other.getChannel(id))?.seq).toBe(6);
      });

      it('pages the log with afterSeq and limit, returning the exact bytes', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const { id, genesis } = await newChannel(s, a.id);
        const entries = [{ seq: 0, ...genesis }];
        for (let seq = 1; seq <= 7; seq++) {
          const e = {
            seq,
            change: new Uint8Array(randomBytes(100 + seq)),
            signature: new Uint8Array(randomBytes(64)),
          };
          await s.appendChannelChange(id, e, { kind: 'remove', userId: 'b'.repeat(32) });
          entries.push(e);
        }
        expect(await s.channelLog(id)).toEqual(entries);
        expect(await s.channelLog(id, { limit: 3 })).toEqual(entries.slice(0, 3));
        expect(await s.channelLog(id, { afterSeq: 0 })).toEqual(entries.slice(1));
        expect(await s.channelLog(id, { afterSeq: 2, limit: 2 })).toEqual(entries.slice(3, 5));
        expect(await s.channelLog(id, { afterSeq: 7 })).toEqual([]);
        await rejectsWith(s.channelLog('c'.repeat(32)), 'CHANNEL_NOT_FOUND');
        for (const o of [{ limit: 0 }, { limit: 501 }, { afterSeq: -1 }, { afterSeq: 0.5 }, 'x']) {
          await rejectsWith(s.channelLog(id, o as never), 'INVALID_ARGUMENT');
        }
        await rejectsWith(s.channelLog('x'), 'INVALID_ARGUMENT');
      });

      it("lists all channels by name, or one user's", async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob' });
        const c = await s.createUser({ name: 'carol' });
        const ops = await newChannel(s, a.id, 'ops');
        const dev = await newChannel(s, b.id, 'dev');
        const zed = await newChannel(s, b.id, 'zed');
        const dev1 = await s.appendChannelChange(dev.id, entryAt(1), {
          kind: 'add',
          userId: a.id,
          role: 'member',
        });
        expect(await s.listChannels()).toEqual([dev1, ops.ch, zed.ch]);
        expect(await s.listChannels({})).toEqual([dev1, ops.ch, zed.ch]);
        expect(await s.listChannels({ memberUserId: a.id })).toEqual([dev1, ops.ch]);
        expect(await s.listChannels({ memberUserId: b.id })).toEqual([dev1, zed.ch]);
        expect(await s.listChannels({ memberUserId: c.id })).toEqual([]);
        await rejectsWith(s.listChannels({ memberUserId: 'carol' }), 'INVALID_ARGUMENT');
        await rejectsWith(s.channelMembers('c'.repeat(32)), 'CHANNEL_NOT_FOUND');
        await rejectsWith(s.channelMembers('x'), 'INVALID_ARGUMENT');
        await rejectsWith(s.channelMembership(ops.id, 'x'), 'INVALID_ARGUMENT');
      });

      it('removes a channel with its log, members and channel grants', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob' });
        const { id } = await newChannel(s, a.id, 'ops');
        const keep = await newChannel(s, a.id, 'dev');
        await s.appendChannelChange(id, entryAt(1), { kind: 'add', userId: b.id, role: 'member' });
        await s.addGrant({ userId: b.id, role: 'admin', scope: { kind: 'channel', channelId: id } });
        const kept = { userId: b.id, role: 'admin', scope: { kind: 'channel', channelId: keep.id } } as const;
        await s.addGrant(kept);
        await rejectsWith(s.removeChannel('c'.repeat(32)), 'CHANNEL_NOT_FOUND');
        await rejectsWith(s.removeChannel('x'), 'INVALID_ARGUMENT');
        await s.removeChannel(id);
        expect(await s.getChannel(id)).toBeUndefined();
        expect(await s.findChannelByName('ops')).toBeUndefined();
        await rejectsWith(s.channelMembers(id), 'CHANNEL_NOT_FOUND');
        await rejectsWith(s.channelLog(id), 'CHANNEL_NOT_FOUND');
        expect(await s.channelMembership(id, b.id)).toBeUndefined();
        expect(await s.listGrants()).toEqual([kept]);
        expect(await s.listChannels({ memberUserId: b.id })).toEqual([]);
        expect(await s.listChannels()).toEqual([keep.ch]);
        await rejectsWith(s.removeChannel(id), 'CHANNEL_NOT_FOUND');
        // The id and name can be used again, with a fresh log.
        const g = change('again');
        const again = await s.createChannel({ id, name: 'ops', createdBy: b.id, genesis: g });
        expect(again).toMatchObject({ seq: 0, memberCount: 1, createdBy: b.id });
        expect(await s.channelLog(id)).toEqual([{ seq: 0, ...g }]);
      });

      it('removing a user drops their memberships, grants and units, and keeps the signed log', async () => {
        const { s } = await fresh();
        const a = await s.createUser({ name: 'alice' });
        const b = await s.createUser({ name: 'bob' });
        const unit = await s.createOrgUnit({ name: 'sales' });
        const { id } = await newChannel(s, a.id, 'ops', unit.id);
        await s.appendChannelChange(id, entryAt(1), { kind: 'add', userId: b.id, role: 'manager' });
        await s.addUserToOrgUnit(a.id, unit.id);
        await s.addUserToOrgUnit(b.id, unit.id);
        await s.addGrant({ userId: a.id, role: 'admin', scope: { kind: 'unit', unitId: unit.id } });
        await s.addGrant({ userId: a.id, role: 'admin', scope: { kind: 'channel', channelId: id } });
        await s.addGrant({ userId: b.id, role: 'auditor', scope: { kind: 'unit', unitId: unit.id } });
        const log = await s.channelLog(id);
        await s.removeUser(a.id);
        expect(await s.channelMembers(id)).toEqual([{ userId: b.id, role: 'manager', addedSeq: 1 }]);
        expect(await s.getChannel(id)).toMatchObject({ seq: 1, memberCount: 1, createdBy: a.id });
        expect(await s.channelLog(id)).toEqual(log);
        expect(await s.listGrants()).toEqual([
          { userId: b.id, role: 'auditor', scope: { kind: 'unit', unitId: unit.id } },
        ]);
        expect(await s.listOrgUnitUsers(unit.id)).toEqual([b.id]);
        expect(await s.listUserOrgUnits(a.id)).toEqual([]);
        expect(await s.listChannels({ memberUserId: a.id })).toEqual([]);
      });
    });

    describe('audit log', () => {
      const entry = (i: number, overrides: Partial<AuditEntry> = {}): AuditEntry => ({
        at: T0 + i * 1000,
        actor: { kind: 'device', userId: 'a'.repeat(32), userName: 'alice', deviceId: 1 },
        action: 'grant.add',
        target: `user:u${i}`,
        outcome: 'ok',
        detail: { role: 'auditor', n: i, scoped: false },
        ...overrides,
      });

      async function appendN(s: Storage, n: number): Promise<AuditRecord[]> {
        const out: AuditRecord[] = [];
        for (let i = 1; i <= n; i++) out.push(await s.appendAudit(entry(i)));
        return out;
      }

      it('verifies an empty log', async () => {
        const { s } = await fresh();
        expect(await s.listAudit()).toEqual([]);
        expect(await s.verifyAudit()).toEqual({
          ok: true,
          records: 0,
          head: { seq: 0, hash: '0'.repeat(64) },
        });
      });

      it('appends records to a hash chain and lists them', async () => {
        const { s } = await fresh();
        const first = await s.appendAudit(entry(1));
        expect(first).toEqual({ ...entry(1), seq: 1, prevHash: '0'.repeat(64), hash: first.hash });
        expect(first.hash).toMatch(/^[0-9a-f]{64}$/);
        const second = await s.appendAudit(
          entry(2, {
            actor: { kind: 'operator' },
            outcome: 'denied',
            detail: undefined,
            action: 'access.denied',
          }),
        );
        expect(second).toMatchObject({
          seq: 2,
          prevHash: first.hash,
          outcome: 'denied',
          action: 'access.denied',
        });
        expect(second.detail).toBeUndefined();
        expect(second.hash).not.toBe(first.hash);
        expect(await s.listAudit()).toEqual([first, second]);
        expect(await s.verifyAudit()).toEqual({ ok: true, records: 2, head: { seq: 2, hash: second.hash } });
      });

      it('pages with afterSeq, since and limit', async () => {
        const { s } = await fresh();
        const all = await appendN(s, 6);
        expect(await s.listAudit()).toEqual(all);
        expect(await s.listAudit({ afterSeq: 4 })).toEqual(all.slice(4));
        expect(await s.listAudit({ limit: 2 })).toEqual(all.slice(0, 2));
        expect(await s.listAudit({ since: T0 + 3000 })).toEqual(all.slice(2));
        expect(await s.listAudit({ since: T0 + 2500, afterSeq: 3, limit: 2 })).toEqual(all.slice(3, 5));
        expect(await s.listAudit({ afterSeq: 6 })).toEqual([]);
        for (const o of [{ limit: 0 }, { afterSeq: -1 }, { since: -1 }, { limit: 1.5 }, 'x']) {
          await rejectsWith(s.listAudit(o as never), 'INVALID_ARGUMENT');
        }
      });

      it('refuses malformed entries with INVALID_ARGUMENT and appends nothing', async () => {
        const { s } = await fresh();
        const bad: unknown[] = [
          null,
          entry(1, { action: 'party' }),
          entry(1, { target: '' }),
          entry(1, { target: 'x'.repeat(257) }),
          entry(1, { outcome: 'maybe' as never }),
          entry(1, { actor: { userName: 'alice' } }),
          entry(1, { at: -5 }),
          entry(1, { detail: { nested: { a: 1 } } as never }),
        ];
        for (const e of bad) await rejectsWith(s.appendAudit(e as never), 'INVALID_ARGUMENT');
        expect(await s.listAudit()).toEqual([]);
        expect((await s.verifyAudit()).ok).toBe(true);
      });

      it('concurrent appends from two handles form one unbroken chain', async () => {
        const { s, fx } = await fresh();
        const other = await peer(fx);
        const made = await Promise.all(
          Array.from({ length: 24 }, (_, i) => (i % 2 === 0 ? s : other).appendAudit(entry(i + 1))),
        );
        expect(made.map((r) => r.seq).sort((x, y) => x - y)).toEqual(
          Array.from({ length: 24 }, (_, i) => i + 1),
        );
        const listed = await other.listAudit();
        expect(listed.map((r) => r.seq)).toEqual(Array.from({ length: 24 }, (_, i) => i + 1));
        for (let i = 1; i < listed.length; i++) expect(listed[i]?.prevHash).toBe(listed[i - 1]?.hash);
        const last = listed[23]!;
        expect(await s.verifyAudit()).toEqual({ ok: true, records: 24, head: { seq: 24, hash: last.hash } });
        expect(await other.verifyAudit()).toEqual({
          ok: true,
          records: 24,
          head: { seq: 24, hash: last.hash },
        });
      });

      describe('detects tampering', () => {
        /** A store with six records and its tamper access; skips when the backend has none. */
        async function tampered(ctx: { skip: (note?: string) => void }) {
          const { s, fx } = await fresh();
          if (!fx.auditTamper) {
            ctx.skip('this backend provides no auditTamper');
            throw new Error('unreachable');
          }
          const records = await appendN(s, 6);
          expect((await s.verifyAudit()).ok).toBe(true);
          return { s, t: fx.auditTamper, records };
        }

        /** Canonical bytes of a record chained after `prev`, as a key holder would make them. */
        function forge(prev: { seq: number; hash: string } | undefined, target: string) {
          return chainAuditRecord(prev, checkAuditEntry(entry(9, { target })));
        }

        async function expectProblem(s: Storage, problem: string, seq: number) {
          const v = await s.verifyAudit();
          expect(v).toMatchObject({ ok: false, problem, seq });
          if (!v.ok) expect(v.message.length).toBeGreaterThan(0);
        }

        it('a sealed record that no longer opens: edited, and listing it fails', async (ctx) => {
          const { s, t } = await tampered(ctx);
          await t.corruptRecord(3);
          await expectProblem(s, 'edited', 3);
          await rejectsWith(s.listAudit(), 'UNSEAL_FAILED');
          expect(await s.listAudit({ limit: 2 })).toHaveLength(2);
        });

        it('a changed hash column: edited', async (ctx) => {
          const { s, t } = await tampered(ctx);
          await t.setHash(4, 'ab'.repeat(32));
          await expectProblem(s, 'edited', 4);
        });

        it('a record replaced by another, properly sealed and hashed: edited at that record', async (ctx) => {
          const { s, t, records } = await tampered(ctx);
          const { bytes } = forge({ seq: 2, hash: records[1]!.hash }, 'user:mallory');
          await t.putRecord(3, bytes);
          await expectProblem(s, 'edited', 3);
        });

        it('the last record replaced: the signed head names other bytes, edited', async (ctx) => {
          const { s, t, records } = await tampered(ctx);
          const { bytes } = forge({ seq: 5, hash: records[4]!.hash }, 'user:mallory');
          await t.putRecord(6, bytes);
          await expectProblem(s, 'edited', 6);
        });

        it('a record deleted in the middle: removed', async (ctx) => {
          const { s, t } = await tampered(ctx);
          await t.deleteRow(3);
          await expectProblem(s, 'removed', 3);
        });

        it('records deleted from the end: truncated', async (ctx) => {
          const { s, t } = await tampered(ctx);
          await t.deleteRow(6);
          await t.deleteRow(5);
          await expectProblem(s, 'truncated', 5);
        });

        it('an append after records were cut from the end chains after the signed head: the gap stays visible', async (ctx) => {
          const { s, t } = await tampered(ctx);
          await t.deleteRow(6);
          await t.deleteRow(5);
          const next = await s.appendAudit(entry(10));
          expect(next.seq).toBe(7);
          await expectProblem(s, 'removed', 5);
        });

        it('a properly chained record appended without re-signing the head: inserted', async (ctx) => {
          const { s, t, records } = await tampered(ctx);
          const { bytes } = forge({ seq: 6, hash: records[5]!.hash }, 'user:mallory');
          await t.putRecord(7, bytes);
          await expectProblem(s, 'inserted', 7);
        });

        it('a forged record inserted in the middle, later rows shifted: inserted', async (ctx) => {
          const { s, t, records } = await tampered(ctx);
          const { bytes } = forge({ seq: 2, hash: records[1]!.hash }, 'user:mallory');
          await t.putRecord(3, bytes, { shift: true });
          await expectProblem(s, 'inserted', 3);
        });

        it('two records swapped: reordered', async (ctx) => {
          const { s, t } = await tampered(ctx);
          await t.swapSeqs(2, 4);
          await expectProblem(s, 'reordered', 2);
        });

        it('the signed head deleted: head-signature', async (ctx) => {
          const { s, t } = await tampered(ctx);
          await t.deleteHead();
          await expectProblem(s, 'head-signature', 1);
        });

        it('the head signature changed: head-signature', async (ctx) => {
          const { s, t } = await tampered(ctx);
          await t.corruptHeadSignature();
          await expectProblem(s, 'head-signature', 6);
          // The next append signs a fresh head.
          await s.appendAudit(entry(7));
          expect(await s.verifyAudit()).toMatchObject({ ok: true, records: 7 });
        });
      });
    });

    describe('files', () => {
      const CHUNK = 4096;
      const LIMITS = { maxFileBytes: 10 * CHUNK, quotaBytes: 16 * CHUNK };
      const newFileId = () => randomBytes(16).toString('hex');
      function fileOf(ownerId: string, size: number, recipients?: NewFile['recipients']): NewFile {
        return {
          id: newFileId(),
          ownerId,
          size,
          chunkSize: CHUNK,
          recipients: recipients ?? { kind: 'users', userIds: [ownerId] },
          wrappedKey: { keyId: 'kek-1', ciphertext: new Uint8Array(randomBytes(60)) },
        };
      }
      /** Stands for a sealed chunk of `bytes` plaintext bytes: opaque bytes to the storage. */
      const blob = (bytes: number) => new Uint8Array(randomBytes(bytes + FILE_CHUNK_OVERHEAD));

      it("creates and reads a file, with sorted distinct recipients, and counts it in the owner's usage", async () => {
        const { s } = await fresh();
        const alice = await s.createUser({ name: 'alice' });
        const bob = await s.createUser({ name: 'bob' });
        const carol = await s.createUser({ name: 'carol' });
        const spec = fileOf(alice.id, 3 * CHUNK + 10, {
          kind: 'users',
          userIds: [carol.id, bob.id, carol.id],
        });
        const f = await s.createFile(spec, LIMITS);
        const sorted = [bob.id, carol.id].sort();
        expect(f).toEqual({
          ...spec,
          recipients: { kind: 'users', userIds: sorted },
          received: 0,
          complete: false,
          createdAt: T0,
          updatedAt: T0,
        });
        expect(await s.getFile(spec.id)).toEqual(f);
        expect(await s.getFile(newFileId())).toBeUndefined();
        expect(await s.fileUsage(alice.id)).toBe(3 * CHUNK + 10);
        expect(await s.fileUsage(bob.id)).toBe(0);
        const ch = '1'.repeat(32);
        const g = await s.createFile(fileOf(bob.id, 5, { kind: 'channel', channelId: ch }), LIMITS);
        expect(g.recipients).toEqual({ kind: 'channel', channelId: ch });
        await rejectsWith(s.createFile({ ...spec, ownerId: bob.id }, LIMITS), 'INVALID_ARGUMENT');
        await rejectsWith(s.createFile(fileOf('0'.repeat(32), 5), LIMITS), 'USER_NOT_FOUND');
        await rejectsWith(s.createFile({ ...fileOf(bob.id, 5), chunkSize: 10 }, LIMITS), 'INVALID_ARGUMENT');
      });

      it('refuses a file over the size limit or the quota, changing nothing', async () => {
        const { s } = await fresh();
        const alice = await s.createUser({ name: 'alice' });
        await rejectsWith(s.createFile(fileOf(alice.id, 10 * CHUNK + 1), LIMITS), 'FILE_TOO_LARGE');
        await s.createFile(fileOf(alice.id, 10 * CHUNK), LIMITS);
        // 10 + 6 = 16 chunks fits the quota exactly; one byte more does not.
        await rejectsWith(s.createFile(fileOf(alice.id, 6 * CHUNK + 1), LIMITS), 'QUOTA_EXCEEDED');
        expect(await s.fileUsage(alice.id)).toBe(10 * CHUNK);
        const last = await s.createFile(fileOf(alice.id, 6 * CHUNK), LIMITS);
        expect(await s.fileUsage(alice.id)).toBe(16 * CHUNK);
        await rejectsWith(s.createFile(fileOf(alice.id, 1), LIMITS), 'QUOTA_EXCEEDED');
        // Deleting frees the quota.
        await s.deleteFile(last.id, alice.id);
        expect(await s.fileUsage(alice.id)).toBe(10 * CHUNK);
        await s.createFile(fileOf(alice.id, 1), LIMITS);
      });

      it('appends only the next chunk, of the right length, and completes the file', async () => {
        const { s } = await fresh();
        const alice = await s.createUser({ name: 'alice' });
        const f = await s.createFile(fileOf(alice.id, 2 * CHUNK + 100), LIMITS);
        const chunks = [blob(CHUNK), blob(CHUNK), blob(100)];
        await rejectsWith(
          s.appendFileChunks(f.id, [{ index: 1, bytes: CHUNK, data: chunks[1]! }]),
          'UPLOAD_OFFSET_MISMATCH',
        );
        await rejectsWith(
          s.appendFileChunks(f.id, [{ index: 0, bytes: 100, data: blob(100) }]),
          'INVALID_ARGUMENT',
        );
        // Data of another length than the chunk's sealed length.
        await rejectsWith(
          s.appendFileChunks(f.id, [{ index: 0, bytes: CHUNK, data: blob(CHUNK - 1) }]),
          'INVALID_ARGUMENT',
        );
        expect((await s.getFile(f.id))?.received).toBe(0);
        now += 1000;
        const a = await s.appendFileChunks(f.id, [{ index: 0, bytes: CHUNK, data: chunks[0]! }]);
        expect(a).toMatchObject({ received: CHUNK, complete: false, updatedAt: T0 + 1000, createdAt: T0 });
        await rejectsWith(
          s.appendFileChunks(f.id, [{ index: 0, bytes: CHUNK, data: chunks[0]! }]),
          'UPLOAD_OFFSET_MISMATCH',
        );
        await s.appendFileChunks(f.id, [{ index: 1, bytes: CHUNK, data: chunks[1]! }]);
        // The last chunk is exactly what is left.
        await rejectsWith(
          s.appendFileChunks(f.id, [{ index: 2, bytes: CHUNK, data: blob(CHUNK) }]),
          'INVALID_ARGUMENT',
        );
        const done = await s.appendFileChunks(f.id, [{ index: 2, bytes: 100, data: chunks[2]! }]);
        expect(done).toMatchObject({ received: 2 * CHUNK + 100, complete: true });
        expect(await s.getFile(f.id)).toEqual(done);
        await rejectsWith(
          s.appendFileChunks(f.id, [{ index: 3, bytes: 1, data: blob(1) }]),
          'UPLOAD_OFFSET_MISMATCH',
        );
        await rejectsWith(
          s.appendFileChunks(newFileId(), [{ index: 0, bytes: 1, data: blob(1) }]),
          'FILE_NOT_FOUND',
        );
        // Reads by index range, in order, as stored.
        const all = await s.readFileChunks(f.id, 0, 16);
        expect(all.map((c) => c.index)).toEqual([0, 1, 2]);
        expect(all.map((c) => new Uint8Array(c.data))).toEqual(chunks);
        expect((await s.readFileChunks(f.id, 1, 1)).map((c) => c.index)).toEqual([1]);
        expect(await s.readFileChunks(f.id, 3, 5)).toEqual([]);
        await rejectsWith(s.readFileChunks(f.id, 0, 17), 'INVALID_ARGUMENT');
        await rejectsWith(s.readFileChunks(newFileId(), 0, 1), 'FILE_NOT_FOUND');
      });

      it('appends a run of chunks at once, all or nothing, and reads only what is received', async () => {
        const { s } = await fresh();
        const alice = await s.createUser({ name: 'alice' });
        const f = await s.createFile(fileOf(alice.id, 4 * CHUNK + 7), LIMITS);
        const data = [blob(CHUNK), blob(CHUNK), blob(CHUNK), blob(CHUNK), blob(7)];
        const run = (from: number, to: number) =>
          data
            .slice(from, to)
            .map((d, i) => ({ index: from + i, bytes: d.length - FILE_CHUNK_OVERHEAD, data: d }));
        await rejectsWith(s.appendFileChunks(f.id, []), 'INVALID_ARGUMENT');
        await rejectsWith(
          s.appendFileChunks(
            f.id,
            Array.from({ length: 65 }, (_, i) => ({ index: i, bytes: CHUNK, data: blob(CHUNK) })),
          ),
          'INVALID_ARGUMENT',
        );
        // Indexes with a gap; a run not starting at the next chunk; a bad chunk in the middle.
        await rejectsWith(s.appendFileChunks(f.id, [run(0, 1)[0]!, run(2, 3)[0]!]), 'INVALID_ARGUMENT');
        await rejectsWith(s.appendFileChunks(f.id, run(1, 3)), 'UPLOAD_OFFSET_MISMATCH');
        await rejectsWith(
          s.appendFileChunks(f.id, [...run(0, 1), { index: 1, bytes: 7, data: blob(7) }, ...run(2, 3)]),
          'INVALID_ARGUMENT',
        );
        expect((await s.getFile(f.id))?.received).toBe(0);
        expect(await s.readFileChunks(f.id, 0, 16)).toEqual([]);
        const a = await s.appendFileChunks(f.id, run(0, 3));
        expect(a).toMatchObject({ received: 3 * CHUNK, complete: false });
        // Only what is received is read back, even when more is asked for.
        const got = await s.readFileChunks(f.id, 0, 16);
        expect(got.map((c) => c.index)).toEqual([0, 1, 2]);
        expect(got.map((c) => new Uint8Array(c.data))).toEqual(data.slice(0, 3));
        // A run past the end of the file stores nothing.
        await rejectsWith(
          s.appendFileChunks(f.id, [...run(3, 5), { index: 5, bytes: 1, data: blob(1) }]),
          'UPLOAD_OFFSET_MISMATCH',
        );
        expect((await s.getFile(f.id))?.received).toBe(3 * CHUNK);
        expect((await s.readFileChunks(f.id, 3, 2)).map((c) => c.index)).toEqual([]);
        const done = await s.appendFileChunks(f.id, run(3, 5));
        expect(done).toMatchObject({ received: 4 * CHUNK + 7, complete: true });
        const all = await s.readFileChunks(f.id, 0, 16);
        expect(all.map((c) => new Uint8Array(c.data))).toEqual(data);
        expect((await s.readFileChunks(f.id, 2, 2)).map((c) => c.index)).toEqual([2, 3]);
        await rejectsWith(s.appendFileChunks(f.id, run(4, 5)), 'UPLOAD_OFFSET_MISMATCH');
      });

      it('lets only the owner delete a file, with its chunks', async () => {
        const { s } = await fresh();
        const alice = await s.createUser({ name: 'alice' });
        const bob = await s.createUser({ name: 'bob' });
        const f = await s.createFile(fileOf(alice.id, CHUNK), LIMITS);
        await s.appendFileChunks(f.id, [{ index: 0, bytes: CHUNK, data: blob(CHUNK) }]);
        await rejectsWith(s.deleteFile(f.id, bob.id), 'FILE_NOT_FOUND');
        expect(await s.getFile(f.id)).toBeDefined();
        await s.deleteFile(f.id, alice.id);
        expect(await s.getFile(f.id)).toBeUndefined();
        await rejectsWith(s.readFileChunks(f.id, 0, 1), 'FILE_NOT_FOUND');
        await rejectsWith(s.deleteFile(f.id, alice.id), 'FILE_NOT_FOUND');
        // Removing a user removes their files.
        const g = await s.createFile(fileOf(bob.id, CHUNK), LIMITS);
        await s.removeUser(bob.id);
        expect(await s.getFile(g.id)).toBeUndefined();
      });

      it('purges incomplete files idle since before the cut-off, and only those', async () => {
        const { s } = await fresh();
        const alice = await s.createUser({ name: 'alice' });
        const idle = await s.createFile(fileOf(alice.id, 2 * CHUNK), LIMITS);
        const complete = await s.createFile(fileOf(alice.id, CHUNK), LIMITS);
        await s.appendFileChunks(complete.id, [{ index: 0, bytes: CHUNK, data: blob(CHUNK) }]);
        const active = await s.createFile(fileOf(alice.id, 2 * CHUNK), LIMITS);
        now = T0 + DAY;
        await s.appendFileChunks(active.id, [{ index: 0, bytes: CHUNK, data: blob(CHUNK) }]);
        expect(await s.purgeIncompleteFiles(T0 + 1)).toBe(1);
        expect(await s.getFile(idle.id)).toBeUndefined();
        expect(await s.getFile(complete.id)).toBeDefined();
        expect(await s.getFile(active.id)).toBeDefined();
        expect(await s.fileUsage(alice.id)).toBe(3 * CHUNK);
        expect(await s.purgeIncompleteFiles(T0 + 1)).toBe(0);
      });

      it('lets one of two handles append a chunk, and the other gets UPLOAD_OFFSET_MISMATCH', async () => {
        const { s, fx } = await fresh();
        const p = await peer(fx);
        const alice = await s.createUser({ name: 'alice' });
        const f = await s.createFile(fileOf(alice.id, 3 * CHUNK), LIMITS);
        for (let i = 0; i < 3; i++) {
          const results = await Promise.allSettled(
            [s, p].map((h) => h.appendFileChunks(f.id, [{ index: i, bytes: CHUNK, data: blob(CHUNK) }])),
          );
          expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
          const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
          expect((failed.reason as ServerError).code).toBe('UPLOAD_OFFSET_MISMATCH');
        }
        expect((await s.readFileChunks(f.id, 0, 16)).map((c) => c.index)).toEqual([0, 1, 2]);
        expect((await p.getFile(f.id))?.complete).toBe(true);
      });

      it('lists and replaces wrapped file keys by KEK version, compare-and-set', async () => {
        const { s } = await fresh();
        const alice = await s.createUser({ name: 'alice' });
        const files = [];
        for (let i = 0; i < 5; i++) {
          const f = fileOf(alice.id, 10);
          files.push(
            await s.createFile(
              { ...f, wrappedKey: { ...f.wrappedKey, keyId: i < 3 ? 'kek-1' : 'kek-2' } },
              LIMITS,
            ),
          );
        }
        expect(await s.fileKeyVersions()).toEqual([
          { keyId: 'kek-1', files: 3 },
          { keyId: 'kek-2', files: 2 },
        ]);
        const old = files
          .filter((f) => f.wrappedKey.keyId === 'kek-1')
          .sort((a, b) => (a.id < b.id ? -1 : 1));
        const page1 = await s.listFileKeys({ exceptKeyId: 'kek-2', limit: 2 });
        expect(page1).toEqual(old.slice(0, 2).map((f) => ({ fileId: f.id, wrappedKey: f.wrappedKey })));
        const page2 = await s.listFileKeys({ exceptKeyId: 'kek-2', afterId: page1[1]!.fileId, limit: 2 });
        expect(page2.map((p) => p.fileId)).toEqual([old[2]!.id]);
        const fresh2 = { keyId: 'kek-2', ciphertext: new Uint8Array(randomBytes(60)) };
        expect(await s.replaceFileKey(old[0]!.id, 'kek-1', fresh2)).toBe(true);
        // Already re-wrapped (by another node): not replaced again.
        expect(await s.replaceFileKey(old[0]!.id, 'kek-1', { ...fresh2, keyId: 'kek-3' })).toBe(false);
        expect((await s.getFile(old[0]!.id))?.wrappedKey).toEqual(fresh2);
        expect(await s.fileKeyVersions()).toEqual([
          { keyId: 'kek-1', files: 2 },
          { keyId: 'kek-2', files: 3 },
        ]);
        await rejectsWith(s.listFileKeys({ exceptKeyId: 'bad key', limit: 1 }), 'INVALID_ARGUMENT');
      });

      it('checks the quota atomically across handles', async () => {
        const { s, fx } = await fresh();
        const p = await peer(fx);
        const alice = await s.createUser({ name: 'alice' });
        // Each fits alone (10 chunks of a 16-chunk quota); both together do not.
        const results = await Promise.allSettled(
          [s, p].map((h) => h.createFile(fileOf(alice.id, 10 * CHUNK), LIMITS)),
        );
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        const failed = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
        expect((failed.reason as ServerError).code).toBe('QUOTA_EXCEEDED');
        expect(await s.fileUsage(alice.id)).toBe(10 * CHUNK);
      });
    });

    it('refuses every call after close with CLOSED', async () => {
      const { s } = await fresh();
      const u = await s.createUser({ name: 'alice' });
      await s.close();
      await s.close();
      await rejectsWith(s.getUser(u.id), 'CLOSED');
      await rejectsWith(s.createUser({ name: 'bob' }), 'CLOSED');
      await rejectsWith(s.listUsers(), 'CLOSED');
    });
  });
}
