import { describe, expect, it } from 'vitest';
import { isProtocolError } from './errors.js';
import {
  generateIdentityKeyPair,
  generateKyberPreKey,
  generatePreKey,
  generateSignedPreKey,
} from './keys.js';
import { createPreKeyBundle, type PreKeyBundle, verifyPreKeyBundle } from './prekey-bundle.js';

function code(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    return isProtocolError(e) ? e.code : 'not a ProtocolError';
  }
  return undefined;
}

describe('prekey bundles', () => {
  const identity = generateIdentityKeyPair();
  const bundle = createPreKeyBundle({
    registrationId: 1,
    deviceId: 2,
    identity,
    signedPreKey: generateSignedPreKey(identity, 3),
    kyberPreKey: generateKyberPreKey(identity, 4),
    preKey: generatePreKey(5),
  });
  const flip = (b: Uint8Array, i: number) => {
    const c = b.slice();
    c[i]! ^= 1;
    return c;
  };

  it('verifies a good bundle, with or without a one-time prekey', () => {
    expect(verifyPreKeyBundle(bundle).preKeyRaw?.length).toBe(32);
    expect(
      verifyPreKeyBundle({ ...bundle, preKeyId: undefined, preKey: undefined }).preKeyRaw,
    ).toBeUndefined();
  });

  it('rejects bad signatures with INVALID_SIGNATURE', () => {
    expect(
      code(() =>
        verifyPreKeyBundle({ ...bundle, signedPreKeySignature: flip(bundle.signedPreKeySignature, 10) }),
      ),
    ).toBe('INVALID_SIGNATURE');
    expect(
      code(() =>
        verifyPreKeyBundle({ ...bundle, kyberPreKeySignature: flip(bundle.kyberPreKeySignature, 0) }),
      ),
    ).toBe('INVALID_SIGNATURE');
    // A signature by someone else's identity key.
    expect(
      code(() => verifyPreKeyBundle({ ...bundle, identityKey: generateIdentityKeyPair().publicKey })),
    ).toBe('INVALID_SIGNATURE');
    // The signed key must be the one signed.
    expect(code(() => verifyPreKeyBundle({ ...bundle, signedPreKey: flip(bundle.signedPreKey, 5) }))).toBe(
      'INVALID_SIGNATURE',
    );
  });

  it('rejects malformed keys with INVALID_KEY before looking at signatures', () => {
    const cases: Partial<PreKeyBundle>[] = [
      { identityKey: bundle.identityKey.subarray(1) },
      { signedPreKey: flip(bundle.signedPreKey, 0) },
      { preKey: Uint8Array.of(...bundle.preKey!, 0) },
      { kyberPreKey: Uint8Array.of(0x0a, ...bundle.kyberPreKey.subarray(1)) },
    ];
    for (const c of cases) expect(code(() => verifyPreKeyBundle({ ...bundle, ...c }))).toBe('INVALID_KEY');
  });

  it('rejects wrongly typed fields with INVALID_ARGUMENT', () => {
    const cases: Record<string, unknown>[] = [
      { registrationId: -1 },
      { signedPreKeyId: 2 ** 32 },
      { kyberPreKeyId: 1.5 },
      { preKeyId: undefined },
      { signedPreKeySignature: new Uint8Array(63) },
    ];
    for (const c of cases) {
      expect(code(() => verifyPreKeyBundle({ ...bundle, ...c } as PreKeyBundle))).toBe('INVALID_ARGUMENT');
    }
    expect(code(() => verifyPreKeyBundle(null as unknown as PreKeyBundle))).toBe('INVALID_ARGUMENT');
  });
});
