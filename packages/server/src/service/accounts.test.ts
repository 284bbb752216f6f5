/**
 * Transport, enrolment and device authentication against a real server over real TLS
 * sockets on 127.0.0.1, with a real SQLCipher store in a temporary directory.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { connect, type TLSSocket } from 'node:tls';
import { x25519GenerateKeyPair, xeddsaSign } from '@qalqon/crypto';
import { authChallengeMessage, decodeBase64, encodeBase64 } from '@qalqon/wire';
import { afterEach, describe, expect, it } from 'vitest';
import { issueEnrolmentCode } from './data-dir.js';
import {
  enrol,
  type Harness,
  http,
  makeDevice,
  signIn,
  signInRaw,
  startHarness,
  typed,
} from './harness.test-util.js';
import { MAX_AUTH_FAILURES_PER_DEVICE } from './sessions.js';
import { spkiPin } from './tls.js';

const harnesses: Harness[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) await h.close();
});
async function start(...args: Parameters<typeof startHarness>): Promise<Harness> {
  const h = await startHarness(...args);
  harnesses.push(h);
  return h;
}

function handshake(
  h: Harness,
  maxVersion: 'TLSv1.2' | 'TLSv1.3',
): Promise<{ ok: true; socket: TLSSocket } | { ok: false; error: Error }> {
  return new Promise((resolve) => {
    const socket = connect({
      host: '127.0.0.1',
      port: h.port,
      ca: h.cert,
      servername: 'localhost',
      maxVersion,
      minVersion: 'TLSv1.2',
    });
    socket.once('secureConnect', () => resolve({ ok: true, socket }));
    socket.once('error', (error) => resolve({ ok: false, error }));
  });
}

describe('transport', () => {
  it('refuses a TLS 1.2 client at the handshake and accepts TLS 1.3', async () => {
    const h = await start();
    const old = await handshake(h, 'TLSv1.2');
    expect(old.ok).toBe(false);
    if (!old.ok)
      expect(String((old.error as NodeJS.ErrnoException).code ?? old.error.message)).toMatch(
        /PROTOCOL|VERSION|ALERT/i,
      );
    const modern = await handshake(h, 'TLSv1.3');
    expect(modern.ok).toBe(true);
    if (modern.ok) {
      expect(modern.socket.getProtocol()).toBe('TLSv1.3');
      // The pin the operator is shown is the hash of the key the client actually sees.
      const peer = modern.socket.getPeerX509Certificate()!;
      const spki = peer.publicKey.export({ type: 'spki', format: 'der' });
      expect(`sha256/${createHash('sha256').update(spki).digest('base64')}`).toBe(spkiPin(h.cert));
      modern.socket.destroy();
    }
  });

  it('generates a self-signed ECDSA P-256 certificate for the hostname', async () => {
    const h = await start();
    const cert = new X509Certificate(h.cert);
    expect(cert.subjectAltName).toBe('DNS:localhost');
    expect(cert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
    expect(cert.verify(cert.publicKey)).toBe(true);
    expect(cert.ca).toBe(false);
  });

  it('serves /healthz and Prometheus /metrics', async () => {
    const h = await start();
    expect((await http(h, 'GET', '/healthz')).json).toEqual({ status: 'ok' });
    const m = await http(h, 'GET', '/metrics');
    expect(m.status).toBe(200);
    expect(m.text).toContain('qalqon_websocket_connections');
    expect(m.text).toContain('qalqon_messages_queued_total');
    expect(m.text).toContain('qalqon_messages_delivered_total');
    expect(m.text).toMatch(
      /qalqon_http_request_duration_seconds_count\{method="GET",route="\/healthz",status="200"\} 1/,
    );
  });
});

describe('enrolment', () => {
  it('enrols a device over HTTPS with a one-time code, once', async () => {
    const h = await start();
    const { userId, code } = await h.addUser('alice');
    const keys = makeDevice({ oneTimePrekeys: 7 });
    const r = await http(h, 'POST', '/v1/enrol', { code, device: keys.json });
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ userId, userName: 'alice', deviceId: 1 });
    const dev = await h.storage.getDevice(userId, 1);
    expect(dev?.oneTimePrekeyCount).toBe(7);
    expect(encodeBase64(dev!.authKey!)).toBe(keys.json.authKey);
    expect(encodeBase64((await h.storage.getUser(userId))!.identityKey!)).toBe(keys.json.identityKey);
    // Single use: the same code again is refused and changes nothing.
    const again = await http(h, 'POST', '/v1/enrol', { code, device: makeDevice().json });
    expect(again.status).toBe(403);
    expect((again.json as { error: { code: string } }).error.code).toBe('ENROLMENT_CODE_INVALID');
    expect(await h.storage.listDevices(userId)).toHaveLength(1);
  });

  it('refuses bad prekey signatures before redeeming the code', async () => {
    const h = await start();
    const { userId, code } = await h.addUser('alice');
    const keys = makeDevice();
    const other = x25519GenerateKeyPair();
    const spk = decodeBase64(keys.json.signedPrekey.publicKey)!;
    const kyber = decodeBase64(keys.json.kyberPrekey.publicKey)!;
    const cases = [
      // Signed by a key that is not the identity key.
      {
        ...keys.json,
        signedPrekey: {
          ...keys.json.signedPrekey,
          signature: encodeBase64(xeddsaSign(other.privateKey, spk)),
        },
      },
      {
        ...keys.json,
        kyberPrekey: {
          ...keys.json.kyberPrekey,
          signature: encodeBase64(xeddsaSign(other.privateKey, kyber)),
        },
      },
      // The signed prekey's signature presented for the Kyber key.
      {
        ...keys.json,
        kyberPrekey: { ...keys.json.kyberPrekey, signature: keys.json.signedPrekey.signature },
      },
      // Signature over the key without its type byte.
      {
        ...keys.json,
        signedPrekey: {
          ...keys.json.signedPrekey,
          signature: encodeBase64(xeddsaSign(keys.identity.privateKey, spk.subarray(1))),
        },
      },
    ];
    for (const device of cases) {
      const r = await http(h, 'POST', '/v1/enrol', { code, device });
      expect(r.status).toBe(400);
      expect((r.json as { error: { code: string } }).error.code).toBe('INVALID_SIGNATURE');
    }
    // An auth key equal to the identity key would let every device of the user sign in as this one.
    const same = await http(h, 'POST', '/v1/enrol', {
      code,
      device: { ...keys.json, authKey: keys.json.identityKey },
    });
    expect(same.status).toBe(400);
    expect((same.json as { error: { code: string } }).error.code).toBe('BAD_REQUEST');
    expect(await h.storage.listDevices(userId)).toEqual([]);
    // The code was not consumed by the refusals.
    expect((await http(h, 'POST', '/v1/enrol', { code, device: keys.json })).status).toBe(200);
  });

  it('re-enrolment with a new code replaces the identity and ends old sessions', async () => {
    const h = await start();
    const { userId, code } = await h.addUser('alice');
    const first = await enrol(h, code);
    const token = await signIn(h, first);
    expect((await http(h, 'GET', '/v1/devices', undefined, { token })).status).toBe(200);
    const { code: code2 } = await issueEnrolmentCode(h.storage, userId, Date.now());
    const second = await enrol(h, code2);
    expect(second.deviceId).toBe(2);
    expect((await http(h, 'GET', '/v1/devices', undefined, { token })).status).toBe(401);
  });
});

describe('device authentication', () => {
  it('signs in with the device key and uses the session token', async () => {
    const h = await start();
    const { code } = await h.addUser('alice');
    const a = await enrol(h, code, makeDevice({ name: 'laptop' }));
    expect((await http(h, 'GET', '/v1/devices')).status).toBe(401);
    const token = await signIn(h, a);
    const r = await http(h, 'GET', '/v1/devices', undefined, { token });
    expect(r.status).toBe(200);
    expect(
      (r.json as { devices: { deviceId: number; name: string }[] }).devices.map((d) => [d.deviceId, d.name]),
    ).toEqual([[1, 'laptop']]);
    expect((await http(h, 'GET', '/v1/devices', undefined, { token: `${token}x` })).status).toBe(401);
  });

  it('refuses the identity key, another device key, a replayed challenge; one opaque code', async () => {
    const h = await start();
    const { code } = await h.addUser('alice');
    const a = await enrol(h, code);
    // The identity key is shared by all the user's devices: it must not authenticate a device.
    for (const key of [a.keys.identity.privateKey, x25519GenerateKeyPair().privateKey]) {
      const r = await signInRaw(h, a, key);
      expect(r.status).toBe(401);
      expect(r.json).toEqual({ error: { code: 'UNAUTHENTICATED', message: 'authentication failed' } });
    }
    // A correctly signed challenge works once only.
    const c = await http(h, 'POST', '/v1/auth/challenge', { userId: a.userId, deviceId: a.deviceId });
    const challenge = decodeBase64((c.json as { challenge: string }).challenge)!;
    const body = {
      userId: a.userId,
      deviceId: a.deviceId,
      challenge: encodeBase64(challenge),
      signature: encodeBase64(
        xeddsaSign(a.keys.auth.privateKey, authChallengeMessage(challenge, a.userId, a.deviceId)),
      ),
    };
    expect((await http(h, 'POST', '/v1/auth/session', body)).status).toBe(200);
    expect((await http(h, 'POST', '/v1/auth/session', body)).status).toBe(401);
    // A challenge issued for another device does not transfer.
    const c2 = await http(h, 'POST', '/v1/auth/challenge', { userId: a.userId, deviceId: 2 });
    const ch2 = decodeBase64((c2.json as { challenge: string }).challenge)!;
    const r = await http(h, 'POST', '/v1/auth/session', {
      ...body,
      challenge: encodeBase64(ch2),
      signature: encodeBase64(
        xeddsaSign(a.keys.auth.privateKey, authChallengeMessage(ch2, a.userId, a.deviceId)),
      ),
    });
    expect(r.status).toBe(401);
  });

  it('rate-limits failed sign-ins per device, then refuses even a correct one', async () => {
    const h = await start();
    const { code } = await h.addUser('alice');
    const a = await enrol(h, code);
    const wrong = x25519GenerateKeyPair().privateKey;
    for (let i = 0; i < MAX_AUTH_FAILURES_PER_DEVICE; i++) {
      expect((await signInRaw(h, a, wrong)).status).toBe(401);
    }
    const limited = await signInRaw(h, a, a.keys.auth.privateKey);
    expect(limited.status).toBe(429);
    const err = (limited.json as { error: { code: string; retryAfterMs: number } }).error;
    expect(err.code).toBe('RATE_LIMITED');
    expect(err.retryAfterMs).toBeGreaterThan(0);
    expect(err.retryAfterMs).toBeLessThanOrEqual(60_000);
  });

  it('removes a device: its session ends and it disappears from the list', async () => {
    const h = await start();
    const { userId, code } = await h.addUser('alice');
    const a = await enrol(h, code);
    const linked = makeDevice({ identity: a.keys.identity, name: 'phone' });
    const d2 = await h.storage.addDevice(userId, {
      name: 'phone',
      registrationId: linked.json.registrationId,
      identityKey: decodeBase64(linked.json.identityKey)!,
      authKey: decodeBase64(linked.json.authKey)!,
      signedPrekey: {
        ...linked.json.signedPrekey,
        publicKey: decodeBase64(linked.json.signedPrekey.publicKey)!,
        signature: decodeBase64(linked.json.signedPrekey.signature)!,
      },
      kyberPrekey: {
        ...linked.json.kyberPrekey,
        publicKey: decodeBase64(linked.json.kyberPrekey.publicKey)!,
        signature: decodeBase64(linked.json.kyberPrekey.signature)!,
      },
      oneTimePrekeys: [],
    });
    const t1 = await signIn(h, a);
    const t2 = await signIn(h, { userId, deviceId: d2.deviceId, keys: linked });
    expect((await http(h, 'DELETE', `/v1/devices/${d2.deviceId}`, undefined, { token: t1 })).json).toEqual({
      ok: true,
    });
    expect((await http(h, 'GET', '/v1/devices', undefined, { token: t2 })).status).toBe(401);
    const list = await http(h, 'GET', '/v1/devices', undefined, { token: t1 });
    expect((list.json as { devices: unknown[] }).devices).toHaveLength(1);
    expect((await http(h, 'DELETE', '/v1/devices/9', undefined, { token: t1 })).status).toBe(404);
  });
});

describe('linking a further device', () => {
  it('new device opens a slot, an existing device approves, the new device completes', async () => {
    const h = await start();
    const { code } = await h.addUser('alice');
    const a = await enrol(h, code);
    const token = await signIn(h, a);
    const request = encodeBase64(typed(0x05, x25519GenerateKeyPair().publicKey));
    const slot = (await http(h, 'POST', '/v1/link', { request })).json as { linkCode: string };
    expect((await http(h, 'POST', '/v1/link/poll', { linkCode: slot.linkCode })).json).toEqual({
      state: 'pending',
    });
    // Completing before approval is refused.
    const early = await http(h, 'POST', '/v1/link/complete', {
      linkCode: slot.linkCode,
      device: makeDevice({ identity: a.keys.identity }).json,
    });
    expect((early.json as { error: { code: string } }).error.code).toBe('LINK_CODE_INVALID');
    // Lookup and approval need a session.
    expect((await http(h, 'POST', '/v1/link/lookup', { linkCode: slot.linkCode })).status).toBe(401);
    expect((await http(h, 'POST', '/v1/link/lookup', { linkCode: slot.linkCode }, { token })).json).toEqual({
      request,
    });
    const handover = encodeBase64(new Uint8Array(200).fill(7));
    expect(
      (await http(h, 'POST', '/v1/link/approve', { linkCode: slot.linkCode, handover }, { token })).json,
    ).toEqual({ ok: true });
    expect((await http(h, 'POST', '/v1/link/poll', { linkCode: slot.linkCode })).json).toEqual({
      state: 'approved',
      userId: a.userId,
      userName: 'alice',
      handover,
    });
    // A device with a different identity key is refused by the storage; the slot survives.
    const wrong = await http(h, 'POST', '/v1/link/complete', {
      linkCode: slot.linkCode,
      device: makeDevice().json,
    });
    expect((wrong.json as { error: { code: string } }).error.code).toBe('IDENTITY_KEY_MISMATCH');
    const linked = makeDevice({ identity: a.keys.identity, name: 'phone' });
    const done = await http(h, 'POST', '/v1/link/complete', { linkCode: slot.linkCode, device: linked.json });
    expect(done.json).toEqual({ userId: a.userId, userName: 'alice', deviceId: 2 });
    // Single use.
    const again = await http(h, 'POST', '/v1/link/complete', {
      linkCode: slot.linkCode,
      device: linked.json,
    });
    expect((again.json as { error: { code: string } }).error.code).toBe('LINK_CODE_INVALID');
    // The linked device can sign in with its own auth key.
    expect(await signIn(h, { userId: a.userId, deviceId: 2, keys: linked })).toMatch(/^[A-Za-z0-9_-]{103}$/);
  });

  it('limits how many slots one address may open', async () => {
    const h = await start();
    const request = encodeBase64(new Uint8Array(33).fill(5));
    for (let i = 0; i < 10; i++) expect((await http(h, 'POST', '/v1/link', { request })).status).toBe(200);
    const r = await http(h, 'POST', '/v1/link', { request });
    expect(r.status).toBe(429);
    expect((r.json as { error: { code: string } }).error.code).toBe('RATE_LIMITED');
  });
});
