/**
 * A server PROCESS killed with SIGKILL in the middle of a stream of sends loses no message
 * whose acceptance it acknowledged: after a restart on the same data directory, the
 * recipient receives every acknowledged message, in the order it was sent.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeBase64, encodeBase64 } from '@qalqon/wire';
import { afterEach, describe, expect, it } from 'vitest';
import { childRunner, firstLine, sourceUrl } from '../../../../tests/support/ts-child.js';
import { LOCAL_KMS_FILE, LocalKms } from '../kms/local-kms.js';
import { openEmbeddedStorage } from '../storage/embedded.js';
import { initDataDir, issueEnrolmentCode, TLS_CERT_FILE } from './data-dir.js';
import { type Endpoint, enrol, signIn, WsClient } from './harness.test-util.js';

const dirs: string[] = [];
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const SERVER_SCRIPT = `
import { runServer } from ${JSON.stringify(sourceUrl('server', 'service/run.ts'))};
const s = await runServer({ dataDir: process.argv[2], listen: '127.0.0.1:0', log: () => {} });
process.stdout.write(JSON.stringify({ port: s.port }) + '\\n');
// A graceful stop must leave nothing that keeps the process alive: it exits 0 on its own.
process.once('SIGTERM', () => { s.close(); });
`;

describe('crash safety', () => {
  it('delivers every acknowledged message after SIGKILL and restart', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'qalqon-crash-'));
    dirs.push(dir);
    const dataDir = join(dir, 'data');
    const init = await initDataDir({ dataDir });
    // A second user, created while no server runs.
    const kms = await LocalKms.open(join(dataDir, LOCAL_KMS_FILE));
    const storage = await openEmbeddedStorage({ dataDir, kms });
    const bobUser = await storage.createUser({ name: 'bob' });
    const bobCode = (await issueEnrolmentCode(storage, bobUser.id, Date.now())).code;
    await storage.close();
    await kms.close();

    const run = childRunner(dir);
    const cert = readFileSync(join(dataDir, TLS_CERT_FILE), 'utf8');
    const startServer = async (): Promise<{ child: ChildProcess; ep: Endpoint }> => {
      const child = run(SERVER_SCRIPT, [dataDir]);
      children.push(child);
      const { port } = JSON.parse(await firstLine(child)) as { port: number };
      return { child, ep: { port, cert } };
    };

    const first = await startServer();
    const alice = await enrol(first.ep, init.enrollmentCode);
    const bob = await enrol(first.ep, bobCode);
    const a = await WsClient.open(first.ep, await signIn(first.ep, alice));

    // Stream sends with a window of 16 outstanding; record each one the server acknowledged.
    const acked: number[] = [];
    let next = 0;
    let outstanding = 0;
    const pump = () => {
      while (outstanding < 16 && !a.closed) {
        const i = next++;
        outstanding++;
        a.send({
          type: 'send',
          id: String(i),
          messages: [
            {
              recipientUserId: bob.userId,
              recipientDeviceId: bob.deviceId,
              body: encodeBase64(new TextEncoder().encode(`msg ${i}`)),
            },
          ],
        });
      }
    };
    a.ws.on('message', (data) => {
      const f = JSON.parse(data.toString()) as { type: string; id?: string };
      if (f.type === 'sent') {
        acked.push(Number(f.id));
        outstanding--;
        if (acked.length === 200) first.child.kill('SIGKILL');
        pump();
      }
    });
    pump();
    const exited = await new Promise<string | null>((resolve) =>
      first.child.once('exit', (_c, s) => resolve(s)),
    );
    expect(exited).toBe('SIGKILL');
    expect(acked.length).toBeGreaterThanOrEqual(200);
    // Sends really were in flight at the kill (otherwise this would prove little).
    expect(next).toBeGreaterThan(acked.length);

    const second = await startServer();
    const b = await WsClient.open(second.ep, await signIn(second.ep, bob));
    const received: number[] = [];
    for (;;) {
      let e: { id: string; body: string };
      try {
        e = await b.next<{ type: 'envelope'; id: string; body: string }>(
          (f) => f.type === 'envelope',
          received.length >= acked.length ? 500 : 5000,
        );
      } catch {
        break;
      }
      received.push(Number(new TextDecoder().decode(decodeBase64(e.body)).slice(4)));
      b.send({ type: 'ack', ids: [e.id] });
    }
    const got = new Set(received);
    for (const i of acked) expect(got.has(i), `acknowledged message ${i}`).toBe(true);
    // Per-sender order kept, and nothing twice.
    expect(received).toEqual([...received].sort((x, y) => x - y));
    expect(got.size).toBe(received.length);
    b.close();
    a.close();
    second.child.kill('SIGTERM');
    const code = await new Promise<number | null>((resolve) => second.child.once('exit', (c) => resolve(c)));
    expect(code).toBe(0);
  });
});
