/**
 * Sender-key codecs: libsignal's encodings byte for byte (protocol.rs / wire.proto), Qalqon's
 * fixed layout (docs/protocol-formats.md), round trips, and strict parsing.
 */
import { x25519GenerateKeyPair, x25519PublicKey, xeddsaVerify } from '@qalqon/crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { serializeCurveKey } from './curve.js';
import { isProtocolError, type ProtocolErrorCode } from './errors.js';
import { encodeMessage } from './protobuf.js';
import {
  LIBSIGNAL_SENDER_KEY_VERSION,
  parseSenderKeyDistributionMessage,
  parseSenderKeyMessage,
  QALQON_SENDER_KEY_DISTRIBUTION_LEN,
  QALQON_SENDER_KEY_DISTRIBUTION_VERSION,
  QALQON_SENDER_KEY_HEADER_LEN,
  QALQON_SENDER_KEY_MESSAGE_MIN_LEN,
  QALQON_SENDER_KEY_MESSAGE_VERSION,
  qalqonSenderKeyHeader,
  type SenderKeyDistributionMessage,
  serializeSenderKeyDistributionMessage,
  serializeSenderKeyMessage,
  verifySenderKeyMessageSignature,
} from './sender-key-messages.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const DIST = Uint8Array.from(Buffer.from('d1e2f3a4000040008000000000000001', 'hex'));

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

function signingPair() {
  const kp = x25519GenerateKeyPair();
  const priv = kp.privateKey.slice();
  priv[0]! &= 248;
  priv[31]! = (priv[31]! & 127) | 64;
  return { privateKey: priv, publicKey: serializeCurveKey(x25519PublicKey(priv)) };
}

const signer = signingPair();

function skdm(format: 'libsignal' | 'qalqon', extra?: Partial<SenderKeyDistributionMessage>) {
  return {
    format,
    distributionId: DIST,
    chainId: 0x7fffffff,
    iteration: 300,
    chainKey: new Uint8Array(32).fill(0x11),
    signingPublicKey: signer.publicKey,
    ...extra,
  } as SenderKeyDistributionMessage;
}

describe('libsignal encodings (protocol.rs)', () => {
  it('distribution message: 0x33 ‖ protobuf{1 uuid, 2 chain id, 3 iteration, 4 chain key, 5 signing key}', () => {
    const bytes = serializeSenderKeyDistributionMessage(skdm('libsignal'));
    expect(hex(bytes)).toBe(
      [
        '33',
        `0a10${hex(DIST)}`,
        '10ffffffff07',
        '18ac02',
        `2220${'11'.repeat(32)}`,
        `2a21${hex(signer.publicKey)}`,
      ].join(''),
    );
    expect(parseSenderKeyDistributionMessage('libsignal', bytes)).toEqual(skdm('libsignal'));
  });

  it('message: 0x33 ‖ protobuf{1 uuid, 2 chain id, 3 iteration, 4 ciphertext} ‖ signature over the rest', () => {
    const fields = {
      format: 'libsignal' as const,
      distributionId: DIST,
      chainId: 0,
      iteration: 0,
      ciphertext: new Uint8Array(16),
    };
    const bytes = serializeSenderKeyMessage(fields, signer.privateKey);
    expect(hex(bytes.subarray(0, -64))).toBe(
      ['33', `0a10${hex(DIST)}`, '1000', '1800', `2210${'00'.repeat(16)}`].join(''),
    );
    expect(xeddsaVerify(signer.publicKey.subarray(1), bytes.subarray(0, -64), bytes.subarray(-64))).toBe(
      true,
    );
    const parsed = parseSenderKeyMessage('libsignal', bytes);
    expect(parsed).toMatchObject(fields);
    expect(verifySenderKeyMessageSignature(parsed, signer.publicKey)).toBe(true);
    expect(verifySenderKeyMessageSignature(parsed, signingPair().publicKey)).toBe(false);
  });

  it('parsing is strict: exact version byte, no unknown, repeated or missing fields, exact lengths', () => {
    const body = (fields: Parameters<typeof encodeMessage>[0]) =>
      Uint8Array.of(0x33, ...encodeMessage(fields));
    const good: Parameters<typeof encodeMessage>[0] = [
      [1, DIST],
      [2, 1],
      [3, 2],
      [4, new Uint8Array(32)],
      [5, signer.publicKey],
    ];
    expect(parseSenderKeyDistributionMessage('libsignal', body(good)).chainId).toBe(1);
    const withVersion = (v: number) => Uint8Array.of(v, ...body(good).subarray(1));
    for (const v of [0x23, 0x34, 0x3f, 0x43, 0x44, 0xa2, 0x00]) {
      expectCode(() => parseSenderKeyDistributionMessage('libsignal', withVersion(v)), 'UNSUPPORTED_VERSION');
    }
    expectCode(
      () => parseSenderKeyDistributionMessage('libsignal', body([...good, [6, 1]])),
      'INVALID_MESSAGE',
    );
    expectCode(
      () => parseSenderKeyDistributionMessage('libsignal', body([...good, [2, 1]])),
      'INVALID_MESSAGE',
    );
    for (let drop = 0; drop < good.length; drop++) {
      expectCode(
        () => parseSenderKeyDistributionMessage('libsignal', body(good.filter((_, i) => i !== drop))),
        'INVALID_MESSAGE',
      );
    }
    const replace = (i: number, v: number | Uint8Array) =>
      body(good.map((f, j) => (j === i ? [f[0], v] : f)));
    expectCode(
      () => parseSenderKeyDistributionMessage('libsignal', replace(0, new Uint8Array(15))),
      'INVALID_MESSAGE',
    );
    expectCode(
      () => parseSenderKeyDistributionMessage('libsignal', replace(3, new Uint8Array(31))),
      'INVALID_MESSAGE',
    );
    expectCode(
      () => parseSenderKeyDistributionMessage('libsignal', replace(4, new Uint8Array(33))),
      'INVALID_KEY',
    );
    expectCode(() => parseSenderKeyDistributionMessage('libsignal', replace(1, 2 ** 32)), 'INVALID_MESSAGE');
    expectCode(() => parseSenderKeyMessage('libsignal', new Uint8Array(64)), 'INVALID_MESSAGE');
    expectCode(
      () => parseSenderKeyMessage('libsignal', Uint8Array.of(0x33, ...new Uint8Array(64))),
      'INVALID_MESSAGE',
    );
  });
});

describe('Qalqon layout (docs/protocol-formats.md)', () => {
  it('distribution message: 0xA2 ‖ uuid ‖ chain id ‖ iteration ‖ chain key ‖ signing key ‖ signature', () => {
    const bytes = serializeSenderKeyDistributionMessage(skdm('qalqon'), signer.privateKey);
    expect(bytes.length).toBe(QALQON_SENDER_KEY_DISTRIBUTION_LEN);
    expect(bytes.length).toBe(154);
    expect(hex(bytes.subarray(0, 90))).toBe(
      `a2${hex(DIST)}7fffffff0000012c${'11'.repeat(32)}${hex(signer.publicKey)}`,
    );
    expect(xeddsaVerify(signer.publicKey.subarray(1), bytes.subarray(0, 90), bytes.subarray(90))).toBe(true);
    expect(parseSenderKeyDistributionMessage('qalqon', bytes)).toEqual(skdm('qalqon'));
  });

  it('message: the 25-byte header ‖ GCM ciphertext and tag ‖ signature', () => {
    const ciphertext = new Uint8Array(20).fill(0xcc);
    const fields = {
      format: 'qalqon' as const,
      distributionId: DIST,
      chainId: 5,
      iteration: 0x01020304,
      ciphertext,
    };
    const bytes = serializeSenderKeyMessage(fields, signer.privateKey);
    const header = qalqonSenderKeyHeader(QALQON_SENDER_KEY_MESSAGE_VERSION, DIST, 5, 0x01020304);
    expect(hex(header)).toBe(`a1${hex(DIST)}0000000501020304`);
    expect(header.length).toBe(QALQON_SENDER_KEY_HEADER_LEN);
    expect(hex(bytes.subarray(0, -64))).toBe(hex(header) + 'cc'.repeat(20));
    const parsed = parseSenderKeyMessage('qalqon', bytes);
    expect(parsed).toMatchObject(fields);
    expect(verifySenderKeyMessageSignature(parsed, signer.publicKey)).toBe(true);
  });

  it('refuses short messages, other version bytes, and a distribution message whose signature fails', () => {
    const min = new Uint8Array(QALQON_SENDER_KEY_MESSAGE_MIN_LEN);
    min[0] = QALQON_SENDER_KEY_MESSAGE_VERSION;
    expect(parseSenderKeyMessage('qalqon', min).ciphertext.length).toBe(16);
    expectCode(() => parseSenderKeyMessage('qalqon', min.subarray(0, -1)), 'INVALID_MESSAGE');
    expectCode(() => parseSenderKeyMessage('qalqon', new Uint8Array(0)), 'INVALID_MESSAGE');
    for (const v of [LIBSIGNAL_SENDER_KEY_VERSION, QALQON_SENDER_KEY_DISTRIBUTION_VERSION, 0xa0, 0xa3]) {
      const m = min.slice();
      m[0] = v;
      expectCode(() => parseSenderKeyMessage('qalqon', m), 'UNSUPPORTED_VERSION');
    }
    const d = serializeSenderKeyDistributionMessage(skdm('qalqon'), signer.privateKey);
    expectCode(() => parseSenderKeyDistributionMessage('qalqon', d.subarray(0, -1)), 'INVALID_MESSAGE');
    const wrongKey = d.slice();
    wrongKey.set(signingPair().publicKey, 57);
    expectCode(() => parseSenderKeyDistributionMessage('qalqon', wrongKey), 'INVALID_SIGNATURE');
    const badType = d.slice();
    badType[57] = 0x06;
    expectCode(() => parseSenderKeyDistributionMessage('qalqon', badType), 'INVALID_KEY');
  });

  it('refuses to sign a distribution message with a private key that is not the announced one', () => {
    expectCode(
      () => serializeSenderKeyDistributionMessage(skdm('qalqon'), signingPair().privateKey),
      'INVALID_ARGUMENT',
    );
    expectCode(() => serializeSenderKeyDistributionMessage(skdm('qalqon')), 'INVALID_ARGUMENT');
    expectCode(
      () => serializeSenderKeyDistributionMessage(skdm('libsignal'), signer.privateKey),
      'INVALID_ARGUMENT',
    );
  });
});

describe('round trips (fast-check)', () => {
  const fieldsArb = fc.record({
    distributionId: fc.uint8Array({ minLength: 16, maxLength: 16 }),
    chainId: fc.nat(0xffffffff),
    iteration: fc.nat(0xffffffff),
    chainKey: fc.uint8Array({ minLength: 32, maxLength: 32 }),
    ciphertext: fc.uint8Array({ minLength: 16, maxLength: 300 }),
  });

  for (const format of ['libsignal', 'qalqon'] as const) {
    it(`${format}: parse(serialize(x)) = x for messages and distribution messages`, () => {
      fc.assert(
        fc.property(fieldsArb, (f) => {
          const m = {
            format,
            distributionId: f.distributionId,
            chainId: f.chainId,
            iteration: f.iteration,
            ciphertext: f.ciphertext,
          };
          expect(
            parseSenderKeyMessage(format, serializeSenderKeyMessage(m, signer.privateKey)),
          ).toMatchObject(m);
          const d = skdm(format, {
            distributionId: f.distributionId,
            chainId: f.chainId,
            iteration: f.iteration,
            chainKey: f.chainKey,
          });
          const bytes = serializeSenderKeyDistributionMessage(
            d,
            format === 'qalqon' ? signer.privateKey : undefined,
          );
          expect(parseSenderKeyDistributionMessage(format, bytes)).toEqual(d);
        }),
        { numRuns: 60 },
      );
    });
  }
});

describe('argument checks', () => {
  it('every exported function refuses wrongly typed input with INVALID_ARGUMENT', () => {
    const m = {
      format: 'qalqon' as const,
      distributionId: DIST,
      chainId: 1,
      iteration: 1,
      ciphertext: new Uint8Array(16),
    };
    const calls: (() => unknown)[] = [
      () => parseSenderKeyMessage('signal' as never, new Uint8Array(100)),
      () => parseSenderKeyMessage('qalqon', 'bytes' as never),
      () => parseSenderKeyDistributionMessage('libsignal', [0x33] as never),
      () => serializeSenderKeyMessage(null as never, signer.privateKey),
      () => serializeSenderKeyMessage({ ...m, chainId: -1 }, signer.privateKey),
      () => serializeSenderKeyMessage({ ...m, iteration: 2 ** 32 }, signer.privateKey),
      () => serializeSenderKeyMessage({ ...m, distributionId: new Uint8Array(15) }, signer.privateKey),
      () => serializeSenderKeyMessage({ ...m, ciphertext: new Uint8Array(15) }, signer.privateKey),
      () => serializeSenderKeyMessage(m, new Uint8Array(33)),
      () => serializeSenderKeyMessage(m, signer.privateKey, new Uint8Array(63)),
      () => serializeSenderKeyDistributionMessage({ ...skdm('libsignal'), chainKey: new Uint8Array(31) }),
      () => serializeSenderKeyDistributionMessage(undefined as never),
      () => verifySenderKeyMessageSignature(null as never, signer.publicKey),
      () => qalqonSenderKeyHeader(0x33, DIST, 1, 1),
      () => qalqonSenderKeyHeader(QALQON_SENDER_KEY_MESSAGE_VERSION, DIST, 1.5, 1),
    ];
    calls.forEach((call, i) => {
      let caught: unknown;
      try {
        call();
      } catch (err) {
        caught = err;
      }
      expect(isProtocolError(caught, 'INVALID_ARGUMENT'), `call ${i}: ${String(caught)}`).toBe(true);
    });
  });
});
