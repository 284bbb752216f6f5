import { xeddsaVerify } from '@qalqon/crypto';
import { describe, expect, it } from 'vitest';
import { isProtocolError } from './errors.js';
import {
  deserializeIdentityKeyPair,
  deserializeKyberPreKeyRecord,
  deserializePreKeyRecord,
  deserializeSignedPreKeyRecord,
  generateCurveKeyPair,
  generateIdentityKeyPair,
  generateKyberPreKey,
  generatePreKey,
  generatePreKeys,
  generateSignedPreKey,
  parseKyberPublicKey,
  serializeIdentityKeyPair,
  serializeKyberPreKeyRecord,
  serializePreKeyRecord,
  serializeSignedPreKeyRecord,
  verifyPreKeySignature,
} from './keys.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return isProtocolError(e) ? e.code : 'not a ProtocolError';
  }
  return undefined;
}

describe('keys', () => {
  const identity = generateIdentityKeyPair();

  it('key pairs are 0x05-typed 33-byte public keys and 32-byte private keys; rng makes them deterministic', () => {
    expect(identity.publicKey.length).toBe(33);
    expect(identity.publicKey[0]).toBe(5);
    expect(identity.privateKey.length).toBe(32);
    const rng = (n: number) => new Uint8Array(n).fill(9);
    expect(generateCurveKeyPair(rng).publicKey).toEqual(generateCurveKeyPair(rng).publicKey);
  });

  it('signs the signed prekey over its 33-byte serialised form', () => {
    const spk = generateSignedPreKey(identity, 5, { timestamp: 1234 });
    expect(xeddsaVerify(identity.publicKey.subarray(1), spk.keyPair.publicKey, spk.signature)).toBe(true);
    expect(verifyPreKeySignature(identity.publicKey, spk.keyPair.publicKey, spk.signature)).toBe(true);
    expect(
      verifyPreKeySignature(generateIdentityKeyPair().publicKey, spk.keyPair.publicKey, spk.signature),
    ).toBe(false);
  });

  it('signs the Kyber prekey over 0x08 ‖ 1568 bytes', () => {
    const kpk = generateKyberPreKey(identity, 6);
    expect(kpk.publicKey.length).toBe(1569);
    expect(kpk.publicKey[0]).toBe(8);
    expect(verifyPreKeySignature(identity.publicKey, kpk.publicKey, kpk.signature)).toBe(true);
    expect(verifyPreKeySignature(identity.publicKey, kpk.publicKey.subarray(1), kpk.signature)).toBe(false);
  });

  it('rejects Kyber keys of another type (0x0A ML-KEM) or length with INVALID_KEY', () => {
    const kpk = generateKyberPreKey(identity, 1);
    const mlkem = kpk.publicKey.slice();
    mlkem[0] = 0x0a;
    expect(code(() => parseKyberPublicKey(mlkem))).toBe('INVALID_KEY');
    expect(code(() => parseKyberPublicKey(kpk.publicKey.subarray(0, 1568)))).toBe('INVALID_KEY');
  });

  it('records round-trip', () => {
    expect(deserializeIdentityKeyPair(serializeIdentityKeyPair(identity))).toEqual(identity);
    const pk = generatePreKey(2 ** 32 - 1);
    expect(deserializePreKeyRecord(serializePreKeyRecord(pk))).toEqual(pk);
    const spk = generateSignedPreKey(identity, 7, { timestamp: 2 ** 40 + 3 });
    expect(deserializeSignedPreKeyRecord(serializeSignedPreKeyRecord(spk))).toEqual(spk);
    const kpk = generateKyberPreKey(identity, 8);
    expect(deserializeKyberPreKeyRecord(serializeKyberPreKeyRecord(kpk))).toEqual(kpk);
  });

  it('corrupt records are INVALID_STATE', () => {
    const bytes = serializeSignedPreKeyRecord(generateSignedPreKey(identity, 1));
    expect(code(() => deserializeSignedPreKeyRecord(bytes.subarray(0, bytes.length - 1)))).toBe(
      'INVALID_STATE',
    );
    expect(code(() => deserializeSignedPreKeyRecord(Uint8Array.of(...bytes, 0)))).toBe('INVALID_STATE');
    expect(code(() => deserializePreKeyRecord(bytes))).toBe('INVALID_STATE');
    const badType = bytes.slice();
    badType[14] = 0x06;
    expect(code(() => deserializeSignedPreKeyRecord(badType))).toBe('INVALID_STATE');
  });

  it('checks arguments', () => {
    expect(code(() => generatePreKey(-1))).toBe('INVALID_ARGUMENT');
    expect(code(() => generatePreKey(2 ** 32))).toBe('INVALID_ARGUMENT');
    expect(code(() => generatePreKeys(2 ** 32 - 1, 2))).toBe('INVALID_ARGUMENT');
    expect(generatePreKeys(10, 3).map((k) => k.id)).toEqual([10, 11, 12]);
    expect(
      code(() => generateSignedPreKey({ ...identity, publicKey: identity.publicKey.subarray(1) }, 1)),
    ).toBe('INVALID_ARGUMENT');
  });
});
