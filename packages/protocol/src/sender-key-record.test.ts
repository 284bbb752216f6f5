/**
 * Sender-key records: libsignal's state bookkeeping (the cases of sender_keys.rs's
 * sender_key_record_add_sender_key_state_tests and sender_chain_key_iteration_tests), and
 * Qalqon's versioned, checksummed serialisation: it round-trips, and any corruption is
 * INVALID_STATE (UNSUPPORTED_VERSION for the version byte).
 */
import { createHash, createHmac } from 'node:crypto';
import { x25519GenerateKeyPair, x25519PublicKey } from '@qalqon/crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { serializeCurveKey } from './curve.js';
import { isProtocolError, type ProtocolErrorCode } from './errors.js';
import {
  addSenderKeyState,
  deserializeSenderKeyRecord,
  emptySenderKeyRecord,
  ensureValidSenderKeyRecord,
  MAX_SENDER_KEY_STATES,
  nextSenderChainKey,
  replaceSenderKeyState,
  SENDER_KEY_MAX_MESSAGE_KEYS,
  SENDER_KEY_RECORD_VERSION,
  type SenderKeyRecord,
  type SenderKeyState,
  senderKeyStateForChainId,
  senderMessageSeed,
  serializeSenderKeyRecord,
} from './sender-key-record.js';

const DIST = new Uint8Array(16).map((_, i) => i + 1);

function expectCode(fn: () => unknown, code: ProtocolErrorCode): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected ProtocolError ${code}`).toBeDefined();
  expect(isProtocolError(caught, code), `expected ${code}, got ${String(caught)}`).toBe(true);
}

function chainKey(i: number): Uint8Array {
  return new Uint8Array(32).fill(i);
}

function randomSigningKey(): Uint8Array {
  return serializeCurveKey(x25519GenerateKeyPair().publicKey);
}

function state(
  chainId: number,
  signingPublicKey: Uint8Array,
  key: Uint8Array,
  extra?: Partial<SenderKeyState>,
) {
  return {
    format: 'libsignal',
    chainId,
    iteration: 1,
    chainKey: key,
    signingPublicKey,
    signingPrivateKey: undefined,
    skippedMessageSeeds: [],
    ...extra,
  } as SenderKeyState;
}

describe('sender chain (libsignal sender_keys.rs)', () => {
  it('seed = HMAC-SHA256(ck, 0x01), next = HMAC-SHA256(ck, 0x02)', () => {
    const ck = chainKey(7);
    expect(Buffer.from(senderMessageSeed(ck))).toEqual(
      createHmac('sha256', ck).update(Buffer.of(1)).digest(),
    );
    expect(Buffer.from(nextSenderChainKey(ck))).toEqual(
      createHmac('sha256', ck).update(Buffer.of(2)).digest(),
    );
  });

  it('iteration: successive chain keys never repeat', () => {
    const seen = new Set<string>();
    let ck = chainKey(1);
    for (let i = 0; i < 1000; i++) {
      const h = Buffer.from(ck).toString('hex');
      expect(seen.has(h)).toBe(false);
      seen.add(h);
      ck = nextSenderChainKey(ck);
    }
  });

  it('checks its argument', () => {
    expectCode(() => senderMessageSeed(new Uint8Array(31)), 'INVALID_ARGUMENT');
    expectCode(() => nextSenderChainKey('key' as never), 'INVALID_ARGUMENT');
  });
});

describe('addSenderKeyState (libsignal sender_key_record_add_sender_key_state_tests)', () => {
  const order = (r: SenderKeyRecord) => r.states.map((s) => s.chainId);

  it('add_single_state / add_second_state', () => {
    const k1 = randomSigningKey();
    const k2 = randomSigningKey();
    let r = addSenderKeyState(emptySenderKeyRecord(DIST), state(1, k1, chainKey(1)));
    expect(r.states).toHaveLength(1);
    r = addSenderKeyState(r, state(2, k2, chainKey(2)));
    expect(order(r)).toEqual([2, 1]);
    expect(senderKeyStateForChainId(r, 1)!.chainKey).toEqual(chainKey(1));
    expect(senderKeyStateForChainId(r, 2)!.chainKey).toEqual(chainKey(2));
    expect(senderKeyStateForChainId(r, 3)).toBeUndefined();
  });

  it(`when_exceed_maximum_states_then_oldest_is_ejected (${MAX_SENDER_KEY_STATES})`, () => {
    let r = emptySenderKeyRecord(DIST);
    for (let i = 1; i <= 5; i++) r = addSenderKeyState(r, state(i, randomSigningKey(), chainKey(i)));
    expect(order(r)).toEqual([5, 4, 3, 2, 1]);
    r = addSenderKeyState(r, state(6, randomSigningKey(), chainKey(6)));
    expect(order(r)).toEqual([6, 5, 4, 3, 2]);
  });

  it('when_second_state_with_same_public_key_and_chain_id_added_then_it_keeps_first_data', () => {
    const k = randomSigningKey();
    let r = addSenderKeyState(emptySenderKeyRecord(DIST), state(1, k, chainKey(1)));
    r = addSenderKeyState(r, state(1, k, chainKey(2)));
    expect(r.states).toHaveLength(1);
    expect(r.states[0]!.chainKey).toEqual(chainKey(1));
  });

  it('when_second_state_with_different_public_key_but_same_chain_id_added_then_it_gets_replaced', () => {
    const k2 = randomSigningKey();
    let r = addSenderKeyState(emptySenderKeyRecord(DIST), state(1, randomSigningKey(), chainKey(1)));
    r = addSenderKeyState(r, state(1, k2, chainKey(2)));
    expect(r.states).toHaveLength(1);
    expect(r.states[0]!.chainKey).toEqual(chainKey(2));
    expect(r.states[0]!.signingPublicKey).toEqual(k2);
  });

  it('when_second_state_with_same_public_key_and_chain_id_added_then_it_becomes_the_most_recent', () => {
    const k1 = randomSigningKey();
    let r = addSenderKeyState(emptySenderKeyRecord(DIST), state(1, k1, chainKey(1)));
    r = addSenderKeyState(r, state(2, randomSigningKey(), chainKey(2)));
    expect(order(r)).toEqual([2, 1]);
    r = addSenderKeyState(r, state(1, k1, chainKey(3)));
    expect(order(r)).toEqual([1, 2]);
    expect(r.states[0]!.chainKey).toEqual(chainKey(1));
  });

  it('never modifies the record it is given', () => {
    const r = addSenderKeyState(emptySenderKeyRecord(DIST), state(1, randomSigningKey(), chainKey(1)));
    const bytes = serializeSenderKeyRecord(r);
    addSenderKeyState(r, state(2, randomSigningKey(), chainKey(2)));
    replaceSenderKeyState(r, { ...r.states[0]!, iteration: 9 });
    expect(serializeSenderKeyRecord(r)).toEqual(bytes);
  });

  it('replaceSenderKeyState keeps the position and refuses an unknown chain id', () => {
    let r = emptySenderKeyRecord(DIST);
    for (let i = 1; i <= 3; i++) r = addSenderKeyState(r, state(i, randomSigningKey(), chainKey(i)));
    const replaced = replaceSenderKeyState(r, { ...r.states[1]!, iteration: 42 });
    expect(order(replaced)).toEqual([3, 2, 1]);
    expect(replaced.states[1]!.iteration).toBe(42);
    expectCode(() => replaceSenderKeyState(r, state(9, randomSigningKey(), chainKey(9))), 'INVALID_ARGUMENT');
  });
});

/** An arbitrary valid record: own states (with a private key) and received ones, skipped seeds. */
const recordArbitrary = fc
  .tuple(
    fc.uint8Array({ minLength: 16, maxLength: 16 }),
    fc.uniqueArray(fc.nat(0xffffffff), { minLength: 0, maxLength: MAX_SENDER_KEY_STATES }),
  )
  .chain(([distributionId, chainIds]) =>
    fc
      .tuple(
        ...chainIds.map((chainId) =>
          fc
            .record({
              format: fc.constantFrom('libsignal' as const, 'qalqon' as const),
              iteration: fc.integer({ min: 0, max: 0xffffffff }),
              chainKey: fc.uint8Array({ minLength: 32, maxLength: 32 }),
              own: fc.boolean(),
              privateSeed: fc.uint8Array({ minLength: 32, maxLength: 32 }),
              skipped: fc.uniqueArray(fc.nat(0xffffffff), { maxLength: 20 }),
              seed: fc.uint8Array({ minLength: 32, maxLength: 32 }),
            })
            .map((s): SenderKeyState => {
              const priv = s.privateSeed.slice();
              priv[0]! &= 248;
              priv[31]! = (priv[31]! & 127) | 64;
              return {
                format: s.format,
                chainId,
                iteration: s.iteration,
                chainKey: s.chainKey,
                signingPublicKey: serializeCurveKey(
                  s.own ? x25519PublicKey(priv) : s.seed.map((b, i) => b ^ s.privateSeed[i]!),
                ),
                signingPrivateKey: s.own ? priv : undefined,
                skippedMessageSeeds: s.skipped
                  .filter((i) => i < s.iteration)
                  .sort((a, b) => a - b)
                  .map((iteration) => ({ iteration, seed: s.seed })),
              };
            }),
        ),
      )
      .map((states): SenderKeyRecord => ({ distributionId, states })),
  );

describe('record serialisation', () => {
  it('round-trips any valid record (fast-check)', () => {
    fc.assert(
      fc.property(recordArbitrary, (record) => {
        const bytes = serializeSenderKeyRecord(record);
        expect(bytes[0]).toBe(SENDER_KEY_RECORD_VERSION);
        const back = deserializeSenderKeyRecord(bytes);
        expect(back).toEqual(record);
        expect(serializeSenderKeyRecord(back)).toEqual(bytes);
      }),
      { numRuns: 100 },
    );
  });

  it('round-trips a full state (2,000 skipped seeds)', () => {
    const skippedMessageSeeds = Array.from({ length: SENDER_KEY_MAX_MESSAGE_KEYS }, (_, i) => ({
      iteration: i,
      seed: chainKey(i & 0xff),
    }));
    const r = addSenderKeyState(
      emptySenderKeyRecord(DIST),
      state(1, randomSigningKey(), chainKey(1), { iteration: 5000, skippedMessageSeeds }),
    );
    expect(deserializeSenderKeyRecord(serializeSenderKeyRecord(r))).toEqual(r);
  });

  it('refuses every bit flip, truncation and extension: INVALID_STATE (UNSUPPORTED_VERSION for byte 0)', () => {
    fc.assert(
      fc.property(
        recordArbitrary,
        fc.nat(),
        fc.uint8Array({ minLength: 1, maxLength: 40 }),
        (record, n, extra) => {
          const bytes = serializeSenderKeyRecord(record);
          const bit = n % (bytes.length * 8);
          const flipped = bytes.slice();
          flipped[bit >> 3]! ^= 1 << (bit & 7);
          expectCode(
            () => deserializeSenderKeyRecord(flipped),
            bit < 8 ? 'UNSUPPORTED_VERSION' : 'INVALID_STATE',
          );
          expectCode(() => deserializeSenderKeyRecord(bytes.subarray(0, n % bytes.length)), 'INVALID_STATE');
          expectCode(() => deserializeSenderKeyRecord(Uint8Array.of(...bytes, ...extra)), 'INVALID_STATE');
        },
      ),
      { numRuns: 200 },
    );
  });

  it('refuses structurally invalid contents even with a valid checksum', () => {
    // Records built around the validation in serializeSenderKeyRecord, checksummed correctly,
    // to show that deserialisation checks the structure and not only the checksum.
    const own = x25519GenerateKeyPair();
    const priv = own.privateKey.slice();
    priv[0]! &= 248;
    priv[31]! = (priv[31]! & 127) | 64;
    const base = state(1, serializeCurveKey(x25519PublicKey(priv)), chainKey(1), {
      iteration: 10,
      signingPrivateKey: priv,
      skippedMessageSeeds: [{ iteration: 3, seed: chainKey(3) }],
    });
    const good = serializeSenderKeyRecord({ distributionId: DIST, states: [base] });
    const rechecksum = (body: Uint8Array) => {
      const out = new Uint8Array(body.length + 16);
      out.set(body);
      out.set(createHash('sha256').update(body).digest().subarray(0, 16), body.length);
      return out;
    };
    const body = good.subarray(0, good.length - 16);
    const at = {
      count: 17,
      format: 18,
      publicKeyType: 18 + 1 + 8 + 32,
      privateFlag: 18 + 1 + 8 + 32 + 33,
      privateFirst: 18 + 1 + 8 + 32 + 33 + 1,
      skippedIteration: 18 + 1 + 8 + 32 + 33 + 1 + 32 + 2,
    };
    const cases: [string, (b: Uint8Array) => void, RegExp][] = [
      ['6 states', (b) => (b[at.count] = 6), /too many states/],
      ['unknown format', (b) => (b[at.format] = 0x44), /unknown format tag/],
      ['key type', (b) => (b[at.publicKeyType] = 0x06), /malformed signing key/],
      ['private flag 2', (b) => (b[at.privateFlag] = 2), /private-key flag/],
      ['unclamped private key', (b) => (b[at.privateFirst]! |= 1), /unclamped/],
      ['private key of another public key', (b) => (b[at.privateFirst]! ^= 8), /do not match/],
      ['skipped iteration not below the chain', (b) => (b[at.skippedIteration + 3] = 10), /out of order/],
    ];
    expect(deserializeSenderKeyRecord(rechecksum(body.slice()))).toBeDefined();
    for (const [label, corrupt, reason] of cases) {
      const b = body.slice();
      corrupt(b);
      let caught: unknown;
      try {
        deserializeSenderKeyRecord(rechecksum(b));
      } catch (err) {
        caught = err;
      }
      expect(isProtocolError(caught, 'INVALID_STATE'), label).toBe(true);
      expect((caught as Error).message, label).toMatch(reason);
    }
  });

  it('checks its arguments', () => {
    expectCode(() => deserializeSenderKeyRecord('record' as never), 'INVALID_ARGUMENT');
    expectCode(() => serializeSenderKeyRecord({ distributionId: DIST } as never), 'INVALID_ARGUMENT');
    expectCode(() => emptySenderKeyRecord(new Uint8Array(17)), 'INVALID_ARGUMENT');
    expectCode(() => ensureValidSenderKeyRecord(undefined), 'INVALID_ARGUMENT');
    expectCode(() => senderKeyStateForChainId(emptySenderKeyRecord(DIST), -1), 'INVALID_ARGUMENT');
    expectCode(
      () => addSenderKeyState(emptySenderKeyRecord(DIST), { chainId: 1 } as never),
      'INVALID_ARGUMENT',
    );
  });
});
