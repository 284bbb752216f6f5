/**
 * Safety numbers against libsignal's published known-answer vectors
 * (rust/protocol/src/fingerprint.rs tests, v0.90.0; the same vectors as libsignal-protocol-java's
 * testVectorsVersion1/2), and the behaviour of its compare logic.
 */
import { randomBytes, x25519GenerateKeyPair } from '@qalqon/crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { serializeCurveKey } from './curve.js';
import { isProtocolError, type ProtocolErrorCode } from './errors.js';
import {
  compareScannableFingerprints,
  computeFingerprint,
  FINGERPRINT_ITERATIONS,
  formatSafetyNumber,
  parseScannableFingerprint,
  serializeScannableFingerprint,
} from './fingerprint.js';

const hex = (s: string) => Uint8Array.from(Buffer.from(s, 'hex'));
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const utf8 = (s: string) => new TextEncoder().encode(s);

// Test data transcribed from libsignal's fingerprint.rs.
const ALICE_IDENTITY = hex('0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868');
const BOB_IDENTITY = hex('05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b');
const DISPLAYABLE_FINGERPRINT_V1 = '300354477692869396892869876765458257569162576843440918079131';
const ALICE_SCANNABLE_FINGERPRINT_V1 =
  '080112220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d';
const BOB_SCANNABLE_FINGERPRINT_V1 =
  '080112220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d1a220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df';
const ALICE_SCANNABLE_FINGERPRINT_V2 =
  '080212220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df1a220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d';
const BOB_SCANNABLE_FINGERPRINT_V2 =
  '080212220a20d62cbf73a11592015b6b9f1682ac306fea3aaf3885b84d12bca631e9d4fb3a4d1a220a201e301a0353dce3dbe7684cb8336e85136cdc0ee96219494ada305d62a7bd61df';
const ALICE_STABLE_ID = utf8('+14152222222');
const BOB_STABLE_ID = utf8('+14153333333');

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

function randomIdentity(): Uint8Array {
  return serializeCurveKey(x25519GenerateKeyPair().publicKey);
}

function pair(
  version: number,
  iterations: number,
  aId: Uint8Array,
  aKey: Uint8Array,
  bId: Uint8Array,
  bKey: Uint8Array,
) {
  return {
    a: computeFingerprint({
      version,
      iterations,
      localStableId: aId,
      localIdentityKey: aKey,
      remoteStableId: bId,
      remoteIdentityKey: bKey,
    }),
    b: computeFingerprint({
      version,
      iterations,
      localStableId: bId,
      localIdentityKey: bKey,
      remoteStableId: aId,
      remoteIdentityKey: aKey,
    }),
  };
}

describe('safety numbers: libsignal known-answer vectors (fingerprint.rs)', () => {
  it('fingerprint_encodings: the scannable protobuf layout', () => {
    const l = new Uint8Array(32).fill(0x12);
    const r = new Uint8Array(32).fill(0xba);
    const encoded = serializeScannableFingerprint({ version: 2, localFingerprint: l, remoteFingerprint: r });
    expect(toHex(encoded)).toBe(`080212220a20${'12'.repeat(32)}1a220a20${'ba'.repeat(32)}`);
    expect(parseScannableFingerprint(encoded)).toEqual({
      version: 2,
      localFingerprint: l,
      remoteFingerprint: r,
    });
  });

  for (const [version, aliceHex, bobHex] of [
    [1, ALICE_SCANNABLE_FINGERPRINT_V1, BOB_SCANNABLE_FINGERPRINT_V1],
    [2, ALICE_SCANNABLE_FINGERPRINT_V2, BOB_SCANNABLE_FINGERPRINT_V2],
  ] as const) {
    it(`fingerprint_test_v${version}: displayable and scannable forms`, () => {
      const { a, b } = pair(version, 5200, ALICE_STABLE_ID, ALICE_IDENTITY, BOB_STABLE_ID, BOB_IDENTITY);
      expect(toHex(a.scannable)).toBe(aliceHex);
      expect(toHex(b.scannable)).toBe(bobHex);
      expect(a.displayable).toBe(DISPLAYABLE_FINGERPRINT_V1);
      expect(b.displayable).toBe(DISPLAYABLE_FINGERPRINT_V1);
      expect(compareScannableFingerprints(a.scannable, b.scannable)).toBe(true);
      expect(compareScannableFingerprints(b.scannable, a.scannable)).toBe(true);
    });
  }

  it('the default iteration count is 5,200', () => {
    expect(FINGERPRINT_ITERATIONS).toBe(5200);
    const fp = computeFingerprint({
      version: 1,
      localStableId: ALICE_STABLE_ID,
      localIdentityKey: ALICE_IDENTITY,
      remoteStableId: BOB_STABLE_ID,
      remoteIdentityKey: BOB_IDENTITY,
    });
    expect(toHex(fp.scannable)).toBe(ALICE_SCANNABLE_FINGERPRINT_V1);
  });

  it('fingerprint_mismatching_versions: same digits, different scannable form, compare throws', () => {
    const v1 = pair(1, 5200, ALICE_STABLE_ID, ALICE_IDENTITY, BOB_STABLE_ID, BOB_IDENTITY);
    const v2 = pair(2, 5200, BOB_STABLE_ID, BOB_IDENTITY, ALICE_STABLE_ID, ALICE_IDENTITY);
    expect(v1.a.displayable).toBe(v2.a.displayable);
    expect(toHex(v1.a.scannable)).not.toBe(toHex(v2.a.scannable));
    expectCode(() => compareScannableFingerprints(v1.a.scannable, v2.a.scannable), 'FINGERPRINT_MISMATCH');
    expectCode(() => compareScannableFingerprints(v2.b.scannable, v1.a.scannable), 'FINGERPRINT_MISMATCH');
  });
});

describe('safety numbers: compare (libsignal ScannableFingerprint::compare)', () => {
  it('fingerprint_matching_identifiers: both sides agree; our own code does not match us', () => {
    const { a, b } = pair(1, 1024, ALICE_STABLE_ID, randomIdentity(), BOB_STABLE_ID, randomIdentity());
    expect(a.displayable).toBe(b.displayable);
    expect(a.displayable).toMatch(/^[0-9]{60}$/);
    expect(compareScannableFingerprints(a.scannable, b.scannable)).toBe(true);
    expect(compareScannableFingerprints(b.scannable, a.scannable)).toBe(true);
    expect(compareScannableFingerprints(a.scannable, a.scannable)).toBe(false);
    expect(compareScannableFingerprints(b.scannable, b.scannable)).toBe(false);
  });

  it('fingerprint_mismatching_fingerprints: a man in the middle changes the number', () => {
    const aKey = randomIdentity();
    const bKey = randomIdentity();
    const mKey = randomIdentity();
    const a = pair(1, 1024, ALICE_STABLE_ID, aKey, BOB_STABLE_ID, mKey).a;
    const b = pair(1, 1024, BOB_STABLE_ID, bKey, ALICE_STABLE_ID, aKey).a;
    expect(a.displayable).not.toBe(b.displayable);
    expect(compareScannableFingerprints(a.scannable, b.scannable)).toBe(false);
    expect(compareScannableFingerprints(b.scannable, a.scannable)).toBe(false);
  });

  it('fingerprint_mismatching_identifiers: other stable ids do not match (no error: the format has no identifiers)', () => {
    const aKey = randomIdentity();
    const bKey = randomIdentity();
    const a = pair(1, 1024, utf8('+141512222222'), aKey, BOB_STABLE_ID, bKey).a;
    const b = pair(1, 1024, BOB_STABLE_ID, bKey, ALICE_STABLE_ID, aKey).a;
    expect(a.displayable).not.toBe(b.displayable);
    expect(compareScannableFingerprints(a.scannable, b.scannable)).toBe(false);
    expect(compareScannableFingerprints(b.scannable, a.scannable)).toBe(false);
  });

  it('a missing version reads as 0 (libsignal unwrap_or(0)) and mismatches', () => {
    const { a, b } = pair(1, 100, ALICE_STABLE_ID, ALICE_IDENTITY, BOB_STABLE_ID, BOB_IDENTITY);
    const noVersion = b.scannable.subarray(2); // drop 08 01
    expect(parseScannableFingerprint(noVersion).version).toBe(0);
    expectCode(() => compareScannableFingerprints(a.scannable, noVersion), 'FINGERPRINT_MISMATCH');
  });

  it('halves of another length simply do not match', () => {
    const { a, b } = pair(1, 100, ALICE_STABLE_ID, ALICE_IDENTITY, BOB_STABLE_ID, BOB_IDENTITY);
    const parsed = parseScannableFingerprint(b.scannable);
    const short = serializeScannableFingerprint({
      ...parsed,
      localFingerprint: parsed.localFingerprint.subarray(0, 31),
    });
    expect(compareScannableFingerprints(a.scannable, short)).toBe(false);
  });

  it('malformed scanned codes throw INVALID_MESSAGE; any change to a matching code makes it fail', () => {
    const { a, b } = pair(1, 100, ALICE_STABLE_ID, ALICE_IDENTITY, BOB_STABLE_ID, BOB_IDENTITY);
    expectCode(() => compareScannableFingerprints(a.scannable, new Uint8Array(0)), 'INVALID_MESSAGE');
    expectCode(
      () => compareScannableFingerprints(a.scannable, b.scannable.subarray(0, 40)),
      'INVALID_MESSAGE',
    );
    expectCode(
      () => compareScannableFingerprints(a.scannable, Uint8Array.of(...b.scannable, 0)),
      'INVALID_MESSAGE',
    );
    expectCode(
      () => compareScannableFingerprints(a.scannable, b.scannable.subarray(0, 38)),
      'INVALID_MESSAGE',
    );
    fc.assert(
      fc.property(fc.nat(b.scannable.length * 8 - 1), (bit) => {
        const flipped = b.scannable.slice();
        flipped[bit >> 3]! ^= 1 << (bit & 7);
        try {
          expect(compareScannableFingerprints(a.scannable, flipped)).toBe(false);
        } catch (err) {
          expect(
            isProtocolError(err, 'INVALID_MESSAGE') || isProtocolError(err, 'FINGERPRINT_MISMATCH'),
          ).toBe(true);
        }
      }),
      { numRuns: 200 },
    );
  });
});

describe('safety numbers: formatting', () => {
  it('prints 12 groups of 5', () => {
    expect(formatSafetyNumber(DISPLAYABLE_FINGERPRINT_V1)).toBe(
      '30035 44776 92869 39689 28698 76765 45825 75691 62576 84344 09180 79131',
    );
    expect(formatSafetyNumber(DISPLAYABLE_FINGERPRINT_V1, 4)).toBe(
      '30035 44776 92869 39689\n28698 76765 45825 75691\n62576 84344 09180 79131',
    );
  });

  it('keeps leading zeros of each 5-digit group', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4, maxLength: 20 }), (id) => {
        const fp = computeFingerprint({
          version: 1,
          iterations: 2,
          localStableId: id,
          localIdentityKey: ALICE_IDENTITY,
          remoteStableId: BOB_STABLE_ID,
          remoteIdentityKey: BOB_IDENTITY,
        });
        expect(fp.displayable).toMatch(/^[0-9]{60}$/);
        expect(formatSafetyNumber(fp.displayable).replaceAll(' ', '')).toBe(fp.displayable);
      }),
      { numRuns: 50 },
    );
  });
});

describe('safety numbers: argument checks', () => {
  const good = {
    version: 1,
    iterations: 2,
    localStableId: ALICE_STABLE_ID,
    localIdentityKey: ALICE_IDENTITY,
    remoteStableId: BOB_STABLE_ID,
    remoteIdentityKey: BOB_IDENTITY,
  };
  const bad: [string, unknown, ProtocolErrorCode][] = [
    ['input', null, 'INVALID_ARGUMENT'],
    ['input', 'x', 'INVALID_ARGUMENT'],
    ['version', { ...good, version: -1 }, 'INVALID_ARGUMENT'],
    ['version', { ...good, version: 2 ** 32 }, 'INVALID_ARGUMENT'],
    ['version', { ...good, version: 1.5 }, 'INVALID_ARGUMENT'],
    ['version', { ...good, version: '1' }, 'INVALID_ARGUMENT'],
    ['iterations', { ...good, iterations: 1 }, 'INVALID_ARGUMENT'],
    ['iterations', { ...good, iterations: 1_000_001 }, 'INVALID_ARGUMENT'],
    ['iterations', { ...good, iterations: Number.NaN }, 'INVALID_ARGUMENT'],
    ['localStableId', { ...good, localStableId: 'alice' }, 'INVALID_ARGUMENT'],
    ['remoteStableId', { ...good, remoteStableId: undefined }, 'INVALID_ARGUMENT'],
    ['localIdentityKey', { ...good, localIdentityKey: ALICE_IDENTITY.subarray(1) }, 'INVALID_KEY'],
    [
      'remoteIdentityKey',
      { ...good, remoteIdentityKey: Uint8Array.of(6, ...BOB_IDENTITY.subarray(1)) },
      'INVALID_KEY',
    ],
    ['remoteIdentityKey', { ...good, remoteIdentityKey: [5, 1, 2] }, 'INVALID_ARGUMENT'],
  ];
  for (const [label, input, code] of bad) {
    it(`computeFingerprint rejects a bad ${label} with ${code}`, () => {
      expectCode(() => computeFingerprint(input as never), code);
    });
  }

  it('the other functions check their arguments', () => {
    expectCode(() => compareScannableFingerprints('x' as never, new Uint8Array(1)), 'INVALID_ARGUMENT');
    expectCode(() => compareScannableFingerprints(new Uint8Array(1), null as never), 'INVALID_ARGUMENT');
    expectCode(() => parseScannableFingerprint([8, 1] as never), 'INVALID_ARGUMENT');
    expectCode(() => serializeScannableFingerprint(null as never), 'INVALID_ARGUMENT');
    expectCode(
      () =>
        serializeScannableFingerprint({
          version: -1,
          localFingerprint: new Uint8Array(),
          remoteFingerprint: new Uint8Array(),
        }),
      'INVALID_ARGUMENT',
    );
    expectCode(() => formatSafetyNumber('123'), 'INVALID_ARGUMENT');
    expectCode(() => formatSafetyNumber(`${'1'.repeat(59)}a`), 'INVALID_ARGUMENT');
    expectCode(() => formatSafetyNumber(DISPLAYABLE_FINGERPRINT_V1, 0), 'INVALID_ARGUMENT');
    expectCode(() => formatSafetyNumber(123 as never), 'INVALID_ARGUMENT');
  });

  it('error messages never contain key bytes', () => {
    const key = randomBytes(32);
    try {
      computeFingerprint({ ...good, localIdentityKey: Uint8Array.of(7, ...key) });
    } catch (err) {
      const msg = String((err as Error).message);
      expect(msg).not.toContain(toHex(key).slice(0, 8));
      expect(msg).not.toContain(Array.from(key.subarray(0, 4)).join(','));
    }
  });
});
