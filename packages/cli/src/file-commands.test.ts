/**
 * `qalqon file send|get` and how `recv` shows a file, against a real server (`runServer`:
 * TLS 1.3, SQLCipher) with enrolled users, run in-process. Progress appears on stderr only
 * when it is a terminal, never on stdout.
 */

import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  addAndEnrol,
  oneJson,
  qalqon,
  qalqonTty,
  sharedServer,
  withoutKeystoreNotice,
} from './cli-harness.test-util.js';

const server = sharedServer('qalqon-cli-file-');

beforeAll(async () => {
  for (const name of ['alice', 'bob']) await addAndEnrol(server, join(server.root, name), name);
});

const as = (user: string, ...args: string[]) => qalqon(...args, '--profile', join(server.root, user));

async function ok(
  r: Promise<{ code: number; out: string; err: string }>,
): Promise<{ out: string; err: string }> {
  const x = await r;
  expect(x.code, x.err).toBe(0);
  return x;
}

/** `qalqon ARGV` with an io whose stderr claims to be a terminal. */
const onTerminal = (...argv: string[]) => qalqonTty(true, ...argv);

function source(name: string, bytes: Uint8Array): string {
  const dir = mkdtempSync(join(server.root, 'src-'));
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}

describe('qalqon file', () => {
  it('sends a file 1:1, shows it in recv, and gets it back byte for byte', async () => {
    const bytes = randomBytes(200_000);
    const path = source('report.bin', bytes);
    const { out, err } = await ok(as('alice', 'file', 'send', '--to', 'bob', path, '--json'));
    // Not a terminal: nothing but the result (after the keystore notice).
    expect(withoutKeystoreNotice(err)).toBe('');
    const sent = oneJson(out);
    expect(sent).toMatchObject({
      to: 'bob',
      name: 'report.bin',
      size: 200_000,
      mime: 'application/octet-stream',
    });
    expect(sent.fileId).toMatch(/^[0-9a-f]{32}$/);

    const recv = await ok(as('bob', 'recv'));
    expect(recv.out).toBe(`alice: [file report.bin, 195 KiB, id ${sent.fileId}]\n`);

    const outDir = mkdtempSync(join(server.root, 'out-'));
    const target = join(outDir, 'copy.bin');
    const got = oneJson(
      (await ok(as('bob', 'file', 'get', String(sent.fileId), '--out', target, '--json'))).out,
    );
    expect(got).toMatchObject({ fileId: sent.fileId, name: 'report.bin', size: 200_000, path: target });
    expect(got.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(readFileSync(target).equals(Buffer.from(bytes))).toBe(true);
    expect(readdirSync(outDir)).toEqual(['copy.bin']);

    // Human output.
    const again = join(outDir, 'again.bin');
    expect((await ok(as('bob', 'file', 'get', String(sent.fileId), '--out', again))).out).toBe(
      `Saved report.bin (195 KiB, verified) to ${again}.\n`,
    );
  });

  it('sends to a channel, and recv --json carries the file', async () => {
    await ok(as('alice', 'channel', 'create', 'docs'));
    await ok(as('alice', 'channel', 'add', 'docs', 'bob'));
    const path = source('notes.pdf', new TextEncoder().encode('%PDF-1.7\nnot really a pdf\n'));
    const { out } = await ok(as('alice', 'file', 'send', '--channel', 'docs', path));
    expect(out).toMatch(/^Sent notes\.pdf \(26 B\) to #docs; file id [0-9a-f]{32}\.\n$/);
    const lines = (await ok(as('bob', 'recv', '--json'))).out
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const m = lines.find((l) => l.file !== undefined)!;
    expect(m).toMatchObject({
      from: 'alice',
      channel: 'docs',
      text: '',
      file: { name: 'notes.pdf', size: 26, mime: 'application/pdf' },
    });
  });

  it('shows a progress line on stderr only when it is a terminal, never on stdout', async () => {
    const path = source('big.bin', randomBytes(3 * 1024 * 1024));
    const sent = await onTerminal(
      'file',
      'send',
      '--profile',
      join(server.root, 'alice'),
      '--to',
      'bob',
      path,
      '--json',
    );
    expect(sent.code, sent.err).toBe(0);
    const r = oneJson(sent.out);
    // Each redraw starts with carriage return and erase-line.
    const draws = sent.err.split('\r\x1b[K').slice(1);
    expect(draws.length).toBeGreaterThan(1);
    expect(draws[0]).toMatch(
      /^uploading +\d+% {2}[\d.]+ (B|KiB|MiB) \/ 3\.0 MiB {2}[\d.]+ (B|KiB|MiB|GiB)\/s$/,
    );
    expect(draws.some((d) => d.startsWith('uploading 100%'))).toBe(true);
    // The line is cleared before the result.
    expect(sent.err.endsWith('\r\x1b[K')).toBe(true);
    await ok(as('bob', 'recv'));
    const target = join(mkdtempSync(join(server.root, 'out-')), 'big.bin');
    const got = await onTerminal(
      'file',
      'get',
      '--profile',
      join(server.root, 'bob'),
      String(r.fileId),
      '--out',
      target,
    );
    expect(got.code, got.err).toBe(0);
    expect(got.err).toContain('downloading 100%');
    expect(got.out).toBe(`Saved big.bin (3.0 MiB, verified) to ${target}.\n`);
    expect(readFileSync(target).equals(readFileSync(path))).toBe(true);
  });

  it('shows a hostile file name harmlessly', async () => {
    const path = source('evil\x1b[2Jname\x07.txt', new Uint8Array([1, 2, 3]));
    await ok(as('alice', 'file', 'send', '--to', 'bob', path));
    const recv = await ok(as('bob', 'recv'));
    expect(recv.out).toMatch(/^alice: \[file evil\ufffd\[2Jname\ufffd\.txt, 3 B, id [0-9a-f]{32}\]\n$/);
  });

  it('refuses bad usage and unknown files', async () => {
    const noOut = await as('bob', 'file', 'get', 'a'.repeat(32));
    expect(noOut.code).toBe(2);
    expect(noOut.err).toContain('--out is required');
    const both = await as('alice', 'file', 'send', '--to', 'bob', '--channel', 'docs', '/etc/hostname');
    expect(both.code).toBe(2);
    const unknown = await as('bob', 'file', 'get', 'b'.repeat(32), '--out', join(server.root, 'nothing'));
    expect(unknown.code).toBe(1);
    expect(withoutKeystoreNotice(unknown.err)).toBe(
      `qalqon: no message in this profile carries a file with the id ${'b'.repeat(32)}.\n`,
    );
    const missing = await as('alice', 'file', 'send', '--to', 'bob', join(server.root, 'does-not-exist'));
    expect(missing.code).toBe(1);
    expect(withoutKeystoreNotice(missing.err)).toBe('qalqon: cannot open the file to send (ENOENT).\n');
    const verb = await as('alice', 'file', 'share');
    expect(verb.code).toBe(2);
    expect(verb.err).toContain('unknown command "file share"');
  });
});
