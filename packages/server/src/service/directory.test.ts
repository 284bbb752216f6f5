/** The prekey directory over HTTPS: bundles, atomic one-time prekey consumption, replenishment, rotation. */
import { x25519GenerateKeyPair, xeddsaSign, xeddsaVerify } from '@qalqon/crypto';
import {
  BundlesResponse,
  decodeBase64,
  encodeBase64,
  type PrekeyBundleJson,
  UserDevicesResponse,
} from '@qalqon/wire';
import { afterEach, describe, expect, it } from 'vitest';
import {
  enrol,
  type Harness,
  http,
  makeDevice,
  signIn,
  startHarness,
  typed,
  WsClient,
} from './harness.test-util.js';

const harnesses: Harness[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) await h.close();
});

async function twoUsers(bobPrekeys: number) {
  const h = await startHarness();
  harnesses.push(h);
  const alice = await enrol(h, (await h.addUser('alice')).code);
  const bob = await enrol(h, (await h.addUser('bob')).code, makeDevice({ oneTimePrekeys: bobPrekeys }));
  return { h, alice, bob, aliceToken: await signIn(h, alice), bobToken: await signIn(h, bob) };
}

type Bundles = { userId: string; userName: string; bundles: PrekeyBundleJson[] };

describe('prekey directory', () => {
  it('returns verifiable bundles and never hands out one one-time prekey twice, even concurrently', async () => {
    const { h, bob, aliceToken } = await twoUsers(30);
    const fetches = await Promise.all(
      Array.from({ length: 40 }, () => http(h, 'GET', '/v1/keys/bob', undefined, { token: aliceToken })),
    );
    const ids: number[] = [];
    let without = 0;
    for (const r of fetches) {
      expect(r.status).toBe(200);
      // The response is on the wire contract (the client SDK will parse it with this schema).
      expect(BundlesResponse.safeParse(r.json).success).toBe(true);
      const j = r.json as Bundles;
      expect(j.userId).toBe(bob.userId);
      expect(j.bundles).toHaveLength(1);
      const b = j.bundles[0]!;
      expect(b.identityKey).toBe(bob.keys.json.identityKey);
      // The client can verify what the directory serves: both signatures by the identity key.
      const ik = decodeBase64(b.identityKey)!.subarray(1);
      expect(
        xeddsaVerify(ik, decodeBase64(b.signedPrekey.publicKey)!, decodeBase64(b.signedPrekey.signature)!),
      ).toBe(true);
      expect(
        xeddsaVerify(ik, decodeBase64(b.kyberPrekey.publicKey)!, decodeBase64(b.kyberPrekey.signature)!),
      ).toBe(true);
      if (b.oneTimePrekey) ids.push(b.oneTimePrekey.id);
      else without++;
    }
    expect(ids).toHaveLength(30);
    expect(new Set(ids).size).toBe(30);
    expect(without).toBe(10);
  });

  it('tells an online device it runs low, and takes replenishment', async () => {
    const { h, aliceToken, bobToken } = await twoUsers(21);
    const ws = await WsClient.open(h, bobToken);
    await http(h, 'GET', '/v1/keys/bob', undefined, { token: aliceToken });
    await http(h, 'GET', '/v1/keys/bob', undefined, { token: aliceToken });
    const low = await ws.next((f) => f.type === 'prekeys-low');
    expect(low).toEqual({ type: 'prekeys-low', oneTimePrekeys: 19 });
    const status = await http(h, 'GET', '/v1/keys', undefined, { token: bobToken });
    expect(status.json).toEqual({ oneTimePrekeys: 19, replenish: true });
    const fresh = Array.from({ length: 50 }, (_, i) => ({
      id: 1000 + i,
      publicKey: encodeBase64(typed(0x05, x25519GenerateKeyPair().publicKey)),
    }));
    const up = await http(h, 'POST', '/v1/keys/one-time', { oneTimePrekeys: fresh }, { token: bobToken });
    expect(up.json).toEqual({ oneTimePrekeys: 69, replenish: false });
    const dup = await http(
      h,
      'POST',
      '/v1/keys/one-time',
      { oneTimePrekeys: fresh.slice(0, 1) },
      { token: bobToken },
    );
    expect((dup.json as { error: { code: string } }).error.code).toBe('PREKEY_EXISTS');
    ws.close();
  });

  it('rotates the signed and Kyber prekeys only with a valid identity signature', async () => {
    const { h, bob, aliceToken, bobToken } = await twoUsers(1);
    const spk = typed(0x05, x25519GenerateKeyPair().publicKey);
    const forged = {
      id: 77,
      publicKey: encodeBase64(spk),
      signature: encodeBase64(xeddsaSign(x25519GenerateKeyPair().privateKey, spk)),
    };
    const bad = await http(h, 'PUT', '/v1/keys/signed', { prekey: forged }, { token: bobToken });
    expect(bad.status).toBe(400);
    expect((bad.json as { error: { code: string } }).error.code).toBe('INVALID_SIGNATURE');
    const good = {
      id: 77,
      publicKey: encodeBase64(spk),
      signature: encodeBase64(xeddsaSign(bob.keys.identity.privateKey, spk)),
    };
    expect((await http(h, 'PUT', '/v1/keys/signed', { prekey: good }, { token: bobToken })).json).toEqual({
      ok: true,
    });
    const kyber = decodeBase64(bob.keys.json.kyberPrekey.publicKey)!;
    const kyberPrekey = {
      id: 78,
      publicKey: encodeBase64(kyber),
      signature: encodeBase64(xeddsaSign(bob.keys.identity.privateKey, kyber)),
    };
    expect(
      (await http(h, 'PUT', '/v1/keys/kyber', { prekey: kyberPrekey }, { token: bobToken })).json,
    ).toEqual({ ok: true });
    const j = (await http(h, 'GET', '/v1/keys/bob', undefined, { token: aliceToken })).json as Bundles;
    expect(j.bundles[0]!.signedPrekey).toEqual(good);
    expect(j.bundles[0]!.kyberPrekey.id).toBe(78);
  });

  it('needs a session, and names an unknown user', async () => {
    const { h, aliceToken } = await twoUsers(1);
    expect((await http(h, 'GET', '/v1/keys/bob')).status).toBe(401);
    const r = await http(h, 'GET', '/v1/keys/nobody', undefined, { token: aliceToken });
    expect(r.status).toBe(404);
    expect((r.json as { error: { code: string } }).error.code).toBe('USER_NOT_FOUND');
    // Fetching nothing consumed bob's single prekey.
    const b = (await http(h, 'GET', '/v1/keys/bob', undefined, { token: aliceToken })).json as Bundles;
    expect(b.bundles[0]!.oneTimePrekey?.id).toBe(1);
  });
});

describe('device list of a user (GET /v1/keys/:userName/devices)', () => {
  it('names the identity key and current devices without consuming one-time prekeys', async () => {
    const { h, bob, aliceToken, bobToken } = await twoUsers(3);
    const r = await http(h, 'GET', '/v1/keys/bob/devices', undefined, { token: aliceToken });
    expect(r.status).toBe(200);
    expect(UserDevicesResponse.safeParse(r.json).success).toBe(true);
    expect(r.json).toEqual({
      userId: bob.userId,
      userName: 'bob',
      identityKey: bob.keys.json.identityKey,
      devices: [{ deviceId: bob.deviceId, registrationId: bob.keys.json.registrationId }],
    });
    const status = await http(h, 'GET', '/v1/keys', undefined, { token: bobToken });
    expect(status.json).toEqual({ oneTimePrekeys: 3, replenish: true });
    expect((await http(h, 'GET', '/v1/keys/nobody/devices', undefined, { token: aliceToken })).status).toBe(
      404,
    );
    expect((await http(h, 'GET', '/v1/keys/bob/devices')).status).toBe(401);
  });
});
