/**
 * Channels (@qalqon/wire channels.ts): creation with a signed genesis change, the signed
 * membership log, and fan-out of channel messages to every member device.
 *
 * The server applies the same log rules as clients (`applyChannelChange`, with
 * @qalqon/crypto's XEdDSA and SHA-256) before it stores a change, and keeps its member
 * table as a projection of the log. It mirrors the log's managers as channel-scoped grants
 * of the built-in `admin` role, so holding channel.manage on a channel is being a manager
 * in its signed log (or holding it through a wider grant). Who may call each route is in
 * ROUTE_RULES (authz.ts).
 */
import { sha256, xeddsaVerify } from '@qalqon/crypto';
import {
  applyChannelChange,
  CHANNEL_ENVELOPE_HEADER_LEN,
  type ChannelChangeData,
  ChannelChangeRequest,
  ChannelCreateRequest,
  type ChannelLogCrypto,
  ChannelLogQuery,
  ChannelSendRequest,
  type ChannelState,
  channelEnvelopeHeader,
  encodeBase64,
  isChannelLogError,
  MAX_CHANNEL_LOG_PAGE,
  MAX_HTTP_BODY_BYTES,
  MAX_SEND_BODY_BYTES,
  type SignedChannelChangeData,
  sameIdentityKey,
} from '@qalqon/wire';
import type { FastifyInstance } from 'fastify';
import type { Channel, NewEnvelope } from '../../storage/types.js';
import { ApiError } from '../api-error.js';
import {
  actorOf,
  authorize,
  channelResourceOf,
  deviceSubject,
  requestChannel,
  requestIdentity,
} from '../authz.js';
import { parse, type ServiceContext } from '../context.js';
import type { SessionIdentity } from '../sessions.js';

/** The built-in role a channel manager holds on the channel (mirrors the signed log). */
export const CHANNEL_MANAGER_ROLE = 'admin';
/** Replayed channel states kept in memory. */
const MAX_CACHED_STATES = 1000;
/** Envelopes handed to the storage per enqueue call. */
const ENQUEUE_CHUNK = 1000;

const CRYPTO: ChannelLogCrypto = { xeddsaVerify, sha256 };

function invalidChange(err: unknown): ApiError {
  if (isChannelLogError(err)) {
    return new ApiError(
      'CHANNEL_CHANGE_INVALID',
      400,
      `the change was refused (${err.problem}): ${err.message}`,
    );
  }
  return err as ApiError;
}

function channelInfo(ch: Channel, unitName: string | undefined) {
  return {
    id: ch.id,
    name: ch.name,
    ...(unitName === undefined ? {} : { unit: unitName }),
    seq: ch.seq,
    members: ch.memberCount,
    createdAt: ch.createdAt,
  };
}

/** The change must be made by the signed-in device itself. */
function checkBy(change: ChannelChangeData, me: SessionIdentity): void {
  if (change.by.userId !== me.userId || change.by.deviceId !== me.deviceId) {
    throw new ApiError('CHANNEL_CHANGE_INVALID', 400, 'the change must be made (by) by the signed-in device');
  }
}

export async function channelsPlugin(app: FastifyInstance, opts: { ctx: ServiceContext }): Promise<void> {
  const { ctx } = opts;
  const limits = { bodyLimit: MAX_HTTP_BODY_BYTES };
  /** channel id → its replayed state (the entry's seq says which point of the log). */
  const states = new Map<string, ChannelState>();

  // Another node's change: a cached replay older than it is dropped (stateOf also checks
  // the stored seq, so this only frees memory sooner); a resync drops them all.
  ctx.cluster.onChannelChanged((id, seq) => {
    if ((states.get(id)?.seq ?? seq) < seq) states.delete(id);
  });
  ctx.cluster.onResync(() => states.clear());

  const remember = (state: ChannelState): void => {
    states.delete(state.channelId);
    states.set(state.channelId, state);
    if (states.size > MAX_CACHED_STATES) {
      const oldest = states.keys().next().value;
      if (oldest !== undefined) states.delete(oldest);
    }
  };

  /** The state after the channel's stored log, replayed (or from the cache when it is at the same seq). */
  const stateOf = async (ch: Channel): Promise<ChannelState> => {
    const hit = states.get(ch.id);
    if (hit && hit.seq === ch.seq) return hit;
    let state: ChannelState | undefined;
    let after: number | undefined;
    for (;;) {
      const page = await ctx.storage.channelLog(ch.id, {
        ...(after === undefined ? {} : { afterSeq: after }),
        limit: MAX_CHANNEL_LOG_PAGE,
      });
      for (const e of page) state = applyChannelChange(state, e, CRYPTO, ch.id).state;
      if (page.length < MAX_CHANNEL_LOG_PAGE) break;
      after = (page[page.length - 1] as { seq: number }).seq;
    }
    if (!state) throw new Error('the stored channel log is empty');
    remember(state);
    return state;
  };

  const unitNameOf = async (unitId: string | undefined): Promise<string | undefined> =>
    unitId === undefined ? undefined : (await ctx.authz.tree()).byId.get(unitId)?.name;

  app.get('/v1/channels', async (req) => {
    const me = requestIdentity(req);
    const channels = await ctx.storage.listChannels({ memberUserId: me.userId });
    const out = [];
    for (const ch of channels) out.push(channelInfo(ch, await unitNameOf(ch.unitId)));
    return { channels: out };
  });

  app.post('/v1/channels', limits, async (req) => {
    const me = requestIdentity(req);
    const body = parse(ChannelCreateRequest, req.body);
    const entry: SignedChannelChangeData = body.entry;
    let applied: { state: ChannelState; change: ChannelChangeData };
    try {
      applied = applyChannelChange(undefined, entry, CRYPTO);
    } catch (err) {
      throw invalidChange(err);
    }
    const { change, state } = applied;
    if (change.op !== 'create') throw new ApiError('CHANNEL_CHANGE_INVALID', 400, 'expected a create change');
    checkBy(change, me);
    const user = await ctx.storage.getUser(me.userId);
    if (!user) throw new ApiError('UNAUTHENTICATED', 401, 'authentication failed');
    if (change.userName !== user.name) {
      throw new ApiError(
        'CHANNEL_CHANGE_INVALID',
        400,
        'the change names another user than the signed-in one',
      );
    }
    if (!user.identityKey || !sameIdentityKey(change.identityKey, user.identityKey)) {
      throw new ApiError(
        'IDENTITY_KEY_MISMATCH',
        409,
        "the change's identity key is not the signed-in user's",
      );
    }
    let unitId: string | undefined;
    if (body.unit !== undefined) {
      const unit = await ctx.storage.findOrgUnitByName(body.unit);
      if (!unit) throw new ApiError('ORG_UNIT_NOT_FOUND', 404, `no org unit named ${body.unit}`);
      unitId = unit.id;
    }
    const ch = await ctx.storage.createChannel({
      id: change.channel,
      name: change.name,
      ...(unitId === undefined ? {} : { unitId }),
      createdBy: me.userId,
      genesis: { change: entry.change, signature: entry.signature },
    });
    // The creator is the log's first manager: mirror it as a channel-scoped admin grant.
    await ctx.storage.addGrant({
      userId: me.userId,
      role: CHANNEL_MANAGER_ROLE,
      scope: { kind: 'channel', channelId: ch.id },
    });
    ctx.authz.invalidateUser(me.userId);
    remember(state);
    ctx.cluster.channelChanged(ch.id, ch.seq);
    await ctx.audit({
      actor: await actorOf(ctx, deviceSubject(me)),
      action: 'channel.create',
      target: `channel:${ch.name}`,
      outcome: 'ok',
      detail: { seq: 0, ...(body.unit === undefined ? {} : { unit: body.unit }) },
    });
    return channelInfo(ch, body.unit);
  });

  app.get('/v1/channels/:channelId', async (req) => {
    const ch = requestChannel(req);
    const q = parse(ChannelLogQuery, req.query);
    const entries = await ctx.storage.channelLog(ch.id, {
      ...(q.after === undefined ? {} : { afterSeq: Number(q.after) }),
      limit: MAX_CHANNEL_LOG_PAGE,
    });
    return {
      channel: channelInfo(ch, await unitNameOf(ch.unitId)),
      entries: entries.map((e) => ({ change: encodeBase64(e.change), signature: encodeBase64(e.signature) })),
    };
  });

  app.post('/v1/channels/:channelId/changes', limits, async (req) => {
    const me = requestIdentity(req);
    const ch = requestChannel(req);
    const body = parse(ChannelChangeRequest, req.body);
    const entry: SignedChannelChangeData = body.entry;
    const prior = await stateOf(ch);
    let applied: { state: ChannelState; change: ChannelChangeData };
    try {
      applied = applyChannelChange(prior, entry, CRYPTO, ch.id);
    } catch (err) {
      // A change for a place in the log that is already taken: the client must reload and sign again.
      if (
        isChannelLogError(err) &&
        err.problem === 'out-of-order' &&
        err.seq !== undefined &&
        err.seq <= prior.seq
      ) {
        throw new ApiError(
          'CHANNEL_CONFLICT',
          409,
          `change ${err.seq} already exists; the log is at ${prior.seq}`,
        );
      }
      throw invalidChange(err);
    }
    const { change, state } = applied;
    if (change.op === 'create') throw new ApiError('CHANNEL_CHANGE_INVALID', 400, 'the channel exists');
    checkBy(change, me);
    const leaving = change.op === 'remove' && change.userId === me.userId;
    if (!leaving) {
      await authorize(
        ctx,
        deviceSubject(me),
        'channel.manage',
        channelResourceOf(ch),
        `channel.${change.op}`,
      );
    }
    let memberName: string;
    if (change.op === 'add') {
      const added = await ctx.storage.getUser(change.userId);
      if (!added) throw new ApiError('USER_NOT_FOUND', 404, 'the added user does not exist');
      if (added.name !== change.userName) {
        throw new ApiError('CHANNEL_CHANGE_INVALID', 400, "the change's user name is not the added user's");
      }
      if (!added.identityKey || !sameIdentityKey(change.identityKey, added.identityKey)) {
        throw new ApiError('IDENTITY_KEY_MISMATCH', 409, "the change's identity key is not the added user's");
      }
      memberName = added.name;
    } else {
      memberName = prior.members.get(change.userId)?.userName ?? change.userId;
    }
    const updated = await ctx.storage.appendChannelChange(
      ch.id,
      { seq: change.seq, change: entry.change, signature: entry.signature },
      change.op === 'add'
        ? { kind: 'add', userId: change.userId, role: change.role }
        : { kind: 'remove', userId: change.userId },
    );
    remember(state);
    if (change.op === 'add' && change.role === 'manager') {
      await ctx.storage.addGrant({
        userId: change.userId,
        role: CHANNEL_MANAGER_ROLE,
        scope: { kind: 'channel', channelId: ch.id },
      });
    }
    // A removal drops the member's channel grants in the storage.
    ctx.authz.invalidateUser(change.userId);
    ctx.cluster.channelChanged(ch.id, updated.seq);
    await ctx.audit({
      actor: await actorOf(ctx, deviceSubject(me)),
      action: change.op === 'add' ? 'channel.member.add' : 'channel.member.remove',
      target: `channel:${ch.name}`,
      outcome: 'ok',
      detail: { seq: change.seq, user: memberName, ...(change.op === 'add' ? { role: change.role } : {}) },
    });
    return channelInfo(updated, await unitNameOf(updated.unitId));
  });

  app.post('/v1/channels/:channelId/messages', { bodyLimit: MAX_SEND_BODY_BYTES }, async (req) => {
    const me = requestIdentity(req);
    const ch = requestChannel(req);
    const { body } = parse(ChannelSendRequest, req.body);
    const header = channelEnvelopeHeader(ch.id);
    if (Buffer.compare(body.subarray(0, CHANNEL_ENVELOPE_HEADER_LEN), header) !== 0) {
      throw new ApiError('BAD_REQUEST', 400, 'the body is not a channel envelope for this channel');
    }
    const envelopes: NewEnvelope[] = [];
    for (const d of await ctx.storage.channelMemberDevices(ch.id)) {
      if (d.userId === me.userId && d.deviceId === me.deviceId) continue;
      envelopes.push({
        recipientUserId: d.userId,
        recipientDeviceId: d.deviceId,
        senderUserId: me.userId,
        senderDeviceId: me.deviceId,
        body,
      });
    }
    let stored = 0;
    for (let i = 0; i < envelopes.length; i += ENQUEUE_CHUNK) {
      const receipts = await ctx.storage.enqueue(envelopes.slice(i, i + ENQUEUE_CHUNK));
      stored += receipts.length;
      ctx.metrics.messagesQueued.inc(receipts.length);
      for (const r of receipts) ctx.hub.notify(r.recipientUserId, r.recipientDeviceId);
    }
    return { envelopes: stored };
  });
}
