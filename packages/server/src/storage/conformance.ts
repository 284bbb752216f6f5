/**
 * The storage conformance suite, written once and run against every backend: the embedded
 * SQLCipher backend (sqlite.test.ts) now, PostgreSQL next. It uses only the `Storage`
 * interface, so whatever passes it behaves the same to the service above.
 *
 * A backend provides `makeStorage`, which returns a fresh, empty store plus a way to open
 * a second independent handle on the same store (another connection, as a second server
 * node would have), used for the concurrency and durability tests.
 */
import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { ServerError, type ServerErrorCode } from '../errors.js';
import { EC_PUBLIC_KEY_LEN, KYBER_PUBLIC_KEY_LEN } from './input.js';
import type { NewDevice, NewEnvelope, OneTimePrekey, SignedPrekey, Storage, StorageLimits } from './types.js';

export interface StorageFactoryOptions {
  /** The store must read time only from this clock. */
  readonly clock: () => number;
  readonly limits?: Partial<StorageLimits>;
}

export interface StorageFixture {
  readonly storage: Storage;
  /** Opens another independent handle on the same store. */
  openPeer(): Promise<Storage>;
  /** Deletes the store; called after every handle has been closed. */
  destroy(): Promise<void>;
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
