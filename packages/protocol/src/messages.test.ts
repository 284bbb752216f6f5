import { describe, expect, it } from 'vitest';
import { isProtocolError } from './errors.js';
import { generateCurveKeyPair, generateIdentityKeyPair } from './keys.js';
import {
  CiphertextMessageType,
  decodePreKeySignalMessage,
  decodeSignalMessage,
  encodePreKeySignalMessage,
  encodeSignalMessage,
  MESSAGE_VERSION_BYTE,
  verifyMac,
} from './messages.js';
import { encodeMessage } from './protobuf.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return isProtocolError(e) ? e.code : 'not a ProtocolError';
  }
  return undefined;
}

describe('SignalMessage / PreKeySignalMessage codecs', () => {
  const sender = generateIdentityKeyPair().publicKey;
  const receiver = generateIdentityKeyPair().publicKey;
  const macKey = new Uint8Array(32).fill(3);
  const ratchetKey = generateCurveKeyPair().publicKey;
  const signal = encodeSignalMessage(
    { ratchetKey, counter: 300, previousCounter: 7, ciphertext: new Uint8Array(32).fill(1) },
    macKey,
    sender,
    receiver,
  );

  it('writes version 0x44, fields 1-4 in order, no field 5, then an 8-byte MAC over the rest', () => {
    expect(MESSAGE_VERSION_BYTE).toBe(0x44);
    expect(CiphertextMessageType).toEqual({ Whisper: 2, PreKey: 3 });
    const proto = encodeMessage([
      [1, ratchetKey],
      [2, 300],
      [3, 7],
      [4, new Uint8Array(32).fill(1)],
    ]);
    expect(signal.serialized.subarray(1, 1 + proto.length)).toEqual(proto);
    expect(signal.serialized[0]).toBe(0x44);
    expect(signal.serialized.length).toBe(1 + proto.length + 8);
  });

  it('round-trips and verifies its MAC only with the right key and identity order', () => {
    const d = decodeSignalMessage(signal.serialized);
    expect(d.counter).toBe(300);
    expect(d.previousCounter).toBe(7);
    expect(d.ratchetKey).toEqual(ratchetKey);
    expect(d.pqRatchet.length).toBe(0);
    expect(verifyMac(d, macKey, sender, receiver)).toBe(true);
    expect(verifyMac(d, macKey, receiver, sender)).toBe(false);
    expect(verifyMac(d, new Uint8Array(32), sender, receiver)).toBe(false);
  });

  it('keeps field 5 (SPQR) when present', () => {
    const m = encodeSignalMessage(
      {
        ratchetKey,
        counter: 0,
        previousCounter: 0,
        ciphertext: new Uint8Array(16),
        pqRatchet: Uint8Array.of(1, 1, 0, 0),
      },
      macKey,
      sender,
      receiver,
    );
    expect(decodeSignalMessage(m.serialized).pqRatchet).toEqual(Uint8Array.of(1, 1, 0, 0));
  });

  it('rejects other versions, short input, bad keys, impossible ciphertexts and unknown fields', () => {
    const s = signal.serialized;
    expect(code(() => decodeSignalMessage(Uint8Array.of(0x34, ...s.subarray(1))))).toBe(
      'UNSUPPORTED_VERSION',
    );
    expect(code(() => decodeSignalMessage(Uint8Array.of(0x54, ...s.subarray(1))))).toBe(
      'UNSUPPORTED_VERSION',
    );
    expect(code(() => decodeSignalMessage(Uint8Array.of(0x45, ...s.subarray(1))))).toBe('INVALID_MESSAGE');
    expect(code(() => decodeSignalMessage(new Uint8Array(0)))).toBe('INVALID_MESSAGE');
    expect(code(() => decodeSignalMessage(s.subarray(0, 8)))).toBe('INVALID_MESSAGE');
    const build = (fields: Parameters<typeof encodeMessage>[0]) =>
      Uint8Array.of(0x44, ...encodeMessage(fields), ...new Uint8Array(8));
    const ct = new Uint8Array(16);
    expect(
      code(() =>
        decodeSignalMessage(
          build([
            [1, ratchetKey.subarray(1)],
            [2, 0],
            [4, ct],
          ]),
        ),
      ),
    ).toBe('INVALID_KEY');
    expect(
      code(() =>
        decodeSignalMessage(
          build([
            [1, ratchetKey],
            [2, 0],
            [4, new Uint8Array(15)],
          ]),
        ),
      ),
    ).toBe('INVALID_MESSAGE');
    expect(
      code(() =>
        decodeSignalMessage(
          build([
            [1, ratchetKey],
            [4, ct],
          ]),
        ),
      ),
    ).toBe('INVALID_MESSAGE');
    expect(
      code(() =>
        decodeSignalMessage(
          build([
            [1, ratchetKey],
            [2, 0],
            [4, ct],
            [6, ct],
          ]),
        ),
      ),
    ).toBe('INVALID_MESSAGE');
    // previous_counter may be absent (libsignal defaults it to 0).
    expect(
      decodeSignalMessage(
        build([
          [1, ratchetKey],
          [2, 0],
          [4, ct],
        ]),
      ).previousCounter,
    ).toBe(0);
  });

  it('PreKeySignalMessage round-trips with and without a one-time prekey id', () => {
    for (const preKeyId of [undefined, 0, 2 ** 32 - 1]) {
      const m = encodePreKeySignalMessage({
        registrationId: 12345,
        preKeyId,
        signedPreKeyId: 6,
        kyberPreKeyId: 7,
        kyberCiphertext: Uint8Array.of(8, ...new Uint8Array(1568).fill(2)),
        baseKey: generateCurveKeyPair().publicKey,
        identityKey: sender,
        message: signal,
      });
      const d = decodePreKeySignalMessage(m.serialized);
      expect(d.preKeyId).toBe(preKeyId);
      expect(d.registrationId).toBe(12345);
      expect(d.signedPreKeyId).toBe(6);
      expect(d.kyberPreKeyId).toBe(7);
      expect(d.kyberCiphertext).toEqual(m.kyberCiphertext);
      expect(d.message.serialized).toEqual(signal.serialized);
    }
  });

  it('PreKeySignalMessage requires the Kyber payload, a 0x08 ciphertext and the signed prekey id', () => {
    const base = generateCurveKeyPair().publicKey;
    const kct = Uint8Array.of(8, ...new Uint8Array(1568));
    const full: [number, number | Uint8Array][] = [
      [2, base],
      [3, sender],
      [4, signal.serialized],
      [5, 1],
      [6, 2],
      [7, 3],
      [8, kct],
    ];
    const build = (skip: number, replace?: [number, number | Uint8Array]) =>
      Uint8Array.of(
        0x44,
        ...encodeMessage(
          full.filter(([f]) => f !== skip).map(([f, v]) => (replace && replace[0] === f ? replace : [f, v])),
        ),
      );
    expect(decodePreKeySignalMessage(build(0)).registrationId).toBe(1);
    for (const f of [2, 3, 4, 6, 7, 8])
      expect(code(() => decodePreKeySignalMessage(build(f)))).toBe('INVALID_MESSAGE');
    expect(
      code(() => decodePreKeySignalMessage(build(0, [8, Uint8Array.of(0x0a, ...kct.subarray(1))]))),
    ).toBe('INVALID_MESSAGE');
    expect(code(() => decodePreKeySignalMessage(build(0, [2, base.subarray(1)])))).toBe('INVALID_KEY');
  });
});
