/**
 * Channels end to end: real profiles (SQLCipher, passphrase keystore) against a real server
 * over real TLS 1.3, nothing mocked. Five users; alice and bob have two devices each.
 *
 * Where the test plays a server that breaks the rules, it does so in the server's own
 * storage: it opens the server's SQLCipher database with the data key from the server's
 * KMS (as an operator with the disk and the master key could) and writes rows directly —
 * a member-table row with no signed `add` (the Storage interface offers no such insert,
 * and appendChannelChange would also append a log entry), or a log entry re-sealed with
 * altered bytes. The server then serves and fans out from those rows as from any others.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  type ClientOptions,
  isClientError,
  QalqonClient,
  type ReceivedMessage,
  type ReceiveFailure,
} from '@qalqon/client';
import {
  DATABASE_DEK,
  DEK_FILE,
  DekRegistry,
  FIELD_DEK,
  FIELD_DEK_GENERATION,
  FieldSealer,
  LOCAL_KMS_FILE,
  LocalKms,
  openSqlcipher,
  DATABASE_FILE as SERVER_DATABASE_FILE,
  type SqliteDatabase,
  type Storage,
  spkiPin,
} from '@qalqon/server';
import { CHANNEL_ENVELOPE_TYPE } from '@qalqon/wire';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { issueEnrolmentCode } from '../../packages/server/src/service/data-dir.js';
import { type Harness, startHarness } from '../../packages/server/src/service/harness.test-util.js';
import { channelLogRef } from '../../packages/server/src/storage/sealed-rows.js';

let h: Harness;
let root: string;
const warnings: string[] = [];
const PASSPHRASE = 'channels e2e passphrase';

function opts(name: string): ClientOptions & { keystore: 'passphrase' } {
  return {
    profile: join(root, name),
    passphrase: () => PASSPHRASE,
    keystore: 'passphrase',
    warning: (l) => warnings.push(l),
  };
}

const server = () => `https://127.0.0.1:${h.port}`;

interface Drained {
  messages: ReceivedMessage[];
  failures: ReceiveFailure[];
}

async function drain(c: QalqonClient): Promise<Drained> {
  const messages: ReceivedMessage[] = [];
  const failures: ReceiveFailure[] = [];
  await c.receive({ onMessage: (m) => messages.push(m), onFailure: (f) => failures.push(f) });
  return { messages, failures };
}

async function drainAll<T extends QalqonClient[]>(...cs: T): Promise<{ [K in keyof T]: Drained }> {
  return (await Promise.all(cs.map(drain))) as { [K in keyof T]: Drained };
}

/** The server's database, opened as the server opens it: the data key unwrapped by its KMS. */
async function withServerDb<T>(fn: (db: SqliteDatabase, sealer: FieldSealer) => T): Promise<T> {
  const kms = await LocalKms.open(join(h.dir, LOCAL_KMS_FILE));
  const registry = await DekRegistry.open(join(h.dir, DEK_FILE), kms);
  const dbKey = await registry.get(DATABASE_DEK);
  const fieldKey = await registry.get(FIELD_DEK);
  const sealer = new FieldSealer(new Map([[FIELD_DEK_GENERATION, fieldKey]]), FIELD_DEK_GENERATION);
  const db = openSqlcipher(join(h.dir, SERVER_DATABASE_FILE), dbKey);
  dbKey.fill(0);
  fieldKey.fill(0);
  try {
    return fn(db, sealer);
  } finally {
    db.close();
    sealer.destroy();
    await kms.close();
  }
}

/** A member-table row the signed log knows nothing of. */
function insertMemberRow(channelId: string, userId: string): Promise<void> {
  return withServerDb((db) => {
    const seq = (db.prepare('SELECT seq FROM channels WHERE id = ?').get(channelId) as { seq: number }).seq;
    db.prepare(
      "INSERT INTO channel_members (channel_id, user_id, role, added_seq) VALUES (?, ?, 'member', ?)",
    ).run(channelId, userId, seq);
  });
}

function deleteMemberRow(channelId: string, userId: string): Promise<void> {
  return withServerDb((db) => {
    db.prepare('DELETE FROM channel_members WHERE channel_id = ? AND user_id = ?').run(channelId, userId);
  });
}

/** Replaces the stored bytes of log entry `seq` (re-sealed, so the server serves them as its own). */
function forgeLogEntry(channelId: string, seq: number, edit: (change: string) => string): Promise<void> {
  return withServerDb((db, sealer) => {
    const row = db
      .prepare('SELECT change FROM channel_log WHERE channel_id = ? AND seq = ?')
      .get(channelId, seq) as { change: Uint8Array };
    const ref = channelLogRef(channelId, seq, 'change');
    const text = Buffer.from(sealer.open(ref, new Uint8Array(row.change))).toString('utf8');
    const forged = edit(text);
    expect(forged).not.toBe(text);
    db.prepare('UPDATE channel_log SET change = ? WHERE channel_id = ? AND seq = ?').run(
      Buffer.from(sealer.seal(ref, new TextEncoder().encode(forged))),
      channelId,
      seq,
    );
  });
}

async function channelIdOf(c: QalqonClient, name: string): Promise<string> {
  const ch = (await c.listChannels()).find((x) => x.name === name);
  if (!ch) throw new Error(`no channel ${name}`);
  return ch.id;
}

const texts = (d: Drained) => d.messages.map((m) => m.text);

/** While > 0, appendChannelChange calls wait until this many have arrived, then all go on at once. */
let gatherAppends = 0;
const gathered: (() => void)[] = [];
/** appendChannelChange calls the storage refused with CHANNEL_CONFLICT. */
let appendConflicts = 0;

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), 'qalqon-channels-'));
  h = await startHarness({
    // Only to line two concurrent changes up at the storage, so the conflict surely happens.
    wrapStorage: (real) =>
      new Proxy(real, {
        get(target, prop) {
          if (prop === 'appendChannelChange') {
            return async (...args: Parameters<Storage['appendChannelChange']>) => {
              if (gatherAppends > 0) {
                await new Promise<void>((resolve) => {
                  const timer = setTimeout(resolve, 10_000);
                  gathered.push(() => {
                    clearTimeout(timer);
                    resolve();
                  });
                  if (gathered.length >= gatherAppends) {
                    gatherAppends = 0;
                    for (const go of gathered.splice(0)) go();
                  }
                });
              }
              try {
                return await target.appendChannelChange(...args);
              } catch (err) {
                if ((err as { code?: unknown }).code === 'CHANNEL_CONFLICT') appendConflicts++;
                throw err;
              }
            };
          }
          const v = Reflect.get(target, prop, target);
          return typeof v === 'function' ? v.bind(target) : v;
        },
      }),
  });
});

afterAll(async () => {
  await h?.close();
  if (root) rmSync(root, { recursive: true, force: true });
});

describe('channels over real TLS with real profiles', () => {
  let alice1: QalqonClient;
  let alice2: QalqonClient;
  let bob1: QalqonClient;
  let bob2: QalqonClient;
  let carol: QalqonClient;
  let dave: QalqonClient;
  let eve: QalqonClient;
  let ops: string;
  let aliceKey: string;
  let bobKey: string;

  const enroll = async (name: string) =>
    QalqonClient.enroll({
      ...opts(name),
      server: server(),
      pin: spkiPin(h.cert),
      code: (await h.addUser(name)).code,
    });

  const link = async (first: QalqonClient, profile: string) => {
    let gotCode: (c: string) => void = () => undefined;
    const code = new Promise<string>((r) => {
      gotCode = r;
    });
    const linking = QalqonClient.link({
      ...opts(profile),
      server: server(),
      pin: spkiPin(h.cert),
      onLinkCode: gotCode,
      waitMs: 30_000,
    });
    await first.approveLink(await code);
    return linking;
  };

  afterAll(() => {
    for (const c of [alice1, alice2, bob1, bob2, carol, dave, eve]) c?.close();
  });

  it('enrols five users, alice and bob with two devices each', async () => {
    alice1 = await enroll('alice');
    bob1 = await enroll('bob');
    carol = await enroll('carol');
    dave = await enroll('dave');
    eve = await enroll('eve');
    alice2 = await link(alice1, 'alice2');
    bob2 = await link(bob1, 'bob2');
    expect(alice2.userId).toBe(alice1.userId);
    expect(bob2.userId).toBe(bob1.userId);
  });

  it('creates a channel, adds members by signed changes, and every device reads each message once', async () => {
    const created = await alice1.createChannel('ops');
    expect(created).toMatchObject({ name: 'ops', seq: 0, members: 1 });
    ops = created.id;
    await alice1.addChannelMember('ops', 'bob', { manager: true });
    await alice1.addChannelMember('ops', 'carol');
    // From bob's verified copy of the log; he has not looked anyone up yet.
    const members = await bob1.channelMembers('ops');
    expect(members.map((m) => [m.user, m.role, m.identity])).toEqual([
      ['alice', 'manager', 'unknown'],
      ['bob', 'manager', 'self'],
      ['carol', 'member', 'unknown'],
    ]);
    // alice looked both up to add them: the keys the log binds are the ones she trusts.
    expect((await alice1.channelMembers('ops')).map((m) => m.identity)).toEqual([
      'self',
      'trusted',
      'trusted',
    ]);
    expect((await carol.listChannels()).map((c) => c.name)).toEqual(['ops']);
    // Arguments are checked before anything is asked of the server.
    await expect(alice1.sendChannel('Not A Name', 'x')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(alice1.sendChannel('nosuch', 'x')).rejects.toMatchObject({ code: 'CHANNEL_NOT_FOUND' });
    await expect(alice1.addChannelMember('ops', 'carol')).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    await expect(carol.addChannelMember('ops', 'dave')).rejects.toMatchObject({
      code: 'CHANNEL_NOT_MANAGER',
    });

    const a = await alice1.sendChannel('ops', 'hello ops');
    expect(a.rotated).toBe(true);
    // alice2, bob1, bob2, carol.
    expect(a.keysSent).toBe(4);
    aliceKey = a.distributionId;
    const [rA2, rB1, rB2, rC] = await drainAll(alice2, bob1, bob2, carol);
    for (const r of [rA2, rB1, rB2, rC]) {
      expect(r.failures).toEqual([]);
      expect(r.messages).toHaveLength(1);
      expect(r.messages[0]).toMatchObject({
        from: 'alice',
        channel: 'ops',
        conversation: 'ops',
        text: 'hello ops',
      });
      expect(r.messages[0]!.id).toBe(a.id);
    }
    expect(rA2.messages[0]!.device).toBe(alice1.deviceId);

    const b = await bob1.sendChannel('ops', 'bob here');
    bobKey = b.distributionId;
    expect(b.distributionId).not.toBe(aliceKey);
    const again = await alice1.sendChannel('ops', 'second from alice');
    // Nothing changed: the same key, handed to nobody again.
    expect(again).toMatchObject({ rotated: false, keysSent: 0, distributionId: aliceKey });
    const [sA1, sA2, sB1, sB2, sC] = await drainAll(alice1, alice2, bob1, bob2, carol);
    expect(texts(sA1)).toEqual(['bob here']);
    expect(texts(sA2)).toEqual(['bob here', 'second from alice']);
    expect(texts(sB1)).toEqual(['second from alice']);
    expect(texts(sB2)).toEqual(['bob here', 'second from alice']);
    expect(texts(sC)).toEqual(['bob here', 'second from alice']);
    for (const r of [sA1, sA2, sB1, sB2, sC]) expect(r.failures).toEqual([]);
    // Sending and receiving taught bob the members' keys, equal to those the log binds.
    expect((await bob1.channelMembers('ops')).map((m) => m.identity)).toEqual(['trusted', 'self', 'trusted']);
    // Shown once: nothing comes again.
    for (const r of await drainAll(alice1, alice2, bob1, bob2, carol)) {
      expect(r.messages).toEqual([]);
      expect(r.failures).toEqual([]);
    }
  });

  it('after a removal every member sends with a new key, which the removed member cannot read', async () => {
    await alice1.removeChannelMember('ops', 'carol');
    expect((await alice2.channelMembers('ops')).map((m) => m.user)).toEqual(['alice', 'bob']);
    await expect(carol.sendChannel('ops', 'still here?')).rejects.toMatchObject({
      code: 'CHANNEL_NOT_FOUND',
    });
    // carol's client keeps her old sender keys; the server delivers to her again.
    await insertMemberRow(ops, carol.userId);
    try {
      const a = await alice1.sendChannel('ops', 'after carol left (alice)');
      const b = await bob1.sendChannel('ops', 'after carol left (bob)');
      expect(a.rotated).toBe(true);
      expect(b.rotated).toBe(true);
      expect(a.distributionId).not.toBe(aliceKey);
      expect(b.distributionId).not.toBe(bobKey);
      aliceKey = a.distributionId;
      bobKey = b.distributionId;
      const rc = await drain(carol);
      expect(rc.messages).toEqual([]);
      expect(rc.failures.map((f) => [f.code, f.from, f.channelId])).toEqual([
        ['NO_SENDER_KEY', 'alice', ops],
        ['NO_SENDER_KEY', 'bob', ops],
      ]);
      const [rA1, rA2, rB1, rB2] = await drainAll(alice1, alice2, bob1, bob2);
      expect(texts(rA1)).toEqual(['after carol left (bob)']);
      expect(texts(rA2)).toEqual(['after carol left (alice)', 'after carol left (bob)']);
      expect(texts(rB1)).toEqual(['after carol left (alice)']);
      expect(texts(rB2)).toEqual(['after carol left (alice)', 'after carol left (bob)']);
    } finally {
      await deleteMemberRow(ops, carol.userId);
    }
  });

  it('a new member cannot read what was sent before they joined, even with the key they get later', async () => {
    // The server delivers to dave before any signed add names him.
    await insertMemberRow(ops, dave.userId);
    const before = await alice1.sendChannel('ops', 'before dave joined');
    expect(before.keysSent).toBe(0);
    const captured = await h.storage.fetchEnvelopes(dave.userId, dave.deviceId);
    expect(captured).toHaveLength(1);
    expect(captured[0]!.body[0]).toBe(CHANNEL_ENVELOPE_TYPE);
    const r1 = await drain(dave);
    expect(r1.messages).toEqual([]);
    expect(r1.failures.map((f) => f.code)).toEqual(['NO_SENDER_KEY']);
    await deleteMemberRow(ops, dave.userId);

    await alice1.addChannelMember('ops', 'dave');
    const welcome = await alice1.sendChannel('ops', 'welcome dave');
    // The same key as before he joined, handed to him at its current position only.
    expect(welcome).toMatchObject({ rotated: false, keysSent: 1, distributionId: aliceKey });
    const r2 = await drain(dave);
    expect(r2.failures).toEqual([]);
    expect(texts(r2)).toEqual(['welcome dave']);
    // The envelope of the earlier message, delivered once more now that dave holds the key.
    await h.storage.enqueue(
      captured.map((e) => ({
        recipientUserId: e.recipientUserId,
        recipientDeviceId: e.recipientDeviceId,
        senderUserId: e.senderUserId,
        senderDeviceId: e.senderDeviceId,
        body: e.body,
      })),
    );
    const r3 = await drain(dave);
    expect(r3.messages).toEqual([]);
    expect(r3.failures.map((f) => f.code)).toEqual(['DUPLICATE_MESSAGE']);
    await drainAll(alice2, bob1, bob2);
  });

  it('a member the server inserts on its own gets no sender key and reads nothing', async () => {
    await insertMemberRow(ops, eve.userId);
    try {
      const a = await alice1.sendChannel('ops', 'not for eve (alice)');
      const b = await bob2.sendChannel('ops', 'not for eve (bob2)');
      expect(a.rotated).toBe(false);
      // bob2 never sent before: a new key, handed to alice1, alice2, bob1 and dave, not to eve.
      expect(b).toMatchObject({ rotated: true, keysSent: 4 });
      // Everything queued for eve is channel ciphertext: no member handed her a key over 1:1.
      const queued = await h.storage.fetchEnvelopes(eve.userId, eve.deviceId);
      expect(queued).toHaveLength(2);
      for (const e of queued) expect(e.body[0]).toBe(CHANNEL_ENVELOPE_TYPE);
      const re = await drain(eve);
      expect(re.messages).toEqual([]);
      expect(re.failures.map((f) => f.code)).toEqual(['NO_SENDER_KEY', 'NO_SENDER_KEY']);
      // The server lists the channel for her, but its verified log does not name her.
      expect((await eve.listChannels()).map((c) => c.name)).toEqual(['ops']);
      expect((await eve.channelMembers('ops')).map((m) => m.user)).toEqual(['alice', 'bob', 'dave']);
      await expect(eve.sendChannel('ops', 'let me in')).rejects.toMatchObject({ code: 'CHANNEL_NOT_MEMBER' });
      const [rA1, rB1, rD] = await drainAll(alice1, bob1, dave);
      expect(texts(rA1)).toEqual(['not for eve (bob2)']);
      expect(texts(rB1)).toEqual(['not for eve (alice)', 'not for eve (bob2)']);
      expect(texts(rD)).toEqual(['not for eve (alice)', 'not for eve (bob2)']);
      await drainAll(alice2, bob2);
    } finally {
      await deleteMemberRow(ops, eve.userId);
    }
  });

  it('removing a device of a member makes the other members send with a new key', async () => {
    await bob1.removeDevice(bob2.deviceId);
    const a = await alice1.sendChannel('ops', 'after bob2 went');
    expect(a.rotated).toBe(true);
    expect(a.distributionId).not.toBe(aliceKey);
    // alice2, bob1, dave: the new key; the removed device gets nothing.
    expect(a.keysSent).toBe(3);
    const [rA2, rB1, rD] = await drainAll(alice2, bob1, dave);
    for (const r of [rA2, rB1, rD]) expect(texts(r)).toEqual(['after bob2 went']);
  });

  it('signs concurrent changes again after a conflict', async () => {
    await alice1.createChannel('race');
    // Both devices sign change 1; the storage takes one, refuses the other, whose client reloads and signs change 2.
    gatherAppends = 2;
    await Promise.all([alice1.addChannelMember('race', 'carol'), alice2.addChannelMember('race', 'dave')]);
    expect(appendConflicts).toBe(1);
    expect((await alice1.channelMembers('race')).map((m) => m.user)).toEqual(['alice', 'carol', 'dave']);
    const seqs = (await alice1.listChannels()).find((c) => c.name === 'race');
    expect(seqs).toMatchObject({ seq: 2, members: 3 });
    // Leaving is removing oneself, signed by the one leaving.
    await carol.removeChannelMember('race', 'carol');
    expect((await dave.channelMembers('race')).map((m) => m.user)).toEqual(['alice', 'dave']);
    // The server forgets carol's leaving (its last change): dave verified it, so that is a rollback.
    const race = await channelIdOf(alice1, 'race');
    await withServerDb((db) => {
      db.prepare('DELETE FROM channel_log WHERE channel_id = ? AND seq = 3').run(race);
      db.prepare('UPDATE channels SET seq = 2 WHERE id = ?').run(race);
    });
    await expect(dave.channelMembers('race')).rejects.toMatchObject({ code: 'CHANNEL_LOG_INVALID' });
  });

  it('refuses a log the server altered, with CHANNEL_LOG_INVALID', async () => {
    await alice1.createChannel('forge');
    await alice1.addChannelMember('forge', 'bob');
    const forge = await channelIdOf(alice1, 'forge');
    expect((await bob1.channelMembers('forge')).map((m) => m.user)).toEqual(['alice', 'bob']);
    await alice1.addChannelMember('forge', 'dave');
    // The stored add of dave now makes him a manager: the signature no longer covers the bytes.
    await forgeLogEntry(forge, 2, (t) => t.replace('"role":"member"', '"role":"manager"'));
    // bob verified up to change 1: the next change does not verify.
    const refused = await bob1.channelMembers('forge').catch((e: unknown) => e);
    expect(isClientError(refused, 'CHANNEL_LOG_INVALID')).toBe(true);
    // dave never verified the log: the whole replay fails at the same change.
    await expect(dave.sendChannel('forge', 'x')).rejects.toMatchObject({ code: 'CHANNEL_LOG_INVALID' });
    // alice verified change 2 before it was altered: she sends; what she sends is refused by bob.
    await alice1.sendChannel('forge', 'through a forged log');
    const rb = await drain(bob1);
    expect(rb.messages).toEqual([]);
    expect(rb.failures.map((f) => [f.code, f.channelId])).toEqual([
      ['CHANNEL_LOG_INVALID', forge],
      ['CHANNEL_LOG_INVALID', forge],
    ]);
    expect(warnings.some((w) => w.includes('does not verify'))).toBe(true);
  });

  it('gives no key to a member whose identity key is no longer the one the log binds', async () => {
    // dave enrols afresh: a new identity key, his old device gone. The log still binds the old key.
    const { code } = await issueEnrolmentCode(h.storage, dave.userId, Date.now());
    const daveNew = await QalqonClient.enroll({
      ...opts('dave-new'),
      server: server(),
      pin: spkiPin(h.cert),
      code,
    });
    try {
      warnings.length = 0;
      const a = await alice1.sendChannel('ops', 'dave has a new key');
      // He held the key (on his old device): a new one, for alice2 and bob1 only.
      expect(a).toMatchObject({ rotated: true, keysSent: 2 });
      expect(warnings.some((w) => w.includes('binds another identity key for dave'))).toBe(true);
      expect((await alice1.channelMembers('ops')).find((m) => m.user === 'dave')?.identity).toBe('mismatch');
      // The server still delivers to his new device; it reads nothing, and cannot post as a member.
      const rd = await drain(daveNew);
      expect(rd.messages).toEqual([]);
      expect(rd.failures.map((f) => f.code)).toEqual(['NO_SENDER_KEY']);
      await expect(daveNew.sendChannel('ops', 'me again')).rejects.toMatchObject({
        code: 'IDENTITY_CHANGED',
      });
      const [rA2, rB1] = await drainAll(alice2, bob1);
      expect(texts(rA2)).toEqual(['dave has a new key']);
      expect(texts(rB1)).toEqual(['dave has a new key']);
    } finally {
      daveNew.close();
    }
  });
});
