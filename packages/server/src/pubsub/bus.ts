/**
 * The cross-node event bus: how one server node tells the others that something changed in
 * the storage they share. Storage (PostgreSQL) stays the only source of truth; an event is a
 * HINT to re-read it, never an authority, so:
 *
 * - delivery is at most once, and an event may also arrive twice (a node replays what it
 *   published around a lost connection): every handler must be idempotent;
 * - a handler re-reads storage before acting (`device-removed`: close the connections of
 *   devices that storage no longer holds; `mail`: run the device's pump), so a stale,
 *   duplicated or forged event can cause a storage read, never a wrong result;
 * - `resync` means "you may have missed events": re-check every live connection against
 *   storage, run every pump, drop every cache. The bus delivers it to its own node's
 *   handlers each time it (re)connects, and publishes it to the others when it could not
 *   keep what it published while disconnected.
 *
 * The bus carries events to OTHER nodes only: a node never receives what it publishes
 * (the service acts on its own events directly, as it did before there was a bus), and an
 * echo of its own node id that does arrive is dropped and counted.
 *
 * Messages hold ids only (never content, keys or tokens):
 * `{"v":1,"from":<node id>,"event":{"type":...}}`, at most MAX_BUS_MESSAGE_BYTES (a few
 * hundred bytes, except a `presence` heartbeat listing up to MAX_PRESENCE_ENTRIES connections).
 *
 * Besides the storage hints, the service (service/cluster.ts) uses four events of its own:
 * `device-connected` / `device-disconnected` (one live connection per device across nodes,
 * and presence), `presence` (a node's heartbeat of its connected devices) and
 * `challenge-used` (narrows the replay window of a stateless sign-in challenge). Whatever
 * arrives is checked (size, UTF-8, JSON, schema, subject) before any handler sees it; a
 * message that fails is dropped and counted, and the bus keeps working.
 */
import { randomBytes } from '@qalqon/crypto';
import { ChannelId, DeviceId, UserId, z } from '@qalqon/wire';
import { ServerError } from '../errors.js';

/** Upper bound on one bus message but a heartbeat; the largest valid one is about 250 bytes. */
export const MAX_BUS_MESSAGE_BYTES = 512;
/** Upper bound on one `presence` heartbeat message (MAX_PRESENCE_ENTRIES of about 80 bytes). */
export const MAX_PRESENCE_MESSAGE_BYTES = 65_536;
/** Connections listed in one `presence` heartbeat message (a node with more sends several). */
export const MAX_PRESENCE_ENTRIES = 600;
/** A connection id: 12 hex digits of the attach time in ms, then 20 random hex digits (sorts by time). */
export const ConnectionId = z.string().regex(/^[0-9a-f]{32}$/, 'expected 32 lower-case hex digits');
/** One connection in a heartbeat: `<userId>/<deviceId>/<connectionId>`. */
export const PresenceEntry = z
  .string()
  .regex(/^[0-9a-f]{32}\/[1-9][0-9]{0,9}\/[0-9a-f]{32}$/, 'expected user/device/connection');
/** The message format version. */
export const BUS_MESSAGE_VERSION = 1;

/** New envelopes were enqueued for the device: its pump, wherever it is, should read. */
const MailEvent = z.strictObject({ type: z.literal('mail'), userId: UserId, deviceId: DeviceId });
/**
 * A device (or, without deviceId, any of the user's devices) was removed: re-check the
 * matching connections against storage and close those whose device is gone (CLOSE_REMOVED),
 * and drop their sessions.
 */
const DeviceRemovedEvent = z.strictObject({
  type: z.literal('device-removed'),
  userId: UserId,
  deviceId: DeviceId.optional(),
});
/** Roles or grants changed: drop the user's authorisation cache entries (without userId: all). */
const AuthzChangedEvent = z.strictObject({ type: z.literal('authz-changed'), userId: UserId.optional() });
/** The channel's membership log grew to `seq`: drop cached replays of it older than that. */
const ChannelChangedEvent = z.strictObject({
  type: z.literal('channel-changed'),
  channelId: ChannelId,
  seq: z.int().min(0).max(Number.MAX_SAFE_INTEGER),
});
/** Events may have been missed: re-check connections, run every pump, drop every cache. */
const ResyncEvent = z.strictObject({ type: z.literal('resync') });
/**
 * A device's connection was attached on the publishing node: other nodes close their
 * connections of that device with an OLDER connection id (one live connection per device),
 * and mark the device present on the publisher.
 */
const DeviceConnectedEvent = z.strictObject({
  type: z.literal('device-connected'),
  userId: UserId,
  deviceId: DeviceId,
  connectionId: ConnectionId,
});
/** That connection ended on the publishing node (presence). */
const DeviceDisconnectedEvent = z.strictObject({
  type: z.literal('device-disconnected'),
  userId: UserId,
  deviceId: DeviceId,
  connectionId: ConnectionId,
});
/**
 * A heartbeat: (part of) the publisher's connected devices; sent every `every` ms. Entries
 * of a node that stops heart-beating expire after a few intervals.
 */
const PresenceEvent = z.strictObject({
  type: z.literal('presence'),
  every: z.int().min(100).max(600_000),
  devices: z.array(PresenceEntry).max(MAX_PRESENCE_ENTRIES),
});
/** A sign-in challenge was redeemed on the publisher: add it to the replay cache (64 hex digits). */
const ChallengeUsedEvent = z.strictObject({
  type: z.literal('challenge-used'),
  challenge: z.string().regex(/^[0-9a-f]{64}$/, 'expected 64 lower-case hex digits'),
});

export const BusEvent = z.discriminatedUnion('type', [
  MailEvent,
  DeviceRemovedEvent,
  AuthzChangedEvent,
  ChannelChangedEvent,
  ResyncEvent,
  DeviceConnectedEvent,
  DeviceDisconnectedEvent,
  PresenceEvent,
  ChallengeUsedEvent,
]);
export type BusEvent = z.infer<typeof BusEvent>;
export type BusEventType = BusEvent['type'];
export const BUS_EVENT_TYPES: readonly BusEventType[] = [
  'mail',
  'device-removed',
  'authz-changed',
  'channel-changed',
  'resync',
  'device-connected',
  'device-disconnected',
  'presence',
  'challenge-used',
];

/** A node id: 32 lower-case hex digits, random per process unless given. */
export const NodeId = z.string().regex(/^[0-9a-f]{32}$/, 'expected 32 lower-case hex digits');

const BusMessage = z.strictObject({
  v: z.literal(BUS_MESSAGE_VERSION),
  from: NodeId,
  event: BusEvent,
});

export function newNodeId(): string {
  return Buffer.from(randomBytes(16)).toString('hex');
}

/** Checks an event a caller wants to publish: INVALID_ARGUMENT names the field, never its value. */
export function checkBusEvent(event: unknown): BusEvent {
  const parsed = BusEvent.safeParse(event);
  if (!parsed.success) {
    const where = parsed.error.issues[0]?.path.join('.') || 'type';
    throw new ServerError('INVALID_ARGUMENT', `"event.${where}" is not a valid bus event field`);
  }
  return parsed.data;
}

/**
 * Encodes a checked event as the bytes a bus carries. Keys are written in one fixed order,
 * so the same event from the same node always has the same bytes (the NATS bus relies on
 * this to coalesce repeats).
 */
export function encodeBusMessage(from: string, event: BusEvent): Uint8Array {
  const e = checkBusEvent(event);
  let body: Record<string, unknown>;
  switch (e.type) {
    case 'mail':
      body = { type: e.type, userId: e.userId, deviceId: e.deviceId };
      break;
    case 'device-removed':
      body = {
        type: e.type,
        userId: e.userId,
        ...(e.deviceId === undefined ? {} : { deviceId: e.deviceId }),
      };
      break;
    case 'authz-changed':
      body = { type: e.type, ...(e.userId === undefined ? {} : { userId: e.userId }) };
      break;
    case 'channel-changed':
      body = { type: e.type, channelId: e.channelId, seq: e.seq };
      break;
    case 'resync':
      body = { type: e.type };
      break;
    case 'device-connected':
    case 'device-disconnected':
      body = { type: e.type, userId: e.userId, deviceId: e.deviceId, connectionId: e.connectionId };
      break;
    case 'presence':
      body = { type: e.type, every: e.every, devices: e.devices };
      break;
    case 'challenge-used':
      body = { type: e.type, challenge: e.challenge };
      break;
  }
  return new TextEncoder().encode(JSON.stringify({ v: BUS_MESSAGE_VERSION, from, event: body }));
}

export type DecodedBusMessage =
  | { readonly ok: true; readonly from: string; readonly event: BusEvent }
  | { readonly ok: false; readonly reason: 'oversized' | 'malformed' };

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Decodes bytes from the bus; never throws. `subjectType`, when the transport knows it (the
 * NATS subject), sets the size bound before anything is parsed; without it, a message larger
 * than MAX_BUS_MESSAGE_BYTES is accepted only as a `presence` heartbeat.
 */
export function decodeBusMessage(data: Uint8Array, subjectType?: string): DecodedBusMessage {
  const bound =
    subjectType === undefined || subjectType === 'presence'
      ? MAX_PRESENCE_MESSAGE_BYTES
      : MAX_BUS_MESSAGE_BYTES;
  if (data.length > bound) return { ok: false, reason: 'oversized' };
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(data));
  } catch {
    return { ok: false, reason: 'malformed' };
  }
  const parsed = BusMessage.safeParse(value);
  if (!parsed.success) return { ok: false, reason: 'malformed' };
  if (parsed.data.event.type !== 'presence' && data.length > MAX_BUS_MESSAGE_BYTES) {
    return { ok: false, reason: 'oversized' };
  }
  return { ok: true, from: parsed.data.from, event: parsed.data.event };
}

/** What the bus did, for /metrics and tests. */
export interface BusCounters {
  /** Events handed to publish(). */
  published: number;
  /** Published events held back while disconnected (sent on reconnect). */
  deferred: number;
  /** Published events the transport refused (lost; they were hints). */
  publishFailed: number;
  /** Events from other nodes handed to the handlers. */
  delivered: number;
  /** Messages carrying this node's own id, dropped. */
  echoes: number;
  /** Messages over MAX_BUS_MESSAGE_BYTES, dropped unread. */
  oversized: number;
  /** Messages that were not valid UTF-8 JSON of the bus schema on the right subject, dropped. */
  malformed: number;
  /** Handler calls that threw (the bus carried on). */
  handlerErrors: number;
  /** `resync` events this node gave its own handlers after (re)connecting. */
  resyncs: number;
}

export type BusStatus = 'connecting' | 'connected' | 'reconnecting' | 'closed';

/** Receives one event from another node (`from` is that node's id). Must be idempotent. */
export type BusHandler = (event: BusEvent, from: string) => void;

export interface EventBus {
  /** This node's id, carried in every message it publishes. */
  readonly nodeId: string;
  readonly kind: 'local' | 'nats';
  /** For /healthz: only `connected` carries events promptly. */
  readonly status: BusStatus;
  /**
   * Sends `event` to every other node. Never throws for connectivity (events are hints; a
   * disconnected bus defers or drops and counts); throws INVALID_ARGUMENT for an invalid
   * event and PUBSUB_CLOSED after close().
   */
  publish(event: BusEvent): void;
  /** Adds a handler for events from other nodes; returns its removal. PUBSUB_CLOSED after close(). */
  subscribe(handler: BusHandler): () => void;
  counters(): Readonly<BusCounters>;
  /** Flushes what is pending and stops; later publish/subscribe throw PUBSUB_CLOSED. Idempotent. */
  close(): Promise<void>;
}

export interface BusCoreOptions {
  readonly nodeId?: string;
  /** Where the bus reports trouble; messages carry no secrets. */
  readonly log?: (msg: string) => void;
}

/** What both implementations share: handlers, counters, decoding and echo filtering. */
export abstract class BusCore {
  readonly nodeId: string;
  protected readonly log: (msg: string) => void;
  protected readonly count: BusCounters = {
    published: 0,
    deferred: 0,
    publishFailed: 0,
    delivered: 0,
    echoes: 0,
    oversized: 0,
    malformed: 0,
    handlerErrors: 0,
    resyncs: 0,
  };
  readonly #handlers = new Set<BusHandler>();
  #closed = false;

  constructor(options: BusCoreOptions) {
    if (options.nodeId !== undefined && !NodeId.safeParse(options.nodeId).success) {
      throw new ServerError('INVALID_ARGUMENT', '"nodeId" expected 32 lower-case hex digits');
    }
    this.nodeId = options.nodeId ?? newNodeId();
    this.log = options.log ?? (() => {});
  }

  protected get closed(): boolean {
    return this.#closed;
  }

  protected markClosed(): void {
    this.#closed = true;
  }

  protected assertOpen(op: string): void {
    if (this.#closed) throw new ServerError('PUBSUB_CLOSED', `event bus ${op} after close()`);
  }

  subscribe(handler: BusHandler): () => void {
    this.assertOpen('subscribe');
    if (typeof handler !== 'function') {
      throw new ServerError('INVALID_ARGUMENT', '"handler" expected function');
    }
    // Each subscribe() is its own registration, even of the same function.
    const h: BusHandler = (event, from) => handler(event, from);
    this.#handlers.add(h);
    return () => {
      this.#handlers.delete(h);
    };
  }

  counters(): Readonly<BusCounters> {
    return { ...this.count };
  }

  /** Checks and delivers bytes that arrived from the bus. `expectedType` comes from the subject, if any. */
  protected receive(data: Uint8Array, subjectType?: string): void {
    if (this.#closed) return;
    const m = decodeBusMessage(data, subjectType);
    if (!m.ok) {
      this.count[m.reason]++;
      return;
    }
    if (subjectType !== undefined && subjectType !== m.event.type) {
      this.count.malformed++;
      return;
    }
    if (m.from === this.nodeId) {
      this.count.echoes++;
      return;
    }
    this.count.delivered++;
    this.dispatch(m.event, m.from);
  }

  /** Calls every handler; one that throws is counted and logged, and the others still run. */
  protected dispatch(event: BusEvent, from: string): void {
    for (const h of [...this.#handlers]) {
      try {
        h(event, from);
      } catch (err) {
        this.count.handlerErrors++;
        this.log(`event bus: a ${event.type} handler failed: ${err instanceof Error ? err.name : 'error'}`);
      }
    }
  }

  /** Tells this node's own handlers that events may have been missed. */
  protected resyncLocal(): void {
    this.count.resyncs++;
    this.dispatch({ type: 'resync' }, this.nodeId);
  }
}
