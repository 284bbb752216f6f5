/**
 * `qalqon channel ...`, `send --channel` and `recv` of channel messages, against a real
 * server (`runServer`: TLS 1.3, SQLCipher) with three enrolled users, run in-process: the
 * creator adds members, a message reaches every member exactly once under the channel's
 * name, a removed member gets nothing more, and `channel members` shows the membership
 * the signed log proves.
 */
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  addAndEnrol,
  oneJson,
  qalqon,
  sharedServer,
  withoutKeystoreNotice,
} from './cli-harness.test-util.js';

const server = sharedServer('qalqon-cli-channel-');

beforeAll(async () => {
  for (const name of ['alice', 'bob', 'carol']) await addAndEnrol(server, join(server.root, name), name);
  // A guest may post but not create channels.
  await addAndEnrol(server, join(server.root, 'gus'), 'gus', '--role', 'guest');
});

const as = (user: string, ...args: string[]) => qalqon(...args, '--profile', join(server.root, user));

async function ok(r: Promise<{ code: number; out: string; err: string }>): Promise<string> {
  const x = await r;
  expect(x.code, x.err).toBe(0);
  return x.out;
}

function lines(out: string): Record<string, unknown>[] {
  return out
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('qalqon channel', () => {
  it('creates a channel, adds members, delivers a message once to each, and stops at a removed member', async () => {
    const created = oneJson(await ok(as('alice', 'channel', 'create', 'ops', '--json')));
    expect(created.channel).toMatchObject({ name: 'ops', members: 1, seq: 0 });
    expect(await ok(as('alice', 'channel', 'add', 'ops', 'bob'))).toBe('Added "bob" to #ops as member.\n');
    expect(oneJson(await ok(as('alice', 'channel', 'add', 'ops', 'carol', '--json')))).toEqual({
      channel: 'ops',
      user: 'carol',
      role: 'member',
    });

    // Only the channel's members see it; each sees it under its name.
    for (const user of ['alice', 'bob', 'carol']) {
      const list = oneJson(await ok(as(user, 'channel', 'list', '--json'))).channels as {
        name: string;
        members: number;
      }[];
      expect(list.map((c) => [c.name, c.members])).toEqual([['ops', 3]]);
    }
    expect(oneJson(await ok(as('gus', 'channel', 'list', '--json'))).channels).toEqual([]);

    const sent = oneJson(await ok(as('alice', 'send', '--channel', 'ops', 'deploy at noon', '--json')));
    expect(sent).toMatchObject({ channel: 'ops' });

    // bob: the human form; carol: JSON lines naming the channel. Exactly once each.
    expect(await ok(as('bob', 'recv'))).toBe('#ops alice: deploy at noon\n');
    expect(await ok(as('bob', 'recv'))).toBe('');
    const got = lines(await ok(as('carol', 'recv', '--json')));
    expect(got).toEqual([
      expect.objectContaining({
        from: 'alice',
        channel: 'ops',
        text: 'deploy at noon',
        device: expect.any(Number),
      }),
    ]);
    expect(await ok(as('carol', 'recv', '--json'))).toBe('');
    // gus is no member: nothing.
    expect(await ok(as('gus', 'recv'))).toBe('');

    // A member who is not a manager cannot add or remove others; gus may not create channels.
    const notManager = await as('bob', 'channel', 'add', 'ops', 'gus');
    expect(notManager.code).toBe(1);
    expect(notManager.out).toBe('');
    expect(withoutKeystoreNotice(notManager.err)).toMatch(/^qalqon: [^\n]+\.\n$/);
    const guest = await as('gus', 'channel', 'create', 'gus-den');
    expect(guest.code).toBe(1);
    expect(guest.err).toMatch(/\(FORBIDDEN\)\.\n$/);

    // carol removed: the next message reaches bob and not her.
    expect(await ok(as('alice', 'channel', 'remove', 'ops', 'carol'))).toBe('Removed "carol" from #ops.\n');
    const members = oneJson(await ok(as('alice', 'channel', 'members', 'ops', '--json')));
    expect(members.channel).toBe('ops');
    expect(
      (members.members as { user: string; role: string }[])
        .map((m) => [m.user, m.role])
        .sort((a, b) => a[0]!.localeCompare(b[0]!)),
    ).toEqual([
      ['alice', 'manager'],
      ['bob', 'member'],
    ]);
    expect(await ok(as('bob', 'channel', 'members', 'ops'))).toBe(
      'alice\tmanager\tidentity trusted\nbob\tmember\tidentity self\n',
    );

    await ok(as('bob', 'send', '--channel', 'ops', 'noted'));
    expect(await ok(as('alice', 'recv'))).toBe('#ops bob: noted\n');
    expect(await ok(as('carol', 'recv'))).toBe('');
    const gone = await as('carol', 'send', '--channel', 'ops', 'still here?');
    expect(gone.code).toBe(1);
    expect(gone.err).not.toContain('still here?');

    // Usage: exactly one of --to and --channel; channel verbs take their arguments.
    for (const argv of [
      ['send', '--to', 'bob', '--channel', 'ops', 'both'],
      ['send', 'neither'],
      ['channel', 'create'],
      ['channel', 'add', 'ops'],
      ['channel', 'frob'],
      ['channel', 'list', '--manager'],
    ]) {
      const r = await as('alice', ...argv);
      expect(r.code, argv.join(' ')).toBe(2);
      expect(r.out).toBe('');
    }
  });
});
