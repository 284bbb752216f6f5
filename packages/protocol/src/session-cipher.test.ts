import { describe, expect, it } from 'vitest';
import { isProtocolError } from './errors.js';
import {
  generateIdentityKeyPair,
  generateKyberPreKey,
  generatePreKey,
  generateSignedPreKey,
  type KyberPreKeyRecord,
  type PreKeyRecord,
  type SignedPreKeyRecord,
} from './keys.js';
import { CiphertextMessageType, decodePreKeySignalMessage, decodeSignalMessage } from './messages.js';
import { createPreKeyBundle } from './prekey-bundle.js';
import { messageKeySeed, nextChainKey } from './ratchet.js';
import {
  type CipherOptions,
  decryptMessage,
  decryptPreKeySignalMessage,
  decryptSignalMessage,
  encryptMessage,
  type PreKeyLookup,
  processPreKeyBundle,
} from './session-cipher.js';
import {
  MAX_ARCHIVED_STATES,
  MAX_FORWARD_JUMPS,
  MAX_MESSAGE_KEYS,
  MAX_RECEIVER_CHAINS,
  MAX_UNACKNOWLEDGED_SESSION_AGE_MS,
  SessionRecord,
} from './session-record.js';

const te = new TextEncoder();
const td = new TextDecoder();

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return isProtocolError(e) ? e.code : `not a ProtocolError: ${String(e)}`;
  }
  return undefined;
}

/** One endpoint with its prekeys. */
function party(registrationId: number) {
  const identityKeyPair = generateIdentityKeyPair();
  const signed = new Map<number, SignedPreKeyRecord>();
  const kyber = new Map<number, KyberPreKeyRecord>();
  const oneTime = new Map<number, PreKeyRecord>();
  const lookup: PreKeyLookup = {
    getSignedPreKey: (id) => signed.get(id),
    getKyberPreKey: (id) => kyber.get(id),
    getPreKey: (id) => oneTime.get(id),
  };
  let nextId = 1;
  return {
    local: { identityKeyPair, registrationId },
    lookup,
    signed,
    kyber,
    oneTime,
    bundle(withOneTime = true) {
      const spk = generateSignedPreKey(identityKeyPair, nextId++);
      const kpk = generateKyberPreKey(identityKeyPair, nextId++);
      const opk = withOneTime ? generatePreKey(nextId++) : undefined;
      signed.set(spk.id, spk);
      kyber.set(kpk.id, kpk);
      if (opk) oneTime.set(opk.id, opk);
      return createPreKeyBundle({
        registrationId,
        deviceId: 1,
        identity: identityKeyPair,
        signedPreKey: spk,
        kyberPreKey: kpk,
        preKey: opk,
      });
    },
  };
}

/** Alice has processed Bob's bundle; neither has sent anything. */
function start(withOneTime = true) {
  const alice = party(100);
  const bob = party(200);
  const { record } = processPreKeyBundle(undefined, bob.bundle(withOneTime), alice.local);
  return { alice, bob, aliceRecord: record };
}

/** A session where both sides have sent and received once. */
function established() {
  const { alice, bob, aliceRecord } = start();
  const m1 = encryptMessage(aliceRecord, te.encode('hello'));
  const d1 = decryptPreKeySignalMessage(undefined, m1.message.body, bob.local, bob.lookup);
  const m2 = encryptMessage(d1.record, te.encode('hi'));
  const d2 = decryptSignalMessage(m1.record, m2.message.body);
  return { alice, bob, a: d2.record, b: m2.record };
}

describe('session cipher (Qalqon ↔ Qalqon)', () => {
  it('sets up a session from a bundle and talks both ways', () => {
    const { alice, bob, aliceRecord } = start();
    const m1 = encryptMessage(aliceRecord, te.encode('hello'));
    expect(m1.message.type).toBe(CiphertextMessageType.PreKey);
    const d1 = decryptPreKeySignalMessage(undefined, m1.message.body, bob.local, bob.lookup);
    expect(td.decode(d1.plaintext)).toBe('hello');
    expect(d1.remoteIdentityKey).toEqual(alice.local.identityKeyPair.publicKey);
    expect(d1.remoteRegistrationId).toBe(100);
    expect(d1.usedPreKeys?.preKeyId).toBe(3);
    expect(d1.usedPreKeys?.signedPreKeyId).toBe(1);
    expect(d1.usedPreKeys?.kyberPreKeyId).toBe(2);
    expect(d1.record.remoteRegistrationId).toBe(100);
    expect(d1.record.localRegistrationId).toBe(200);
    const m2 = encryptMessage(d1.record, te.encode('hi'));
    expect(m2.message.type).toBe(CiphertextMessageType.Whisper);
    const d2 = decryptMessage(m1.record, m2.message, alice.local, alice.lookup);
    expect(td.decode(d2.plaintext)).toBe('hi');
    // Alice has her answer: no more PreKeySignalMessages.
    expect(encryptMessage(d2.record, te.encode('x')).message.type).toBe(CiphertextMessageType.Whisper);
  });

  it('works without a one-time prekey', () => {
    const { bob, aliceRecord } = start(false);
    const m1 = encryptMessage(aliceRecord, te.encode('no opk'));
    expect(decodePreKeySignalMessage(m1.message.body).preKeyId).toBeUndefined();
    const d1 = decryptPreKeySignalMessage(undefined, m1.message.body, bob.local, bob.lookup);
    expect(td.decode(d1.plaintext)).toBe('no opk');
    expect(d1.usedPreKeys?.preKeyId).toBeUndefined();
  });

  it('the initiator repeats PreKeySignalMessages until answered; the responder accepts them in any order', () => {
    const { bob, aliceRecord } = start();
    let a = aliceRecord;
    const msgs = [];
    for (let i = 0; i < 4; i++) {
      const m = encryptMessage(a, te.encode(`m${i}`));
      a = m.record;
      expect(m.message.type).toBe(CiphertextMessageType.PreKey);
      msgs.push(m.message.body);
    }
    // All carry the same base key and the same prekey ids.
    expect(
      new Set(msgs.map((m) => Buffer.from(decodePreKeySignalMessage(m).baseKey).toString('hex'))).size,
    ).toBe(1);
    let b: SessionRecord | undefined;
    const used = [];
    for (const i of [2, 0, 3, 1]) {
      const d = decryptPreKeySignalMessage(b, msgs[i]!, bob.local, bob.lookup);
      expect(td.decode(d.plaintext)).toBe(`m${i}`);
      used.push(d.usedPreKeys);
      b = d.record;
    }
    // Only the first one set up the session (and used the prekeys).
    expect(used.filter((u) => u !== undefined).length).toBe(1);
    expect(b!.previousStates.length).toBe(0);
  });

  it('a replayed message is DUPLICATE_MESSAGE, also as a PreKeySignalMessage', () => {
    const { bob, aliceRecord } = start();
    const m1 = encryptMessage(aliceRecord, te.encode('once'));
    const d1 = decryptPreKeySignalMessage(undefined, m1.message.body, bob.local, bob.lookup);
    expect(code(() => decryptPreKeySignalMessage(d1.record, m1.message.body, bob.local, bob.lookup))).toBe(
      'DUPLICATE_MESSAGE',
    );
    const { a, b } = established();
    const m = encryptMessage(a, te.encode('x'));
    const d = decryptSignalMessage(b, m.message.body);
    expect(code(() => decryptSignalMessage(d.record, m.message.body))).toBe('DUPLICATE_MESSAGE');
  });

  it('missing prekeys are INVALID_PREKEY_ID; a refused identity is UNTRUSTED_IDENTITY', () => {
    const { bob, aliceRecord } = start();
    const body = encryptMessage(aliceRecord, te.encode('x')).message.body;
    for (const missing of ['getSignedPreKey', 'getKyberPreKey', 'getPreKey'] as const) {
      const lookup = { ...bob.lookup, [missing]: () => undefined };
      expect(code(() => decryptPreKeySignalMessage(undefined, body, bob.local, lookup))).toBe(
        'INVALID_PREKEY_ID',
      );
    }
    const refuse: CipherOptions = { isTrustedIdentity: () => false };
    expect(code(() => decryptPreKeySignalMessage(undefined, body, bob.local, bob.lookup, refuse))).toBe(
      'UNTRUSTED_IDENTITY',
    );
    expect(code(() => encryptMessage(aliceRecord, te.encode('x'), refuse))).toBe('UNTRUSTED_IDENTITY');
    const { a, b } = established();
    const m = encryptMessage(a, te.encode('x'));
    const seen: string[] = [];
    expect(
      code(() =>
        decryptSignalMessage(b, m.message.body, {
          isTrustedIdentity: (_k, dir) => {
            seen.push(dir);
            return false;
          },
        }),
      ),
    ).toBe('UNTRUSTED_IDENTITY');
    expect(seen).toEqual(['receiving']);
  });

  it('NO_SESSION without a state, and for an unanswered session older than 30 days', () => {
    expect(code(() => encryptMessage(SessionRecord.empty(), te.encode('x')))).toBe('NO_SESSION');
    expect(
      code(() =>
        decryptSignalMessage(
          SessionRecord.empty(),
          encryptMessage(established().a, te.encode('x')).message.body,
        ),
      ),
    ).toBe('NO_SESSION');
    const alice = party(1);
    const bob = party(2);
    const t0 = 1_700_000_000_000;
    const { record } = processPreKeyBundle(undefined, bob.bundle(), alice.local, { now: t0 });
    expect(record.hasUsableSenderChain(t0 + MAX_UNACKNOWLEDGED_SESSION_AGE_MS)).toBe(true);
    expect(record.hasUsableSenderChain(t0 + MAX_UNACKNOWLEDGED_SESSION_AGE_MS + 1)).toBe(false);
    expect(
      code(() => encryptMessage(record, te.encode('x'), { now: t0 + MAX_UNACKNOWLEDGED_SESSION_AGE_MS + 1 })),
    ).toBe('NO_SESSION');
    expect(encryptMessage(record, te.encode('x'), { now: t0 + 1000 }).message.type).toBe(
      CiphertextMessageType.PreKey,
    );
  });

  it('a new session archives the old one; late messages of the old one still decrypt with the archived state', () => {
    const { alice, bob, a, b } = established();
    const late = encryptMessage(b, te.encode('late'));
    // Alice resets: a new session from a fresh bundle.
    const fresh = processPreKeyBundle(a, bob.bundle(), alice.local).record;
    expect(fresh.previousStates.length).toBe(1);
    const d = decryptSignalMessage(fresh, late.message.body);
    expect(td.decode(d.plaintext)).toBe('late');
    // The archived state that decrypted is current again, the new one archived.
    expect(d.record.previousStates.length).toBe(1);
    expect(encryptMessage(d.record, te.encode('x')).message.type).toBe(CiphertextMessageType.Whisper);
  });

  it(`keeps at most ${MAX_ARCHIVED_STATES} archived states`, () => {
    const alice = party(1);
    const bob = party(2);
    const bundle = bob.bundle();
    let rec: SessionRecord | undefined;
    for (let i = 0; i < MAX_ARCHIVED_STATES + 3; i++)
      rec = processPreKeyBundle(rec, bundle, alice.local).record;
    expect(rec!.previousStates.length).toBe(MAX_ARCHIVED_STATES);
    expect(rec!.archiveCurrentState().hasCurrentState).toBe(false);
  });

  it(`drops receiver chains beyond ${MAX_RECEIVER_CHAINS}: a message from an older chain then fails`, () => {
    let { a, b } = established();
    const old = encryptMessage(b, te.encode('old'));
    b = old.record;
    // Six round trips: Bob ratchets six times.
    for (let i = 0; i < MAX_RECEIVER_CHAINS + 1; i++) {
      const x = encryptMessage(a, te.encode('ping'));
      a = x.record;
      b = decryptSignalMessage(b, x.message.body).record;
      const y = encryptMessage(b, te.encode('pong'));
      b = y.record;
      a = decryptSignalMessage(a, y.message.body).record;
    }
    expect(a.currentState!.receiverChains.length).toBe(MAX_RECEIVER_CHAINS);
    expect(code(() => decryptSignalMessage(a, old.message.body))).toBe('DECRYPT_FAILED');
  });

  it(`keeps at most ${MAX_MESSAGE_KEYS} skipped keys per chain, the newest`, () => {
    let { a, b } = established();
    const first = encryptMessage(a, te.encode('first'));
    a = first.record;
    let second = first;
    for (let i = 0; i < MAX_MESSAGE_KEYS + 1; i++) {
      second = encryptMessage(a, te.encode(`m${i}`));
      a = second.record;
    }
    const last = encryptMessage(a, te.encode('last'));
    const d = decryptSignalMessage(b, last.message.body);
    const chain = d.record.currentState!.receiverChains.at(-1)!;
    expect(chain.skipped.size).toBe(MAX_MESSAGE_KEYS);
    // The oldest skipped key was dropped: its message now reads as already used.
    expect(code(() => decryptSignalMessage(d.record, first.message.body))).toBe('DUPLICATE_MESSAGE');
    expect(td.decode(decryptSignalMessage(d.record, second.message.body).plaintext)).toBe(
      `m${MAX_MESSAGE_KEYS}`,
    );
  });

  it(`accepts a jump of exactly ${MAX_FORWARD_JUMPS} and refuses one more (TOO_MANY_SKIPPED_KEYS)`, () => {
    const { a, b } = established();
    // Advance Alice's sending chain as encrypting that many messages would, without the AES work.
    const advance = (rec: SessionRecord, n: number) => {
      const s = rec.currentState!;
      let ck = s.senderChain.chainKey;
      for (let i = 0; i < n; i++) ck = nextChainKey(ck);
      return new SessionRecord({
        ...s,
        senderChain: { ...s.senderChain, chainKey: ck, index: s.senderChain.index + n },
      });
    };
    expect(messageKeySeed(a.currentState!.senderChain.chainKey).length).toBe(32);
    const ok = encryptMessage(advance(a, MAX_FORWARD_JUMPS), te.encode('far'));
    expect(td.decode(decryptSignalMessage(b, ok.message.body).plaintext)).toBe('far');
    const tooFar = encryptMessage(advance(a, MAX_FORWARD_JUMPS + 1), te.encode('too far'));
    expect(
      decodeSignalMessage(tooFar.message.body).counter - decodeSignalMessage(ok.message.body).counter,
    ).toBe(1);
    expect(code(() => decryptSignalMessage(b, tooFar.message.body))).toBe('TOO_MANY_SKIPPED_KEYS');
  });

  it('never changes the records it is given, and returns copies of keys', () => {
    const { a, b } = established();
    const aBytes = a.serialize();
    const bBytes = b.serialize();
    const m = encryptMessage(a, te.encode('x'));
    const d = decryptSignalMessage(b, m.message.body);
    expect(a.serialize()).toEqual(aBytes);
    expect(b.serialize()).toEqual(bBytes);
    d.remoteIdentityKey.fill(0);
    expect(d.record.remoteIdentityKey![0]).toBe(5);
  });

  it('checks its arguments', () => {
    const { a } = established();
    expect(code(() => encryptMessage(a, 'text' as unknown as Uint8Array))).toBe('INVALID_ARGUMENT');
    expect(code(() => encryptMessage({} as SessionRecord, new Uint8Array(1)))).toBe('INVALID_ARGUMENT');
    expect(code(() => decryptSignalMessage(a, null as unknown as Uint8Array))).toBe('INVALID_ARGUMENT');
    const bob = party(1);
    expect(
      code(() =>
        processPreKeyBundle(undefined, bob.bundle(), {
          identityKeyPair: generateIdentityKeyPair(),
          registrationId: -1,
        }),
      ),
    ).toBe('INVALID_ARGUMENT');
  });
});
