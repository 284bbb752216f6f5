/**
 * Channels against a real server over real TLS with a real SQLCipher store: creation and
 * membership changes signed with the test devices' real identity keys (XEdDSA), the
 * refusals of forged, unauthorised, mis-keyed and stale changes (with no state change),
 * and fan-out of channel messages to exactly the member devices other than the sender's.
 */
import { randomBytes, sha256, x25519GenerateKeyPair, xeddsaSign, xeddsaVerify } from '@qalqon/crypto';
import {
  type ChannelChangeJson,
  ChannelInfo,
  ChannelLogResponse,
  ChannelSendResponse,
  ChannelsResponse,
  channelChangeSigningMessage,
  channelEnvelopeHeader,
  encodeBase64,
  encodeChannelChange,
  GENESIS_PREV,
  NewDevice,
  replayChannelLog,
  type SignedChannelChangeJson,
  signedChangeJson,
} from '@qalqon/wire';
import { afterEach, describe, expect, it } from 'vitest';
import { createService } from './app.js';
import { toNewDevice } from './context.js';
import {
  type Enrolled,
  enrol,
  type Harness,
  type HttpResult,
  http,
  makeDevice,
  signIn,
  startHarness,
  typed,
} from './harness.test-util.js';

const harnesses: Harness[] = [];
afterEach(async () => {
  for (const h of harnesses.splice(0)) await h.close();
});

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

interface Dev extends Enrolled {
  readonly name: string;
  readonly token: string;
}

/** A channel's log as a client tracks it: the next seq and prev. */
class LogCursor {
  seq = 0;
  head = GENESIS_PREV;
  constructor(readonly id: string) {}
  accept(bytes: Uint8Array): void {
    this.seq += 1;
    this.head = hex(sha256(bytes));
  }
}

function signWith(
  privateKey: Uint8Array,
  change: ChannelChangeJson,
): { bytes: Uint8Array; json: SignedChannelChangeJson } {
  const bytes = encodeChannelChange(change);
  const signature = xeddsaSign(privateKey, channelChangeSigningMessage(bytes));
  return { bytes, json: signedChangeJson({ change: bytes, signature }) };
}

const by = (d: Dev) => ({ userId: d.userId, deviceId: d.deviceId });

async function setup() {
  const h = await startHarness();
  harnesses.push(h);
  const mk = async (name: string): Promise<Dev> => {
    const e = await enrol(h, (await h.addUser(name)).code);
    return { ...e, name, token: await signIn(h, e) };
  };
  const alice = await mk('alice');
  const bob = await mk('bob');
  const carol = await mk('carol');
  const dave = await mk('dave');
  // Alice's second device shares her identity key.
  const keys2 = makeDevice({ identity: alice.keys.identity });
  const d2 = await h.storage.addDevice(alice.userId, toNewDevice(NewDevice.parse(keys2.json)));
  const alice2e: Enrolled = { userId: alice.userId, deviceId: d2.deviceId, keys: keys2 };
  const alice2: Dev = { ...alice2e, name: 'alice', token: await signIn(h, alice2e) };

  const create = async (owner: Dev, name: string): Promise<{ res: HttpResult; log: LogCursor }> => {
    const log = new LogCursor(hex(randomBytes(16)));
    const g = signWith(owner.keys.identity.privateKey, {
      v: 1,
      channel: log.id,
      seq: 0,
      prev: GENESIS_PREV,
      at: Date.now(),
      by: by(owner),
      op: 'create',
      name,
      userName: owner.name,
      identityKey: owner.keys.json.identityKey,
    });
    const res = await http(h, 'POST', '/v1/channels', { entry: g.json }, { token: owner.token });
    if (res.status === 200) log.head = hex(sha256(g.bytes));
    return { res, log };
  };
  const change = async (
    actor: Dev,
    log: LogCursor,
    c:
      | { op: 'add'; who: Dev; role?: 'member' | 'manager'; identityKey?: string }
      | { op: 'remove'; who: Dev },
    options: { signer?: Uint8Array; seq?: number; prev?: string } = {},
  ): Promise<HttpResult> => {
    const base = {
      v: 1 as const,
      channel: log.id,
      seq: options.seq ?? log.seq + 1,
      prev: options.prev ?? log.head,
      at: Date.now(),
      by: by(actor),
    };
    const json: ChannelChangeJson =
      c.op === 'add'
        ? {
            ...base,
            op: 'add',
            userId: c.who.userId,
            userName: c.who.name,
            identityKey: c.identityKey ?? c.who.keys.json.identityKey,
            role: c.role ?? 'member',
          }
        : { ...base, op: 'remove', userId: c.who.userId };
    const s = signWith(options.signer ?? actor.keys.identity.privateKey, json);
    const res = await http(
      h,
      'POST',
      `/v1/channels/${log.id}/changes`,
      { entry: s.json },
      { token: actor.token },
    );
    if (res.status === 200) log.accept(s.bytes);
    return res;
  };
  const post = (sender: Dev, log: LogCursor, body: Uint8Array) =>
    http(h, 'POST', `/v1/channels/${log.id}/messages`, { body: encodeBase64(body) }, { token: sender.token });
  const channelBody = (log: LogCursor) => {
    const header = channelEnvelopeHeader(log.id);
    const body = new Uint8Array(header.length + 40);
    body.set(header, 0);
    body.set(randomBytes(40), header.length);
    return body;
  };
  /** How many queued envelopes of a device carry exactly `body`. */
  const received = async (d: { userId: string; deviceId: number }, body: Uint8Array) =>
    (await h.storage.fetchEnvelopes(d.userId, d.deviceId)).filter((e) => Buffer.compare(e.body, body) === 0)
      .length;
  /** What the server holds about a channel: seq, members and log length. */
  const snapshot = async (log: LogCursor) => ({
    channel: await h.storage.getChannel(log.id),
    members: await h.storage.channelMembers(log.id),
    entries: (await h.storage.channelLog(log.id)).length,
  });
  return { h, alice, alice2, bob, carol, dave, create, change, post, channelBody, received, snapshot };
}

function code(r: HttpResult): string | undefined {
  return (r.json as { error?: { code?: string } } | undefined)?.error?.code;
}

describe('channels', () => {
  it('creates a channel from a signed genesis, lists it and serves a log that replays', async () => {
    const { h, alice, bob, create, change } = await setup();
    const { res, log } = await create(alice, 'ops');
    expect(res.status).toBe(200);
    const info = ChannelInfo.parse(res.json);
    expect(info).toMatchObject({ id: log.id, name: 'ops', seq: 0, members: 1 });
    // The creator holds channel.manage on it through a mirrored channel-scoped admin grant.
    expect(await h.storage.listGrants({ userId: alice.userId })).toContainEqual({
      userId: alice.userId,
      role: 'admin',
      scope: { kind: 'channel', channelId: log.id },
    });

    expect((await change(alice, log, { op: 'add', who: bob })).status).toBe(200);
    const mine = ChannelsResponse.parse(
      (await http(h, 'GET', '/v1/channels', undefined, { token: bob.token })).json,
    );
    expect(mine.channels.map((c) => c.id)).toEqual([log.id]);

    const got = await http(h, 'GET', `/v1/channels/${log.id}`, undefined, { token: bob.token });
    expect(got.status).toBe(200);
    const body = ChannelLogResponse.parse(got.json);
    expect(body.channel).toMatchObject({ seq: 1, members: 2 });
    const state = replayChannelLog(
      body.entries.map((e) => ({ change: e.change, signature: e.signature })),
      { xeddsaVerify, sha256 },
      log.id,
    );
    expect([...state.members.keys()].sort()).toEqual([alice.userId, bob.userId].sort());
    const page = ChannelLogResponse.parse(
      (await http(h, 'GET', `/v1/channels/${log.id}?after=0`, undefined, { token: bob.token })).json,
    );
    expect(page.entries).toHaveLength(1);
    // Same id or same name again: CHANNEL_EXISTS.
    const again = await create(alice, 'ops');
    expect([again.res.status, code(again.res)]).toEqual([409, 'CHANNEL_EXISTS']);
  });

  it('refuses a genesis not made by the caller, or with another identity key', async () => {
    const { h, alice, bob } = await setup();
    const mk = (signer: Uint8Array, d: Dev, identityKey: string, userName = d.name) =>
      signWith(signer, {
        v: 1,
        channel: hex(randomBytes(16)),
        seq: 0,
        prev: GENESIS_PREV,
        at: Date.now(),
        by: by(d),
        op: 'create',
        name: 'x',
        userName,
        identityKey,
      }).json;
    // Signed by Bob, claiming Alice: the signature does not verify under the named key.
    const forged = await http(
      h,
      'POST',
      '/v1/channels',
      { entry: mk(bob.keys.identity.privateKey, alice, alice.keys.json.identityKey) },
      { token: alice.token },
    );
    expect([forged.status, code(forged)]).toEqual([400, 'CHANNEL_CHANGE_INVALID']);
    // Bob's own valid genesis, submitted on Alice's session.
    const notMine = await http(
      h,
      'POST',
      '/v1/channels',
      { entry: mk(bob.keys.identity.privateKey, bob, bob.keys.json.identityKey) },
      { token: alice.token },
    );
    expect([notMine.status, code(notMine)]).toEqual([400, 'CHANNEL_CHANGE_INVALID']);
    // A fresh key pair that is not Alice's identity key.
    const other = x25519GenerateKeyPair();
    const wrongKey = await http(
      h,
      'POST',
      '/v1/channels',
      { entry: mk(other.privateKey, alice, encodeBase64(typed(0x05, other.publicKey))) },
      { token: alice.token },
    );
    expect([wrongKey.status, code(wrongKey)]).toEqual([409, 'IDENTITY_KEY_MISMATCH']);
    expect(await h.storage.listChannels()).toEqual([]);
  });

  it('refuses forged, unauthorised, mis-keyed and stale changes and changes nothing', async () => {
    const { alice, alice2, bob, carol, dave, create, change, snapshot } = await setup();
    const { log } = await create(alice, 'ops');
    expect((await change(alice, log, { op: 'add', who: bob })).status).toBe(200);
    const before = await snapshot(log);

    // Forged: claims to be Alice's, signed with Bob's key.
    const forged = await change(
      alice,
      log,
      { op: 'add', who: carol },
      { signer: bob.keys.identity.privateKey },
    );
    expect([forged.status, code(forged)]).toEqual([400, 'CHANNEL_CHANGE_INVALID']);
    expect((forged.json as { error: { message: string } }).error.message).toMatch(/bad-signature/);
    // A member who is not a manager may not add.
    const notManager = await change(bob, log, { op: 'add', who: carol });
    expect([notManager.status, code(notManager)]).toEqual([400, 'CHANNEL_CHANGE_INVALID']);
    expect((notManager.json as { error: { message: string } }).error.message).toMatch(/not-allowed/);
    // The bound identity key is not Carol's.
    const wrongKey = await change(alice, log, {
      op: 'add',
      who: carol,
      identityKey: encodeBase64(typed(0x05, x25519GenerateKeyPair().publicKey)),
    });
    expect([wrongKey.status, code(wrongKey)]).toEqual([409, 'IDENTITY_KEY_MISMATCH']);
    // A place in the log that is already taken.
    const stale = await change(alice, log, { op: 'add', who: carol }, { seq: 1, prev: GENESIS_PREV });
    expect([stale.status, code(stale)]).toEqual([409, 'CHANNEL_CONFLICT']);
    // Alice's other device (same user, same identity key) claiming to be device 1: `by` is not the caller.
    const claim = await change({ ...alice2, deviceId: alice.deviceId }, log, { op: 'add', who: carol });
    expect([claim.status, code(claim)]).toEqual([400, 'CHANNEL_CHANGE_INVALID']);
    // A non-member cannot even propose.
    const outsider = await change(dave, log, { op: 'remove', who: dave });
    expect([outsider.status, code(outsider)]).toEqual([403, 'NOT_A_MEMBER']);

    expect(await snapshot(log)).toEqual(before);
  });

  it('mirrors managers as grants: a member added as manager may add, and anyone may leave', async () => {
    const { h, alice, bob, carol, dave, create, change } = await setup();
    const { log } = await create(alice, 'ops');
    expect((await change(alice, log, { op: 'add', who: bob, role: 'manager' })).status).toBe(200);
    expect((await change(bob, log, { op: 'add', who: carol })).status).toBe(200);
    // Carol (a plain member, no channel.manage) may remove herself…
    expect((await change(carol, log, { op: 'remove', who: carol })).status).toBe(200);
    // …but not others (the log refuses; she is also no longer a member).
    const r = await change(bob, log, { op: 'add', who: dave });
    expect(r.status).toBe(200);
    const notAllowed = await change(dave, log, { op: 'remove', who: bob });
    expect(notAllowed.status).toBe(400);
    // Bob, removed by Alice, loses his mirrored grant.
    expect((await change(alice, log, { op: 'remove', who: bob })).status).toBe(200);
    expect(
      (await h.storage.listGrants({ userId: bob.userId })).filter((g) => g.scope.kind === 'channel'),
    ).toEqual([]);
    const members = (await h.storage.channelMembers(log.id)).map((m) => m.userId).sort();
    expect(members).toEqual([alice.userId, dave.userId].sort());
  });

  it('fans a message out to every member device except the sender, and never to others', async () => {
    const { alice, alice2, bob, carol, dave, create, change, post, channelBody, received } = await setup();
    const { log } = await create(alice, 'ops');
    expect((await change(alice, log, { op: 'add', who: bob })).status).toBe(200);
    expect((await change(alice, log, { op: 'add', who: carol })).status).toBe(200);

    const body = channelBody(log);
    const sent = await post(alice, log, body);
    expect(sent.status).toBe(200);
    // Alice's other device, Bob, Carol.
    expect(ChannelSendResponse.parse(sent.json)).toEqual({ envelopes: 3 });
    expect(await received(alice, body)).toBe(0);
    expect(await received(alice2, body)).toBe(1);
    expect(await received(bob, body)).toBe(1);
    expect(await received(carol, body)).toBe(1);
    expect(await received(dave, body)).toBe(0);

    // Outsiders may not post.
    const outsider = await post(dave, log, channelBody(log));
    expect([outsider.status, code(outsider)]).toEqual([403, 'NOT_A_MEMBER']);
    // A body whose header names another channel is refused.
    const other = channelBody(new LogCursor(hex(randomBytes(16))));
    const wrong = await post(alice, log, other);
    expect([wrong.status, code(wrong)]).toEqual([400, 'BAD_REQUEST']);
    expect(await received(bob, other)).toBe(0);

    // Once removed, Bob gets nothing more and may not post.
    expect((await change(alice, log, { op: 'remove', who: bob })).status).toBe(200);
    const later = channelBody(log);
    expect(ChannelSendResponse.parse((await post(carol, log, later)).json)).toEqual({ envelopes: 2 });
    expect(await received(bob, later)).toBe(0);
    expect(await received(alice, later)).toBe(1);
    expect(await received(alice2, later)).toBe(1);
    expect(await received(carol, later)).toBe(0);
    const removed = await post(bob, log, channelBody(log));
    expect([removed.status, code(removed)]).toEqual([403, 'NOT_A_MEMBER']);
    // A channel that does not exist.
    const none = await post(alice, new LogCursor(hex(randomBytes(16))), channelBody(log));
    expect([none.status, code(none)]).toEqual([404, 'CHANNEL_NOT_FOUND']);
  });

  it('replays the stored log when another node appended changes meanwhile', async () => {
    const { h, alice, bob, carol, create, change } = await setup();
    const { log } = await create(alice, 'ops');
    expect((await change(alice, log, { op: 'add', who: bob })).status).toBe(200);
    // A second node on the same storage (its own sessions and caches).
    const other = await createService({
      storage: h.storage,
      tls: { cert: h.tls.certPem, key: h.tls.keyPem },
      log: () => {},
    });
    try {
      const ep = { port: (await other.listen('127.0.0.1', 0)).port, cert: h.cert };
      const token = await signIn(ep, alice);
      const s = signWith(alice.keys.identity.privateKey, {
        v: 1,
        channel: log.id,
        seq: log.seq + 1,
        prev: log.head,
        at: Date.now(),
        by: by(alice),
        op: 'add',
        userId: carol.userId,
        userName: carol.name,
        identityKey: carol.keys.json.identityKey,
        role: 'member',
      });
      const r = await http(ep, 'POST', `/v1/channels/${log.id}/changes`, { entry: s.json }, { token });
      expect(r.status).toBe(200);
      log.accept(s.bytes);
    } finally {
      await other.close();
    }
    // This node's cached state is at seq 1; the change at seq 3 must follow the stored seq 2.
    expect((await change(alice, log, { op: 'remove', who: carol })).status).toBe(200);
    expect((await h.storage.getChannel(log.id))?.seq).toBe(3);
    const stale = await change(alice, log, { op: 'remove', who: bob }, { seq: 2, prev: GENESIS_PREV });
    expect([stale.status, code(stale)]).toEqual([409, 'CHANNEL_CONFLICT']);
  });
});
