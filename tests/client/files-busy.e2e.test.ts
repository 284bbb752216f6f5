/**
 * A server that serves as many file transfers as it may (files.maxConcurrentTransfers)
 * refuses more with RATE_LIMITED and a retry-after; the real client waits as asked and
 * tries again, so a transfer started while the server is busy still completes. Real
 * server, real TLS, real profiles.
 */

import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import type { ClientRequest } from 'node:http';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QalqonClient } from '@qalqon/client';
import { randomBytes } from '@qalqon/crypto';
import { spkiPin } from '@qalqon/server';
import { FileStatus } from '@qalqon/wire';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FILE_CHUNK_BYTES } from '../../packages/server/src/files/chunk-format.js';
import {
  enrol,
  type Harness,
  http,
  signIn,
  startHarness,
  tlsOptions,
} from '../../packages/server/src/service/harness.test-util.js';

let h: Harness;
let root: string;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'qalqon-files-busy-'));
  h = await startHarness({ files: { maxConcurrentTransfers: 1, maxConcurrentTransfersPerUser: 1 } });
});

afterAll(async () => {
  await h?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

const active = async () =>
  Number(/^qalqon_file_transfers_active (\d+)$/m.exec((await http(h, 'GET', '/metrics')).text)?.[1]);
const refused = async () =>
  Number(
    /^qalqon_file_refusals_total\{code="RATE_LIMITED"\} (\d+)$/m.exec(
      (await http(h, 'GET', '/metrics')).text,
    )?.[1] ?? 0,
  );

it('a transfer refused while the server is busy is retried as the server asks, and completes', async () => {
  // Someone else's upload takes the server's one transfer slot and holds it.
  const holder = await enrol(h, (await h.addUser('holder')).code);
  const token = await signIn(h, holder);
  const size = 2 * FILE_CHUNK_BYTES;
  const created = FileStatus.parse(
    (await http(h, 'POST', '/v1/files', { size, to: ['holder'] }, { token })).json,
  );
  let held: ClientRequest | undefined;
  const heldDone = new Promise<number>((resolve, reject) => {
    held = request(
      {
        host: '127.0.0.1',
        port: h.port,
        method: 'PUT',
        path: `/v1/files/${created.id}/content`,
        headers: {
          authorization: `Bearer ${token}`,
          'content-type': 'application/octet-stream',
          'content-length': String(size),
          'content-range': `bytes 0-${size - 1}/${size}`,
        },
        ...tlsOptions(h),
        agent: false,
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    held.on('error', reject);
    held.write(Buffer.alloc(1000));
  });
  for (let i = 0; i < 200 && (await active()) !== 1; i++) await new Promise((r) => setTimeout(r, 25));
  expect(await active()).toBe(1);

  const alice = await QalqonClient.enroll({
    profile: join(root, 'alice'),
    keystore: 'passphrase',
    passphrase: () => 'files busy passphrase',
    server: `https://127.0.0.1:${h.port}`,
    pin: spkiPin(h.cert),
    code: (await h.addUser('alice')).code,
  });
  try {
    const path = join(root, 'data.bin');
    writeFileSync(path, randomBytes(3 * 1024 * 1024 + 5));
    const sending = alice.sendFile({ to: 'alice' }, path);
    // The upload is refused at least once; then the holder's upload ends and frees the slot.
    for (let i = 0; i < 200 && (await refused()) === 0; i++) await new Promise((r) => setTimeout(r, 25));
    expect(await refused()).toBeGreaterThan(0);
    held!.end(Buffer.alloc(size - 1000));
    expect(await heldDone).toBe(200);
    const sent = await sending;
    const out = join(root, 'out.bin');
    await alice.getFile(sent.fileId, out);
    expect(readFileSync(out).equals(readFileSync(path))).toBe(true);
    expect(await active()).toBe(0);
  } finally {
    alice.close();
  }
});
