/**
 * The audit hash chain on its own: canonical bytes that do not drift, entry checks, the
 * signed head, and how `verifyAuditRows` classifies every kind of damage to synthetic rows
 * (the storage conformance suite does the same against real databases).
 */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ServerError } from '../errors.js';
import type { AuditEntry, AuditRecord } from '../storage/types.js';
import {
  AUDIT_GENESIS_HASH,
  auditHash,
  auditPublicKey,
  auditRecordBytes,
  auditRecordRef,
  chainAuditRecord,
  checkAuditEntry,
  parseAuditRecordBytes,
  type StoredAuditHead,
  type StoredAuditRow,
  signAuditHead,
  verifyAuditRows,
} from './chain.js';

const seed = new Uint8Array(randomBytes(32));
const publicKey = auditPublicKey(seed);

function entry(i: number, overrides: Partial<AuditEntry> = {}): AuditEntry {
  return {
    at: 1_750_000_000_000 + i,
    actor: { kind: 'device', userName: 'alice', userId: 'a'.repeat(32), deviceId: 2 },
    action: 'device.add',
    target: `device:alice/${i}`,
    outcome: 'ok',
    ...overrides,
  };
}

/** A chain of `n` records with their bytes, as a backend would store them, and its signed head. */
function chain(n: number): { rows: StoredAuditRow[]; records: AuditRecord[]; head: StoredAuditHead } {
  const rows: StoredAuditRow[] = [];
  const records: AuditRecord[] = [];
  let prev: AuditRecord | undefined;
  for (let i = 1; i <= n; i++) {
    const { record, bytes } = chainAuditRecord(prev, checkAuditEntry(entry(i)));
    rows.push({ seq: record.seq, hash: record.hash, bytes });
    records.push(record);
    prev = record;
  }
  const last = records[n - 1];
  const head = last
    ? { seq: last.seq, hash: last.hash, signature: signAuditHead(seed, last.seq, last.hash) }
    : { seq: 0, hash: AUDIT_GENESIS_HASH, signature: signAuditHead(seed, 0, AUDIT_GENESIS_HASH) };
  return { rows, records, head };
}

function invalid(fn: () => unknown): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe('INVALID_ARGUMENT');
}

describe('canonical bytes', () => {
  it('are a fixed JSON layout, independent of the order the caller wrote fields in', () => {
    const a = checkAuditEntry(entry(1, { detail: { role: 'auditor', count: 3, scoped: true } }));
    const b = checkAuditEntry({
      outcome: 'ok',
      target: 'device:alice/1',
      detail: { scoped: true, role: 'auditor', count: 3 },
      action: 'device.add',
      actor: { userId: 'a'.repeat(32), deviceId: 2, kind: 'device', userName: 'alice' },
      at: 1_750_000_000_001,
    });
    const bytes = auditRecordBytes(1, AUDIT_GENESIS_HASH, a);
    expect(auditRecordBytes(1, AUDIT_GENESIS_HASH, b)).toEqual(bytes);
    // Pinned: a change here breaks every existing audit log, so it must be deliberate.
    expect(new TextDecoder().decode(bytes)).toBe(
      `{"v":1,"seq":1,"prevHash":"${'0'.repeat(64)}","at":1750000000001,` +
        `"actor":{"deviceId":2,"kind":"device","userId":"${'a'.repeat(32)}","userName":"alice"},` +
        `"action":"device.add","target":"device:alice/1","outcome":"ok",` +
        `"detail":{"count":3,"role":"auditor","scoped":true}}`,
    );
    expect(auditHash(bytes)).toBe(createHash('sha256').update(bytes).digest('hex'));
  });

  it('leave out an absent detail, and parse back to the same record', () => {
    const { record, bytes } = chainAuditRecord(undefined, checkAuditEntry(entry(1)));
    expect(new TextDecoder().decode(bytes)).not.toContain('detail');
    expect(record).toMatchObject({ seq: 1, prevHash: AUDIT_GENESIS_HASH, hash: auditHash(bytes) });
    expect(parseAuditRecordBytes(bytes)).toEqual(record);
    const next = chainAuditRecord(record, checkAuditEntry(entry(2, { detail: { reason: 'x' } })));
    expect(next.record).toMatchObject({ seq: 2, prevHash: record.hash, detail: { reason: 'x' } });
    expect(parseAuditRecordBytes(next.bytes)).toEqual(next.record);
  });

  it('parse nothing that is not a record', () => {
    const enc = (s: string) => new TextEncoder().encode(s);
    const good = JSON.parse(
      new TextDecoder().decode(chainAuditRecord(undefined, checkAuditEntry(entry(1))).bytes),
    );
    for (const bad of [
      new Uint8Array([0xff, 0xfe]),
      enc('not json'),
      enc('null'),
      enc('[1,2]'),
      enc(JSON.stringify({ ...good, v: 2 })),
      enc(JSON.stringify({ ...good, seq: 1.5 })),
      enc(JSON.stringify({ ...good, prevHash: 'zz' })),
      enc(JSON.stringify({ ...good, action: 'party' })),
      enc(JSON.stringify({ ...good, actor: {} })),
    ]) {
      expect(parseAuditRecordBytes(bad)).toBeUndefined();
    }
  });

  it('are sealed under one ref that does not name the seq', () => {
    expect(auditRecordRef()).toEqual({ table: 'audit_log', column: 'record', rowId: 'chain' });
  });
});

describe('checkAuditEntry', () => {
  it('refuses malformed entries with INVALID_ARGUMENT', () => {
    const bad: unknown[] = [
      null,
      'entry',
      { ...entry(1), at: -1 },
      { ...entry(1), at: 1.5 },
      { ...entry(1), action: 'party' },
      { ...entry(1), target: '' },
      { ...entry(1), target: 'x'.repeat(257) },
      { ...entry(1), target: 7 },
      { ...entry(1), outcome: 'maybe' },
      { ...entry(1), actor: null },
      { ...entry(1), actor: [] },
      { ...entry(1), actor: { userName: 'alice' } },
      { ...entry(1), actor: { kind: 3 } },
      { ...entry(1), actor: { kind: 'server', 'bad key': 'x' } },
      { ...entry(1), actor: { kind: 'server', a: 'x'.repeat(129) } },
      { ...entry(1), actor: Object.fromEntries(Array.from({ length: 9 }, (_, i) => [`k${i}`, 'x'])) },
      { ...entry(1), detail: { nested: { a: 1 } } },
      { ...entry(1), detail: { n: 1.5 } },
      { ...entry(1), detail: { s: 'x'.repeat(257) } },
      { ...entry(1), detail: Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, i])) },
    ];
    for (const e of bad) invalid(() => checkAuditEntry(e as AuditEntry));
  });

  it('accepts the limits exactly', () => {
    const e = checkAuditEntry({
      ...entry(1),
      target: 'x'.repeat(256),
      detail: Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, 'y'.repeat(256)])),
    });
    expect(e.target).toHaveLength(256);
    expect(Object.keys(e.detail ?? {})).toHaveLength(16);
  });
});

describe('the signed head', () => {
  it('verifies under its own key only, and binds seq and hash', () => {
    const { rows, head } = chain(3);
    expect(verifyAuditRows(rows, head, publicKey)).toMatchObject({ ok: true, records: 3 });
    const other = auditPublicKey(new Uint8Array(randomBytes(32)));
    expect(verifyAuditRows(rows, head, other)).toMatchObject({
      ok: false,
      problem: 'head-signature',
      seq: 3,
    });
    // A signature over another head does not carry over.
    const moved = { ...head, signature: signAuditHead(seed, 2, head.hash) };
    expect(verifyAuditRows(rows, moved, publicKey)).toMatchObject({ ok: false, problem: 'head-signature' });
  });

  it('a signature of the wrong length is a failed verification, not a throw', () => {
    const { rows, head } = chain(2);
    for (const signature of [new Uint8Array(0), head.signature.subarray(0, 63), new Uint8Array(65)]) {
      expect(verifyAuditRows(rows, { ...head, signature }, publicKey)).toMatchObject({
        ok: false,
        problem: 'head-signature',
        seq: 2,
      });
    }
  });
});

describe('verifyAuditRows', () => {
  const verify = (rows: StoredAuditRow[], head: StoredAuditHead | undefined) =>
    verifyAuditRows(rows, head, publicKey);

  it('accepts an intact chain, and an empty log without a head', () => {
    const { rows, head, records } = chain(5);
    expect(verify(rows, head)).toEqual({ ok: true, records: 5, head: { seq: 5, hash: records[4]?.hash } });
    expect(verify([], undefined)).toEqual({
      ok: true,
      records: 0,
      head: { seq: 0, hash: AUDIT_GENESIS_HASH },
    });
  });

  it('edited: bytes that do not open, a wrong hash column, or bytes that are not a record', () => {
    const { rows, head } = chain(5);
    const at = (i: number, row: Partial<StoredAuditRow>) =>
      rows.map((r, j) => (j === i ? { ...r, ...row } : r));
    expect(verify(at(2, { bytes: undefined }), head)).toMatchObject({
      ok: false,
      problem: 'edited',
      seq: 3,
      records: 2,
    });
    expect(verify(at(3, { hash: 'ab'.repeat(32) }), head)).toMatchObject({ problem: 'edited', seq: 4 });
    const junk = new TextEncoder().encode('{"v":1}');
    expect(verify(at(1, { bytes: junk, hash: auditHash(junk) }), head)).toMatchObject({
      problem: 'edited',
      seq: 2,
    });
  });

  it('edited: a record replaced by a consistent one is caught by its successor, or the last by the head', () => {
    const { rows, head, records } = chain(5);
    const forged = chainAuditRecord(records[1], checkAuditEntry(entry(99)));
    const mid = rows.map((r, j) => (j === 2 ? { seq: 3, hash: forged.record.hash, bytes: forged.bytes } : r));
    expect(verify(mid, head)).toMatchObject({ problem: 'edited', seq: 3, records: 3 });
    const lastForged = chainAuditRecord(records[3], checkAuditEntry(entry(99)));
    const last = rows.map((r, j) =>
      j === 4 ? { seq: 5, hash: lastForged.record.hash, bytes: lastForged.bytes } : r,
    );
    expect(verify(last, head)).toMatchObject({ problem: 'edited', seq: 5 });
    // A first record that does not start from the genesis hash.
    const notFirst = chainAuditRecord({ seq: 0, hash: 'cd'.repeat(32) }, checkAuditEntry(entry(1)));
    const first = rows.map((r, j) =>
      j === 0 ? { seq: 1, hash: notFirst.record.hash, bytes: notFirst.bytes } : r,
    );
    expect(verify(first, head)).toMatchObject({ problem: 'edited', seq: 1 });
  });

  it('removed: a gap in the middle, named by its first missing seq', () => {
    const { rows, head } = chain(6);
    expect(verify([...rows.slice(0, 2), ...rows.slice(3)], head)).toMatchObject({
      problem: 'removed',
      seq: 3,
    });
    const two = verify([...rows.slice(0, 1), ...rows.slice(3)], head);
    expect(two).toMatchObject({ problem: 'removed', seq: 2 });
    if (!two.ok) expect(two.message).toContain('2..3');
    expect(verify(rows.slice(1), head)).toMatchObject({ problem: 'removed', seq: 1 });
  });

  it('truncated: the head names records past the end', () => {
    const { rows, head } = chain(6);
    expect(verify(rows.slice(0, 4), head)).toMatchObject({ problem: 'truncated', seq: 5, records: 4 });
    expect(verify([], head)).toMatchObject({ problem: 'truncated', seq: 1, records: 0 });
  });

  it('inserted: records after the signed head, or two records on one seq', () => {
    const { rows, head, records } = chain(5);
    const extra = chainAuditRecord(records[4], checkAuditEntry(entry(6)));
    const appended = [...rows, { seq: 6, hash: extra.record.hash, bytes: extra.bytes }];
    expect(verify(appended, head)).toMatchObject({ problem: 'inserted', seq: 6, records: 6 });
    // A forged record chained after record 2 and the rest shifted up by one.
    const forged = chainAuditRecord(records[1], checkAuditEntry(entry(99)));
    const shifted = [
      ...rows.slice(0, 2),
      { seq: 3, hash: forged.record.hash, bytes: forged.bytes },
      ...rows.slice(2).map((r) => ({ ...r, seq: r.seq + 1 })),
    ];
    expect(verify(shifted, head)).toMatchObject({ problem: 'inserted', seq: 3 });
  });

  it('reordered: a record at another record\u2019s position', () => {
    const { rows, head } = chain(5);
    const swap = (a: number, b: number) =>
      rows
        .map((r) => (r.seq === a ? { ...r, seq: b } : r.seq === b ? { ...r, seq: a } : r))
        .sort((x, y) => x.seq - y.seq);
    expect(verify(swap(2, 4), head)).toMatchObject({ problem: 'reordered', seq: 2 });
    expect(verify(swap(1, 2), head)).toMatchObject({ problem: 'reordered', seq: 1 });
    expect(verify(swap(4, 5), head)).toMatchObject({ problem: 'reordered', seq: 4 });
    // A record whose seq column was changed although it stands in order.
    const moved = rows.map((r) => (r.seq === 5 ? { ...r, seq: 9 } : r));
    expect(verify(moved, head)).toMatchObject({ problem: 'reordered', seq: 5 });
  });

  it('head-signature: records without a signed head', () => {
    const { rows } = chain(3);
    expect(verify(rows, undefined)).toMatchObject({
      ok: false,
      problem: 'head-signature',
      seq: 1,
      records: 3,
    });
  });

  it('edited: a validly signed head over other bytes than the last record', () => {
    const { rows, records } = chain(3);
    const other = 'ef'.repeat(32);
    const head = { seq: 3, hash: other, signature: signAuditHead(seed, 3, other) };
    expect(verify(rows, head)).toMatchObject({ problem: 'edited', seq: 3 });
    expect(records[2]?.hash).not.toBe(other);
  });
});
