/**
 * Safety numbers: Qalqon's computeFingerprint against libsignal 0.90.0 and 0.103.0 as
 * oracles, for random identity keys and stable ids, versions 1 and 2. Note the JS binding's
 * argument order: Fingerprint.new(iterations, version, localId, localKey, remoteId, remoteKey).
 */
import { randomBytes, x25519GenerateKeyPair } from '@qalqon/crypto';
import {
  compareScannableFingerprints,
  computeFingerprint,
  FINGERPRINT_ITERATIONS,
  isProtocolError,
  serializeCurveKey,
} from '@qalqon/protocol';
import * as L090 from 'libsignal-090';
import * as L103 from 'libsignal-103';
import { describe, expect, it } from 'vitest';

// Both versions declare the same Fingerprint API; their classes are nominally distinct
// (private native handles), so one type serves both through a cast.
type Lib = typeof L090;
const LIBS: [string, Lib][] = [
  ['0.90.0', L090],
  ['0.103.0', L103 as unknown as Lib],
];

/** libsignal's bindings want ArrayBuffer-backed arrays. */
const ab = (b: Uint8Array): Uint8Array<ArrayBuffer> => Uint8Array.from(b);
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function randomCase() {
  const idLen = (n: number) => 1 + (n % 40);
  return {
    localId: randomBytes(idLen(randomBytes(1)[0]!)),
    remoteId: randomBytes(idLen(randomBytes(1)[0]!)),
    localKey: serializeCurveKey(x25519GenerateKeyPair().publicKey),
    remoteKey: serializeCurveKey(x25519GenerateKeyPair().publicKey),
  };
}

const CASES_PER_VERSION = 6;

describe.each(LIBS)('safety numbers are identical to libsignal %s', (_name, lib) => {
  for (const version of [1, 2]) {
    it(`version ${version}: displayable and scannable forms for random keys and ids`, () => {
      for (let i = 0; i < CASES_PER_VERSION; i++) {
        const c = randomCase();
        const theirs = lib.Fingerprint.new(
          FINGERPRINT_ITERATIONS,
          version,
          ab(c.localId),
          lib.PublicKey.deserialize(ab(c.localKey)),
          ab(c.remoteId),
          lib.PublicKey.deserialize(ab(c.remoteKey)),
        );
        const ours = computeFingerprint({
          version,
          localStableId: c.localId,
          localIdentityKey: c.localKey,
          remoteStableId: c.remoteId,
          remoteIdentityKey: c.remoteKey,
        });
        expect(ours.displayable).toBe(theirs.displayableFingerprint().toString());
        expect(toHex(ours.scannable)).toBe(toHex(theirs.scannableFingerprint().toBuffer()));
      }
    });
  }

  it('our compare agrees with libsignal compare, both ways and across implementations', () => {
    const c = randomCase();
    const version = 2;
    const ourA = computeFingerprint({
      version,
      localStableId: c.localId,
      localIdentityKey: c.localKey,
      remoteStableId: c.remoteId,
      remoteIdentityKey: c.remoteKey,
    });
    const theirB = lib.Fingerprint.new(
      FINGERPRINT_ITERATIONS,
      version,
      ab(c.remoteId),
      lib.PublicKey.deserialize(ab(c.remoteKey)),
      ab(c.localId),
      lib.PublicKey.deserialize(ab(c.localKey)),
    ).scannableFingerprint();
    // Our code scanned by libsignal, and libsignal's code scanned by us.
    expect(theirB.compare(lib.ScannableFingerprint._fromBuffer(ab(ourA.scannable)))).toBe(true);
    expect(compareScannableFingerprints(ourA.scannable, theirB.toBuffer())).toBe(true);
    // Our own code scanned back is not a match, in both implementations.
    expect(compareScannableFingerprints(ourA.scannable, ourA.scannable)).toBe(false);
    const ourAsTheirs = lib.ScannableFingerprint._fromBuffer(ab(ourA.scannable));
    expect(ourAsTheirs.compare(ourAsTheirs)).toBe(false);
  });

  it('a version mismatch is an error in both implementations', () => {
    const c = randomCase();
    const v1 = computeFingerprint({
      version: 1,
      iterations: 1024,
      localStableId: c.localId,
      localIdentityKey: c.localKey,
      remoteStableId: c.remoteId,
      remoteIdentityKey: c.remoteKey,
    });
    const theirV2 = lib.Fingerprint.new(
      1024,
      2,
      ab(c.remoteId),
      lib.PublicKey.deserialize(ab(c.remoteKey)),
      ab(c.localId),
      lib.PublicKey.deserialize(ab(c.localKey)),
    ).scannableFingerprint();
    expect(() => theirV2.compare(lib.ScannableFingerprint._fromBuffer(ab(v1.scannable)))).toThrow();
    let caught: unknown;
    try {
      compareScannableFingerprints(v1.scannable, theirV2.toBuffer());
    } catch (err) {
      caught = err;
    }
    expect(isProtocolError(caught, 'FINGERPRINT_MISMATCH')).toBe(true);
  });

  it('both accept and refuse the same iteration counts (libsignal: 2 to 1,000,000)', () => {
    const c = randomCase();
    for (const [iterations, accepted] of [
      [0, false],
      [1, false],
      [2, true],
      [3, true],
      [1_000_001, false],
    ] as const) {
      const theirs = () =>
        lib.Fingerprint.new(
          iterations,
          1,
          ab(c.localId),
          lib.PublicKey.deserialize(ab(c.localKey)),
          ab(c.remoteId),
          lib.PublicKey.deserialize(ab(c.remoteKey)),
        );
      const ours = () =>
        computeFingerprint({
          version: 1,
          iterations,
          localStableId: c.localId,
          localIdentityKey: c.localKey,
          remoteStableId: c.remoteId,
          remoteIdentityKey: c.remoteKey,
        });
      if (accepted) {
        expect(ours().displayable).toBe(theirs().displayableFingerprint().toString());
        expect(toHex(ours().scannable)).toBe(toHex(theirs().scannableFingerprint().toBuffer()));
      } else {
        expect(theirs).toThrow();
        expect(ours).toThrow(/iterations/);
      }
    }
  });
});
