/**
 * AES-256-GCM (NIST SP 800-38D) and AES-256-CBC with PKCS#7 padding (RFC 5652 section
 * 6.3): every kind of tampering must end in the one opaque DECRYPT_FAILED, on both backends.
 */
import { ecb } from '@noble/ciphers/aes.js';
import { describe, expect, it } from 'vitest';
import { CryptoError } from './errors.js';
import { nobleBackend } from './noble.js';
import { nodeBackend, pkcs7UnpaddedLength } from './node.js';
import type { CryptoBackend } from './types.js';

const backends: readonly CryptoBackend[] = [nodeBackend, nobleBackend];

function expectDecryptFailed(fn: () => unknown): void {
  let thrown: unknown;
  try {
    fn();
  } catch (e) {
    thrown = e;
  }
  expect(thrown).toBeInstanceOf(CryptoError);
  expect((thrown as CryptoError).code).toBe('DECRYPT_FAILED');
  // Opaque: the same message whatever failed, so it cannot serve as an oracle.
  expect((thrown as CryptoError).message).toBe('decryption failed');
}

/** CBC-encrypts `blocks` (a multiple of 16 bytes) without adding padding. */
function cbcRaw(key: Uint8Array, iv: Uint8Array, blocks: Uint8Array): Uint8Array {
  const out = new Uint8Array(blocks.length);
  let prev = iv;
  for (let i = 0; i < blocks.length; i += 16) {
    const block = blocks.slice(i, i + 16);
    for (let j = 0; j < 16; j++) block[j]! ^= prev[j]!;
    // A fresh instance per block: noble refuses to reuse a cipher instance.
    prev = ecb(key, { disablePadding: true }).encrypt(block);
    out.set(prev, i);
  }
  return out;
}

describe.each(backends)('AES-256-GCM on the $name backend', (b) => {
  const key = b.randomBytes(32);
  const nonce = b.randomBytes(12);
  const aad = new TextEncoder().encode('header');
  const pt = new TextEncoder().encode('attack at dawn, bring snacks');
  const sealed = b.aes256GcmEncrypt(key, nonce, pt, aad);

  it('round-trips', () => {
    expect(Buffer.from(b.aes256GcmDecrypt(key, nonce, sealed, aad)).toString()).toBe(
      'attack at dawn, bring snacks',
    );
  });

  it('rejects a flipped bit anywhere in the ciphertext or the tag', () => {
    for (let i = 0; i < sealed.length; i++) {
      const bad = Uint8Array.from(sealed);
      bad[i]! ^= 0x01;
      expectDecryptFailed(() => b.aes256GcmDecrypt(key, nonce, bad, aad));
    }
  });

  it('rejects a changed, missing or added AAD, a different nonce and a different key', () => {
    expectDecryptFailed(() => b.aes256GcmDecrypt(key, nonce, sealed, new TextEncoder().encode('headeR')));
    expectDecryptFailed(() => b.aes256GcmDecrypt(key, nonce, sealed));
    const noAad = b.aes256GcmEncrypt(key, nonce, pt);
    expectDecryptFailed(() => b.aes256GcmDecrypt(key, nonce, noAad, aad));
    const otherNonce = Uint8Array.from(nonce);
    otherNonce[0]! ^= 1;
    expectDecryptFailed(() => b.aes256GcmDecrypt(key, otherNonce, sealed, aad));
    const otherKey = Uint8Array.from(key);
    otherKey[31]! ^= 0x80;
    expectDecryptFailed(() => b.aes256GcmDecrypt(otherKey, nonce, sealed, aad));
  });

  it('rejects truncation, including below the tag length, and extension', () => {
    for (const n of [0, 1, 15, 16, sealed.length - 1]) {
      expectDecryptFailed(() => b.aes256GcmDecrypt(key, nonce, sealed.subarray(0, n), aad));
    }
    expectDecryptFailed(() => b.aes256GcmDecrypt(key, nonce, new Uint8Array([...sealed, 0]), aad));
  });

  it('seals an empty plaintext to a bare tag that authenticates the AAD', () => {
    const tagOnly = b.aes256GcmEncrypt(key, nonce, new Uint8Array(0), aad);
    expect(tagOnly.length).toBe(16);
    expect(b.aes256GcmDecrypt(key, nonce, tagOnly, aad).length).toBe(0);
    expectDecryptFailed(() => b.aes256GcmDecrypt(key, nonce, tagOnly));
  });
});

describe.each(backends)('aes256GcmEncryptInto on the $name backend', (b) => {
  const other = b === nodeBackend ? nobleBackend : nodeBackend;
  const key = b.randomBytes(32);
  const nonce = b.randomBytes(12);
  const aad = new TextEncoder().encode('segment 7');

  it('writes exactly what aes256GcmEncrypt returns, at any offset of a larger buffer, and nothing else', () => {
    for (const n of [0, 1, 15, 16, 17, 1000, 65536]) {
      const pt = b.randomBytes(n);
      const big = new Uint8Array(n + 16 + 13 + 7).fill(0xa5);
      const out = big.subarray(13, 13 + n + 16);
      b.aes256GcmEncryptInto(key, nonce, pt, aad, out);
      expect(Buffer.from(out).equals(Buffer.from(b.aes256GcmEncrypt(key, nonce, pt, aad)))).toBe(true);
      // Differential: the other backend seals the same bytes.
      expect(Buffer.from(out).equals(Buffer.from(other.aes256GcmEncrypt(key, nonce, pt, aad)))).toBe(true);
      expect(Buffer.from(other.aes256GcmDecrypt(key, nonce, out, aad)).equals(Buffer.from(pt))).toBe(true);
      expect(big.subarray(0, 13).every((v) => v === 0xa5)).toBe(true);
      expect(big.subarray(13 + n + 16).every((v) => v === 0xa5)).toBe(true);
    }
  });

  it('treats an absent and an empty AAD alike, and a different AAD does not open', () => {
    const pt = b.randomBytes(40);
    const a = new Uint8Array(56);
    const c = new Uint8Array(56);
    b.aes256GcmEncryptInto(key, nonce, pt, undefined, a);
    b.aes256GcmEncryptInto(key, nonce, pt, new Uint8Array(0), c);
    expect(Buffer.from(a).equals(Buffer.from(c))).toBe(true);
    expect(Buffer.from(other.aes256GcmDecrypt(key, nonce, a)).equals(Buffer.from(pt))).toBe(true);
    expectDecryptFailed(() => other.aes256GcmDecrypt(key, nonce, a, aad));
  });

  it('refuses an output of the wrong length or one that overlaps the plaintext, writing nothing', () => {
    const buf = new Uint8Array(200).fill(7);
    const pt = buf.subarray(0, 64);
    const expectInvalid = (fn: () => void) => {
      let thrown: unknown;
      try {
        fn();
      } catch (e) {
        thrown = e;
      }
      expect(thrown).toBeInstanceOf(CryptoError);
      expect((thrown as CryptoError).code).toBe('INVALID_ARGUMENT');
    };
    expectInvalid(() => b.aes256GcmEncryptInto(key, nonce, pt, aad, new Uint8Array(79)));
    expectInvalid(() => b.aes256GcmEncryptInto(key, nonce, pt, aad, new Uint8Array(81)));
    // In place, and a partial overlap at either end.
    expectInvalid(() => b.aes256GcmEncryptInto(key, nonce, pt, aad, buf.subarray(0, 80)));
    expectInvalid(() => b.aes256GcmEncryptInto(key, nonce, pt, aad, buf.subarray(63, 143)));
    expectInvalid(() =>
      b.aes256GcmEncryptInto(key, nonce, buf.subarray(100, 164), aad, buf.subarray(30, 110)),
    );
    expect(buf.every((v) => v === 7)).toBe(true);
    expectInvalid(() => b.aes256GcmEncryptInto(key, nonce, pt, aad, 'out' as unknown as Uint8Array));
    expectInvalid(() => b.aes256GcmEncryptInto(key.subarray(1), nonce, pt, aad, new Uint8Array(80)));
    // Adjacent but not overlapping is fine.
    b.aes256GcmEncryptInto(key, nonce, pt, aad, buf.subarray(64, 144));
    expect(
      Buffer.from(buf.subarray(64, 144)).equals(Buffer.from(b.aes256GcmEncrypt(key, nonce, pt, aad))),
    ).toBe(true);
  });
});

describe.each(backends)('AES-256-CBC on the $name backend', (b) => {
  const key = b.randomBytes(32);
  const iv = b.randomBytes(16);

  it('pads every length to the next block, a full block when already aligned', () => {
    for (let n = 0; n <= 48; n++) {
      const pt = b.randomBytes(n);
      const ct = b.aes256CbcEncrypt(key, iv, pt);
      expect(ct.length).toBe(16 * (Math.floor(n / 16) + 1));
      expect(Buffer.from(b.aes256CbcDecrypt(key, iv, ct)).equals(Buffer.from(pt))).toBe(true);
    }
  });

  it('rejects every malformed padding of a final block', () => {
    // Final blocks whose last byte is 0 or > 16, or whose padding bytes disagree.
    const bad: Uint8Array[] = [];
    for (const last of [0, 17, 0x80, 0xff])
      bad.push(new Uint8Array(16).fill(3).map((v, i) => (i === 15 ? last : v)));
    for (let pad = 2; pad <= 16; pad++) {
      const block = new Uint8Array(16).fill(pad);
      block[16 - pad] = pad ^ 1; // first padding byte wrong
      bad.push(block);
      const block2 = new Uint8Array(16).fill(pad);
      block2[15 - 1] = pad === 2 ? 3 : pad - 1; // a middle padding byte wrong
      bad.push(block2);
    }
    for (const finalBlock of bad) {
      const ct = cbcRaw(key, iv, new Uint8Array([...b.randomBytes(16), ...finalBlock]));
      expectDecryptFailed(() => b.aes256CbcDecrypt(key, iv, ct));
    }
    expect(bad.length).toBe(4 + 2 * 15);
  });

  it('accepts every well-formed padding length 1..16', () => {
    for (let pad = 1; pad <= 16; pad++) {
      const block = new Uint8Array(16).fill(0x41);
      block.fill(pad, 16 - pad);
      const ct = cbcRaw(key, iv, block);
      expect(b.aes256CbcDecrypt(key, iv, ct).length).toBe(16 - pad);
    }
  });

  it('rejects lengths that are not a positive multiple of 16', () => {
    const ct = b.aes256CbcEncrypt(key, iv, b.randomBytes(40));
    for (const n of [0, 1, 15, 17, 47])
      expectDecryptFailed(() => b.aes256CbcDecrypt(key, iv, ct.subarray(0, n)));
  });

  it('a wrong key almost always fails the padding check or yields other bytes', () => {
    const pt = b.randomBytes(32);
    const ct = b.aes256CbcEncrypt(key, iv, pt);
    const other = b.randomBytes(32);
    try {
      expect(Buffer.from(b.aes256CbcDecrypt(other, iv, ct)).equals(Buffer.from(pt))).toBe(false);
    } catch (e) {
      expect((e as CryptoError).code).toBe('DECRYPT_FAILED');
    }
  });
});

describe('pkcs7UnpaddedLength (the node backend’s constant-time padding check)', () => {
  it('agrees with a straightforward check on every last byte and every corruption position', () => {
    const reference = (d: Uint8Array): number => {
      const pad = d[d.length - 1]!;
      if (pad < 1 || pad > 16) return -1;
      for (let i = 1; i <= pad; i++) if (d[d.length - i] !== pad) return -1;
      return d.length - pad;
    };
    let checked = 0;
    for (let last = 0; last < 256; last++) {
      for (let corrupt = -1; corrupt < 16; corrupt++) {
        const d = new Uint8Array(32).fill(last);
        if (corrupt >= 0) d[16 + corrupt]! ^= 0x10;
        d[31] = last;
        expect(pkcs7UnpaddedLength(d), `last=${last} corrupt=${corrupt}`).toBe(reference(d));
        checked++;
      }
    }
    expect(checked).toBe(256 * 17);
  });
});
