/**
 * A minimal, bounds-checked protobuf codec for the handful of messages libsignal puts on
 * the wire (https://protobuf.dev/programming-guides/encoding/). Only the wire types those
 * messages use are accepted: VARINT (0) and LEN (2). Decoding is strict where libsignal's
 * decoder is lenient: a field may appear at most once and only fields the caller declares
 * are accepted, so every message has exactly one encoding and appended or duplicated
 * fields are rejected instead of silently merged.
 */
import { ProtocolError } from './errors.js';

export const WIRE_VARINT = 0;
export const WIRE_LEN = 2;

/** One decoded field: a number for VARINT fields, a view into the input for LEN fields. */
export type FieldValue = number | Uint8Array;

/** A field declaration: its wire type. */
export type FieldSpec = Readonly<Record<number, typeof WIRE_VARINT | typeof WIRE_LEN>>;

function invalid(what: string): never {
  throw new ProtocolError('INVALID_MESSAGE', `malformed protobuf: ${what}`);
}

/**
 * Decodes `bytes` into a map from field number to value. Throws INVALID_MESSAGE on a
 * truncated varint or length, an undeclared field, a wrong wire type, a duplicate field,
 * or a varint above 2^53 - 1. LEN values are subarrays of `bytes` (no copy).
 */
export function decodeMessage(bytes: Uint8Array, spec: FieldSpec): Map<number, FieldValue> {
  const out = new Map<number, FieldValue>();
  let pos = 0;
  const end = bytes.length;
  const readVarint = (): number => {
    let result = 0;
    let shift = 1;
    for (let i = 0; i < 8; i++) {
      if (pos >= end) invalid('truncated varint');
      const b = bytes[pos++]!;
      result += (b & 0x7f) * shift;
      if ((b & 0x80) === 0) {
        // A varint must be minimal: a trailing zero byte would give a second encoding.
        if (b === 0 && i > 0) invalid('non-minimal varint');
        if (result > Number.MAX_SAFE_INTEGER) invalid('varint too large');
        return result;
      }
      shift *= 128;
    }
    return invalid('varint too large');
  };
  while (pos < end) {
    const key = readVarint();
    const field = Math.floor(key / 8);
    const wireType = key & 7;
    if (field === 0) invalid('field number 0');
    const expected = spec[field];
    if (expected === undefined) invalid(`unexpected field ${field}`);
    if (expected !== wireType) invalid(`field ${field} has wire type ${wireType}`);
    if (out.has(field)) invalid(`duplicate field ${field}`);
    if (wireType === WIRE_VARINT) {
      out.set(field, readVarint());
    } else {
      const len = readVarint();
      if (len > end - pos) invalid(`field ${field} length ${len} exceeds the message`);
      out.set(field, bytes.subarray(pos, pos + len));
      pos += len;
    }
  }
  return out;
}

/** The VARINT field `field`, or throws INVALID_MESSAGE if absent or above `max`. */
export function requireUint(fields: Map<number, FieldValue>, field: number, max = 0xffffffff): number {
  const v = fields.get(field);
  if (typeof v !== 'number') invalid(`missing field ${field}`);
  if (v > max) invalid(`field ${field} out of range`);
  return v;
}

/** The VARINT field `field`, undefined if absent; throws INVALID_MESSAGE above `max`. */
export function optionalUint(
  fields: Map<number, FieldValue>,
  field: number,
  max = 0xffffffff,
): number | undefined {
  const v = fields.get(field);
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || v > max) invalid(`field ${field} out of range`);
  return v;
}

/** The LEN field `field`; throws INVALID_MESSAGE if absent or not of length `length` (when given). */
export function requireBytes(fields: Map<number, FieldValue>, field: number, length?: number): Uint8Array {
  const v = fields.get(field);
  if (!(v instanceof Uint8Array)) invalid(`missing field ${field}`);
  if (length !== undefined && v.length !== length) invalid(`field ${field} has length ${v.length}`);
  return v;
}

/** The LEN field `field`, undefined if absent; throws if present with the wrong length (when given). */
export function optionalBytes(
  fields: Map<number, FieldValue>,
  field: number,
  length?: number,
): Uint8Array | undefined {
  const v = fields.get(field);
  if (v === undefined) return undefined;
  if (!(v instanceof Uint8Array)) invalid(`field ${field} has the wrong type`);
  if (length !== undefined && v.length !== length) invalid(`field ${field} has length ${v.length}`);
  return v;
}

function varintLength(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function writeVarint(out: Uint8Array, pos: number, v: number): number {
  while (v >= 128) {
    out[pos++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  out[pos++] = v;
  return pos;
}

/**
 * One field to encode. Fields are written in the order given (libsignal writes them in
 * field-number order; callers that need byte-identical output pass them that way).
 * `undefined` values are skipped, so optional fields can be listed unconditionally.
 */
export type EncodeField = readonly [field: number, value: number | Uint8Array | undefined];

export function encodeMessage(fields: readonly EncodeField[]): Uint8Array {
  let size = 0;
  for (const [field, value] of fields) {
    if (value === undefined) continue;
    if (typeof value === 'number') {
      if (!Number.isSafeInteger(value) || value < 0) {
        throw new ProtocolError('INVALID_ARGUMENT', `protobuf field ${field} must be a non-negative integer`);
      }
      size += varintLength(field * 8) + varintLength(value);
    } else {
      size += varintLength(field * 8 + WIRE_LEN) + varintLength(value.length) + value.length;
    }
  }
  const out = new Uint8Array(size);
  let pos = 0;
  for (const [field, value] of fields) {
    if (value === undefined) continue;
    if (typeof value === 'number') {
      pos = writeVarint(out, pos, field * 8);
      pos = writeVarint(out, pos, value);
    } else {
      pos = writeVarint(out, pos, field * 8 + WIRE_LEN);
      pos = writeVarint(out, pos, value.length);
      out.set(value, pos);
      pos += value.length;
    }
  }
  return out;
}
