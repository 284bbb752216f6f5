/**
 * The state of the 1:1 sessions with one peer device, as libsignal keeps it
 * (`state/session.rs`, `consts.rs`): a current session state plus up to 40 archived ones
 * (older sessions that a late message may still belong to), newest first.
 *
 * A `SessionRecord` is immutable: the session cipher returns a new record and never
 * changes the one it was given. Unchanged parts (archived states, untouched chains) are
 * shared between the old and the new record, never copied.
 *
 * Serialisation is a compact, fixed-layout binary format (not libsignal's protobuf, which
 * is never exchanged between devices), with a format byte first; archived states stay
 * in their serialised form and are parsed only when a message needs them. Deserialising
 * checks everything: any corrupt or truncated input is INVALID_STATE.
 */
import { ProtocolError } from './errors.js';
import { SERIALIZED_KYBER_CIPHERTEXT_LEN } from './keys.js';
import { PQXDH_SESSION_VERSION } from './messages.js';

/** Format byte of `SessionRecord.serialize()`. */
export const SESSION_RECORD_FORMAT = 1;
/** libsignal `ARCHIVED_STATES_MAX_LENGTH`. */
export const MAX_ARCHIVED_STATES = 40;
/** libsignal `MAX_RECEIVER_CHAINS`. */
export const MAX_RECEIVER_CHAINS = 5;
/** libsignal `MAX_MESSAGE_KEYS`: skipped message keys kept per receiver chain. */
export const MAX_MESSAGE_KEYS = 2000;
/** libsignal `MAX_FORWARD_JUMPS`: how far ahead of a chain a message may be. */
export const MAX_FORWARD_JUMPS = 25_000;
/** libsignal `MAX_UNACKNOWLEDGED_SESSION_AGE`: 30 days without a reply makes a new session unusable for sending. */
export const MAX_UNACKNOWLEDGED_SESSION_AGE_MS = 30 * 24 * 60 * 60 * 1000;

export interface SenderChain {
  /** Our current ratchet public key (33 bytes). */
  readonly ratchetKey: Uint8Array;
  readonly ratchetPrivateKey: Uint8Array;
  readonly chainKey: Uint8Array;
  /** The index of the next message we send on this chain. */
  readonly index: number;
}

export interface ReceiverChain {
  /** The peer's ratchet public key (33 bytes) this chain belongs to. */
  readonly ratchetKey: Uint8Array;
  readonly chainKey: Uint8Array;
  /** The index of the next message key this chain will produce. */
  readonly index: number;
  /** Message-key seeds of skipped messages, counter → seed, oldest first (libsignal stores the seed too). */
  readonly skipped: ReadonlyMap<number, Uint8Array>;
}

/** What an initiator repeats in every message until the peer answers (libsignal `PendingPreKey`). */
export interface PendingPreKey {
  readonly preKeyId: number | undefined;
  readonly signedPreKeyId: number;
  readonly kyberPreKeyId: number;
  /** `0x08 ‖ 1568 bytes`. */
  readonly kyberCiphertext: Uint8Array;
  /** When the session was created, ms since the Unix epoch. */
  readonly timestamp: number;
}

export interface SessionState {
  readonly version: number;
  readonly localIdentityKey: Uint8Array;
  readonly remoteIdentityKey: Uint8Array;
  readonly localRegistrationId: number;
  readonly remoteRegistrationId: number;
  /** The initiator's base key: identifies the PQXDH run this state came from. */
  readonly aliceBaseKey: Uint8Array;
  readonly rootKey: Uint8Array;
  readonly previousCounter: number;
  readonly senderChain: SenderChain;
  /** Oldest first; at most MAX_RECEIVER_CHAINS. */
  readonly receiverChains: readonly ReceiverChain[];
  readonly pendingPreKey: PendingPreKey | undefined;
}

// ---------------------------------------------------------------------------------------
// Binary layout of one state (big-endian integers):
//   u8 version | u8 flags (1 pending, 2 pending one-time prekey id)
//   33 local identity | 33 remote identity | u32 local reg id | u32 remote reg id
//   33 alice base key | 32 root key | u32 previous counter
//   33 sender ratchet key | 32 sender private | 32 sender chain key | u32 sender index
//   [pending: u32 prekey id | u32 signed | u32 kyber | u64 timestamp | 1569 ciphertext]
//   u8 chains | chains × (33 key | 32 chain key | u32 index | u16 n | n × (u32 counter, 32 seed))
// ---------------------------------------------------------------------------------------

const F_PENDING = 1;
const F_PENDING_PREKEY_ID = 2;
const KEY33 = 33;
const FIXED_LEN = 2 + KEY33 * 2 + 8 + KEY33 + 32 + 4 + KEY33 + 32 + 32 + 4;
const PENDING_LEN = 12 + 8 + SERIALIZED_KYBER_CIPHERTEXT_LEN;
const SKIPPED_ENTRY_LEN = 4 + 32;
const CHAIN_FIXED_LEN = KEY33 + 32 + 4 + 2;

function stateSize(s: SessionState): number {
  let n = FIXED_LEN + 1;
  if (s.pendingPreKey) n += PENDING_LEN;
  for (const c of s.receiverChains) n += CHAIN_FIXED_LEN + c.skipped.size * SKIPPED_ENTRY_LEN;
  return n;
}

class Writer {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    pos: number,
  ) {
    this.pos = pos;
  }
  u8(v: number): void {
    this.buf[this.pos++] = v;
  }
  u16(v: number): void {
    this.buf[this.pos++] = v >>> 8;
    this.buf[this.pos++] = v;
  }
  u32(v: number): void {
    const b = this.buf;
    let p = this.pos;
    b[p++] = v >>> 24;
    b[p++] = v >>> 16;
    b[p++] = v >>> 8;
    b[p++] = v;
    this.pos = p;
  }
  u64(v: number): void {
    this.u32(Math.floor(v / 2 ** 32));
    this.u32(v >>> 0);
  }
  bytes(v: Uint8Array, len: number): void {
    if (v.length !== len)
      throw new ProtocolError('INVALID_STATE', 'session state has a field of the wrong length');
    this.buf.set(v, this.pos);
    this.pos += len;
  }
  skipped(m: ReadonlyMap<number, Uint8Array>): void {
    this.u16(m.size);
    for (const [idx, key] of m) {
      this.u32(idx);
      this.bytes(key, 32);
    }
  }
}

function writeState(w: Writer, s: SessionState): void {
  w.u8(s.version);
  const p = s.pendingPreKey;
  w.u8((p ? F_PENDING : 0) | (p?.preKeyId !== undefined ? F_PENDING_PREKEY_ID : 0));
  w.bytes(s.localIdentityKey, KEY33);
  w.bytes(s.remoteIdentityKey, KEY33);
  w.u32(s.localRegistrationId);
  w.u32(s.remoteRegistrationId);
  w.bytes(s.aliceBaseKey, KEY33);
  w.bytes(s.rootKey, 32);
  w.u32(s.previousCounter);
  const sc = s.senderChain;
  w.bytes(sc.ratchetKey, KEY33);
  w.bytes(sc.ratchetPrivateKey, 32);
  w.bytes(sc.chainKey, 32);
  w.u32(sc.index);
  if (p) {
    w.u32(p.preKeyId ?? 0);
    w.u32(p.signedPreKeyId);
    w.u32(p.kyberPreKeyId);
    w.u64(p.timestamp);
    w.bytes(p.kyberCiphertext, SERIALIZED_KYBER_CIPHERTEXT_LEN);
  }
  w.u8(s.receiverChains.length);
  for (const c of s.receiverChains) {
    w.bytes(c.ratchetKey, KEY33);
    w.bytes(c.chainKey, 32);
    w.u32(c.index);
    w.skipped(c.skipped);
  }
}

/** One session state in the binary layout above. */
export function encodeSessionState(s: SessionState): Uint8Array {
  const out = new Uint8Array(stateSize(s));
  const w = new Writer(out, 0);
  writeState(w, s);
  return out;
}

function corrupt(what: string): never {
  throw new ProtocolError('INVALID_STATE', `corrupt session record: ${what}`);
}

class Reader {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    pos: number,
    readonly end: number,
  ) {
    this.pos = pos;
  }
  need(n: number): void {
    if (this.end - this.pos < n) corrupt('truncated');
  }
  u8(): number {
    this.need(1);
    return this.buf[this.pos++]!;
  }
  u16(): number {
    this.need(2);
    const b = this.buf;
    const v = (b[this.pos]! << 8) | b[this.pos + 1]!;
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const b = this.buf;
    const p = this.pos;
    this.pos += 4;
    return ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0;
  }
  u64(): number {
    const hi = this.u32();
    const lo = this.u32();
    const v = hi * 2 ** 32 + lo;
    if (!Number.isSafeInteger(v)) corrupt('timestamp out of range');
    return v;
  }
  bytes(n: number): Uint8Array {
    this.need(n);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  key33(): Uint8Array {
    const k = this.bytes(KEY33);
    if (k[0] !== 0x05) corrupt('bad public key type');
    return k;
  }
  /** Skipped keys: strictly increasing indices, all below `below`, at most `max`. */
  skipped(below: number, max: number): Map<number, Uint8Array> {
    const n = this.u16();
    if (n > max) corrupt('too many skipped keys');
    const m = new Map<number, Uint8Array>();
    let last = -1;
    for (let i = 0; i < n; i++) {
      const idx = this.u32();
      if (idx <= last || idx >= below) corrupt('skipped key index out of order');
      last = idx;
      m.set(idx, this.bytes(32));
    }
    return m;
  }
}

function readState(r: Reader): SessionState {
  const version = r.u8();
  if (version !== PQXDH_SESSION_VERSION) corrupt(`unsupported session version ${version}`);
  const flags = r.u8();
  if ((flags & ~(F_PENDING | F_PENDING_PREKEY_ID)) !== 0) corrupt('unknown flags');
  if ((flags & F_PENDING_PREKEY_ID) !== 0 && (flags & F_PENDING) === 0) corrupt('inconsistent flags');
  const localIdentityKey = r.key33();
  const remoteIdentityKey = r.key33();
  const localRegistrationId = r.u32();
  const remoteRegistrationId = r.u32();
  const aliceBaseKey = r.key33();
  const rootKey = r.bytes(32);
  const previousCounter = r.u32();
  const senderChain: SenderChain = {
    ratchetKey: r.key33(),
    ratchetPrivateKey: r.bytes(32),
    chainKey: r.bytes(32),
    index: r.u32(),
  };
  let pendingPreKey: PendingPreKey | undefined;
  if ((flags & F_PENDING) !== 0) {
    const preKeyId = r.u32();
    const signedPreKeyId = r.u32();
    const kyberPreKeyId = r.u32();
    const timestamp = r.u64();
    const kyberCiphertext = r.bytes(SERIALIZED_KYBER_CIPHERTEXT_LEN);
    if (kyberCiphertext[0] !== 0x08) corrupt('bad Kyber ciphertext type');
    pendingPreKey = {
      preKeyId: (flags & F_PENDING_PREKEY_ID) !== 0 ? preKeyId : undefined,
      signedPreKeyId,
      kyberPreKeyId,
      kyberCiphertext,
      timestamp,
    };
  }
  const nChains = r.u8();
  if (nChains > MAX_RECEIVER_CHAINS) corrupt('too many receiver chains');
  const receiverChains: ReceiverChain[] = [];
  for (let i = 0; i < nChains; i++) {
    const ratchetKey = r.key33();
    const chainKey = r.bytes(32);
    const index = r.u32();
    receiverChains.push({ ratchetKey, chainKey, index, skipped: r.skipped(index, MAX_MESSAGE_KEYS) });
  }
  return {
    version,
    localIdentityKey,
    remoteIdentityKey,
    localRegistrationId,
    remoteRegistrationId,
    aliceBaseKey,
    rootKey,
    previousCounter,
    senderChain,
    receiverChains,
    pendingPreKey,
  };
}

/** Parses one encoded state (all of `bytes`); INVALID_STATE if it is corrupt. */
export function decodeSessionState(bytes: Uint8Array): SessionState {
  const r = new Reader(bytes, 0, bytes.length);
  const s = readState(r);
  if (r.pos !== r.end) corrupt('trailing bytes');
  return s;
}

export class SessionRecord {
  /** The state new messages are sent with, if any. */
  readonly currentState: SessionState | undefined;
  /** Archived states, serialised, newest first. */
  readonly previousStates: readonly Uint8Array[];
  #serialized: Uint8Array | undefined;

  constructor(
    currentState: SessionState | undefined,
    previousStates: readonly Uint8Array[] = [],
    serialized?: Uint8Array,
  ) {
    if (previousStates.length > MAX_ARCHIVED_STATES) {
      throw new ProtocolError('INVALID_ARGUMENT', `at most ${MAX_ARCHIVED_STATES} archived states`);
    }
    this.currentState = currentState;
    this.previousStates = previousStates;
    this.#serialized = serialized;
  }

  /** A record with no session ("fresh" in libsignal). */
  static empty(): SessionRecord {
    return new SessionRecord(undefined, []);
  }

  get hasCurrentState(): boolean {
    return this.currentState !== undefined;
  }

  /** The peer's identity key (33 bytes) of the current session. */
  get remoteIdentityKey(): Uint8Array | undefined {
    return this.currentState?.remoteIdentityKey;
  }

  get remoteRegistrationId(): number | undefined {
    return this.currentState?.remoteRegistrationId;
  }

  get localRegistrationId(): number | undefined {
    return this.currentState?.localRegistrationId;
  }

  /**
   * Whether `encrypt` can use this record: there is a current state and, if the peer has
   * not answered yet, it is younger than MAX_UNACKNOWLEDGED_SESSION_AGE_MS
   * (libsignal `has_usable_sender_chain` with `NotStale`).
   */
  hasUsableSenderChain(now: number = Date.now()): boolean {
    const s = this.currentState;
    if (s === undefined) return false;
    const p = s.pendingPreKey;
    return p === undefined || p.timestamp + MAX_UNACKNOWLEDGED_SESSION_AGE_MS >= now;
  }

  /** Moves the current state to the archive (a caller's "reset session"). */
  archiveCurrentState(): SessionRecord {
    if (this.currentState === undefined) return this;
    return new SessionRecord(undefined, archive(this.currentState, this.previousStates));
  }

  /** The archived state at `index` (0 = newest), parsed. */
  previousState(index: number): SessionState {
    const bytes = this.previousStates[index];
    if (bytes === undefined) throw new ProtocolError('INVALID_ARGUMENT', 'no such archived state');
    return decodeSessionState(bytes);
  }

  serialize(): Uint8Array {
    if (this.#serialized === undefined) this.#serialized = encodeRecord(this);
    // A copy, so the caller can do what it likes with the bytes.
    return this.#serialized.slice();
  }
}

/** The archive after `state` is pushed onto it (libsignal `archive_current_state_inner`). */
export function archive(state: SessionState, previous: readonly Uint8Array[]): Uint8Array[] {
  // An archived state never sends again, so it does not need its pending prekey.
  const cleared = state.pendingPreKey ? { ...state, pendingPreKey: undefined } : state;
  const out = [encodeSessionState(cleared), ...previous];
  if (out.length > MAX_ARCHIVED_STATES) out.length = MAX_ARCHIVED_STATES;
  return out;
}

function encodeRecord(rec: SessionRecord): Uint8Array {
  const cur = rec.currentState;
  const curSize = cur ? stateSize(cur) : 0;
  let size = 2 + (cur ? 4 + curSize : 0) + 1;
  for (const p of rec.previousStates) size += 4 + p.length;
  const out = new Uint8Array(size);
  const w = new Writer(out, 0);
  w.u8(SESSION_RECORD_FORMAT);
  w.u8(cur ? 1 : 0);
  if (cur) {
    w.u32(curSize);
    const start = w.pos;
    writeState(w, cur);
    if (w.pos - start !== curSize) throw new ProtocolError('INVALID_STATE', 'session state size mismatch');
  }
  w.u8(rec.previousStates.length);
  for (const p of rec.previousStates) {
    w.u32(p.length);
    w.bytes(p, p.length);
  }
  return out;
}

/**
 * Parses `SessionRecord.serialize()` output. The input is copied once; the record's
 * fields are views into that private copy. Archived states are checked here too, so a
 * record that deserialises is one the cipher can use.
 */
export function deserializeSessionRecord(bytes: Uint8Array): SessionRecord {
  if (!(bytes instanceof Uint8Array))
    throw new ProtocolError('INVALID_ARGUMENT', '"bytes" expected Uint8Array');
  const buf = bytes.slice();
  const r = new Reader(buf, 0, buf.length);
  const format = r.u8();
  if (format !== SESSION_RECORD_FORMAT) corrupt(`unknown format ${format}`);
  const hasCurrent = r.u8();
  if (hasCurrent > 1) corrupt('bad flag');
  let current: SessionState | undefined;
  if (hasCurrent === 1) {
    const len = r.u32();
    r.need(len);
    const end = r.pos + len;
    const sr = new Reader(buf, r.pos, end);
    current = readState(sr);
    if (sr.pos !== end) corrupt('trailing bytes in state');
    r.pos = end;
  }
  const nPrev = r.u8();
  if (nPrev > MAX_ARCHIVED_STATES) corrupt('too many archived states');
  const previous: Uint8Array[] = [];
  for (let i = 0; i < nPrev; i++) {
    const len = r.u32();
    const p = r.bytes(len);
    decodeSessionState(p);
    previous.push(p);
  }
  if (r.pos !== r.end) corrupt('trailing bytes');
  return new SessionRecord(current, previous, buf);
}
