/**
 * The prekey directory: bundles for a user (one per device, each consuming one one-time
 * prekey atomically in the storage), replenishment, and rotation of the signed and Kyber
 * prekeys (signatures checked against the user's identity key before anything is stored).
 */
import {
  BundleQuery,
  encodeBase64,
  KyberPrekeyRequest,
  MAX_HTTP_BODY_BYTES,
  PrekeyUploadRequest,
  SignedPrekeyRequest,
  UserNameParam,
} from '@qalqon/wire';
import type { FastifyInstance } from 'fastify';
import type { SignedPrekey } from '../../storage/types.js';
import { ApiError } from '../api-error.js';
import { requestIdentity } from '../authz.js';
import { checkRotatedPrekey, PREKEY_LOW_WATERMARK, parse, type ServiceContext } from '../context.js';

function signedJson(p: SignedPrekey) {
  return { id: p.id, publicKey: encodeBase64(p.publicKey), signature: encodeBase64(p.signature) };
}

export async function keysPlugin(app: FastifyInstance, opts: { ctx: ServiceContext }): Promise<void> {
  const { ctx } = opts;
  const limits = { bodyLimit: MAX_HTTP_BODY_BYTES };

  app.get('/v1/keys/:userName', async (req) => {
    const { userName } = parse(UserNameParam, req.params);
    const query = parse(BundleQuery, req.query);
    const user = await ctx.storage.findUserByName(userName);
    if (!user) throw new ApiError('USER_NOT_FOUND', 404, `no user named ${userName}`);
    const bundles = await ctx.storage.fetchPrekeyBundles(
      user.id,
      query.deviceId === undefined ? {} : { deviceId: Number(query.deviceId) },
    );
    for (const b of bundles) {
      // Tell an online device it is running out, so later sessions still get a one-time prekey.
      if (b.oneTimePrekeysRemaining < PREKEY_LOW_WATERMARK) {
        ctx.hub.push(user.id, b.deviceId, { type: 'prekeys-low', oneTimePrekeys: b.oneTimePrekeysRemaining });
      }
    }
    return {
      userId: user.id,
      userName: user.name,
      bundles: bundles.map((b) => ({
        deviceId: b.deviceId,
        registrationId: b.registrationId,
        identityKey: encodeBase64(b.identityKey),
        signedPrekey: signedJson(b.signedPrekey),
        kyberPrekey: signedJson(b.kyberPrekey),
        ...(b.oneTimePrekey
          ? { oneTimePrekey: { id: b.oneTimePrekey.id, publicKey: encodeBase64(b.oneTimePrekey.publicKey) } }
          : {}),
      })),
    };
  });

  app.get('/v1/keys/:userName/devices', async (req) => {
    const { userName } = parse(UserNameParam, req.params);
    const user = await ctx.storage.findUserByName(userName);
    if (!user) throw new ApiError('USER_NOT_FOUND', 404, `no user named ${userName}`);
    const devices = await ctx.storage.listDevices(user.id);
    return {
      userId: user.id,
      userName: user.name,
      ...(user.identityKey ? { identityKey: encodeBase64(user.identityKey) } : {}),
      devices: devices.map((d) => ({ deviceId: d.deviceId, registrationId: d.registrationId })),
    };
  });

  app.get('/v1/keys', async (req) => {
    const me = requestIdentity(req);
    const d = await ctx.storage.getDevice(me.userId, me.deviceId);
    if (!d) throw new ApiError('DEVICE_NOT_FOUND', 404, 'this device was removed');
    return { oneTimePrekeys: d.oneTimePrekeyCount, replenish: d.oneTimePrekeyCount < PREKEY_LOW_WATERMARK };
  });

  app.post('/v1/keys/one-time', limits, async (req) => {
    const me = requestIdentity(req);
    const body = parse(PrekeyUploadRequest, req.body);
    const n = await ctx.storage.addOneTimePrekeys(me.userId, me.deviceId, body.oneTimePrekeys);
    return { oneTimePrekeys: n, replenish: n < PREKEY_LOW_WATERMARK };
  });

  app.put('/v1/keys/signed', limits, async (req) => {
    const me = requestIdentity(req);
    const body = parse(SignedPrekeyRequest, req.body);
    await checkRotatedPrekey(ctx, me.userId, body.prekey);
    await ctx.storage.setSignedPrekey(me.userId, me.deviceId, body.prekey);
    return { ok: true };
  });

  app.put('/v1/keys/kyber', limits, async (req) => {
    const me = requestIdentity(req);
    const body = parse(KyberPrekeyRequest, req.body);
    await checkRotatedPrekey(ctx, me.userId, body.prekey);
    await ctx.storage.setKyberPrekey(me.userId, me.deviceId, body.prekey);
    return { ok: true };
  });
}
