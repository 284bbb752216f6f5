import { createHash, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { get } from 'node:https';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { generateSelfSignedIdentity } from '@qalqon/server';
import { describe, expect, it } from 'vitest';
import { childRunner, firstLine, sourceUrl } from '../../../tests/support/ts-child.js';
import { cliHarness, oneJson, qalqon } from './cli-harness.test-util.js';

const { tempDir, track } = cliHarness('qalqon-cli-');

function pinOf(certPem: string): string {
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  return `sha256/${createHash('sha256').update(spki).digest('base64')}`;
}

describe('qalqon server init', () => {
  it('creates the data directory and prints the pin and the first enrolment code as one JSON object', async () => {
    const data = join(tempDir(), 'data');
    const r = await qalqon('server', 'init', '--data', data, '--hostname', 'chat.example.org', '--json');
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    const j = oneJson(r.out);
    expect(j.pin).toMatch(/^sha256\/[A-Za-z0-9+/]{43}=$/);
    expect(j.pin).toBe(pinOf(readFileSync(join(data, 'tls-cert.pem'), 'utf8')));
    expect(j.enrollmentCode).toMatch(/^[A-Za-z0-9_-]{20}$/);
    expect(j.user).toBe('admin');
    expect(j.hostname).toBe('chat.example.org');
    expect(statSync(data).mode & 0o777).toBe(0o700);
    for (const f of ['config.json', 'tls-key.pem', 'kms-master.key', 'data-keys.json', 'qalqon.db']) {
      expect(statSync(join(data, f)).mode & 0o777, f).toBe(0o600);
    }
    // The private key never reaches stdout.
    expect(r.out).not.toContain('PRIVATE KEY');
    // A second init refuses, as one sentence on stderr, and nothing on stdout.
    const again = await qalqon('server', 'init', '--data', data, '--json');
    expect(again.code).toBe(1);
    expect(again.out).toBe('');
    expect(again.err).toMatch(/^qalqon: .*already holds config\.json.*\.\n$/);
  });

  it('uses an operator-supplied certificate and key, and refuses a pair that does not match', async () => {
    const dir = tempDir();
    const mine = generateSelfSignedIdentity('chat.example.org');
    const other = generateSelfSignedIdentity('chat.example.org');
    writeFileSync(join(dir, 'cert.pem'), mine.certPem);
    writeFileSync(join(dir, 'key.pem'), mine.keyPem, { mode: 0o600 });
    writeFileSync(join(dir, 'other-key.pem'), other.keyPem, { mode: 0o600 });
    const bad = await qalqon(
      'server',
      'init',
      '--data',
      join(dir, 'd1'),
      '--tls-cert',
      join(dir, 'cert.pem'),
      '--tls-key',
      join(dir, 'other-key.pem'),
    );
    expect(bad.code).toBe(1);
    expect(bad.err).toBe('qalqon: the TLS private key does not match the certificate.\n');
    expect(existsSync(join(dir, 'd1', 'config.json'))).toBe(false);
    const ok = await qalqon(
      'server',
      'init',
      '--data',
      join(dir, 'd2'),
      '--kms',
      'local',
      '--tls-cert',
      join(dir, 'cert.pem'),
      '--tls-key',
      join(dir, 'key.pem'),
      '--json',
    );
    expect(ok.code).toBe(0);
    expect(oneJson(ok.out).pin).toBe(pinOf(mine.certPem));
    expect(existsSync(join(dir, 'd2', 'tls-key.pem'))).toBe(false);
    const pkcs11 = await qalqon('server', 'init', '--data', join(dir, 'd3'), '--kms', 'pkcs11');
    // The token's module, label and PIN source are required (kms-admin.test.ts runs the real thing).
    expect(pkcs11.code).toBe(2);
    expect(pkcs11.err).toMatch(/^qalqon: --kms pkcs11 needs --pkcs11-module PATH\.\n/);
  });

  it('exits 2 on bad usage and 1 when no server is running', async () => {
    for (const argv of [
      [],
      ['frob'],
      ['server'],
      ['server', 'init'],
      ['server', 'init', '--data', 'x', '--bogus'],
      ['admin', '--data', 'x', 'user', 'add'],
    ]) {
      const r = await qalqon(...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.out).toBe('');
      expect(r.err).toMatch(/^qalqon: /);
    }
    const r = await qalqon('admin', '--data', tempDir(), 'user', 'list', '--json');
    expect(r.code).toBe(1);
    expect(r.out).toBe('');
    expect(r.err).toMatch(/^qalqon: no server is running on .*\.\n$/);
  });
});

describe('qalqon server start + admin over the unix socket', () => {
  it('initialises on first start, serves TLS 1.3, takes admin commands, and stops on SIGTERM', async () => {
    const dir = tempDir();
    const data = join(dir, 'data');
    const child = childRunner(dir)(`import ${JSON.stringify(sourceUrl('cli', 'main.ts'))};`, [
      'server',
      'start',
      '--data',
      data,
      '--listen',
      '127.0.0.1:0',
      '--json',
    ]);
    track(child);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const started = JSON.parse(await firstLine(child)) as {
      listening: string;
      pin: string;
      adminSocket: string;
      enrollmentCode: string;
    };
    expect(started.listening).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(started.enrollmentCode).toMatch(/^[A-Za-z0-9_-]{20}$/);
    expect(statSync(started.adminSocket).mode & 0o777).toBe(0o600);

    // The certificate the server presents is the one whose pin it printed.
    const seen = await new Promise<string>((resolve, reject) => {
      const req = get(`${started.listening}/healthz`, { rejectUnauthorized: false }, (res) => {
        const socket = res.socket as TLSSocket;
        expect(socket.getProtocol()).toBe('TLSv1.3');
        const pem = socket.getPeerX509Certificate()!.toString();
        res.resume();
        resolve(pem);
      });
      req.on('error', reject);
    });
    expect(pinOf(seen)).toBe(started.pin);

    const add = await qalqon('admin', '--data', data, 'user', 'add', 'bob', '--role', 'member', '--json');
    expect(add.err).toBe('');
    expect(add.code).toBe(0);
    const added = oneJson(add.out);
    expect(added.user).toBe('bob');
    expect(added.roles).toEqual(['member']);
    expect(added.enrollmentCode).toMatch(/^[A-Za-z0-9_-]{20}$/);
    const code2 = oneJson((await qalqon('admin', '--data', data, 'user', 'code', 'bob', '--json')).out);
    expect(code2.enrollmentCode).not.toBe(added.enrollmentCode);

    const dup = await qalqon('admin', '--data', data, 'user', 'add', 'bob', '--json');
    expect(dup.code).toBe(1);
    expect(dup.out).toBe('');
    expect(dup.err).toBe('qalqon: a user named bob already exists (USER_EXISTS).\n');

    const list = oneJson((await qalqon('admin', '--data', data, 'user', 'list', '--json')).out) as {
      users: { name: string; roles: string[]; enrolled: boolean; devices: number }[];
    };
    expect(list.users.map((u) => [u.name, u.roles, u.enrolled, u.devices])).toEqual([
      ['admin', ['admin'], false, 0],
      ['bob', ['member'], false, 0],
    ]);
    expect(oneJson((await qalqon('admin', '--data', data, 'device', 'list', 'bob', '--json')).out)).toEqual({
      user: 'bob',
      devices: [],
    });
    const noDevice = await qalqon('admin', '--data', data, 'device', 'remove', 'bob', '1');
    expect(noDevice.code).toBe(1);
    expect(noDevice.err).toMatch(/has no device 1/);
    const human = await qalqon('admin', '--data', data, 'user', 'list');
    expect(human.out).toMatch(/^admin\troles=admin\tunits=-\tnot enrolled\tdevices=0\nbob\t/);
    expect(oneJson((await qalqon('admin', '--data', data, 'user', 'remove', 'bob', '--json')).out)).toEqual({
      user: 'bob',
      removed: true,
    });
    expect((await qalqon('admin', '--data', data, 'user', 'remove', 'bob')).code).toBe(1);

    // A second server on the same directory is refused while the first runs.
    const second = await qalqon('server', 'start', '--data', data, '--listen', '127.0.0.1:0');
    expect(second.code).toBe(1);
    expect(second.err).toMatch(/already running/);

    child.kill('SIGTERM');
    const exit = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect(exit).toBe(0);
    expect(stderr).toContain('SIGTERM: shutting down');
    expect(existsSync(started.adminSocket)).toBe(false);
    // Secrets never reached the log.
    expect(stderr).not.toContain(started.enrollmentCode);
    expect(stderr).not.toContain(String(added.enrollmentCode));
  });
});
