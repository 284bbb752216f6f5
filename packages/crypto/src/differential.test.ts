/**
 * Differential tests: random inputs through both backends must give identical outputs,
 * and whatever one backend produces the other must accept. The node backend is OpenSSL,
 * the noble one pure JS; an agreement between two independent implementations on random
 * inputs is strong evidence neither has a wiring bug (wrong key order, padding, offsets).
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CryptoError } from './errors.js';
import { nobleBackend as noble } from './noble.js';
import { nodeBackend as node } from './node.js';
import type { CryptoBackend } from './types.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const bytes = (min = 0, max = 300) => fc.uint8Array({ minLength: min, maxLength: max });
const exact = (n: number) => fc.uint8Array({ minLength: n, maxLength: n });
/** Curve and lattice operations in noble take milliseconds; fewer runs for those. */
const FAST = { numRuns: 200 };
const SLOW = { numRuns: 25 };

/** Result or the CryptoError code, so "both threw the same way" also counts as agreement. */
function outcome(fn: () => Uint8Array | boolean): string {
  try {
    const r = fn();
    return typeof r === 'boolean' ? String(r) : hex(r);
  } catch (e) {
    if (e instanceof CryptoError) return `error:${e.code}`;
    throw e;
  }
}

function same(fn: (b: CryptoBackend) => Uint8Array | boolean): void {
  expect(outcome(() => fn(node))).toBe(outcome(() => fn(noble)));
}

describe('differential: hashes, MACs, KDF', () => {
  it('sha256, sha512, sha3_256 agree', () => {
    fc.assert(
      fc.property(bytes(), (data) => {
        same((b) => b.sha256(data));
        same((b) => b.sha512(data));
        same((b) => b.sha3_256(data));
      }),
      FAST,
    );
  });

  it('sha512Parts equals sha512 of the concatenation, on both', () => {
    fc.assert(
      fc.property(fc.array(bytes(0, 80), { maxLength: 6 }), (parts) => {
        const whole = Uint8Array.from(parts.flatMap((p) => [...p]));
        expect(hex(node.sha512Parts(parts))).toBe(hex(noble.sha512(whole)));
        expect(hex(noble.sha512Parts(parts))).toBe(hex(node.sha512(whole)));
      }),
      FAST,
    );
  });

  it('shake256 agrees for any output length', () => {
    fc.assert(
      fc.property(bytes(), fc.integer({ min: 0, max: 600 }), (data, len) => {
        same((b) => b.shake256(data, len));
        expect(node.shake256(data, len).length).toBe(len);
      }),
      FAST,
    );
  });

  it('HMAC-SHA256/512 agree for any key length (short, block-sized, longer than a block)', () => {
    fc.assert(
      fc.property(bytes(0, 200), bytes(), (key, data) => {
        same((b) => b.hmacSha256(key, data));
        same((b) => b.hmacSha512(key, data));
      }),
      FAST,
    );
  });

  it('hmacSha256Parts equals hmacSha256 of the concatenation, on both', () => {
    fc.assert(
      fc.property(bytes(0, 64), fc.array(bytes(0, 80), { maxLength: 5 }), (key, parts) => {
        const whole = Uint8Array.from(parts.flatMap((p) => [...p]));
        expect(hex(node.hmacSha256Parts(key, parts))).toBe(hex(noble.hmacSha256(key, whole)));
        expect(hex(noble.hmacSha256Parts(key, parts))).toBe(hex(node.hmacSha256(key, whole)));
      }),
      FAST,
    );
  });

  it('HKDF-SHA256 agrees, including empty salt and long info', () => {
    fc.assert(
      fc.property(
        bytes(0, 100),
        bytes(0, 80),
        bytes(0, 1500),
        fc.integer({ min: 0, max: 255 * 32 }),
        (ikm, salt, info, len) => {
          same((b) => b.hkdfSha256(ikm, salt, info, len));
        },
      ),
      { numRuns: 100 },
    );
  });

  it('an empty salt is the same as HashLen zero bytes (RFC 5869 section 2.2)', () => {
    fc.assert(
      fc.property(bytes(0, 64), bytes(0, 64), (ikm, info) => {
        for (const b of [node, noble]) {
          expect(hex(b.hkdfSha256(ikm, new Uint8Array(0), info, 80))).toBe(
            hex(b.hkdfSha256(ikm, new Uint8Array(32), info, 80)),
          );
        }
      }),
      FAST,
    );
  });
});

describe('differential: AES', () => {
  it('AES-256-CBC: same ciphertext, and each decrypts the other', () => {
    fc.assert(
      fc.property(exact(32), exact(16), bytes(0, 500), (key, iv, pt) => {
        const c1 = node.aes256CbcEncrypt(key, iv, pt);
        expect(hex(c1)).toBe(hex(noble.aes256CbcEncrypt(key, iv, pt)));
        expect(c1.length).toBe((Math.floor(pt.length / 16) + 1) * 16);
        expect(hex(noble.aes256CbcDecrypt(key, iv, c1))).toBe(hex(pt));
        expect(hex(node.aes256CbcDecrypt(key, iv, c1))).toBe(hex(pt));
      }),
      FAST,
    );
  });

  it('AES-256-CBC: random ciphertexts are accepted or refused alike (padding check)', () => {
    fc.assert(
      fc.property(exact(32), exact(16), bytes(0, 80), (key, iv, ct) => {
        same((b) => b.aes256CbcDecrypt(key, iv, ct));
      }),
      FAST,
    );
  });

  it('AES-256-GCM: same sealed output, each opens the other, with and without AAD', () => {
    fc.assert(
      fc.property(
        exact(32),
        exact(12),
        bytes(0, 500),
        fc.option(bytes(0, 60), { nil: undefined }),
        (key, nonce, pt, aad) => {
          const sealed = node.aes256GcmEncrypt(key, nonce, pt, aad);
          expect(hex(sealed)).toBe(hex(noble.aes256GcmEncrypt(key, nonce, pt, aad)));
          expect(sealed.length).toBe(pt.length + 16);
          expect(hex(noble.aes256GcmDecrypt(key, nonce, sealed, aad))).toBe(hex(pt));
          expect(hex(node.aes256GcmDecrypt(key, nonce, sealed, aad))).toBe(hex(pt));
        },
      ),
      FAST,
    );
  });

  it('AES-256-GCM: an empty AAD is the same as no AAD (SP 800-38D: A may be empty)', () => {
    fc.assert(
      fc.property(exact(32), exact(12), bytes(0, 100), (key, nonce, pt) => {
        for (const b of [node, noble]) {
          expect(hex(b.aes256GcmEncrypt(key, nonce, pt, new Uint8Array(0)))).toBe(
            hex(b.aes256GcmEncrypt(key, nonce, pt)),
          );
        }
      }),
      FAST,
    );
  });
});

describe('differential: X25519', () => {
  it('public keys agree for any 32 bytes (clamping is applied on use)', () => {
    fc.assert(
      fc.property(exact(32), (priv) => {
        same((b) => b.x25519PublicKey(priv));
      }),
      SLOW,
    );
  });

  it('DH agrees for arbitrary peer bytes (twist, u >= p, bit 255 set), or both refuse', () => {
    fc.assert(
      fc.property(exact(32), exact(32), (priv, pub) => {
        same((b) => b.x25519(priv, pub));
      }),
      SLOW,
    );
  });

  it('key pairs from either backend agree on the shared secret', () => {
    for (let i = 0; i < 10; i++) {
      const a = node.x25519GenerateKeyPair();
      const b = noble.x25519GenerateKeyPair();
      expect(hex(noble.x25519PublicKey(a.privateKey))).toBe(hex(a.publicKey));
      expect(hex(node.x25519PublicKey(b.privateKey))).toBe(hex(b.publicKey));
      expect(hex(node.x25519(a.privateKey, b.publicKey))).toBe(hex(noble.x25519(b.privateKey, a.publicKey)));
    }
  });

  it('the node key cache never serves a stale key after the array is overwritten', () => {
    const a = node.x25519GenerateKeyPair();
    const peer = noble.x25519GenerateKeyPair();
    const first = hex(node.x25519(a.privateKey, peer.publicKey));
    const other = noble.x25519GenerateKeyPair();
    a.privateKey.set(other.privateKey);
    expect(hex(node.x25519(a.privateKey, peer.publicKey))).toBe(
      hex(noble.x25519(other.privateKey, peer.publicKey)),
    );
    expect(hex(node.x25519(a.privateKey, peer.publicKey))).not.toBe(first);
    expect(hex(node.x25519PublicKey(a.privateKey))).toBe(hex(other.publicKey));
  });

  it('the node public-key cache never serves a stale key after the array is overwritten', () => {
    const me = node.x25519GenerateKeyPair();
    const p1 = noble.x25519GenerateKeyPair();
    const p2 = noble.x25519GenerateKeyPair();
    const theirs = Uint8Array.from(p1.publicKey);
    expect(hex(node.x25519(me.privateKey, theirs))).toBe(hex(noble.x25519(p1.privateKey, me.publicKey)));
    theirs.set(p2.publicKey);
    expect(hex(node.x25519(me.privateKey, theirs))).toBe(hex(noble.x25519(p2.privateKey, me.publicKey)));
  });
});

describe('differential: XEdDSA', () => {
  it('same private key, message and randomness give identical signatures; each verifies the other', () => {
    fc.assert(
      fc.property(exact(32), bytes(0, 200), exact(64), (priv, msg, random) => {
        const s1 = node.xeddsaSign(priv, msg, random);
        const s2 = noble.xeddsaSign(priv, msg, random);
        expect(hex(s1)).toBe(hex(s2));
        const pub = node.x25519PublicKey(priv);
        expect(noble.xeddsaVerify(pub, msg, s1)).toBe(true);
        expect(node.xeddsaVerify(pub, msg, s2)).toBe(true);
      }),
      SLOW,
    );
  });

  it('signatures with fresh randomness verify on both backends', () => {
    for (let i = 0; i < 5; i++) {
      const { privateKey, publicKey } = noble.x25519GenerateKeyPair();
      const msg = node.randomBytes(i * 50);
      for (const signer of [node, noble]) {
        const sig = signer.xeddsaSign(privateKey, msg);
        expect(node.xeddsaVerify(publicKey, msg, sig)).toBe(true);
        expect(noble.xeddsaVerify(publicKey, msg, sig)).toBe(true);
      }
    }
  });

  it('any single-bit change to a signature or message is rejected by both', () => {
    const { privateKey, publicKey } = node.x25519GenerateKeyPair();
    const msg = node.randomBytes(40);
    const sig = node.xeddsaSign(privateKey, msg);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 64 * 8 + 40 * 8 - 1 }), (bit) => {
        const s = Uint8Array.from(sig);
        const m = Uint8Array.from(msg);
        if (bit < 512) s[bit >> 3]! ^= 1 << (bit & 7);
        else m[(bit - 512) >> 3]! ^= 1 << (bit & 7);
        expect(node.xeddsaVerify(publicKey, m, s)).toBe(false);
        expect(noble.xeddsaVerify(publicKey, m, s)).toBe(false);
      }),
      SLOW,
    );
  });

  it('arbitrary public keys and signatures get the same verdict from both', () => {
    fc.assert(
      fc.property(exact(32), bytes(0, 50), exact(64), (pub, msg, sig) => {
        same((b) => b.xeddsaVerify(pub, msg, sig));
      }),
      SLOW,
    );
  });
});

describe('differential: Ed25519', () => {
  it('RFC 8032 signing is deterministic: identical public keys and signatures; each verifies the other', () => {
    fc.assert(
      fc.property(exact(32), bytes(0, 200), (seed, msg) => {
        const pub = node.ed25519PublicKey(seed);
        expect(hex(noble.ed25519PublicKey(seed))).toBe(hex(pub));
        const sig = node.ed25519Sign(seed, msg);
        expect(hex(noble.ed25519Sign(seed, msg))).toBe(hex(sig));
        expect(noble.ed25519Verify(pub, msg, sig)).toBe(true);
        expect(node.ed25519Verify(pub, msg, sig)).toBe(true);
        const bad = Uint8Array.from(sig);
        bad[0]! ^= 1;
        expect(noble.ed25519Verify(pub, msg, bad)).toBe(false);
        expect(node.ed25519Verify(pub, msg, bad)).toBe(false);
      }),
      SLOW,
    );
  });

  it('arbitrary public keys and signatures get the same verdict from both', () => {
    fc.assert(
      fc.property(exact(32), bytes(0, 50), exact(64), (pub, msg, sig) => {
        same((b) => b.ed25519Verify(pub, msg, sig));
      }),
      SLOW,
    );
  });
});

describe('differential: Kyber1024', () => {
  it('same seed, same key pair; same coins, same encapsulation; each decapsulates the other', () => {
    fc.assert(
      fc.property(exact(64), exact(32), (seed, coins) => {
        const k1 = node.kyber1024GenerateKeyPair(seed);
        const k2 = noble.kyber1024GenerateKeyPair(seed);
        expect(hex(k1.publicKey)).toBe(hex(k2.publicKey));
        expect(hex(k1.privateKey)).toBe(hex(k2.privateKey));
        const e1 = node.kyber1024Encapsulate(k1.publicKey, coins);
        const e2 = noble.kyber1024Encapsulate(k1.publicKey, coins);
        expect(hex(e1.ciphertext)).toBe(hex(e2.ciphertext));
        expect(hex(e1.sharedSecret)).toBe(hex(e2.sharedSecret));
        expect(hex(noble.kyber1024Decapsulate(k1.privateKey, e1.ciphertext))).toBe(hex(e1.sharedSecret));
        expect(hex(node.kyber1024Decapsulate(k2.privateKey, e2.ciphertext))).toBe(hex(e2.sharedSecret));
      }),
      { numRuns: 10 },
    );
  });

  it('fresh encapsulations decapsulate across backends; a corrupted ciphertext gives another secret', () => {
    const kp = noble.kyber1024GenerateKeyPair();
    for (const [enc, dec] of [
      [node, noble],
      [noble, node],
    ] as const) {
      const { ciphertext, sharedSecret } = enc.kyber1024Encapsulate(kp.publicKey);
      expect(sharedSecret.length).toBe(32);
      expect(hex(dec.kyber1024Decapsulate(kp.privateKey, ciphertext))).toBe(hex(sharedSecret));
      const bad = Uint8Array.from(ciphertext);
      bad[100]! ^= 4;
      // Implicit rejection (never an error): a pseudorandom secret, the same on both backends.
      const rejected = dec.kyber1024Decapsulate(kp.privateKey, bad);
      expect(hex(rejected)).not.toBe(hex(sharedSecret));
      expect(hex(enc.kyber1024Decapsulate(kp.privateKey, bad))).toBe(hex(rejected));
    }
  });
});

describe('differential: constantTimeEqual', () => {
  it('agrees with byte-wise equality, including different lengths', () => {
    fc.assert(
      fc.property(bytes(0, 40), bytes(0, 40), fc.boolean(), (a, b, copy) => {
        const other = copy ? Uint8Array.from(a) : b;
        const expected = hex(a) === hex(other);
        expect(node.constantTimeEqual(a, other)).toBe(expected);
        expect(noble.constantTimeEqual(a, other)).toBe(expected);
      }),
      FAST,
    );
  });
});
