/**
 * Edge cases of libsignal's XEdDSA verification (rust/core/src/curve/curve25519.rs,
 * `verify_signature`) and of Ed25519 point decoding, on both backends. Random inputs
 * (differential.test.ts) almost never reach these branches, so they are built by hand.
 */
import { ED25519_TORSION_SUBGROUP, ed25519 } from '@noble/curves/ed25519.js';
import { bytesToNumberLE, numberToBytesLE } from '@noble/curves/utils.js';
import { describe, expect, it } from 'vitest';
import { nobleBackend } from './noble.js';
import { nodeBackend } from './node.js';
import type { CryptoBackend } from './types.js';
import { decodeXeddsa } from './xeddsa.js';

const L = ed25519.Point.Fn.ORDER;
const P = ed25519.Point.Fp.ORDER;
const backends: readonly CryptoBackend[] = [nodeBackend, nobleBackend];
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

/** A signature with its s (sign bit removed) replaced by `f(s)`, sign bit kept. */
function withS(sig: Uint8Array, f: (s: bigint) => bigint): Uint8Array {
  const signBit = sig[63]! & 0x80;
  const sBytes = Uint8Array.from(sig.subarray(32));
  sBytes[31] = sBytes[31]! & 0x7f;
  const out = Uint8Array.from(sig);
  out.set(numberToBytesLE(f(bytesToNumberLE(sBytes)), 32), 32);
  out[63] = out[63]! | signBit;
  return out;
}

describe.each(backends)('XEdDSA edge cases on the $name backend', (b) => {
  const { privateKey, publicKey } = nodeBackend.x25519GenerateKeyPair();
  const msg = new TextEncoder().encode('signed prekey');
  const sig = b.xeddsaSign(privateKey, msg);

  it('accepts s + L when it stays below 2^253, as libsignal does (it reduces s mod L)', () => {
    // libsignal only rejects s with bits 253..254 set; L <= s < 2^253 is reduced. This
    // is unlike RFC 8032 section 5.1.7, which requires s < L, so it must be matched on purpose.
    const sPlusL = withS(sig, (s) => s + L);
    if (bytesToNumberLE(sPlusL.subarray(32)) % 2n ** 255n < 2n ** 253n) {
      expect(b.xeddsaVerify(publicKey, msg, sPlusL)).toBe(true);
    }
    // s + L is always < 2L < 2^253, so the branch above is always taken; assert that too.
    expect((bytesToNumberLE(sig.subarray(32)) & ((1n << 255n) - 1n)) + L < 2n ** 253n).toBe(true);
  });

  it('rejects s with bit 253 or 254 set even if s mod L would verify', () => {
    expect(
      b.xeddsaVerify(
        publicKey,
        msg,
        withS(sig, (s) => s + 2n ** 253n),
      ),
    ).toBe(false);
    expect(
      b.xeddsaVerify(
        publicKey,
        msg,
        withS(sig, (s) => s + 2n ** 254n),
      ),
    ).toBe(false);
    // 8L is a multiple of L with bit 255 clear but above 2^253: rejected by the bit check.
    expect(
      b.xeddsaVerify(
        publicKey,
        msg,
        withS(sig, (s) => s + 8n * L),
      ),
    ).toBe(false);
  });

  it('rejects the other sign bit', () => {
    const flipped = Uint8Array.from(sig);
    flipped[63]! ^= 0x80;
    expect(b.xeddsaVerify(publicKey, msg, flipped)).toBe(false);
  });

  it('ignores bit 255 of the Montgomery public key (it is masked, RFC 7748 section 5)', () => {
    const high = Uint8Array.from(publicKey);
    high[31]! |= 0x80;
    expect(b.xeddsaVerify(high, msg, sig)).toBe(true);
  });

  it('rejects u = -1 (no Edwards image) and u = 0 for any signature', () => {
    const minusOne = numberToBytesLE(P - 1n, 32);
    expect(b.xeddsaVerify(minusOne, msg, sig)).toBe(false);
    expect(b.xeddsaVerify(new Uint8Array(32), msg, sig)).toBe(false);
  });

  it('signs with the clamped key: an unclamped private key gives the same signature', () => {
    const unclamped = Uint8Array.from(privateKey);
    unclamped[0]! |= 7;
    unclamped[31]! |= 0x80;
    const random = new Uint8Array(64).fill(7);
    expect(hex(b.xeddsaSign(unclamped, msg, random))).toBe(hex(b.xeddsaSign(privateKey, msg, random)));
  });
});

describe('decodeXeddsa', () => {
  it('maps u = 0 to y = -1 with the sign bit dropped (x = 0 has only one encoding)', () => {
    const sig = new Uint8Array(64);
    sig[63] = 0x80;
    const decoded = decodeXeddsa(new Uint8Array(32), sig);
    expect(decoded).toBeDefined();
    expect(hex(decoded!.publicKey)).toBe(hex(numberToBytesLE(P - 1n, 32)));
    expect(decoded!.signature[63]).toBe(0);
  });

  it('matches the birational map of RFC 7748 section 4.1 on a real key', () => {
    const seedPoint = ed25519.Point.BASE.multiply(12345n);
    const u = ed25519.utils.toMontgomery(seedPoint.toBytes());
    const sig = new Uint8Array(64);
    sig[63] = seedPoint.toBytes()[31]! & 0x80;
    expect(hex(decodeXeddsa(u, sig)!.publicKey)).toBe(hex(seedPoint.toBytes()));
  });
});

describe('Ed25519 decoding edge cases agree between backends', () => {
  // Small-order points (the torsion subgroup), with the sign bit forced on, and
  // non-canonical y (y >= p): each paired with a few signatures built to make
  // [s]B - [h]A land on small-order R for small-order A.
  const keys: Uint8Array[] = [];
  for (const h of ED25519_TORSION_SUBGROUP) {
    const k = Uint8Array.from(Buffer.from(h, 'hex'));
    keys.push(k);
    const signed = Uint8Array.from(k);
    signed[31]! |= 0x80;
    keys.push(signed);
  }
  for (const y of [P, P + 1n, P + 2n, 2n ** 255n - 1n]) keys.push(numberToBytesLE(y, 32));
  const sigs: Uint8Array[] = [];
  for (const r of keys) {
    const s0 = new Uint8Array(64);
    s0.set(r, 0);
    sigs.push(s0);
  }

  it('noble gives the same verdict as OpenSSL on every pair', () => {
    const msg = new Uint8Array([1, 2, 3]);
    let accepted = 0;
    for (const pub of keys) {
      for (const sig of sigs) {
        const verdict = nodeBackend.ed25519Verify(pub, msg, sig);
        expect(nobleBackend.ed25519Verify(pub, msg, sig), `${hex(pub)} ${hex(sig)}`).toBe(verdict);
        if (verdict) accepted++;
      }
    }
    // Some of these degenerate signatures do verify under the cofactorless equation; the
    // table is only meaningful if both outcomes occur.
    expect(accepted).toBeGreaterThan(0);
  });
});
