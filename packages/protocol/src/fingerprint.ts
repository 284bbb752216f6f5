/**
 * Safety numbers, identical to libsignal's (rust/protocol/src/fingerprint.rs, v0.90.0; the
 * file is unchanged up to v0.103.0), so a Qalqon user and a libsignal-based client would
 * see the same number and could scan each other's codes.
 *
 * Per side ("logical fingerprint"): d = SHA-512(0x0000 ‖ key33 ‖ stableId ‖ key33), then
 * d = SHA-512(d ‖ key33) until `iterations` hashes in all (5,200 in Signal's apps). The
 * iteration count is a deliberate cost for an attacker grinding identity keys towards a
 * chosen safety number.
 *
 * Displayable form: from each side's first 30 bytes, six 5-byte big-endian numbers mod
 * 100,000, zero-padded to 5 digits — 30 digits a side; both sides concatenated, the
 * lexicographically smaller first, so both users see the same 60 digits.
 *
 * Scannable form: protobuf CombinedFingerprints {1 version, 2 {1 local[0..32]},
 * 3 {1 remote[0..32]}} (proto/fingerprint.proto). Comparing a scanned code checks the
 * version (a mismatch throws, as in libsignal) and then that their local half is our remote
 * half and their remote half our local half, in constant time.
 */
import { constantTimeEqual, sha512Parts } from '@qalqon/crypto';
import { parseCurveKey } from './curve.js';
import { ProtocolError } from './errors.js';
import {
  decodeMessage,
  encodeMessage,
  type FieldValue,
  requireBytes,
  WIRE_LEN,
  WIRE_VARINT,
} from './protobuf.js';
import { argError, expectBytes, expectUint32 } from './validate.js';

/** The iteration count Signal's apps use and libsignal's test vectors are made with. */
export const FINGERPRINT_ITERATIONS = 5200;
/** libsignal refuses `iterations <= 1 || iterations > 1_000_000` (Fingerprint::get_fingerprint). */
export const FINGERPRINT_MIN_ITERATIONS = 2;
export const FINGERPRINT_MAX_ITERATIONS = 1_000_000;
/** Digits per side of the displayable safety number. */
const DIGITS_PER_SIDE = 30;
/** Bytes of each side's digest in the scannable form. */
export const SCANNABLE_FINGERPRINT_HALF_LEN = 32;
/** Leading bytes of the first hash input: libsignal's fingerprint format version 0. */
const FINGERPRINT_FORMAT_VERSION = new Uint8Array(2);

export interface FingerprintInput {
  /** Scannable-form version (libsignal uses 1 and 2). Any uint32; it does not change the digits. */
  readonly version: number;
  /** Hash iterations per side; defaults to FINGERPRINT_ITERATIONS. */
  readonly iterations?: number;
  /** Our stable identifier (e.g. a user id's bytes); any length. */
  readonly localStableId: Uint8Array;
  /** Our identity key, 0x05 ‖ 32 bytes. */
  readonly localIdentityKey: Uint8Array;
  readonly remoteStableId: Uint8Array;
  readonly remoteIdentityKey: Uint8Array;
}

export interface Fingerprint {
  /** 60 decimal digits, the same for both users. */
  readonly displayable: string;
  /** The CombinedFingerprints protobuf our QR code carries; from our point of view (local first). */
  readonly scannable: Uint8Array;
}

export interface ScannableFingerprint {
  readonly version: number;
  readonly localFingerprint: Uint8Array;
  readonly remoteFingerprint: Uint8Array;
}

/** One side's 64-byte digest (libsignal's Fingerprint::get_fingerprint). */
function logicalFingerprint(iterations: number, stableId: Uint8Array, identityKey: Uint8Array): Uint8Array {
  let digest = sha512Parts([FINGERPRINT_FORMAT_VERSION, identityKey, stableId, identityKey]);
  for (let i = 1; i < iterations; i++) digest = sha512Parts([digest, identityKey]);
  return digest;
}

/** 30 digits from the first 30 bytes of a digest: six 40-bit big-endian chunks mod 100,000. */
function displayDigits(digest: Uint8Array): string {
  let out = '';
  for (let chunk = 0; chunk < DIGITS_PER_SIDE / 5; chunk++) {
    // 40-bit values are exact in a double (< 2^53).
    let value = 0;
    for (let i = 0; i < 5; i++) value = value * 256 + digest[chunk * 5 + i]!;
    out += String(value % 100_000).padStart(5, '0');
  }
  return out;
}

/** Encodes a scannable fingerprint as libsignal's CombinedFingerprints protobuf. */
export function serializeScannableFingerprint(fingerprint: ScannableFingerprint): Uint8Array {
  if (typeof fingerprint !== 'object' || fingerprint === null)
    argError('"fingerprint" expected ScannableFingerprint');
  expectUint32(fingerprint.version, 'fingerprint.version');
  expectBytes(fingerprint.localFingerprint, 'fingerprint.localFingerprint');
  expectBytes(fingerprint.remoteFingerprint, 'fingerprint.remoteFingerprint');
  return encodeMessage([
    [1, fingerprint.version],
    [2, encodeMessage([[1, fingerprint.localFingerprint]])],
    [3, encodeMessage([[1, fingerprint.remoteFingerprint]])],
  ]);
}

const COMBINED_SPEC = { 1: WIRE_VARINT, 2: WIRE_LEN, 3: WIRE_LEN } as const;
const LOGICAL_SPEC = { 1: WIRE_LEN } as const;

function logicalContent(fields: Map<number, FieldValue>, field: number, label: string): Uint8Array {
  const inner = fields.get(field);
  if (!(inner instanceof Uint8Array)) {
    throw new ProtocolError('INVALID_MESSAGE', `scannable fingerprint is missing the ${label} fingerprint`);
  }
  return requireBytes(decodeMessage(inner, LOGICAL_SPEC), 1);
}

/**
 * Decodes a CombinedFingerprints protobuf. A missing version reads as 0, as in libsignal
 * (`version.unwrap_or(0)` in compare). Throws INVALID_MESSAGE on a malformed protobuf or a
 * missing half. The strict decoder also refuses unknown fields, which libsignal would skip;
 * libsignal never writes any. Halves of any length are accepted, as in libsignal (they
 * simply fail to match).
 */
export function parseScannableFingerprint(bytes: Uint8Array): ScannableFingerprint {
  expectBytes(bytes, 'bytes');
  const fields = decodeMessage(bytes, COMBINED_SPEC);
  const version = fields.get(1);
  if (version !== undefined && (typeof version !== 'number' || version > 0xffffffff)) {
    throw new ProtocolError('INVALID_MESSAGE', 'scannable fingerprint version out of range');
  }
  return {
    version: version ?? 0,
    localFingerprint: logicalContent(fields, 2, 'local').slice(),
    remoteFingerprint: logicalContent(fields, 3, 'remote').slice(),
  };
}

/**
 * Computes both forms of the safety number for us (local) and a contact (remote), as
 * libsignal's Fingerprint::new(version, iterations, localId, localKey, remoteId, remoteKey).
 * (The JS binding's Fingerprint.new takes iterations first; this takes named fields.)
 */
export function computeFingerprint(input: FingerprintInput): Fingerprint {
  if (typeof input !== 'object' || input === null) argError('"input" expected FingerprintInput');
  expectUint32(input.version, 'version');
  const iterations = input.iterations ?? FINGERPRINT_ITERATIONS;
  if (
    typeof iterations !== 'number' ||
    !Number.isInteger(iterations) ||
    iterations < FINGERPRINT_MIN_ITERATIONS ||
    iterations > FINGERPRINT_MAX_ITERATIONS
  ) {
    argError(
      `"iterations" expected an integer in [${FINGERPRINT_MIN_ITERATIONS}, ${FINGERPRINT_MAX_ITERATIONS}], got ${String(iterations)}`,
    );
  }
  expectBytes(input.localStableId, 'localStableId');
  expectBytes(input.remoteStableId, 'remoteStableId');
  // Hashed in their serialised 33-byte form, as libsignal's IdentityKey::serialize.
  parseCurveKey(input.localIdentityKey, 'localIdentityKey');
  parseCurveKey(input.remoteIdentityKey, 'remoteIdentityKey');
  const local = logicalFingerprint(iterations, input.localStableId, input.localIdentityKey);
  const remote = logicalFingerprint(iterations, input.remoteStableId, input.remoteIdentityKey);
  const localDigits = displayDigits(local);
  const remoteDigits = displayDigits(remote);
  return {
    displayable: localDigits < remoteDigits ? localDigits + remoteDigits : remoteDigits + localDigits,
    scannable: serializeScannableFingerprint({
      version: input.version,
      localFingerprint: local.slice(0, SCANNABLE_FINGERPRINT_HALF_LEN),
      remoteFingerprint: remote.slice(0, SCANNABLE_FINGERPRINT_HALF_LEN),
    }),
  };
}

/**
 * Compares the code we scanned from a contact (`theirs`) with our own scannable
 * fingerprint (`ours`, from computeFingerprint), as libsignal's ScannableFingerprint::compare:
 * true when their local half equals our remote half and their remote half our local half.
 * Both halves are compared in constant time and both comparisons always run. Throws
 * FINGERPRINT_MISMATCH when the versions differ (libsignal's VersionMismatch) and
 * INVALID_MESSAGE when either encoding is malformed.
 *
 * libsignal's current format carries no identifiers (the field was removed from
 * fingerprint.proto), so a code made for other identities is not an error but simply does
 * not match: false.
 */
export function compareScannableFingerprints(ours: Uint8Array, theirs: Uint8Array): boolean {
  expectBytes(ours, 'ours');
  expectBytes(theirs, 'theirs');
  const mine = parseScannableFingerprint(ours);
  const other = parseScannableFingerprint(theirs);
  if (other.version !== mine.version) {
    throw new ProtocolError(
      'FINGERPRINT_MISMATCH',
      `scannable fingerprint version ${other.version} cannot be compared with version ${mine.version}`,
    );
  }
  const same1 = constantTimeEqual(other.localFingerprint, mine.remoteFingerprint);
  const same2 = constantTimeEqual(other.remoteFingerprint, mine.localFingerprint);
  return same1 && same2;
}

/**
 * Formats a 60-digit safety number as 12 groups of 5 digits separated by spaces, with a
 * line break after every `groupsPerLine` groups (default: all on one line; Signal's apps
 * show 4 per line).
 */
export function formatSafetyNumber(displayable: string, groupsPerLine = 12): string {
  if (typeof displayable !== 'string' || !/^[0-9]{60}$/.test(displayable)) {
    argError(`"displayable" expected a string of 60 digits, got length=${String(displayable?.length)}`);
  }
  if (!Number.isInteger(groupsPerLine) || groupsPerLine < 1 || groupsPerLine > 12) {
    argError(`"groupsPerLine" expected an integer in [1, 12], got ${String(groupsPerLine)}`);
  }
  const groups = displayable.match(/[0-9]{5}/g)!;
  const lines: string[] = [];
  for (let i = 0; i < groups.length; i += groupsPerLine)
    lines.push(groups.slice(i, i + groupsPerLine).join(' '));
  return lines.join('\n');
}
