/**
 * `qalqon admin audit list|verify` against a real server (`runServer`: TLS 1.3, SQLCipher,
 * the admin socket): the operations done show up in the log, the chain verifies, remote
 * reading needs `audit.read` (an auditor may, a member may not), and a record deleted
 * from the database file itself — opened with its own key, while the server is stopped —
 * makes `audit verify` fail naming that record.
 */
import { join } from 'node:path';
import {
  DATABASE_FILE,
  DEK_FILE,
  DekRegistry,
  LOCAL_KMS_FILE,
  LocalKms,
  openSqlcipher,
} from '@qalqon/server';
import { AuditRecordInfo, AuditVerifyResponse, type z } from '@qalqon/wire';
import { describe, expect, it } from 'vitest';
import {
  addAndEnrol,
  oneJson,
  qalqon,
  sharedServer,
  withoutKeystoreNotice,
} from './cli-harness.test-util.js';

type Record = z.output<typeof AuditRecordInfo>;

const server = sharedServer('qalqon-cli-audit-');

const local = (...args: string[]) => qalqon('admin', '--data', server.data, ...args);

async function records(...args: string[]): Promise<Record[]> {
  const r = await qalqon('admin', ...args, 'audit', 'list', '--json');
  expect(withoutKeystoreNotice(r.err)).toBe('');
  expect(r.code).toBe(0);
  const j = oneJson(r.out);
  expect(Object.keys(j)).toEqual(['records']);
  return (j.records as unknown[]).map((x) => AuditRecordInfo.parse(x));
}

const find = (rs: Record[], action: string, target: string) =>
  rs.find((r) => r.action === action && r.target.includes(target));

describe('qalqon admin audit', () => {
  it('lists what was done, filters by --since, verifies, and needs audit.read remotely', async () => {
    expect((await local('user', 'add', 'erin', '--json')).code).toBe(0);
    expect((await local('role', 'create', 'scribe', '--permission', 'audit.read', '--json')).code).toBe(0);
    expect((await local('org', 'create', 'ops', '--json')).code).toBe(0);
    expect((await local('role', 'grant', 'erin', 'scribe', '--unit', 'ops', '--json')).code).toBe(0);

    const all = await records('--data', server.data);
    for (const [action, target] of [
      ['user.create', 'erin'],
      ['role.create', 'scribe'],
      ['org.create', 'ops'],
      ['grant.add', 'erin'],
    ] as const) {
      expect(find(all, action, target), `${action} ${target}`).toMatchObject({
        actor: { kind: 'operator' },
        outcome: 'ok',
      });
    }
    // One chain: seq 1, 2, ... each linked to the one before.
    expect(all.map((r) => r.seq)).toEqual(all.map((_, i) => i + 1));
    for (let i = 1; i < all.length; i++) expect(all[i]!.prevHash).toBe(all[i - 1]!.hash);
    // Never a secret: the enrolment code of erin is nowhere in the log.
    const code = String(oneJson((await local('user', 'code', 'erin', '--json')).out).enrollmentCode);
    expect(JSON.stringify(await records('--data', server.data))).not.toContain(code);

    // Human form: one line per record.
    const human = await local('audit', 'list');
    const lines = human.out.split('\n').filter((l) => l !== '');
    const now = await records('--data', server.data);
    expect(lines).toHaveLength(now.length);
    expect(lines[now.indexOf(find(now, 'role.create', 'scribe')!)]).toMatch(
      /^\d+\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\toperator\trole\.create\t[^\t]*scribe[^\t]*\tok$/,
    );

    // --since: an ISO-8601 time or milliseconds; only what happened from then on.
    const mark = Date.now();
    await new Promise((r) => setTimeout(r, 5));
    expect((await local('org', 'create', 'late', '--json')).code).toBe(0);
    const since = await records('--data', server.data, '--since', new Date(mark).toISOString());
    expect(since.length).toBeGreaterThan(0);
    expect(since.every((r) => r.at >= mark)).toBe(true);
    expect(find(since, 'org.create', 'late')).toBeDefined();
    expect(find(since, 'org.create', 'ops')).toBeUndefined();
    expect(await records('--data', server.data, '--since', String(mark))).toEqual(since);
    expect(await records('--data', server.data, '--since', '2000-01-01')).toEqual(
      await records('--data', server.data),
    );

    const verified = await local('audit', 'verify');
    expect(verified.err).toBe('');
    expect(verified.code).toBe(0);
    const head = (await records('--data', server.data)).at(-1)!;
    expect(verified.out).toBe(`audit log ok: ${head.seq} records, head ${head.seq} ${head.hash}\n`);
    expect(AuditVerifyResponse.parse(oneJson((await local('audit', 'verify', '--json')).out))).toEqual({
      ok: true,
      records: head.seq,
      head: { seq: head.seq, hash: head.hash },
    });

    // Remotely: an auditor's device reads and verifies the log; a member's is refused.
    await addAndEnrol(server, join(server.root, 'aud'), 'aud', '--role', 'auditor');
    await addAndEnrol(server, join(server.root, 'mem'), 'mem');
    const remote = await records('--profile', join(server.root, 'aud'));
    expect(remote).toEqual((await records('--data', server.data)).slice(0, remote.length));
    expect(find(remote, 'enrolment', 'aud')).toBeDefined();
    const rv = await qalqon('admin', '--profile', join(server.root, 'aud'), 'audit', 'verify');
    expect(withoutKeystoreNotice(rv.err)).toBe('');
    expect(rv.code).toBe(0);
    expect(rv.out).toMatch(/^audit log ok: \d+ records, head \d+ [0-9a-f]{64}\n$/);
    for (const verb of ['list', 'verify']) {
      const refused = await qalqon('admin', '--profile', join(server.root, 'mem'), 'audit', verb, '--json');
      expect(refused.code).toBe(1);
      expect(refused.out).toBe('');
      expect(withoutKeystoreNotice(refused.err)).toMatch(/^qalqon: [^\n]*\(FORBIDDEN\)\.\n$/);
    }
    // The refusal itself is on the record.
    expect(
      (await records('--data', server.data)).find(
        (r) => r.outcome === 'denied' && r.actor.kind === 'device' && r.actor.userName === 'mem',
      ),
    ).toBeDefined();
  });

  it('names the record removed from the database file, and fails with exit 1', async () => {
    const before = await records('--data', server.data);
    expect(before.length).toBeGreaterThan(5);
    const victim = before[2]!.seq;
    await server.stop();

    // Tamper as someone holding the server's keys would: the SQLCipher file opened with its own key.
    const kms = await LocalKms.open(join(server.data, LOCAL_KMS_FILE));
    try {
      const registry = await DekRegistry.open(join(server.data, DEK_FILE), kms);
      const db = openSqlcipher(join(server.data, DATABASE_FILE), await registry.get('database'));
      try {
        expect(db.prepare('DELETE FROM audit_log WHERE seq = ?').run(victim).changes).toBe(1);
      } finally {
        db.close();
      }
    } finally {
      await kms.close();
    }
    await server.start();

    const human = await local('audit', 'verify');
    expect(human.code).toBe(1);
    expect(human.out).toBe('');
    expect(human.err).toMatch(
      new RegExp(`^qalqon: the audit log fails at record ${victim} \\(removed\\): [^\\n]*\\.\\n$`),
    );
    const json = await local('audit', 'verify', '--json');
    expect(json.code).toBe(1);
    expect(oneJson(json.out)).toMatchObject({ ok: false, seq: victim, problem: 'removed' });
    // The listing shows the gap.
    const after = (await records('--data', server.data)).map((r) => r.seq);
    expect(after).not.toContain(victim);
    expect(after).toContain(victim + 1);
  });
});
