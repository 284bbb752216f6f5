/**
 * Argument checks shared by every storage backend, so each one refuses exactly the same
 * input with exactly the same codes before touching its database. Shapes only: prekey
 * signatures are verified by the service layer, which knows the identity key's meaning.
 */
import { KYBER1024_PUBLIC_KEY_LEN, X25519_KEY_LEN, XEDDSA_SIGNATURE_LEN } from '@qalqon/crypto';
import {
  BUILTIN_ROLES,
  MAX_FILE_CHUNK_BYTES,
  PERMISSIONS,
  MAX_CHANNEL_CHANGE_BYTES as WIRE_MAX_CHANNEL_CHANGE_BYTES,
  MAX_CHANNEL_LOG_PAGE as WIRE_MAX_CHANNEL_LOG_PAGE,
} from '@qalqon/wire';
import { ServerError } from '../errors.js';
import {
  aarray,
  abytes,
  abytesRange,
  aint,
  aobject,
  astring,
  ID_LEN,
  ID_PATTERN,
  NAME_PATTERN,
} from '../validate.js';
import type {
  ChannelEffect,
  ChannelLogEntry,
  FileLimits,
  FileRecipients,
  Grant,
  GrantScope,
  NewDevice,
  NewEnvelope,
  NewFile,
  OneTimePrekey,
  Role,
  SignedPrekey,
  StorageLimits,
} from './types.js';
import { FILE_CHUNK_OVERHEAD } from './types.js';

/** libsignal's type byte before a serialised Curve25519 public key. */
export const EC_KEY_TYPE = 0x05;
/** libsignal's type byte before a serialised Kyber1024 public key. */
export const KYBER_KEY_TYPE = 0x08;
export const EC_PUBLIC_KEY_LEN = 1 + X25519_KEY_LEN;
export const KYBER_PUBLIC_KEY_LEN = 1 + KYBER1024_PUBLIC_KEY_LEN;
/** libsignal prekey ids are 24-bit. */
export const MAX_PREKEY_ID = 0xffffff;
/** libsignal registration ids: 14 bits, 0 reserved. */
export const MAX_REGISTRATION_ID = 16380;
export const MAX_DEVICE_ID = 0x7fffffff;
export const MAX_NAME_LEN = 64;
export const MAX_ROLES = 32;
export const MAX_DEVICE_NAME_LEN = 128;
/** Enrolment codes: printable ASCII, long enough to carry >= 80 bits in any sane alphabet. */
export const MIN_CODE_LEN = 16;
export const MAX_CODE_LEN = 256;
export const CODE_PATTERN = /^[\x21-\x7e]+$/;
/** Envelopes per enqueue call (a fan-out larger than this is split by the caller). */
export const MAX_ENQUEUE_BATCH = 10_000;
/** Envelopes per fetch, and ids per ack. */
export const MAX_FETCH = 1000;
export const DEFAULT_FETCH = 100;

export function checkUserId(label: string, v: unknown): string {
  return astring(label, v, ID_LEN, ID_LEN, ID_PATTERN);
}

export function checkDeviceId(label: string, v: unknown): number {
  return aint(label, v, 1, MAX_DEVICE_ID);
}

export function checkUserName(label: string, v: unknown): string {
  return astring(label, v, 1, MAX_NAME_LEN, NAME_PATTERN);
}

export function checkRoles(label: string, v: unknown): string[] {
  const roles = aarray(label, v, 0, MAX_ROLES).map((r, i) => checkUserName(`${label}[${i}]`, r));
  return [...new Set(roles)].sort();
}

function typedKey(label: string, v: unknown, len: number, type: number): Uint8Array {
  const b = abytes(label, v, len);
  if (b[0] !== type)
    throw new ServerError('INVALID_ARGUMENT', `"${label}" expected type byte ${type}, got ${b[0]}`);
  return b;
}

export function checkIdentityKey(label: string, v: unknown): Uint8Array {
  return typedKey(label, v, EC_PUBLIC_KEY_LEN, EC_KEY_TYPE);
}

export function checkSignedPrekey(label: string, v: unknown, kind: 'ec' | 'kyber'): SignedPrekey {
  const o = aobject(label, v);
  return {
    id: aint(`${label}.id`, o.id, 0, MAX_PREKEY_ID),
    publicKey:
      kind === 'ec'
        ? typedKey(`${label}.publicKey`, o.publicKey, EC_PUBLIC_KEY_LEN, EC_KEY_TYPE)
        : typedKey(`${label}.publicKey`, o.publicKey, KYBER_PUBLIC_KEY_LEN, KYBER_KEY_TYPE),
    signature: abytes(`${label}.signature`, o.signature, XEDDSA_SIGNATURE_LEN),
  };
}

/** Checks a prekey upload; a repeated id within it is PREKEY_EXISTS, like one already stored. */
export function checkOneTimePrekeys(label: string, v: unknown, min: number, max: number): OneTimePrekey[] {
  const list = aarray(label, v, min, max);
  const seen = new Set<number>();
  return list.map((p, i) => {
    const o = aobject(`${label}[${i}]`, p);
    const id = aint(`${label}[${i}].id`, o.id, 0, MAX_PREKEY_ID);
    if (seen.has(id)) throw new ServerError('PREKEY_EXISTS', `"${label}" repeats prekey id ${id}`);
    seen.add(id);
    return {
      id,
      publicKey: typedKey(`${label}[${i}].publicKey`, o.publicKey, EC_PUBLIC_KEY_LEN, EC_KEY_TYPE),
    };
  });
}

export function checkNewDevice(label: string, v: unknown, limits: StorageLimits): NewDevice {
  const o = aobject(label, v);
  return {
    name: astring(`${label}.name`, o.name, 1, MAX_DEVICE_NAME_LEN),
    registrationId: aint(`${label}.registrationId`, o.registrationId, 1, MAX_REGISTRATION_ID),
    identityKey: checkIdentityKey(`${label}.identityKey`, o.identityKey),
    signedPrekey: checkSignedPrekey(`${label}.signedPrekey`, o.signedPrekey, 'ec'),
    kyberPrekey: checkSignedPrekey(`${label}.kyberPrekey`, o.kyberPrekey, 'kyber'),
    oneTimePrekeys: checkOneTimePrekeys(
      `${label}.oneTimePrekeys`,
      o.oneTimePrekeys,
      0,
      limits.maxOneTimePrekeysPerDevice,
    ),
    ...(o.authKey === undefined ? {} : { authKey: checkIdentityKey(`${label}.authKey`, o.authKey) }),
  };
}

export function checkEnvelopes(label: string, v: unknown, limits: StorageLimits): NewEnvelope[] {
  return aarray(label, v, 1, MAX_ENQUEUE_BATCH).map((e, i) => {
    const l = `${label}[${i}]`;
    const o = aobject(l, e);
    const body = abytes(`${l}.body`, o.body);
    if (body.length === 0) throw new ServerError('INVALID_ARGUMENT', `"${l}.body" is empty`);
    if (body.length > limits.maxEnvelopeBytes) {
      throw new ServerError(
        'ENVELOPE_TOO_LARGE',
        `"${l}.body" is ${body.length} bytes; the limit is ${limits.maxEnvelopeBytes}`,
      );
    }
    return {
      recipientUserId: checkUserId(`${l}.recipientUserId`, o.recipientUserId),
      recipientDeviceId: checkDeviceId(`${l}.recipientDeviceId`, o.recipientDeviceId),
      senderUserId: checkUserId(`${l}.senderUserId`, o.senderUserId),
      senderDeviceId: checkDeviceId(`${l}.senderDeviceId`, o.senderDeviceId),
      body,
    };
  });
}

export function checkEnvelopeIds(label: string, v: unknown): string[] {
  return aarray(label, v, 0, MAX_FETCH).map((id, i) =>
    astring(`${label}[${i}]`, id, ID_LEN, ID_LEN, ID_PATTERN),
  );
}

/** Merges caller limits over the defaults, each a positive safe integer. */
export function checkLimits(defaults: StorageLimits, v: Partial<StorageLimits> | undefined): StorageLimits {
  if (v === undefined) return defaults;
  const o = aobject('limits', v);
  const out: Record<string, number> = { ...defaults };
  for (const k of Object.keys(o)) {
    if (!(k in defaults)) throw new ServerError('INVALID_ARGUMENT', `"limits.${k}" is not a known limit`);
    if (o[k] !== undefined) out[k] = aint(`limits.${k}`, o[k], 1, Number.MAX_SAFE_INTEGER);
  }
  return out as unknown as StorageLimits;
}

/** The arguments of `createEnrolmentCode`, checked: a code of the right shape that expires after `now`. */
export function checkNewEnrolmentCode(
  input: unknown,
  now: number,
): { userId: string; code: string; expiresAt: number } {
  const o = aobject('input', input);
  return {
    userId: checkUserId('input.userId', o.userId),
    code: astring('input.code', o.code, MIN_CODE_LEN, MAX_CODE_LEN, CODE_PATTERN),
    expiresAt: aint('input.expiresAt', o.expiresAt, now + 1, Number.MAX_SAFE_INTEGER),
  };
}

/** The one answer for every code that does not enrol: unknown, expired, used or malformed alike. */
export function enrolmentCodeInvalid(): ServerError {
  return new ServerError('ENROLMENT_CODE_INVALID', 'the enrolment code is not valid');
}

/**
 * The arguments of `enrolDevice`, checked. A code of the wrong shape is simply not a valid
 * code: it gets the same opaque ENROLMENT_CODE_INVALID as any other, not an argument error.
 */
export function checkEnrolment(input: unknown, limits: StorageLimits): { code: string; device: NewDevice } {
  const o = aobject('input', input);
  const code = astring('input.code', o.code, 0, 4096);
  const device = checkNewDevice('input.device', o.device, limits);
  if (code.length < MIN_CODE_LEN || code.length > MAX_CODE_LEN || !CODE_PATTERN.test(code)) {
    throw enrolmentCodeInvalid();
  }
  return { code, device };
}

/** `fetchEnvelopes`'s options: at most `limit` (DEFAULT_FETCH) envelopes after `afterSeq` (0). */
export function checkFetchOptions(v: unknown): { limit: number; afterSeq: number } {
  const o = aobject('options', v);
  return {
    limit: o.limit === undefined ? DEFAULT_FETCH : aint('options.limit', o.limit, 1, MAX_FETCH),
    afterSeq: o.afterSeq === undefined ? 0 : aint('options.afterSeq', o.afterSeq, 0, Number.MAX_SAFE_INTEGER),
  };
}

/** `fetchPrekeyBundles`'s options: one device, or every device when absent. */
export function checkBundleOptions(v: unknown): { deviceId: number | undefined } {
  const o = aobject('options', v);
  return { deviceId: o.deviceId === undefined ? undefined : checkDeviceId('options.deviceId', o.deviceId) };
}

// The errors every backend gives for a missing row, worded the same.

export function userNotFound(userId: string): ServerError {
  return new ServerError('USER_NOT_FOUND', `no user with id ${userId}`);
}

export function deviceNotFound(userId: string, deviceId: number): ServerError {
  return new ServerError('DEVICE_NOT_FOUND', `user ${userId} has no device ${deviceId}`);
}

export function fileNotFound(fileId: string): ServerError {
  return new ServerError('FILE_NOT_FOUND', `no file with id ${fileId}`);
}

/** TOO_MANY_DEVICES unless a user holding `count` devices may enrol or link one more. */
export function checkDeviceRoom(limits: StorageLimits, userId: string, count: number): void {
  if (count >= limits.maxDevicesPerUser) {
    throw new ServerError('TOO_MANY_DEVICES', `user ${userId} already has ${count} devices, the limit`);
  }
}

/** TOO_MANY_PREKEYS unless a device holding `held` one-time prekeys may take `adding` more. */
export function checkPrekeyRoom(limits: StorageLimits, deviceId: number, held: number, adding: number): void {
  if (held + adding > limits.maxOneTimePrekeysPerDevice) {
    throw new ServerError(
      'TOO_MANY_PREKEYS',
      `device ${deviceId} holds ${held} one-time prekeys; ${adding} more exceed the limit of ${limits.maxOneTimePrekeysPerDevice}`,
    );
  }
}

/**
 * IDENTITY_KEY_MISMATCH unless `identityKey` is the user's stored (opened) identity key;
 * a user without one has not enrolled a first device.
 */
export function checkSameIdentity(
  userId: string,
  stored: Uint8Array | undefined,
  identityKey: Uint8Array,
): void {
  // Identity keys are public: a plain comparison leaks nothing secret.
  if (!stored || Buffer.compare(stored, identityKey) !== 0) {
    throw new ServerError(
      'IDENTITY_KEY_MISMATCH',
      stored
        ? `the new device's identity key is not user ${userId}'s`
        : `user ${userId} has not enrolled a first device`,
    );
  }
}

/** The refusal of an enqueue whose device queue, holding `queued`, is full. */
export function mailboxFull(
  userId: string,
  deviceId: number,
  queued: { readonly queued_count: number; readonly queued_bytes: number },
): ServerError {
  return new ServerError(
    'MAILBOX_FULL',
    `the mailbox of user ${userId} device ${deviceId} is full (${queued.queued_count} envelopes, ${queued.queued_bytes} bytes)`,
  );
}

/** Whether a device queue holding `queued` may take `add` more envelopes within the limits. */
export function fitsQueueLimits(
  limits: StorageLimits,
  queued: { readonly queued_count: number; readonly queued_bytes: number },
  add: { readonly count: number; readonly bytes: number },
): boolean {
  return (
    queued.queued_count + add.count <= limits.maxQueuedPerDevice &&
    queued.queued_bytes + add.bytes <= limits.maxQueuedBytesPerDevice
  );
}

// --- RBAC, org units, channels, audit (issue 5) ------------------------------------------

/** Channel change bytes and signature: as @qalqon/wire SignedChannelChange. */
export const MAX_CHANNEL_CHANGE_BYTES = WIRE_MAX_CHANNEL_CHANGE_BYTES;
/** Most channel log entries per `channelLog` call, and the default. */
export const MAX_CHANNEL_LOG_PAGE = WIRE_MAX_CHANNEL_LOG_PAGE;
/** Most audit records per `listAudit` call; the default is DEFAULT_AUDIT_PAGE. */
export const MAX_AUDIT_PAGE = 10_000;
export const DEFAULT_AUDIT_PAGE = 1000;
const PERMISSION_SET = new Set<string>(PERMISSIONS);

/** Role, org unit and channel names: routing metadata, checked like user names. */
export function checkRoleName(label: string, v: unknown): string {
  return checkUserName(label, v);
}

/** Org unit ids and channel ids: 32 lower-case hex digits. */
export function checkHexId(label: string, v: unknown): string {
  return astring(label, v, ID_LEN, ID_LEN, ID_PATTERN);
}

/** The built-in role of that name, or undefined. */
export function builtinRole(name: string): Role | undefined {
  if (!Object.hasOwn(BUILTIN_ROLES, name)) return undefined;
  const permissions = [...new Set<string>(BUILTIN_ROLES[name as keyof typeof BUILTIN_ROLES])].sort();
  return { name, builtin: true, permissions, createdAt: 0 };
}

/** Every built-in role, by name. */
function builtinRoles(): Role[] {
  return Object.keys(BUILTIN_ROLES)
    .sort()
    .map((n) => builtinRole(n) as Role);
}

/** Every role, the built-in ones and `custom` (the stored ones), by name (code unit order). */
export function allRoles(custom: readonly Role[]): Role[] {
  return [...builtinRoles(), ...custom].sort((a, b) => cmp(a.name, b.name));
}

export function roleNotFound(name: string): ServerError {
  return new ServerError('ROLE_NOT_FOUND', `no role named ${name}`);
}

/** `createRole`'s argument: a role name and 1.. known permissions, returned sorted and distinct. */
export function checkNewRole(input: unknown): { name: string; permissions: string[] } {
  const o = aobject('input', input);
  const name = checkRoleName('input.name', o.name);
  const list = aarray('input.permissions', o.permissions, 1, 4 * PERMISSIONS.length).map((p, i) => {
    const s = astring(`input.permissions[${i}]`, p, 1, 64);
    if (!PERMISSION_SET.has(s)) {
      throw new ServerError('INVALID_ARGUMENT', `"input.permissions[${i}]" is not a known permission`);
    }
    return s;
  });
  return { name, permissions: [...new Set(list)].sort() };
}

/** A stored custom role's permissions column (JSON array), as both backends write it. */
export function permissionsJson(permissions: readonly string[]): string {
  return JSON.stringify(permissions);
}

export function parsePermissionsJson(json: string): string[] {
  const v: unknown = JSON.parse(json);
  if (!Array.isArray(v) || v.some((p) => typeof p !== 'string')) {
    throw new ServerError('INVALID_ARGUMENT', 'a stored role has a malformed permission list');
  }
  return v as string[];
}

export function checkGrantScope(label: string, v: unknown): GrantScope {
  const o = aobject(label, v);
  switch (o.kind) {
    case 'global':
      return { kind: 'global' };
    case 'unit':
      return { kind: 'unit', unitId: checkHexId(`${label}.unitId`, o.unitId) };
    case 'channel':
      return { kind: 'channel', channelId: checkHexId(`${label}.channelId`, o.channelId) };
    default:
      throw new ServerError('INVALID_ARGUMENT', `"${label}.kind" expected global, unit or channel`);
  }
}

export function checkGrant(label: string, v: unknown): Grant {
  const o = aobject(label, v);
  return {
    userId: checkUserId(`${label}.userId`, o.userId),
    role: checkRoleName(`${label}.role`, o.role),
    scope: checkGrantScope(`${label}.scope`, o.scope),
  };
}

/** The stored kind and id of a unit or channel scope. */
export function scopeColumns(scope: Exclude<GrantScope, { kind: 'global' }>): {
  kind: 'unit' | 'channel';
  id: string;
} {
  return scope.kind === 'unit'
    ? { kind: 'unit', id: scope.unitId }
    : { kind: 'channel', id: scope.channelId };
}

/** A grant from its stored columns (`scope_kind` 'global' for a user_roles row). */
export function grantFromColumns(userId: string, role: string, kind: string, scopeId: string): Grant {
  const scope: GrantScope =
    kind === 'unit'
      ? { kind: 'unit', unitId: scopeId }
      : kind === 'channel'
        ? { kind: 'channel', channelId: scopeId }
        : { kind: 'global' };
  return { userId, role, scope };
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function scopeId(s: GrantScope): string {
  return s.kind === 'unit' ? s.unitId : s.kind === 'channel' ? s.channelId : '';
}

/**
 * The order of `listGrants`: user id, role, scope kind, scope id, compared by code unit
 * (not a database collation), so every backend lists the same order.
 */
export function compareGrants(a: Grant, b: Grant): number {
  return (
    cmp(a.userId, b.userId) ||
    cmp(a.role, b.role) ||
    cmp(a.scope.kind, b.scope.kind) ||
    cmp(scopeId(a.scope), scopeId(b.scope))
  );
}

/** `listGrants`'s filter: one user's grants, or everyone's when absent. */
export function checkListGrantsFilter(v: unknown): { userId: string | undefined } {
  const o = aobject('filter', v);
  return { userId: o.userId === undefined ? undefined : checkUserId('filter.userId', o.userId) };
}

export function orgUnitNotFound(id: string): ServerError {
  return new ServerError('ORG_UNIT_NOT_FOUND', `no org unit with id ${id}`);
}

export function channelNotFound(id: string): ServerError {
  return new ServerError('CHANNEL_NOT_FOUND', `no channel with id ${id}`);
}

export function checkNewOrgUnit(input: unknown): { name: string; parentId: string | undefined } {
  const o = aobject('input', input);
  return {
    name: checkUserName('input.name', o.name),
    parentId: o.parentId === undefined ? undefined : checkHexId('input.parentId', o.parentId),
  };
}

function checkSignedChange(
  label: string,
  change: unknown,
  signature: unknown,
): { change: Uint8Array; signature: Uint8Array } {
  return {
    change: abytesRange(`${label}.change`, change, 1, MAX_CHANNEL_CHANGE_BYTES),
    signature: abytes(`${label}.signature`, signature, XEDDSA_SIGNATURE_LEN),
  };
}

export interface NewChannelInput {
  readonly id: string;
  readonly name: string;
  readonly unitId: string | undefined;
  readonly createdBy: string;
  readonly genesis: { readonly change: Uint8Array; readonly signature: Uint8Array };
}

export function checkNewChannel(input: unknown): NewChannelInput {
  const o = aobject('input', input);
  const g = aobject('input.genesis', o.genesis);
  return {
    id: checkHexId('input.id', o.id),
    name: checkUserName('input.name', o.name),
    unitId: o.unitId === undefined ? undefined : checkHexId('input.unitId', o.unitId),
    createdBy: checkUserId('input.createdBy', o.createdBy),
    genesis: checkSignedChange('input.genesis', g.change, g.signature),
  };
}

export function checkChannelLogEntry(label: string, v: unknown): ChannelLogEntry {
  const o = aobject(label, v);
  return {
    seq: aint(`${label}.seq`, o.seq, 0, Number.MAX_SAFE_INTEGER),
    ...checkSignedChange(label, o.change, o.signature),
  };
}

export function checkChannelEffect(label: string, v: unknown): ChannelEffect {
  const o = aobject(label, v);
  const userId = checkUserId(`${label}.userId`, o.userId);
  if (o.kind === 'remove') return { kind: 'remove', userId };
  if (o.kind !== 'add') throw new ServerError('INVALID_ARGUMENT', `"${label}.kind" expected add or remove`);
  if (o.role !== 'member' && o.role !== 'manager') {
    throw new ServerError('INVALID_ARGUMENT', `"${label}.role" expected member or manager`);
  }
  return { kind: 'add', userId, role: o.role };
}

/** `channelLog`'s options: entries after `afterSeq` (all when absent: -1), at most `limit`. */
export function checkChannelLogOptions(v: unknown): { afterSeq: number; limit: number } {
  const o = aobject('options', v);
  return {
    afterSeq:
      o.afterSeq === undefined ? -1 : aint('options.afterSeq', o.afterSeq, 0, Number.MAX_SAFE_INTEGER),
    limit:
      o.limit === undefined ? MAX_CHANNEL_LOG_PAGE : aint('options.limit', o.limit, 1, MAX_CHANNEL_LOG_PAGE),
  };
}

export function checkListChannelsFilter(v: unknown): { memberUserId: string | undefined } {
  const o = aobject('filter', v);
  return {
    memberUserId:
      o.memberUserId === undefined ? undefined : checkUserId('filter.memberUserId', o.memberUserId),
  };
}

/** `listAudit`'s options: after `afterSeq` (0), at or after `since` (0), at most `limit`. */
export function checkAuditListOptions(v: unknown): { afterSeq: number; since: number; limit: number } {
  const o = aobject('options', v);
  return {
    afterSeq: o.afterSeq === undefined ? 0 : aint('options.afterSeq', o.afterSeq, 0, Number.MAX_SAFE_INTEGER),
    since: o.since === undefined ? 0 : aint('options.since', o.since, 0, Number.MAX_SAFE_INTEGER),
    limit: o.limit === undefined ? DEFAULT_AUDIT_PAGE : aint('options.limit', o.limit, 1, MAX_AUDIT_PAGE),
  };
}

/** The audit signing key: a 32-byte Ed25519 seed. */
export function checkAuditKey(label: string, v: unknown): Uint8Array {
  return abytes(label, v, 32);
}

// --- files (issue 6) ---------------------------------------------------------------------

/** The largest file any backend stores (2^53 would be the JS limit; 2^40 = 1 TiB is plenty). */
export const MAX_STORED_FILE_BYTES = 2 ** 40;
/** At-rest chunk sizes a file may use (at most what the wire's FileStatus allows). */
export const MIN_FILE_CHUNK_BYTES = 4096;
export { MAX_FILE_CHUNK_BYTES };
/** Chunks one `readFileChunks` call returns at most (bounds its memory). */
export const MAX_FILE_CHUNKS_PER_READ = 16;
/** Chunks one `appendFileChunks` call stores at most (bounds its memory and its transaction). */
export const MAX_FILE_CHUNKS_PER_APPEND = 64;
/** Recipient users one file may name (the wire's MAX_FILE_RECIPIENTS). */
export const MAX_FILE_RECIPIENT_USERS = 256;
/** KMS key version ids (kms.ts KEY_ID_PATTERN). */
const KEY_ID_PATTERN = /^[A-Za-z0-9._-]{1,64}$/;

export function checkFileRecipients(label: string, v: unknown): FileRecipients {
  const o = aobject(label, v);
  if (o.kind === 'users') {
    const ids = aarray(`${label}.userIds`, o.userIds, 1, MAX_FILE_RECIPIENT_USERS).map((u, i) =>
      checkUserId(`${label}.userIds[${i}]`, u),
    );
    return { kind: 'users', userIds: [...new Set(ids)].sort() };
  }
  if (o.kind === 'channel')
    return { kind: 'channel', channelId: checkHexId(`${label}.channelId`, o.channelId) };
  throw new ServerError('INVALID_ARGUMENT', `"${label}.kind" expected users or channel`);
}

export function checkNewFile(v: unknown): NewFile {
  const o = aobject('file', v);
  return {
    id: checkHexId('file.id', o.id),
    ownerId: checkUserId('file.ownerId', o.ownerId),
    size: aint('file.size', o.size, 1, MAX_STORED_FILE_BYTES),
    chunkSize: aint('file.chunkSize', o.chunkSize, MIN_FILE_CHUNK_BYTES, MAX_FILE_CHUNK_BYTES),
    recipients: checkFileRecipients('file.recipients', o.recipients),
    wrappedKey: checkWrappedFileKey('file.wrappedKey', o.wrappedKey),
  };
}

export function checkFileLimits(v: unknown): FileLimits {
  const o = aobject('limits', v);
  return {
    maxFileBytes: aint('limits.maxFileBytes', o.maxFileBytes, 1, MAX_STORED_FILE_BYTES),
    quotaBytes: aint('limits.quotaBytes', o.quotaBytes, 0, Number.MAX_SAFE_INTEGER),
  };
}

/** Size and quota, given the owner's current use: FILE_TOO_LARGE, QUOTA_EXCEEDED. */
export function checkFileFits(file: NewFile, limits: FileLimits, used: number): void {
  if (file.size > limits.maxFileBytes) {
    throw new ServerError(
      'FILE_TOO_LARGE',
      `a file of ${file.size} bytes exceeds the limit of ${limits.maxFileBytes} bytes`,
    );
  }
  if (used + file.size > limits.quotaBytes) {
    throw new ServerError(
      'QUOTA_EXCEEDED',
      `${file.size} more bytes would exceed the quota of ${limits.quotaBytes} bytes (${used} used)`,
    );
  }
}

export function checkFileChunk(
  v: unknown,
  label = 'chunk',
): { index: number; bytes: number; data: Uint8Array } {
  const o = aobject(label, v);
  const bytes = aint(`${label}.bytes`, o.bytes, 1, MAX_FILE_CHUNK_BYTES);
  const stored = bytes + FILE_CHUNK_OVERHEAD;
  return {
    index: aint(`${label}.index`, o.index, 0, MAX_STORED_FILE_BYTES / MIN_FILE_CHUNK_BYTES),
    bytes,
    data: abytesRange(`${label}.data`, o.data, stored, stored),
  };
}

/** 1..MAX_FILE_CHUNKS_PER_APPEND chunks with consecutive indexes, each checked as by checkFileChunk. */
export function checkFileChunks(v: unknown): { index: number; bytes: number; data: Uint8Array }[] {
  const list = aarray('chunks', v, 1, MAX_FILE_CHUNKS_PER_APPEND).map((c, i) =>
    checkFileChunk(c, `chunks[${i}]`),
  );
  for (let i = 1; i < list.length; i++) {
    if (list[i]!.index !== list[0]!.index + i) {
      throw new ServerError('INVALID_ARGUMENT', '"chunks" expected consecutive indexes');
    }
  }
  return list;
}

/**
 * checkNextChunk for a run of consecutive chunks appended at once: each must be the next
 * after the ones before it. Returns the file's `received` after the run.
 */
export function checkNextChunks(
  fileId: string,
  row: { readonly size: number; readonly chunkSize: number; readonly received: number },
  chunks: readonly { readonly index: number; readonly bytes: number }[],
): number {
  let received = row.received;
  for (const c of chunks) {
    checkNextChunk(fileId, { size: row.size, chunkSize: row.chunkSize, received }, c);
    received += c.bytes;
  }
  return received;
}

/**
 * What an append must be, given the file's row: the next index, and `bytes` a whole chunk
 * (or exactly what is left). UPLOAD_OFFSET_MISMATCH, INVALID_ARGUMENT.
 */
export function checkNextChunk(
  fileId: string,
  row: { readonly size: number; readonly chunkSize: number; readonly received: number },
  chunk: { readonly index: number; readonly bytes: number },
): void {
  const next = Math.floor(row.received / row.chunkSize);
  if (row.received >= row.size || chunk.index !== next) {
    throw new ServerError(
      'UPLOAD_OFFSET_MISMATCH',
      row.received >= row.size
        ? `file ${fileId} is complete`
        : `file ${fileId} expects chunk ${next} (at byte ${row.received}), not chunk ${chunk.index}`,
    );
  }
  const expected = Math.min(row.chunkSize, row.size - row.received);
  if (chunk.bytes !== expected) {
    throw new ServerError(
      'INVALID_ARGUMENT',
      `"chunk.bytes" expected ${expected} for chunk ${chunk.index} of file ${fileId}, got ${chunk.bytes}`,
    );
  }
}

export function checkFileRange(first: unknown, count: unknown): { first: number; count: number } {
  return {
    first: aint('first', first, 0, MAX_STORED_FILE_BYTES),
    count: aint('count', count, 1, MAX_FILE_CHUNKS_PER_READ),
  };
}

/** A wrapped file key as `replaceFileKey` takes it. */
export function checkWrappedFileKey(label: string, v: unknown): { keyId: string; ciphertext: Uint8Array } {
  const w = aobject(label, v);
  return {
    keyId: checkKekVersionId(`${label}.keyId`, w.keyId),
    ciphertext: Uint8Array.from(abytesRange(`${label}.ciphertext`, w.ciphertext, 1, 4096)),
  };
}

export function checkKekVersionId(label: string, v: unknown): string {
  return astring(label, v, 1, 64, KEY_ID_PATTERN);
}

export function checkListFileKeys(v: unknown): { exceptKeyId: string; afterId: string; limit: number } {
  const o = aobject('options', v);
  return {
    exceptKeyId: checkKekVersionId('options.exceptKeyId', o.exceptKeyId),
    afterId: o.afterId === undefined ? '' : checkHexId('options.afterId', o.afterId),
    limit: aint('options.limit', o.limit, 1, 1000),
  };
}
