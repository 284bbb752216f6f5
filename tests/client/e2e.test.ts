/**
 * The client SDK end to end against a real server over real TLS 1.3 (the service harness:
 * SQLCipher storage, self-signed certificate, nothing mocked), with each device's database
 * key in a real Secret Service (gnome-keyring on a private D-Bus). Alice has two devices,
 * the second linked by the first; Bob has one. They talk both ways, with one device
 * offline for a while; every device must see the whole conversation exactly once, and no
 * message text may appear in any byte on disk, server or client.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type ClientOptions,
  isClientError,
  QalqonClient,
  type ReceivedMessage,
  type ReceiveFailure,
} from '@qalqon/client';
import { x25519GenerateKeyPair, xeddsaSign } from '@qalqon/crypto';
import { type Storage, spkiPin } from '@qalqon/server';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type SecretService,
  startSecretService,
} from '../../packages/client/src/secret-service.test-util.js';
import { issueEnrolmentCode } from '../../packages/server/src/service/data-dir.js';
import { type Harness, startHarness } from '../../packages/server/src/service/harness.test-util.js';

let secrets: SecretService;
let h: Harness;
let h2: Harness;
let root: string;
/** While set, the server flips the last byte of every envelope body it stores: a corrupting server. */
let corruptNext = false;
const warnings: string[] = [];
const notices: string[] = [];

beforeAll(async () => {
  secrets = await startSecretService();
  root = mkdtempSync(join(tmpdir(), 'qalqon-e2e-'));
  h = await startHarness({
    wrapStorage: (real) =>
      new Proxy(real, {
        get(target, prop) {
          if (prop === 'enqueue') {
            return (items: Parameters<Storage['enqueue']>[0]) =>
              target.enqueue(
                corruptNext
                  ? items.map((e) => {
                      const body = Uint8Array.from(e.body);
                      body[body.length - 1]! ^= 0x01;
                      return { ...e, body };
                    })
                  : items,
              );
          }
          const v = Reflect.get(target, prop, target);
          return typeof v === 'function' ? v.bind(target) : v;
        },
      }),
  });
  h2 = await startHarness();
});

afterAll(async () => {
  await h?.close();
  await h2?.close();
  await secrets?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

function opts(name: string): ClientOptions {
  return {
    profile: join(root, name),
    warning: (l) => warnings.push(l),
    notice: (l) => notices.push(l),
  };
}

const server = () => `https://127.0.0.1:${h.port}`;

async function drain(c: QalqonClient): Promise<{ messages: ReceivedMessage[]; failures: ReceiveFailure[] }> {
  const messages: ReceivedMessage[] = [];
  const failures: ReceiveFailure[] = [];
  await c.receive({ onMessage: (m) => messages.push(m), onFailure: (f) => failures.push(f) });
  return { messages, failures };
}

/** Every file under `dir`, as raw bytes. */
function allBytes(dir: string): { path: string; bytes: Buffer }[] {
  const out: { path: string; bytes: Buffer }[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...allBytes(p));
    else out.push({ path: p, bytes: readFileSync(p) });
  }
  return out;
}

describe('two users, three devices, over real TLS with a real secure store', () => {
  let alice1: QalqonClient;
  let alice2: QalqonClient;
  let bob: QalqonClient;
  /** What each device has seen: its own sends and everything it received. */
  const seen = new Map<string, string[]>();
  const texts: string[] = [];
  const note = (device: string, text: string) => seen.set(device, [...(seen.get(device) ?? []), text]);
  const say = async (from: QalqonClient, fromName: string, to: string, text: string) => {
    texts.push(text);
    const r = await from.send(to, text);
    note(fromName, text);
    return r;
  };
  const recv = async (c: QalqonClient, name: string) => {
    const r = await drain(c);
    expect(r.failures).toEqual([]);
    for (const m of r.messages) note(name, m.text);
    return r.messages;
  };

  it("enrols alice with a given pin and bob on first use, and links alice's second device", async () => {
    const pin = spkiPin(h.cert);
    alice1 = await QalqonClient.enroll({
      ...opts('alice1'),
      server: server(),
      pin,
      code: (await h.addUser('alice')).code,
    });
    expect(alice1.userName).toBe('alice');
    expect(alice1.pin).toBe(pin);

    bob = await QalqonClient.enroll({
      ...opts('bob'),
      server: server(),
      code: (await h.addUser('bob')).code,
    });
    expect(bob.pin).toBe(pin);
    expect(notices.some((n) => n.includes(pin) && n.includes('first use'))).toBe(true);

    let gotCode: (c: string) => void = () => undefined;
    const code = new Promise<string>((r) => {
      gotCode = r;
    });
    const linking = QalqonClient.link({
      ...opts('alice2'),
      server: server(),
      pin,
      onLinkCode: gotCode,
      waitMs: 30_000,
    });
    const linkCode = await code;
    // A code for another request (a server substituting its own key) is refused before anything is sent.
    const [slot] = linkCode.split('.');
    await expect(alice1.approveLink(`${slot}.AAAAAAAAAAAAAAAAAAAAAA`)).rejects.toMatchObject({
      code: 'LINK_HANDOVER_INVALID',
    });
    await alice1.approveLink(linkCode);
    alice2 = await linking;
    expect(alice2.userId).toBe(alice1.userId);
    expect(alice2.deviceId).not.toBe(alice1.deviceId);
    // One identity for the user: bob's safety number with alice is the same from both of alice's devices.
    const fromBob = await bob.safetyNumber('alice');
    expect((await alice1.safetyNumber('bob')).safetyNumber).toBe(fromBob.safetyNumber);
    expect((await alice2.safetyNumber('bob')).safetyNumber).toBe(fromBob.safetyNumber);
    expect(fromBob.safetyNumber).toMatch(/^([0-9]{5} ){11}[0-9]{5}$/);
  });

  it('delivers both ways to every device, with one device offline for a while, each message exactly once', async () => {
    await say(alice1, 'alice1', 'bob', 'm1 alice1 to bob: the quarterly figures');
    expect((await recv(bob, 'bob')).map((m) => [m.from, m.conversation, m.text])).toEqual([
      ['alice', 'alice', 'm1 alice1 to bob: the quarterly figures'],
    ]);
    await say(bob, 'bob', 'alice', 'm2 bob to alice: received, thank you');
    // alice2 stays offline while alice1 and bob go on.
    expect((await recv(alice1, 'alice1')).map((m) => m.text)).toEqual([
      'm2 bob to alice: received, thank you',
    ]);
    await say(alice1, 'alice1', 'bob', 'm3 alice1 to bob: meeting at nine');
    await recv(bob, 'bob');
    await say(bob, 'bob', 'alice', 'm4 bob to alice: nine is fine');
    // alice2 comes online: the whole conversation, in order, once; her own messages as copies to bob's conversation.
    const missed = await recv(alice2, 'alice2');
    expect(missed.map((m) => [m.from, m.conversation, m.text])).toEqual([
      ['alice', 'bob', 'm1 alice1 to bob: the quarterly figures'],
      ['bob', 'bob', 'm2 bob to alice: received, thank you'],
      ['alice', 'bob', 'm3 alice1 to bob: meeting at nine'],
      ['bob', 'bob', 'm4 bob to alice: nine is fine'],
    ]);
    await say(alice2, 'alice2', 'bob', 'm5 alice2 to bob: from my laptop');
    await recv(alice1, 'alice1');
    await recv(bob, 'bob');
    // A second drain finds nothing new anywhere.
    for (const c of [alice1, alice2, bob]) expect((await drain(c)).messages).toEqual([]);
    const all = texts.slice();
    for (const device of ['alice1', 'alice2', 'bob']) {
      expect([...(seen.get(device) ?? [])].sort(), device).toEqual([...all].sort());
    }
  });

  it('keeps sessions consistent when two handles on one profile send at once (two processes)', async () => {
    // Both sends fetch from the server before they encrypt; a session read before that
    // wait and written after it would make the two reuse one message key.
    const second = await QalqonClient.open(opts('bob'));
    try {
      const both = ['m5a bob, first handle', 'm5b bob, second handle'];
      texts.push(...both);
      await Promise.all([bob.send('alice', both[0]!), second.send('alice', both[1]!)]);
      for (const t of both) note('bob', t);
    } finally {
      second.close();
    }
    for (const [c, name] of [
      [alice1, 'alice1'],
      [alice2, 'alice2'],
    ] as const) {
      const got = await recv(c, name);
      expect(got.map((m) => m.text).sort()).toEqual(['m5a bob, first handle', 'm5b bob, second handle']);
    }
  });

  it('ends a waiting receive with an error when its connection is taken over, without reconnecting', async () => {
    const streaming = bob.receive({ waitMs: 20_000, onMessage: () => undefined }).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 1500));
    const second = await QalqonClient.open(opts('bob'));
    try {
      await second.receive({ onMessage: () => undefined });
    } finally {
      second.close();
    }
    const err = await streaming;
    expect(isClientError(err, 'SERVER_UNREACHABLE')).toBe(true);
    expect((err as Error).message).toContain('another connection of this device took over');
  });

  it('shows a message whose display was interrupted once, and acknowledges its redelivery silently', async () => {
    await say(bob, 'bob', 'alice', 'm6 bob to alice: interrupted display');
    // The display callback dies after the message is stored and before the ack (a crash).
    await expect(
      alice1.receive({
        onMessage: () => {
          throw new Error('display crashed');
        },
      }),
    ).rejects.toThrow('display crashed');
    // Next time: shown from the store once; the server's redelivery of the unacknowledged envelope is not shown again.
    const again = await drain(alice1);
    expect(again.messages.map((m) => m.text)).toEqual(['m6 bob to alice: interrupted display']);
    expect(again.failures).toEqual([]);
    expect((await drain(alice1)).messages).toEqual([]);
    await drain(alice2);
  });

  it('reports a ciphertext corrupted by the server with its code, and the session still works', async () => {
    corruptNext = true;
    texts.push('m7 corrupted in transit');
    await bob.send('alice', 'm7 corrupted in transit');
    corruptNext = false;
    const bad = await drain(alice1);
    expect(bad.messages).toEqual([]);
    expect(bad.failures).toHaveLength(1);
    expect(bad.failures[0]).toMatchObject({ code: 'DECRYPT_FAILED', senderDeviceId: bob.deviceId });
    await say(bob, 'bob', 'alice', 'm8 after the corruption');
    expect((await drain(alice1)).messages.map((m) => m.text)).toEqual(['m8 after the corruption']);
    expect((await drain(alice2)).messages.map((m) => m.text)).toEqual(['m8 after the corruption']);
  });

  it("never encrypts to a device the server slipped in without the identity key's signature", async () => {
    // The storage refuses a device with another identity key, so the server's best forgery
    // carries alice's identity key with prekeys it had to sign with some other key.
    const forger = x25519GenerateKeyPair();
    const spk = Uint8Array.from([5, ...x25519GenerateKeyPair().publicKey]);
    const kyber = Uint8Array.from([8, ...new Uint8Array(1568).fill(7)]);
    const identityKey = (await h.storage.getUser(alice1.userId))!.identityKey!;
    const planted = await h.storage.addDevice(alice1.userId, {
      name: 'planted',
      registrationId: 77,
      identityKey,
      authKey: Uint8Array.from([5, ...x25519GenerateKeyPair().publicKey]),
      signedPrekey: { id: 1, publicKey: spk, signature: xeddsaSign(forger.privateKey, spk) },
      kyberPrekey: { id: 1, publicKey: kyber, signature: xeddsaSign(forger.privateKey, kyber) },
      oneTimePrekeys: [],
    });
    warnings.length = 0;
    texts.push('m9 not for the planted device');
    const r = await bob.send('alice', 'm9 not for the planted device');
    expect(r.devices).toBe(2);
    expect(warnings.some((w) => w.includes(`device ${planted.deviceId} of alice`))).toBe(true);
    expect(
      await h.storage.fetchEnvelopes(alice1.userId, planted.deviceId, { afterSeq: 0, limit: 10 }),
    ).toEqual([]);
    // Alice's own devices skip it too.
    texts.push('m10 alice to bob');
    expect((await alice1.send('bob', 'm10 alice to bob')).devices).toBe(2);
    expect(
      await h.storage.fetchEnvelopes(alice1.userId, planted.deviceId, { afterSeq: 0, limit: 10 }),
    ).toEqual([]);
    await h.storage.removeDevice(alice1.userId, planted.deviceId);
    for (const c of [alice1, alice2, bob]) await drain(c);
  });

  it('warns about a changed identity key, and refuses to send to a verified contact until re-verified', async () => {
    const number = (await alice1.safetyNumber('bob')).safetyNumber;
    await expect(
      alice1.verify(
        'bob',
        number.replace(/^./, (d) => String((Number(d) + 1) % 10)),
      ),
    ).rejects.toMatchObject({
      code: 'SAFETY_NUMBER_MISMATCH',
    });
    await alice1.verify('bob', number);
    expect((await alice1.safetyNumber('bob')).verified).toBe(true);

    // Bob loses his device and enrols afresh: a new identity key.
    const { code } = await issueEnrolmentCode(h.storage, bob.userId, Date.now());
    bob.close();
    const bobNew = await QalqonClient.enroll({
      ...opts('bob-new'),
      server: server(),
      pin: spkiPin(h.cert),
      code,
    });
    bob = bobNew;
    warnings.length = 0;
    const refused = await alice1.send('bob', 'must not go out').catch((e: unknown) => e);
    expect(isClientError(refused, 'IDENTITY_CHANGED')).toBe(true);
    expect(warnings.some((w) => w.includes('identity key of bob has changed since you verified'))).toBe(true);
    // Still refused on the next try: the block is stored, not a one-off.
    await expect(alice1.send('bob', 'must not go out either')).rejects.toMatchObject({
      code: 'IDENTITY_CHANGED',
    });
    // alice2 never verified bob: warned, and sending goes on.
    warnings.length = 0;
    texts.push('m11 alice2 to the new bob');
    await alice2.send('bob', 'm11 alice2 to the new bob');
    expect(warnings.some((w) => w.includes('identity key of bob has changed'))).toBe(true);

    const renewed = (await alice1.safetyNumber('bob')).safetyNumber;
    expect(renewed).not.toBe(number);
    expect((await bob.safetyNumber('alice')).safetyNumber).toBe(renewed);
    await alice1.verify('bob', renewed);
    texts.push('m12 after re-verifying');
    await alice1.send('bob', 'm12 after re-verifying');
    expect((await drain(bob)).messages.map((m) => m.text)).toEqual([
      'm11 alice2 to the new bob',
      'm12 after re-verifying',
    ]);
    for (const c of [alice1, alice2]) await drain(c);
  });

  it('stops encrypting to a removed device', async () => {
    await alice1.removeDevice(alice2.deviceId);
    texts.push('m13 after removal');
    expect((await bob.send('alice', 'm13 after removal')).devices).toBe(1);
    expect((await drain(alice1)).messages.map((m) => m.text)).toEqual(['m13 after removal']);
    alice2.close();
  });

  it('replenishes one-time prekeys and rotates signed and Kyber prekeys without user action', async () => {
    const enrolNew = async (name: string) =>
      QalqonClient.enroll({
        ...opts(name),
        server: server(),
        pin: spkiPin(h.cert),
        code: (await h.addUser(name)).code,
      });
    // carol's first message is made from bob's current prekeys and is still queued when he rotates.
    const carol = await enrolNew('carol');
    texts.push('m14 carol to bob, made before the rotation');
    await carol.send('bob', 'm14 carol to bob, made before the rotation');
    // Someone fetches bob's bundles until he runs low.
    for (let i = 0; i < 85; i++) await h.storage.fetchPrekeyBundles(bob.userId);
    const before = (await h.storage.fetchPrekeyBundles(bob.userId))[0]!;
    const aged = await QalqonClient.open({ ...opts('bob-new'), now: () => Date.now() + 8 * 24 * 3600_000 });
    bob.close();
    bob = aged;
    const left = (await h.storage.getDevice(bob.userId, bob.deviceId))!.oneTimePrekeyCount;
    expect(left).toBeLessThan(20);
    const r = await bob.maintainPrekeys();
    expect(r).toEqual({ uploaded: 100 - left, rotatedSigned: true, rotatedKyber: true });
    // Once is enough: the next check finds the new keys fresh and the stock full.
    expect(await bob.maintainPrekeys()).toEqual({ uploaded: 0, rotatedSigned: false, rotatedKyber: false });
    const after = (await h.storage.fetchPrekeyBundles(bob.userId))[0]!;
    expect(after.oneTimePrekeysRemaining).toBe(99);
    expect(after.signedPrekey.id).not.toBe(before.signedPrekey.id);
    expect(after.kyberPrekey.id).not.toBe(before.kyberPrekey.id);
    // The replaced keys are kept for messages in flight, and sessions from the new keys work (dave is new to bob).
    const dave = await enrolNew('dave');
    texts.push('m15 dave to bob after the rotation');
    await dave.send('bob', 'm15 dave to bob after the rotation');
    expect((await drain(bob)).messages.map((m) => [m.from, m.text])).toEqual([
      ['carol', 'm14 carol to bob, made before the rotation'],
      ['dave', 'm15 dave to bob after the rotation'],
    ]);
    carol.close();
    dave.close();
  });

  it('refuses a server presenting another key, names both fingerprints, and accepts it only after repin', async () => {
    const profile = join(root, 'alice1');
    alice1.close();
    // The server at alice's address now presents another key (h2's certificate).
    const settingsFile = join(profile, 'profile.json');
    const settings = JSON.parse(readFileSync(settingsFile, 'utf8')) as { server: string; pin: string };
    const oldPin = settings.pin;
    writeFileSync(settingsFile, JSON.stringify({ ...settings, server: `https://127.0.0.1:${h2.port}` }));
    const moved = await QalqonClient.open(opts('alice1'));
    const err = await moved.send('bob', 'must not reach an impostor').catch((e: unknown) => e);
    expect(isClientError(err, 'SERVER_KEY_CHANGED')).toBe(true);
    expect((err as Error).message).toContain(oldPin);
    expect((err as Error).message).toContain(spkiPin(h2.cert));
    // Nothing was re-pinned by the refusal, and a second attempt is refused the same way.
    expect(JSON.parse(readFileSync(settingsFile, 'utf8')).pin).toBe(oldPin);
    await expect(moved.listDevices()).rejects.toMatchObject({ code: 'SERVER_KEY_CHANGED' });
    moved.close();
    expect(QalqonClient.repin(profile, spkiPin(h2.cert))).toEqual({
      previous: oldPin,
      pin: spkiPin(h2.cert),
    });
    const repinned = await QalqonClient.open(opts('alice1'));
    // Through to the other server now: it does not know alice's device, which it says over TLS.
    await expect(repinned.listDevices()).rejects.toMatchObject({ name: 'WireError' });
    repinned.close();
  });

  it("leaves no message text in any byte of the server's data directory or any profile", () => {
    bob.close();
    expect(texts.length).toBeGreaterThan(10);
    const files = [...allBytes(h.dir), ...allBytes(root)];
    // The search covers the databases (and any WAL file left) and the settings.
    expect(files.some((f) => f.path.endsWith('client.db'))).toBe(true);
    expect(files.some((f) => f.path.endsWith('qalqon.db'))).toBe(true);
    for (const text of texts) {
      for (const probe of [text, text.slice(0, 12), text.slice(-12)]) {
        for (const f of files)
          expect(f.bytes.includes(Buffer.from(probe, 'utf8')), `${probe} in ${f.path}`).toBe(false);
      }
    }
    // The search would find text if it were there: the settings file's pin is plain JSON.
    expect(files.some((f) => f.bytes.includes(Buffer.from('sha256/')))).toBe(true);
  });
});
