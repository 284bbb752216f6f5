/**
 * The audit log as the service writes it, against a real server (real TLS, real SQLCipher,
 * the real admin socket): each security event is recorded with the right actor, action,
 * target and outcome; the chain verifies; and no record holds a key, code, token or
 * message body. The log is readable through the admin socket and remotely by an auditor.
 */
import { randomBytes, sha256, x25519GenerateKeyPair, xeddsaSign } from '@qalqon/crypto';
import {
  AuditListResponse,
  AuditVerifyResponse,
  channelChangeSigningMessage,
  channelEnvelopeHeader,
  encodeBase64,
  encodeChannelChange,
  GENESIS_PREV,
  signedChangeJson,
} from '@qalqon/wire';
import { describe, expect, it } from 'vitest';
import {
  type DeviceKeys,
  type Enrolled,
  enrol,
  type HttpResult,
  http,
  makeDevice,
  signIn,
  signInRaw,
  startHarness,
  typed,
} from './harness.test-util.js';
import { MAX_AUTH_FAILURES_PER_DEVICE } from './sessions.js';

function ok(r: HttpResult): unknown {
  if (r.status !== 200) throw new Error(`expected 200, got ${r.status} ${r.text}`);
  return r.json;
}

const hexOf = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('the audit log', () => {
  it('records every security event without secrets, and verifies', async () => {
    const h = await startHarness({ adminSocket: true });
    /** Everything that must never appear in a record. */
    const secrets: string[] = [];
    const keep = (...s: string[]) => secrets.push(...s);
    const keepKeys = (k: DeviceKeys) => {
      for (const pair of [k.identity, k.auth]) {
        keep(
          encodeBase64(pair.privateKey),
          hexOf(pair.privateKey),
          encodeBase64(pair.publicKey),
          hexOf(pair.publicKey),
        );
      }
      keep(k.json.identityKey, k.json.authKey, k.json.signedPrekey.signature, k.json.signedPrekey.publicKey);
    };
    try {
      // The operator adds Alice: user.create.
      const added = ok(await h.admin({ op: 'user.add', name: 'alice' })) as {
        enrollmentCode: string;
        roles: string[];
      };
      expect(added.roles).toEqual(['member']);
      keep(added.enrollmentCode);

      // A wrong code: a failed enrolment by an anonymous address.
      const badCode = Buffer.from(randomBytes(15)).toString('base64url');
      keep(badCode);
      const bad = await http(h, 'POST', '/v1/enrol', { code: badCode, device: makeDevice().json });
      expect(bad.status).toBe(403);

      const first = await enrol(h, added.enrollmentCode);
      keepKeys(first.keys);
      // A new code and a second enrolment: a new identity replaces the first.
      const recoded = ok(await h.admin({ op: 'user.code', name: 'alice' })) as { enrollmentCode: string };
      keep(recoded.enrollmentCode);
      const alice = await enrol(h, recoded.enrollmentCode);
      keepKeys(alice.keys);
      expect(alice.deviceId).toBe(2);
      const token = await signIn(h, alice);
      keep(token);

      // A failed sign-in (a key that is not the device's auth key).
      const wrongKey = x25519GenerateKeyPair();
      keep(encodeBase64(wrongKey.privateKey), hexOf(wrongKey.privateKey));
      expect((await signInRaw(h, alice, wrongKey.privateKey)).status).toBe(401);

      // Linking a further device: device.add; then the user removes it: device.remove.
      const request = encodeBase64(typed(0x05, x25519GenerateKeyPair().publicKey));
      const slot = ok(await http(h, 'POST', '/v1/link', { request })) as { linkCode: string };
      keep(slot.linkCode, request);
      ok(await http(h, 'POST', '/v1/link/lookup', { linkCode: slot.linkCode }, { token }));
      const handover = encodeBase64(randomBytes(200));
      keep(handover);
      ok(await http(h, 'POST', '/v1/link/approve', { linkCode: slot.linkCode, handover }, { token }));
      const linked = makeDevice({ identity: alice.keys.identity, name: 'phone' });
      keepKeys(linked);
      const done = ok(
        await http(h, 'POST', '/v1/link/complete', { linkCode: slot.linkCode, device: linked.json }),
      ) as {
        deviceId: number;
      };
      expect(done.deviceId).toBe(3);
      ok(await http(h, 'DELETE', '/v1/devices/3', undefined, { token }));

      // Bob (a member) and an auditor.
      const bobAdded = ok(await h.admin({ op: 'user.add', name: 'bob' })) as { enrollmentCode: string };
      keep(bobAdded.enrollmentCode);
      const bob = await enrol(h, bobAdded.enrollmentCode);
      keepKeys(bob.keys);
      const bobToken = await signIn(h, bob);
      keep(bobToken);
      const audAdded = ok(await h.admin({ op: 'user.add', name: 'eve', roles: ['auditor'] })) as {
        enrollmentCode: string;
      };
      keep(audAdded.enrollmentCode);
      const eve: Enrolled = await enrol(h, audAdded.enrollmentCode);
      keepKeys(eve.keys);
      const eveToken = await signIn(h, eve);
      keep(eveToken);

      // A member may not read the log: access.denied.
      const denied = await http(h, 'GET', '/v1/admin/audit', undefined, { token: bobToken });
      expect(denied.status).toBe(403);

      // Roles, grants and org units through the admin socket.
      ok(await h.admin({ op: 'role.create', name: 'reviewer', permissions: ['audit.read'] }));
      ok(await h.admin({ op: 'role.grant', user: 'bob', role: 'reviewer', scope: { kind: 'global' } }));
      ok(await h.admin({ op: 'role.revoke', user: 'bob', role: 'reviewer', scope: { kind: 'global' } }));
      ok(await h.admin({ op: 'role.delete', name: 'reviewer' }));
      ok(await h.admin({ op: 'org.create', name: 'eng' }));
      ok(await h.admin({ op: 'org.assign', name: 'eng', user: 'bob' }));
      ok(await h.admin({ op: 'org.unassign', name: 'eng', user: 'bob' }));
      ok(await h.admin({ op: 'org.remove', name: 'eng' }));

      // A channel: created by Alice, Bob added and removed; messages in it and 1:1.
      const channelId = hexOf(randomBytes(16));
      const sign = (c: Parameters<typeof encodeChannelChange>[0]) => {
        const bytes = encodeChannelChange(c);
        const json = signedChangeJson({
          change: bytes,
          signature: xeddsaSign(alice.keys.identity.privateKey, channelChangeSigningMessage(bytes)),
        });
        keep(json.change, json.signature);
        return { bytes, json };
      };
      const by = { userId: alice.userId, deviceId: alice.deviceId };
      const genesis = sign({
        v: 1,
        channel: channelId,
        seq: 0,
        prev: GENESIS_PREV,
        at: Date.now(),
        by,
        op: 'create',
        name: 'ops',
        userName: 'alice',
        identityKey: alice.keys.json.identityKey,
      });
      ok(await http(h, 'POST', '/v1/channels', { entry: genesis.json }, { token }));
      const addBob = sign({
        v: 1,
        channel: channelId,
        seq: 1,
        prev: hexOf(sha256(genesis.bytes)),
        at: Date.now(),
        by,
        op: 'add',
        userId: bob.userId,
        userName: 'bob',
        identityKey: bob.keys.json.identityKey,
        role: 'member',
      });
      ok(await http(h, 'POST', `/v1/channels/${channelId}/changes`, { entry: addBob.json }, { token }));
      const body = new Uint8Array([...channelEnvelopeHeader(channelId), ...randomBytes(48)]);
      keep(encodeBase64(body), hexOf(body), encodeBase64(body.subarray(17)), hexOf(body.subarray(17)));
      ok(
        await http(h, 'POST', `/v1/channels/${channelId}/messages`, { body: encodeBase64(body) }, { token }),
      );
      const direct = randomBytes(64);
      keep(encodeBase64(direct), hexOf(direct));
      ok(
        await http(
          h,
          'POST',
          '/v1/messages',
          {
            messages: [
              { recipientUserId: bob.userId, recipientDeviceId: bob.deviceId, body: encodeBase64(direct) },
            ],
          },
          { token },
        ),
      );
      const removeBob = sign({
        v: 1,
        channel: channelId,
        seq: 2,
        prev: hexOf(sha256(addBob.bytes)),
        at: Date.now(),
        by,
        op: 'remove',
        userId: bob.userId,
      });
      ok(await http(h, 'POST', `/v1/channels/${channelId}/changes`, { entry: removeBob.json }, { token }));

      // The operator removes Bob's device, rotates the KEK and destroys the old version, removes a user.
      ok(await h.admin({ op: 'device.remove', name: 'bob', deviceId: bob.deviceId }));
      const rotated = ok(await h.admin({ op: 'kms.rotate' })) as {
        previousKeyId: string;
        activeKeyId: string;
      };
      ok(await h.admin({ op: 'kms.destroy', keyId: rotated.previousKeyId }));
      ok(await h.admin({ op: 'user.add', name: 'carol' }));
      ok(await h.admin({ op: 'user.remove', name: 'carol' }));

      // --- what was recorded -------------------------------------------------------------
      const { records } = AuditListResponse.parse(ok(await h.admin({ op: 'audit.list', limit: 10_000 })));
      const seen = records.map((r) => ({
        actor: r.actor.kind === 'device' ? `device:${r.actor.userName}/${r.actor.deviceId}` : r.actor.kind,
        action: r.action,
        target: r.target,
        outcome: r.outcome,
      }));
      const expected: { actor: string; action: string; target: string; outcome: string }[] = [
        { actor: 'operator', action: 'user.create', target: 'user:alice', outcome: 'ok' },
        { actor: 'anonymous', action: 'enrolment', target: 'enrolment', outcome: 'failed' },
        { actor: 'anonymous', action: 'enrolment', target: 'device:alice/1', outcome: 'ok' },
        { actor: 'operator', action: 'user.code', target: 'user:alice', outcome: 'ok' },
        { actor: 'anonymous', action: 'enrolment', target: 'device:alice/2', outcome: 'ok' },
        { actor: 'anonymous', action: 'identity.change', target: 'user:alice', outcome: 'ok' },
        { actor: 'anonymous', action: 'login.failure', target: 'device:alice/2', outcome: 'failed' },
        { actor: 'anonymous', action: 'device.add', target: 'device:alice/3', outcome: 'ok' },
        { actor: 'device:alice/2', action: 'device.remove', target: 'device:alice/3', outcome: 'ok' },
        { actor: 'operator', action: 'user.create', target: 'user:bob', outcome: 'ok' },
        { actor: 'anonymous', action: 'enrolment', target: 'device:bob/1', outcome: 'ok' },
        { actor: 'operator', action: 'user.create', target: 'user:eve', outcome: 'ok' },
        { actor: 'anonymous', action: 'enrolment', target: 'device:eve/1', outcome: 'ok' },
        { actor: 'device:bob/1', action: 'access.denied', target: 'global', outcome: 'denied' },
        { actor: 'operator', action: 'role.create', target: 'role:reviewer', outcome: 'ok' },
        { actor: 'operator', action: 'grant.add', target: 'user:bob', outcome: 'ok' },
        { actor: 'operator', action: 'grant.remove', target: 'user:bob', outcome: 'ok' },
        { actor: 'operator', action: 'role.delete', target: 'role:reviewer', outcome: 'ok' },
        { actor: 'operator', action: 'org.create', target: 'unit:eng', outcome: 'ok' },
        { actor: 'operator', action: 'org.user.add', target: 'unit:eng', outcome: 'ok' },
        { actor: 'operator', action: 'org.user.remove', target: 'unit:eng', outcome: 'ok' },
        { actor: 'operator', action: 'org.remove', target: 'unit:eng', outcome: 'ok' },
        { actor: 'device:alice/2', action: 'channel.create', target: 'channel:ops', outcome: 'ok' },
        { actor: 'device:alice/2', action: 'channel.member.add', target: 'channel:ops', outcome: 'ok' },
        { actor: 'device:alice/2', action: 'channel.member.remove', target: 'channel:ops', outcome: 'ok' },
        { actor: 'operator', action: 'device.remove', target: 'device:bob/1', outcome: 'ok' },
        { actor: 'operator', action: 'kms.rotate', target: `kek:${rotated.activeKeyId}`, outcome: 'ok' },
        { actor: 'operator', action: 'kms.destroy', target: `kek:${rotated.previousKeyId}`, outcome: 'ok' },
        { actor: 'operator', action: 'user.create', target: 'user:carol', outcome: 'ok' },
        { actor: 'operator', action: 'user.remove', target: 'user:carol', outcome: 'ok' },
      ];
      expect(seen).toEqual(expected);
      // Details that identify without revealing.
      const find = (action: string) => records.find((r) => r.action === action)!;
      expect(find('access.denied').detail).toEqual({
        permission: 'audit.read',
        operation: 'GET /v1/admin/audit',
      });
      expect(find('grant.add').detail).toEqual({ role: 'reviewer', scope: 'global' });
      expect(find('channel.member.add').detail).toEqual({ seq: 1, user: 'bob', role: 'member' });
      expect(find('channel.member.remove').detail).toEqual({ seq: 2, user: 'bob' });
      expect(find('kms.rotate').detail).toMatchObject({
        previousKeyId: rotated.previousKeyId,
        activeKeyId: rotated.activeKeyId,
      });
      const anon = find('enrolment').actor;
      expect(anon).toEqual({ kind: 'anonymous', address: expect.stringMatching(/127\.0\.0\.1/) });
      expect(find('channel.create').actor).toEqual({
        kind: 'device',
        userId: alice.userId,
        userName: 'alice',
        deviceId: alice.deviceId,
      });

      // No key, code, token or body anywhere in any record.
      const all = JSON.stringify(records);
      const leaked = secrets.filter((s) => s.length >= 16 && all.includes(s));
      expect(leaked).toEqual([]);
      expect(secrets.length).toBeGreaterThan(40);

      // The chain verifies, over the socket and remotely for an auditor; a member is refused.
      const v = AuditVerifyResponse.parse(ok(await h.admin({ op: 'audit.verify' })));
      expect(v).toMatchObject({ ok: true, records: records.length });
      const remote = await http(h, 'GET', '/v1/admin/audit', undefined, { token: eveToken });
      expect(AuditListResponse.parse(ok(remote)).records.map((r) => r.seq)).toEqual(
        records.map((r) => r.seq),
      );
      const page = AuditListResponse.parse(
        ok(await http(h, 'GET', '/v1/admin/audit?after=2&limit=3', undefined, { token: eveToken })),
      );
      expect(page.records.map((r) => r.seq)).toEqual([3, 4, 5]);
      const remoteVerify = AuditVerifyResponse.parse(
        ok(await http(h, 'GET', '/v1/admin/audit/verify', undefined, { token: eveToken })),
      );
      expect(remoteVerify.ok).toBe(true);
      // Bob's device is gone; a fresh member is refused both.
      const mallory = await enrol(h, (await h.addUser('mallory')).code);
      const malloryToken = await signIn(h, mallory);
      const r1 = await http(h, 'GET', '/v1/admin/audit', undefined, { token: malloryToken });
      const r2 = await http(h, 'GET', '/v1/admin/audit/verify', undefined, { token: malloryToken });
      expect([r1.status, r2.status]).toEqual([403, 403]);
    } finally {
      await h.close();
    }
  });

  it('records rate-limited sign-ins as denied login failures', async () => {
    const h = await startHarness({ adminSocket: true });
    try {
      const alice = await enrol(h, (await h.addUser('alice')).code);
      const wrong = x25519GenerateKeyPair().privateKey;
      for (let i = 0; i < MAX_AUTH_FAILURES_PER_DEVICE; i++) {
        expect((await signInRaw(h, alice, wrong)).status).toBe(401);
      }
      // Now even the right key is refused while the limit holds.
      expect((await signInRaw(h, alice, alice.keys.auth.privateKey)).status).toBe(429);
      const { records } = AuditListResponse.parse(ok(await h.admin({ op: 'audit.list' })));
      const failures = records.filter((r) => r.action === 'login.failure');
      expect(failures.map((r) => [r.target, r.outcome, r.detail?.reason])).toEqual([
        ...Array.from({ length: MAX_AUTH_FAILURES_PER_DEVICE }, () => [
          'device:alice/1',
          'failed',
          'authentication-failed',
        ]),
        ['device:alice/1', 'denied', 'rate-limited'],
      ]);
    } finally {
      await h.close();
    }
  });

  it('a failed append is logged in one line and the request still completes', async () => {
    const h = await startHarness({
      adminSocket: true,
      wrapStorage: (s) =>
        new Proxy(s, {
          get(target, prop, receiver) {
            if (prop === 'appendAudit') return () => Promise.reject(new Error('disk full: SECRET-DETAIL'));
            const v = Reflect.get(target, prop, receiver);
            return typeof v === 'function' ? v.bind(target) : v;
          },
        }),
    });
    try {
      const r = await h.admin({ op: 'user.add', name: 'alice' });
      expect(r.status).toBe(200);
      expect(h.logs.filter((l) => l.startsWith('audit:'))).toEqual([
        'audit: appending a user.create record failed',
      ]);
      expect(h.logs.join('\n')).not.toContain('SECRET-DETAIL');
    } finally {
      await h.close();
    }
  });
});
