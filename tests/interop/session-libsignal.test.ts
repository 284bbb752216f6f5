/**
 * 1:1 sessions between Qalqon and libsignal 0.90.0 (the oracle), both ways:
 *
 * - Qalqon starts: we process libsignal's PreKeyBundle, libsignal processes our
 *   PreKeySignalMessages;
 * - libsignal starts: libsignal processes our bundle, we process its PreKeySignalMessages
 *   (which carry SPQR messages and SPQR-keyed message keys until our first reply reaches it).
 *
 * Then 1,000 messages per session with a random interleaving of the two directions and
 * random out-of-order delivery. Delivery stays within libsignal's bounds: a message is
 * delivered before its sender has moved more than three ratchet keys past it, so the
 * receiver still holds its chain (5 receiver chains). Every message must decrypt exactly
 * once to the right plaintext; redelivery must be refused by both implementations.
 *
 * The schedule comes from a seeded PRNG; the seed is printed with any failure and can be
 * replayed with QALQON_SEED=<n>. (Key material is random on both sides: libsignal's
 * bindings cannot be seeded.)
 */
import { randomBytes } from '@qalqon/crypto';
import {
  CiphertextMessageType,
  createPreKeyBundle,
  decodePreKeySignalMessage,
  decodeSignalMessage,
  decryptPreKeySignalMessage,
  decryptSignalMessage,
  deserializeSessionRecord,
  encodeSignalMessage,
  encryptMessage,
  generateIdentityKeyPair,
  generateKyberPreKey,
  generatePreKey,
  generateSignedPreKey,
  isProtocolError,
  type KyberPreKeyRecord,
  type PreKeyBundle,
  type PreKeyRecord,
  ProtocolError,
  processPreKeyBundle,
  type SignedPreKeyRecord,
} from '@qalqon/protocol';
import * as L from 'libsignal-090';
import { describe, expect, it } from 'vitest';
import { ab, LibsignalParty } from './libsignal-stores.js';

const MESSAGES_PER_SESSION = 1000;
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** mulberry32: a small seeded PRNG for the delivery schedule. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Qalqon's side: records are kept serialised between operations, as a client's database would. */
class QalqonParty {
  readonly identityKeyPair = generateIdentityKeyPair();
  readonly registrationId: number;
  record: Uint8Array | undefined;
  readonly signed = new Map<number, SignedPreKeyRecord>();
  readonly kyber = new Map<number, KyberPreKeyRecord>();
  readonly oneTime = new Map<number, PreKeyRecord>();
  knownIdentity: Uint8Array | undefined;

  constructor(registrationId: number) {
    this.registrationId = registrationId;
  }

  get local() {
    return { identityKeyPair: this.identityKeyPair, registrationId: this.registrationId };
  }

  /** Trust on first use, like libsignal's default store. */
  readonly isTrustedIdentity = (key: Uint8Array): boolean =>
    this.knownIdentity === undefined || hex(this.knownIdentity) === hex(key);

  bundle(ids: { signed: number; kyber: number; oneTime?: number }): PreKeyBundle {
    const signedPreKey = generateSignedPreKey(this.identityKeyPair, ids.signed);
    const kyberPreKey = generateKyberPreKey(this.identityKeyPair, ids.kyber);
    const preKey = ids.oneTime === undefined ? undefined : generatePreKey(ids.oneTime);
    this.signed.set(signedPreKey.id, signedPreKey);
    this.kyber.set(kyberPreKey.id, kyberPreKey);
    if (preKey) this.oneTime.set(preKey.id, preKey);
    return createPreKeyBundle({
      registrationId: this.registrationId,
      deviceId: 1,
      identity: this.identityKeyPair,
      signedPreKey,
      kyberPreKey,
      preKey,
    });
  }

  encrypt(plaintext: Uint8Array): { type: number; body: Uint8Array } {
    const rec = deserializeSessionRecord(this.record!);
    const before = rec.serialize();
    const out = encryptMessage(rec, plaintext, { isTrustedIdentity: this.isTrustedIdentity });
    // The input record is never changed.
    expect(hex(rec.serialize())).toBe(hex(before));
    this.record = out.record.serialize();
    return out.message;
  }

  decrypt(type: number, body: Uint8Array): Uint8Array {
    const rec = this.record === undefined ? undefined : deserializeSessionRecord(this.record);
    if (type === CiphertextMessageType.PreKey) {
      const out = decryptPreKeySignalMessage(
        rec,
        body,
        this.local,
        {
          getSignedPreKey: (id) => this.signed.get(id),
          getKyberPreKey: (id) => this.kyber.get(id),
          getPreKey: (id) => this.oneTime.get(id),
        },
        { isTrustedIdentity: this.isTrustedIdentity },
      );
      if (out.usedPreKeys?.preKeyId !== undefined) this.oneTime.delete(out.usedPreKeys.preKeyId);
      this.knownIdentity = out.remoteIdentityKey;
      this.record = out.record.serialize();
      return out.plaintext;
    }
    if (rec === undefined) throw new Error('no session');
    const out = decryptSignalMessage(rec, body, { isTrustedIdentity: this.isTrustedIdentity });
    this.record = out.record.serialize();
    return out.plaintext;
  }
}

/** Converts libsignal's bundle object to ours (all keys in their serialised wire forms). */
function fromLibsignalBundle(b: L.PreKeyBundle): PreKeyBundle {
  const preKeyId = b.preKeyId();
  return {
    registrationId: b.registrationId(),
    deviceId: b.deviceId(),
    preKeyId: preKeyId ?? undefined,
    preKey: b.preKeyPublic()?.serialize(),
    signedPreKeyId: b.signedPreKeyId(),
    signedPreKey: b.signedPreKeyPublic().serialize(),
    signedPreKeySignature: b.signedPreKeySignature(),
    identityKey: b.identityKey().serialize(),
    kyberPreKeyId: b.kyberPreKeyId(),
    kyberPreKey: b.kyberPreKeyPublic().serialize(),
    kyberPreKeySignature: b.kyberPreKeySignature(),
  };
}

function toLibsignalBundle(b: PreKeyBundle): L.PreKeyBundle {
  return L.PreKeyBundle.new(
    b.registrationId,
    b.deviceId,
    b.preKeyId ?? null,
    b.preKey === undefined ? null : L.PublicKey.deserialize(ab(b.preKey)),
    b.signedPreKeyId,
    L.PublicKey.deserialize(ab(b.signedPreKey)),
    ab(b.signedPreKeySignature),
    L.PublicKey.deserialize(ab(b.identityKey)),
    b.kyberPreKeyId,
    L.KEMPublicKey.deserialize(ab(b.kyberPreKey)),
    ab(b.kyberPreKeySignature),
  );
}

interface Endpoint {
  name: string;
  send(plaintext: Uint8Array): Promise<{ type: number; body: Uint8Array }>;
  receive(type: number, body: Uint8Array): Promise<Uint8Array>;
}

interface InFlight {
  seq: number;
  type: number;
  body: Uint8Array;
  plaintext: Uint8Array;
  /** Position of the sender's ratchet key among the keys it has sent with. */
  chain: number;
}

/** The sender's ratchet key and SPQR field of a message, read with our own decoder. */
function inspect(type: number, body: Uint8Array): { ratchetKey: string; pq: number } {
  const m =
    type === CiphertextMessageType.PreKey
      ? decodePreKeySignalMessage(body).message
      : decodeSignalMessage(body);
  return { ratchetKey: hex(m.ratchetKey), pq: m.pqRatchet.length };
}

/**
 * Runs `total` messages between `first` (who already has a session and sends first) and
 * `second`, returns per-direction statistics. Throws with the seed on any mismatch.
 */
async function conversation(first: Endpoint, second: Endpoint, total: number, seed: number) {
  const rand = prng(seed);
  const sides = [first, second] as const;
  type Pair<T> = [T, T];
  const queues: Pair<InFlight[]> = [[], []]; // queues[i]: messages sent by sides[i], not yet delivered
  const chains: Pair<string[]> = [[], []];
  const delivered: Pair<InFlight[]> = [[], []];
  const stats: Record<'sent' | 'received' | 'preKey' | 'withPq' | 'pqAfterReply', Pair<number>> = {
    sent: [0, 0],
    received: [0, 0],
    preKey: [0, 0],
    withPq: [0, 0],
    pqAfterReply: [0, 0],
  };
  const gotReply: Pair<boolean> = [false, false];
  let seq = 0;

  const send = async (i: 0 | 1) => {
    const plaintext = new TextEncoder().encode(
      `${sides[i].name} #${seq} ${'x'.repeat(Math.floor(rand() * 200))}`,
    );
    const m = await sides[i].send(plaintext);
    const info = inspect(m.type, m.body);
    if (chains[i].at(-1) !== info.ratchetKey) chains[i].push(info.ratchetKey);
    if (m.type === CiphertextMessageType.PreKey) stats.preKey[i]++;
    if (info.pq > 0) stats.withPq[i]++;
    if (info.pq > 0 && gotReply[i]) stats.pqAfterReply[i]++;
    queues[i].push({ seq: seq++, type: m.type, body: m.body, plaintext, chain: chains[i].length - 1 });
    stats.sent[i]++;
  };

  const deliver = async (i: 0 | 1, k: number) => {
    const [msg] = queues[i].splice(k, 1);
    const to = (1 - i) as 0 | 1;
    const pt = await sides[to].receive(msg!.type, msg!.body);
    if (hex(pt) !== hex(msg!.plaintext))
      throw new Error(`message ${msg!.seq} decrypted to the wrong plaintext`);
    delivered[i].push(msg!);
    stats.received[to]++;
    gotReply[to] = true;
  };

  /** Delivers, in random order, the messages whose chain is about to fall out of the receiver's five. */
  const deliverOverdue = async () => {
    for (const i of [0, 1] as const) {
      for (;;) {
        const overdue = queues[i]
          .map((m, k) => ({ m, k }))
          .filter(({ m }) => m.chain <= chains[i].length - 4);
        if (overdue.length === 0) break;
        await deliver(i, overdue[Math.floor(rand() * overdue.length)]!.k);
      }
    }
  };

  try {
    await send(0);
    while (seq < total || queues[0].length + queues[1].length > 0) {
      await deliverOverdue();
      const r = rand();
      // Bursts in one direction, then switches: both long chains and frequent ratchet steps.
      const i: 0 | 1 = rand() < 0.5 ? 0 : 1;
      if (seq < total && (r < 0.5 || queues[i].length === 0)) {
        // The responder can only send once it has a session.
        if (i === 1 && stats.received[1] === 0) continue;
        await send(i);
      } else if (queues[i].length > 0) {
        // Out of order: any of the oldest few pending messages.
        const k = Math.floor(rand() * Math.min(queues[i].length, 8));
        await deliver(i, k);
      }
    }
    // Redelivery of the last five delivered messages each way (their chains are still
    // held) must fail in both implementations, as duplicates.
    for (const i of [0, 1] as const) {
      for (const msg of delivered[i].slice(-5)) {
        await expect(sides[(1 - i) as 0 | 1].receive(msg.type, msg.body)).rejects.toThrow();
      }
    }
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new Error(`interop failure with QALQON_SEED=${seed}: ${message}`, { cause: err });
  }
  return stats;
}

function seedFor(label: string): number {
  const env = process.env.QALQON_SEED;
  const seed = env !== undefined ? Number(env) : Math.floor(Math.random() * 2 ** 31);
  console.log(`${label}: QALQON_SEED=${seed}`);
  return seed;
}

describe('1:1 sessions against libsignal 0.90.0', () => {
  it('Qalqon starts (processes libsignal bundle), 1,000 messages both ways out of order', async () => {
    const bob = new LibsignalParty('bob', 1, 4242);
    const alice = new QalqonParty(1111);
    const aliceAddress = L.ProtocolAddress.new('alice', 1);
    const bundle = await bob.newBundle({ signed: 7, kyber: 9, oneTime: 11 });
    const started = processPreKeyBundle(undefined, fromLibsignalBundle(bundle), alice.local);
    alice.record = started.record.serialize();
    alice.knownIdentity = started.remoteIdentityKey;

    const dupes = { us: 0, them: 0 };
    const stats = await conversation(
      {
        name: 'alice',
        send: async (pt) => alice.encrypt(pt),
        receive: async (type, body) => {
          try {
            return alice.decrypt(type, body);
          } catch (err) {
            if (isProtocolError(err, 'DUPLICATE_MESSAGE')) dupes.us++;
            throw err;
          }
        },
      },
      {
        name: 'bob',
        send: async (pt) => bob.encrypt(aliceAddress, pt),
        receive: async (type, body) => {
          try {
            return await bob.decrypt(aliceAddress, type, body);
          } catch (err) {
            if ((err as { code?: unknown }).code === L.ErrorCode.DuplicatedMessage) dupes.them++;
            throw err;
          }
        },
      },
      MESSAGES_PER_SESSION,
      seedFor('qalqon-initiates'),
    );
    expect(stats.sent[0]! + stats.sent[1]!).toBe(MESSAGES_PER_SESSION);
    expect(stats.received[1]).toBe(stats.sent[0]);
    expect(stats.received[0]).toBe(stats.sent[1]);
    expect(stats.preKey[0]).toBeGreaterThan(0);
    // We never send SPQR, and libsignal, having only ever heard "no SPQR" from us, never does either.
    expect(stats.withPq).toEqual([0, 0]);
    // libsignal removed the one-time prekey and reported the Kyber prekey as used.
    expect(bob.preKeys.has(11)).toBe(false);
    expect(bob.kyberPreKeys.used.length).toBe(1);
    expect(dupes.us).toBe(5);
    expect(dupes.them).toBe(5);
  });

  it('libsignal starts (processes our bundle), 1,000 messages both ways out of order', async () => {
    const alice = new LibsignalParty('alice', 1, 2222);
    const bob = new QalqonParty(3333);
    const bobAddress = L.ProtocolAddress.new('bob', 1);
    const bundle = bob.bundle({ signed: 21, kyber: 22, oneTime: 23 });
    await L.processPreKeyBundle(toLibsignalBundle(bundle), bobAddress, alice.sessions, alice.identities);

    const dupes = { us: 0 };
    const stats = await conversation(
      {
        name: 'alice',
        send: async (pt) => alice.encrypt(bobAddress, pt),
        receive: async (type, body) => alice.decrypt(bobAddress, type, body),
      },
      {
        name: 'bob',
        send: async (pt) => bob.encrypt(pt),
        receive: async (type, body) => {
          try {
            return bob.decrypt(type, body);
          } catch (err) {
            if (isProtocolError(err, 'DUPLICATE_MESSAGE')) dupes.us++;
            throw err;
          }
        },
      },
      MESSAGES_PER_SESSION,
      seedFor('libsignal-initiates'),
    );
    expect(stats.received[1]).toBe(stats.sent[0]);
    expect(stats.received[0]).toBe(stats.sent[1]);
    // libsignal 0.90.0 offers SPQR in every message until our first reply reaches it...
    expect(stats.withPq[0]).toBeGreaterThan(0);
    // ...and then falls back to no SPQR for good.
    expect(stats.pqAfterReply[0]).toBe(0);
    expect(stats.withPq[1]).toBe(0);
    expect(bob.oneTime.has(23)).toBe(false);
    expect(dupes.us).toBe(5);
  });

  it('a libsignal PreKeySignalMessage with a flipped bit is refused and changes nothing', async () => {
    const alice = new LibsignalParty('alice', 1, 5);
    const bob = new QalqonParty(6);
    const bobAddress = L.ProtocolAddress.new('bob', 1);
    await L.processPreKeyBundle(
      toLibsignalBundle(bob.bundle({ signed: 1, kyber: 2 })),
      bobAddress,
      alice.sessions,
      alice.identities,
    );
    const m = await alice.encrypt(bobAddress, new TextEncoder().encode('hi'));
    expect(m.type).toBe(CiphertextMessageType.PreKey);
    const tampered = m.body.slice();
    tampered[tampered.length - 3]! ^= 0x01; // inside the inner SignalMessage's MAC
    expect(() => bob.decrypt(m.type, tampered)).toThrow(ProtocolError);
    expect(bob.record).toBeUndefined();
    expect(new TextDecoder().decode(bob.decrypt(m.type, m.body))).toBe('hi');
  });

  it('encodes a SignalMessage byte for byte as libsignal does (version, protobuf, MAC)', () => {
    for (let i = 0; i < 20; i++) {
      const macKey = randomBytes(32);
      const sender = L.PrivateKey.generate().getPublicKey();
      const receiver = L.PrivateKey.generate().getPublicKey();
      const ratchet = L.PrivateKey.generate().getPublicKey();
      const counter = i * 977;
      const previousCounter = i * 13;
      const ciphertext = randomBytes(16 * (1 + i));
      const theirs = L.SignalMessage._new(
        4,
        ab(macKey),
        ratchet,
        counter,
        previousCounter,
        ab(ciphertext),
        sender,
        receiver,
        new Uint8Array(0),
      ).serialize();
      const ours = encodeSignalMessage(
        { ratchetKey: ratchet.serialize(), counter, previousCounter, ciphertext },
        macKey,
        sender.serialize(),
        receiver.serialize(),
      );
      expect(hex(ours.serialized)).toBe(hex(theirs));
      expect(L.SignalMessage.deserialize(ab(ours.serialized)).verifyMac(sender, receiver, ab(macKey))).toBe(
        true,
      );
    }
  });

  it('refuses libsignal bundles with a bad signature or an untrusted identity', async () => {
    const bob = new LibsignalParty('bob');
    const alice = new QalqonParty(1);
    const good = fromLibsignalBundle(await bob.newBundle({ signed: 1, kyber: 2 }));
    const badSig = good.kyberPreKeySignature.slice();
    badSig[0]! ^= 1;
    expect(() =>
      processPreKeyBundle(undefined, { ...good, kyberPreKeySignature: badSig }, alice.local),
    ).toThrow(expect.objectContaining({ code: 'INVALID_SIGNATURE' }));
    expect(() =>
      processPreKeyBundle(undefined, good, alice.local, { isTrustedIdentity: () => false }),
    ).toThrow(expect.objectContaining({ code: 'UNTRUSTED_IDENTITY' }));
  });
});
