/**
 * KEK rotation with files, end to end: a file sent with `qalqon file send` (the client SDK
 * under the CLI) to a real `server start` process (local KMS), then `admin kms rotate`
 * re-wraps its data key with the data keys, `kms status` counts file keys per version,
 * `kms destroy` removes the old version, and after a restart on the same port the
 * recipient's `qalqon file get` still downloads it intact.
 */
import type { ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { firstLine } from '../../../tests/support/ts-child.js';
import {
  addAndEnrol,
  cliHarness,
  oneJson,
  qalqon,
  stopServer,
  TEST_PASSPHRASE,
  withoutKeystoreNotice,
} from './cli-harness.test-util.js';

const { tempDir, spawnQalqon, startServer } = cliHarness('qalqon-cli-kms-files-');

const previousPassphrase = process.env.QALQON_PASSPHRASE;
beforeAll(() => {
  process.env.QALQON_PASSPHRASE = TEST_PASSPHRASE;
});
afterAll(() => {
  if (previousPassphrase === undefined) delete process.env.QALQON_PASSPHRASE;
  else process.env.QALQON_PASSPHRASE = previousPassphrase;
});

interface KeyVersion {
  keyId: string;
  active: boolean;
  wrappedKeys: number;
  wrappedFileKeys: number;
}

async function versions(data: string): Promise<[string, boolean, number][]> {
  const r = await qalqon('admin', '--data', data, 'kms', 'status', '--json');
  expect(r.code, r.err).toBe(0);
  return (oneJson(r.out).keyVersions as KeyVersion[]).map((k) => [k.keyId, k.active, k.wrappedFileKeys]);
}

describe('qalqon admin kms with files', () => {
  it('re-wraps file keys on rotation, so a file still downloads after the old version is destroyed and a restart', async () => {
    const dir = tempDir();
    const data = join(dir, 'data');
    const init = await qalqon('server', 'init', '--data', data, '--json');
    expect(init.code, init.err).toBe(0);
    const pin = String(oneJson(init.out).pin);
    const firstKek = (oneJson(init.out).kms as { activeKeyId: string }).activeKeyId;
    const server = await startServer(dir, data);
    const port = Number(new URL(server.listening).port);
    const at = { url: server.listening, pin, data };
    const alice = join(dir, 'alice');
    const bob = join(dir, 'bob');
    await addAndEnrol(at, alice, 'alice');
    await addAndEnrol(at, bob, 'bob');

    const bytes = randomBytes(2_500_000);
    const path = join(dir, 'plans.bin');
    writeFileSync(path, bytes);
    const sent = await qalqon('file', 'send', '--profile', alice, '--to', 'bob', path, '--json');
    expect(sent.code, sent.err).toBe(0);
    const fileId = String(oneJson(sent.out).fileId);
    const recv = await qalqon('recv', '--profile', bob, '--json');
    expect(recv.code, withoutKeystoreNotice(recv.err)).toBe(0);
    expect(recv.out).toContain(fileId);
    expect(await versions(data)).toEqual([[firstKek, true, 1]]);

    const rotated = await qalqon('admin', '--data', data, 'kms', 'rotate', '--json');
    expect(rotated.code, rotated.err).toBe(0);
    const r = oneJson(rotated.out) as { activeKeyId: string; rewrappedFileKeys: number };
    expect(r.rewrappedFileKeys).toBe(1);
    expect(await versions(data)).toEqual([
      [firstKek, false, 0],
      [r.activeKeyId, true, 1],
    ]);
    const destroyed = await qalqon('admin', '--data', data, 'kms', 'destroy', firstKek, '--json');
    expect(destroyed.code, destroyed.err).toBe(0);
    expect(oneJson(destroyed.out)).toEqual({ keyId: firstKek, destroyed: true });
    await stopServer(server);

    // Restarted on the same port (bob's profile knows it), with only the new version.
    const child: ChildProcess = spawnQalqon(dir, [
      'server',
      'start',
      '--data',
      data,
      '--listen',
      `127.0.0.1:${port}`,
      '--json',
    ]);
    try {
      expect((JSON.parse(await firstLine(child)) as { pin: string }).pin).toBe(pin);
      expect(await versions(data)).toEqual([[r.activeKeyId, true, 1]]);
      const target = join(dir, 'plans-copy.bin');
      const got = await qalqon('file', 'get', '--profile', bob, fileId, '--out', target, '--json');
      expect(got.code, got.err).toBe(0);
      expect(readFileSync(target).equals(bytes)).toBe(true);
    } finally {
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    }
  });
});
