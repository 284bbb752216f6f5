/**
 * Sender keys in libsignal's format against libsignal 0.90.0 and 0.103.0 as oracles, both
 * ways: libsignal creates the distribution message and encrypts, Qalqon processes and
 * decrypts; Qalqon creates and encrypts, libsignal processes and decrypts. Beyond round
 * trips, a libsignal receiver and a Qalqon receiver are fed the same deliveries (any order,
 * replays, gaps past the stored-key bound, jumps past the forward limit, rotated chains,
 * replaced signing keys, other distributions) and must reach the same verdict every time.
 */
import { randomBytes, x25519GenerateKeyPair, xeddsaVerify } from '@qalqon/crypto';
import {
  createSenderKeyDistributionMessage,
  groupDecrypt,
  groupEncrypt,
  isProtocolError,
  nextSenderChainKey,
  type ProtocolErrorCode,
  parseSenderKeyDistributionMessage,
  parseSenderKeyMessage,
  processSenderKeyDistributionMessage,
  SENDER_KEY_MAX_FORWARD_JUMPS,
  SENDER_KEY_MAX_MESSAGE_KEYS,
  type SenderKeyRecord,
  serializeCurveKey,
  serializeSenderKeyDistributionMessage,
  serializeSenderKeyRecord,
} from '@qalqon/protocol';
import fc from 'fast-check';
import * as L090 from 'libsignal-090';
import * as L103 from 'libsignal-103';
import { describe, expect, it } from 'vitest';
import {
  ab,
  bytesToUuid,
  InMemorySenderKeyStore090,
  InMemorySenderKeyStore103,
  uuidToBytes,
} from './libsignal-sender-key-store.js';

// The two versions' declarations are the same for everything used here; one adapter type
// serves both (their classes are nominally distinct, hence the cast below).
type Lib = typeof L090;
type Store = InMemorySenderKeyStore090;

interface Oracle {
  readonly lib: Lib;
  newStore(): Store;
}

const ORACLES: [string, Oracle][] = [
  ['0.90.0', { lib: L090, newStore: () => new InMemorySenderKeyStore090() }],
  [
    '0.103.0',
    {
      lib: L103 as unknown as Lib,
      newStore: () => new InMemorySenderKeyStore103() as unknown as Store,
    },
  ],
];

const utf8 = (s: string) => new TextEncoder().encode(s);
const text = (b: Uint8Array) => new TextDecoder().decode(b);
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function randomUuid(): string {
  const b = randomBytes(16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  return bytesToUuid(b);
}

/** A verdict both implementations can be reduced to. */
type Verdict = string;

const OUR_VERDICT: Partial<Record<ProtocolErrorCode, Verdict>> = {
  DUPLICATE_MESSAGE: 'duplicate',
  TOO_MANY_SKIPPED_KEYS: 'too-far',
  NO_SESSION: 'no-state',
  INVALID_SIGNATURE: 'bad-signature',
  UNSUPPORTED_VERSION: 'version',
  DECRYPT_FAILED: 'decrypt',
  INVALID_MESSAGE: 'malformed',
};

function ourVerdict(err: unknown): Verdict {
  if (isProtocolError(err)) return OUR_VERDICT[err.code] ?? `other:${err.code}`;
  throw err;
}

/** libsignal's errors, by code or by message (group_cipher.rs / protocol.rs wording). */
function libsignalVerdict(lib: Lib, err: unknown): Verdict {
  const e = err as { code?: number; message?: string };
  const m = e.message ?? '';
  if (e.code === lib.ErrorCode.DuplicatedMessage) return 'duplicate';
  if (m.includes('too far into the future')) return 'too-far';
  if (m.includes('missing sender key state')) return 'no-state';
  if (m.includes('invalid signature')) return 'bad-signature';
  if (m.includes('ciphertext version was unrecognized') || m.includes('legacy ciphertext version'))
    return 'version';
  if (m.includes('decryption failed')) return 'decrypt';
  if (
    m.includes('protobuf encoding was invalid') ||
    m.includes('ciphertext serialized bytes were too short')
  ) {
    return 'malformed';
  }
  return `other:${m}`;
}

/** A libsignal receiver and a Qalqon receiver of one sender's messages, kept side by side. */
class Receivers {
  ours: SenderKeyRecord | undefined;
  readonly store: Store;
  readonly from: L090.ProtocolAddress;

  constructor(
    private readonly lib: Lib,
    newStore: () => Store,
    sender: string,
  ) {
    this.store = newStore();
    this.from = lib.ProtocolAddress.new(sender, 1);
  }

  async processDistribution(bytes: Uint8Array): Promise<void> {
    this.ours = processSenderKeyDistributionMessage('libsignal', this.ours, bytes);
    const skdm = this.lib.SenderKeyDistributionMessage.deserialize(ab(bytes));
    await this.lib.processSenderKeyDistributionMessage(this.from, skdm, this.store);
  }

  /** Delivers a message to both and returns both verdicts ("ok:<plaintext>" or an error class). */
  async deliver(bytes: Uint8Array): Promise<{ ours: Verdict; theirs: Verdict }> {
    let ours: Verdict;
    try {
      const out = groupDecrypt('libsignal', this.ours, bytes);
      this.ours = out.record;
      ours = `ok:${text(out.plaintext)}`;
    } catch (err) {
      ours = ourVerdict(err);
    }
    let theirs: Verdict;
    try {
      theirs = `ok:${text(await this.lib.groupDecrypt(this.from, this.store, ab(bytes)))}`;
    } catch (err) {
      theirs = libsignalVerdict(this.lib, err);
    }
    return { ours, theirs };
  }

  /** Delivers and expects both to agree on `expected`. */
  async expectBoth(bytes: Uint8Array, expected: Verdict): Promise<void> {
    expect(await this.deliver(bytes)).toEqual({ ours: expected, theirs: expected });
  }
}

/** A libsignal sender. */
class LibsignalSender {
  readonly store: Store;
  readonly address: L090.ProtocolAddress;

  constructor(
    private readonly lib: Lib,
    newStore: () => Store,
    readonly distributionId: string,
  ) {
    this.store = newStore();
    this.address = lib.ProtocolAddress.new('alice', 1);
  }

  async distribution(): Promise<Uint8Array> {
    const m = await this.lib.SenderKeyDistributionMessage.create(
      this.address,
      this.distributionId,
      this.store,
    );
    return m.serialize();
  }

  async encrypt(plaintext: string): Promise<Uint8Array> {
    const m = await this.lib.groupEncrypt(this.address, this.distributionId, this.store, ab(utf8(plaintext)));
    expect(m.type()).toBe(this.lib.CiphertextMessageType.SenderKey);
    return m.serialize();
  }

  /** Drops the sender key, so the next distribution() starts a new chain (libsignal's way to rotate). */
  rotate(): void {
    (this.store as unknown as { forget(a: L090.ProtocolAddress, d: string): void }).forget(
      this.address,
      this.distributionId,
    );
  }
}

/** A Qalqon sender in libsignal's format. */
class QalqonSender {
  record: SenderKeyRecord | undefined;
  constructor(readonly distributionId: string) {}

  distribution(): Uint8Array {
    const out = createSenderKeyDistributionMessage(
      'libsignal',
      uuidToBytes(this.distributionId),
      this.record,
    );
    this.record = out.record;
    return out.message;
  }

  encrypt(plaintext: string): Uint8Array {
    const out = groupEncrypt('libsignal', this.record!, utf8(plaintext));
    this.record = out.record;
    return out.message;
  }

  /** Moves the chain on by `steps` iterations without sending, as if messages went to others. */
  skip(steps: number): void {
    const s = this.record!.states[0]!;
    let chainKey = s.chainKey;
    for (let i = 0; i < steps; i++) chainKey = nextSenderChainKey(chainKey);
    this.record = { ...this.record!, states: [{ ...s, chainKey, iteration: s.iteration + steps }] };
  }

  rotate(): void {
    this.record = undefined;
  }
}

describe.each(ORACLES)('sender keys interoperate with libsignal %s', (_name, { lib, newStore }) => {
  it('libsignal creates and encrypts; Qalqon processes and decrypts', async () => {
    const dist = randomUuid();
    const alice = new LibsignalSender(lib, newStore, dist);
    const skdm = await alice.distribution();
    const bob = processSenderKeyDistributionMessage('libsignal', undefined, skdm);
    expect(bob.distributionId).toEqual(uuidToBytes(dist));
    let record = bob;
    for (const p of ['hello group', '', 'x'.repeat(5000), 'ünïcödé ✓']) {
      const out = groupDecrypt('libsignal', record, await alice.encrypt(p));
      expect(text(out.plaintext)).toBe(p);
      record = out.record;
    }
  });

  it('Qalqon creates and encrypts; libsignal processes and decrypts', async () => {
    const dist = randomUuid();
    const alice = new QalqonSender(dist);
    const bob = new Receivers(lib, newStore, 'alice');
    await bob.processDistribution(alice.distribution());
    for (const p of ['hello group', '', 'x'.repeat(5000), 'ünïcödé ✓']) {
      await bob.expectBoth(alice.encrypt(p), `ok:${p}`);
    }
  });

  it('encodings are byte-identical to libsignal’s, and signatures verify across implementations', async () => {
    const dist = randomUuid();
    const distBytes = uuidToBytes(dist);
    // Our distribution message = libsignal's for the same fields.
    const ours = new QalqonSender(dist);
    const ourSkdm = ours.distribution();
    const state = ours.record!.states[0]!;
    const theirSkdm = lib.SenderKeyDistributionMessage._new(
      3,
      dist,
      state.chainId,
      state.iteration,
      ab(state.chainKey),
      lib.PublicKey.deserialize(ab(state.signingPublicKey)),
    ).serialize();
    expect(hex(ourSkdm)).toBe(hex(theirSkdm));

    // libsignal's distribution message, processed by us and distributed again from our
    // receiving state, comes out byte for byte the same.
    const alice = new LibsignalSender(lib, newStore, dist);
    const libSkdm = await alice.distribution();
    const received = processSenderKeyDistributionMessage('libsignal', undefined, libSkdm);
    const again = createSenderKeyDistributionMessage('libsignal', distBytes, received);
    expect(hex(again.message)).toBe(hex(libSkdm));
    const parsedSkdm = lib.SenderKeyDistributionMessage.deserialize(ab(ourSkdm));
    expect(parsedSkdm.chainId()).toBe(state.chainId);
    expect(parsedSkdm.iteration()).toBe(0);
    expect(hex(parsedSkdm.chainKey())).toBe(hex(state.chainKey));

    // Our message = libsignal's SenderKeyMessage for the same fields, up to the signature.
    const ourMsg = ours.encrypt('bytes');
    const parsed = parseSenderKeyMessage('libsignal', ourMsg);
    const privateKey = lib.PrivateKey.deserialize(ab(state.signingPrivateKey!));
    const theirMsg = lib.SenderKeyMessage._new(
      3,
      dist,
      parsed.chainId,
      parsed.iteration,
      ab(parsed.ciphertext),
      privateKey,
    ).serialize();
    expect(hex(ourMsg.subarray(0, -64))).toBe(hex(theirMsg.subarray(0, -64)));
    // Each implementation verifies the other's XEdDSA signature.
    const publicKey = lib.PublicKey.deserialize(ab(state.signingPublicKey));
    expect(publicKey.verify(ab(ourMsg.subarray(0, -64)), ab(ourMsg.subarray(-64)))).toBe(true);
    expect(
      xeddsaVerify(state.signingPublicKey.subarray(1), theirMsg.subarray(0, -64), theirMsg.subarray(-64)),
    ).toBe(true);
    const libParsed = lib.SenderKeyMessage.deserialize(ab(ourMsg));
    expect(libParsed.chainId()).toBe(parsed.chainId);
    expect(libParsed.iteration()).toBe(parsed.iteration);
    expect(libParsed.verifySignature(publicKey)).toBe(true);
  });

  for (const direction of ['libsignal → Qalqon and libsignal', 'Qalqon → Qalqon and libsignal'] as const) {
    it(`${direction}: the same verdict for any order of delivery and any replay`, async () => {
      const count = 12;
      await fc.assert(
        fc.asyncProperty(fc.array(fc.nat(count - 1), { minLength: 1, maxLength: 30 }), async (order) => {
          const dist = randomUuid();
          const bob = new Receivers(lib, newStore, 'alice');
          const messages: Uint8Array[] = [];
          if (direction.startsWith('libsignal')) {
            const alice = new LibsignalSender(lib, newStore, dist);
            await bob.processDistribution(await alice.distribution());
            for (let i = 0; i < count; i++) messages.push(await alice.encrypt(`m${i}`));
          } else {
            const alice = new QalqonSender(dist);
            await bob.processDistribution(alice.distribution());
            for (let i = 0; i < count; i++) messages.push(alice.encrypt(`m${i}`));
          }
          const seen = new Set<number>();
          for (const i of order) {
            const verdict = await bob.deliver(messages[i]!);
            expect(verdict.ours).toBe(verdict.theirs);
            expect(verdict.ours).toBe(seen.has(i) ? 'duplicate' : `ok:m${i}`);
            seen.add(i);
          }
        }),
        { numRuns: 15 },
      );
    });
  }

  it(`both keep the same ${SENDER_KEY_MAX_MESSAGE_KEYS} skipped keys when a gap is larger`, async () => {
    const dist = randomUuid();
    const alice = new LibsignalSender(lib, newStore, dist);
    const bob = new Receivers(lib, newStore, 'alice');
    await bob.processDistribution(await alice.distribution());
    const total = SENDER_KEY_MAX_MESSAGE_KEYS + 10;
    const messages: Uint8Array[] = [];
    for (let i = 0; i < total; i++) messages.push(await alice.encrypt(`m${i}`));
    await bob.expectBoth(messages[total - 1]!, `ok:m${total - 1}`);
    // total - 1 keys were skipped; the oldest 9 were dropped.
    const firstKept = total - 1 - SENDER_KEY_MAX_MESSAGE_KEYS;
    await bob.expectBoth(messages[0]!, 'duplicate');
    await bob.expectBoth(messages[firstKept - 1]!, 'duplicate');
    await bob.expectBoth(messages[firstKept]!, `ok:m${firstKept}`);
    await bob.expectBoth(messages[total - 2]!, `ok:m${total - 2}`);
    await bob.expectBoth(messages[firstKept]!, 'duplicate');
  });

  it(`both accept a jump of ${SENDER_KEY_MAX_FORWARD_JUMPS} and refuse one more`, async () => {
    const dist = randomUuid();
    for (const [jump, expected] of [
      [SENDER_KEY_MAX_FORWARD_JUMPS + 1, 'too-far'],
      [SENDER_KEY_MAX_FORWARD_JUMPS, 'ok:edge'],
    ] as const) {
      const alice = new QalqonSender(dist);
      const bob = new Receivers(lib, newStore, 'alice');
      await bob.processDistribution(alice.distribution());
      alice.skip(jump);
      await bob.expectBoth(alice.encrypt('edge'), expected);
    }

    // The same with a message libsignal itself built and signed.
    const signing = x25519GenerateKeyPair();
    const chainId = 77;
    const skdm = lib.SenderKeyDistributionMessage._new(
      3,
      dist,
      chainId,
      0,
      ab(randomBytes(32)),
      lib.PublicKey.deserialize(ab(serializeCurveKey(signing.publicKey))),
    ).serialize();
    const bob = new Receivers(lib, newStore, 'alice');
    await bob.processDistribution(skdm);
    const far = lib.SenderKeyMessage._new(
      3,
      dist,
      chainId,
      SENDER_KEY_MAX_FORWARD_JUMPS + 1,
      ab(new Uint8Array(16)),
      lib.PrivateKey.deserialize(ab(signing.privateKey)),
    ).serialize();
    await bob.expectBoth(far, 'too-far');
  });

  for (const senderKind of ['libsignal', 'Qalqon'] as const) {
    it(`${senderKind} sender rotating its chain: both keep five chains by chain id and drop the oldest`, async () => {
      const dist = randomUuid();
      const bob = new Receivers(lib, newStore, 'alice');
      const firstMessages: Uint8Array[] = [];
      const chainIds = new Set<number>();
      const libAlice = new LibsignalSender(lib, newStore, dist);
      const ourAlice = new QalqonSender(dist);
      for (let i = 0; i < 6; i++) {
        if (senderKind === 'libsignal') {
          if (i > 0) libAlice.rotate();
          const skdm = await libAlice.distribution();
          chainIds.add(parseSenderKeyDistributionMessage('libsignal', skdm).chainId);
          await bob.processDistribution(skdm);
          firstMessages.push(await libAlice.encrypt(`c${i}`));
        } else {
          if (i > 0) ourAlice.rotate();
          const skdm = ourAlice.distribution();
          chainIds.add(parseSenderKeyDistributionMessage('libsignal', skdm).chainId);
          await bob.processDistribution(skdm);
          firstMessages.push(ourAlice.encrypt(`c${i}`));
        }
      }
      expect(chainIds.size).toBe(6); // 31-bit random chain ids; a collision would be a 1-in-10^8 event
      for (const id of chainIds) expect(id).toBeLessThan(2 ** 31);
      expect(bob.ours!.states).toHaveLength(5);
      // Newest first, so the interleaved order of reads does not matter to either.
      for (let i = 5; i >= 1; i--) await bob.expectBoth(firstMessages[i]!, `ok:c${i}`);
      await bob.expectBoth(firstMessages[0]!, 'no-state');
    });
  }

  it('a re-sent distribution message keeps the chain; the same chain id with another key replaces it', async () => {
    const dist = randomUuid();
    const alice = new QalqonSender(dist);
    const bob = new Receivers(lib, newStore, 'alice');
    const skdm = alice.distribution();
    await bob.processDistribution(skdm);
    const m0 = alice.encrypt('m0');
    const m1 = alice.encrypt('m1');
    await bob.expectBoth(m0, 'ok:m0');
    await bob.expectBoth(m1, 'ok:m1');
    await bob.processDistribution(skdm);
    await bob.expectBoth(m0, 'duplicate');

    const impostor = x25519GenerateKeyPair();
    const s = alice.record!.states[0]!;
    const forged = serializeSenderKeyDistributionMessage({
      format: 'libsignal',
      distributionId: uuidToBytes(dist),
      chainId: s.chainId,
      iteration: 0,
      chainKey: randomBytes(32),
      signingPublicKey: serializeCurveKey(impostor.publicKey),
    });
    await bob.processDistribution(forged);
    await bob.expectBoth(alice.encrypt('m2'), 'bad-signature');
  });

  it('a message for another distribution id, or with a bad signature, is refused by both alike', async () => {
    const distA = randomUuid();
    const distB = randomUuid();
    const alice = new LibsignalSender(lib, newStore, distA);
    const bob = new Receivers(lib, newStore, 'alice');
    await bob.processDistribution(await alice.distribution());
    const otherDist = new LibsignalSender(lib, newStore, distB);
    await otherDist.distribution();
    await bob.expectBoth(await otherDist.encrypt('b'), 'no-state');

    const m = await alice.encrypt('a');
    // Byte 5 lies in the distribution uuid (0x33 0x0a 0x10 uuid…): another distribution, for both.
    for (const [index, expected] of [
      [m.length - 1, 'bad-signature'],
      [m.length - 40, 'bad-signature'],
      [m.length - 70, 'bad-signature'],
      [5, 'no-state'],
    ] as const) {
      const flipped = m.slice();
      flipped[index]! ^= 0x01;
      await bob.expectBoth(flipped, expected);
    }
    await bob.expectBoth(m, 'ok:a');
  });

  it('every bit flip of a libsignal-made message is refused by both, and our state is unchanged', async () => {
    const dist = randomUuid();
    const alice = new LibsignalSender(lib, newStore, dist);
    const bob = new Receivers(lib, newStore, 'alice');
    await bob.processDistribution(await alice.distribution());
    const m = await alice.encrypt('flip me');
    const before = serializeSenderKeyRecord(bob.ours!);
    for (let bit = 0; bit < m.length * 8; bit++) {
      const flipped = m.slice();
      flipped[bit >> 3]! ^= 1 << (bit & 7);
      const verdict = await bob.deliver(flipped);
      expect(verdict.ours.startsWith('ok:'), `bit ${bit}: ours ${verdict.ours}`).toBe(false);
      expect(verdict.theirs.startsWith('ok:'), `bit ${bit}: theirs ${verdict.theirs}`).toBe(false);
    }
    expect(serializeSenderKeyRecord(bob.ours!)).toEqual(before);
    await bob.expectBoth(m, 'ok:flip me');
  });

  it('neither accepts the other format: Qalqon messages are refused by libsignal, and the reverse', async () => {
    const dist = randomUuid();
    const q = createSenderKeyDistributionMessage('qalqon', uuidToBytes(dist), undefined);
    expect(() => lib.SenderKeyDistributionMessage.deserialize(ab(q.message))).toThrow();
    const qMsg = groupEncrypt('qalqon', q.record, utf8('x')).message;
    expect(() => lib.SenderKeyMessage.deserialize(ab(qMsg))).toThrow(/unrecognized/);

    const alice = new LibsignalSender(lib, newStore, dist);
    const libSkdm = await alice.distribution();
    let caught: unknown;
    try {
      processSenderKeyDistributionMessage('qalqon', undefined, libSkdm);
    } catch (err) {
      caught = err;
    }
    expect(isProtocolError(caught, 'UNSUPPORTED_VERSION')).toBe(true);
    const libRecord = processSenderKeyDistributionMessage('libsignal', undefined, libSkdm);
    caught = undefined;
    try {
      groupDecrypt('qalqon', libRecord, await alice.encrypt('x'));
    } catch (err) {
      caught = err;
    }
    expect(isProtocolError(caught, 'UNSUPPORTED_VERSION')).toBe(true);
  });
});
