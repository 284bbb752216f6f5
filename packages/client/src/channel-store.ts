/**
 * The channel tables of a profile database (schema version 2, store.ts): the verified copy
 * of each channel's membership log and the state it replays to, this device's own sender
 * key per channel and the devices it was handed to, and the sender keys received from other
 * devices. Plain reads and writes; the caller decides the transactions (client.ts).
 */
import { deserializeSenderKeyRecord, type SenderKeyRecord, serializeSenderKeyRecord } from '@qalqon/protocol';
import type { ChannelMember, ChannelRoleName, ChannelState, SignedChannelChangeData } from '@qalqon/wire';
import type { ClientDatabase } from './store.js';

/** A verified channel state, and the seq of the last `remove` in its log (-1 for none). */
export interface CachedChannel {
  readonly state: ChannelState;
  readonly lastRemoveSeq: number;
}

export interface OwnSenderKey {
  readonly distributionId: Uint8Array;
  readonly record: SenderKeyRecord;
  readonly createdSeq: number;
}

/** How many distribution ids of one sender device are kept (messages sent before a rotation may still be in flight). */
export const KEPT_SENDER_KEYS_PER_DEVICE = 4;

const blob = (b: Uint8Array) => Buffer.from(b);

export class ChannelStore {
  readonly #db: ClientDatabase;

  constructor(db: ClientDatabase) {
    this.#db = db;
  }

  /** The verified state of a channel, or undefined if this device never verified its log. */
  cached(channelId: string): CachedChannel | undefined {
    const row = this.#db
      .prepare('SELECT name, seq, head, last_remove_seq FROM channels WHERE id = ?')
      .get(channelId) as { name: string; seq: number; head: string; last_remove_seq: number } | undefined;
    if (!row) return undefined;
    const rows = this.#db
      .prepare(
        'SELECT user_id, user_name, identity_key, role, added_seq FROM channel_members WHERE channel_id = ? ORDER BY user_name',
      )
      .all(channelId) as {
      user_id: string;
      user_name: string;
      identity_key: Uint8Array;
      role: string;
      added_seq: number;
    }[];
    const members = new Map<string, ChannelMember>();
    for (const r of rows) {
      members.set(r.user_id, {
        userId: r.user_id,
        userName: r.user_name,
        identityKey: new Uint8Array(r.identity_key),
        role: r.role as ChannelRoleName,
        addedSeq: r.added_seq,
      });
    }
    return {
      state: { channelId, name: row.name, seq: row.seq, head: row.head, members },
      lastRemoveSeq: row.last_remove_seq,
    };
  }

  /** Appends verified changes and replaces the stored state with the one they replay to. Call inside a transaction. */
  saveVerified(
    state: ChannelState,
    lastRemoveSeq: number,
    entries: readonly { seq: number; entry: SignedChannelChangeData }[],
  ): void {
    const id = state.channelId;
    const log = this.#db.prepare(
      'INSERT OR REPLACE INTO channel_log (channel_id, seq, change, signature) VALUES (?, ?, ?, ?)',
    );
    for (const e of entries) log.run(id, e.seq, blob(e.entry.change), blob(e.entry.signature));
    this.#db
      .prepare(
        'INSERT INTO channels (id, name, seq, head, last_remove_seq) VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET name = excluded.name, seq = excluded.seq, head = excluded.head, last_remove_seq = excluded.last_remove_seq',
      )
      .run(id, state.name, state.seq, state.head, lastRemoveSeq);
    this.#db.prepare('DELETE FROM channel_members WHERE channel_id = ?').run(id);
    const member = this.#db.prepare(
      'INSERT INTO channel_members (channel_id, user_id, user_name, identity_key, role, added_seq) VALUES (?, ?, ?, ?, ?, ?)',
    );
    for (const m of state.members.values()) {
      member.run(id, m.userId, m.userName, blob(m.identityKey), m.role, m.addedSeq);
    }
  }

  /** The verified log entries as stored, in seq order. */
  log(channelId: string): { seq: number; change: Uint8Array; signature: Uint8Array }[] {
    const rows = this.#db
      .prepare('SELECT seq, change, signature FROM channel_log WHERE channel_id = ? ORDER BY seq')
      .all(channelId) as { seq: number; change: Uint8Array; signature: Uint8Array }[];
    return rows.map((r) => ({
      seq: r.seq,
      change: new Uint8Array(r.change),
      signature: new Uint8Array(r.signature),
    }));
  }

  ownKey(channelId: string): OwnSenderKey | undefined {
    const r = this.#db
      .prepare('SELECT distribution_id, record, created_seq FROM channel_own_keys WHERE channel_id = ?')
      .get(channelId) as { distribution_id: Uint8Array; record: Uint8Array; created_seq: number } | undefined;
    return r
      ? {
          distributionId: new Uint8Array(r.distribution_id),
          record: deserializeSenderKeyRecord(new Uint8Array(r.record)),
          createdSeq: r.created_seq,
        }
      : undefined;
  }

  /** Stores a new own sender key, forgetting the old one and who held it. */
  replaceOwnKey(channelId: string, record: SenderKeyRecord, createdSeq: number, now: number): void {
    this.#db.prepare('DELETE FROM channel_key_holders WHERE channel_id = ?').run(channelId);
    this.#db
      .prepare(
        'INSERT OR REPLACE INTO channel_own_keys (channel_id, distribution_id, record, created_seq, created_at) VALUES (?, ?, ?, ?, ?)',
      )
      .run(channelId, blob(record.distributionId), blob(serializeSenderKeyRecord(record)), createdSeq, now);
  }

  /** Stores the own record after an encryption advanced its chain. */
  updateOwnRecord(channelId: string, record: SenderKeyRecord): void {
    this.#db
      .prepare('UPDATE channel_own_keys SET record = ? WHERE channel_id = ? AND distribution_id = ?')
      .run(blob(serializeSenderKeyRecord(record)), channelId, blob(record.distributionId));
  }

  /** The devices the own key of `distributionId` was handed to, as `userId/deviceId`. */
  holders(channelId: string, distributionId: Uint8Array): Set<string> {
    const rows = this.#db
      .prepare(
        'SELECT user_id, device_id FROM channel_key_holders WHERE channel_id = ? AND distribution_id = ?',
      )
      .all(channelId, blob(distributionId)) as { user_id: string; device_id: number }[];
    return new Set(rows.map((r) => `${r.user_id}/${r.device_id}`));
  }

  addHolders(
    channelId: string,
    distributionId: Uint8Array,
    devices: readonly { userId: string; deviceId: number }[],
  ): void {
    const ins = this.#db.prepare(
      'INSERT OR IGNORE INTO channel_key_holders (channel_id, distribution_id, user_id, device_id) VALUES (?, ?, ?, ?)',
    );
    // Only while the key is still the current one (a concurrent rotation makes these moot).
    const current = this.#db
      .prepare('SELECT 1 FROM channel_own_keys WHERE channel_id = ? AND distribution_id = ?')
      .get(channelId, blob(distributionId));
    if (!current) return;
    for (const d of devices) ins.run(channelId, blob(distributionId), d.userId, d.deviceId);
  }

  senderKey(
    channelId: string,
    userId: string,
    deviceId: number,
    distributionId: Uint8Array,
  ): SenderKeyRecord | undefined {
    const r = this.#db
      .prepare(
        'SELECT record FROM channel_sender_keys WHERE channel_id = ? AND user_id = ? AND device_id = ? AND distribution_id = ?',
      )
      .get(channelId, userId, deviceId, blob(distributionId)) as { record: Uint8Array } | undefined;
    return r ? deserializeSenderKeyRecord(new Uint8Array(r.record)) : undefined;
  }

  /** Stores a received sender key record; keeps the KEPT_SENDER_KEYS_PER_DEVICE newest of that device. */
  saveSenderKey(
    channelId: string,
    userId: string,
    deviceId: number,
    record: SenderKeyRecord,
    now: number,
  ): void {
    this.#db
      .prepare(
        'INSERT INTO channel_sender_keys (channel_id, user_id, device_id, distribution_id, record, updated_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (channel_id, user_id, device_id, distribution_id) DO UPDATE SET record = excluded.record, updated_at = excluded.updated_at',
      )
      .run(
        channelId,
        userId,
        deviceId,
        blob(record.distributionId),
        blob(serializeSenderKeyRecord(record)),
        now,
      );
    this.#db
      .prepare(
        `DELETE FROM channel_sender_keys WHERE channel_id = ? AND user_id = ? AND device_id = ? AND distribution_id NOT IN (
           SELECT distribution_id FROM channel_sender_keys WHERE channel_id = ? AND user_id = ? AND device_id = ?
           ORDER BY updated_at DESC, rowid DESC LIMIT ${KEPT_SENDER_KEYS_PER_DEVICE})`,
      )
      .run(channelId, userId, deviceId, channelId, userId, deviceId);
  }

  /** Updates a received record after a decryption (only if it is still stored). */
  updateSenderKey(channelId: string, userId: string, deviceId: number, record: SenderKeyRecord): void {
    this.#db
      .prepare(
        'UPDATE channel_sender_keys SET record = ? WHERE channel_id = ? AND user_id = ? AND device_id = ? AND distribution_id = ?',
      )
      .run(blob(serializeSenderKeyRecord(record)), channelId, userId, deviceId, blob(record.distributionId));
  }

  /** Forgets every key of a channel (after leaving it). */
  forgetKeys(channelId: string): void {
    this.#db.prepare('DELETE FROM channel_own_keys WHERE channel_id = ?').run(channelId);
    this.#db.prepare('DELETE FROM channel_key_holders WHERE channel_id = ?').run(channelId);
    this.#db.prepare('DELETE FROM channel_sender_keys WHERE channel_id = ?').run(channelId);
  }
}
