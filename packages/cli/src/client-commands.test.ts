/**
 * The client commands of `qalqon` against a real server started from a real data
 * directory (`runServer`: TLS 1.3, SQLCipher, admin socket), run in-process through `run`.
 * The profiles use `--keystore passphrase` with QALQON_PASSPHRASE (the OS secure store is
 * exercised by the client package's tests); one test shows the refusal when neither a
 * secure store nor the passphrase mode is available. Output rules of SPEC section 3 are
 * checked on the way: JSON on stdout, one sentence on stderr, exit 1 refused / 2 usage.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { readSettings, unwrapKey } from '@qalqon/client';
import { describe, expect, it } from 'vitest';
import { adminRequest } from './admin-client.js';
import { run } from './cli.js';
import { TEST_PASSPHRASE as PASSPHRASE, qalqon, sharedServer } from './cli-harness.test-util.js';
import type { CliIo } from './io.js';

const server = sharedServer('qalqon-cli-client-');

/** An io that keeps what was written and shows stdout to `onOut` as it comes. */
function capture(onOut: (text: string) => void): { io: CliIo; result: () => { out: string; err: string } } {
  let out = '';
  let err = '';
  return {
    io: {
      stdout: (t) => {
        out += t;
        onOut(t);
      },
      stderr: (t) => {
        err += t;
      },
    },
    result: () => ({ out, err }),
  };
}

function json(out: string): Record<string, unknown>[] {
  return out
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

const profile = (name: string) => join(server.root, name);

async function code(name: string): Promise<string> {
  const r = await adminRequest(server.data, { op: 'user.add', name });
  return String(r.enrollmentCode);
}

describe('qalqon client commands', () => {
  it('enrols, links a second device, sends and receives, with the output rules of SPEC section 3', async () => {
    const enrolled = await qalqon(
      'enroll',
      '--server',
      server.url,
      '--code',
      await code('alice'),
      '--profile',
      profile('alice'),
      '--pin',
      server.pin,
      '--keystore',
      'passphrase',
      '--device-name',
      'desk',
      '--json',
    );
    expect(enrolled.code).toBe(0);
    expect(json(enrolled.out)).toEqual([{ user: 'alice', device: expect.any(Number), pin: server.pin }]);
    // The weaker mode is announced; the passphrase itself appears nowhere.
    expect(enrolled.err).toMatch(/passphrase keystore/);
    expect(enrolled.err + enrolled.out).not.toContain(PASSPHRASE);

    const bob = await qalqon(
      'enroll',
      '--server',
      server.url,
      '--code',
      await code('bob'),
      '--profile',
      profile('bob'),
      '--keystore',
      'passphrase',
      '--json',
    );
    expect(bob.code).toBe(0);
    // Trust on first use, said on stderr.
    expect(bob.err).toContain(`pinned the server's key ${server.pin} on first use`);

    // link prints {"linkCode"} first and waits; device approve on alice's device lets it finish.
    let announce: (code: string) => void = () => undefined;
    const announced = new Promise<string>((r) => {
      announce = r;
    });
    const linkIo = capture((t) => {
      const first = json(t)[0];
      if (typeof first?.linkCode === 'string') announce(first.linkCode);
    });
    const linking = run(
      [
        'link',
        '--server',
        server.url,
        '--profile',
        profile('alice-laptop'),
        '--pin',
        server.pin,
        '--keystore',
        'passphrase',
        '--json',
      ],
      linkIo.io,
    );
    const linkCode = await announced;
    const approved = await qalqon('device', 'approve', '--profile', profile('alice'), linkCode, '--json');
    expect(approved).toMatchObject({ code: 0, out: '{"approved":true}\n' });
    expect(await linking).toBe(0);
    const lines = json(linkIo.result().out);
    expect(lines).toEqual([{ linkCode }, { user: 'alice', device: expect.any(Number) }]);

    const devices = await qalqon('device', 'list', '--profile', profile('alice'), '--json');
    expect((json(devices.out)[0]!.devices as unknown[]).length).toBe(2);

    const sent = await qalqon(
      'send',
      '--profile',
      profile('bob'),
      '--to',
      'alice',
      'hello from bob over the CLI',
      '--json',
    );
    expect(sent.code).toBe(0);
    const receipt = json(sent.out)[0]!;
    expect(receipt).toMatchObject({ id: expect.stringMatching(/^[0-9a-f]{32}$/), devices: 2 });

    // --json: JSON lines (on alice's first device); without it, one "from: text" line per message.
    const got = await qalqon('recv', '--profile', profile('alice'), '--json');
    expect(got.code).toBe(0);
    expect(json(got.out)).toEqual([
      {
        from: 'bob',
        device: expect.any(Number),
        channel: null,
        conversation: 'bob',
        text: 'hello from bob over the CLI',
        sentAt: receipt.sentAt,
        id: receipt.id,
      },
    ]);
    expect(await qalqon('recv', '--profile', profile('alice-laptop'))).toMatchObject({
      code: 0,
      out: 'bob: hello from bob over the CLI\n',
    });
    // Exactly once: nothing the second time.
    for (const p of ['alice', 'alice-laptop']) {
      expect((await qalqon('recv', '--profile', profile(p), '--json')).out).toBe('');
    }
  });

  it('prints the same safety number on both sides and verifies it; a wrong number is refused', async () => {
    const a = await qalqon('safety-number', '--profile', profile('alice'), 'bob');
    const b = await qalqon('safety-number', '--profile', profile('bob'), 'alice');
    expect(a.code).toBe(0);
    expect(a.out).toMatch(/^([0-9]{5} ){11}[0-9]{5}\n$/);
    expect(b.out).toBe(a.out);
    const wrong = a.out.trim().replace(/^[0-9]/, (d) => String((Number(d) + 1) % 10));
    const refused = await qalqon('verify', '--profile', profile('alice'), 'bob', wrong);
    expect(refused.code).toBe(1);
    expect(refused.out).toBe('');
    // The weaker-keystore notice, then the refusal as one sentence.
    expect(refused.err).toMatch(/^qalqon: that is not the safety number with bob[^\n]*\.\n$/m);
    // The 12 groups may be given as separate arguments, as they are printed.
    const ok = await qalqon(
      'verify',
      '--profile',
      profile('alice'),
      'bob',
      ...a.out.trim().split(' '),
      '--json',
    );
    expect(ok).toMatchObject({ code: 0, out: '{"user":"bob","verified":true}\n' });
    expect(
      json((await qalqon('safety-number', '--profile', profile('alice'), 'bob', '--json')).out)[0],
    ).toMatchObject({
      verified: true,
    });
  });

  it('refuses a wrong passphrase clearly and changes nothing; the database holds no plaintext or key', async () => {
    const dir = profile('alice');
    const snapshot = () =>
      Object.fromEntries(
        readdirSync(dir).map((f) => [
          f,
          createHash('sha256')
            .update(readFileSync(join(dir, f)))
            .digest('hex'),
        ]),
      );
    const before = snapshot();
    process.env.QALQON_PASSPHRASE = 'not the passphrase';
    try {
      const r = await qalqon('recv', '--profile', dir);
      expect(r.code).toBe(1);
      expect(r.out).toBe('');
      expect(r.err).toContain('the passphrase does not unlock this profile; nothing was changed');
      expect(r.err).not.toContain('not the passphrase');
    } finally {
      process.env.QALQON_PASSPHRASE = PASSPHRASE;
    }
    expect(snapshot()).toEqual(before);

    const db = readFileSync(join(dir, 'client.db'));
    expect(db.length).toBeGreaterThan(4096);
    // An SQLCipher file: no SQLite header, no message text, no names.
    expect(db.subarray(0, 16).toString('latin1')).not.toBe('SQLite format 3\0');
    for (const probe of ['hello from bob', 'alice', 'CREATE TABLE'])
      expect(db.includes(Buffer.from(probe))).toBe(false);
    // The database key is nowhere in the profile, in any encoding.
    const s = readSettings(dir);
    const key = Buffer.from(unwrapKey(s.wrappedKey!, PASSPHRASE, s.keyId));
    for (const f of readdirSync(dir)) {
      const bytes = readFileSync(join(dir, f));
      for (const form of [key, Buffer.from(key.toString('hex')), Buffer.from(key.toString('base64'))]) {
        expect(bytes.includes(form), f).toBe(false);
      }
    }
  });

  it('refuses to create a profile without a reachable secure store unless --keystore passphrase', async () => {
    const saved = process.env.DBUS_SESSION_BUS_ADDRESS;
    process.env.DBUS_SESSION_BUS_ADDRESS = `unix:path=${join(server.root, 'no-such-bus')}`;
    try {
      const r = await qalqon(
        'enroll',
        '--server',
        server.url,
        '--code',
        await code('carol'),
        '--profile',
        profile('carol'),
      );
      expect(r.code).toBe(1);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/^qalqon: no OS secure store is reachable[^\n]*--keystore passphrase[^\n]*\.\n$/);
      // Nothing half-made is left behind.
      expect(readdirSync(profile('carol'))).toEqual([]);
    } finally {
      if (saved === undefined) delete process.env.DBUS_SESSION_BUS_ADDRESS;
      else process.env.DBUS_SESSION_BUS_ADDRESS = saved;
    }
  });

  it('repins only on the explicit command, and answers bad usage with exit 2', async () => {
    const other = `sha256/${Buffer.alloc(32, 9).toString('base64')}`;
    const repinned = await qalqon('repin', '--profile', profile('bob'), '--pin', other, '--json');
    expect(json(repinned.out)).toEqual([{ previous: server.pin, pin: other }]);
    const refused = await qalqon('send', '--profile', profile('bob'), '--to', 'alice', 'to an impostor?');
    expect(refused.code).toBe(1);
    expect(refused.err).toContain(`presented the key ${server.pin}, but this profile pins ${other}`);
    expect(refused.err).not.toContain('to an impostor?');
    expect((await qalqon('repin', '--profile', profile('bob'), '--pin', server.pin)).code).toBe(0);

    expect((await qalqon('send', '--profile', profile('bob'), 'no recipient')).code).toBe(2);
    expect((await qalqon('recv', '--profile', profile('bob'), '--wait', 'soon')).code).toBe(2);
    expect((await qalqon('enroll', '--server', server.url, '--profile', profile('x'))).code).toBe(2);
    const badPin = await qalqon('repin', '--profile', profile('bob'), '--pin', 'md5/abc');
    expect(badPin.code).toBe(1);
    expect(badPin.err).toContain('"pin" expected sha256/');
  });
});
