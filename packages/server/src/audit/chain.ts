/**
 * The audit log's hash chain, written once for every storage backend.
 *
 * A record's canonical bytes are UTF-8 JSON with a fixed field order holding its own seq,
 * the previous record's hash, and the entry (time, actor, action, target, outcome,
 * detail). Its hash is SHA-256 of those bytes. After every append the head (last seq and
 * hash) is signed with the server's audit key (Ed25519, a data key wrapped by the KMS), so
 * removing records from the end, or appending without the key, is noticed too.
 *
 * Backends store per record: `seq` and `at` in the clear (for ordering and `--since`), the
 * hash in the clear, and the canonical bytes sealed by the FieldSealer under
 * `auditRecordRef()`. The sealing hides actors and targets from a reader of the database;
 * the chain and the signed head are what detect edits, removals, insertions and reordering.
 */
import { ed25519PublicKey, ed25519Sign, ed25519Verify, sha256 } from '@qalqon/crypto';
import { AUDIT_ACTIONS } from '@qalqon/wire';
import { ServerError } from '../errors.js';
import type { FieldRef } from '../storage/field-sealer.js';
import type { AuditEntry, AuditRecord, AuditVerification } from '../storage/types.js';

/** The name of the data key that seeds the audit signing key. */
export const AUDIT_SIGNING_DEK = 'audit-signing';
/** `prevHash` of the first record. */
export const AUDIT_GENESIS_HASH = '0'.repeat(64);
const HEAD_DOMAIN = 'qalqon/audit-head/v1\0';
const HEAD_SIGNATURE_LEN = 64;
const MAX_TARGET_LEN = 256;
const MAX_DETAIL_KEYS = 16;
const MAX_DETAIL_VALUE_LEN = 256;
const MAX_ACTOR_KEYS = 8;
const MAX_ACTOR_VALUE_LEN = 128;
const OUTCOMES = new Set(['ok', 'denied', 'failed']);
const ACTIONS = new Set<string>(AUDIT_ACTIONS);

/**
 * Where a record's sealed bytes are bound. Not the seq: a record moved to another row must
 * still open, so the chain (which holds the seq inside) can say it was reordered.
 */
export function auditRecordRef(): FieldRef {
  return { table: 'audit_log', column: 'record', rowId: 'chain' };
}

function invalid(message: string): ServerError {
  return new ServerError('INVALID_ARGUMENT', message);
}

function checkFlat(
  label: string,
  v: unknown,
  maxKeys: number,
  maxLen: number,
): Record<string, string | number | boolean> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid(`${label} expected an object`);
  const out: Record<string, string | number | boolean> = {};
  const keys = Object.keys(v).sort();
  if (keys.length > maxKeys) throw invalid(`${label} has more than ${maxKeys} fields`);
  for (const k of keys) {
    if (!/^[A-Za-z][A-Za-z0-9_]{0,31}$/.test(k)) throw invalid(`${label} has a malformed field name`);
    const x = (v as Record<string, unknown>)[k];
    if (typeof x === 'string') {
      if (x.length > maxLen) throw invalid(`${label}.${k} is longer than ${maxLen} characters`);
    } else if (typeof x === 'number') {
      if (!Number.isSafeInteger(x)) throw invalid(`${label}.${k} expected an integer`);
    } else if (typeof x !== 'boolean') {
      throw invalid(`${label}.${k} expected a string, integer or boolean`);
    }
    out[k] = x as string | number | boolean;
  }
  return out;
}

/** Validates an entry (INVALID_ARGUMENT) and returns it with sorted actor and detail fields. */
export function checkAuditEntry(entry: AuditEntry): AuditEntry {
  if (typeof entry !== 'object' || entry === null) throw invalid('entry expected an object');
  if (!Number.isSafeInteger(entry.at) || entry.at < 0) throw invalid('entry.at expected a timestamp');
  if (typeof entry.action !== 'string' || !ACTIONS.has(entry.action))
    throw invalid('entry.action is not an audit action');
  if (typeof entry.target !== 'string' || entry.target.length < 1 || entry.target.length > MAX_TARGET_LEN) {
    throw invalid(`entry.target expected 1..${MAX_TARGET_LEN} characters`);
  }
  if (!OUTCOMES.has(entry.outcome)) throw invalid('entry.outcome expected ok, denied or failed');
  const actor = checkFlat('entry.actor', entry.actor, MAX_ACTOR_KEYS, MAX_ACTOR_VALUE_LEN) as Record<
    string,
    string | number
  >;
  if (typeof actor.kind !== 'string') throw invalid('entry.actor.kind expected a string');
  const out: AuditEntry = {
    at: entry.at,
    actor,
    action: entry.action,
    target: entry.target,
    outcome: entry.outcome,
    ...(entry.detail === undefined
      ? {}
      : { detail: checkFlat('entry.detail', entry.detail, MAX_DETAIL_KEYS, MAX_DETAIL_VALUE_LEN) }),
  };
  return out;
}

/** A record's canonical bytes: what is hashed and (sealed) stored. `entry` must be checked. */
export function auditRecordBytes(seq: number, prevHash: string, entry: AuditEntry): Uint8Array {
  const o: Record<string, unknown> = {
    v: 1,
    seq,
    prevHash,
    at: entry.at,
    actor: entry.actor,
    action: entry.action,
    target: entry.target,
    outcome: entry.outcome,
  };
  if (entry.detail !== undefined) o.detail = entry.detail;
  return new TextEncoder().encode(JSON.stringify(o));
}

export function hexOf(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

export function auditHash(recordBytes: Uint8Array): string {
  return hexOf(sha256(recordBytes));
}

/**
 * What the next record chains after: the later of the last stored row and the signed head.
 * If records were cut from the end, re-signing over the gap would hide it; chaining after
 * the head keeps it visible. A head at seq 0 names no record.
 */
export function auditPredecessor(
  last: { readonly seq: number; readonly hash: string } | undefined,
  head: { readonly seq: number; readonly hash: string } | undefined,
): { readonly seq: number; readonly hash: string } | undefined {
  return head !== undefined && head.seq > 0 && (last === undefined || head.seq > last.seq) ? head : last;
}

/** Chains a checked entry after `prev` (undefined for the first record). */
export function chainAuditRecord(
  prev: { readonly seq: number; readonly hash: string } | undefined,
  entry: AuditEntry,
): { record: AuditRecord; bytes: Uint8Array } {
  const seq = (prev?.seq ?? 0) + 1;
  const prevHash = prev?.hash ?? AUDIT_GENESIS_HASH;
  const bytes = auditRecordBytes(seq, prevHash, entry);
  return { record: { ...entry, seq, prevHash, hash: auditHash(bytes) }, bytes };
}

/** Parses canonical bytes back into a record (undefined when they are not one). */
export function parseAuditRecordBytes(bytes: Uint8Array): AuditRecord | undefined {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    return undefined;
  }
  if (typeof o !== 'object' || o === null || o.v !== 1) return undefined;
  if (!Number.isSafeInteger(o.seq) || typeof o.prevHash !== 'string' || !/^[0-9a-f]{64}$/.test(o.prevHash)) {
    return undefined;
  }
  try {
    const entry = checkAuditEntry({
      at: o.at as number,
      actor: o.actor as Record<string, string>,
      action: o.action as string,
      target: o.target as string,
      outcome: o.outcome as AuditEntry['outcome'],
      ...(o.detail === undefined ? {} : { detail: o.detail as Record<string, string> }),
    });
    return { ...entry, seq: o.seq as number, prevHash: o.prevHash, hash: auditHash(bytes) };
  } catch {
    return undefined;
  }
}

function headMessage(seq: number, hash: string): Uint8Array {
  return new TextEncoder().encode(`${HEAD_DOMAIN}${seq}\0${hash}`);
}

/** The signature over the head (seq, hash) with the audit key's 32-byte seed. */
export function signAuditHead(seed: Uint8Array, seq: number, hash: string): Uint8Array {
  return ed25519Sign(seed, headMessage(seq, hash));
}

export function auditPublicKey(seed: Uint8Array): Uint8Array {
  return ed25519PublicKey(seed);
}

/** One stored record as a backend read it, in the order of its seq column. */
export interface StoredAuditRow {
  /** The seq column. */
  readonly seq: number;
  /** The hash column (hex). */
  readonly hash: string;
  /** The opened canonical bytes; undefined when the sealed value did not open (edited). */
  readonly bytes: Uint8Array | undefined;
}

export interface StoredAuditHead {
  readonly seq: number;
  readonly hash: string;
  readonly signature: Uint8Array;
}

/**
 * Walks the stored rows (sorted by their seq column) and the signed head, and reports ok
 * or the first record that does not fit, classified:
 * - `edited`: its sealed bytes do not open, or its hash column is not the hash of its bytes,
 *   or the next record's prevHash shows its bytes were replaced;
 * - `removed`: a seq is missing in the middle of the chain;
 * - `inserted`: two records claim one seq, or records follow the signed head;
 * - `reordered`: a record is at another record's position;
 * - `truncated`: the signed head names records that are gone from the end;
 * - `head-signature`: the head is missing (while records exist) or its signature fails.
 */
export function verifyAuditRows(
  rows: readonly StoredAuditRow[],
  head: StoredAuditHead | undefined,
  publicKey: Uint8Array,
): AuditVerification {
  const fail = (
    records: number,
    seq: number,
    problem: Exclude<AuditVerification, { ok: true }>['problem'],
    message: string,
  ): AuditVerification => ({ ok: false, records, seq, problem, message });

  const parsed = rows.map((r) => (r.bytes === undefined ? undefined : parseAuditRecordBytes(r.bytes)));
  const innerSeqs = new Set<number>();
  for (const p of parsed) if (p) innerSeqs.add(p.seq);
  let prev: { seq: number; hash: string } = { seq: 0, hash: AUDIT_GENESIS_HASH };
  for (let i = 0; i < rows.length; i++) {
    const row = rows[i] as StoredAuditRow;
    const rec = parsed[i];
    const expected = prev.seq + 1;
    if (!rec)
      return fail(i, row.seq, 'edited', `record ${row.seq} does not open or is not a record: it was edited`);
    if (rec.hash !== row.hash)
      return fail(
        i,
        row.seq,
        'edited',
        `record ${row.seq}'s stored hash is not the hash of its content: it was edited`,
      );
    if (rec.seq !== expected) {
      if (rec.seq === prev.seq)
        return fail(i, rec.seq, 'inserted', `a second record claims seq ${rec.seq}: one was inserted`);
      if (rec.seq < prev.seq || innerSeqs.has(expected)) {
        return fail(
          i,
          expected,
          'reordered',
          `record ${rec.seq} stands where record ${expected} belongs: the log was reordered`,
        );
      }
      return fail(
        i,
        expected,
        'removed',
        `record ${expected}${rec.seq - 1 > expected ? `..${rec.seq - 1}` : ''} is missing: removed`,
      );
    }
    if (row.seq !== rec.seq) {
      return fail(
        i,
        rec.seq,
        'reordered',
        `record ${rec.seq} is stored at position ${row.seq}: the log was reordered`,
      );
    }
    if (rec.prevHash !== prev.hash) {
      // This record was chained to other bytes than the ones now before it.
      return prev.seq === 0
        ? fail(i, rec.seq, 'edited', `record ${rec.seq} does not start the chain: it was edited`)
        : fail(
            i,
            prev.seq,
            'edited',
            `record ${prev.seq} is not the record ${rec.seq} was chained to: it was replaced`,
          );
    }
    prev = { seq: rec.seq, hash: rec.hash };
  }
  if (head === undefined) {
    if (rows.length === 0) return { ok: true, records: 0, head: { seq: 0, hash: AUDIT_GENESIS_HASH } };
    return fail(rows.length, 1, 'head-signature', 'records exist but no signed head: it was removed');
  }
  // A signature of the wrong length is a failed signature, not an error: verify never throws on stored data.
  if (
    head.signature.length !== HEAD_SIGNATURE_LEN ||
    !ed25519Verify(publicKey, headMessage(head.seq, head.hash), head.signature)
  ) {
    return fail(
      rows.length,
      head.seq,
      'head-signature',
      'the signed head does not verify under the audit key',
    );
  }
  if (head.seq > prev.seq) {
    return fail(
      rows.length,
      prev.seq + 1,
      'truncated',
      `the signed head names record ${head.seq}, the log ends at ${prev.seq}: records were removed from the end`,
    );
  }
  if (head.seq < prev.seq) {
    return fail(
      rows.length,
      head.seq + 1,
      'inserted',
      `records after ${head.seq} were appended without the audit key`,
    );
  }
  if (head.hash !== prev.hash) {
    return fail(rows.length, head.seq, 'edited', `record ${head.seq} is not the one the head was signed for`);
  }
  return { ok: true, records: rows.length, head: { seq: prev.seq, hash: prev.hash } };
}
