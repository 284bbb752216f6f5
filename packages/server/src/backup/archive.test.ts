/**
 * The archive format with a real local KMS key file: round trips at segment boundaries,
 * every kind of tampering (header, segment, truncation, extension, reordering, a header
 * from another archive), the recovery key, and the payload container.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from '@qalqon/crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { isServerError } from '../errors.js';
import { LocalKms } from '../kms/local-kms.js';
import {
  formatRecoveryKey,
  MIN_SEGMENT_SIZE,
  newArchive,
  newRecoveryKey,
  openArchiveKey,
  openSegments,
  parseRecoveryKey,
  readArchiveHeader,
} from './archive.js';
import { type PayloadEntry, PayloadReader, payloadBytes, payloadLength } from './payload.js';

const dirs: string[] = [];
const kmses: LocalKms[] = [];
afterEach(async () => {
  for (const k of kmses.splice(0)) await k.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'qalqon-archive-'));
  dirs.push(d);
  return d;
}

async function kmsIn(dir: string): Promise<LocalKms> {
  const k = await LocalKms.create(join(dir, 'kms', 'kms-master.key'));
  kmses.push(k);
  return k;
}

const SEG = MIN_SEGMENT_SIZE;

async function writeArchive(
  path: string,
  kms: LocalKms,
  payload: Uint8Array,
  recoveryKey?: Uint8Array,
): Promise<{ headerLen: number }> {
  const a = await newArchive({
    kind: 'export',
    hostname: 'chat.example',
    payloadBytes: payload.length,
    kms,
    segmentSize: SEG,
    ...(recoveryKey ? { recoveryKey } : {}),
  });
  // Feed it in awkward chunk sizes, so segment assembly is exercised.
  const chunks: Uint8Array[] = [];
  for (let off = 0; off < payload.length; off += 1000) chunks.push(payload.subarray(off, off + 1000));
  const parts: Uint8Array[] = [a.headerBytes];
  for await (const s of a.seal(chunks)) parts.push(s);
  const bytes = Buffer.concat(parts);
  expect(bytes.length).toBe(a.totalBytes);
  writeFileSync(path, bytes);
  return { headerLen: a.headerBytes.length };
}

async function readAll(path: string, source: { kms?: LocalKms; recoveryKey?: Uint8Array }): Promise<Buffer> {
  const file = readArchiveHeader(path);
  const key = await openArchiveKey(file, source);
  const out: Uint8Array[] = [];
  for (const s of openSegments(file, key)) out.push(s);
  return Buffer.concat(out);
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    if (isServerError(err)) return err.code;
    throw err;
  }
  return 'no error';
}

describe('archive format', () => {
  it('round-trips payloads at and around segment boundaries', async () => {
    const dir = tempDir();
    const kms = await kmsIn(dir);
    for (const len of [0, 1, SEG - 1, SEG, SEG + 1, 3 * SEG, 3 * SEG + 17]) {
      const payload = randomBytes(len);
      const path = join(dir, `a-${len}.qarc`);
      await writeArchive(path, kms, payload);
      expect(Buffer.compare(await readAll(path, { kms }), Buffer.from(payload))).toBe(0);
      // The plaintext does not appear in the file.
      if (len >= 64) expect(readFileSync(path).includes(Buffer.from(payload.subarray(0, 64)))).toBe(false);
    }
  });

  it('refuses a sealer fed more or less than announced', async () => {
    const kms = await kmsIn(tempDir());
    const short = await newArchive({
      kind: 'backup',
      hostname: 'h',
      payloadBytes: 10,
      kms,
      segmentSize: SEG,
    });
    await expect(async () => {
      for await (const _ of short.seal([new Uint8Array(9)])) void _;
    }).rejects.toThrow(/shorter/);
    const long = await newArchive({ kind: 'backup', hostname: 'h', payloadBytes: 10, kms, segmentSize: SEG });
    await expect(async () => {
      for await (const _ of long.seal([new Uint8Array(11)])) void _;
    }).rejects.toThrow(/longer/);
  });

  it('rejects every kind of tampering', async () => {
    const dir = tempDir();
    const kms = await kmsIn(dir);
    const payload = randomBytes(4 * SEG + 100);
    const path = join(dir, 'good.qarc');
    const { headerLen } = await writeArchive(path, kms, payload);
    const good = readFileSync(path);
    const seg = SEG + 16;
    const variant = async (name: string, bytes: Buffer) => {
      const p = join(dir, `${name}.qarc`);
      writeFileSync(p, bytes);
      return code(readAll(p, { kms }));
    };
    const flip = (at: number) => {
      const b = Buffer.from(good);
      b[at]! ^= 0x01;
      return b;
    };
    // A byte of the header's JSON (inside the hostname): the header hash changes, so every segment fails.
    const hostAt = good.indexOf('chat.example');
    expect(await variant('header', flip(hostAt))).toBe('ARCHIVE_CORRUPT');
    // The magic.
    expect(await variant('magic', flip(0))).toBe('ARCHIVE_INVALID');
    // The wrapped key in the header.
    const wrappedAt = good.indexOf('"wrapped":"') + 12;
    expect(['ARCHIVE_CORRUPT', 'ARCHIVE_KEY_REJECTED', 'ARCHIVE_INVALID']).toContain(
      await variant('wrapped', flip(wrappedAt)),
    );
    expect(await variant('middle', flip(headerLen + 2 * seg + 100))).toBe('ARCHIVE_CORRUPT');
    expect(await variant('tag', flip(headerLen + seg - 1))).toBe('ARCHIVE_CORRUPT');
    expect(await variant('last', flip(good.length - 1))).toBe('ARCHIVE_CORRUPT');
    expect(await variant('truncated', good.subarray(0, good.length - 1))).toBe('ARCHIVE_CORRUPT');
    expect(await variant('truncated-at-boundary', good.subarray(0, headerLen + 2 * seg))).toBe(
      'ARCHIVE_CORRUPT',
    );
    expect(await variant('header-only', good.subarray(0, headerLen))).toBe('ARCHIVE_CORRUPT');
    expect(await variant('appended', Buffer.concat([good, Buffer.from([0])]))).toBe('ARCHIVE_CORRUPT');
    expect(
      await variant('appended-segment', Buffer.concat([good, good.subarray(headerLen, headerLen + seg)])),
    ).toBe('ARCHIVE_CORRUPT');
    const swapped = Buffer.concat([
      good.subarray(0, headerLen),
      good.subarray(headerLen + seg, headerLen + 2 * seg),
      good.subarray(headerLen, headerLen + seg),
      good.subarray(headerLen + 2 * seg),
    ]);
    expect(swapped.length).toBe(good.length);
    expect(await variant('swapped', swapped)).toBe('ARCHIVE_CORRUPT');

    // Another archive's header (same KMS, same lengths) on these segments: its key opens, the segments do not.
    const other = join(dir, 'other.qarc');
    await writeArchive(other, kms, randomBytes(payload.length));
    const otherBytes = readFileSync(other);
    const otherHeaderLen = readArchiveHeader(other).headerBytes.length;
    expect(otherHeaderLen).toBe(headerLen);
    expect(
      await variant(
        'foreign-header',
        Buffer.concat([otherBytes.subarray(0, otherHeaderLen), good.subarray(headerLen)]),
      ),
    ).toBe('ARCHIVE_CORRUPT');
    // Not an archive at all.
    expect(await variant('junk', Buffer.from('hello'))).toBe('ARCHIVE_INVALID');
    // The untouched file still opens.
    expect(Buffer.compare(await readAll(path, { kms }), Buffer.from(payload))).toBe(0);
  });

  it('opens with the recovery key alone, and refuses a wrong one or another KMS', async () => {
    const dir = tempDir();
    const kms = await kmsIn(dir);
    const recovery = newRecoveryKey();
    const text = formatRecoveryKey(recovery);
    expect(text).toMatch(/^([A-Z2-7]{4}-){13}[A-Z2-7]{4}$/);
    const payload = randomBytes(2 * SEG + 5);
    const path = join(dir, 'r.qarc');
    await writeArchive(path, kms, payload, recovery);
    const parsed = parseRecoveryKey(` ${text.toLowerCase().replaceAll('-', ' ')} `);
    expect(Buffer.compare(await readAll(path, { recoveryKey: parsed }), Buffer.from(payload))).toBe(0);
    // The key is in no form in the file.
    const file = readFileSync(path);
    expect(file.includes(Buffer.from(recovery))).toBe(false);
    expect(file.includes(Buffer.from(recovery).toString('base64'))).toBe(false);
    expect(file.includes(text)).toBe(false);

    expect(await code(readAll(path, { recoveryKey: newRecoveryKey() }))).toBe('ARCHIVE_KEY_REJECTED');
    const otherKms = await kmsIn(tempDir());
    expect(await code(readAll(path, { kms: otherKms }))).toBe('ARCHIVE_KEY_REJECTED');
    expect(await code(readAll(path, {}))).toBe('ARCHIVE_KEY_REJECTED');
    // Without a recovery wrap, a recovery key is refused.
    const plain = join(dir, 'p.qarc');
    await writeArchive(plain, kms, payload);
    expect(await code(readAll(plain, { recoveryKey: recovery }))).toBe('ARCHIVE_KEY_REJECTED');
  });

  it('tells a mistyped recovery key from a malformed one', () => {
    const text = formatRecoveryKey(newRecoveryKey());
    const i = 5;
    const typo = text.slice(0, i) + (text[i] === 'A' ? 'B' : 'A') + text.slice(i + 1);
    expect(() => parseRecoveryKey(typo)).toThrow(/mistyped/);
    expect(() => parseRecoveryKey(text.slice(0, -1))).toThrow(/56 base32/);
    expect(() => parseRecoveryKey(`${text.slice(0, -1)}1`)).toThrow(/56 base32/);
    try {
      parseRecoveryKey(typo);
    } catch (err) {
      expect(isServerError(err, 'RECOVERY_KEY_INVALID')).toBe(true);
      expect((err as Error).message).not.toContain(typo);
    }
  });
});

describe('payload container', () => {
  it('parses entries pushed in any chunking, and refuses a payload that stops inside one', async () => {
    const big = randomBytes(10_000);
    const entries: PayloadEntry[] = [
      { name: 'manifest.json', size: 2, chunks: () => [new TextEncoder().encode('{}')] },
      { name: 'empty', size: 0, chunks: () => [] },
      { name: 'qalqon.db', size: big.length, chunks: () => [big.subarray(0, 3), big.subarray(3)] },
    ];
    const parts: Uint8Array[] = [];
    for await (const c of payloadBytes(entries)) parts.push(c);
    const all = Buffer.concat(parts);
    expect(all.length).toBe(payloadLength(entries));
    for (const step of [1, 7, 4096, all.length]) {
      const got: { name: string; data: Buffer }[] = [];
      let cur: Uint8Array[] = [];
      const r = new PayloadReader({
        start: () => {
          cur = [];
        },
        data: (c) => cur.push(c.slice()),
        end: (name) => got.push({ name, data: Buffer.concat(cur) }),
      });
      for (let off = 0; off < all.length; off += step) r.push(all.subarray(off, off + step));
      r.close();
      expect(got.map((g) => g.name)).toEqual(['manifest.json', 'empty', 'qalqon.db']);
      expect(Buffer.compare(got[2]!.data, Buffer.from(big))).toBe(0);
    }
    const cut = new PayloadReader({ start() {}, data() {}, end() {} });
    cut.push(all.subarray(0, all.length - 1));
    expect(() => cut.close()).toThrow(/ends inside an entry/);
    // An entry whose source yields the wrong size is refused while writing.
    await expect(async () => {
      for await (const _ of payloadBytes([{ name: 'x', size: 3, chunks: () => [new Uint8Array(2)] }])) void _;
    }).rejects.toThrow(/changed size/);
  });
});
