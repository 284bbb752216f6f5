import { describe, expect, it } from 'vitest';
import { isProtocolError } from './errors.js';
import { generateCurveKeyPair, generateIdentityKeyPair, generateKyberPreKey } from './keys.js';
import { isCanonicalCurveKey, pqxdhInitiate, pqxdhRespond } from './pqxdh.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return isProtocolError(e) ? e.code : 'not a ProtocolError';
  }
  return undefined;
}

describe('PQXDH', () => {
  const alice = generateIdentityKeyPair();
  const bob = generateIdentityKeyPair();
  const spk = generateCurveKeyPair();
  const opk = generateCurveKeyPair();
  const kyber = generateKyberPreKey(bob, 1);

  for (const withOneTime of [true, false]) {
    it(`initiator and responder derive the same 96 bytes (${withOneTime ? 'with' : 'without'} a one-time prekey)`, () => {
      const base = generateCurveKeyPair();
      const a = pqxdhInitiate({
        identityPrivateKey: alice.privateKey,
        basePrivateKey: base.privateKey,
        theirIdentityKey: bob.publicKey,
        theirSignedPreKey: spk.publicKey,
        theirOneTimePreKey: withOneTime ? opk.publicKey : undefined,
        theirKyberPreKey: kyber.publicKey,
      });
      expect(a.kyberCiphertext.length).toBe(1569);
      expect(a.kyberCiphertext[0]).toBe(8);
      const b = pqxdhRespond({
        identityPrivateKey: bob.privateKey,
        signedPreKeyPrivateKey: spk.privateKey,
        oneTimePreKeyPrivateKey: withOneTime ? opk.privateKey : undefined,
        kyberSecretKey: kyber.secretKey,
        theirIdentityKey: alice.publicKey,
        theirBaseKey: base.publicKey,
        kyberCiphertext: a.kyberCiphertext,
      });
      expect(b).toEqual(a.secrets);
      // A responder that leaves out the one-time prekey the initiator used gets other secrets.
      const c = pqxdhRespond({
        identityPrivateKey: bob.privateKey,
        signedPreKeyPrivateKey: spk.privateKey,
        oneTimePreKeyPrivateKey: withOneTime ? undefined : opk.privateKey,
        kyberSecretKey: kyber.secretKey,
        theirIdentityKey: alice.publicKey,
        theirBaseKey: base.publicKey,
        kyberCiphertext: a.kyberCiphertext,
      });
      expect(c.rootKey).not.toEqual(a.secrets.rootKey);
    });
  }

  it('refuses non-canonical base keys and low-order points (INVALID_KEY)', () => {
    const respond = (baseRaw: Uint8Array) =>
      pqxdhRespond({
        identityPrivateKey: bob.privateKey,
        signedPreKeyPrivateKey: spk.privateKey,
        kyberSecretKey: kyber.secretKey,
        theirIdentityKey: alice.publicKey,
        theirBaseKey: Uint8Array.of(5, ...baseRaw),
        kyberCiphertext: Uint8Array.of(8, ...new Uint8Array(1568)),
      });
    const highBit = generateCurveKeyPair().publicKey.slice(1);
    highBit[31]! |= 0x80;
    expect(code(() => respond(highBit))).toBe('INVALID_KEY');
    // u = 0 and u = 1 are low-order points: X25519 gives all zeros.
    expect(code(() => respond(new Uint8Array(32)))).toBe('INVALID_KEY');
    expect(code(() => respond(Uint8Array.of(1, ...new Uint8Array(31))))).toBe('INVALID_KEY');
  });

  it('isCanonicalCurveKey: u < 2^255 - 19 with the high bit clear', () => {
    const p = Uint8Array.of(0xed, ...new Array(30).fill(0xff), 0x7f); // 2^255 - 19
    expect(isCanonicalCurveKey(p)).toBe(false);
    const pMinus1 = p.slice();
    pMinus1[0] = 0xec;
    expect(isCanonicalCurveKey(pMinus1)).toBe(true);
    expect(isCanonicalCurveKey(new Uint8Array(32))).toBe(true);
  });
});
