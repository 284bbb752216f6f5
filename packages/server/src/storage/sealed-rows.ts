/**
 * What every storage backend does the same way, whatever its database: new ids, the row
 * identities sealed fields are bound to, the enrolment-code hash, sealing a device's
 * fields and opening them again, and summing a fan-out per recipient.
 *
 * Keeping these in one place is what makes "sealed exactly as on the embedded backend"
 * true by construction: the AAD of a sealed value is (table, column, row id), so both
 * backends must name tables, columns and row ids identically, and they do because they
 * call the same functions.
 */
import { hmacSha256 } from '@qalqon/crypto';
import {
  auditRecordRef,
  parseAuditRecordBytes,
  type StoredAuditRow,
  verifyAuditRows,
} from '../audit/chain.js';
import { ServerError } from '../errors.js';
import { publicRandomBytes } from '../random-pool.js';
import type { FieldRef, FieldSealer } from './field-sealer.js';
import { checkFileRecipients } from './input.js';
import type {
  AuditRecord,
  AuditVerification,
  Channel,
  ChannelLogEntry,
  ChannelMembership,
  Device,
  Envelope,
  FileRecipients,
  NewDevice,
  NewEnvelope,
  OrgUnit,
  PrekeyBundle,
  Role,
  SignedPrekey,
  StoredFile,
  User,
} from './types.js';

const CODE_HASH_DOMAIN = 'qalqon/enrolment-code/v1\0';

/** A new 128-bit id as 32 hex digits (users, envelopes). */
export function newId(): string {
  return Buffer.from(publicRandomBytes(16)).toString('hex');
}

/** The row identity of a device: `<userId>/<deviceId>`. */
export function deviceRowId(userId: string, deviceId: number): string {
  return `${userId}/${deviceId}`;
}

export function ref(table: string, column: string, rowId: string): FieldRef {
  return { table, column, rowId };
}

export function identityKeyRef(userId: string): FieldRef {
  return ref('users', 'identity_key', userId);
}

/** A user's stored identity key, opened; undefined before their first enrolment. */
export function openIdentityKey(
  sealer: FieldSealer,
  userId: string,
  sealed: Uint8Array | null,
): Uint8Array | undefined {
  return sealed === null ? undefined : sealer.open(identityKeyRef(userId), sealed);
}

/** A user from their row and their global roles (sorted). */
export function openUser(
  sealer: FieldSealer,
  row: {
    readonly id: string;
    readonly name: string;
    readonly identity_key: Uint8Array | null;
    readonly created_at: number;
  },
  roles: string[],
): User {
  return {
    id: row.id,
    name: row.name,
    roles,
    identityKey: openIdentityKey(sealer, row.id, row.identity_key),
    createdAt: row.created_at,
  };
}

export function oneTimePrekeyRef(userId: string, deviceId: number, prekeyId: number): FieldRef {
  return ref('one_time_prekeys', 'public_key', `${deviceRowId(userId, deviceId)}/${prekeyId}`);
}

export function envelopeBodyRef(envelopeId: string): FieldRef {
  return ref('envelopes', 'body', envelopeId);
}

/** The keyed hash an enrolment code is stored as, so a stolen table cannot be brute-forced offline. */
export function enrolmentCodeHash(lookupKey: Uint8Array, code: string): Uint8Array {
  return hmacSha256(lookupKey, new TextEncoder().encode(CODE_HASH_DOMAIN + code));
}

/** A device's sealed columns, as both backends store them. */
export interface SealedDeviceFields {
  readonly name: Uint8Array;
  readonly signed_prekey: Uint8Array;
  readonly signed_prekey_signature: Uint8Array;
  readonly kyber_prekey: Uint8Array;
  readonly kyber_prekey_signature: Uint8Array;
  readonly auth_key: Uint8Array | null;
}

function sealDeviceFields(
  sealer: FieldSealer,
  userId: string,
  deviceId: number,
  d: NewDevice,
): SealedDeviceFields {
  const rowId = deviceRowId(userId, deviceId);
  const s = (column: string, v: Uint8Array) => sealer.seal(ref('devices', column, rowId), v);
  return {
    name: sealer.sealString(ref('devices', 'name', rowId), d.name),
    signed_prekey: s('signed_prekey', d.signedPrekey.publicKey),
    signed_prekey_signature: s('signed_prekey_signature', d.signedPrekey.signature),
    kyber_prekey: s('kyber_prekey', d.kyberPrekey.publicKey),
    kyber_prekey_signature: s('kyber_prekey_signature', d.kyberPrekey.signature),
    auth_key: d.authKey === undefined ? null : s('auth_key', d.authKey),
  };
}

/** The columns of a new device row, in the order of deviceInsertValues. */
export const DEVICE_INSERT_COLUMNS = `user_id, device_id, registration_id, name, signed_prekey_id, signed_prekey,
  signed_prekey_signature, kyber_prekey_id, kyber_prekey, kyber_prekey_signature, created_at, auth_key`;

/** A new device row's values (its fields sealed), in the order of DEVICE_INSERT_COLUMNS. */
export function deviceInsertValues(
  sealer: FieldSealer,
  userId: string,
  deviceId: number,
  d: NewDevice,
  now: number,
): unknown[] {
  const s = sealDeviceFields(sealer, userId, deviceId, d);
  return [
    userId,
    deviceId,
    d.registrationId,
    s.name,
    d.signedPrekey.id,
    s.signed_prekey,
    s.signed_prekey_signature,
    d.kyberPrekey.id,
    s.kyber_prekey,
    s.kyber_prekey_signature,
    now,
    s.auth_key,
  ];
}

/** A replacement signed (EC) or Kyber prekey's sealed columns `<kind>_prekey` and `<kind>_prekey_signature`. */
export function sealSignedPrekey(
  sealer: FieldSealer,
  userId: string,
  deviceId: number,
  kind: 'signed' | 'kyber',
  p: SignedPrekey,
): { publicKey: Uint8Array; signature: Uint8Array } {
  const rowId = deviceRowId(userId, deviceId);
  return {
    publicKey: sealer.seal(ref('devices', `${kind}_prekey`, rowId), p.publicKey),
    signature: sealer.seal(ref('devices', `${kind}_prekey_signature`, rowId), p.signature),
  };
}

/** A device row as both backends read it (the one-time prekey count computed by the query). */
export interface DeviceRowFields extends SealedDeviceFields {
  readonly user_id: string;
  readonly device_id: number;
  readonly registration_id: number;
  readonly signed_prekey_id: number;
  readonly kyber_prekey_id: number;
  readonly created_at: number;
  readonly otpk_count: number;
}

export function openDevice(sealer: FieldSealer, row: DeviceRowFields): Device {
  const rowId = deviceRowId(row.user_id, row.device_id);
  const o = (column: string, v: Uint8Array) => sealer.open(ref('devices', column, rowId), v);
  return {
    userId: row.user_id,
    deviceId: row.device_id,
    name: sealer.openString(ref('devices', 'name', rowId), row.name),
    registrationId: row.registration_id,
    signedPrekey: {
      id: row.signed_prekey_id,
      publicKey: o('signed_prekey', row.signed_prekey),
      signature: o('signed_prekey_signature', row.signed_prekey_signature),
    },
    kyberPrekey: {
      id: row.kyber_prekey_id,
      publicKey: o('kyber_prekey', row.kyber_prekey),
      signature: o('kyber_prekey_signature', row.kyber_prekey_signature),
    },
    oneTimePrekeyCount: row.otpk_count,
    authKey: row.auth_key === null ? undefined : o('auth_key', row.auth_key),
    createdAt: row.created_at,
  };
}

/**
 * A device's prekey bundle: its row (read before the one-time prekey was taken), the user's
 * opened identity key, and the one-time prekey taken for it, if any (still sealed).
 */
export function prekeyBundle(
  sealer: FieldSealer,
  row: DeviceRowFields,
  identityKey: Uint8Array,
  taken: { readonly prekey_id: number; readonly public_key: Uint8Array } | undefined,
): PrekeyBundle {
  const device = openDevice(sealer, row);
  return {
    userId: row.user_id,
    deviceId: row.device_id,
    registrationId: row.registration_id,
    identityKey: new Uint8Array(identityKey),
    signedPrekey: device.signedPrekey,
    kyberPrekey: device.kyberPrekey,
    oneTimePrekey: taken && {
      id: taken.prekey_id,
      publicKey: sealer.open(oneTimePrekeyRef(row.user_id, row.device_id, taken.prekey_id), taken.public_key),
    },
    oneTimePrekeysRemaining: taken ? Math.max(0, row.otpk_count - 1) : 0,
  };
}

/** One recipient device's share of an enqueue. */
export interface RecipientTally {
  readonly userId: string;
  readonly deviceId: number;
  count: number;
  bytes: number;
}

/** Sums envelope counts and plaintext bytes per recipient device, in first-seen order. */
export function tallyRecipients(envelopes: readonly NewEnvelope[]): Map<string, RecipientTally> {
  const out = new Map<string, RecipientTally>();
  for (const e of envelopes) {
    const key = deviceRowId(e.recipientUserId, e.recipientDeviceId);
    let acc = out.get(key);
    if (acc === undefined) {
      acc = { userId: e.recipientUserId, deviceId: e.recipientDeviceId, count: 0, bytes: 0 };
      out.set(key, acc);
    }
    acc.count++;
    acc.bytes += e.body.length;
  }
  return out;
}

/** An envelope as both backends store it (the body sealed under `envelopeBodyRef(id)`). */
export interface EnvelopeRow {
  readonly seq: number;
  readonly id: string;
  readonly recipient_user_id: string;
  readonly recipient_device_id: number;
  readonly sender_user_id: string;
  readonly sender_device_id: number;
  readonly created_at: number;
  readonly body: Uint8Array;
}

export function openEnvelope(sealer: FieldSealer, row: EnvelopeRow): Envelope {
  return {
    id: row.id,
    seq: row.seq,
    recipientUserId: row.recipient_user_id,
    recipientDeviceId: row.recipient_device_id,
    senderUserId: row.sender_user_id,
    senderDeviceId: row.sender_device_id,
    createdAt: row.created_at,
    body: sealer.open(envelopeBodyRef(row.id), row.body),
  };
}

// --- channels and the audit log (issue 5) --------------------------------------------------

/** A stored custom role (its permissions already parsed from the column). */
export function customRole(row: {
  readonly name: string;
  readonly permissions: string[];
  readonly created_at: number;
}): Role {
  return { name: row.name, builtin: false, permissions: row.permissions, createdAt: row.created_at };
}

/** An org unit row as both backends read it. */
export interface OrgUnitRow {
  readonly id: string;
  readonly name: string;
  readonly parent_id: string | null;
  readonly created_at: number;
}

export function toOrgUnit(row: OrgUnitRow): OrgUnit {
  return { id: row.id, name: row.name, parentId: row.parent_id ?? undefined, createdAt: row.created_at };
}

/** A channel row as both backends read it (the member count computed by the query). */
export interface ChannelRow {
  readonly id: string;
  readonly name: string;
  readonly unit_id: string | null;
  readonly created_by: string;
  readonly seq: number;
  readonly created_at: number;
  readonly member_count: number;
}

export function toChannel(row: ChannelRow): Channel {
  return {
    id: row.id,
    name: row.name,
    unitId: row.unit_id ?? undefined,
    createdBy: row.created_by,
    seq: row.seq,
    memberCount: row.member_count,
    createdAt: row.created_at,
  };
}

/** A channel member row as both backends read it. */
export interface MemberRow {
  readonly user_id: string;
  readonly role: 'member' | 'manager';
  readonly added_seq: number;
}

export function toMembership(row: MemberRow): ChannelMembership {
  return { userId: row.user_id, role: row.role, addedSeq: row.added_seq };
}

/** The row identity of a channel log entry: `<channelId>/<seq>`. */
export function channelLogRowId(channelId: string, seq: number): string {
  return `${channelId}/${seq}`;
}

export function channelLogRef(channelId: string, seq: number, column: 'change' | 'signature'): FieldRef {
  return ref('channel_log', column, channelLogRowId(channelId, seq));
}

/** A channel log entry's sealed columns, as both backends store them. */
export interface SealedChannelLogFields {
  readonly change: Uint8Array;
  readonly signature: Uint8Array;
}

export function sealChannelLogEntry(
  sealer: FieldSealer,
  channelId: string,
  entry: ChannelLogEntry,
): SealedChannelLogFields {
  return {
    change: sealer.seal(channelLogRef(channelId, entry.seq, 'change'), entry.change),
    signature: sealer.seal(channelLogRef(channelId, entry.seq, 'signature'), entry.signature),
  };
}

/** A channel log row as both backends read it. */
export interface ChannelLogRow extends SealedChannelLogFields {
  readonly seq: number;
}

export function openChannelLogEntry(
  sealer: FieldSealer,
  channelId: string,
  row: ChannelLogRow,
): ChannelLogEntry {
  return {
    seq: row.seq,
    change: sealer.open(channelLogRef(channelId, row.seq, 'change'), row.change),
    signature: sealer.open(channelLogRef(channelId, row.seq, 'signature'), row.signature),
  };
}

/** An audit record's canonical bytes, sealed as both backends store them (audit/chain.ts). */
export function sealAuditRecord(sealer: FieldSealer, recordBytes: Uint8Array): Uint8Array {
  return sealer.seal(auditRecordRef(), recordBytes);
}

/** Opens a stored audit record; UNSEAL_FAILED when it does not authenticate. */
export function openAuditRecord(sealer: FieldSealer, sealed: Uint8Array): Uint8Array {
  return sealer.open(auditRecordRef(), sealed);
}

/** Opens a stored audit record for verification: undefined (never an error) when it does not open. */
function tryOpenAuditRecord(sealer: FieldSealer, sealed: Uint8Array): Uint8Array | undefined {
  try {
    return sealer.open(auditRecordRef(), sealed);
  } catch (err) {
    if (err instanceof ServerError && err.code === 'UNSEAL_FAILED') return undefined;
    throw err;
  }
}

/**
 * Verifies the audit log as read in one snapshot: every row (sealed record bytes, a row that
 * does not open counted as edited) and the signed head, against the signing key's public half.
 */
export function verifySealedAudit(
  sealer: FieldSealer,
  publicKey: Uint8Array,
  rows: readonly { readonly seq: number; readonly hash: string; readonly record: Uint8Array }[],
  head: { readonly seq: number; readonly hash: string; readonly signature: Uint8Array } | undefined,
): AuditVerification {
  const stored = rows.map(
    (r): StoredAuditRow => ({ seq: r.seq, hash: r.hash, bytes: tryOpenAuditRecord(sealer, r.record) }),
  );
  return verifyAuditRows(
    stored,
    head && { seq: head.seq, hash: head.hash, signature: new Uint8Array(head.signature) },
    publicKey,
  );
}

/** A listed audit record from its opened bytes; a record that is not one is UNSEAL_FAILED. */
export function auditRecordFromBytes(seq: number, bytes: Uint8Array): AuditRecord {
  const record = parseAuditRecordBytes(bytes);
  if (record === undefined) {
    throw new ServerError('UNSEAL_FAILED', `audit record ${seq} is not a record`);
  }
  return record;
}

// --- files (issue 6) ---------------------------------------------------------------------

export function fileRecipientsRef(fileId: string): FieldRef {
  return ref('files', 'recipients', fileId);
}

/** A file's recipients, sealed (JSON) and bound to the file's row. */
export function sealFileRecipients(sealer: FieldSealer, fileId: string, r: FileRecipients): Uint8Array {
  const json = r.kind === 'users' ? { users: r.userIds } : { channel: r.channelId };
  return sealer.sealString(fileRecipientsRef(fileId), JSON.stringify(json));
}

export function openFileRecipients(sealer: FieldSealer, fileId: string, sealed: Uint8Array): FileRecipients {
  const text = sealer.openString(fileRecipientsRef(fileId), sealed);
  try {
    const j = JSON.parse(text) as { users?: unknown; channel?: unknown };
    return checkFileRecipients(
      'recipients',
      j.users !== undefined ? { kind: 'users', userIds: j.users } : { kind: 'channel', channelId: j.channel },
    );
  } catch {
    throw new ServerError(
      'UNSEAL_FAILED',
      `sealed files.recipients of row ${fileId} is not a recipient list`,
    );
  }
}

/** A file row as both backends read it (column names as in both schemas). */
export interface FileRow {
  readonly id: string;
  readonly owner_id: string;
  readonly size: number;
  readonly chunk_size: number;
  readonly received: number;
  readonly recipients: Uint8Array;
  readonly key_id: string;
  readonly wrapped_key: Uint8Array;
  readonly created_at: number;
  readonly updated_at: number;
}

export function openFileRow(sealer: FieldSealer, row: FileRow): StoredFile {
  return {
    id: row.id,
    ownerId: row.owner_id,
    size: row.size,
    chunkSize: row.chunk_size,
    received: row.received,
    complete: row.received === row.size,
    recipients: openFileRecipients(sealer, row.id, row.recipients),
    wrappedKey: { keyId: row.key_id, ciphertext: new Uint8Array(row.wrapped_key) },
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}
