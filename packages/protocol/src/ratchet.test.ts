import { createHmac, hkdfSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { isProtocolError } from './errors.js';
import { deriveMessageKeys, kdfRootKey, messageKeySeed, nextChainKey, parseSpqrHeader } from './ratchet.js';

const fromHex = (h: string) => Uint8Array.from(Buffer.from(h, 'hex'));
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

describe('Double Ratchet KDFs (libsignal ratchet/keys.rs)', () => {
  it("matches libsignal's chain key derivation vector (test_chain_key_derivation)", () => {
    // The vector from libsignal's own unit test: chain key seed, the message keys of index 0, the next chain key.
    const chainKey = fromHex('8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f');
    const keys = deriveMessageKeys(messageKeySeed(chainKey));
    expect(hex(keys.cipherKey)).toBe('bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217');
    expect(hex(keys.macKey)).toBe('c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b');
    expect(hex(nextChainKey(chainKey))).toBe(
      '28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d',
    );
  });

  it('KDF_CK is HMAC-SHA256 with constants 0x01 (message seed) and 0x02 (next chain key)', () => {
    const ck = fromHex(`${'00'.repeat(31)}01`);
    expect(hex(messageKeySeed(ck))).toBe(createHmac('sha256', ck).update(Buffer.of(1)).digest('hex'));
    expect(hex(nextChainKey(ck))).toBe(createHmac('sha256', ck).update(Buffer.of(2)).digest('hex'));
  });

  it('KDF_RK is HKDF(salt = root key, ikm = DH output, "WhisperRatchet", 64) split 32/32', () => {
    const rk = fromHex('11'.repeat(32));
    const dh = fromHex('22'.repeat(32));
    const okm = Buffer.from(hkdfSync('sha256', dh, rk, 'WhisperRatchet', 64));
    const out = kdfRootKey(rk, dh);
    expect(hex(out.rootKey)).toBe(okm.subarray(0, 32).toString('hex'));
    expect(hex(out.chainKey)).toBe(okm.subarray(32).toString('hex'));
  });

  it('message keys are HKDF(zero salt, seed, "WhisperMessageKeys", 80) = key ‖ mac key ‖ iv; an SPQR key is the salt', () => {
    const seed = fromHex('33'.repeat(32));
    const okm = Buffer.from(hkdfSync('sha256', seed, Buffer.alloc(32), 'WhisperMessageKeys', 80));
    const k = deriveMessageKeys(seed);
    expect(hex(k.cipherKey) + hex(k.macKey) + hex(k.iv)).toBe(okm.toString('hex'));
    const salt = fromHex('44'.repeat(32));
    const salted = Buffer.from(hkdfSync('sha256', seed, salt, 'WhisperMessageKeys', 80));
    expect(hex(deriveMessageKeys(seed, salt).cipherKey)).toBe(salted.subarray(0, 32).toString('hex'));
  });

  it('checks argument lengths', () => {
    expect(() => kdfRootKey(new Uint8Array(31), new Uint8Array(32))).toThrow(/rootKey/);
    expect(() => deriveMessageKeys(new Uint8Array(32), new Uint8Array(16))).toThrow(/spqrKey/);
    expect(() => deriveMessageKeys(new Uint8Array(0))).toThrow(/seed/);
  });
});

describe('SPQR v1 message header', () => {
  it('parses version 1, epoch and index varints, and requires the type byte', () => {
    expect(parseSpqrHeader(Uint8Array.of(1, 1, 0, 1, 0, ...new Array(32).fill(7)))).toEqual({
      epoch: 1,
      index: 0,
    });
    expect(parseSpqrHeader(Uint8Array.of(1, 0xac, 0x02, 0x05, 0))).toEqual({ epoch: 300, index: 5 });
  });

  it.each([
    ['empty', []],
    ['wrong version', [2, 1, 0, 0]],
    ['epoch 0', [1, 0, 0, 0]],
    ['no type byte', [1, 1, 0]],
    ['truncated varint', [1, 0x80]],
  ])('rejects %s', (_, bytes) => {
    let err: unknown;
    try {
      parseSpqrHeader(Uint8Array.from(bytes));
    } catch (e) {
      err = e;
    }
    expect(isProtocolError(err, 'INVALID_MESSAGE')).toBe(true);
  });
});
